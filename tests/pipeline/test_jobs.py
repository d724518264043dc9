"""Each job end to end on the DirectRunner, against ``model/`` called directly on the same rows.

Datasets have several Parquet files with several row groups, real JPEG and PNG bytes, shuffled
string ids, captions of varied length (one longer than the text context) and planted bad rows
(corrupt, empty and missing images, null captions). Both model families run every job, each
family on a different image layout.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.datasets import FAULTS, build_dataset
from tests.pipeline.jobtools import (
    Reference,
    check_accounting,
    check_errors,
    expected_id,
    run_job,
)

ALL_FAULTS = dict.fromkeys(FAULTS, 1)
TOLERANCE = 1e-5

# family -> (checkpoint fixture, caption language, image layout for embed, for score)
FAMILIES = {
    "clip": ("clip_checkpoint", "en", "bytes", "path"),
    "chinese_clip": ("chinese_clip_checkpoint", "zh", "hf-struct", "bytes"),
}


@pytest.fixture(params=list(FAMILIES))
def family(request):
    """(name, checkpoint folder, caption language, embed layout, score layout)."""
    fixture, language, embed_layout, score_layout = FAMILIES[request.param]
    checkpoint = request.getfixturevalue(fixture)
    return request.param, checkpoint, language, embed_layout, score_layout


@pytest.fixture(scope="module")
def references():
    """One directly-called model per checkpoint, shared by the tests of this module."""
    cache: dict[str, Reference] = {}

    def get(checkpoint) -> Reference:
        return cache.setdefault(str(checkpoint), Reference(checkpoint))

    return get


def test_embed(family, references, tmp_path):
    _, checkpoint, language, layout, _ = family
    data = build_dataset(
        tmp_path / "in", image_format=layout, language=language, plant=ALL_FAULTS, seed=11
    )
    run = run_job(
        "embed",
        data.pattern,
        str(tmp_path / "out"),
        checkpoint,
        "--id-column",
        "id",
        "--keep-columns",
        "source,rank",
        "--batch-size",
        "3",
    )
    check_accounting(run, data, output_folders=["embeddings"])
    check_errors(run, data)
    assert run.summary["error_rows"] == len(ALL_FAULTS)
    assert run.summary["units"] == data.num_row_groups()

    table = run.table("embeddings")
    dim = references(checkpoint).model.config.projection_dim
    assert table.schema.field("image_embedding").type == pa.list_(pa.float32(), dim)
    assert table.schema.field("text_embedding").type == pa.list_(pa.float32(), dim)
    reference = references(checkpoint)
    by_id = data.by_id()
    worst = 0.0
    for row in table.to_pylist():
        source = by_id[row["id"]]
        image, text = reference.image(source), reference.text(source.text)
        worst = max(
            worst,
            np.abs(np.asarray(row["image_embedding"]) - image).max(),
            np.abs(np.asarray(row["text_embedding"]) - text).max(),
            abs(row["clip_score"] - float(image @ text)),
        )
        assert (row["source"], row["rank"]) == (source.extra["source"], source.extra["rank"])
    assert worst <= TOLERANCE
    assert sum(run.summary["clip_score_histogram"]["counts"]) == table.num_rows

    # Every output file names its model, weights and preprocessing.
    first = sorted((tmp_path / "out" / "embeddings").glob("part-*.parquet"))[0]
    metadata = pq.read_schema(first).metadata
    assert metadata[b"clipbeam.model"] == str(checkpoint).encode()
    assert metadata[b"clipbeam.model_sha256"].startswith(b"sha256:")
    assert int(metadata[b"clipbeam.projection_dim"]) == dim


def test_score(family, references, tmp_path):
    _, checkpoint, language, _, layout = family
    data = build_dataset(
        tmp_path / "in", image_format=layout, language=language, plant=ALL_FAULTS, seed=12
    )
    run = run_job("score", data.pattern, str(tmp_path / "out"), checkpoint, "--id-column", "id")
    check_accounting(run, data, output_folders=["scores"])
    check_errors(run, data)

    table = run.table("scores")
    assert table.schema.field("clip_score").type == pa.float32()
    reference = references(checkpoint)
    by_id = data.by_id()
    ids = table.column("id").to_pylist()
    expected = {i: float(reference.image(by_id[i]) @ reference.text(by_id[i].text)) for i in ids}
    got = dict(zip(ids, table.column("clip_score").to_pylist(), strict=True))
    assert max(abs(got[i] - expected[i]) for i in got) <= TOLERANCE
    histogram = run.summary["clip_score_histogram"]
    assert len(histogram["counts"]) == 20 and len(histogram["edges"]) == 21
    assert (
        histogram["counts"] == np.histogram(list(got.values()), bins=20, range=(-1, 1))[0].tolist()
    )


def _between(values: list[float], quantile: float) -> float:
    """A cut in the widest gap near ``quantile`` of ``values``: no value sits close to it, so
    float rounding cannot flip a row to the other side."""
    ordered = sorted(values)
    middle = int(quantile * (len(ordered) - 1))
    window = range(max(0, middle - 3), min(len(ordered) - 1, middle + 3))
    i = max(window, key=lambda k: ordered[k + 1] - ordered[k])
    return (ordered[i] + ordered[i + 1]) / 2


def test_filter(family, references, tmp_path):
    _, checkpoint, language, layout, _ = family
    data = build_dataset(
        tmp_path / "in", image_format=layout, language=language, plant=ALL_FAULTS, seed=13
    )
    reference = references(checkpoint)
    good = data.good_rows
    images = {r.id: reference.image(r) for r in good}
    scores = {r.id: float(images[r.id] @ reference.text(r.text)) for r in good}
    concepts = ["cat", "logo"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    prompts = reference.prompts(concepts, templates)
    concept_scores = {i: prompts @ v for i, v in images.items()}
    min_score = _between(list(scores.values()), 0.3)
    threshold = _between([float(s.max()) for s in concept_scores.values()], 0.7)

    run = run_job(
        "filter",
        data.pattern,
        str(tmp_path / "out"),
        checkpoint,
        "--id-column=id",
        f"--min-score={min_score!r}",
        "--min-image-side=20",
        "--max-aspect-ratio=2.5",
        "--min-text-chars=12",
        "--reject-concepts=cat,logo",
        f"--concept-threshold={threshold!r}",
        "--template",
        templates[0],
        "--template",
        templates[1],
    )
    check_accounting(run, data, output_folders=["kept", "rejected"])
    check_errors(run, data)

    expected = {}
    for row in good:
        width, height = row.size
        reasons = []
        if scores[row.id] < min_score:
            reasons.append("min_score")
        if min(width, height) < 20:
            reasons.append("min_image_side")
        if max(width, height) / min(width, height) > 2.5:
            reasons.append("max_aspect_ratio")
        if len(row.text.strip()) < 12:
            reasons.append("min_text_chars")
        reasons += [
            f"concept:{c}"
            for c, s in zip(concepts, concept_scores[row.id], strict=True)
            if s >= threshold
        ]
        expected[row.id] = reasons or None

    kept, rejected = run.table("kept"), run.table("rejected")
    assert "reject_reason" not in kept.column_names
    assert rejected.schema.field("reject_reason").type == pa.list_(pa.string())
    assert rejected.schema.field("concept_scores").type == pa.struct(
        [pa.field(c, pa.float32()) for c in concepts]
    )
    got = dict.fromkeys(kept.column("id").to_pylist())
    reasons = rejected.column("reject_reason").to_pylist()
    got.update(zip(rejected.column("id").to_pylist(), reasons, strict=True))
    assert got == expected
    assert 0 < kept.num_rows < len(good)  # the rules were chosen to split the data
    for table in (kept, rejected):
        for row in table.to_pylist():
            assert abs(row["clip_score"] - scores[row["id"]]) <= TOLERANCE
            assert (row["image_width"], row["image_height"]) == data.by_id()[row["id"]].size
            named = row["concept_scores"]
            assert list(named) == list(concepts)  # each score named by its concept
            got_scores = np.asarray([named[c] for c in concepts])
            assert np.abs(got_scores - concept_scores[row["id"]]).max() <= TOLERANCE


def test_classify(family, references, tmp_path):
    _, checkpoint, language, layout, _ = family
    # No id column: rows are named "<file>:<row>"; only images are read (null captions are fine).
    data = build_dataset(
        tmp_path / "in",
        image_format=layout,
        language=language,
        id_column=None,
        plant={"corrupt_image": 1, "missing_image": 1},
        seed=14,
    )
    labels = ["cat", "rocket", "coffee", "coins"]
    templates = ["a photo of a {}.", "a blurry photo of a {}."]
    run = run_job(
        "classify",
        data.pattern,
        str(tmp_path / "out"),
        checkpoint,
        "--labels",
        ",".join(labels),
        "--template",
        templates[0],
        "--template",
        templates[1],
        "--top-k",
        "2",
    )
    check_accounting(run, data, output_folders=["labels"])
    check_errors(run, data)

    reference = references(checkpoint)
    classifier = reference.prompts(labels, templates)
    by_id = {expected_id(data, r): r for r in data.good_rows}
    table = run.table("labels")
    assert table.num_rows == len(by_id)
    for row in table.to_pylist():
        logits = reference.logit_scale * (classifier @ reference.image(by_id[row["id"]]))
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs, kind="stable")[:2]
        assert row["labels"] == [labels[i] for i in top]
        assert np.abs(np.asarray(row["probabilities"]) - probs[top]).max() <= TOLERANCE
    assert "clip_score_histogram" not in run.summary


def test_top_fraction(clip_checkpoint, tmp_path):
    data = build_dataset(
        tmp_path / "in",
        num_files=3,
        rows_per_file=20,
        row_group_size=7,
        plant={"corrupt_image": 1, "null_text": 1},
        seed=15,
    )
    args = ("filter", data.pattern, str(tmp_path / "out"), clip_checkpoint)
    args += ("--id-column", "id", "--top-fraction", "0.3")
    run = run_job(*args)
    check_accounting(run, data, output_folders=["kept", "rejected"])
    check_errors(run, data)

    kept, rejected = run.table("kept"), run.table("rejected")
    scored = kept.num_rows + rejected.num_rows
    # Exactly floor(0.3 x scored): the cut is placed among the scores, not read off the sketch
    # (random weights give no ties at the cut).
    assert kept.num_rows == math.floor(0.3 * scored), (kept.num_rows, scored)
    assert {tuple(r) for r in rejected.column("reject_reason").to_pylist()} == {("top_fraction",)}
    cut = run.summary["top_fraction_threshold"]
    assert min(kept.column("clip_score").to_pylist()) >= cut
    assert max(rejected.column("clip_score").to_pylist()) < cut
    assert sum(run.summary["clip_score_histogram"]["counts"]) == scored
    # The staged copy of every row is gone: the output folder holds each row once.
    assert not (tmp_path / "out" / "_staging").exists()
    every_file = pads.dataset(str(tmp_path / "out" / "kept"), format="parquet").count_rows()
    assert every_file == kept.num_rows

    # Resuming the finished job reads pass 1's scores from kept/ and rejected/: same result.
    again = run_job(*args, "--resume")
    assert again.summary["resumed_units"] == data.num_row_groups()
    assert again.summary["top_fraction_threshold"] == cut
    assert again.table("kept").num_rows == kept.num_rows


@pytest.mark.parametrize("modality", ["text", "image"])
def test_embed_one_modality(modality, clip_checkpoint, references, tmp_path):
    only_text = modality == "text"
    data = build_dataset(
        tmp_path / "in",
        num_files=2,
        rows_per_file=5,
        image_column=None if only_text else "image",
        text_column="text" if only_text else None,
        plant={"null_text": 1} if only_text else {"empty_image": 1},
        seed=16,
    )
    other = ["--image-column", "none"] if only_text else ["--text-column", "none"]
    run = run_job(
        "embed", data.pattern, str(tmp_path / "out"), clip_checkpoint, "--id-column", "id", *other
    )
    check_accounting(run, data, output_folders=["embeddings"])
    check_errors(run, data)
    table = run.table("embeddings")
    column = f"{modality}_embedding"
    assert table.column_names == ["id", column]
    reference = references(clip_checkpoint)
    by_id = data.by_id()
    for row in table.to_pylist():
        source = by_id[row["id"]]
        want = reference.text(source.text) if only_text else reference.image(source)
        assert np.abs(np.asarray(row[column]) - want).max() <= TOLERANCE
    assert "clip_score_histogram" not in run.summary


def test_a_job_without_errors_leaves_an_empty_errors_table(clip_checkpoint, tmp_path):
    data = build_dataset(tmp_path / "in", num_files=1, rows_per_file=3, seed=18)
    out = tmp_path / "out"
    run = run_job("score", data.pattern, str(out), clip_checkpoint, "--id-column", "id")
    check_accounting(run, data, output_folders=["scores"])
    assert run.summary["error_rows"] == 0
    errors = pads.dataset(out / "errors", format="parquet").to_table()
    assert errors.num_rows == 0
    assert errors.schema == pa.schema(
        [
            ("id", pq.read_schema(data.files[0]).field("id").type),
            ("source_file", pa.string()),
            ("row_number", pa.int64()),
            ("error_type", pa.string()),
            ("error_message", pa.string()),
        ]
    )
    # One file for the job, not one per unit.
    assert [p.name for p in (out / "errors").iterdir()] == ["empty.parquet"]
