"""Text batching: clipbeam's length-bucketed batches against padding every caption to the context.

The captions follow web alt-text's length mix (:func:`benchmarks.workloads.alt_text_captions`:
median 11 CLIP tokens, a few truncated at 77). All variants run the same model (a CLIP
ViT-B/16 text tower with random weights, loaded as the jobs load it: ``--dtype auto``), include
tokenization, and are timed in turn within every repeat:

* ``clipbeam``: ``Encoder.encode_texts``: captions sorted by token count, cut into batches, each
  batch padded to its own longest caption;
* ``padded to the context``: batches in input order, every caption padded to 77 tokens (what
  ``padding="max_length"`` gives, and what fixed-shape exports do);
* ``padded to each batch's longest``: batches in input order, each padded to its longest caption
  (transformers' ``padding=True``), for comparison.

It prints texts/s, the ratios, the tokens each variant computes, and checks that all variants
give the same embeddings.

Run ``python -m benchmarks.bench_text`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.workloads import (
    alt_text_captions,
    build_checkpoint,
    describe_machine,
    interleaved_medians,
    load_average,
)
from transforms.encoder import Encoder


def padded_embeddings(
    encoder: Encoder, captions: Sequence[str], batch_size: int, padding: str
) -> tuple[np.ndarray, int]:
    """Embeddings of batches in input order, padded as ``padding`` says; and the token count."""
    out, computed = [], 0
    for start in range(0, len(captions), batch_size):
        inputs = encoder.tokenizer(
            list(captions[start : start + batch_size]),
            padding=padding,
            truncation=True,
            max_length=encoder.context_length,
            return_tensors="pt",
        )
        computed += inputs["input_ids"].numel()
        with torch.inference_mode():
            features = encoder.model.get_text_features(**dict(inputs))
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).numpy())
    return np.concatenate(out), computed


def bucketed_tokens(encoder: Encoder, captions: Sequence[str], batch_size: int) -> int:
    """Tokens computed by :meth:`Encoder.encode_texts` (sorted, padded per batch)."""
    lengths = sorted(len(t["input_ids"]) for t in encoder.tokenize(captions))
    return sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size])
        for i in range(0, len(lengths), batch_size)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_text", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--captions", type=int, default=256, help="captions per timed call")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant")
    parser.add_argument("--dtype", default="auto", help="as the jobs' --dtype")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default). On a machine shared with other work, 1 keeps "
        "the small operations of short batches from waiting on descheduled threads",
    )
    args = parser.parse_args(argv)
    if min(args.captions, args.batch_size, args.repeats) < 1:
        parser.error("--captions, --batch-size and --repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}")
    print(f"load average at start: {load_average()}")
    start = time.perf_counter()
    captions = alt_text_captions(args.captions)
    with tempfile.TemporaryDirectory() as tmp:
        source = str(build_checkpoint(tmp, "vit-b16"))
        encoder = Encoder.load(source, device="cpu", dtype=args.dtype, batch_size=args.batch_size)
    print(f"model: CLIP ViT-B/16 text tower, {encoder.dtype}, batches of {args.batch_size}")

    calls = {
        "clipbeam (sorted, padded per batch)": lambda: encoder.encode_texts(captions),
        "padded to the context": lambda: padded_embeddings(
            encoder, captions, args.batch_size, "max_length"
        ),
        "padded to each batch's longest": lambda: padded_embeddings(
            encoder, captions, args.batch_size, "longest"
        ),
    }
    medians = interleaved_medians(calls, args.repeats)

    ours = encoder.encode_texts(captions)
    context, context_tokens = padded_embeddings(encoder, captions, args.batch_size, "max_length")
    longest, longest_tokens = padded_embeddings(encoder, captions, args.batch_size, "longest")
    real = sum(len(t["input_ids"]) for t in encoder.tokenize(captions))
    computed = {
        "clipbeam (sorted, padded per batch)": bucketed_tokens(encoder, captions, args.batch_size),
        "padded to the context": context_tokens,
        "padded to each batch's longest": longest_tokens,
    }
    print(f"{args.captions} captions, {real} real tokens ({real / args.captions:.1f} per caption)")
    print("texts/s (tokens computed, padding included):")
    for label, seconds in medians.items():
        print(f"  {label:<38} {args.captions / seconds:8.1f}   ({computed[label]} tokens)")
    base = medians["clipbeam (sorted, padded per batch)"]
    for label in ("padded to the context", "padded to each batch's longest"):
        print(f"  ratio clipbeam / {label}: {medians[label] / base:.2f}x")
    for label, other in (("context", context), ("longest", longest)):
        cosine = (ours * other).sum(axis=1)
        print(f"  same embeddings as padded to the {label}: min cosine {cosine.min():.6f}")
    print(f"load average at end: {load_average()} ({time.perf_counter() - start:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
