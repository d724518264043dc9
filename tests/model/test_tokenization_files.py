"""Tokenizer files (model.tokenization_files): loading, saving, constructors and pickling.

Round trips through our save_pretrained and transformers' in both directions. The corpus, the
transformers references and the fixtures are in :mod:`tests.model.tokenizer_references`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import transformers

from clipbeam.model.tokenization_bert import BertTokenizer, BertTokenizerFast
from clipbeam.model.tokenization_clip import CLIPTokenizer, CLIPTokenizerFast, load_openai_bpe
from tests.model.tokenizer_references import A_PHOTO_OF_A_CAT, BERT_VOCAB, CORPUS, assert_same

# -- layouts, saving and loading ------------------------------------------------------------------


def test_save_pretrained_round_trips(clip, bert, clip_dir, bert_dir, hf_clip, hf_bert, tmp_path):
    for ours, theirs, cls, hf_cls, files in (
        (clip, hf_clip, CLIPTokenizer, transformers.CLIPTokenizer, ("vocab.json", "merges.txt")),
        (bert, hf_bert, BertTokenizer, transformers.BertTokenizer, ("vocab.txt",)),
    ):
        directory = tmp_path / cls.__name__
        written = ours.save_pretrained(directory)
        names = sorted(Path(p).name for p in written)
        assert names == sorted(
            ["tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", *files]
        )
        config = json.loads((directory / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == cls.__name__
        assert config["model_max_length"] == ours.model_max_length
        for loaded in (hf_cls.from_pretrained(directory), cls.from_pretrained(directory)):
            assert loaded.model_max_length == ours.model_max_length
            assert_same(loaded, theirs, CORPUS, padding=True, truncation=True, max_length=40)
        # without tokenizer.json both load the vocabulary files we wrote
        (directory / "tokenizer.json").unlink()
        for loaded in (hf_cls.from_pretrained(directory), cls.from_pretrained(directory)):
            assert_same(loaded, theirs, CORPUS, padding=True, truncation=True)


def test_save_vocabulary_reproduces_the_hub_files(clip, bert, clip_dir, bert_dir, tmp_path):
    vocab_path, merges_path = clip.save_vocabulary(tmp_path, filename_prefix="x")
    assert Path(vocab_path).name == "x-vocab.json"
    assert json.loads(Path(vocab_path).read_text()) == json.loads(
        (clip_dir / "vocab.json").read_text()
    )
    assert Path(merges_path).read_text() == (clip_dir / "merges.txt").read_text()
    (vocab_txt,) = bert.save_vocabulary(tmp_path)
    # line for line the bundled file, but for the U+2028 entries, read (as by transformers) as
    # "" and "##"
    lines = Path(vocab_txt).read_text("utf-8").split("\n")
    original = BERT_VOCAB.read_text("utf-8").split("\n")
    assert [a.rstrip() for a in original] == lines
    assert BertTokenizer(vocab_file=vocab_txt).get_vocab() == bert.get_vocab()
    loaded = CLIPTokenizer(vocab_file=vocab_path, merges_file=merges_path)
    assert loaded("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT


def test_added_tokens_survive_both_ways(hf_bert, tmp_path):
    theirs = transformers.BertTokenizer.from_pretrained(hf_bert.name_or_path)
    theirs.add_tokens(["[NEW1]", "新词"])
    theirs.add_special_tokens({"additional_special_tokens": ["[SPECIAL]"]})
    theirs.save_pretrained(tmp_path / "hf")
    ours = BertTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["a [NEW1] b 新词 c [SPECIAL]", *CORPUS[:40]]
    assert len(ours) == len(theirs) == 21131
    assert_same(ours, theirs, texts, padding=True)
    assert ours.decode(ours(texts[0])["input_ids"], skip_special_tokens=True) == theirs.decode(
        theirs(texts[0])["input_ids"], skip_special_tokens=True
    )
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.BertTokenizer.from_pretrained(tmp_path / "ours")
    assert_same(again, theirs, texts, padding=True)
    (tmp_path / "ours" / "tokenizer.json").unlink()
    from_files = BertTokenizer.from_pretrained(tmp_path / "ours")
    assert_same(from_files, theirs, texts, padding=True)


def test_constructor_arguments(clip_dir, bert_dir):
    by_path = CLIPTokenizer(str(clip_dir / "vocab.json"), str(clip_dir / "merges.txt"))
    by_file = CLIPTokenizerFast(
        vocab_file=clip_dir / "vocab.json", merges_file=clip_dir / "merges.txt"
    )
    vocab, merges = load_openai_bpe()
    by_object = CLIPTokenizer(vocab=vocab, merges=[" ".join(m) for m in merges])
    for tokenizer in (by_path, by_file, by_object):
        assert len(tokenizer) == 49408
        assert tokenizer.model_max_length == 77
        assert tokenizer("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT
    for tokenizer in (
        BertTokenizer(str(bert_dir / "vocab.txt")),
        BertTokenizerFast(vocab_file=bert_dir / "vocab.txt"),
    ):
        assert len(tokenizer) == 21128
        assert tokenizer("一只猫")["input_ids"] == [101, 671, 1372, 4344, 102]


def test_pickle_round_trip(clip, bert):
    for tokenizer in (clip, bert):
        copy = pickle.loads(pickle.dumps(tokenizer))
        assert (
            copy(CORPUS, padding=True)["input_ids"] == tokenizer(CORPUS, padding=True)["input_ids"]
        )
        assert copy.model_max_length == tokenizer.model_max_length
