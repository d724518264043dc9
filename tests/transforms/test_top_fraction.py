"""--top-fraction F keeps at most floor(F * rows) rows, except rows tied with the cut."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from clipbeam.transforms.process import top_fraction_threshold

# (rows, fraction, batch): the 0.5 of 12 and 0.8 of 6,000, odd sizes and batchings.
CASES = [(12, 0.5, 5), (6000, 0.8, 700), (11, 0.5, 3), (10, 0.3, 10), (7, 1.0, 2), (1001, 0.1, 64)]


@pytest.mark.parametrize(("rows", "fraction", "batch"), CASES)
def test_keeps_exactly_the_requested_share_of_distinct_scores(rows, fraction, batch):
    scores = np.random.default_rng(rows).permutation(rows).astype(np.float64) / rows - 0.5
    batches = [scores[i : i + batch].tolist() for i in range(0, rows, batch)]

    def check(cuts: list) -> None:
        (cut,) = cuts
        kept = int((scores >= cut).sum())  # split_filtered keeps clip_score >= cut
        if kept != int(np.floor(fraction * rows + 1e-9)):
            raise BeamAssertException(f"{fraction} of {rows} kept {kept}")

    with TestPipeline() as pipeline:
        cut = pipeline | beam.Create(batches) | beam.ptransform_fn(top_fraction_threshold)(fraction)
        assert_that(cut, check)


def _equals(expected: list):
    def check(actual: list) -> None:
        if actual != expected:
            raise BeamAssertException(f"cut {actual}, expected {expected}")

    return check


def test_rows_tied_with_the_cut_are_all_kept():
    scores = [0.1, 0.2, 0.3, 0.3, 0.3, 0.4]  # 0.5 of 6 is 3 rows: 0.4 and two of the 0.3s
    with TestPipeline() as pipeline:
        cut = pipeline | beam.Create([scores]) | beam.ptransform_fn(top_fraction_threshold)(0.5)
        assert_that(cut, _equals([0.3]))


def test_no_rows_no_cut():
    with TestPipeline() as pipeline:
        cut = pipeline | beam.Create([[]]) | beam.ptransform_fn(top_fraction_threshold)(0.5)
        assert_that(cut, _equals([None]))
