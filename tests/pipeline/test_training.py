"""Tests for contrastive training: the loss, the pairs read from Parquet, the seeded loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipbeam.model.modeling_clip import contrastive_loss as clip_loss
from clipbeam.pipeline.demo.recipes import RECIPES
from clipbeam.pipeline.demo.scenes import write_scenes
from clipbeam.pipeline.training import (
    TrainingConfig,
    contrastive_loss,
    read_pairs,
    train_contrastive,
)
from tests.pipeline.demo.tiny import tiny_model, tiny_recipe

# -- loss -----------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_training_lowers_the_loss_and_is_deterministic(name: str) -> None:
    config = tiny_recipe(name).training
    runs = []
    for _ in range(2):
        model, processor, data = tiny_model(name)
        losses = train_contrastive(model, processor, data, config, on_log=lambda _: None)
        runs.append((losses, model.state_dict()))
    (losses, weights), (again, weights_again) = runs
    assert len(losses) == config.steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert losses == again
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_training_needs_a_full_batch() -> None:
    model, processor, data = tiny_model("demo-clip")
    with pytest.raises(ValueError, match="cannot fill one batch of 100"):
        train_contrastive(model, processor, data, TrainingConfig(batch_size=100))
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        TrainingConfig(batch_size=1)
