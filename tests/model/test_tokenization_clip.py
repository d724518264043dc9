"""CLIP's BPE tokenizer (model.tokenization_clip) against transformers' CLIPTokenizer.

Every way of loading it gives transformers' ids on the corpus; LAION's pad token. The corpus, the
transformers references and the fixtures are in :mod:`tests.model.tokenizer_references`.
"""

from __future__ import annotations

import json
import shutil

import transformers

from clipbeam.model.tokenization_clip import CLIPTokenizer
from tests.model.tokenizer_references import CORPUS, PAIRS, assert_same

# -- parity on the corpus -------------------------------------------------------------------------


def test_clip_ids_match_transformers(clip_pair):
    ours, theirs = clip_pair
    assert_same(ours, theirs, CORPUS)
    assert_same(ours, theirs, CORPUS, PAIRS, padding=True, truncation=True)
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder


def test_laion_style_pad_token(clip_dir, tmp_path):
    directory = tmp_path / "laion"
    shutil.copytree(clip_dir, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["pad_token"] = "!"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").unlink()
    ours = CLIPTokenizer.from_pretrained(directory)
    theirs = transformers.CLIPTokenizer.from_pretrained(directory)
    assert (ours.pad_token, ours.pad_token_id) == ("!", 0)
    assert (theirs.pad_token, theirs.pad_token_id) == ("!", 0)
    assert_same(ours, theirs, CORPUS[:60], padding=True, truncation=True)
