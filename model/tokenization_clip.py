"""CLIP's tokenizer, ``CLIPTokenizer``: byte-level BPE, and OpenAI's vocabulary files.

``CLIPTokenizer`` has the API of the transformers 5 class of that name and gives the same ids
(``tests/model/test_tokenization_clip.py`` checks it); ``CLIPTokenizerFast`` is the same class under
its older name. The shared encoding, loading and saving are in
:mod:`~clipbeam.model.tokenization_utils`.

Behaviour, as in transformers 5.23: CLIP text is NFC-normalized, whitespace runs become one space,
then lowercased. There is no ftfy and no HTML unescaping: ``"&amp;"`` stays three tokens.
(OpenAI's original tokenizer ran ``ftfy.fix_text`` and ``html.unescape``; transformers 5 no longer
does, with or without ftfy.)

Where transformers silently does something surprising, this class raises or differs instead: a
constructor without a vocabulary raises (transformers builds a 3-token vocabulary), and the
transformers 4 arguments ``vocab_file=``/``merges_file=`` are honoured (transformers 5 ignores
them for ``CLIPTokenizer``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from .hub import CheckpointError, read_json_object
from .tokenization_files import TOKENIZER_FILE, _pick
from .tokenization_utils import _TokenizerBase
from .tokenization_vocab import TokenLike, _content

__all__ = ["CLIPTokenizer", "CLIPTokenizerFast", "bytes_to_unicode", "load_openai_bpe"]

OPENAI_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI's SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file: with 2 * 256 byte
# tokens and 2 special tokens that makes the 49408-token vocabulary of every CLIP checkpoint.
OPENAI_BPE_MERGES = 49152 - 256 - 2

# CLIP's word split (as in transformers' CLIPTokenizer): special tokens, English contractions,
# runs of letters, single digits, runs of other non-space symbols. Whitespace is dropped.
CLIP_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)

_T = TypeVar("_T", bound="CLIPTokenizer")


# -- vocabulary files ---------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """Maps each of the 256 byte values to a printable character, as GPT-2 and CLIP do.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) are moved to
    code points from 256 up, so every byte sequence becomes a string of visible characters that
    BPE can merge. The order of the dict (printable bytes first) is the order of the first 256
    tokens of CLIP's vocabulary.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def load_openai_bpe(
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Builds CLIP's vocabulary and merges from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary is built the way OpenAI's ``SimpleTokenizer`` builds it: the 256 byte
    characters, the same with the ``</w>`` end-of-word suffix, the concatenation of each of the
    first 48894 merges, then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 tokens).

    Args:
        path: the gzipped merges file; ``None`` for the copy bundled with this package.

    Returns:
        ``(vocab, merges)``: token to id, and the merges in priority order.

    Raises:
        CheckpointError: the file has fewer merges than CLIP needs or a malformed line.
    """
    if path is None:
        raw = resources.files(__package__).joinpath("data", OPENAI_BPE_FILE).read_bytes()
        where = f"bundled {OPENAI_BPE_FILE}"
    else:
        raw = Path(path).read_bytes()
        where = os.fspath(path)
    # Only the head of the 262k-line file is used: split off just that.
    lines = gzip.decompress(raw).decode("utf-8").split("\n", OPENAI_BPE_MERGES + 1)
    # Line 0 is the "#version" header; OpenAI skips it and keeps the next 48894 lines.
    merge_lines = lines[1 : OPENAI_BPE_MERGES + 1]
    if len(merge_lines) < OPENAI_BPE_MERGES:
        raise CheckpointError(
            f"{where} has {len(merge_lines)} merges after its header; CLIP needs "
            f"{OPENAI_BPE_MERGES}. Pass the original bpe_simple_vocab_16e6.txt.gz."
        )
    merges = [_parse_merge(line, where, number) for number, line in enumerate(merge_lines, 2)]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = [
        *byte_tokens,
        *(token + "</w>" for token in byte_tokens),
        *(left + right for left, right in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    return {token: index for index, token in enumerate(tokens)}, merges


def _parse_merge(line: str, where: str, number: int) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 2 or not all(parts):
        raise CheckpointError(
            f"{where} line {number}: expected a merge of two tokens separated by one space, "
            f"got {line!r}"
        )
    return parts[0], parts[1]


def _read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Reads a ``merges.txt``: an optional ``#version`` header, then one ``left right`` a line."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    return [
        _parse_merge(line.removesuffix("\r"), os.fspath(path), number)
        for number, line in enumerate(lines, 1)
        if line.strip() and not (number == 1 and line.startswith("#version"))
    ]


def _read_vocab_json(path: str | os.PathLike) -> dict[str, int]:
    vocab = read_json_object(path)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise CheckpointError(f"{os.fspath(path)} must be a JSON object of token -> integer id")
    return vocab


# -- the tokenizer -------------------------------------------------------------------------------


class CLIPTokenizer(_TokenizerBase):
    """CLIP's tokenizer: byte-level BPE with a ``</w>`` end-of-word suffix.

    Lowercases, NFC-normalizes and collapses whitespace, splits words with CLIP's pattern, and
    wraps texts as ``<|startoftext|> ... <|endoftext|>`` (ids 49406 and 49407 in OpenAI's
    vocabulary). Load it with :meth:`from_pretrained` or build OpenAI's with
    :meth:`from_openai_bpe`.

    Example::

        tokenizer = CLIPTokenizer.from_openai_bpe()
        batch = tokenizer(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    """

    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    _model_type: ClassVar[str] = "BPE"
    # every CLIP text tower has 77 positions
    _default_model_max_length: ClassVar[int] = 77
    _template_tokens: ClassVar[tuple[str, ...]] = ("bos_token", "eos_token")

    def __init__(
        self,
        vocab: Mapping[str, int] | str | os.PathLike | None = None,
        merges: Sequence[tuple[str, str] | str] | str | os.PathLike | None = None,
        *,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        unk_token: TokenLike = "<|endoftext|>",
        bos_token: TokenLike = "<|startoftext|>",
        eos_token: TokenLike = "<|endoftext|>",
        pad_token: TokenLike | None = "<|endoftext|>",
        **options: Any,
    ) -> None:
        """Builds the tokenizer from a vocabulary and merges.

        Args:
            vocab: token -> id, or the path of a ``vocab.json``.
            merges: merges in priority order (``("a", "b")`` pairs or ``"a b"`` strings), or
                the path of a ``merges.txt``.
            vocab_file: path of a ``vocab.json`` (the transformers 4 argument).
            merges_file: path of a ``merges.txt`` (the transformers 4 argument).
            unk_token: token for what the vocabulary cannot represent.
            bos_token: start-of-text token.
            eos_token: end-of-text token; CLIP pools the text embedding there.
            pad_token: padding token (``<|endoftext|>`` for OpenAI checkpoints).
            **options: shared options, see
                :class:`~clipbeam.model.tokenization_vocab._TokenizerVocab`
                (``model_max_length``, ``padding_side``, ``additional_special_tokens``...).

        Raises:
            TypeError: no vocabulary or no merges were given.
        """
        owner = type(self).__name__
        vocab = _pick("vocab", vocab, vocab_file, _read_vocab_json, owner)
        merges = _pick("merges", merges, merges_file, _read_merges, owner)
        if vocab is None or merges is None:
            raise TypeError(
                f"{owner} needs a vocabulary and merges: pass vocab=/merges= (dict and list, or "
                f"file paths) or vocab_file=/merges_file=, or use {owner}.from_pretrained(path) "
                f"or {owner}.from_openai_bpe()"
            )
        merge_pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        backend = Tokenizer(
            BPE(
                vocab=dict(vocab),
                merges=merge_pairs,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=_content(unk_token),
            )
        )
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        special = {
            "unk_token": unk_token,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "pad_token": pad_token,
        }
        for key in ("sep_token", "cls_token", "mask_token"):
            if key in options:
                special[key] = options.pop(key)
        super().__init__(backend, special, **options)

    @classmethod
    def from_openai_bpe(
        cls: type[_T], bpe_path: str | os.PathLike | None = None, **options: Any
    ) -> _T:
        """OpenAI CLIP's tokenizer, from ``bpe_simple_vocab_16e6.txt.gz`` (bundled by default).

        Gives the same ids as every OpenAI CLIP checkpoint (``"a photo of a cat"`` ->
        ``[49406, 320, 1125, 539, 320, 2368, 49407]``), with ``model_max_length=77``.

        Args:
            bpe_path: another copy of the merges file.
            **options: constructor options (``pad_token``, ``model_max_length``...).
        """
        vocab, merges = load_openai_bpe(bpe_path)
        # OpenAI's tokenizer finds special tokens in the lowercased text, and the hub
        # checkpoints mark them normalized: "<|ENDOFTEXT|>" is the end-of-text token too.
        for key, content in (
            ("bos_token", "<|startoftext|>"),
            ("eos_token", "<|endoftext|>"),
            ("unk_token", "<|endoftext|>"),
            ("pad_token", "<|endoftext|>"),
        ):
            options.setdefault(key, AddedToken(content, special=True, normalized=True))
        options.setdefault("name_or_path", "openai-clip-bpe")
        return cls(vocab, merges, **options)

    @classmethod
    def _vocab_files_options(cls, checkpoint: Any) -> dict[str, Any]:
        if checkpoint.get("vocab.json") is None or checkpoint.get("merges.txt") is None:
            raise checkpoint.missing(
                f"checkpoint {checkpoint.source!r} has no tokenizer.json and no vocab.json + "
                f"merges.txt, which {cls.__name__} needs; looked in {checkpoint.describe()}",
                TOKENIZER_FILE,
                "vocab.json",
                "merges.txt",
            )
        return {
            "vocab_file": checkpoint.require("vocab.json"),
            "merges_file": checkpoint.require("merges.txt"),
        }

    def _update_post_processor(self) -> None:
        bos, eos = self._special["bos_token"], self._special["eos_token"]
        assert bos is not None and eos is not None
        self._backend.post_processor = processors.RobertaProcessing(
            (eos.content, self._backend.token_to_id(eos.content)),
            (bos.content, self._backend.token_to_id(bos.content)),
            trim_offsets=False,
            add_prefix_space=False,
        )

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``<bos> A <eos>``, or ``<bos> A <eos> <eos> B <eos>`` for a pair."""
        bos, eos = [self.bos_token_id], [self.eos_token_id]
        if token_ids_1 is None:
            return bos + list(token_ids_0) + eos
        return bos + list(token_ids_0) + eos + eos + list(token_ids_1) + eos

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """All zeros: CLIP has no segment embeddings."""
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def _special_tokens_mask(self, n0: int, n1: int | None) -> list[int]:
        mask = [1] + [0] * n0 + [1]
        return mask if n1 is None else [*mask, 1, *([0] * n1), 1]

    def _finish_decoded(self, text: str) -> str:
        # The byte-level decoder leaves the end-of-word suffix in; it marks a word boundary.
        return text.replace("</w>", " ").strip()

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Writes ``vocab.json`` and ``merges.txt`` (the CLIP hub layout); returns their paths."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"save_vocabulary needs an existing directory: {directory}")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        model = json.loads(self._backend.to_str())["model"]
        vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
        lines = ["#version: 0.2"]
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            if " " in left or " " in right:
                raise ValueError(f"merge {merge!r} holds a space; merges.txt cannot represent it")
            lines.append(f"{left} {right}")
        vocab_path = directory / f"{prefix}vocab.json"
        merges_path = directory / f"{prefix}merges.txt"
        vocab_path.write_text(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n", "utf-8")
        merges_path.write_text("\n".join(lines) + "\n", "utf-8")
        return str(vocab_path), str(merges_path)


CLIPTokenizerFast = CLIPTokenizer
