"""The tokenizer tests' references, a pytest plugin: corpus, hub layouts, both sides' tokenizers.

The references are built from the same real vocabularies (OpenAI's BPE merges and the Chinese
RoBERTa-wwm-ext WordPiece vocabulary bundled in model/data), written here in the hub layouts,
and sanity-checked against ids known from the published checkpoints before anything is compared.

Loaded by ``pytest_plugins`` in ``tests/conftest.py``. Fixtures: ``clip_dir`` / ``bert_dir``
(hub layouts without tokenizer.json), ``clip_hub_dir`` (with it), ``hf_clip_files``,
``hf_clip``, ``hf_bert`` (transformers' tokenizers), ``hf_clip_saved`` / ``hf_bert_saved`` (what
transformers saves), ``clip`` / ``bert`` (ours, bundled vocabularies), ``clip_pair`` /
``bert_pair`` (ours and the reference, for each way of loading ours). Helpers: the corpus
(:data:`CORPUS`, :data:`PAIRS`) and :func:`assert_same`.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import transformers

from clipbeam.model.tokenization_bert import BertTokenizer
from clipbeam.model.tokenization_clip import CLIPTokenizer

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
