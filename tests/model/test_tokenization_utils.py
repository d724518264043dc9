"""The shared tokenizer base (model.tokenization_utils): encoding, truncation and padding.

Parity with transformers' CLIPTokenizer and BertTokenizer on the corpus, for single texts,
batches, pairs and every padding and truncation option; the engine's fast path
(``encode_batch_ids`` + ``pad_batch``); and the errors. The corpus, the transformers references
and the fixtures are in :mod:`tests.model.tokenizer_references`.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import transformers

from clipbeam.model.hub import CheckpointError, CheckpointNotFoundError
from clipbeam.model.tokenization_bert import BertTokenizer
from clipbeam.model.tokenization_clip import CLIPTokenizer
from tests.model.tokenizer_references import BASE, CORPUS, LONG, PAIRS, assert_same

# -- parity on the corpus -------------------------------------------------------------------------


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 300
    assert len(set(CORPUS)) >= 300


def test_single_strings_unbatched(clip, hf_clip, bert, hf_bert):
    for text in BASE[:40] + LONG[:3]:
        assert_same(clip, hf_clip, text)
        assert_same(bert, hf_bert, text)


@pytest.mark.parametrize(
    "options",
    [
        {"truncation": True},
        {"truncation": True, "padding": True},
        {"truncation": True, "padding": "max_length"},
        {"padding": "max_length", "truncation": True, "max_length": 16},
        {"max_length": 10},
        {"truncation": "longest_first", "max_length": 2},
        {"padding": "longest"},
        {"padding": True, "return_tensors": "pt", "truncation": True},
        {"padding": True, "return_tensors": "np", "truncation": True, "max_length": 20},
        {"padding": True, "pad_to_multiple_of": 8, "truncation": True, "max_length": 24},
        {"padding": True, "truncation": True, "padding_side": "left"},
        {"add_special_tokens": False, "truncation": True, "max_length": 5},
        {"return_token_type_ids": True, "return_attention_mask": False, "truncation": True},
        {"return_special_tokens_mask": True, "return_length": True, "padding": True},
        {"return_offsets_mapping": True, "truncation": True},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_batches_match_transformers(options, clip, hf_clip, bert, hf_bert):
    assert_same(clip, hf_clip, CORPUS, **options)
    assert_same(bert, hf_bert, CORPUS, **options)


def test_truncation_keeps_the_end_token(clip, bert):
    for tokenizer, context in ((clip, 77), (bert, 52)):
        whole = tokenizer(LONG)["input_ids"]
        cut = tokenizer(LONG, truncation=True)["input_ids"]
        assert sum(len(row) > context for row in whole) >= 4
        for full, row in zip(whole, cut, strict=True):
            assert row == (full if len(full) <= context else full[: context - 1] + full[-1:])


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_and_padding_sides(side, clip_dir, bert_dir, tmp_path):
    for cls, hf_cls, directory in (
        (CLIPTokenizer, transformers.CLIPTokenizer, clip_dir),
        (BertTokenizer, transformers.BertTokenizer, bert_dir),
    ):
        options = {"truncation_side": side, "padding_side": side}
        ours = cls.from_pretrained(directory, **options)
        theirs = hf_cls.from_pretrained(directory, **options)
        assert_same(ours, theirs, CORPUS, padding=True, truncation=True, max_length=12)


@pytest.mark.parametrize("strategy", ["longest_first", True, "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [4, 5, 9, 16, 40, None])
def test_pairs_match_transformers(strategy, max_length, clip, hf_clip, bert, hf_bert):
    for ours, theirs in ((clip, hf_clip), (bert, hf_bert)):
        for first, second in zip(CORPUS[::7], PAIRS[::7], strict=True):
            options = {"truncation": strategy, "max_length": max_length}
            try:
                expected = theirs(first, second, **options)
            except Exception as exc:  # noqa: BLE001 - the Rust error type is not exported
                assert "Truncation error" in str(exc)
                with pytest.raises(ValueError, match="truncation="):
                    ours(first, second, **options)
                continue
            assert ours(first, second, **options) == expected, (first, second)


def test_batched_pairs_with_token_type_ids(clip, hf_clip, bert, hf_bert):
    options = {"padding": True, "truncation": True, "return_token_type_ids": True}
    assert_same(clip, hf_clip, CORPUS, PAIRS, **options)
    got = assert_same(bert, hf_bert, CORPUS, PAIRS, **options)
    assert 1 in got["token_type_ids"][0]


def test_pinned_behaviour(clip, bert):
    """What transformers 5.23 does, written out: these are the contract users see."""
    assert clip("")["input_ids"] == [49406, 49407]
    assert clip(" \t\n ")["input_ids"] == [49406, 49407]
    assert bert("")["input_ids"] == [101, 102]
    # no ftfy, no HTML unescaping: "&amp;" is "&", "amp", ";"
    assert clip.tokenize("&amp;") == ["&</w>", "amp</w>", ";</w>"]
    # text longer than the context is not cut unless asked
    assert len(clip("word " * 100)["input_ids"]) == 102
    assert len(clip("word " * 100, truncation=True)["input_ids"]) == 77
    # OpenAI checkpoints pad with <|endoftext|>; a pair is <bos> A <eos> <eos> B <eos>
    assert (clip.pad_token, clip.pad_token_id) == ("<|endoftext|>", 49407)
    assert clip("a", "b")["input_ids"] == [49406, 320, 49407, 49407, 321, 49407]
    assert clip("a b c d e", "f g h", truncation=True, max_length=8)["input_ids"] == [
        49406, 320, 321, 49407, 49407, 325, 326, 49407
    ]  # fmt: skip
    # special tokens in the text are matched whole, but only as written
    assert clip("<|endoftext|>")["input_ids"] == [49406, 49407, 49407]
    # OpenAI's hub files mark them normalized, so lowercasing finds them too
    assert clip("<|ENDOFTEXT|>")["input_ids"] == [49406, 49407, 49407]


def test_special_token_helpers_agree_with_call(clip, bert):
    for tokenizer in (clip, bert):
        for first, second in zip(CORPUS[:60], PAIRS[:60], strict=True):
            ids0 = tokenizer.encode(first, add_special_tokens=False)
            ids1 = tokenizer.encode(second, add_special_tokens=False)
            single = tokenizer(first, return_token_type_ids=True, return_special_tokens_mask=True)
            pair = tokenizer(
                first, second, return_token_type_ids=True, return_special_tokens_mask=True
            )
            assert tokenizer.build_inputs_with_special_tokens(ids0) == single["input_ids"]
            assert tokenizer.build_inputs_with_special_tokens(ids0, ids1) == pair["input_ids"]
            assert tokenizer.create_token_type_ids_from_sequences(ids0) == single["token_type_ids"]
            assert (
                tokenizer.create_token_type_ids_from_sequences(ids0, ids1)
                == (pair["token_type_ids"])
            )
            assert tokenizer.get_special_tokens_mask(ids0) == single["special_tokens_mask"]
            assert tokenizer.get_special_tokens_mask(ids0, ids1) == pair["special_tokens_mask"]


# -- the fast path of the engine ------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [None, 8, 2])
def test_encode_batch_ids_and_pad_batch(max_length, clip, bert):
    for tokenizer in (clip, bert):
        expected = tokenizer(CORPUS, truncation=True, max_length=max_length)["input_ids"]
        ids = tokenizer.encode_batch_ids(CORPUS, max_length)
        assert ids == expected
        padded = tokenizer(
            CORPUS, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = tokenizer.pad_batch(ids)
        assert list(batch.keys()) == list(padded.keys())
        for key in padded:
            assert batch[key].dtype == torch.int64
            assert torch.equal(batch[key], padded[key]), key
        left = tokenizer.pad_batch(ids, padding_side="left", pad_to_multiple_of=8, length=81)
        assert left["input_ids"].shape[1] == 88
        assert left["attention_mask"][:, -1].all()


def test_fast_path_keeps_the_end_with_left_truncation(clip_dir, hf_clip):
    ours = CLIPTokenizer.from_pretrained(clip_dir, truncation_side="left")
    theirs = transformers.CLIPTokenizer.from_pretrained(clip_dir, truncation_side="left")
    expected = theirs(LONG, truncation=True, max_length=9)["input_ids"]
    assert ours.encode_batch_ids(LONG, 9) == expected


def test_pad_batch_lists_and_errors(bert):
    batch = bert.pad_batch([[101, 102], [101, 5, 102]], return_tensors=None)
    assert batch["input_ids"] == [[101, 102, 0], [101, 5, 102]]
    assert batch["token_type_ids"] == [[0, 0, 0], [0, 0, 0]]
    assert batch["attention_mask"] == [[1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="shorter than the longest"):
        bert.pad_batch([[101, 5, 102]], length=2)
    assert bert.pad_batch([])["input_ids"].shape == (0, 0)


def test_threads_share_one_tokenizer(clip):
    jobs = [
        {"padding": True},
        {"truncation": True, "max_length": 6, "padding": "max_length"},
        {"truncation": True, "max_length": 30},
        {"padding": True, "padding_side": "left", "truncation": True},
    ] * 6
    sequential = [clip(CORPUS, **job)["input_ids"] for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda job: clip(CORPUS, **job)["input_ids"], jobs))
    assert parallel == sequential


# -- errors ---------------------------------------------------------------------------------------


def test_errors_say_what_to_do(clip, bert, clip_dir, hf_clip_saved, tmp_path):
    with pytest.raises(TypeError, match="needs a vocabulary and merges"):
        CLIPTokenizer()
    with pytest.raises(TypeError, match="needs a vocabulary"):
        BertTokenizer()
    with pytest.raises(TypeError, match="not both"):
        CLIPTokenizer(vocab={}, vocab_file=clip_dir / "vocab.json", merges=[])
    with pytest.raises(ValueError, match="cannot hold the 2 special tokens"):
        clip("a b c", truncation=True, max_length=1)
    with pytest.raises(ValueError, match="cannot hold the 4 special tokens"):
        clip("a b c", "d", truncation=True, max_length=3)
    with pytest.raises(ValueError, match="only_second"):
        clip("a b c", truncation="only_second", max_length=3)
    with pytest.raises(ValueError, match="vocabulary has ids 0 to 49407"):
        clip.decode([49406, 320, 99999])
    with pytest.raises(ValueError, match="-100"):
        bert.decode([101, -100])
    with pytest.raises(TypeError, match=r"text\[1\] is a NoneType"):
        clip(["a", None])
    with pytest.raises(TypeError, match="pre-tokenized"):
        clip([["a", "b", "c"]])  # (a 2-item list is a (text, text_pair) pair, as in transformers)
    with pytest.raises(TypeError, match="text_pair must be"):
        clip(["a"], "b")
    with pytest.raises(ValueError, match="padding=True"):
        clip(["a", "a b"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding must be"):
        clip("a", padding="maximal")
    with pytest.raises(ValueError, match="not a multiple of pad_to_multiple_of"):
        clip(["a"], padding="max_length", truncation=True, max_length=10, pad_to_multiple_of=8)
    with pytest.raises(CheckpointError, match="needs WordPiece"):
        BertTokenizer.from_pretrained(hf_clip_saved)
    with pytest.raises(CheckpointNotFoundError, match=r"vocab\.txt"):
        BertTokenizer.from_pretrained(clip_dir)
    with pytest.raises(CheckpointNotFoundError, match=r"vocab\.json \+ merges\.txt"):
        CLIPTokenizer.from_pretrained(tmp_path)


def test_empty_batch(clip, bert):
    assert clip([])["input_ids"] == []
    batch = bert([], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (0, 0) and batch["input_ids"].dtype == torch.int64
    assert clip.encode_batch_ids([]) == []


def test_too_long_input_warns(clip, caplog):
    fresh = pickle.loads(pickle.dumps(clip))
    fresh._warned.clear()
    with caplog.at_level("WARNING", logger="clipbeam.model.tokenization_utils"):
        fresh("word " * 100)
    assert "truncation=True" in caplog.text
