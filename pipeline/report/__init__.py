"""``clipbeam report DIR``: one self-contained HTML page about a finished job's output folder.

The page shows the job's counts (from ``summary.json``), the distribution of ``clip_score``, the
highest and lowest scored pairs with their captions and thumbnails, filter rejections by rule with
examples, zero-shot label counts, and errors by type. It needs no network to be viewed, and every
string that comes from the data is HTML-escaped.

The package's parts, in the order the data flows:

- :mod:`.data`: the records the page shows (:class:`ReportData`, :class:`Example`).
- :mod:`.collect`: reading the output folder into a :class:`ReportData` (:func:`collect`).
- :mod:`.inputs`: the example rows' captions and thumbnails, read back from the job's input.
- :mod:`.dedup`: a dedup output's page content: borderline duplicate groups, removed share by eps.
- :mod:`.histogram`: the geometry of the score histogram.
- :mod:`.page`: the page (:func:`render`), from the Jinja2 template ``page.html.j2``.
- :mod:`.cli`: ``clipbeam report`` (:func:`main`) and :func:`write_report`.
"""

from __future__ import annotations

from clipbeam.pipeline.report.cli import REPORT_FILE, build_parser, main, write_report
from clipbeam.pipeline.report.collect import DEFAULT_EXAMPLES, collect
from clipbeam.pipeline.report.data import Example, ReportData, ReportError
from clipbeam.pipeline.report.inputs import THUMBNAIL_SIDE, thumbnail_uri
from clipbeam.pipeline.report.page import render

__all__ = [
    "DEFAULT_EXAMPLES",
    "REPORT_FILE",
    "THUMBNAIL_SIDE",
    "Example",
    "ReportData",
    "ReportError",
    "build_parser",
    "collect",
    "main",
    "render",
    "thumbnail_uri",
    "write_report",
]
