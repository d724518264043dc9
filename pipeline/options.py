"""The command line of the clipbeam jobs: subcommands, their options, and what they turn into.

Every clipbeam option is accepted spelled with dashes (``--image-column``) and with underscores
(``--image_column``), so a Dataflow Flex Template, whose parameters are identifiers, can pass it.
Arguments clipbeam does not define are Beam pipeline options (``--runner``,
``--direct_num_workers``, ``--temp_location``...); an argument that is neither is an error, not a
warning, so a typo such as ``--min-scor`` cannot silently change what a job keeps.

Parsing never prints or exits (except ``--help``): problems raise :class:`LaunchError`, which
:func:`clipbeam.pipeline.cli.main` prints as one line. That includes Beam's options: they are
parsed here
with Beam's own parser, so a value Beam refuses (``--direct_num_workers abc``, ``--runner`` without
a name, an unknown runner) is one message naming the option, not Beam's usage and exit.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from clipbeam.pipeline.head_options import add_head_options, add_head_rules, head_fields
from clipbeam.transforms.limits import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_URL_SCHEMES,
    LOCAL_SCHEME,
)
from clipbeam.transforms.redact import redact
from clipbeam.transforms.spec import (
    DEVICES,
    DTYPES,
    EMBEDDING_DTYPES,
    IMAGE_FORMATS,
    KINDS,
    PREPROCESS_MODES,
    JobSpec,
)

__all__ = [
    "JOB_KINDS",
    "NONE",
    "LaunchError",
    "ParsedArgs",
    "build_parser",
    "parse_args",
    "runner_name",
]

JOB_KINDS: tuple[str, ...] = KINDS

# The column value that means "this dataset has no such column" (text-only / image-only embed).
NONE = "none"

_DEFAULT_TEMPLATE = "a photo of a {}."

_JOB_HELP = {
    "embed": "L2-normalized image and/or text embeddings -> OUTPUT/embeddings/",
    "score": "clip_score, the cosine similarity of each image-text pair -> OUTPUT/scores/",
    "filter": "keep or reject pairs by score, image size, caption length and concepts "
    "-> OUTPUT/kept/, OUTPUT/rejected/",
    "classify": "zero-shot labels: top-k labels and probabilities per image -> OUTPUT/labels/",
}


class LaunchError(Exception):
    """A problem with a job's arguments, input, model or output, found before the job runs.

    Its message says what is wrong and what to do; the command line prints it without a
    traceback and exits with status 2. Credentials in URLs it quotes are redacted.
    """

    def __init__(self, message: str):
        super().__init__(redact(message))


@dataclass(frozen=True)
class ParsedArgs:
    """The parsed command line.

    Attributes:
        command: the subcommand (a job kind for the jobs).
        inputs: the ``--input`` patterns, in the order given.
        spec: the job's specification (``None`` for a non-job subcommand).
        beam_args: the arguments left for Beam's ``PipelineOptions``.
        labels_file: the ``--labels-file`` path, if labels were read from one.
    """

    command: str
    inputs: tuple[str, ...]
    spec: JobSpec | None
    beam_args: tuple[str, ...]
    labels_file: str | None = None


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`LaunchError` instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise LaunchError(f"{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option once, with dashes; its underscore alias is accepted but not listed."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if action.option_strings:
            shown = [s for s in action.option_strings if "_" not in s] or action.option_strings
            action = argparse.Action(
                shown,
                action.dest,
                nargs=action.nargs,
                choices=action.choices,
                metavar=action.metavar,
                help=action.help,
            )
        return super()._format_action_invocation(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        # Only show a default where there is one worth showing.
        if action.default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
            return action.help or ""
        return super()._get_help_string(action)


def _add(group: Any, name: str, **kwargs: Any) -> None:
    """Adds ``--name`` with both spellings; ``name`` is given with dashes."""
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    group.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


# -- value types (their messages name the expected value; argparse adds the option name) ---------


def _number(kind: type, low: float | None = None, high: float | None = None, *, low_open=False):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            left = "(" if low_open else "["
            bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise argparse.ArgumentTypeError(f"expected a value in {bounds}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value" messages
    return parse


def _bool(text: str) -> bool:
    """Flex Templates pass flags as ``--resume=true``; accept the usual spellings."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def _byte_count(text: str) -> int:
    """A size in bytes: ``67108864``, ``64MiB`` or ``50MB`` (KB/MB/GB decimal, KiB/MiB/GiB
    binary)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes such as 67108864, 64MiB or 50MB, got {text!r}"
        )
    value = int(match.group(1)) * _BYTE_UNITS[unit]
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 byte, got {text!r}")
    return value


def _pixel_count(text: str) -> int:
    """A pixel limit: at least 1, at most what Pillow opens at all."""
    from clipbeam.transforms.limits import pillow_pixel_ceiling

    value = _number(int, 1)(text)
    ceiling = pillow_pixel_ceiling()
    if ceiling is not None and value > ceiling:
        raise argparse.ArgumentTypeError(
            f"expected at most {ceiling}, the most pixels Pillow opens at all, got {text}"
        )
    return value


_pixel_count.__name__ = "int"  # argparse names the type in "invalid <type> value" messages


def _schemes(text: str) -> list[str]:
    """URL schemes, comma-separated; ``https://`` is accepted for ``https``."""
    return [part.strip().lower().removesuffix("://") for part in text.split(",")]


def _names(text: str) -> list[str]:
    """A comma-separated list; blanks around names are dropped, empty entries rejected later."""
    return [part.strip() for part in text.split(",")]


def _column(text: str) -> str | None:
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError(f"expected a column name, or '{NONE}' for no column")
    return None if text.lower() == NONE else text


# -- the parser ----------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, kind: str) -> None:
    io = parser.add_argument_group("input and output")
    _add(
        io,
        "input",
        # Several values, so a glob the shell expanded into many files still means those files.
        action="extend",
        nargs="+",
        required=True,
        metavar="PATTERN",
        help="Parquet files, globs or folders, local or gs://",
    )
    _add(io, "output", required=True, metavar="DIR", help="output folder, local or gs://")
    _add(
        io,
        "model",
        required=True,
        metavar="SOURCE",
        help="checkpoint folder in the Hugging Face layout, fsspec URL (gs://...), hub id, or a "
        "bundled demo model (demo-clip, demo-chinese-clip)",
    )
    _add(
        io,
        "resume",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        metavar="BOOL",
        help="skip work units whose output an earlier run of the same job completed",
    )

    columns = parser.add_argument_group("columns")
    no_column = {
        "embed": f"; '{NONE}' for a text-only dataset",
        "classify": "",
    }.get(kind, "")
    _add(
        columns,
        "image-column",
        type=_column,
        default="image",
        metavar="NAME",
        help=f"column holding the images{no_column}",
    )
    no_text = {
        "embed": f"; '{NONE}' for an image-only dataset",
        "classify": f"; '{NONE}' (the default) as classify reads images only",
    }.get(kind, "")
    _add(
        columns,
        "text-column",
        type=_column,
        default=None if kind == "classify" else "text",
        metavar="NAME",
        help=f"column holding the captions{no_text}",
    )
    _add(
        columns,
        "id-column",
        type=_column,
        default=None,
        metavar="NAME",
        help="column identifying rows, copied to every output; without one, an `id` column "
        "holds '<file>:<row>'",
    )
    _add(
        columns,
        "image-format",
        choices=IMAGE_FORMATS,
        default="auto",
        help="how images are stored: binary bytes, a Hugging Face {bytes, path} struct, or "
        "string paths/URLs (local, gs://, http(s)); auto decides from the column type",
    )
    _add(
        columns,
        "keep-columns",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="input columns copied unchanged to the output",
    )

    compute = parser.add_argument_group("model execution")
    _add(
        compute,
        "batch-size",
        type=_number(int, 1),
        default=32,
        metavar="N",
        help="rows per model call",
    )
    _add(
        compute,
        "device",
        choices=DEVICES,
        default="auto",
        help="auto: CUDA when the worker has a GPU, else CPU; cuda without a GPU is an error",
    )
    _add(
        compute,
        "dtype",
        choices=DTYPES,
        default="auto",
        help="dtype the model computes in; auto: float16 on GPU, bfloat16 on CPUs with native "
        "bfloat16 (AVX512-BF16, AMX), else float32",
    )
    _add(
        compute,
        "compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on GPU only; on CPU it gains 2-12%% for 20 s to "
        "3 min of compilation per worker process)",
    )
    _add(
        compute,
        "embedding-dtype",
        choices=EMBEDDING_DTYPES,
        default="float32",
        help="dtype embeddings are stored in",
    )
    _add(
        compute,
        "preprocess",
        choices=PREPROCESS_MODES,
        default="exact",
        help="exact: image inputs equal to transformers' bit for bit; fast: JPEGs decoded at "
        "1/2-1/8 scale and resized in steps, several times less decoding work, image features "
        "within 0.995 cosine of exact",
    )

    limits = parser.add_argument_group(
        "limits (what one row may cost; a row over a limit goes to OUTPUT/errors/ with the reason)"
    )
    _add(
        limits,
        "max-image-pixels",
        type=_pixel_count,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="largest width x height decoded, checked from the image header before decoding "
        "(decompression bombs)",
    )
    _add(
        limits,
        "max-image-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_IMAGE_BYTES,
        metavar="BYTES",
        help="largest encoded image read from a cell, a file or a URL (e.g. 64MiB); a download "
        "stops there",
    )
    _add(
        limits,
        "max-text-chars",
        type=_number(int, 1),
        default=DEFAULT_MAX_TEXT_CHARS,
        metavar="N",
        help="longest caption accepted, in characters",
    )
    _add(
        limits,
        "http-timeout",
        type=_number(float, 0, low_open=True),
        default=30.0,
        metavar="SECONDS",
        help="time reading one image by URL may take in all (connecting, waiting, downloading)",
    )
    _add(
        limits,
        "allowed-url-schemes",
        type=_schemes,
        action="extend",
        default=[],
        metavar="A,B",
        help=f"schemes image paths may use; '{LOCAL_SCHEME}' allows local paths (default: "
        f"{','.join(DEFAULT_URL_SCHEMES)}; on Dataflow "
        f"{','.join(s for s in DEFAULT_URL_SCHEMES if s != LOCAL_SCHEME)}, as a worker's "
        "disk holds no dataset)",
    )
    add_head_options(parser, _add)


def _add_filter(parser: argparse.ArgumentParser) -> None:
    rules = parser.add_argument_group(
        "filter rules (a row is kept when it passes every rule given)"
    )
    _add(
        rules,
        "min-score",
        type=_number(float, -1.0, 1.0),
        metavar="X",
        help="reject pairs whose clip_score is below X",
    )
    _add(
        rules,
        "top-fraction",
        type=_number(float, 0.0, 1.0, low_open=True),
        metavar="F",
        help="keep the best-scoring fraction F of the whole dataset (global cut from an "
        "approximate quantile, then a second pass); not with --min-score",
    )
    _add(
        rules,
        "min-image-side",
        type=_number(int, 1),
        metavar="N",
        help="reject images whose shorter side is below N pixels",
    )
    _add(
        rules,
        "max-aspect-ratio",
        type=_number(float, 1.0),
        metavar="R",
        help="reject images whose long/short side ratio exceeds R",
    )
    _add(
        rules,
        "min-text-chars",
        type=_number(int, 0),
        metavar="N",
        help="reject captions shorter than N characters (after stripping blanks)",
    )
    _add(
        rules,
        "reject-concepts",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="reject images similar to any of these concepts (needs --concept-threshold)",
    )
    _add(
        rules,
        "concept-threshold",
        type=_number(float, -1.0, 1.0),
        metavar="T",
        help="cosine similarity between image and concept prompt at or above which a concept "
        "rejects an image",
    )
    add_head_rules(rules, _add)
    _add_templates(rules, "concept")


def _add_classify(parser: argparse.ArgumentParser) -> None:
    labels = parser.add_argument_group("labels")
    _add(
        labels,
        "labels",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="candidate labels, comma-separated",
    )
    _add(
        labels,
        "labels-file",
        metavar="FILE",
        help="a UTF-8 text file (local or gs://) with one label per line; not with --labels",
    )
    _add_templates(labels, "label")
    _add(
        labels,
        "top-k",
        type=_number(int, 1),
        default=5,
        metavar="K",
        help="labels kept per image (at most the number of labels)",
    )


def _add_templates(group: Any, what: str) -> None:
    _add(
        group,
        "template",
        action="append",
        default=None,
        metavar="TEMPLATE",
        help=f"prompt template with one {{}} for the {what}; repeat to average several "
        f"(default: {_DEFAULT_TEMPLATE!r})",
    )


def build_parser(prog: str = "clipbeam") -> argparse.ArgumentParser:
    """The ``clipbeam`` argument parser, one subcommand per job.

    Returns:
        A parser whose ``parse_known_args`` leaves Beam's pipeline options as extras.
    """
    parser = _Parser(
        prog=prog,
        description="CLIP and Chinese-CLIP over image-text Parquet datasets on Apache Beam. "
        "Any option not listed under a job is passed to Beam (--runner, --direct_num_workers, "
        "--temp_location, --project, --region...).",
        epilog="other commands (each with its own --help): demo (an offline demo on generated "
        "scenes), report DIR (an HTML report of a job's output), train (contrastive training "
        "of a checkpoint on image-text Parquet), train-head (a head of your own on embeddings and "
        "labels), convert-head (LAION's or NeMo Curator's heads as clipbeam heads)",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for kind in JOB_KINDS:
        sub = commands.add_parser(
            kind,
            help=_JOB_HELP[kind],
            description=_JOB_HELP[kind]
            + ". Options are also accepted with underscores (--image_column); options not "
            "listed here are Beam pipeline options.",
            formatter_class=_HelpFormatter,
            allow_abbrev=False,
        )
        _add_common(sub, kind)
        if kind == "filter":
            _add_filter(sub)
        elif kind == "classify":
            _add_classify(sub)
    return parser


# -- from arguments to a job -----------------------------------------------------------------------


def parse_args(argv: Sequence[str], *, read_text: Callable[[str], str] | None = None) -> ParsedArgs:
    """Parses a clipbeam command line.

    Args:
        argv: the arguments after the program name.
        read_text: reads a ``--labels-file`` (defaults to the storage layer, so gs:// works).

    Returns:
        The subcommand, the job's :class:`JobSpec` and the arguments left for Beam.

    Raises:
        LaunchError: unknown or malformed arguments, or options that conflict.
    """
    parser = build_parser()
    namespace, extras = parser.parse_known_args(list(argv))
    command = namespace.command
    _check_beam_args(extras, parser, command)
    args = vars(namespace)

    labels = list(args.get("labels") or [])
    labels_file = args.get("labels_file")
    if command == "classify":
        if labels and labels_file:
            raise LaunchError("pass --labels or --labels-file, not both")
        if labels_file:
            labels = _read_labels(labels_file, read_text)
        if not labels:
            raise LaunchError(
                "classify needs candidate labels: pass --labels 'cat,dog' or --labels-file FILE"
            )
    _check_names("--labels-file" if labels_file else "--labels", labels)
    _check_names("--keep-columns", args["keep_columns"])
    _check_names("--reject-concepts", args.get("reject_concepts") or [])
    _check_names("--allowed-url-schemes", args["allowed_url_schemes"])

    if command == "filter":
        _check_filter(args)

    templates = args.get("template") or [_DEFAULT_TEMPLATE]
    for template in templates:
        if template.count("{}") != 1:
            raise LaunchError(
                f"--template {template!r} must contain exactly one '{{}}' where the "
                f"{'label' if command == 'classify' else 'concept'} goes, "
                f"e.g. {_DEFAULT_TEMPLATE!r}"
            )

    options = _recorded_options(args)
    try:
        spec = JobSpec(
            kind=command,
            model=args["model"],
            output=args["output"].rstrip("/") or args["output"],
            image_column=args["image_column"],
            text_column=args["text_column"],
            id_column=args["id_column"],
            image_format=args["image_format"],
            keep_columns=tuple(args["keep_columns"]),
            batch_size=args["batch_size"],
            device=args["device"],
            dtype=args["dtype"],
            compile=args["compile"],
            embedding_dtype=args["embedding_dtype"],
            preprocess=args["preprocess"],
            resume=args["resume"],
            min_score=args.get("min_score"),
            top_fraction=args.get("top_fraction"),
            min_image_side=args.get("min_image_side"),
            max_aspect_ratio=args.get("max_aspect_ratio"),
            min_text_chars=args.get("min_text_chars"),
            reject_concepts=tuple(args.get("reject_concepts") or ()),
            concept_threshold=args.get("concept_threshold"),
            labels=tuple(labels),
            templates=tuple(templates),
            top_k=args.get("top_k") or 5,
            http_timeout=args["http_timeout"],
            max_image_pixels=args["max_image_pixels"],
            max_image_bytes=args["max_image_bytes"],
            max_text_chars=args["max_text_chars"],
            allowed_url_schemes=tuple(args["allowed_url_schemes"] or DEFAULT_URL_SCHEMES),
            options=options,
            **head_fields(args),
        )
    except ValueError as exc:
        # JobSpec lists its problems one per line; the command line prints one line.
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines()]
        raise LaunchError(f"{lines[0]} {'; '.join(lines[1:])}".strip()) from None
    return ParsedArgs(
        command=command,
        inputs=tuple(args["input"]),
        spec=spec,
        beam_args=tuple(extras),
        labels_file=labels_file,
    )


def _check_filter(args: dict[str, Any]) -> None:
    if args["min_score"] is not None and args["top_fraction"] is not None:
        raise LaunchError(
            "pass --min-score or --top-fraction, not both: --min-score keeps pairs above a fixed "
            "similarity, --top-fraction keeps the best fraction of the dataset"
        )
    if args["reject_concepts"] and args["concept_threshold"] is None:
        raise LaunchError(
            "--reject-concepts needs --concept-threshold T, the image-concept cosine similarity "
            "at or above which an image is rejected (it depends on the model: look at the "
            "scores of a few known images first)"
        )
    if args["concept_threshold"] is not None and not args["reject_concepts"]:
        raise LaunchError("--concept-threshold is set but --reject-concepts is not")
    if args["template"] and not args["reject_concepts"]:
        raise LaunchError("--template only applies to --reject-concepts in filter")
    rules = ("min_score", "top_fraction", "min_image_side", "max_aspect_ratio", "min_text_chars")
    listed = ("reject_concepts", "min_head", "max_head")
    if all(args[r] is None for r in rules) and not any(args[r] for r in listed):
        raise LaunchError(
            "filter needs at least one rule: --min-score, --top-fraction, --min-image-side, "
            "--max-aspect-ratio, --min-text-chars, --reject-concepts, --min-head or --max-head"
        )


def _check_names(option: str, names: Sequence[str]) -> None:
    if any(not name for name in names):
        raise LaunchError(f"{option} holds an empty name: {','.join(names)!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LaunchError(f"{option} repeats {', '.join(duplicates)}")


def _read_labels(path: str, read_text: Callable[[str], str] | None) -> list[str]:
    if read_text is None:
        from clipbeam.transforms import storage

        def read_text(p: str) -> str:
            return storage.read_bytes(p).decode("utf-8")

    try:
        text = read_text(path)
    except FileNotFoundError:
        raise LaunchError(f"--labels-file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise LaunchError(f"--labels-file {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise LaunchError(f"cannot read --labels-file {path}: {exc}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise LaunchError(f"--labels-file {path} holds no labels (expected one per line)")
    return labels


def _recorded_options(args: dict[str, Any]) -> dict[str, Any]:
    """The clipbeam options as given, JSON-serializable, for output metadata and summary.json."""
    recorded = {}
    for key, value in sorted(args.items()):
        if isinstance(value, tuple):
            value = list(value)
        recorded[key] = value
    return recorded


def _check_beam_args(extras: list[str], parser: argparse.ArgumentParser, command: str) -> None:
    """Fails on arguments that are neither clipbeam's nor Beam's (typos must not be ignored), and
    on Beam options whose value Beam would refuse.

    Beam itself only logs "Discarding unparseable args"; this collects Beam's options the way
    ``PipelineOptions.get_all_options`` does and turns a leftover into an error with a hint. A
    value Beam's parser refuses (``--direct_num_workers abc``) would make Beam print its whole
    usage and exit; here it is one :class:`LaunchError` naming the option, the value and what
    the option takes.
    """
    if not extras:
        return
    beam_parser = _beam_parser()
    try:
        beam_namespace, unknown = beam_parser.parse_known_args(extras)
    except argparse.ArgumentError as exc:
        raise _beam_value_error(exc, beam_parser, extras) from None
    except (TypeError, ValueError) as exc:
        # A few of Beam's options check their value in a custom action, not through argparse.
        raise LaunchError(
            f"a Beam pipeline option in {' '.join(extras)!r} has a value Beam cannot take: {exc}"
        ) from None
    if unknown:
        _unknown_argument_error(unknown, parser, beam_parser, command)
    runner_name(getattr(beam_namespace, "runner", None))  # raises for a runner Beam does not know


def _unknown_argument_error(
    unknown: list[str],
    parser: argparse.ArgumentParser,
    beam_parser: argparse.ArgumentParser,
    command: str,
) -> NoReturn:
    flags = [a for a in unknown if a.startswith("-")]
    if not flags:
        raise LaunchError(
            f"unexpected argument {unknown[0]!r} (options take the form --name value; quote "
            "globs so the shell does not expand them)"
        )
    jobs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    name = flags[0].split("=", 1)[0]
    owners = [job for job, p in jobs.items() for a in p._actions if name in a.option_strings]
    if owners:
        raise LaunchError(f"{name} is an option of clipbeam {' and '.join(owners)}, not {command}")
    known = [s for p in (beam_parser, jobs[command]) for a in p._actions for s in a.option_strings]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise LaunchError(
        f"unknown option {name} for clipbeam {command}: it is neither a clipbeam option nor a "
        f"Beam pipeline option{hint}"
    )


def _beam_parser() -> argparse.ArgumentParser:
    """Beam's own option parser, raising ``argparse.ArgumentError`` instead of exiting."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    class BeamParser(_BeamArgumentParser):
        def error(self, message: str) -> NoReturn:
            # Reached for problems argparse does not tie to one option (exit_on_error=False
            # lets the others through as ArgumentError).
            raise LaunchError(f"Beam pipeline options: {message}")

    beam_parser = BeamParser(allow_abbrev=False, add_help=False, exit_on_error=False)
    # Beam may see an options class twice (e.g. re-imported in __main__); register each once.
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(beam_parser)
    return beam_parser


# argparse's messages for a refused value: "invalid int value: 'abc'", "invalid choice: 'x' (...".
_REFUSED_VALUE = re.compile(r"^invalid (?:choice|\S+ value): (.+?)(?: \(choose from .*)?$")
_IGNORED_VALUE = re.compile(r"^ignored explicit argument (.*)$")
_EXPECTED_BY_TYPE = {"int": "an integer", "float": "a number", "loads": "a JSON value"}


def _beam_value_error(
    exc: argparse.ArgumentError, beam_parser: argparse.ArgumentParser, extras: Sequence[str]
) -> LaunchError:
    """One message for a Beam option whose value argparse refused: option, value, expectation."""
    action = next(
        (a for a in beam_parser._actions if "/".join(a.option_strings) == exc.argument_name),
        None,
    )
    if action is None:
        return LaunchError(f"Beam pipeline option {exc.argument_name}: {exc.message}")
    # Name the option as it was typed (Beam accepts --experiment and --experiments...).
    typed = {a.split("=", 1)[0] for a in extras}
    name = next((s for s in action.option_strings if s in typed), action.option_strings[0])
    type_name = getattr(action.type, "__name__", None)
    if action.choices is not None:
        expected = f"one of {', '.join(str(c) for c in action.choices)}"
    elif action.dest == "runner":
        expected = "a runner name such as DirectRunner or DataflowRunner"
    elif type_name is None:
        expected = "a value"
    else:
        expected = _EXPECTED_BY_TYPE.get(type_name, f"a value of type {type_name}")
    refused = _REFUSED_VALUE.match(exc.message)
    if refused:
        return LaunchError(f"Beam pipeline option {name} takes {expected}, got {refused.group(1)}")
    ignored = _IGNORED_VALUE.match(exc.message)
    if ignored:
        return LaunchError(
            f"Beam pipeline option {name} is an on/off flag and takes no value, got "
            f"{ignored.group(1)}: pass {name} alone to turn it on, leave it out to keep it off"
        )
    if exc.message.startswith("expected "):
        return LaunchError(
            f"Beam pipeline option {name} is given without a value: it takes {expected} "
            f"({name} VALUE or {name}=VALUE)"
        )
    return LaunchError(f"Beam pipeline option {name}: {exc.message}")


def runner_name(runner: str | None) -> str:
    """The class name of the Beam runner that ``--runner`` selects, resolved as Beam does.

    Beam accepts a runner's class name in any case and with or without its ``Runner`` suffix
    (``dataflow``, ``DataflowRunner``), or the dotted path of a runner class.

    Args:
        runner: the ``--runner`` value; ``None`` for Beam's default.

    Returns:
        The runner's class name, e.g. ``"DataflowRunner"`` (``"DirectRunner"`` for ``None``).

    Raises:
        LaunchError: a name that is neither a runner Beam knows nor a dotted path.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    if runner is None:
        return StandardOptions.DEFAULT_RUNNER
    try:
        # What apache_beam.runners.runner.create_runner resolves names with.
        from apache_beam.runners.runner import _RUNNER_MAP as known
    except ImportError:
        known = {name.lower(): name for name in StandardOptions.KNOWN_RUNNER_NAMES}
    key = runner.strip().lower()
    path = known.get(key, known.get(key + "runner", runner))
    if "." not in path and path not in StandardOptions.KNOWN_RUNNER_NAMES:
        raise LaunchError(
            f"Beam pipeline option --runner takes a runner name such as DirectRunner or "
            f"DataflowRunner (one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}) or the "
            f"dotted path of a PipelineRunner subclass, got {runner!r}"
        )
    return path.rsplit(".", 1)[-1]
