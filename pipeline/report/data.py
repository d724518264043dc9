"""What the report page shows: the records that :mod:`.collect` fills and :mod:`.page` renders.

:class:`ReportData` is the whole page's content, :class:`Example` one output row shown as a card,
:class:`ScoreStats` the scores over every output row; :class:`ReportError` is what the report
raises for a folder that is not a finished job's output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipbeam.transforms.stats import score_bins, score_histogram

if TYPE_CHECKING:
    from clipbeam.pipeline.report.dedup import DedupView

__all__ = ["FINE_BINS", "Example", "ReportData", "ReportError", "ScoreStats"]

# The page's histogram is finer than summary.json's 0.1-wide bins, which would put typical CLIP
# scores (0.15 to 0.40) into three bars: scores are counted in 0.005-wide bins over [-1, 1].
FINE_BINS = 400


class ReportError(Exception):
    """The folder is not a finished clipbeam job's output, or the report cannot be written."""


@dataclass
class Example:
    """One output row shown on the page.

    Attributes:
        id: the row's id (its ``--id-column`` value, or ``"<file>:<row>"``).
        folder: the output folder holding the row (``scores``, ``kept``, ``rejected``...).
        file: the output file's name, ``part-FFFFF-GGGGG.parquet``.
        score: ``clip_score``, or the top label's probability for classify; ``None`` without.
        values: the row's other small output columns (``reject_reason``, ``labels``...).
        caption: the row's caption, read back from the input.
        thumbnail: the row's image as a small JPEG ``data:`` URI, read back from the input.
        note: why the caption or image could not be shown.
    """

    id: Any
    folder: str
    file: str
    score: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    thumbnail: str | None = None
    note: str | None = None


@dataclass
class ScoreStats:
    """Scores over every output row: exact count, mean and range, and fine histograms."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    # Per output folder: FINE_BINS bins over [-1, 1], and summary.json's 20 bins (for the check).
    fine: dict[str, np.ndarray] = field(default_factory=dict)
    coarse: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, folder: str, scores: np.ndarray) -> None:
        if len(scores) == 0:
            return
        self.count += len(scores)
        self.total += float(scores.sum(dtype=np.float64))
        self.low = min(self.low, float(scores.min()))
        self.high = max(self.high, float(scores.max()))
        fine = np.bincount(score_bins(scores, FINE_BINS), minlength=FINE_BINS)
        coarse = np.asarray(score_histogram(scores))
        self.fine[folder] = self.fine.get(folder, 0) + fine
        self.coarse[folder] = self.coarse.get(folder, 0) + coarse

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass
class ReportData:
    """Everything the page shows, gathered by :func:`~.collect.collect` and turned into HTML by
    :func:`~.page.render`.

    Attributes:
        output: the job's output folder.
        summary: ``summary.json``.
        job: ``_job.json`` (the job's spec and inputs), ``None`` when absent.
        score_name: what :attr:`Example.score` is (``"clip_score"``, ``"top-1 probability"``), or
            ``None`` when the job computed no score.
        scores: statistics of the scores in the output files.
        best: rows with the highest scores, highest first.
        worst: rows with the lowest scores, lowest first (none of :attr:`best`).
        samples: the first rows, for a job without scores.
        rejected: filter: rejected rows, spread over the rules that rejected them.
        reject_rules: filter: rows failing each rule (a row can fail several).
        label_counts: classify: rows per top-1 label.
        error_counts: error rows per ``error_type``.
        error_examples: a few error rows (as dicts) per ``error_type``.
        file_rows: rows found in each output folder's files.
        notes: problems found while reading (shown at the top of the page).
        above_cut: filter with a score rule: kept rows with the lowest scores, lowest first.
        below_cut: filter with a score rule: rows the score rule rejected with the highest
            scores, highest first (with :attr:`above_cut`, the rows either side of the cut).
        queries: search: one :class:`~.search.QueryResults` per query, in the job's order.
        dedup: a dedup output's duplicate groups and removed shares (``None`` for other jobs).
    """

    output: str
    summary: dict[str, Any]
    job: dict[str, Any] | None
    score_name: str | None
    scores: ScoreStats
    best: list[Example]
    worst: list[Example]
    samples: list[Example]
    rejected: list[Example]
    reject_rules: Counter[str]
    label_counts: Counter[str]
    error_counts: Counter[str]
    error_examples: dict[str, list[dict[str, Any]]]
    file_rows: dict[str, int]
    notes: list[str]
    above_cut: list[Example] = field(default_factory=list)
    below_cut: list[Example] = field(default_factory=list)
    queries: list[Any] = field(default_factory=list)
    dedup: DedupView | None = None

    @property
    def kind(self) -> str:
        return str(self.summary["job"])

    def examples(self) -> Iterator[Example]:
        """Every example on the page (a row may appear in two sections)."""
        yield from self.best
        yield from self.worst
        yield from self.samples
        yield from self.rejected
        yield from self.above_cut
        yield from self.below_cut
        for query in self.queries:
            yield from query.best
            yield from query.borderline


def reject_rules(reason: list[str] | str | None) -> list[str]:
    """The rules of a ``reject_reason`` cell: a list, or comma-joined text in outputs written
    by earlier clipbeam versions."""
    if isinstance(reason, str):
        return [rule for rule in reason.split(",") if rule]
    return list(reason or [])
