"""BERT's WordPiece tokenizer, ``BertTokenizer``, as Chinese-CLIP uses it, and its vocab.txt.

``BertTokenizer`` has the API of the transformers 5 class of that name and gives the same ids and
token type ids (``tests/model/test_tokenization_bert.py`` checks it); ``BertTokenizerFast`` is
the same class under its older name. The shared encoding, loading and saving are in
:mod:`~clipbeam.model.tokenization_utils`. Unlike transformers, a constructor without a
vocabulary raises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .hub import CheckpointNotFoundError
from .tokenization_files import TOKENIZER_FILE, _pick
from .tokenization_utils import _TokenizerBase
from .tokenization_vocab import TokenLike, _content

__all__ = ["BertTokenizer", "BertTokenizerFast"]

CHINESE_ROBERTA_VOCAB_FILE = "chinese_roberta_wwm_ext_vocab.txt"

_T = TypeVar("_T", bound="BertTokenizer")


# -- vocabulary files ---------------------------------------------------------------------------


def _read_wordpiece_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Reads a ``vocab.txt``: one token a line, its id the line number from 0.

    As the Rust reader transformers uses: lines are split on ``\\n`` only (not on U+2028, a
    line separator to ``str.splitlines``), trailing Unicode whitespace is dropped (so the
    Chinese vocabulary's ``"\\u2028"`` entry reads as ``""``), and a repeated token keeps
    its last id.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {line.rstrip(): index for index, line in enumerate(lines)}


def _bundled(name: str) -> Path:
    path = Path(str(resources.files(__package__).joinpath("data", name)))
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"the bundled vocabulary {path} is missing; reinstall clipbeam"
        )
    return path


# -- the tokenizer -------------------------------------------------------------------------------


class BertTokenizer(_TokenizerBase):
    """BERT's WordPiece tokenizer, as Chinese-CLIP uses it.

    Cleans control characters, puts spaces around CJK characters, lowercases and strips
    accents (``strip_accents=None`` follows ``do_lower_case``), splits on whitespace and
    punctuation, then WordPiece with ``##`` continuations; texts become ``[CLS] ... [SEP]``
    with ``token_type_ids``. Load it with :meth:`from_pretrained`, or get the bundled Chinese
    RoBERTa-wwm-ext vocabulary of Chinese-CLIP with :meth:`from_chinese_roberta_wwm_ext`.
    """

    model_input_names: ClassVar[list[str]] = ["input_ids", "token_type_ids", "attention_mask"]
    _model_type: ClassVar[str] = "WordPiece"
    # BERT's position embeddings
    _default_model_max_length: ClassVar[int] = 512
    _config_keys: ClassVar[tuple[str, ...]] = (
        "do_lower_case",
        "tokenize_chinese_chars",
        "strip_accents",
    )
    _template_tokens: ClassVar[tuple[str, ...]] = ("cls_token", "sep_token")

    def __init__(
        self,
        vocab: Mapping[str, int] | str | os.PathLike | None = None,
        *,
        vocab_file: str | os.PathLike | None = None,
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        unk_token: TokenLike = "[UNK]",
        sep_token: TokenLike = "[SEP]",
        pad_token: TokenLike | None = "[PAD]",
        cls_token: TokenLike = "[CLS]",
        mask_token: TokenLike | None = "[MASK]",
        **options: Any,
    ) -> None:
        """Builds the tokenizer from a WordPiece vocabulary.

        Args:
            vocab: token -> id, or the path of a ``vocab.txt`` (one token a line).
            vocab_file: path of a ``vocab.txt`` (the transformers 4 argument).
            do_lower_case: lowercase the text.
            tokenize_chinese_chars: make every CJK character a word of its own.
            strip_accents: remove accents; ``None`` does so exactly when lowercasing.
            unk_token: token for words the vocabulary cannot spell.
            sep_token: separator ending each sequence.
            pad_token: padding token.
            cls_token: classification token starting the input (Chinese-CLIP pools there).
            mask_token: masked language model token.
            **options: shared options, see
                :class:`~clipbeam.model.tokenization_vocab._TokenizerVocab`.

        Raises:
            TypeError: no vocabulary was given.
        """
        owner = type(self).__name__
        vocab = _pick("vocab", vocab, vocab_file, _read_wordpiece_vocab, owner)
        if vocab is None:
            raise TypeError(
                f"{owner} needs a vocabulary: pass vocab= (dict or vocab.txt path) or "
                f"vocab_file=, or use {owner}.from_pretrained(path) or "
                f"{owner}.from_chinese_roberta_wwm_ext()"
            )
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        backend = Tokenizer(WordPiece(dict(vocab), unk_token=_content(unk_token)))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        special = {
            "unk_token": unk_token,
            "sep_token": sep_token,
            "pad_token": pad_token,
            "cls_token": cls_token,
            "mask_token": mask_token,
        }
        for key in ("bos_token", "eos_token"):
            if key in options:
                special[key] = options.pop(key)
        super().__init__(backend, special, **options)

    @classmethod
    def from_chinese_roberta_wwm_ext(cls: type[_T], **options: Any) -> _T:
        """Chinese-CLIP's tokenizer on the bundled 21128-token Chinese RoBERTa-wwm-ext vocab.

        ``model_max_length`` defaults to 52, the context length of OFA-Sys' Chinese-CLIP code
        (hub checkpoints' configs say 52 or 512; :meth:`from_pretrained` follows them).

        Args:
            **options: constructor options.
        """
        options.setdefault("model_max_length", 52)
        options.setdefault("name_or_path", "chinese-roberta-wwm-ext")
        return cls(vocab_file=_bundled(CHINESE_ROBERTA_VOCAB_FILE), **options)

    @classmethod
    def _vocab_files_options(cls, checkpoint: Any) -> dict[str, Any]:
        path = checkpoint.get("vocab.txt")
        if path is None:
            raise checkpoint.missing(
                f"checkpoint {checkpoint.source!r} has no tokenizer.json and no vocab.txt, which "
                f"{cls.__name__} needs; looked in {checkpoint.describe()}",
                TOKENIZER_FILE,
                "vocab.txt",
            )
        return {"vocab_file": path}

    def _family_config(self) -> dict[str, Any]:
        return {
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
        }

    def _update_post_processor(self) -> None:
        cls_token, sep_token = self._special["cls_token"], self._special["sep_token"]
        assert cls_token is not None and sep_token is not None
        cls_, sep = cls_token.content, sep_token.content
        self._backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_}:0 $A:0 {sep}:0",
            pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[
                (cls_, self._backend.token_to_id(cls_)),
                (sep, self._backend.token_to_id(sep)),
            ],
        )

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``[CLS] A [SEP]``, or ``[CLS] A [SEP] B [SEP]`` for a pair."""
        cls_, sep = [self.cls_token_id], [self.sep_token_id]
        if token_ids_1 is None:
            return cls_ + list(token_ids_0) + sep
        return cls_ + list(token_ids_0) + sep + list(token_ids_1) + sep

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    def _special_tokens_mask(self, n0: int, n1: int | None) -> list[int]:
        mask = [1] + [0] * n0 + [1]
        return mask if n1 is None else [*mask, *([0] * n1), 1]

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Writes ``vocab.txt`` (one token a line, in id order); returns its path."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"save_vocabulary needs an existing directory: {directory}")
        by_id = sorted(self._backend.get_vocab(with_added_tokens=False).items(), key=lambda x: x[1])
        for expected, (token, index) in enumerate(by_id):
            if index != expected:
                raise ValueError(
                    f"cannot write vocab.txt: the vocabulary has no token with id {expected} "
                    f"(next is {token!r} with id {index}); save_pretrained's tokenizer.json "
                    "keeps such a vocabulary"
                )
            if "\n" in token:
                raise ValueError(f"token {token!r} holds a newline; vocab.txt cannot represent it")
        path = directory / f"{filename_prefix + '-' if filename_prefix else ''}vocab.txt"
        path.write_text("".join(f"{token}\n" for token, _ in by_id), "utf-8")
        return (str(path),)


BertTokenizerFast = BertTokenizer
