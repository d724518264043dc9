"""The geometry of the page's ``clip_score`` histogram: bars, grid, axis ticks and threshold lines
in SVG user units, for the page template to draw as inline SVG.

Scores come counted in :data:`~.data.FINE_BINS` bins over [-1, 1]; the bars cover only the range
that holds scores (and the threshold lines), merged into at most :data:`MAX_BARS` bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clipbeam.pipeline.report.data import FINE_BINS
from clipbeam.transforms.stats import score_bins

__all__ = ["MAX_BARS", "Bar", "Histogram", "Rect", "Threshold", "Tick", "histogram", "nice_step"]

MAX_BARS = 40
_REBIN_FACTORS = tuple(f for f in range(1, FINE_BINS + 1) if FINE_BINS % f == 0)


@dataclass
class Rect:
    """One series' part of a stacked bar."""

    x: float
    y: float
    width: float
    height: float
    fill: str


@dataclass
class Bar:
    """One bar: its stacked parts, and the full-height target that carries its tooltip."""

    x: float
    width: float
    tooltip: str
    parts: list[Rect]


@dataclass
class Tick:
    """A grid line (``y``, the count it marks) or an x-axis tick (``x``, the score it marks)."""

    position: float
    value: float


@dataclass
class Threshold:
    """A dashed vertical line at a score, labelled on the side that has room."""

    x: float
    label: str
    value: float
    anchor: str  # "start" (label right of the line) or "end" (left of it)
    dx: float


@dataclass
class Histogram:
    """Stacked bars of score counts, in a ``width`` x ``height`` viewBox."""

    width: int = 760
    height: int = 230
    left: int = 50
    right: int = 12
    bottom: int = 28
    top: int = 18
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    thresholds: list[Threshold] = field(default_factory=list)
    log: bool = False  # counts on a log scale (1, 10, 100...), so a small share stays visible

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.bottom - self.top


def nice_step(span: float, ticks: int) -> float:
    """The smallest of 1, 2, 5 times a power of ten that cuts ``span`` into at most ``ticks``."""
    raw = span / ticks if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def histogram(
    series: Sequence[tuple[str, np.ndarray, str]],
    lines: Sequence[tuple[str, float]],
    *,
    log: bool = False,
) -> Histogram:
    """Stacked bars of fine score histograms, over the range that holds scores.

    Args:
        series: ``(name, FINE_BINS bin counts, colour)`` per stacked series (not all empty).
        lines: ``(label, score)`` of vertical threshold lines.
        log: heights on a log scale of ``1 + count`` (a bin of 3 rejected rows beside 3,000
            kept ones is a visible bar).
    """
    total = sum(counts for _, counts, _ in series)
    nonzero = np.flatnonzero(total)
    first, last = int(nonzero[0]), int(nonzero[-1]) + 1
    for value in (v for _, v in lines):  # keep threshold lines inside the plotted range
        b = int(score_bins(np.array([value]), FINE_BINS)[0])
        first, last = min(first, b), max(last, b + 1)
    factor = next(f for f in _REBIN_FACTORS if math.ceil(last / f) - first // f <= MAX_BARS)
    lo, hi = first // factor, math.ceil(last / factor)
    binned = [
        (name, counts.reshape(-1, factor).sum(axis=1)[lo:hi], colour)
        for name, counts, colour in series
    ]
    bin_width = 2.0 / FINE_BINS * factor
    x0, x1 = -1 + lo * bin_width, -1 + hi * bin_width
    most = int(sum(b for _, b, _ in binned).max())
    if log:
        y_top = 10 ** max(1, math.ceil(math.log10(most)))
        counts_shown = [0, *(10**k for k in range(int(math.log10(y_top)) + 1))]
    else:
        y_step = max(1, round(nice_step(most, 4)))
        y_top = y_step * max(1, math.ceil(most / y_step))
        counts_shown = list(range(0, y_top + 1, y_step))

    plot = Histogram(log=log)
    bar_w = plot.plot_width / (hi - lo)

    def x_of(score: float) -> float:
        return plot.left + (score - x0) / (x1 - x0) * plot.plot_width

    def y_of(count: float) -> float:
        share = math.log1p(count) / math.log1p(y_top) if log else count / y_top
        return plot.top + plot.plot_height - plot.plot_height * share

    plot.y_ticks = [Tick(y_of(count), count) for count in counts_shown]
    for i in range(hi - lo):
        start = x0 + i * bin_width
        tooltip = [f"{start:.3f} to {start + bin_width:.3f}"]
        parts, stacked = [], 0
        for name, counts, colour in binned:
            count = int(counts[i])
            tooltip.append(f"{name}: {count:,}")
            if count:
                y = y_of(stacked + count)
                x = plot.left + i * bar_w + 0.5
                parts.append(Rect(x, y, max(bar_w - 1, 0.5), y_of(stacked) - y, colour))
                stacked += count
        plot.bars.append(Bar(plot.left + i * bar_w, bar_w, "; ".join(tooltip), parts))
    x_step = nice_step(x1 - x0, 8)
    for k in range(math.ceil(x0 / x_step - 1e-9), math.floor(x1 / x_step + 1e-9) + 1):
        value = round(k * x_step, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        plot.x_ticks.append(Tick(x_of(value), value))
    for label, value in lines:
        x = x_of(value)
        # Label on the side with room: right of the line, or left of it near the right edge.
        anchor, dx = ("end", -4) if x > plot.left + 0.7 * plot.plot_width else ("start", 4)
        plot.thresholds.append(Threshold(x, label, value, anchor, dx))
    return plot
