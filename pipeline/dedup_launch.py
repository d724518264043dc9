"""The launcher side of ``clipbeam dedup``: its arguments and the checks made before submitting.

Every input file's columns and embedding dimension (or, with ``--model``, the model itself and the
image column), the reference set of ``--against`` (same dimension), and the output folder (empty,
or the same job with ``--resume``) are checked here, so that a bad argument fails in seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from clipbeam.pipeline.beam_options import resolve_beam_args
from clipbeam.pipeline.options import (
    LaunchError,
    _add,
    _bool,
    _column,
    _column_name,
    _HelpFormatter,
    _names,
    _number,
    _Parser,
    add_image_model_options,
)
from clipbeam.pipeline.validate import JOB_FILE, plan
from clipbeam.transforms import storage
from clipbeam.transforms.dedup import stages
from clipbeam.transforms.dedup.spec import DEFAULT_EPS, SHUFFLES, DedupSpec
from clipbeam.transforms.embeddings import EmbeddingTypeError, embedding_dim, l2_normalize
from clipbeam.transforms.units import WorkUnit, iter_batches

__all__ = [
    "build_parser",
    "check_earlier_run",
    "check_schema",
    "parse",
    "validate_dedup",
]

_log = logging.getLogger("clipbeam")
# Spec fields a resumed run may change: they do not change any output row.
_RESUMABLE = frozenset({"resume", "block_rows", "shuffle", "options"})


def _eps_list(text: str) -> list[float]:
    """``0.03,0.01``: thresholds in [0, 1], comma-separated, none empty."""
    parse = _number(float, 0.0, 1.0)
    parts = text.split(",")
    if any(not part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated thresholds, got {text!r}")
    return [parse(part.strip()) for part in parts]


def build_parser(prog: str = "clipbeam dedup") -> _Parser:
    """The ``clipbeam dedup`` argument parser (unknown options are Beam's)."""
    parser = _Parser(
        prog=prog,
        description="exact and semantic (SemDeDup) duplicates of embeddings -> OUTPUT/dedup/, "
        "OUTPUT/duplicates/. Options are also accepted with underscores.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    io = parser.add_argument_group("input and output")
    _add(
        io,
        "input",
        action="extend",
        nargs="+",
        required=True,
        metavar="PATTERN",
        help="Parquet with an id and an embedding column (clipbeam embed's embeddings/), or "
        "raw image Parquet with --model",
    )
    _add(io, "output", required=True, metavar="DIR", help="output folder, local or gs://")
    _add(
        io,
        "resume",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        metavar="BOOL",
        help="skip cluster groups an earlier run of the same job completed",
    )
    columns = parser.add_argument_group("columns")
    _add(
        columns,
        "embedding-column",
        type=_column_name,
        default="image_embedding",
        metavar="NAME",
        help="fixed_size_list or list of float32/float16, one embedding per row",
    )
    _add(
        columns,
        "id-column",
        type=_column,
        default="id",
        metavar="NAME",
        help="column identifying rows; 'none' writes '<file>:<row>' ids",
    )
    _add(
        columns,
        "image-column",
        type=_column,
        default=None,
        metavar="NAME",
        help="image bytes (binary or {bytes, path} struct) hashed for exact duplicates; with "
        "--model, the images embedded (bytes, struct, or paths/URLs: those are not hashed)",
    )
    _add(
        columns,
        "keep-columns",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="input columns copied to OUTPUT/dedup/",
    )
    model = parser.add_argument_group("raw images (embedded in the same job)")
    _add(
        model,
        "model",
        default=None,
        metavar="SOURCE",
        help="embed --image-column with this checkpoint instead of reading --embedding-column "
        "(as clipbeam embed's --model)",
    )
    add_image_model_options(model)
    semantic = parser.add_argument_group("SemDeDup")
    _add(
        semantic,
        "clusters",
        type=_number(int, 1),
        default=1000,
        metavar="K",
        help="k-means clusters",
    )
    _add(
        semantic,
        "fit-rows",
        type=_number(int, 1),
        default=1_000_000,
        metavar="N",
        help="most rows the k-means fit sees (sampled across all inputs)",
    )
    _add(
        semantic,
        "eps",
        type=_eps_list,
        default=list(DEFAULT_EPS),
        metavar="E,F",
        help="thresholds: a row is a duplicate when max_similarity >= 1 - eps; the first "
        "one is listed in OUTPUT/duplicates/",
    )
    _add(
        semantic,
        "seed",
        type=_number(int, 0),
        default=0,
        metavar="N",
        help="seed of the fit sample and of k-means",
    )
    _add(
        semantic, "niter", type=_number(int, 1), default=20, metavar="N", help="k-means iterations"
    )
    _add(
        semantic,
        "max-cluster-rows",
        type=_number(int, 2),
        default=50_000,
        metavar="N",
        help="a cluster with more rows is split by a second-level k-means",
    )
    _add(
        semantic,
        "block-rows",
        type=_number(int, 1),
        default=1024,
        metavar="N",
        help="rows per tile of the pairwise similarities",
    )
    _add(
        semantic,
        "shuffle",
        choices=SHUFFLES,
        default="auto",
        help="how rows reach their cluster group: the runner's shuffle, or files under "
        "OUTPUT/_staging/ read back group by group, so that memory stays flat "
        "with the rows (auto: files on the DirectRunner, whose shuffle is in memory)",
    )
    against = parser.add_argument_group("decontamination")
    _add(
        against,
        "against",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="embeddings of a reference set (an evaluation set): rows near one are removed",
    )
    _add(
        against,
        "against-eps",
        type=_number(float, 0.0, 1.0),
        default=0.05,
        metavar="E",
        help="a row is removed when max_reference_similarity >= 1 - E",
    )
    _add(
        against,
        "against-id-column",
        type=_column,
        default="id",
        metavar="NAME",
        help="the reference set's id column ('none': '<file>:<row>')",
    )
    _add(
        against,
        "against-embedding-column",
        type=_column_name,
        default="image_embedding",
        metavar="NAME",
        help="the reference set's embedding column",
    )
    _add(
        against,
        "against-image-column",
        type=_column_name,
        default=None,
        metavar="NAME",
        help="the reference set's image column instead, embedded with --model as the --input "
        "images are",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[DedupSpec, list[str], list[str]]:
    """Command line -> ``(spec without dim, inputs, beam arguments)``."""
    args, beam_args = build_parser().parse_known_args(list(argv))
    # --runner dask / DaskRunner and --dask_address, as the other jobs take them
    beam_args = resolve_beam_args(beam_args)
    values = vars(args)
    inputs = values.pop("input")
    options = dict(values)
    try:
        spec = DedupSpec(
            output=values["output"],
            embedding_column=values["embedding_column"],
            id_column=values["id_column"],
            image_column=values["image_column"],
            keep_columns=tuple(values["keep_columns"]),
            clusters=values["clusters"],
            fit_rows=values["fit_rows"],
            eps=tuple(values["eps"]),
            seed=values["seed"],
            niter=values["niter"],
            max_cluster_rows=values["max_cluster_rows"],
            block_rows=values["block_rows"],
            against=tuple(values["against"]),
            against_eps=values["against_eps"],
            against_id_column=values["against_id_column"],
            against_embedding_column=values["against_embedding_column"],
            against_image_column=values["against_image_column"],
            model=values["model"],
            device=values["device"],
            dtype=values["dtype"],
            batch_size=values["batch_size"],
            shuffle=values["shuffle"],
            resume=values["resume"],
            options=options,
        )
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    return spec, inputs, beam_args


def check_schema(spec: DedupSpec, schema: pa.Schema, path: str, unit: WorkUnit) -> int:
    """The embedding dimension of one file; every other column checked."""
    _check_columns(
        schema,
        path,
        ("--id-column", spec.id_column),
        ("--image-column", spec.image_column),
        *(("--keep-columns", k) for k in spec.keep_columns),
    )
    if spec.model is not None:
        from clipbeam.transforms.images import resolve_image_format

        if spec.image_column is None:
            raise LaunchError("--model embeds raw images: name their column with --image-column")
        try:
            resolve_image_format(spec.image_column, schema.field(spec.image_column).type)
        except ValueError as exc:
            raise LaunchError(f"--image-column of {path}: {exc}") from None
        return spec.dim
    if spec.image_column is not None:
        t = schema.field(spec.image_column).type
        is_struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or is_struct):
            raise LaunchError(
                f"--image-column {spec.image_column!r} of {path} is {t}; exact duplicates need "
                "image bytes (binary, or a struct with a bytes field)"
            )
    first = None
    t = schema.field(spec.embedding_column).type if spec.embedding_column in schema.names else None
    if t is not None and not pa.types.is_fixed_size_list(t):
        first = next(iter_batches(unit, [spec.embedding_column], 64)).column(0)
    try:
        return embedding_dim(schema, spec.embedding_column, path, first)
    except EmbeddingTypeError as exc:
        raise LaunchError(str(exc)) from None


def _check_output(spec: DedupSpec, inputs: Sequence[str]) -> dict[str, Any]:
    record = json.loads(spec.to_json())
    record["inputs"] = list(inputs)
    path = storage.join(spec.output, JOB_FILE)
    found = []
    if not spec.resume:
        found = [
            d
            for d in (stages.OUTPUT_DIR, "errors")
            if storage.list_files(storage.join(spec.output, d))
        ]
        if storage.exists(path) or storage.exists(storage.join(spec.output, "summary.json")):
            found.append(JOB_FILE)
    check_earlier_run(spec.output, spec.resume, record, found, _RESUMABLE)
    return record


def check_earlier_run(
    output: str, resume: bool, record: dict[str, Any], found: Sequence[str], resumable: Any
) -> None:
    """Refuses an ``output`` holding an earlier run (``found``: what of it) without ``resume``,
    and, with it, one whose recorded job (``_job.json``) differs from ``record`` in a field not in
    ``resumable``."""
    path = storage.join(output, JOB_FILE)
    if not resume:
        if found:
            raise LaunchError(
                f"--output {output} already holds results of an earlier run "
                f"({', '.join(found)}). Pass --resume to finish that run, or choose an empty "
                "--output folder."
            )
    elif storage.exists(path):
        earlier = json.loads(storage.read_bytes(path))
        changed = sorted(
            k
            for k in set(earlier) | set(record)
            if k not in resumable and earlier.get(k) != record.get(k)
        )
        if changed:
            raise LaunchError(
                f"--resume: {output} holds a run of a different job (changed: "
                f"{', '.join(changed)}). Rerun with the same options, or choose an empty --output."
            )


def _check_against(spec: DedupSpec) -> list[WorkUnit]:
    """The reference set's units; every file's columns and dimension checked."""
    import dataclasses

    import pyarrow.parquet as pq

    units = plan(spec.against)
    as_input = dataclasses.replace(
        spec,
        embedding_column=spec.against_embedding_column,
        id_column=spec.against_id_column,
        image_column=None,
        keep_columns=(),
        model=None,
        against_image_column=None,
    )
    seen = set()
    for unit in units:
        if unit.path in seen:
            continue
        seen.add(unit.path)
        with storage.open_input(unit.path) as f:
            schema = pq.ParquetFile(f).schema_arrow
        if spec.against_image_column is not None:
            _check_reference_images(spec, schema, unit.path)
            continue
        dim = check_schema(as_input, schema, unit.path, unit)
        if dim != spec.dim:
            raise LaunchError(
                f"--against {unit.path} holds embeddings of dimension {dim}, the --input "
                f"embeddings have dimension {spec.dim}: both must come from one model"
            )
    return units


def _check_columns(schema: pa.Schema, path: str, *named: tuple[str, str | None]) -> None:
    """Each ``(option, column)`` with a column is a column of the file at ``path``."""
    for option, name in named:
        if name is not None and name not in schema.names:
            raise LaunchError(
                f"{option} {name!r} is not a column of {path} (its columns: "
                f"{', '.join(schema.names)})"
            )


def _check_reference_images(spec: DedupSpec, schema: pa.Schema, path: str) -> None:
    """A reference file of images (``--against-image-column``): its id and image columns."""
    from clipbeam.transforms.images import resolve_image_format

    _check_columns(
        schema,
        path,
        ("--against-id-column", spec.against_id_column),
        ("--against-image-column", spec.against_image_column),
    )
    try:
        resolve_image_format(
            spec.against_image_column, schema.field(spec.against_image_column).type
        )
    except ValueError as exc:
        raise LaunchError(f"--against-image-column of {path}: {exc}") from None


def _model_dim(spec: DedupSpec) -> int:
    """Loads ``--model`` once on CPU (a bad source fails at launch); its projection dimension."""
    from clipbeam.pipeline.validate import check_model
    from clipbeam.transforms.dedup.embed import image_job

    return check_model(image_job(spec)).projection_dim


def validate_dedup(
    spec: DedupSpec, inputs: Sequence[str]
) -> tuple[DedupSpec, list[WorkUnit], pa.Schema, list[WorkUnit]]:
    """Launch checks: inputs, columns of every file, one dimension, the reference set, the
    output folder.

    Returns:
        ``(spec with dim, units, first file's schema, reference set's units)``.
    """
    import dataclasses

    import pyarrow.parquet as pq

    from clipbeam.transforms.embeddings import embedding_matrix

    units = plan(inputs)
    if spec.model is not None:
        spec = dataclasses.replace(spec, dim=_model_dim(spec))
    schemas: dict[str, pa.Schema] = {}
    dims: dict[str, int] = {}
    for unit in units:
        if unit.path in schemas:
            continue
        with storage.open_input(unit.path) as f:
            schemas[unit.path] = pq.ParquetFile(f).schema_arrow
        dims[unit.path] = check_schema(spec, schemas[unit.path], unit.path, unit)
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{p}: {d}" for p, d in list(dims.items())[:4])
        raise LaunchError(f"the input files hold embeddings of different dimensions ({shown})")
    spec = dataclasses.replace(spec, dim=next(iter(dims.values())))
    if spec.model is None:
        first = next(iter_batches(units[0], [spec.embedding_column], 1024)).column(0)
        _, _, renormalized = l2_normalize(embedding_matrix(first, spec.dim)[0])
        if renormalized.any():
            _log.info("dedup: the input embeddings are not L2-normalized; the job normalizes them")
    against_units = _check_against(spec) if spec.against else []
    record = _check_output(spec, inputs)
    try:
        storage.check_writable(spec.output)
    except OSError as exc:
        raise LaunchError(f"--output {spec.output} is not writable: {exc}") from None
    storage.write_atomic(
        storage.join(spec.output, JOB_FILE),
        (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    return spec, units, schemas[units[0].path], against_units
