"""UnitStats: exact sums, JSON round trips, and the clip_score histogram."""

import numpy as np
import pytest

from clipbeam.transforms.stats import (
    HISTOGRAM_BINS,
    UnitStats,
    histogram_edges,
    score_bins,
    score_histogram,
)


def test_histogram_bins_cover_minus_one_to_one():
    edges = histogram_edges()
    assert len(edges) == HISTOGRAM_BINS + 1
    assert edges[0] == -1.0 and edges[-1] == 1.0
    counts = score_histogram(np.array([-1.0, -0.95, -0.85, 0.0, 0.05, 0.999, 1.0, 1.0000001]))
    assert sum(counts) == 8
    assert counts[0] == 2  # [-1, -0.9)
    assert counts[1] == 1  # [-0.9, -0.8)
    assert counts[10] == 2  # [0, 0.1)
    assert counts[-1] == 3  # 1.0 and a rounding overshoot land in the last bin
    assert score_histogram(np.array([])) == (0,) * HISTOGRAM_BINS


def test_score_bins_of_any_width_clip_to_the_end_bins():
    # The report's 400 bins of 0.005: rounding overshoots on either side land in the end bins.
    scores = np.array([-1.0000001, -1.0, -0.9951, -0.993, 0.0, 0.999, 1.0, 1.01], np.float32)
    assert score_bins(scores, 400).tolist() == [0, 0, 0, 1, 200, 399, 399, 399]
    assert score_bins(scores).tolist() == [0, 0, 0, 0, 10, 19, 19, 19]


def test_stats_add_exactly_and_sum():
    a = UnitStats(input_rows=5, output_rows=4, error_rows=1, histogram=(1,) * 20, units=1)
    b = UnitStats(input_rows=3, output_rows=3, kept=2, rejected=1, units=1)
    total = sum([a, b])
    assert total.input_rows == 8 and total.output_rows == 7 and total.error_rows == 1
    assert total.kept == 2 and total.rejected == 1 and total.units == 2
    assert total.histogram == (1,) * 20  # an empty histogram adds as zeros
    with pytest.raises(ValueError, match="histograms of 20 and 3 bins"):
        a + UnitStats(histogram=(1, 2, 3))


def test_json_round_trip_and_resumed_flag():
    a = UnitStats(input_rows=5, output_rows=4, error_rows=1, histogram=tuple(range(20)), units=1)
    assert UnitStats.from_json(a.to_json()) == a
    resumed = a.as_resumed()
    assert resumed.resumed_units == 1 and resumed.input_rows == 5
    with pytest.raises(ValueError, match="unknown fields"):
        UnitStats.from_json('{"input_rows": 1, "bogus": 2}')
