"""Parity of model.tokenization_clip and model.tokenization_bert with transformers' tokenizers.

The references are built from the same real vocabularies (OpenAI's BPE merges and the Chinese
RoBERTa-wwm-ext WordPiece vocabulary bundled in model/data), written here in the hub layouts,
and sanity-checked against ids known from the published checkpoints before anything is compared.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from clipbeam.model.hub import CheckpointError, CheckpointNotFoundError
from clipbeam.model.tokenization_bert import BertTokenizer, BertTokenizerFast
from clipbeam.model.tokenization_clip import CLIPTokenizer, CLIPTokenizerFast, load_openai_bpe

DATA = Path(__file__).resolve().parents[2] / "model" / "data"
BPE_FILE = DATA / "bpe_simple_vocab_16e6.txt.gz"
BERT_VOCAB = DATA / "chinese_roberta_wwm_ext_vocab.txt"
# "a photo of a cat" in every OpenAI CLIP checkpoint
A_PHOTO_OF_A_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]

# -- the corpus ---------------------------------------------------------------------------------

BASE = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "a",
    "A",
    "a photo of a cat",
    "A photo of a CAT.",
    "a photo of a dog",
    "Hello, world!",
    "It's a test; isn't it?",
    "we'll they've I'm you're he'd",
    "don't   stop\tbelieving\n",
    "multiple    spaces   between words",
    "tabs\tand\nnewlines\r\nmixed",
    "trailing space ",
    " leading space",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &nbsp;",
    "Tom &amp; Jerry",
    "AT&T",
    "&#x4e2d;&#25991;",
    "café",
    "Café au lait",
    "naïve résumé",
    "Ångström",
    "façade",
    "São Paulo",
    "Zürich",
    "crème brûlée",
    "ÀÉÎÕÜ",
    "e\u0301 combining acute",
    "ﬁ ligature",
    "Straße",
    "İstanbul",
    "ǅ digraph",
    "你好，世界！",
    "一只猫的照片",
    "一只可爱的小狗在草地上奔跑。",
    "北京是中国的首都",
    "这是一张图片：「山水画」",
    "【广告】限时优惠！！！",
    "《红楼梦》第一回",
    "今天天气很好，我们去公园吧～",
    "中文，English，混合。",
    "iPhone 15 Pro Max 256GB 黑色",
    "我爱NLP和CLIP模型",
    "价格：￥199.00元",
    "２０２３年１２月３１日",
    "ＡＢＣ全角字母ａｂｃ",
    "全角标点：，。！？；：“”‘’（）",
    "日本語のテキスト",
    "한국어 텍스트",
    "繁體中文測試",
    "、。〃〄々〆〇〈〉",
    "emoji 😀😃😄",
    "👍🏽 thumbs up",
    "👨‍👩‍👧‍👦 family",
    "🇨🇳🇺🇸 flags",
    "I ❤️ NY",
    "★☆✓✗→←",
    "©®™",
    "½ ¼ ¾",
    "x² + y³",
    "π ≈ 3.14159",
    "∑∫√∞",
    "12345",
    "3.14",
    "1,000,000",
    "2023-12-31",
    "10:30am",
    "$100",
    "50% off",
    "#hashtag @user",
    "https://example.com/path?q=1&b=2",
    "user@example.com",
    "C++ and C#",
    "snake_case_name",
    "CamelCaseWord",
    "ALLCAPS",
    "mIxEd CaSe",
    "!!!???...",
    "...",
    "---",
    "***",
    "(parenthesized)",
    "[bracketed]",
    "{braced}",
    "<tag>",
    "\"double\" 'single'",
    "‘curly’ “quotes”",
    "— em dash – en dash",
    "…",
    "¿Qué? ¡Sí!",
    "Привет мир",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Tiếng Việt có dấu",
    "\x00null\x07bell",
    "zero\u200bwidth\u200djoiner",
    "\ufeffbyte order mark",
    "soft\u00adhyphen",
    "nbsp\u00a0here",
    "ideographic\u3000space",
    "line\u2028separator",
    "<|startoftext|>",
    "<|endoftext|>",
    "hi <|endoftext|> there",
    "<|ENDOFTEXT|>",
    "[CLS] [SEP] [PAD] [MASK] [UNK]",
    "[cls] lower",
    "##suffix",
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicvitalsilicovolcanoconiosis",
    "a" * 120,
    "ab " * 40,
    "the quick brown fox jumps over the lazy dog",
    "THE QUICK BROWN FOX",
]
MIXED = [f"{a} {BASE[(i * 7 + 3) % len(BASE)]}" for i, a in enumerate(BASE)]
UPPER = [s.upper() for s in BASE if s.strip()]
LONG = [" ".join(BASE[i : i + 14]) for i in range(0, len(BASE), 7)] + [
    "word " * 100,
    "猫" * 100,
    "一只猫 " * 40 + "end",
    "&amp; " * 50,
]
CORPUS = BASE + MIXED + UPPER + LONG
PAIRS = [BASE[(i * 5 + 1) % len(BASE)] for i in range(len(CORPUS))]


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 300
    assert len(set(CORPUS)) >= 300


# -- references and ours --------------------------------------------------------------------------


def _openai_vocab_files(directory: Path) -> None:
    """vocab.json + merges.txt written as OpenAI's SimpleTokenizer builds its vocabulary."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(chars.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(
        json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False), "utf-8"
    )
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", "utf-8"
    )


def _added_token_dict(content: str) -> dict:
    # the form of openai/clip-vit-* tokenizer_config.json (transformers 4.x AddedToken dicts)
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """The openai/clip-vit-base-patch32 layout: vocab.json, merges.txt, config, special map."""
    directory = tmp_path_factory.mktemp("clip_hub")
    _openai_vocab_files(directory)
    special = {
        "bos_token": _added_token_dict("<|startoftext|>"),
        "eos_token": _added_token_dict("<|endoftext|>"),
        "unk_token": _added_token_dict("<|endoftext|>"),
        "pad_token": "<|endoftext|>",
    }
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-base-patch32",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special), "utf-8")
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """The OFA-Sys/chinese-clip layout: vocab.txt, tokenizer_config.json (52), special map."""
    directory = tmp_path_factory.mktemp("bert_hub")
    shutil.copy(BERT_VOCAB, directory / "vocab.txt")
    special = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    config = {
        **special,
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": 52,
        "do_basic_tokenize": True,
        "never_split": None,
        "tokenizer_class": "BertTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special), "utf-8")
    return directory


@pytest.fixture(scope="module")
def hf_clip_files(clip_dir):
    tokenizer = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    # Sanity: the reference really has OpenAI's vocabulary (ids of every OpenAI checkpoint).
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT
    assert tokenizer.model_max_length == 77
    return tokenizer


@pytest.fixture(scope="module")
def clip_hub_dir(clip_dir, hf_clip_files, tmp_path_factory) -> Path:
    """All files of openai/clip-vit-base-patch32, tokenizer.json included.

    The hub's tokenizer.json marks the special tokens ``normalized``, which makes transformers
    match them in lowercased text; the vocabulary-only layout above does not for
    ``<|endoftext|>`` (its plain-string pad_token wins). Both are tested.
    """
    directory = tmp_path_factory.mktemp("clip_hub_full")
    for path in clip_dir.iterdir():
        shutil.copy(path, directory / path.name)
    hf_clip_files.save_pretrained(directory / "saved")
    data = json.loads((directory / "saved" / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        token["normalized"] = True
    # the 2021 hub files write merges as "a b" strings, newer ones as pairs
    data["model"]["merges"] = [" ".join(merge) for merge in data["model"]["merges"]]
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    shutil.rmtree(directory / "saved")
    return directory


@pytest.fixture(scope="module")
def hf_clip(clip_hub_dir):
    tokenizer = transformers.CLIPTokenizer.from_pretrained(clip_hub_dir)
    assert tokenizer("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT
    assert tokenizer.model_max_length == 77
    return tokenizer


@pytest.fixture(scope="module")
def hf_bert(bert_dir):
    tokenizer = transformers.BertTokenizer.from_pretrained(bert_dir)
    assert len(tokenizer) == 21128
    assert tokenizer("一只猫")["input_ids"] == [101, 671, 1372, 4344, 102]
    assert tokenizer.model_max_length == 52
    return tokenizer


@pytest.fixture(scope="module")
def hf_clip_saved(hf_clip, tmp_path_factory) -> Path:
    """What transformers' save_pretrained writes: tokenizer.json + tokenizer_config.json."""
    directory = tmp_path_factory.mktemp("clip_saved")
    hf_clip.save_pretrained(directory)
    assert (directory / "tokenizer.json").is_file()
    assert not (directory / "vocab.json").exists()
    return directory


@pytest.fixture(scope="module")
def hf_bert_saved(hf_bert, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bert_saved")
    hf_bert.save_pretrained(directory)
    assert (directory / "tokenizer.json").is_file()
    assert not (directory / "vocab.txt").exists()
    return directory


@pytest.fixture(scope="module")
def clip():
    return CLIPTokenizer.from_openai_bpe()


@pytest.fixture(scope="module")
def bert():
    return BertTokenizer.from_chinese_roberta_wwm_ext()


@pytest.fixture(
    scope="module", params=["bundled", "hub_files", "vocab_files", "hf_saved_tokenizer_json"]
)
def clip_pair(request, clip, clip_dir, clip_hub_dir, hf_clip_saved, hf_clip, hf_clip_files):
    """(ours, the transformers reference) for each way of getting the CLIP tokenizer."""
    if request.param == "bundled":
        return clip, hf_clip
    if request.param == "hub_files":
        return CLIPTokenizer.from_pretrained(clip_hub_dir), hf_clip
    if request.param == "vocab_files":
        return CLIPTokenizer.from_pretrained(clip_dir), hf_clip_files
    return CLIPTokenizer.from_pretrained(hf_clip_saved), hf_clip


@pytest.fixture(scope="module", params=["bundled", "vocab_files", "hf_saved_tokenizer_json"])
def bert_pair(request, bert, bert_dir, hf_bert_saved, hf_bert):
    if request.param == "bundled":
        return bert, hf_bert
    directory = bert_dir if request.param == "vocab_files" else hf_bert_saved
    return BertTokenizer.from_pretrained(directory), hf_bert


def _rows(value):
    return value.tolist() if hasattr(value, "tolist") else value


def assert_same(ours, theirs, text, text_pair=None, **kwargs):
    """Same keys and values from both tokenizers; names the first text that differs."""
    expected = theirs(text, text_pair, **kwargs)
    got = ours(text, text_pair, **kwargs)
    assert list(got.keys()) == list(expected.keys())
    for key in expected:
        want, have = _rows(expected[key]), _rows(got[key])
        if want == have:
            continue
        texts = text if isinstance(text, list) else [text]
        if isinstance(text, list) or kwargs.get("return_tensors"):
            for index, (w, h) in enumerate(zip(want, have, strict=False)):
                assert h == w, f"{key} differs for {texts[index]!r}: {h} != {w}"
        assert have == want, f"{key} differs for {text!r}"
    return got


# -- parity on the corpus -------------------------------------------------------------------------


def test_clip_ids_match_transformers(clip_pair):
    ours, theirs = clip_pair
    assert_same(ours, theirs, CORPUS)
    assert_same(ours, theirs, CORPUS, PAIRS, padding=True, truncation=True)
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder


def test_bert_ids_match_transformers(bert_pair):
    ours, theirs = bert_pair
    assert_same(ours, theirs, CORPUS)
    assert_same(ours, theirs, CORPUS, PAIRS, padding=True, truncation=True)
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder


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
        clip([["a", "b"]])
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
