"""BERT's WordPiece tokenizer (model.tokenization_bert) against transformers' BertTokenizer.

Every way of loading it gives transformers' ids on the corpus, for each normalizer option of
tokenizer_config.json. The corpus, the transformers references and the fixtures are in
:mod:`tests.model.tokenizer_references`.
"""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from clipbeam.model.tokenization_bert import BertTokenizer
from tests.model.tokenizer_references import CORPUS, PAIRS, assert_same

# -- parity on the corpus -------------------------------------------------------------------------


def test_bert_ids_match_transformers(bert_pair):
    ours, theirs = bert_pair
    assert_same(ours, theirs, CORPUS)
    assert_same(ours, theirs, CORPUS, PAIRS, padding=True, truncation=True)
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder


@pytest.mark.parametrize(
    "config",
    [
        {"do_lower_case": False},
        {"do_lower_case": False, "strip_accents": True},
        {"do_lower_case": True, "strip_accents": False},
        {"tokenize_chinese_chars": False},
        {"model_max_length": 512},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_bert_config_options_match_transformers(config, bert_dir, tmp_path):
    shutil.copy(bert_dir / "vocab.txt", tmp_path / "vocab.txt")
    base = json.loads((bert_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    ours = BertTokenizer.from_pretrained(tmp_path)
    theirs = transformers.BertTokenizer.from_pretrained(tmp_path)
    assert ours.model_max_length == theirs.model_max_length
    assert_same(ours, theirs, CORPUS, padding=True, truncation=True)


def test_config_model_max_length_is_followed(bert_dir, tmp_path):
    assert BertTokenizer.from_pretrained(bert_dir).model_max_length == 52
    assert BertTokenizer.from_pretrained(bert_dir, model_max_length=30).model_max_length == 30
    # no config at all: the model's context (transformers would say "unlimited")
    shutil.copy(bert_dir / "vocab.txt", tmp_path / "vocab.txt")
    assert BertTokenizer.from_pretrained(tmp_path).model_max_length == 512
