"""ProcessUnits on DirectRunner: outputs equal model/ called directly, every row accounted for.

Datasets come from tests/datasets.py (real JPEG and PNG bytes, several files and row groups,
shuffled string ids, captions of varied length); expected values are computed row by row with
``model/`` itself (one image or caption per call, no batching, no padding), so these tests check
the engine's batching, bucketing, decoding, id handling and bookkeeping, not the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from clipbeam.transforms.process import (
    EMPTY_ERRORS_FILE,
    THRESHOLD_FILE,
    TOP_FRACTION_QUANTILES,
    UnitDoFn,
    persist_threshold,
    settle_errors,
    top_fraction_threshold,
)
from clipbeam.transforms.rows import error_schema
from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.stats import UnitStats, score_histogram
from clipbeam.transforms.units import plan_units
from tests.datasets import build_dataset

ATOL = 1e-5


# -- the reference: model/ called directly, one row at a time ----------------------------------


@functools.cache
def reference(path: str):
    from clipbeam.model import load_model, load_processor

    return load_model(path, device=torch.device("cpu"), dtype=torch.float32), load_processor(path)


def _unit(features) -> np.ndarray:
    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(tensor.float(), dim=-1)[0].numpy()


@torch.no_grad()
def ref_image(path, image) -> np.ndarray:
    model, processor = reference(str(path))
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    return _unit(model.get_image_features(pixel_values=pixels))


@torch.no_grad()
def ref_text(path, text: str) -> np.ndarray:
    model, processor = reference(str(path))
    tokens = processor.tokenizer([text], truncation=True, return_tensors="pt")
    return _unit(model.get_text_features(**tokens))


def ref_score(path, row) -> float:
    return float(np.dot(ref_image(path, row.image), ref_text(path, row.text)))


# -- running a job -----------------------------------------------------------------------------


def run(spec: JobSpec, pattern: str, expected: UnitStats | None = None) -> dict[str, int]:
    """Runs ProcessUnits over ``pattern``; checks the summed stats; returns the counters."""
    from clipbeam.transforms.process import ProcessUnits

    pipeline = BeamTestPipeline()
    stats = (
        pipeline
        | beam.Create(plan_units(pattern))
        | beam.Reshuffle()
        | ProcessUnits(spec)
        | beam.CombineGlobally(sum)
    )
    if expected is not None:
        assert_that(stats, equal_to([expected]))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("clipbeam"))["counters"]
    return {c.key.metric.name: c.committed for c in counters}


def read(output: str, folder: str) -> list[dict]:
    return ds.dataset(os.path.join(output, folder), format="parquet").to_table().to_pylist()


def spec_for(kind: str, checkpoint, output, **kwargs) -> JobSpec:
    return JobSpec(
        kind=kind,
        model=str(checkpoint),
        output=str(output),
        **{"id_column": "id", "batch_size": 3, **kwargs},
    )


def language(checkpoint) -> str:
    return "zh" if "chinese" in str(checkpoint) else "en"


# -- tests -------------------------------------------------------------------------------------


def test_embed_and_score_equal_model_directly(checkpoint, tmp_path):
    data = build_dataset(
        tmp_path / "data",
        num_files=2,
        rows_per_file=5,
        row_group_size=2,
        language=language(checkpoint),
        seed=1,
    )
    rows = data.by_id()
    scores = {i: ref_score(checkpoint, r) for i, r in rows.items()}
    everything = UnitStats(
        input_rows=10,
        output_rows=10,
        histogram=score_histogram(np.array(list(scores.values()))),
        units=6,
    )

    spec = spec_for("embed", checkpoint, tmp_path / "embed", keep_columns=["rank", "source"])
    counters = run(spec, data.pattern, everything)
    assert counters == {"input_rows": 10, "output_rows": 10, "units": 6}
    out = read(spec.output, "embeddings")
    assert sorted(r["id"] for r in out) == sorted(rows)  # every id once, shuffled or not
    for r in out:
        row = rows[r["id"]]
        np.testing.assert_allclose(
            r["image_embedding"], ref_image(checkpoint, row.image), atol=ATOL
        )
        np.testing.assert_allclose(r["text_embedding"], ref_text(checkpoint, row.text), atol=ATOL)
        assert abs(r["clip_score"] - scores[r["id"]]) <= ATOL
        assert (r["rank"], r["source"]) == (row.extra["rank"], row.extra["source"])

    spec = spec_for("score", checkpoint, tmp_path / "score")
    run(spec, data.pattern, everything)
    out = read(spec.output, "scores")
    assert sorted(r["id"] for r in out) == sorted(rows)
    for r in out:
        assert abs(r["clip_score"] - scores[r["id"]]) <= ATOL
    assert read(spec.output, "errors") == []


def test_every_row_is_output_or_error_with_planted_faults(clip_checkpoint, tmp_path):
    plant = {"corrupt_image": 1, "empty_image": 1, "missing_image": 1, "null_text": 1}
    data = build_dataset(tmp_path / "data", num_files=2, rows_per_file=6, plant=plant, seed=2)
    spec = spec_for("score", clip_checkpoint, tmp_path / "out", batch_size=2)
    good = {r.id: ref_score(clip_checkpoint, r) for r in data.good_rows}
    expected = UnitStats(
        input_rows=12,
        output_rows=8,
        error_rows=4,
        histogram=score_histogram(np.array(list(good.values()))),
        units=data.num_row_groups(),
    )
    counters = run(spec, data.pattern, expected)
    assert (counters["input_rows"], counters["output_rows"], counters["error_rows"]) == (12, 8, 4)

    assert {r["id"]: r["clip_score"] for r in read(spec.output, "scores")} == pytest.approx(
        good, abs=ATOL
    )
    errors = {e["id"]: e for e in read(spec.output, "errors")}
    assert set(errors) == {r.id for r in data.bad_rows}
    for row in data.bad_rows:
        error = errors[row.id]
        assert error["error_type"] == row.fault
        assert (error["source_file"], error["row_number"]) == (row.file, row.row)
        assert error["error_message"]


@pytest.mark.parametrize("image_format", ["hf-struct", "path"])
def test_image_only_layouts_without_an_id_column(chinese_clip_checkpoint, tmp_path, image_format):
    data = build_dataset(
        tmp_path / "data",
        num_files=1,
        rows_per_file=5,
        row_group_size=3,
        image_format=image_format,
        text_column=None,
        id_column=None,
        plant={"missing_image": 1},
        seed=3,
    )
    spec = spec_for(
        "embed",
        chinese_clip_checkpoint,
        tmp_path / "out",
        id_column=None,
        text_column=None,
        image_format=image_format,
    )
    run(spec, data.pattern, UnitStats(input_rows=5, output_rows=4, error_rows=1, units=2))
    out = {r["id"]: r for r in read(spec.output, "embeddings")}
    name = os.path.basename(data.files[0])
    assert set(out) == {f"{name}:{r.row}" for r in data.good_rows}
    for row in data.good_rows:
        got = out[f"{name}:{row.row}"]["image_embedding"]
        np.testing.assert_allclose(got, ref_image(chinese_clip_checkpoint, row.image), atol=ATOL)
    (error,) = read(spec.output, "errors")
    assert (
        error["error_type"] == "missing_image" and error["id"] == f"{name}:{data.bad_rows[0].row}"
    )


def test_text_only_embed_in_float16(clip_checkpoint, tmp_path):
    data = build_dataset(tmp_path / "data", num_files=1, rows_per_file=4, image_column=None)
    spec = spec_for(
        "embed", clip_checkpoint, tmp_path / "out", image_column=None, embedding_dtype="float16"
    )
    run(spec, data.pattern, UnitStats(input_rows=4, output_rows=4, units=1))
    table = ds.dataset(os.path.join(spec.output, "embeddings")).to_table()
    assert table.schema.names == ["id", "text_embedding"]
    stored = table.schema.field("text_embedding").type
    assert (stored.value_type, stored.list_size) == (pa.float16(), 16)
    rows = data.by_id()
    for r in table.to_pylist():
        expected = ref_text(clip_checkpoint, rows[r["id"]].text)
        np.testing.assert_allclose(r["text_embedding"], expected, atol=2e-3)  # float16 storage


def test_classify_is_zero_shot_over_templates(checkpoint, tmp_path):
    data = build_dataset(tmp_path / "data", num_files=1, rows_per_file=3, text_column=None)
    labels, templates = ["cat", "rocket", "coffee"], ["a photo of a {}.", "a {}"]
    spec = spec_for(
        "classify",
        checkpoint,
        tmp_path / "out",
        text_column=None,
        labels=labels,
        templates=templates,
        top_k=2,
    )
    run(spec, data.pattern, UnitStats(input_rows=3, output_rows=3, units=1))
    model, _ = reference(str(checkpoint))
    classes = []
    for label in labels:
        mean = np.mean([ref_text(checkpoint, t.format(label)) for t in templates], axis=0)
        classes.append(mean / np.linalg.norm(mean))
    scale = float(model.logit_scale.detach().exp())
    rows = data.by_id()
    for r in read(spec.output, "labels"):
        logits = scale * np.stack(classes) @ ref_image(checkpoint, rows[r["id"]].image)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:2]
        assert r["labels"] == [labels[i] for i in top]
        np.testing.assert_allclose(r["probabilities"], probs[top], atol=ATOL)


def test_filter_names_every_failed_rule(clip_checkpoint, tmp_path):
    data = build_dataset(
        tmp_path / "data", num_files=2, rows_per_file=8, plant={"null_text": 1}, seed=5
    )
    concept = ref_text(clip_checkpoint, "a photo of a rocket.")
    images = {r.id: ref_image(clip_checkpoint, r.image) for r in data.good_rows}
    scores = {
        r.id: float(np.dot(images[r.id], ref_text(clip_checkpoint, r.text))) for r in data.good_rows
    }
    concepts = {i: float(np.dot(image, concept)) for i, image in images.items()}
    # Cuts taken from the data itself, so that every rule both passes and fails some rows.
    min_score = float(np.quantile(list(scores.values()), 0.25))
    concept_threshold = float(np.quantile(list(concepts.values()), 0.8))
    spec = spec_for(
        "filter",
        clip_checkpoint,
        tmp_path / "out",
        min_score=min_score,
        min_image_side=16,
        max_aspect_ratio=2.0,
        min_text_chars=8,
        reject_concepts=["rocket"],
        concept_threshold=concept_threshold,
        templates=["a photo of a {}."],
    )
    run(spec, data.pattern)
    expected = {}
    for row in data.good_rows:
        width, height = row.size
        rules = [
            ("min_score", scores[row.id] < min_score),
            ("min_image_side", min(width, height) < 16),
            ("max_aspect_ratio", max(width, height) / min(width, height) > 2.0),
            ("min_text_chars", len(row.text.strip()) < 8),
            ("concept:rocket", concepts[row.id] >= concept_threshold),
        ]
        expected[row.id] = [name for name, failed in rules if failed] or None
    kept = read(spec.output, "kept")
    rejected = read(spec.output, "rejected")
    got = {r["id"]: None for r in kept} | {r["id"]: r["reject_reason"] for r in rejected}
    assert len(kept) + len(rejected) == len(got) == 15  # every row once
    assert got == expected
    assert kept and rejected  # the data exercises both sides
    assert all("reject_reason" not in r for r in kept)
    sizes = {r.id: r.size for r in data.good_rows}
    assert all((r["image_width"], r["image_height"]) == sizes[r["id"]] for r in kept + rejected)
    for r in kept + rejected:
        assert r["concept_scores"] == {"rocket": pytest.approx(concepts[r["id"]], abs=ATOL)}
    assert [e["error_type"] for e in read(spec.output, "errors")] == ["null_text"]


def test_top_fraction_keeps_the_best_scores_of_the_whole_dataset(clip_checkpoint, tmp_path):
    data = build_dataset(
        tmp_path / "data", num_files=3, rows_per_file=10, plant={"corrupt_image": 2}, seed=6
    )
    spec = spec_for("filter", clip_checkpoint, tmp_path / "out", top_fraction=0.3, batch_size=8)
    scores = {r.id: ref_score(clip_checkpoint, r) for r in data.good_rows}
    counters = run(spec, data.pattern)
    kept = {r["id"]: r["clip_score"] for r in read(spec.output, "kept")}
    rejected = {r["id"]: r for r in read(spec.output, "rejected")}
    errors = read(spec.output, "errors")
    assert len(kept) + len(rejected) + len(errors) == 30
    assert set(kept) | set(rejected) == set(scores)
    # 28 scored rows: 30% is 8.4; the sketch is exact at this size, so 8 or 9 rows (ties aside).
    assert len(kept) in (8, 9)
    assert min(kept.values()) > max(r["clip_score"] for r in rejected.values())
    assert {tuple(r["reject_reason"]) for r in rejected.values()} == {("top_fraction",)}
    assert counters["kept"] == len(kept) and counters["rejected"] == len(rejected)
    assert counters["units"] == data.num_row_groups()  # each unit counted once over two passes
    assert counters["error_rows"] == 2 and counters["input_rows"] == 30


@pytest.mark.parametrize("compile", [True, False])
def test_compile_option_reaches_the_model(clip_checkpoint, tmp_path, monkeypatch, compile):
    from apache_beam.utils import shared

    from clipbeam.model import runtime
    from clipbeam.transforms import encoder

    # A model of its own (not one an earlier test loaded), "compiled" by a stand-in: the real
    # torch.compile costs about 20 s per tower on two cores.
    monkeypatch.setattr(encoder, "_SHARED", shared.Shared())
    compiled = []
    monkeypatch.setattr(runtime, "compile_towers", lambda model: compiled.append(model) or model)
    data = build_dataset(tmp_path / "data", num_files=1, rows_per_file=2, seed=8)
    spec = spec_for("score", clip_checkpoint, tmp_path / "out", compile=compile)
    counters = run(spec, data.pattern)
    assert counters["output_rows"] == 2
    assert len(compiled) == (1 if compile else 0)


# Beam's default rank error for N quantiles (ApproximateQuantilesCombineFn.create in
# apache_beam/transforms/stats.py): epsilon = 1 / N, i.e. the cut's rank is off by less than
# epsilon * rows. --top-fraction promises 0.1% (TOP_FRACTION_QUANTILES' comment).
SKETCH_EPSILON = 1 / TOP_FRACTION_QUANTILES
SKETCH_ROWS = 300_000
SKETCH_BATCH = 2_000
# name -> requested fraction. Scores are float32, as clip_score is.
SKETCH_CASES = {
    "normal": 0.3,  # typical CLIP scores
    "heavy_tails": 0.01,  # Cauchy: a few extreme scores, the cut far in the upper tail
    "ties": 0.5,  # a 2-decimal grid plus 40% of rows on one value, the cut inside that block
    "sorted": 0.9,  # arriving in ascending order, the sketch's worst order
}


@functools.cache
def sketch_scores(name: str) -> np.ndarray:
    rng = np.random.default_rng(list(SKETCH_CASES).index(name))
    if name == "heavy_tails":
        values = 0.25 + 0.05 * rng.standard_cauchy(SKETCH_ROWS)
    elif name == "ties":
        values = np.round(rng.normal(0.25, 0.05, SKETCH_ROWS), 2)
        values[rng.random(SKETCH_ROWS) < 0.4] = 0.25
    else:
        values = rng.normal(0.25, 0.05, SKETCH_ROWS)
        if name == "sorted":
            values.sort()
    return values.astype(np.float32)


def test_top_fraction_cut_is_within_the_sketch_error_on_a_large_dataset():
    # Below 18 full buffers the sketch keeps every value and is exact; the job tests' few dozen
    # rows cannot show its error. This size makes it collapse buffers, i.e. approximate.
    spec = ApproximateQuantilesCombineFn.create(TOP_FRACTION_QUANTILES, input_batched=True)._spec
    assert (spec.num_buffers + 1) * spec.buffer_size <= SKETCH_ROWS
    assert SKETCH_EPSILON <= 0.001

    def check(name: str, fraction: float):
        def matcher(cuts: list) -> None:
            (cut,) = cuts
            scores = sketch_scores(name).astype(np.float64)
            n = len(scores)
            kept = int((scores >= cut).sum())  # split_filtered keeps clip_score >= cut
            above = int((scores > cut).sum())  # kept rows not tied with the cut
            # The cut's rank is within epsilon * n of the exact one (+ 1 for the rank's
            # rounding); ties widen what is kept, never what is strictly above.
            slack = SKETCH_EPSILON * n + 1
            if not (kept >= fraction * n - slack and above <= fraction * n + slack):
                raise BeamAssertException(
                    f"{name}: --top-fraction {fraction} of {n} rows: cut {cut} keeps {kept} "
                    f"({above} above it), expected {fraction * n:.0f} +- {slack:.0f}"
                )

        return matcher

    pipeline = BeamTestPipeline()
    for name, fraction in SKETCH_CASES.items():
        batches = (
            pipeline
            # Shuffled batches (several partial sketches merged), except "sorted", kept in order.
            | f"Batches {name}"
            >> beam.Create(range(SKETCH_ROWS // SKETCH_BATCH), reshuffle=name != "sorted")
            | f"Scores {name}"
            >> beam.Map(
                lambda i, n: sketch_scores(n)[i * SKETCH_BATCH : (i + 1) * SKETCH_BATCH].tolist(),
                name,
            )
        )
        cut = batches | f"Cut {name}" >> beam.ptransform_fn(top_fraction_threshold)(fraction)
        assert_that(cut, check(name, fraction), label=f"Check {name}")
    pipeline.run().wait_until_finish()


def test_the_first_runs_cut_is_stored_and_reused_on_resume(tmp_path):
    def check(spec: JobSpec, computed: float | None, expected: float | None) -> None:
        pipeline = BeamTestPipeline()
        cuts = persist_threshold(pipeline | beam.Create([computed]), spec)
        assert_that(cuts, equal_to([expected]))
        pipeline.run().wait_until_finish()

    first = JobSpec(kind="filter", model="m", output=str(tmp_path), top_fraction=0.25)
    check(first, 0.125, 0.125)
    path = tmp_path / THRESHOLD_FILE
    assert json.loads(path.read_text()) == {"top_fraction": 0.25, "threshold": 0.125}
    resumed = dataclasses.replace(first, resume=True)
    check(resumed, 0.5, 0.125)  # the stored cut, not this run's
    assert json.loads(path.read_text())["threshold"] == 0.125
    check(first, 0.5, 0.5)  # without --resume: this run's cut, stored
    assert json.loads(path.read_text())["threshold"] == 0.5
    other = dataclasses.replace(resumed, top_fraction=0.75)
    with pytest.raises(Exception, match=r"cut of --top-fraction 0\.25, this job asks for 0\.75"):
        check(other, 0.5, 0.5)


def test_errors_folder_is_a_table_with_or_without_errors(tmp_path):
    spec = JobSpec(kind="score", model="m", output=str(tmp_path), id_column="id")
    schema = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("text", pa.string())])
    settle_errors(spec, schema, error_rows=0)
    table = ds.dataset(tmp_path / "errors", format="parquet").to_table()
    assert table.num_rows == 0
    assert table.schema == error_schema(spec, schema)
    assert table.schema.field("id").type == pa.int64()
    settle_errors(spec, schema, error_rows=0)  # again (a retry, a resume): still one file
    assert os.listdir(tmp_path / "errors") == [EMPTY_ERRORS_FILE]
    settle_errors(spec, schema, error_rows=2)  # the units wrote their own files: no empty one
    assert os.listdir(tmp_path / "errors") == []


def test_a_killed_run_resumes_with_every_id_exactly_once(clip_checkpoint, tmp_path, monkeypatch):
    data = build_dataset(
        tmp_path / "data",
        num_files=3,
        rows_per_file=4,
        row_group_size=2,
        seed=7,
        plant={"null_text": 1},
    )
    spec = spec_for("score", clip_checkpoint, tmp_path / "out", resume=True)
    units = plan_units(data.pattern)
    original = UnitDoFn._process
    done = []

    def dies_after_writing(self, unit):
        stats = original(self, unit)
        done.append(unit)
        if len(done) == 3:
            # The unit's files are written, its marker is not: the worst moment to die.
            raise RuntimeError("worker killed")
        return stats

    monkeypatch.setattr(UnitDoFn, "_process", dies_after_writing)
    with pytest.raises(RuntimeError, match="worker killed"):
        run(spec, data.pattern)
    markers = os.listdir(os.path.join(spec.output, "_units"))
    assert 2 <= len(markers) < len(units)
    victim = done[2]
    assert f"write-{victim.name}.json" not in markers
    assert os.path.exists(os.path.join(spec.output, "scores", f"{victim.name}.parquet"))

    monkeypatch.setattr(UnitDoFn, "_process", original)
    counters = run(spec, data.pattern)
    assert counters["resumed_units"] == len(markers)
    assert (counters["input_rows"], counters["output_rows"], counters["error_rows"]) == (12, 11, 1)
    ids = sorted(r["id"] for r in read(spec.output, "scores"))
    assert ids == sorted(r.id for r in data.good_rows)  # none missing, none twice
    assert [e["id"] for e in read(spec.output, "errors")] == [data.bad_rows[0].id]
    assert len(os.listdir(os.path.join(spec.output, "_units"))) == len(units)

    # A third run finds everything done: it processes nothing and counts the same.
    monkeypatch.setattr(UnitDoFn, "_process", None)  # would fail if called
    again = run(spec, data.pattern)
    assert again["resumed_units"] == len(units) and again["output_rows"] == 11


def test_reads_and_writes_gcs(clip_checkpoint, gcs_dir):
    data = build_dataset(f"{gcs_dir}/data", num_files=2, rows_per_file=3, row_group_size=2)
    spec = spec_for("score", clip_checkpoint, f"{gcs_dir}/out")
    rows = data.by_id()
    scores = [ref_score(clip_checkpoint, r) for r in rows.values()]
    expected = UnitStats(
        input_rows=6, output_rows=6, histogram=score_histogram(np.array(scores)), units=4
    )
    run(spec, data.pattern, expected)
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon")
    table = ds.dataset(f"{gcs_dir}/out/scores".removeprefix("gs://"), filesystem=fs).to_table()
    got = dict(zip(table["id"].to_pylist(), table["clip_score"].to_pylist(), strict=True))
    assert got == pytest.approx(
        {i: ref_score(clip_checkpoint, r) for i, r in rows.items()}, abs=ATOL
    )
    assert len(fs.ls(f"{gcs_dir}/out/_units")) == 4


def test_retry_of_a_finished_job_overwrites_instead_of_duplicating(clip_checkpoint, tmp_path):
    data = build_dataset(tmp_path / "data", num_files=1, rows_per_file=3, row_group_size=2)
    spec = spec_for("score", clip_checkpoint, tmp_path / "out")  # no resume: everything again
    run(spec, data.pattern)
    run(spec, data.pattern)
    assert sorted(os.listdir(os.path.join(spec.output, "scores"))) == [
        "part-00000-00000.parquet",
        "part-00000-00001.parquet",
    ]
    assert len(read(spec.output, "scores")) == 3


def test_a_dofn_that_loaded_its_model_pickles_without_it(checkpoint, tmp_path):
    """A worker may ship a set-up DoFn again (Dask sends a side input's task graph from inside a
    running task): the copy leaves the model and its locks behind and loads its own."""
    import pickle

    import cloudpickle

    fn = UnitDoFn(spec_for("score", checkpoint, tmp_path / "out"))
    fn._acquire()
    with pytest.raises(TypeError):
        pickle.dumps(fn._encoder)  # what made it unpicklable
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(fn))
        assert copy._encoder is None and copy._prompts is None and copy.spec == fn.spec
    assert fn._encoder is not None  # the original keeps its model
