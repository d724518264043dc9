"""Heads in jobs, on the real DirectRunner: a head trained with train-head on generated scenes
predicts held-out scenes and filters them; published layouts give what plain torch gives; launch
errors are one line with exit 2; ids exactly once and --resume with heads."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clipbeam.model.heads import save_head
from clipbeam.pipeline import cli
from clipbeam.pipeline.demo.scenes import write_scenes
from tests.datasets import build_dataset
from tests.model.test_heads import random_curator, random_laion
from tests.pipeline.jobtools import check_accounting, check_errors, read_folder, run_job

# -- a head of our own, trained on generated scenes ----------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Training scenes embedded by demo-clip, and other scenes to score and filter."""
    root = tmp_path_factory.mktemp("scenes")
    train = write_scenes(root / "train.parquet", 400, seed=5, row_group_size=100)
    held_out = write_scenes(root / "held_out.parquet", 120, seed=6, row_group_size=60)
    run_job("embed", train, str(root / "emb"), "demo-clip", "--id-column", "id",
            "--text-column", "none")  # fmt: skip
    return root, train, held_out


def train(root, train_file, out, *more: str) -> int:
    return cli.main(
        [
            "train-head",
            "--embeddings",
            str(root / "emb" / "embeddings"),
            "--labels",
            train_file,
            "--label-column",
            "num_objects",
            "--out",
            str(out),
            *more,
        ]
    )


def test_trained_head_predicts_held_out_scenes_and_filters_them(scenes, tmp_path, capsys):
    root, train_file, held_out = scenes
    assert train(root, train_file, tmp_path / "two") == 0
    printed = capsys.readouterr().out
    assert "held-out rows: accuracy" in printed
    config = json.loads((tmp_path / "two" / "head.json").read_text())
    evaluation = config["evaluation"]
    assert config["classes"] == ["1", "2"] and config["trained_on"] == "demo-clip"
    assert evaluation["metrics"]["accuracy"] >= evaluation["baseline"]["accuracy"] + 0.2
    assert evaluation["metrics"]["auc"] > 0.95
    assert evaluation["rows"] == {"train": 280, "validation": 40, "test": 80}

    head = f"two={tmp_path / 'two'}"
    scored = run_job("score", held_out, str(tmp_path / "score"), "demo-clip", "--id-column", "id",
                     "--text-column", "caption_en", "--head", head)  # fmt: skip
    table = scored.table("scores")
    truth = dict(zip(*pq.read_table(held_out, columns=["id", "num_objects"]).columns, strict=True))
    truth = {k.as_py(): v.as_py() for k, v in truth.items()}
    predicted = dict(
        zip(table.column("id").to_pylist(), table.column("two").to_pylist(), strict=True)
    )
    assert table.schema.field("two").type == "float"
    right = sum((p >= 0.5) == (truth[i] == 2) for i, p in predicted.items())
    assert right / len(predicted) >= 0.9

    filtered = run_job("filter", held_out, str(tmp_path / "filter"), "demo-clip", "--id-column",
                       "id", "--text-column", "caption_en", "--head", head,
                       "--min-head", "two=0.5")  # fmt: skip
    kept = filtered.table("kept").column("id").to_pylist()
    rejected = filtered.table("rejected")
    assert {tuple(r) for r in rejected.column("reject_reason").to_pylist()} == {("min_head:two",)}
    assert filtered.summary["rejected_by_rule"] == {"min_head:two": rejected.num_rows}
    assert sorted(kept) == sorted(i for i, p in predicted.items() if p >= 0.5)
    assert sum(truth[i] == 2 for i in kept) / len(kept) >= 0.9


def test_train_head_is_deterministic_and_takes_an_mlp(scenes, tmp_path, capsys):
    root, train_file, _ = scenes
    for name in ("a", "b"):
        assert train(root, train_file, tmp_path / name, "--hidden", "16", "--seed", "3") == 0
    files = ["head.json", "head.safetensors"]
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
    config = json.loads((tmp_path / "a" / "head.json").read_text())
    assert [layer["activation"] for layer in config["layers"]] == ["relu", "none"]
    assert train(root, train_file, tmp_path / "r", "--task", "regression") == 0
    evaluation = json.loads((tmp_path / "r" / "head.json").read_text())["evaluation"]
    assert evaluation["metrics"]["mse"] < 0.5 * evaluation["baseline"]["mse"]
    assert evaluation["metrics"]["spearman"] > 0.6


def test_train_head_errors_are_one_line(scenes, tmp_path, capsys):
    root, train_file, _ = scenes
    assert train(root, train_file, tmp_path / "x", "--label-column", "background") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--positive-class" in err
    assert train(root, train_file, tmp_path / "x", "--label-column", "nope") == 2
    assert "has no column nope" in capsys.readouterr().err


# -- published layouts through a job --------------------------------------------------------------


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A LAION-layout and a Curator-layout head (random weights, 16-dim input as the tiny test
    checkpoint), saved in their original layouts, and a format-1 copy of the first."""
    from clipbeam.model.heads import load_head

    root = tmp_path_factory.mktemp("heads")
    laion, curator = random_laion(16), random_curator(16)
    torch.save(laion.state_dict(), root / "aesthetic.pth")
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in curator.state_dict().items()}, str(root / "nsfw.safetensors")
    )
    save_head(load_head(root / "aesthetic.pth"), root / "own")
    return root, {"aesthetic": laion, "nsfw": curator, "own": laion}


def head_args(root) -> list[str]:
    return [
        "--head", f"aesthetic={root / 'aesthetic.pth'}",
        "--head", f"nsfw={root / 'nsfw.safetensors'},own={root / 'own'}",
    ]  # fmt: skip


def check_parity(table, nets) -> None:
    embedded = torch.from_numpy(np.asarray(table.column("image_embedding").to_pylist(), np.float32))
    for name, net in nets.items():
        with torch.no_grad():
            expected = net(embedded).squeeze(-1).numpy()
        got = np.asarray(table.column(name).to_pylist(), dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_published_heads_match_plain_torch_and_resume(clip_checkpoint, heads, tmp_path):
    root, nets = heads
    data = build_dataset(tmp_path / "in", num_files=2, rows_per_file=6, row_group_size=3,
                         plant={"corrupt_image": 1, "null_text": 1}, seed=4)  # fmt: skip
    out = tmp_path / "out"
    args = ["--id-column", "id", "--batch-size", "2", *head_args(root)]
    run = run_job("embed", data.pattern, str(out), clip_checkpoint, *args)
    check_accounting(run, data, output_folders=["embeddings"])
    check_errors(run, data)
    table = run.table("embeddings")
    check_parity(table, nets)
    metadata = pq.read_schema(next((out / "embeddings").glob("*.parquet"))).metadata
    recorded = json.loads(metadata[b"clipbeam.heads"])
    assert [h["name"] for h in recorded] == ["aesthetic", "nsfw", "own"]
    assert all(h["sha256"].startswith("sha256:") for h in recorded)

    # Drop one finished unit and the summary: --resume redoes that unit alone, heads included.
    marker = sorted((out / "_units").glob("*.json"))[0]
    name = marker.name.removeprefix("write-")
    marker.unlink()
    (out / "embeddings" / name.replace(".json", ".parquet")).unlink()
    os.remove(out / "summary.json")
    again = run_job("embed", data.pattern, str(out), clip_checkpoint, *args, "--resume")
    check_accounting(again, data, output_folders=["embeddings"])
    assert again.summary["resumed_units"] == data.num_row_groups() - 1
    check_parity(again.table("embeddings"), nets)


def test_filter_on_heads_counts_each_rule(clip_checkpoint, heads, tmp_path):
    root, _ = heads
    data = build_dataset(tmp_path / "in", num_files=2, rows_per_file=5, row_group_size=2,
                         plant={"corrupt_image": 1}, seed=8)  # fmt: skip
    probe = run_job("score", data.pattern, str(tmp_path / "probe"), clip_checkpoint,
                    "--id-column", "id", *head_args(root))  # fmt: skip
    scores = probe.table("scores")
    median = float(np.median(scores.column("aesthetic").to_numpy()))
    top = float(np.max(scores.column("nsfw").to_numpy()))
    run = run_job("filter", data.pattern, str(tmp_path / "f"), clip_checkpoint, "--id-column",
                  "id", *head_args(root), "--min-head", f"aesthetic={median}",
                  "--max-head", f"nsfw={top - 1e-4}", "--min-score", "-1")  # fmt: skip
    check_accounting(run, data, output_folders=["kept", "rejected"])
    rejected = run.table("rejected").to_pylist()
    expected = {
        "min_head:aesthetic": sum(r["aesthetic"] < median for r in rejected),
        "max_head:nsfw": sum(r["nsfw"] > top - 1e-4 for r in rejected),
    }
    assert expected["min_head:aesthetic"] >= 1 and expected["max_head:nsfw"] >= 1
    assert run.summary["rejected_by_rule"] == expected
    for row in rejected:
        failed = set(row["reject_reason"])
        assert ("min_head:aesthetic" in failed) == (row["aesthetic"] < median)
    kept = read_folder(str(tmp_path / "f" / "kept"))
    assert min(kept.column("aesthetic").to_pylist()) >= median


# -- launch errors --------------------------------------------------------------------------------


def launch_error(capsys, *argv: str) -> str:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err
    assert captured.err.strip().count("\n") == 0, captured.err
    return captured.err.strip().removeprefix("clipbeam: error: ")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("small") / "data", num_files=1, rows_per_file=3)


def test_launch_errors(clip_checkpoint, small, tmp_path, capsys):
    def score(*more: str) -> str:
        out = tmp_path / "out"
        message = launch_error(capsys, "score", "--input", small.pattern, "--output", str(out),
                               "--model", str(clip_checkpoint), *more)  # fmt: skip
        assert not out.exists()  # refused before anything was written
        return message

    torch.save(random_laion(768).state_dict(), tmp_path / "big.pth")
    message = score("--head", f"aesthetic={tmp_path / 'big.pth'}")
    assert "reads 768-dim embeddings" in message and "makes 16-dim embeddings" in message
    assert "openai/clip-vit-large-patch14" in message

    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "odd.pth")
    assert "unknown head layout; found 1 tensors: fc.weight" in score(
        "--head", f"x={tmp_path / 'odd.pth'}"
    )

    assert "collide with output columns" in score("--head", f"clip_score={tmp_path / 'odd.pth'}")
    assert "collide with output columns" in score("--head", f"id={tmp_path / 'odd.pth'}")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"layers.0.weight": Payload()}, tmp_path / "evil.pth")
    assert "refused" in score("--head", f"evil={tmp_path / 'evil.pth'}")
    assert not (tmp_path / "ran").exists()

    assert "NAME=SOURCE" in score("--head", "no-equals-sign")
    assert "is not a column name" in score("--head", f"9lives={tmp_path / 'odd.pth'}")
    message = launch_error(capsys, "filter", "--input", small.pattern, "--output",
                           str(tmp_path / "o2"), "--model", str(clip_checkpoint), "--min-head",
                           "nothing=1")  # fmt: skip
    assert "not heads of this job" in message
    assert "--min-head is an option of clipbeam filter" in score("--min-head", "a=1")


def test_convert_head_round_trips(tmp_path, capsys):
    from clipbeam.model.heads import load_head

    torch.save(random_curator(768).state_dict(), tmp_path / "nsfw.pth")
    assert cli.main(["convert-head", str(tmp_path / "nsfw.pth"), "--out", str(tmp_path / "c"),
                     "--meaning", "nsfw probability"]) == 0  # fmt: skip
    assert "curator-nsfw head, 768-dim input" in capsys.readouterr().out
    original, converted = load_head(tmp_path / "nsfw.pth"), load_head(tmp_path / "c")
    assert converted.config.meaning == "nsfw probability" and converted.config.standardize
    x = torch.nn.functional.normalize(torch.randn(16, 768), dim=-1)
    with torch.no_grad():
        assert torch.equal(original(x), converted(x))
    assert (
        cli.main(["convert-head", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "d")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
