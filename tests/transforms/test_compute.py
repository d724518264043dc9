"""Per-kind output columns: schemas, filter rules, the top-fraction split, zero-shot labels."""

import numpy as np
import pyarrow as pa
import pytest

from clipbeam.transforms.compute import (
    Prompts,
    filter_reasons,
    output_schema,
    result_columns,
    result_fields,
    split_filtered,
)
from clipbeam.transforms.rows import EncodedWindow
from clipbeam.transforms.spec import JobSpec

INPUT = pa.schema(
    [("key", pa.int64()), ("image", pa.binary()), ("text", pa.string()), ("rank", pa.int32())]
)


def spec(**kwargs):
    return JobSpec(**{"kind": "score", "model": "m", "output": "o", **kwargs})


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def window(n=3, dim=4, sizes=None, texts=None):
    return EncodedWindow(
        batch=pa.record_batch([pa.array(range(n))], names=["key"]),
        good=list(range(n)),
        image_embeddings=unit_rows(n, dim, 1),
        text_embeddings=unit_rows(n, dim, 2),
        sizes=sizes or [(32, 32)] * n,
        texts=texts or ["a caption"] * n,
        errors=[],
    )


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"kind": "embed"}, ["id", "image_embedding", "text_embedding", "clip_score"]),
        ({"kind": "embed", "text_column": None}, ["id", "image_embedding"]),
        ({"kind": "embed", "image_column": None}, ["id", "text_embedding"]),
        ({"kind": "score", "keep_columns": ["rank"]}, ["id", "clip_score", "rank"]),
        ({"kind": "classify", "labels": ["a"]}, ["id", "labels", "probabilities"]),
        (
            {"kind": "filter", "min_score": 0.1},
            ["id", "clip_score", "image_width", "image_height", "reject_reason"],
        ),
    ],
)
def test_output_schema_columns(kwargs, names):
    assert output_schema(spec(**kwargs), INPUT, 4).names == names


def test_id_column_keeps_its_name_and_type_and_embeddings_are_fixed_size():
    schema = output_schema(spec(kind="embed", id_column="key", embedding_dtype="float16"), INPUT, 8)
    assert schema.field("key").type == pa.int64()
    assert schema.field("image_embedding").type == pa.list_(pa.float16(), 8)


def test_scores_are_float32_cosines_and_embeddings_are_stored_as_asked():
    w = window()
    (score,) = result_columns(spec(), w, Prompts(None, None, 100.0))
    expected = (w.image_embeddings * w.text_embeddings).sum(axis=1)
    assert score.type == pa.float32()
    np.testing.assert_allclose(score.to_numpy(), expected, atol=1e-6)

    image, _, _ = result_columns(spec(kind="embed", embedding_dtype="float16"), w, None)
    assert image.type == pa.list_(pa.float16(), 4)
    stored = np.array(image.to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(stored, w.image_embeddings, atol=1e-3)


def test_classify_is_softmax_over_scaled_cosines_top_k():
    s = spec(kind="classify", text_column=None, labels=["a", "b", "c"], top_k=2)
    w = window(n=2)
    labels = unit_rows(3, 4, 7)
    names, probs = result_columns(s, w, Prompts(labels, None, 50.0))
    logits = 50.0 * w.image_embeddings @ labels.T
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for row in range(2):
        order = np.argsort(-expected[row])[:2]
        assert names[row].as_py() == [s.labels[j] for j in order]
        np.testing.assert_allclose(probs[row].as_py(), expected[row, order], rtol=1e-5)


def test_filter_reasons_name_every_failed_rule_in_order():
    s = spec(
        kind="filter",
        min_score=0.2,
        min_image_side=16,
        max_aspect_ratio=2.0,
        min_text_chars=5,
        reject_concepts=["watermark", "text"],
        concept_threshold=0.5,
    )
    scores = np.array([0.5, 0.1, 0.3, 0.9])
    sizes = [(32, 32), (8, 40), (32, 16), (100, 100)]
    texts = ["long enough", "  ab  ", "fine text", "good caption"]
    concepts = np.array([[0.0, 0.0], [0.6, 0.7], [0.5, 0.1], [0.49, 0.0]])
    assert filter_reasons(s, scores, sizes, texts, concepts) == [
        [],
        [
            "min_score",
            "min_image_side",
            "max_aspect_ratio",
            "min_text_chars",
            "concept:watermark",
            "concept:text",
        ],
        ["concept:watermark"],  # the threshold is inclusive; 2.0 is not above max_aspect_ratio
        [],
    ]


def test_filter_columns_name_each_concept_and_list_each_rule():
    """concept_scores is a struct of one field per concept; reject_reason lists the rules, so a
    concept with a comma in it stays one rule."""
    concepts = ["watermark", "text, logo"]
    s = spec(kind="filter", min_score=0.9, reject_concepts=concepts, concept_threshold=0.0)
    w = window(n=2)
    prompts = Prompts(labels=None, concepts=unit_rows(2, 4, 3), logit_scale=100.0)
    table = pa.Table.from_arrays(
        result_columns(s, w, prompts), schema=pa.schema(result_fields(s, 4))
    )
    expected = w.image_embeddings @ prompts.concepts.T
    named = table.column("concept_scores").to_pylist()
    assert [list(row) for row in named] == [concepts, concepts]
    for row, values in zip(named, expected, strict=True):
        assert [row[c] for c in concepts] == pytest.approx(values, abs=1e-6)
    scores = (w.image_embeddings * w.text_embeddings).sum(axis=1)
    for reasons, score, values in zip(
        table.column("reject_reason").to_pylist(), scores, expected, strict=True
    ):
        failed = [f"concept:{c}" for c, v in zip(concepts, values, strict=True) if v >= 0]
        assert reasons == ["min_score"] * bool(score < 0.9) + failed


def test_split_filtered_applies_the_top_fraction_cut_after_other_rules():
    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "clip_score": pa.array([0.9, 0.1, 0.5, 0.2], type=pa.float32()),
            "reject_reason": pa.array(
                [None, None, ["min_image_side"], ["min_text_chars"]], type=pa.list_(pa.string())
            ),
        }
    )
    kept, rejected = split_filtered(table, threshold=0.3)
    assert kept.column_names == ["id", "clip_score"]
    assert kept.column("id").to_pylist() == ["a"]
    assert rejected.to_pydict()["reject_reason"] == [
        ["top_fraction"],
        ["min_image_side"],
        ["min_text_chars", "top_fraction"],
    ]
    kept, rejected = split_filtered(table)
    assert kept.column("id").to_pylist() == ["a", "b"]
    assert rejected.num_rows == 2
