"""The k-means fit sample: candidates as arrays, combined on the real DirectRunner."""

import itertools

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that

from clipbeam.transforms.dedup.sample import Candidates, SmallestCandidates

DIM = 4


def _rows(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return [f"id-{i}" for i in range(n)], x


def _brute(ids: list[str], x: np.ndarray, n: int, seed: int) -> list[str]:
    p = Candidates.of(seed, ids, x).priority
    return [i for _, i in sorted(zip(p.tolist(), ids, strict=True))[:n]]


def test_smallest_orders_by_priority_then_id_and_copies_the_rows():
    c = Candidates(
        np.array([5, 1, 5, 3], np.int64),
        np.array(["b", "z", "a", "c"]),
        np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM),
    )
    got = c.smallest(3)
    assert got.ids.tolist() == ["z", "c", "a"]  # the tie on priority 5 goes to the smaller id
    assert got.vectors[2].tolist() == c.vectors[2].tolist()
    got.vectors[0] = -1
    assert c.vectors.min() >= 0


def test_adding_holds_at_most_twice_n_and_keeps_the_smallest():
    ids, x = _rows(1000)
    n = 50
    selection = SmallestCandidates(n, DIM)
    held = selection.create_accumulator()
    for start in range(0, 1000, 37):
        part = Candidates.of(7, ids[start : start + 37], x[start : start + 37])
        held = selection.add_input(held, part)
        assert sum(len(c) for c in held) <= 2 * n
    assert selection.extract_output(held).ids.tolist() == _brute(ids, x, n, seed=7)


@pytest.mark.parametrize("parts", [1, 3, 10])
def test_the_combine_takes_the_n_smallest_whatever_the_split_into_units(parts):
    ids, x = _rows(600, seed=parts)
    n = 80
    bounds = np.linspace(0, len(ids), parts + 1).astype(int)
    units = [(ids[a:b], x[a:b]) for a, b in itertools.pairwise(bounds)]
    expected = _brute(ids, x, n, seed=3)
    by_id = dict(zip(ids, x.tolist(), strict=True))

    def check(outputs):
        (got,) = outputs
        assert got.ids.tolist() == expected
        assert got.vectors.tolist() == [by_id[i] for i in expected]
        assert got.vectors.dtype == np.float32

    with beam.Pipeline() as p:
        sample = (
            p
            | beam.Create(units)
            | beam.MapTuple(lambda i, v: Candidates.of(3, i, v))
            | beam.CombineGlobally(SmallestCandidates(n, DIM))
        )
        assert_that(sample, check)


def test_no_candidates_give_an_empty_sample_of_the_width():
    def check(outputs):
        (got,) = outputs
        assert len(got) == 0 and not got and got.vectors.shape == (0, DIM)

    with beam.Pipeline() as p:
        sample = (
            p
            | beam.Create([], reshuffle=False).with_output_types(Candidates)
            | beam.CombineGlobally(SmallestCandidates(10, DIM))
        )
        assert_that(sample, check)
