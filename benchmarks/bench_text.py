"""Text batching: clipbeam's length-bucketed batches against padding every caption to the context.

The captions follow web alt-text's length mix (:func:`benchmarks.workloads.alt_text_captions`:
median 11 CLIP tokens, a few truncated at 77). All variants run the same model (a CLIP
ViT-B/16 text tower with random weights, loaded as the jobs load it: ``--dtype auto``), include
tokenization, and are timed in turn within every repeat:

* ``clipbeam``: ``Encoder.encode_texts``: captions sorted by token count, cut into batches, each
  batch padded to its own longest caption, and the model's products run on the real tokens alone
  (:class:`clipbeam.model.attention.TokenPacking`);
* ``padded to the context``: batches in input order, every caption padded to 77 tokens (what
  ``padding="max_length"`` gives, and what fixed-shape exports do), every position computed;
* ``padded to each batch's longest``: batches in input order, each padded to its longest caption
  (transformers' ``padding=True``), every position computed;
* ``padded to the context, packed``: as the first padded variant, but with the attention mask
  given, so the model skips the padding's products itself: what packing alone gains.

The padded variants that compute every position pass no attention mask: under CLIP's causal
attention, padding on the right never reaches the end-of-text token that is pooled, so their
embeddings are the same (checked), and the model computes every padded position as a padded
pipeline does (given the mask, it would skip the padding's products).

It prints texts/s, the ratios, the tokens each variant puts through the model's products, and
checks that all variants give the same embeddings.

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
from clipbeam.transforms.encoder import Encoder


def padded_embeddings(
    encoder: Encoder, captions: Sequence[str], batch_size: int, padding: str, mask: bool
) -> tuple[np.ndarray, int]:
    """Embeddings of batches in input order, padded as ``padding`` says, with or without the
    attention mask; and the tokens put through the model's products."""
    out, computed = [], 0
    for start in range(0, len(captions), batch_size):
        inputs = encoder.tokenizer(
            list(captions[start : start + batch_size]),
            padding=padding,
            truncation=True,
            max_length=encoder.context_length,
            return_tensors="pt",
        )
        real = inputs.pop("attention_mask")
        computed += int(real.sum()) if mask else inputs["input_ids"].numel()
        if mask:
            inputs["attention_mask"] = real
        with torch.inference_mode():
            features = encoder.model.get_text_features(**dict(inputs))
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).numpy())
    return np.concatenate(out), computed


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

    ours_label = "clipbeam (sorted, packed)"
    variants = {
        "padded to the context": ("max_length", False),
        "padded to each batch's longest": ("longest", False),
        "padded to the context, packed": ("max_length", True),
    }
    calls = {ours_label: lambda: encoder.encode_texts(captions)}
    for label, (padding, mask) in variants.items():
        calls[label] = lambda padding=padding, mask=mask: padded_embeddings(
            encoder, captions, args.batch_size, padding, mask
        )
    medians = interleaved_medians(calls, args.repeats)

    ours = encoder.encode_texts(captions)
    real = sum(len(t["input_ids"]) for t in encoder.tokenize(captions))
    computed, embeddings = {ours_label: real}, {}
    for label, (padding, mask) in variants.items():
        embeddings[label], computed[label] = padded_embeddings(
            encoder, captions, args.batch_size, padding, mask
        )
    print(f"{args.captions} captions, {real} real tokens ({real / args.captions:.1f} per caption)")
    print("texts/s (tokens through the model's products):")
    for label, seconds in medians.items():
        print(f"  {label:<38} {args.captions / seconds:8.1f}   ({computed[label]} tokens)")
    for label in variants:
        print(f"  ratio clipbeam / {label}: {medians[label] / medians[ours_label]:.2f}x")
    for label, other in embeddings.items():
        cosine = (ours * other).sum(axis=1)
        print(f"  same embeddings as {label}: min cosine {cosine.min():.6f}")
    print(f"load average at end: {load_average()} ({time.perf_counter() - start:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
