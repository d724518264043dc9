"""The ``clipbeam`` argument parser: one subcommand per job, every option, its help and value type.

Every clipbeam option is accepted spelled with dashes (``--image-column``) and with underscores
(``--image_column``), so a Dataflow Flex Template, whose parameters are identifiers, can pass it.
The parser never prints or exits (except ``--help``): problems raise :class:`LaunchError`, which
:func:`clipbeam.pipeline.cli.main` prints as one line. The help texts are also the Flex
Template's parameter help (``templates/metadata.json``). From a parsed command line to a job:
:mod:`clipbeam.pipeline.arguments`.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, NoReturn

from clipbeam.pipeline.head_options import add_head_options, add_head_rules
from clipbeam.transforms.limits import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_URL_SCHEMES,
    LOCAL_SCHEME,
    MAX_FETCH_TIMEOUT,
    MAX_IMAGE_BYTES_CEILING,
    MAX_TEXT_CHARS_CEILING,
)
from clipbeam.transforms.redact import redact
from clipbeam.transforms.spec import (
    DEVICES,
    DTYPES,
    EMBEDDING_DTYPES,
    IMAGE_FORMATS,
    KINDS,
    MAX_BATCH_SIZE,
    PREPROCESS_MODES,
)

__all__ = [
    "DEFAULT_MAX_ERROR_FRACTION",
    "DEFAULT_TEMPLATE",
    "JOB_KINDS",
    "NONE",
    "LaunchError",
    "build_parser",
]

JOB_KINDS: tuple[str, ...] = KINDS

# The column value that means "this dataset has no such column" (text-only / image-only embed).
NONE = "none"

# More than this share of rows in errors/ makes the job fail: a wrong column, not bad rows.
DEFAULT_MAX_ERROR_FRACTION = 0.9

# The prompt of --template when none is given (classify's labels, filter's concepts).
DEFAULT_TEMPLATE = "a photo of a {}."

_JOB_HELP = {
    "embed": "L2-normalized image and/or text embeddings -> OUTPUT/embeddings/",
    "score": "clip_score, the cosine similarity of each image-text pair -> OUTPUT/scores/",
    "filter": "keep or reject pairs by score, image size, caption length and concepts "
    "-> OUTPUT/kept/, OUTPUT/rejected/",
    "classify": "zero-shot labels: top-k labels and probabilities per image -> OUTPUT/labels/",
}


class LaunchError(Exception):
    """A problem with a job's arguments, input, model or output, found before the job runs.

    Its message says what is wrong and what to do, on one line; the command line prints it
    without a traceback and exits with status 2. Credentials in URLs it quotes are redacted.
    """

    def __init__(self, message: str):
        # One line: a loader's multi-line report (one problem a line) reads as "a; b; c".
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        super().__init__(redact("; ".join(lines)))


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


def add_image_model_options(group: Any) -> None:
    """How a job that embeds raw images with ``--model`` runs it (dedup, search): ``--batch-size``,
    ``--device`` and ``--dtype``, as clipbeam embed takes them."""
    _add(
        group,
        "batch-size",
        type=_number(int, 1, MAX_BATCH_SIZE),
        default=32,
        metavar="N",
        help="images per model call",
    )
    _add(group, "device", choices=DEVICES, default="auto", help="as clipbeam embed's --device")
    _add(group, "dtype", choices=DTYPES, default="float32", help="as clipbeam embed's --dtype")


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
    if not 1 <= value <= MAX_IMAGE_BYTES_CEILING:
        raise argparse.ArgumentTypeError(
            f"expected a value in [1, {MAX_IMAGE_BYTES_CEILING}] bytes (1 TiB), got {text!r}"
        )
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


def _column_name(text: str) -> str:
    """A column that must exist (no 'none'): the name, stripped, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a column name, got an empty one")
    return text.strip()


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
    _add(
        io,
        "max-error-fraction",
        type=_number(float, 0.0, 1.0),
        default=DEFAULT_MAX_ERROR_FRACTION,
        metavar="F",
        help="exit with status 1, naming the most common reason, when more than this fraction "
        "of the input rows went to OUTPUT/errors/ (the outputs are written first); 1 never fails",
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
        type=_number(int, 1, MAX_BATCH_SIZE),
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
        "bfloat16 (AVX512-BF16, AMX), else float32; int8 (CPU only, never picked by auto): int8 "
        "linear layers, faster with slightly changed scores",
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
        type=_number(int, 1, MAX_TEXT_CHARS_CEILING),
        default=DEFAULT_MAX_TEXT_CHARS,
        metavar="N",
        help="longest caption accepted, in characters",
    )
    _add(
        limits,
        "http-timeout",
        type=_number(float, 0, MAX_FETCH_TIMEOUT, low_open=True),
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
        help="keep the best-scoring fraction F of the whole dataset: at most floor(F x rows) "
        "rows, plus any that tie with the lowest kept score (ties are kept together); a global "
        "cut, then a second pass; not with --min-score",
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
        f"(default: {DEFAULT_TEMPLATE!r})",
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
        epilog="other commands (each with its own --help): dedup (exact and semantic duplicates "
        "of embeddings), demo (an offline demo on generated scenes), report DIR (an HTML report "
        "of a job's output), search (the rows that best match text queries), train (contrastive "
        "training of a checkpoint on image-text Parquet), train-head (a head of your own on "
        "embeddings and labels), convert-head (LAION's or NeMo Curator's heads as clipbeam heads)",
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
