"""Tokenizer vocabularies (model.tokenization_vocab): decoding, lookups and special tokens.

Parity with transformers' CLIPTokenizer and BertTokenizer. The corpus, the transformers
references and the fixtures are in :mod:`tests.model.tokenizer_references`.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.model.tokenizer_references import CORPUS

# -- decoding and vocabulary helpers --------------------------------------------------------------


def test_decode_matches_transformers(clip, hf_clip, bert, hf_bert):
    for ours, theirs in ((clip, hf_clip), (bert, hf_bert)):
        batch = theirs(CORPUS, padding=True)["input_ids"]
        for skip in (False, True):
            assert ours.batch_decode(batch, skip_special_tokens=skip) == theirs.batch_decode(
                batch, skip_special_tokens=skip
            )
        for ids in batch[:50]:
            assert ours.decode(ids) == theirs.decode(ids)
            assert ours.decode(torch.tensor(ids)) == theirs.decode(ids)
            assert ours.decode(np.array(ids), skip_special_tokens=True) == theirs.decode(
                ids, skip_special_tokens=True
            )
        assert ours.decode(batch[:3]) == theirs.decode(batch[:3])
        assert ours.batch_decode(batch[0]) == theirs.batch_decode(batch[0])
        assert ours.decode(batch[0][1]) == theirs.decode(batch[0][1])


def test_decode_clean_up_spaces(bert, hf_bert, clip, hf_clip):
    ids = hf_bert("Hello , world ! It ' s here .")["input_ids"]
    for flag in (True, False):
        assert bert.decode(ids, clean_up_tokenization_spaces=flag) == hf_bert.decode(
            ids, clean_up_tokenization_spaces=flag
        )
    ids = hf_clip("Hello, world! It's here.")["input_ids"]
    assert clip.decode(ids, clean_up_tokenization_spaces=True) == hf_clip.decode(
        ids, clean_up_tokenization_spaces=True
    )


def test_token_helpers_match_transformers(clip, hf_clip, bert, hf_bert):
    for ours, theirs in ((clip, hf_clip), (bert, hf_bert)):
        for text in CORPUS[:120]:
            tokens = theirs.tokenize(text)
            assert ours.tokenize(text) == tokens, text
            assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
            ids = theirs.encode(text)
            assert ours.encode(text) == ids
            assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
            assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == (
                theirs.convert_ids_to_tokens(ids, skip_special_tokens=True)
            )
        assert ours.tokenize("a b", "c", add_special_tokens=True) == theirs.tokenize(
            "a b", "c", add_special_tokens=True
        )
        assert ours.convert_tokens_to_ids("no-such-token-xyz") == theirs.unk_token_id
        assert ours.convert_ids_to_tokens(5) == theirs.convert_ids_to_tokens(5)
        assert ours.get_vocab() == theirs.get_vocab()
        assert (ours.vocab_size, len(ours)) == (theirs.vocab_size, len(theirs))
        assert ours.special_tokens_map == theirs.special_tokens_map
        assert ours.all_special_tokens == theirs.all_special_tokens
        assert ours.all_special_ids == theirs.all_special_ids
        assert ours.added_tokens_decoder == theirs.added_tokens_decoder
        for pair in (False, True):
            assert ours.num_special_tokens_to_add(pair) == theirs.num_special_tokens_to_add(pair)
        for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            assert getattr(ours, f"{name}_token") == getattr(theirs, f"{name}_token")
            assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id")
        for ids in theirs(CORPUS)["input_ids"]:
            assert ours.get_special_tokens_mask(ids, already_has_special_tokens=True) == (
                theirs.get_special_tokens_mask(ids, already_has_special_tokens=True)
            )
        assert ours.encode("a photo", return_tensors="pt").tolist() == (
            theirs.encode("a photo", return_tensors="pt").tolist()
        )


def test_special_token_setters(clip):
    tokenizer = pickle.loads(pickle.dumps(clip))
    tokenizer.pad_token = "!"
    assert tokenizer.pad_token_id == 0
    assert tokenizer(["a", "a b"], padding=True)["input_ids"][0] == [49406, 320, 49407, 0]
    tokenizer.pad_token_id = 49407
    assert tokenizer.pad_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.pad_token = "<pad>"
    with pytest.raises(ValueError, match="not an id"):
        tokenizer.pad_token_id = 10**6
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="pad_token"):
        tokenizer(["a", "a b"], padding=True)
    with pytest.raises(ValueError, match="bos_token"):
        tokenizer.bos_token = None
