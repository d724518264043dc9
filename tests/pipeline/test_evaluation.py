"""Tests for the calibration of ``--min-score`` on labelled pairs."""

from __future__ import annotations

import pytest

from clipbeam.pipeline.evaluation import calibrate_min_score


def test_calibrate_min_score() -> None:
    separable = calibrate_min_score([0.9, 0.8, 0.7, 0.2, 0.1], [False, False, False, True, True])
    assert 0.2 < separable.min_score < 0.7
    assert (separable.caught, separable.good_rejected) == (1.0, 0.0)
    assert (separable.mismatched, separable.good) == (2, 3)
    # Overlap: one good pair scores below one mismatch; the best cut still catches both bad ones.
    overlap = calibrate_min_score(
        [0.9, 0.8, 0.3, 0.4, 0.1, 0.85, 0.95, 0.7], [0, 0, 0, 1, 1, 0, 0, 0]
    )
    assert 0.4 < overlap.min_score < 0.7
    assert overlap.caught == 1.0 and overlap.good_rejected == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="both mismatched and matching"):
        calibrate_min_score([0.1, 0.2], [False, False])
