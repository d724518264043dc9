"""JobSpec: defaults, invariants checked at construction, and what it records."""

import json
import pickle

import pytest

from clipbeam.transforms.spec import RESULT_COLUMNS, JobSpec


def spec(**kwargs):
    return JobSpec(**{"kind": "score", "model": "m", "output": "out", **kwargs})


def test_defaults_are_valid_and_spec_is_hashable_and_picklable():
    s = spec(keep_columns=["a", "b"])
    assert s.keep_columns == ("a", "b")  # lists are stored as tuples
    assert pickle.loads(pickle.dumps(s)) == s
    assert hash(s) == hash(spec(keep_columns=("a", "b")))


def test_options_do_not_change_identity_but_are_kept():
    a, b = spec(options={"runner": "x"}), spec(options={"runner": "y"})
    assert a == b
    assert a.options == {"runner": "x"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "nope"}, "kind must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"text_column": None}, "score needs both an image column and a text column"),
        ({"kind": "embed", "image_column": None, "text_column": None}, "embed needs"),
        ({"min_score": 0.2}, "only apply to filter"),
        ({"kind": "filter", "min_score": 0.1, "top_fraction": 0.3}, "not both"),
        ({"kind": "filter", "top_fraction": 1.5}, "top_fraction must be in (0, 1]"),
        ({"kind": "filter", "reject_concepts": ["x"]}, "needs concept_threshold"),
        (
            {"kind": "filter", "reject_concepts": ["x", "x"], "concept_threshold": 0.2},
            "names a concept twice",
        ),
        ({"kind": "classify"}, "classify needs labels"),
        ({"kind": "classify", "labels": ["a", "a"]}, "duplicates"),
        ({"kind": "classify", "labels": ["a"], "templates": ["no slot"]}, "exactly one '{}'"),
        ({"keep_columns": ["clip_score"]}, "clash with columns the job writes"),
        ({"keep_columns": ["id"]}, "clash with columns the job writes"),
        ({"id_column": "key", "keep_columns": ["key"]}, "id column 'key'"),
        ({"id_column": "clip_score"}, "id column 'clip_score' clashes"),
    ],
)
def test_invalid_combinations_fail_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match="invalid job options") as info:
        spec(**kwargs)
    assert message in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as info:
        spec(kind="nope", batch_size=0, dtype="int4")
    assert str(info.value).count("\n  - ") == 3


def test_image_only_and_text_only_embed_are_valid():
    spec(kind="embed", text_column=None)
    spec(kind="embed", image_column=None)


def test_prompts_and_top_k():
    s = spec(kind="classify", labels=["cat", "dog"], templates=["a {}.", "the {}"], top_k=5)
    assert s.prompts(s.labels) == ["a cat.", "the cat", "a dog.", "the dog"]
    assert s.effective_top_k == 2
    assert s.output_dirs == ("labels",)


def test_to_json_is_sorted_and_leaves_options_out():
    data = json.loads(spec(options={"secret": 1}).to_json())
    assert "options" not in data
    assert data["kind"] == "score"
    assert set(RESULT_COLUMNS) == {"embed", "score", "filter", "classify"}
