"""``clipbeam report DIR`` on the command line, and :func:`write_report` for Python callers:
collect a finished job's output folder, render the page, write it (``DIR/report.html``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

from clipbeam.pipeline.report.collect import DEFAULT_EXAMPLES, collect
from clipbeam.pipeline.report.data import ReportError
from clipbeam.pipeline.report.inputs import THUMBNAIL_SIDE
from clipbeam.pipeline.report.page import render
from clipbeam.transforms import storage

__all__ = ["REPORT_FILE", "build_parser", "main", "write_report"]

REPORT_FILE = "report.html"


def write_report(
    output: str,
    destination: str | None = None,
    *,
    examples: int = DEFAULT_EXAMPLES,
    thumbnail_side: int = THUMBNAIL_SIDE,
    log_scale: bool = False,
) -> str:
    """Builds the report of a job's output folder and writes it.

    Args:
        output: the job's ``--output`` folder, local or ``gs://``.
        destination: where to write the page; ``OUTPUT/report.html`` by default.
        examples: rows shown per section.
        thumbnail_side: longest side of the thumbnails, in pixels.
        log_scale: the score histogram's counts on a log scale.

    Returns:
        The path of the page.

    Raises:
        ReportError: the folder is not a finished job's output, or the page cannot be written.
    """
    data = collect(output, examples=examples, thumbnail_side=thumbnail_side)
    path = destination or storage.join(data.output, REPORT_FILE)
    try:
        storage.write_atomic(path, render(data, log_scale=log_scale).encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path}: {exc}") from None
    return path


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid ... value" messages
    return parse


def build_parser(prog: str = "clipbeam report") -> argparse.ArgumentParser:
    """The argument parser of ``clipbeam report``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Writes one self-contained HTML page (viewable offline) about a finished "
        "job's output folder: counts, score histogram, highest and lowest scored pairs with "
        "thumbnails, rejected examples with their reasons, errors by type.",
    )
    parser.add_argument("dir", metavar="DIR", help="the job's --output folder, local or gs://")
    parser.add_argument(
        "--out", metavar="FILE", help=f"where to write the page (default: DIR/{REPORT_FILE})"
    )
    parser.add_argument(
        "--examples",
        type=_at_least(0),
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"rows shown per section: highest, lowest, rejected (default: {DEFAULT_EXAMPLES})",
    )
    parser.add_argument(
        "--thumbnail-size",
        type=_at_least(16),
        default=THUMBNAIL_SIDE,
        metavar="PX",
        help=f"longest side of the thumbnails (default: {THUMBNAIL_SIDE})",
    )
    parser.add_argument(
        "--log-scale",
        action="store_true",
        help="the score histogram's counts on a log scale, so that a small rejected share shows",
    )
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """``clipbeam report DIR``: writes the page and prints its path.

    Returns:
        0 on success, 2 when the folder is not a finished job's output or the page cannot be
        written (the reason is printed on one line).
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        path = write_report(
            args.dir,
            args.out,
            examples=args.examples,
            thumbnail_side=args.thumbnail_size,
            log_scale=args.log_scale,
        )
    except ReportError as exc:
        print(f"clipbeam report: error: {exc}", file=sys.stderr)
        return 2
    print(f"clipbeam report: {path}")
    return 0
