"""--dtype int8 end to end: jobs on the DirectRunner record it and score close to float32; CUDA and
--compile with int8 are one-line launch errors; the encoder runs it on CPU."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from clipbeam.pipeline import cli
from clipbeam.transforms.encoder import Encoder
from tests.datasets import build_dataset
from tests.pipeline.jobtools import check_accounting, read_folder, run_job

FAMILIES = {"clip": ("clip_checkpoint", "en"), "chinese_clip": ("chinese_clip_checkpoint", "zh")}


@pytest.mark.parametrize("family", FAMILIES)
def test_score_job_in_int8(family, request, tmp_path):
    fixture, language = FAMILIES[family]
    checkpoint = request.getfixturevalue(fixture)
    data = build_dataset(tmp_path / "in", language=language, num_files=2, rows_per_file=12)
    scores = {}
    for dtype in ("float32", "int8"):
        out = tmp_path / dtype
        run = run_job(
            "score", data.pattern, str(out), checkpoint, "--id-column", "id", "--dtype", dtype
        )
        check_accounting(run, data, output_folders=["scores"])
        table = read_folder(str(out / "scores"))
        scores[dtype] = dict(
            zip(table["id"].to_pylist(), table["clip_score"].to_pylist(), strict=True)
        )
        for part in sorted((out / "scores").glob("part-*.parquet")):
            metadata = pq.read_schema(part).metadata
            assert metadata[b"clipbeam.model_dtype"] == dtype.encode()
        assert b'"dtype":"' + dtype.encode() + b'"' in metadata[b"clipbeam.job"]
    ids = sorted(scores["float32"])
    float32 = np.array([scores["float32"][i] for i in ids])
    int8 = np.array([scores["int8"][i] for i in ids])
    assert not np.array_equal(float32, int8)  # the job really ran int8 products
    assert np.abs(float32 - int8).max() < 0.02
    assert spearmanr(float32, int8).statistic > 0.99


def launch_error(capsys, *argv: str) -> str:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0].removeprefix("clipbeam: error: ")


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--device", "cuda"], "--dtype int8 runs on CPU only (got --device cuda)"),
        (["--device", "cuda", "--runner", "DataflowRunner"], "runs on CPU only"),
        (["--compile"], "--dtype int8 runs without --compile"),
    ],
)
def test_int8_launch_errors_are_one_line(capsys, tmp_path, clip_checkpoint, more, message):
    data = build_dataset(tmp_path / "in", num_files=1, rows_per_file=2)
    argv = ["score", "--input", data.pattern, "--output", str(tmp_path / "out")]
    argv += ["--model", str(clip_checkpoint), "--dtype", "int8", *more]
    assert message in launch_error(capsys, *argv)
    assert not (tmp_path / "out").exists()


def test_encoder_runs_int8_on_cpu(clip_checkpoint):
    encoder = Encoder.load(str(clip_checkpoint), device="auto", dtype="int8")
    assert encoder.device.type == "cpu"
    assert encoder.metadata()["clipbeam.model_dtype"] == "int8"
    reference = Encoder.load(str(clip_checkpoint), device="cpu", dtype="float32")
    texts = ["a photo of a cat", "two dogs on a beach at sunset", "x"]
    got, want = encoder.encode_texts(texts), reference.encode_texts(texts)
    assert (got * want).sum(axis=1).min() > 0.99
    for device, compile, message in (
        ("cuda", None, "runs on CPU only"),
        ("cpu", True, "without --compile"),
    ):
        with pytest.raises(ValueError, match=message):
            Encoder.load(str(clip_checkpoint), device=device, dtype="int8", compile=compile)
