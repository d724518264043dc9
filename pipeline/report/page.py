"""The report page: :func:`render` turns a :class:`~.data.ReportData` into one self-contained
HTML document, from the Jinja2 template ``page.html.j2`` (and its stylesheet ``page.css``).

This module decides what the page says (texts, checks, bar lengths, the histogram's geometry);
the template holds the markup. Jinja2 escapes every value (``autoescape``), so captions, ids,
labels and error messages from the data are shown as text, and a name the template uses but is
not given fails loudly (``StrictUndefined``). The page needs no network to be viewed: styles are
inline, the histogram is inline SVG, thumbnails are JPEG ``data:`` URIs, and the page's Content
Security Policy forbids it from loading or running anything else.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2

from clipbeam.pipeline.report.data import Example, ReportData, reject_rules
from clipbeam.pipeline.report.histogram import Histogram, histogram
from clipbeam.pipeline.summary import counter_names
from clipbeam.transforms.errors import ERROR_TYPES

__all__ = ["TEMPLATE", "render"]

TEMPLATE = "page.html.j2"

_COUNT_NAMES = {
    "input_rows": "input rows",
    "output_rows": "output rows",
    "error_rows": "error rows",
    "kept": "kept",
    "rejected": "rejected",
    "units": "work units",
    "resumed_units": "resumed units",
    "queries": "queries",
    "query_errors": "query errors",
    "rows_searched": "rows searched",
    "result_rows": "result rows",
    "exact_duplicates": "exact copies removed",
    "against_removed": "near a reference row",
    "clusters": "k-means clusters",
    "clusters_split": "clusters split",
    "cluster_groups": "cluster groups",
}
# The counts a search page shows (its summary has no output_rows).
_SEARCH_COUNTS = (
    "queries",
    "query_errors",
    "input_rows",
    "rows_searched",
    "error_rows",
    "result_rows",
    "units",
    "resumed_units",
)
_DEDUP_COUNTS = (
    "input_rows",
    "output_rows",
    "error_rows",
    "exact_duplicates",
    "against_removed",
    "clusters",
    "clusters_split",
    "cluster_groups",
)


def _page_counts(kind: str) -> tuple[str, ...] | list[str]:
    """The summary counts a page shows: search and dedup summaries have their own."""
    return {"search": _SEARCH_COUNTS, "dedup": _DEDUP_COUNTS}.get(kind) or counter_names(kind)


_RULES = {
    "min_score": "clip_score below --min-score",
    "top_fraction": "below the --top-fraction cut",
    "min_image_side": "shorter image side below --min-image-side",
    "max_aspect_ratio": "aspect ratio above --max-aspect-ratio",
    "min_text_chars": "caption shorter than --min-text-chars",
}

_COLOURS = {"kept": "var(--kept)", "rejected": "var(--rejected)"}
_ACCENT = "var(--accent)"


@dataclass
class Card:
    """One example row as the page shows it."""

    id: Any
    thumbnail: str | None
    note: str | None
    score_name: str | None  # "clip_score" or "top-1 p"; None without a score
    score: float | None
    tags: list[str]  # the rules that rejected the row
    labels: str | None  # "label probability" of the top three labels
    size: str | None  # "W×H px"
    caption: str | None


@dataclass
class Row:
    """One table row of counts: a name, what it means, its count and its bar's share (percent)."""

    name: str
    meaning: str
    count: int
    share: float
    examples: list[dict[str, Any]] | None = None  # errors: the first rows of this type


@dataclass
class CardSection:
    """A section of example cards: its element id, title, optional intro line and cards."""

    id: str
    title: str
    intro: str
    cards: list[Card]


def render(data: ReportData, *, log_scale: bool = False) -> str:
    """The report page for ``data``: one HTML document with everything inline.

    Args:
        data: what :func:`~clipbeam.pipeline.report.collect.collect` read.
        log_scale: the score histogram's counts on a log scale.
    """
    return _environment().get_template(TEMPLATE).render(_context(data, log_scale))


@functools.cache
def _environment() -> jinja2.Environment:
    """The Jinja2 environment of the page's template, made once per process on first use."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("clipbeam.pipeline.report", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["thousands"] = _thousands
    env.filters["fixed"] = lambda value, digits: f"{value:.{digits}f}"
    return env


def _thousands(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _context(data: ReportData, log_scale: bool = False) -> dict[str, Any]:
    """The template's names: what each section of the page says."""
    kind, summary, fine = data.kind, data.summary, data.scores.fine
    rejections = None
    if kind == "filter":
        rejections = {
            "total": summary.get("rejected", 0),
            "rules": _rows(data.reject_rules, _rule_text),
            "cards": [_card(e) for e in data.rejected],
        }
    return {
        "kind": kind,
        "output": data.output,
        "meta": _meta(data),
        "notes": data.notes,
        "counts": [
            (key, summary[key], _COUNT_NAMES.get(key, key))
            for key in _page_counts(kind)
            if key in summary
        ],
        "dedup": _dedup(data),
        "checks": _checks(data),
        "files": ", ".join(f"{folder}/ {rows:,} rows" for folder, rows in data.file_rows.items()),
        "no_scores": _no_scores(data),
        "scores": data.scores,
        "histogram": _histogram(data, log_scale),
        "legend": [(f, _COLOURS.get(f, _ACCENT)) for f in fine] if len(fine) > 1 else [],
        "labels": _rows(data.label_counts) if kind == "classify" else [],
        "label_total": sum(data.label_counts.values()),
        "sections": _card_sections(data),
        "rejections": rejections,
        "queries": _query_sections(data),
        "errors": _rows(
            data.error_counts,
            lambda kind: ERROR_TYPES.get(kind, ""),
            lambda kind: data.error_examples.get(kind, []),
        ),
        "options": [
            (k, json.dumps(v, ensure_ascii=False))
            for k, v in sorted((summary.get("options") or {}).items())
        ],
    }


@dataclass
class EpsRow:
    """One eps of the removed-share table."""

    eps: float
    removed: int
    percent: float
    run: bool  # one of the run's --eps
    first: bool  # the first --eps: the one duplicates/ lists


def _dedup(data: ReportData) -> dict[str, Any] | None:
    """A dedup output's section: the removed share by eps, the borderline duplicate groups."""
    view = data.dedup
    if view is None:
        return None
    run = {float(e) for e, _ in view.run_eps}
    first = float(view.first_eps) if view.first_eps else None
    rows = [
        EpsRow(
            eps, removed, 100 * removed / view.rows if view.rows else 0.0, eps in run, eps == first
        )
        for eps, removed in view.curve
    ]
    return {
        "rows": view.rows,
        "first_eps": view.first_eps,
        "eps": rows,
        "exact": view.exact,
        "against_removed": view.against_removed,
        "groups": [(_dedup_card(g.kept), [_dedup_card(e) for e in g.removed]) for g in view.groups],
    }


def _dedup_card(example: Example) -> Card:
    return Card(
        id=example.id,
        thumbnail=example.thumbnail,
        note=example.note,
        score_name=None if example.score is None else "max_similarity",
        score=example.score,
        tags=[] if example.score is None else ["removed"],
        labels=None,
        size=None,
        caption=example.caption,
    )


def _meta(data: ReportData) -> list[tuple[str, Any]]:
    """The job's facts under the title: (name, value), empty values left out."""
    summary = data.summary
    timings = summary.get("timings") or {}
    rows = [
        ("output", data.output),
        ("model", summary.get("model", "")),
        ("inputs", ", ".join(summary.get("inputs") or [])),
        ("started", timings.get("started_at", "")),
        ("finished", timings.get("finished_at", "")),
        ("clipbeam", summary.get("clipbeam_version", "")),
    ]
    seconds = timings.get("seconds")
    if isinstance(seconds, (int, float)) and seconds > 0:
        rate = summary.get("input_rows", 0) / seconds
        rows.insert(5, ("duration", f"{seconds:,.1f} s ({rate:,.1f} rows/s)"))
    return [(k, v) for k, v in rows if v != ""]


def _checks(data: ReportData) -> list[tuple[str, bool]]:
    """The summary's balance equations and whether they hold."""
    summary = data.summary
    checks = []
    n_in, n_out, n_err = (summary.get(k) for k in ("input_rows", "output_rows", "error_rows"))
    if all(isinstance(v, int) for v in (n_in, n_out, n_err)):
        checks.append(("input rows = output rows + error rows", n_in == n_out + n_err))
    searched = summary.get("rows_searched")
    if data.kind == "search" and all(isinstance(v, int) for v in (n_in, searched, n_err)):
        checks.append(("input rows = rows searched + error rows", n_in == searched + n_err))
    if data.kind == "filter" and isinstance(summary.get("kept"), int):
        balanced = n_in == summary["kept"] + summary.get("rejected", 0) + (n_err or 0)
        checks.append(("input rows = kept + rejected + error rows", balanced))
    return checks


def _no_scores(data: ReportData) -> str | None:
    """Why the page has no score histogram, or ``None`` when it has one."""
    if data.score_name == "clip_score" and data.scores.count > 0:
        return None
    if data.kind == "embed":
        if data.job is None:
            return (
                "This embed job computed no clip_score (it embedded only images or only "
                "texts): there is no score histogram and no highest or lowest pairs."
            )
        return (
            "This embed job computed no clip_score: it embedded only "
            f"{'images' if data.job.get('text_column') is None else 'texts'}, and "
            "a score needs both an image and a caption. There is no score histogram and no "
            "highest or lowest pairs; the first rows are shown instead."
        )
    if data.kind == "search":
        return (
            "A search computes no clip_score: each query's rows are ranked by their cosine "
            "similarity to the query, shown with the query below."
        )
    if data.kind == "classify":
        return (
            "Zero-shot classification computes no image-text clip_score; rows are ranked by "
            "the probability of their top label instead."
        )
    return "No row was scored (every row failed: see the errors below)."


def _histogram(data: ReportData, log_scale: bool = False) -> Histogram | None:
    if _no_scores(data) is not None:
        return None
    lines = []
    job = data.job or {}
    if data.kind == "filter" and job.get("min_score") is not None:
        lines.append(("--min-score", float(job["min_score"])))
    threshold = data.summary.get("top_fraction_threshold")
    if isinstance(threshold, (int, float)):
        lines.append(("--top-fraction cut", float(threshold)))
    fine = data.scores.fine
    return histogram([(f, fine[f], _COLOURS.get(f, _ACCENT)) for f in fine], lines, log=log_scale)


def _rows(
    counts: Counter[str],
    meaning: Callable[[str], str] | None = None,
    examples: Callable[[str], list[dict[str, Any]]] | None = None,
) -> list[Row]:
    """Table rows of ``counts``, most common first, each bar relative to the most common."""
    most = max(counts.values(), default=0)
    return [
        Row(
            name=name,
            meaning=meaning(name) if meaning else "",
            count=count,
            share=100 * count / most if most else 0,
            examples=examples(name) if examples else None,
        )
        for name, count in counts.most_common()
    ]


def _rule_text(rule: str) -> str:
    if rule.startswith("concept:"):
        return f"image too similar to the concept {rule.removeprefix('concept:')!r}"
    if rule.startswith(("min_head:", "max_head:")):
        bound, name = rule.split(":", 1)
        return f"head {name!r} {'below --min-head' if bound == 'min_head' else 'above --max-head'}"
    return _RULES.get(rule, "")


def _card_sections(data: ReportData) -> list[CardSection]:
    if data.samples:
        intro = "The first output rows, in file order."
        return [CardSection("samples", "First rows", intro, [_card(e) for e in data.samples])]
    if not data.best:
        return []
    if data.score_name == "top-1 probability":
        titles = ("Most confident", "Least confident")
    else:
        titles = ("Highest clip_score", "Lowest clip_score")
    sections = [CardSection("highest", titles[0], "", [_card(e) for e in data.best])]
    if data.worst:
        sections.append(CardSection("lowest", titles[1], "", [_card(e) for e in data.worst]))
    if data.below_cut:
        intro = "the rows a {} threshold would change first."
        sections += [
            CardSection(
                "above-cut",
                "Just above the cut",
                "Kept rows with the lowest clip_score: " + intro.format("higher"),
                [_card(e) for e in data.above_cut],
            ),
            CardSection(
                "below-cut",
                "Just below the cut",
                "Rows the score rule rejected with the highest clip_score: "
                + intro.format("lower"),
                [_card(e) for e in data.below_cut],
            ),
        ]
    return sections


@dataclass
class QuerySection:
    """One query of a search page: its text, counts and its best and borderline cards."""

    query: str
    facts: str
    best: list[Card]
    borderline: list[Card]


def _query_sections(data: ReportData) -> list[QuerySection]:
    sections = []
    for q in data.queries:
        facts = f"{q.count:,} results"
        if q.matches is not None:
            facts += f"; {q.matches:,} rows at or above --min-similarity"
        if q.capped:
            facts += (
                f" (capped at --max-results-per-query {data.summary.get('max_results_per_query')})"
            )
        sections.append(
            QuerySection(
                q.query, facts, [_card(e) for e in q.best], [_card(e) for e in q.borderline]
            )
        )
    return sections


def _card(example: Example) -> Card:
    values = example.values
    score_name = None
    if example.score is not None:
        score_name = next((n for n in ("clip_score", "similarity") if n in values), "top-1 p")
    reason = values.get("reject_reason")
    labels, probabilities = values.get("labels"), values.get("probabilities")
    shown = None
    if labels:
        shown = ", ".join(
            f"{lab} {p:.2f}" for lab, p in zip(labels[:3], probabilities[:3], strict=True)
        )
    width, height = values.get("image_width"), values.get("image_height")
    return Card(
        id=example.id,
        thumbnail=example.thumbnail,
        note=example.note,
        score_name=score_name,
        score=example.score,
        tags=reject_rules(reason),
        labels=shown,
        size=f"{width}×{height} px" if width and height else None,
        caption=example.caption,
    )
