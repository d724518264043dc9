"""Tokenizer vocabularies learned from a corpus, for the demo models trained from scratch.

:func:`build_clip_bpe` learns a byte-level BPE vocabulary in OpenAI CLIP's format and
:func:`build_wordpiece_vocab` lists a BERT WordPiece vocabulary, each from the captions of the
generated scenes (:mod:`clipbeam.pipeline.demo.scenes`) that the demo recipes train on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

__all__ = ["build_clip_bpe", "build_wordpiece_vocab"]

_WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_clip_bpe(texts: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learns a byte-level BPE vocabulary in OpenAI CLIP's format from a corpus.

    Merges are learned with the ``tokenizers`` library under exactly the normalisation and word
    split of :class:`clipbeam.model.CLIPTokenizer`, until every word of the corpus is one token. The
    vocabulary is laid out like CLIP's: the 256 byte symbols, the same with the ``</w>``
    end-of-word suffix, one token per merge in merge order, then ``<|startoftext|>`` and
    ``<|endoftext|>``. So any text still tokenizes (into bytes, outside the corpus), and
    ``<|endoftext|>`` has the largest id, as CLIP's pooling by ``argmax`` of the ids expects.

    Args:
        texts: the corpus, e.g. every caption of the training set.

    Returns:
        ``(vocab, merges)``: token -> id, and the merges in priority order.
    """
    from tokenizers import Tokenizer, trainers
    from tokenizers.models import BPE

    from clipbeam.model.tokenization_clip import CLIPTokenizer, bytes_to_unicode

    specials = ("<|startoftext|>", "<|endoftext|>")
    # A throwaway tokenizer lends its normalizer and word split: one definition of both.
    reference = CLIPTokenizer({s: i for i, s in enumerate(specials)}, []).backend_tokenizer
    tokenizer = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tokenizer.normalizer = reference.normalizer
    tokenizer.pre_tokenizer = reference.pre_tokenizer
    texts = list(texts)
    words = {
        word
        for text in texts
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(
            tokenizer.normalizer.normalize_str(text)
        )
    }
    trainer = trainers.BpeTrainer(
        # Room for every merge (a word of n symbols needs at most n - 1) and no minimum count,
        # so merging stops when every word is one token. The size is preallocated: keep it tight.
        vocab_size=512 + sum(len(word) for word in words),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=sorted(bytes_to_unicode().values()),
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
    )
    tokenizer.train_from_iterator(texts, trainer)
    learned = json.loads(tokenizer.to_str())["model"]["merges"]
    # tokenizers writes merges as ["a", "b"] pairs (versions before 0.20 as "a b" strings).
    merges = [(m[0], m[1]) if isinstance(m, list) else tuple(m.split(" ")) for m in learned]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), *specials]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("the learned BPE merges repeat a token; this is a bug, please report")
    return vocab, merges


def build_wordpiece_vocab(texts: Iterable[str]) -> list[str]:
    """A BERT WordPiece vocabulary covering every character of a corpus.

    BERT's basic tokenizer cuts CJK text into single characters and punctuation into single
    marks before WordPiece runs, so for Chinese captions the vocabulary needed is exactly the set
    of characters used: BERT's five special tokens, then those characters (lower-cased, as a
    ``do_lower_case`` tokenizer sees them) in code point order.

    Args:
        texts: the corpus.

    Returns:
        The tokens in id order (``[PAD]`` is 0), i.e. the lines of ``vocab.txt``.
    """
    chars = sorted({c for text in texts for c in text.lower() if not c.isspace()})
    return [*_WORDPIECE_SPECIALS, *chars]
