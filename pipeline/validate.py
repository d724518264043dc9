"""Launch checks: everything that can be known wrong before a job is submitted.

A job that would fail on its workers because of its arguments must fail here instead, in seconds,
with one message that says what to fix: an input pattern that matches nothing, a missing column or
one of an unusable type (in any input file, not only the first), a model that does not load, an
output folder that cannot be written or that holds another run's results, CUDA asked for on a
machine without a GPU, a path on the launcher's disk given to a Dataflow job.

Every check reads; only the last one, that the output folder can be written, creates anything (the
folder): a job refused at launch leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from clipbeam.pipeline.beam_options import runner_name
from clipbeam.pipeline.options import NONE, LaunchError
from clipbeam.transforms.limits import DEFAULT_URL_SCHEMES, LOCAL_SCHEME
from clipbeam.transforms.spec import JobSpec, int8_problem
from clipbeam.transforms.units import WorkUnit, plain_schema

if TYPE_CHECKING:  # the encoder imports torch: not at import time of the launcher
    from clipbeam.transforms.encoder import Encoder

__all__ = [
    "DATAFLOW_RUNNERS",
    "JOB_FILE",
    "LOCAL_RUNNERS",
    "LaunchPlan",
    "check_device",
    "check_inputs",
    "check_model",
    "check_output",
    "check_output_outside_inputs",
    "check_output_writable",
    "check_remote",
    "check_schema",
    "for_runner",
    "is_dataflow",
    "plan",
    "validate",
]

# Written by the launcher into the output folder: what the job is, so --resume can refuse to mix
# the output of two different jobs.
JOB_FILE = "_job.json"

# Runners that execute on this machine: a --device cuda job must find a GPU here. Other runners
# (Dataflow, Flink, Spark...) run on workers whose GPUs the launcher cannot see; the workers
# refuse CUDA without a GPU themselves. They also hold their shuffle in this machine's memory
# (dedup's ``--shuffle auto`` goes through files there).
LOCAL_RUNNERS = frozenset(
    {"DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "FnApiRunner",
     "PrismRunner"}
)  # fmt: skip
# Runners whose workers are Google Cloud VMs: they read and write only what a URL reaches.
DATAFLOW_RUNNERS = frozenset({"DataflowRunner", "TestDataflowRunner"})

# A URL with a scheme (gs://, s3://, https://...); file:// is a path on the launcher's disk.
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")

# The key of _job.json that records every planned input file: {path: version}.
FILES_KEY = "files"

# Spec fields that do not change a job's output rows: a resumed run may change them.
_RESUMABLE_CHANGES = frozenset(
    {"resume", "batch_size", "device", "http_timeout", "max_error_fraction"}
)

# Footers read at once when checking the schema of every input file on remote storage.
_SCHEMA_READERS = 16


@dataclass(frozen=True)
class LaunchPlan:
    """A validated job, ready to build into a pipeline.

    Attributes:
        spec: the job.
        units: the work units, one per (Parquet file, row group) with rows.
        image_format: the image format resolved from the first file's schema (``None`` without
            an image column).
        schema: the first input file's Arrow schema.
    """

    spec: JobSpec
    units: list[WorkUnit]
    image_format: str | None
    schema: pa.Schema

    @property
    def input_rows(self) -> int:
        """Rows in all units."""
        return sum(u.num_rows for u in self.units)


def plan(inputs: Sequence[str]) -> list[WorkUnit]:
    """Expands the input patterns into work units.

    Raises:
        LaunchError: a pattern matches no file, or a file is not Parquet.
    """
    from clipbeam.transforms.units import plan_units

    try:
        units = plan_units(list(inputs))
    except (FileNotFoundError, ValueError) as exc:
        raise LaunchError(str(exc)) from None
    except OSError as exc:
        raise LaunchError(f"cannot list --input {', '.join(inputs)}: {exc}") from None
    if not units:
        raise LaunchError(
            f"--input {', '.join(inputs)} matches only Parquet files without rows; nothing to do"
        )
    return units


def _read_schema(path: str) -> pa.Schema:
    from clipbeam.transforms import storage

    try:
        with storage.open_input(path) as f:
            return plain_schema(pq.ParquetFile(f).schema_arrow)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LaunchError(f"cannot read the schema of input file {path}: {exc}") from None


# Columns a launch error lists at most: a file may have 10,000 of them.
_COLUMNS_SHOWN = 20
# Longest type shown for one column (a struct may hold hundreds of fields).
_TYPE_CHARS = 60


def _describe(schema: pa.Schema, wanted: Sequence[str] = ()) -> str:
    """The columns of ``schema`` for a message, bounded: those whose names are close to the
    ``wanted`` ones first, then the first others, then how many more there are."""
    names = schema.names
    close: list[str] = []
    for name in wanted:
        close += difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        close += [n for n in names if n.lower() == name.lower()]
    close = list(dict.fromkeys(close))[:_COLUMNS_SHOWN]
    others = [n for n in names if n not in set(close)][: _COLUMNS_SHOWN - len(close)]
    text = ", ".join(_column_text(schema, n) for n in close + others)
    if close and len(names) > _COLUMNS_SHOWN:
        text = f"closest: {', '.join(_column_text(schema, n) for n in close)}; others: " + (
            ", ".join(_column_text(schema, n) for n in others)
        )
    left = len(names) - len(close) - len(others)
    return text + (f" and {left} more of its {len(names)} columns" if left > 0 else "")


def _column_text(schema: pa.Schema, name: str) -> str:
    return f"{_cut(name)} ({_cut(str(schema.field(name).type))})"


def _cut(text: str) -> str:
    return text if len(text) <= _TYPE_CHARS else text[: _TYPE_CHARS - 3] + "..."


def _is_text(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    )


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_binary_view(arrow_type)
    )


def check_schema(spec: JobSpec, schema: pa.Schema, path: str) -> str | None:
    """Checks that the columns the job reads exist in ``schema`` with usable types.

    Args:
        spec: the job.
        schema: an input file's Arrow schema.
        path: that file, for messages.

    Returns:
        The image format resolved from the image column's type (``None`` without images).

    Raises:
        LaunchError: a column is missing or has a type the job cannot read.
    """
    from clipbeam.transforms.images import resolve_image_format

    names = set(schema.names)
    asked = [spec.image_column, spec.text_column, spec.id_column, *spec.keep_columns]
    missing_names = [c for c in asked if c is not None and c not in names]
    asked = [c for c in asked if c is not None]
    columns = f"{path} has columns: {_describe(schema, missing_names or asked)}"

    def missing(option: str, column: str, hint: str = "") -> LaunchError:
        return LaunchError(f"--{option} {column!r} is not a column of the input; {columns}{hint}")

    image_format = None
    if spec.image_column is not None:
        if spec.image_column not in names:
            hint = ""
            if spec.kind == "embed" and spec.text_column is not None:
                hint = f". Pass --image-column NAME, or --image-column {NONE} to embed texts only"
            raise missing("image-column", spec.image_column, hint)
        try:
            image_format = resolve_image_format(
                spec.image_column, schema.field(spec.image_column).type, spec.image_format
            )
        except ValueError as exc:
            raise LaunchError(f"{exc} ({columns})") from None

    if spec.text_column is not None:
        if spec.text_column not in names:
            hint = ""
            if spec.kind == "embed" and spec.image_column is not None:
                hint = f". Pass --text-column NAME, or --text-column {NONE} to embed images only"
            raise missing("text-column", spec.text_column, hint)
        text_type = schema.field(spec.text_column).type
        # Binary captions are decoded row by row; a row that is not UTF-8 becomes an error row.
        if not (_is_text(text_type) or _is_binary(text_type)):
            raise LaunchError(
                f"--text-column {spec.text_column!r} has type {text_type}, but captions must be "
                f"strings (or UTF-8 bytes); {columns}"
            )

    if spec.id_column is not None:
        if spec.id_column not in names:
            raise missing("id-column", spec.id_column)
        id_type = schema.field(spec.id_column).type
        if not (_is_text(id_type) or pa.types.is_integer(id_type)):
            raise LaunchError(
                f"--id-column {spec.id_column!r} has type {id_type}, but ids must be strings or "
                f"integers; {columns}"
            )

    absent = [c for c in spec.keep_columns if c not in names]
    if absent:
        listed = ", ".join(absent[:_COLUMNS_SHOWN])
        more = f" and {len(absent) - _COLUMNS_SHOWN} more" if len(absent) > _COLUMNS_SHOWN else ""
        raise LaunchError(f"--keep-columns {listed}{more}: not in the input; {columns}")
    if spec.id_column is not None and spec.id_column in spec.keep_columns:
        raise LaunchError(
            f"--keep-columns lists the id column {spec.id_column!r}, which every output holds "
            "already; leave it out"
        )
    return image_format


def check_inputs(spec: JobSpec, units: Sequence[WorkUnit]) -> tuple[pa.Schema, str | None]:
    """Checks the schema of every input file, so a shard without a column (or with a column of
    another type) fails the job at launch instead of failing its bundle on a worker.

    Every file must pass :func:`check_schema`. The id column and ``--keep-columns`` must also
    have the first file's types in every file: they are copied to the output, whose files must
    agree on one schema.

    Returns:
        The first file's schema and its resolved image format.

    Raises:
        LaunchError: for the first file (in input order) that does not fit; the message counts
            the others.
    """
    paths = list(dict.fromkeys(u.path for u in units))
    if len(paths) > 1 and not all(_local(p) for p in paths):
        with ThreadPoolExecutor(_SCHEMA_READERS) as pool:
            schemas = list(pool.map(_read_schema, paths))
    else:
        schemas = [_read_schema(p) for p in paths]
    first = schemas[0]
    image_format = check_schema(spec, first, paths[0])
    copied = [c for c in (spec.id_column, *spec.keep_columns) if c is not None]
    problems: list[str] = []
    for path, schema in zip(paths[1:], schemas[1:], strict=True):
        try:
            check_schema(spec, schema, path)
        except LaunchError as exc:
            problems.append(str(exc))
            continue
        changed = [c for c in copied if schema.field(c).type != first.field(c).type]
        if changed:
            detail = ", ".join(
                f"{c!r} is {schema.field(c).type} there but {first.field(c).type} in {paths[0]}"
                for c in changed
            )
            problems.append(
                f"input file {path} does not match the first input file: {detail}. Output "
                "files copy these columns and must agree on their types; convert the file or "
                "leave it out of --input"
            )
    if problems:
        others = len(problems) - 1
        more = f" ({others} more input files do not fit)" if others else ""
        raise LaunchError(problems[0] + more)
    return first, image_format


def _local(path: str) -> bool:
    from clipbeam.transforms import storage

    return storage.is_local(path)


def check_device(spec: JobSpec, runner: str | None) -> None:
    """Refuses ``--device cuda`` on a machine without a GPU when the job runs on this machine,
    and ``--dtype int8`` where it cannot run (CUDA, ``--compile``) on any runner.

    Raises:
        LaunchError: CUDA is asked for, the runner is local and torch sees no GPU; or int8 is
            asked for with CUDA or compilation.
    """
    problem = int8_problem(spec.device, spec.compile) if spec.dtype == "int8" else None
    if problem:
        raise LaunchError(problem)
    if not spec.device.startswith("cuda"):
        return
    if runner_class(runner) not in LOCAL_RUNNERS:
        return  # workers check their own GPU when they load the model
    from clipbeam.transforms.encoder import resolve_device

    try:
        resolve_device(spec.device)
    except RuntimeError as exc:
        raise LaunchError(str(exc)) from None


def runner_class(runner: str | None) -> str:
    """The runner's class name (``dataflow`` -> ``DataflowRunner``); any name Beam does not know
    (a runner class of a test pipeline) is returned as it is."""
    try:
        return runner_name(runner)
    except LaunchError:
        return (runner or "").rsplit(".", 1)[-1]


def is_dataflow(runner: str | None) -> bool:
    """Whether ``runner`` (any spelling Beam accepts) runs the job on Dataflow workers."""
    return runner_class(runner) in DATAFLOW_RUNNERS


def check_remote(
    spec: JobSpec,
    inputs: Sequence[str],
    *,
    labels_file: str | None = None,
    name: Callable[[str], str] = lambda option: f"--{option}",
) -> None:
    """Refuses paths that exist only on the launching machine: every worker is another machine.

    The input and output must be URLs (``gs://...``); the model too, unless it is a checkpoint
    bundled with clipbeam (the workers have clipbeam installed). A ``--labels-file`` is read on
    the launcher and its labels travel in the job, so it is only checked when given here.

    Args:
        spec: the job (a :class:`JobSpec`, or a dedup job's ``DedupSpec``: its ``--against``
            reference set is checked too).
        inputs: the ``--input`` patterns.
        labels_file: a labels file to check too (the template launcher has no user files).
        name: how messages name an option, from its dashed name (``labels-file``).

    Raises:
        LaunchError: the first local path (or ``file://`` URL), naming the option.
    """
    from clipbeam.model.hub import BUNDLED

    places = [("input", p) for p in inputs]
    places += [("output", spec.output)]
    # a dedup job (DedupSpec) may have no model, has no heads and may have a reference set
    places += [("model", spec.model)] if spec.model is not None else []
    places += [("head", source) for _, source in getattr(spec, "heads", ())]
    places += [("against", p) for p in getattr(spec, "against", ())]
    if labels_file is not None:
        places.append(("labels-file", labels_file))
    for option, path in places:
        remote = bool(_URL.match(path)) and not path.lower().startswith("file://")
        if remote or (option == "model" and path in BUNDLED):
            continue
        if option == "model":
            raise LaunchError(
                f"{name(option)} {path!r} is a local path or a Hugging Face Hub id, but on "
                "Dataflow every worker is a different machine that cannot read the launcher's "
                "disk, and clipbeam's worker images do not download from the hub: pass a gs:// "
                "URL (copy the checkpoint folder there, e.g. `gcloud storage cp -r DIR "
                f"gs://BUCKET/`), or use a bundled model: {', '.join(BUNDLED)}"
            )
        raise LaunchError(
            f"{name(option)} {path!r} is a local path, but on Dataflow every worker is a "
            "different machine that cannot read the launcher's disk: pass a gs:// URL"
        )


def for_runner(spec: JobSpec, runner: str | None) -> JobSpec:
    """The job as it runs on ``runner``: on Dataflow, image paths default to URLs only.

    Local image paths (``file`` in ``--allowed-url-schemes``) name files on each worker's own
    disk, which on Dataflow hold no dataset: unless ``--allowed-url-schemes`` was given, a
    Dataflow job refuses them row by row (``url_not_allowed`` in ``errors/``, saying how to
    allow them) instead of reporting every image as missing.
    """
    given = spec.options.get("allowed_url_schemes")
    if not is_dataflow(runner) or given or spec.allowed_url_schemes != DEFAULT_URL_SCHEMES:
        return spec
    schemes = tuple(s for s in DEFAULT_URL_SCHEMES if s != LOCAL_SCHEME)
    return dataclasses.replace(spec, allowed_url_schemes=schemes)


def check_model(spec: JobSpec) -> Encoder:
    """Loads the model, processor and heads once on CPU, so a bad ``--model`` or ``--head``
    fails at launch; returns that CPU encoder (for what the launcher needs to know of it).

    Raises:
        LaunchError: the checkpoint is not found or does not load; a head does not load or reads
            embeddings of another size than the model's. The message is the loader's.
    """
    from clipbeam.model.heads import HeadError
    from clipbeam.model.hub import CheckpointError
    from clipbeam.transforms.encoder import Encoder

    try:
        return Encoder.load(
            spec.model,
            device="cpu",
            dtype="float32",
            batch_size=spec.batch_size,
            heads=spec.heads,
        )
    except HeadError as exc:
        # A head that does not load or does not fit the model: the message names the head.
        raise LaunchError(str(exc)) from None
    except CheckpointError as exc:
        raise LaunchError(f"--model {spec.model}: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        # Loaders signal unreadable files (OSError), bad configs and tensors (ValueError) and
        # absent config keys (KeyError); anything else is a bug and keeps its traceback.
        raise LaunchError(
            f"--model {spec.model} does not load: {type(exc).__name__}: {exc}. Point --model "
            "at a CLIP or Chinese-CLIP checkpoint folder in the Hugging Face layout."
        ) from None


def check_output(spec: JobSpec, inputs: Sequence[str], units: Sequence[WorkUnit] = ()) -> None:
    """Checks that the output folder holds no other job's results; reads only.

    Without ``--resume`` the folder must hold no results of an earlier run (they would mix with
    this run's). With ``--resume`` an earlier run's record must describe the same job, over the
    same input files (``units``: same paths, sizes and modification times or generations).
    Whether the folder can be written is :func:`check_output_writable`.

    Raises:
        LaunchError: the folder holds results this job must not mix with.
    """
    from clipbeam.transforms import storage

    record_path = storage.join(spec.output, JOB_FILE)
    if not spec.resume:
        found = [
            d
            for d in (*spec.output_dirs, "errors")
            if storage.list_files(storage.join(spec.output, d))
        ]
        if storage.exists(record_path) or storage.exists(storage.join(spec.output, "summary.json")):
            found.append(JOB_FILE)
        if found:
            raise LaunchError(
                f"--output {spec.output} already holds results of an earlier run "
                f"({', '.join(found)}). Pass --resume to finish that run, or choose an empty "
                "--output folder."
            )
        return
    if not storage.exists(record_path):
        return  # nothing to resume: a first run with --resume is an ordinary run
    try:
        earlier = json.loads(storage.read_bytes(record_path))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"--resume: cannot read {record_path}: {exc}") from None
    now = job_record(spec, inputs, units)
    changed = sorted(
        key
        for key in set(earlier) | set(now)
        if key not in _RESUMABLE_CHANGES | {FILES_KEY} and earlier.get(key) != now.get(key)
    )
    if changed:
        detail = "; ".join(f"{k}: {earlier.get(k)!r} then, {now.get(k)!r} now" for k in changed)
        raise LaunchError(
            f"--resume: {spec.output} holds a run of a different job ({detail}). Rerun with the "
            "same options, or choose an empty --output folder."
        )
    if isinstance(earlier.get(FILES_KEY), dict):
        _check_same_files(spec, earlier[FILES_KEY], now[FILES_KEY])


def _check_same_files(spec: JobSpec, then: dict[str, str], now: dict[str, str]) -> None:
    """Refuses a resume whose input files are not those of the run it resumes.

    Why refuse rather than process the difference: a resume promises the output of one
    uninterrupted run over the inputs. Units are named by their file's position in the listing,
    and a filter's --top-fraction cut, the summary and any reader of the finished files already
    stand for the first input set; quietly replacing or deleting published files is not what a
    finishing run should do. The operator decides: restore the inputs, or start a new output.
    """
    added = sorted(set(now) - set(then))
    removed = sorted(set(then) - set(now))
    rewritten = sorted(p for p in set(now) & set(then) if now[p] != then[p])
    if not (added or removed or rewritten):
        return
    parts = [
        f"{len(paths)} {what} ({_some(paths)})"
        for what, paths in (("added", added), ("gone", removed), ("rewritten", rewritten))
        if paths
    ]
    raise LaunchError(
        f"--resume: the input files changed since the run in {spec.output} began: "
        f"{'; '.join(parts)}. Its finished work units stand for the files as they were; "
        "restore them to finish that run, or run the new input set into an empty --output "
        "folder."
    )


def _some(paths: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def check_output_outside_inputs(spec: JobSpec, inputs: Sequence[str]) -> None:
    """Refuses an output folder whose files an input pattern would read as input.

    ``--input 'DIR/*.parquet' --output DIR`` or ``--input DIR --output DIR/out`` work once, and
    a resume (or any rerun) then reads the job's own output as more input. Checked on the names
    the job writes (``<output>/<folder>/part-*.parquet``), before any of them exists.

    Raises:
        LaunchError: naming the pattern and the output folder.
    """
    from clipbeam.transforms import storage
    from clipbeam.transforms.process import EMPTY_ERRORS_FILE, ERRORS_DIR, STAGING_DIR
    from clipbeam.transforms.units import reaches

    folders = (*spec.output_dirs, ERRORS_DIR, STAGING_DIR)
    written = [storage.join(spec.output, d, "part-00000-00000.parquet") for d in folders]
    written.append(storage.join(spec.output, ERRORS_DIR, EMPTY_ERRORS_FILE))
    for pattern in inputs:
        hit = next((path for path in written if reaches(pattern, path)), None)
        if hit is not None:
            raise LaunchError(
                f"--input {pattern!r} would read this job's own output files ({hit}): "
                f"--output {spec.output} lies where the input pattern reaches, so a rerun or "
                "--resume would take the results as input. Choose an --output folder outside "
                "the input's folder, or a pattern that cannot match it."
            )


def check_output_writable(spec: JobSpec) -> None:
    """Checks that files can be created and deleted in the output folder, creating it.

    The one launch check that writes: :func:`validate` runs it last.

    Raises:
        LaunchError: the folder cannot be created or written.
    """
    from clipbeam.transforms import storage

    try:
        storage.check_writable(spec.output)
    except OSError as exc:
        raise LaunchError(f"--output {spec.output} is not writable: {exc}") from None


def job_record(
    spec: JobSpec, inputs: Sequence[str], units: Sequence[WorkUnit] = ()
) -> dict[str, object]:
    """What identifies a job's output: the spec's fields, the input patterns (absolute) and,
    under ``files``, the version of every planned input file."""
    from clipbeam.transforms import storage
    from clipbeam.transforms.units import file_versions

    record = json.loads(spec.to_json())
    # Normalized: a relative and an absolute spelling of one input are the same job.
    record["inputs"] = [storage.absolute(i) for i in inputs]
    record[FILES_KEY] = {storage.absolute(p): v for p, v in file_versions(units).items()}
    return record


def validate(
    spec: JobSpec, inputs: Sequence[str], *, runner: str | None = None, load_model: bool = True
) -> LaunchPlan:
    """Runs every launch check, cheapest first; only the last one creates anything.

    Args:
        spec: the job.
        inputs: the ``--input`` patterns.
        runner: the Beam runner's name, in any spelling Beam accepts (``None`` for Beam's
            default, the DirectRunner).
        load_model: also load the model (the slowest check).

    Returns:
        The validated plan, whose spec is the job as it runs on ``runner`` (see
        :func:`for_runner`).

    Raises:
        LaunchError: the first problem found; nothing was created.
    """
    spec = for_runner(spec, runner)
    check_device(spec, runner)
    if is_dataflow(runner):
        check_remote(spec, inputs)
    from clipbeam.pipeline.sample import check_sample

    check_output_outside_inputs(spec, inputs)
    units = plan(inputs)
    schema, image_format = check_inputs(spec, units)
    check_sample(spec, units[0], image_format)
    check_output(spec, inputs, units)
    if load_model:
        check_model(spec)
    # Last: it creates the output folder, which a job refused by any other check must not leave.
    check_output_writable(spec)
    return LaunchPlan(spec=spec, units=units, image_format=image_format, schema=schema)
