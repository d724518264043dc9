"""Tests for the contrastive trainer, the demo vocabularies and the bundled demo models."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from clipbeam.model import BertTokenizer, CLIPTokenizer, load_model, load_processor
from clipbeam.model.modeling_clip import contrastive_loss as clip_loss
from clipbeam.pipeline import train
from clipbeam.pipeline.scenes import (
    caption,
    class_labels,
    class_prompt,
    generate_scenes,
    sample_scene,
    write_scenes,
)
from clipbeam.pipeline.train import (
    CALIBRATION_FILE,
    RECIPES,
    PairData,
    TrainingConfig,
    build_clip_bpe,
    build_wordpiece_vocab,
    calibrate_min_score,
    contrastive_loss,
    read_pairs,
    train_contrastive,
    zero_shot_accuracy,
)

PRETRAINED = Path(train.__file__).resolve().parent.parent / "model" / "pretrained"


def _captions(language: str, n: int = 400) -> list[str]:
    return [caption(sample_scene(np.random.default_rng(i)), language) for i in range(n)]


# -- vocabularies ---------------------------------------------------------------------------------


def test_clip_bpe_has_clips_layout_and_one_token_per_caption_word() -> None:
    texts = _captions("en")
    vocab, merges = build_clip_bpe(texts)
    ids = sorted(vocab.values())
    assert ids == list(range(len(vocab)))
    assert len(vocab) == 512 + len(merges) + 2
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|endoftext|>"] == len(vocab) - 1 == max(ids)
    tokenizer = CLIPTokenizer(vocab, merges)
    for word in {w for t in texts for w in t.replace(":", " :").split()}:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    # Outside the corpus, text still tokenizes (into smaller pieces), never into unknowns.
    assert "".join(tokenizer.tokenize("zebra")) == "zebra</w>"


def test_clip_bpe_is_deterministic_whatever_the_corpus_order() -> None:
    texts = _captions("en", 200)
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    assert build_clip_bpe(texts) == build_clip_bpe(shuffled)


def test_demo_vocabularies_tokenize_as_transformers_does(tmp_path: Path) -> None:
    en, zh = _captions("en"), _captions("zh")
    vocab, merges = build_clip_bpe(en)
    CLIPTokenizer(vocab, merges, model_max_length=32).save_pretrained(tmp_path / "en")
    words = build_wordpiece_vocab(zh)
    assert words[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    BertTokenizer({w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "zh")
    probes = ["Two  shapes: AN orange circle!", "zebra 123", ""]
    for name, ours_cls, ref_cls, texts in (
        ("en", CLIPTokenizer, transformers.CLIPTokenizer, en[:50] + probes),
        ("zh", BertTokenizer, transformers.BertTokenizer, zh[:50] + probes + ["左边 一个 猫"]),
    ):
        ours = ours_cls.from_pretrained(tmp_path / name)
        ref = ref_cls.from_pretrained(tmp_path / name)
        assert ours(texts)["input_ids"] == ref(texts)["input_ids"], name
    bert = BertTokenizer.from_pretrained(tmp_path / "zh")
    assert all(bert.unk_token_id not in bert(t)["input_ids"] for t in zh)


# -- loss and calibration -------------------------------------------------------------------------


def test_contrastive_loss_is_clips_when_captions_differ() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(2.0)
    ours = contrastive_loss(images, texts, scale, [f"t{i}" for i in range(6)])
    torch.testing.assert_close(ours, clip_loss(scale.exp() * texts @ images.t()))


def test_contrastive_loss_treats_equal_captions_as_matches() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
    logits = images @ texts.t()  # logit scale exp(0) = 1
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = (
        -(targets * logits.log_softmax(1)).sum(1).mean()
        - (targets * logits.t().log_softmax(1)).sum(1).mean()
    ) / 2
    got = contrastive_loss(images, texts, torch.tensor(0.0), ["a", "a", "b"])
    torch.testing.assert_close(got, expected)


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


# -- data and training ----------------------------------------------------------------------------


def test_read_pairs_formats_and_errors(tmp_path: Path) -> None:
    path = write_scenes(tmp_path / "s.parquet", 6, seed=4, row_group_size=4)
    data = read_pairs([str(tmp_path / "*.parquet")], text_column="caption_zh")
    assert (len(data), data.image_format, data.files) == (6, "bytes", [path])
    assert data.texts == pq.read_table(path).column("caption_zh").to_pylist()

    table = pq.read_table(path)
    struct = pa.StructArray.from_arrays(
        [table.column("image").combine_chunks(), pa.array([None] * 6, pa.string())],
        names=["bytes", "path"],
    )
    pq.write_table(
        pa.table({"img": struct, "text": table.column("caption_en")}), tmp_path / "hf.parquet"
    )
    assert (
        read_pairs([str(tmp_path / "hf.parquet")], image_column="img").image_format == "hf-struct"
    )

    with pytest.raises(FileNotFoundError, match="matches no file"):
        read_pairs([str(tmp_path / "none-*.parquet")])
    with pytest.raises(ValueError, match="no column 'text'"):
        read_pairs([path])
    pq.write_table(
        pa.table({"image": table.column("image"), "text": pa.array(["a"] * 5 + [None])}),
        tmp_path / "null.parquet",
    )
    with pytest.raises(ValueError, match="1 null captions"):
        read_pairs([str(tmp_path / "null.parquet")])


def _tiny(name: str) -> train.Recipe:
    return dataclasses.replace(
        RECIPES[name],
        train_rows=64,
        width=32,
        vision_layers=1,
        text_layers=1,
        heads=2,
        projection_dim=16,
        image_size=32,
        eval_rows=48,
        calibration_rows=60,
        training=TrainingConfig(
            steps=25, batch_size=16, learning_rate=2e-3, threads=1, log_every=5
        ),
    )


def _tiny_model(name: str) -> tuple[torch.nn.Module, object, PairData]:
    recipe = _tiny(name)
    table = generate_scenes(recipe.train_rows, seed=5, image_size=32)
    data = PairData(
        table.column("image").to_pylist(),
        table.column(recipe.text_column).to_pylist(),
        "bytes",
        ["memory"],
    )
    processor = train._new_processor(recipe, data.texts)
    torch.manual_seed(0)
    return train._new_model(recipe, processor), processor, data


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_training_lowers_the_loss_and_is_deterministic(name: str) -> None:
    config = _tiny(name).training
    runs = []
    for _ in range(2):
        model, processor, data = _tiny_model(name)
        losses = train_contrastive(model, processor, data, config, on_log=lambda _: None)
        runs.append((losses, model.state_dict()))
    (losses, weights), (again, weights_again) = runs
    assert len(losses) == config.steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert losses == again
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_training_needs_a_full_batch() -> None:
    model, processor, data = _tiny_model("demo-clip")
    with pytest.raises(ValueError, match="cannot fill one batch of 100"):
        train_contrastive(model, processor, data, TrainingConfig(batch_size=100))
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        TrainingConfig(batch_size=1)


def test_recipe_and_fine_tuning_write_loadable_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(train.RECIPES, "demo-clip", _tiny("demo-clip"))
    record = train.build_recipe("demo-clip", tmp_path / "base", on_log=lambda _: None)
    saved = json.loads((tmp_path / "base" / CALIBRATION_FILE).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["min_score"] == saved["held_out"]["calibration"]["min_score"]
    base = load_model(tmp_path / "base")
    assert next(base.parameters()).dtype == torch.float32  # stored as float16, loaded as float32
    assert json.loads((tmp_path / "base" / "config.json").read_text())["dtype"] == "float16"

    data = write_scenes(tmp_path / "pairs.parquet", 20, seed=9, image_size=32)
    argv = ["--data", data, "--model", str(tmp_path / "base"), "--out", str(tmp_path / "tuned")]
    argv += ["--text-column", "caption_en", "--steps", "3", "--batch-size", "8", "--threads", "1"]
    assert train.main(argv) == 0
    tuned = load_model(tmp_path / "tuned")
    assert (
        load_processor(tmp_path / "tuned").tokenizer.get_vocab()
        == load_processor(tmp_path / "base").tokenizer.get_vocab()
    )
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed, "fine-tuning changed no weight"


def test_command_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--out", "x", "--recipe", "demo-clip", "--data", "a.parquet"])
    assert "drop --data / --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--out", "x", "--data", "a.parquet"])
    assert (
        "give --recipe NAME, or both --data PATTERN and --model SOURCE" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        train.main(["--out", "x", "--data", "a", "--model", "m", "--warmup-fraction", "1.5"])
    assert "warmup_fraction must be in [0, 1)" in capsys.readouterr().err


# -- the bundled demo models ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_bundled_model_is_small_recorded_and_accurate_on_held_out_scenes(name: str) -> None:
    folder = PRETRAINED / name
    record = json.loads((folder / CALIBRATION_FILE).read_text())
    recipe = RECIPES[name]
    # The shipped files come from the recipe in the code, not from some earlier version of it.
    assert record["recipe_settings"] == json.loads(json.dumps(dataclasses.asdict(recipe)))
    model, processor = load_model(name), load_processor(name)
    # Held-out scenes of a seed neither training (1) nor the recipe's evaluation (2) used.
    scenes = generate_scenes(240, seed=12, two_object_fraction=0.0)
    labels = class_labels()
    truth = [
        labels.index((s[0], c[0]))
        for s, c in zip(
            scenes.column("shapes").to_pylist(), scenes.column("colors").to_pylist(), strict=True
        )
    ]
    from PIL import Image

    images = [Image.open(io.BytesIO(b)) for b in scenes.column("image").to_pylist()]
    prompts = [class_prompt(s, c, recipe.language) for s, c in labels]
    accuracy = zero_shot_accuracy(model, processor, images, truth, prompts)
    assert accuracy >= 0.9, f"{name}: zero-shot shape x colour accuracy {accuracy:.1%}"


def test_bundled_models_fit_in_ten_megabytes() -> None:
    files = [f for name in RECIPES for f in (PRETRAINED / name).iterdir()]
    assert {f.name for f in files} >= {"config.json", "model.safetensors"}
    total = sum(f.stat().st_size for f in files)
    assert total <= 10 * 1024 * 1024, f"bundled demo models take {total / 2**20:.1f} MiB"
