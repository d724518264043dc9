"""Per-unit counts: exact, additive, and stored next to each finished unit for ``--resume``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["HISTOGRAM_BINS", "UnitStats", "histogram_edges", "score_bins", "score_histogram"]

HISTOGRAM_BINS = 20


def histogram_edges() -> list[float]:
    """The 21 edges of the ``clip_score`` histogram: 20 equal bins over ``[-1, 1]``."""
    return np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1).tolist()


def score_bins(scores: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """The bin of each score among ``bins`` equal bins over ``[-1, 1]``, as int64 indices;
    scores outside ``[-1, 1]`` (rounding) go to the end bins, and 1.0 lands in the last bin."""
    scaled = np.floor((np.asarray(scores, dtype=np.float64) + 1.0) / 2.0 * bins)
    return np.clip(scaled, 0, bins - 1).astype(np.int64)


def score_histogram(scores: np.ndarray) -> tuple[int, ...]:
    """Counts of ``scores`` per bin; scores outside ``[-1, 1]`` (rounding) go to the end bins."""
    if len(scores) == 0:
        return (0,) * HISTOGRAM_BINS
    return tuple(int(c) for c in np.bincount(score_bins(scores), minlength=HISTOGRAM_BINS))


@dataclass(frozen=True)
class UnitStats:
    """What one unit (or, summed, a whole job) did.

    Stats add up with ``+`` (and ``sum(stats, UnitStats())``): every field is an exact count.
    For a two-pass filter, the first pass reports ``input_rows`` and ``error_rows`` and the second
    ``output_rows``, ``kept``, ``rejected`` and the histogram, so that the sum over both passes is
    the job's total.

    Attributes:
        input_rows: rows read.
        output_rows: rows written to the kind's output (for filter: kept + rejected).
        error_rows: rows written to ``errors/``.
        kept: filter: rows that passed every rule.
        rejected: filter: rows that failed at least one rule.
        histogram: counts of ``clip_score`` in 20 equal bins over ``[-1, 1]`` (empty when the
            job computes no scores).
        units: work units counted (a two-pass filter counts each unit in its first pass only).
        resumed_units: of ``units``, those skipped because a previous run finished them.
        rejected_by_rule: filter: ``(rule, rows)`` pairs sorted by rule: how many rejected rows
            failed each rule (``min_score``, ``concept:watermark``, ``min_head:aesthetic``...);
            a row that fails several rules counts for each.
    """

    input_rows: int = 0
    output_rows: int = 0
    error_rows: int = 0
    kept: int = 0
    rejected: int = 0
    histogram: tuple[int, ...] = field(default=())
    units: int = 0
    resumed_units: int = 0
    rejected_by_rule: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: UnitStats) -> UnitStats:
        if not isinstance(other, UnitStats):
            return NotImplemented
        counts = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("histogram", "rejected_by_rule")
        }
        rules = dict(self.rejected_by_rule)
        for rule, rows in other.rejected_by_rule:
            rules[rule] = rules.get(rule, 0) + rows
        return UnitStats(
            **counts,
            histogram=_add_histograms(self.histogram, other.histogram),
            rejected_by_rule=tuple(sorted(rules.items())),
        )

    def __radd__(self, other: object) -> UnitStats:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    def to_json(self) -> str:
        """The stats as JSON (the completion marker's content)."""
        data = asdict(self)
        data["histogram"] = list(self.histogram)
        data["rejected_by_rule"] = [list(pair) for pair in self.rejected_by_rule]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UnitStats:
        """Reads stats written by :meth:`to_json`."""
        data = json.loads(text)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unit marker has unknown fields {sorted(unknown)}: {text[:200]}")
        data["histogram"] = tuple(data.get("histogram", ()))
        data["rejected_by_rule"] = tuple(
            (str(rule), int(rows)) for rule, rows in data.get("rejected_by_rule", ())
        )
        return cls(**data)

    def as_resumed(self) -> UnitStats:
        """The same counts, marked as coming from a finished unit of an earlier run."""
        return UnitStats(
            **{
                **asdict(self),
                "histogram": self.histogram,
                "rejected_by_rule": self.rejected_by_rule,
                "resumed_units": self.units,
            }
        )


def _add_histograms(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b:
        return a
    if len(a) != len(b):
        raise ValueError(f"cannot add histograms of {len(a)} and {len(b)} bins")
    return tuple(x + y for x, y in zip(a, b, strict=True))
