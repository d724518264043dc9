"""Tests for the demo vocabularies: CLIP's BPE layout, determinism, parity with transformers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import transformers

from clipbeam.model import BertTokenizer, CLIPTokenizer
from clipbeam.pipeline.demo.scenes import caption, sample_scene
from clipbeam.pipeline.demo.vocabularies import build_clip_bpe, build_wordpiece_vocab


def _captions(language: str, n: int = 400) -> list[str]:
    return [caption(sample_scene(np.random.default_rng(i)), language) for i in range(n)]


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
