"""Model speed: clipbeam's towers against transformers' with the same random weights.

For CLIP and Chinese-CLIP at ViT-B/16 size, it measures image features/s (one batch of random
pixels per call) and text features/s (captions of mixed lengths, sorted by length and padded per
batch as :class:`clipbeam.transforms.encoder.Encoder` feeds them), for transformers and clipbeam in
the
same process. Variants are timed in turn within every repeat and the medians compared, so the
printed ratios hold on a busy machine even when the absolute rates do not. It also prints the
cosine similarity of reduced-precision features to float32 ones.

On CPU it compares float32, and, where the CPU has native bfloat16 (what ``dtype="auto"``
picks), bfloat16 against transformers under bfloat16 autocast and with bfloat16 weights. On CPU it
also times ``--dtype int8`` (:mod:`clipbeam.model.quantization`) against clipbeam's float32 and
prints the towers' weight size in memory. On a
CUDA GPU it compares float16 and bfloat16, clipbeam compiled (its default there) and not.

Run ``python -m benchmarks.bench_model`` (``--help`` for the options); transformers must be
installed (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from clipbeam import model
from clipbeam.model import kernels
from clipbeam.model.loading import resolve_device
from clipbeam.model.quantization import model_bytes, quantize_int8
from clipbeam.model.runtime import compile_towers, compute_dtype, cpu_has_native_bf16

FAMILIES = ("clip", "chinese_clip")

# ViT-B/16 image towers and the text towers those checkpoints ship with
# (openai/clip-vit-base-patch16, OFA-Sys/chinese-clip-vit-base-patch16).
_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "quick_gelu",
}
_CONFIGS: dict[str, dict[str, Any]] = {
    "clip": {
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
        },
        "vision_config": _VISION,
        "projection_dim": 512,
    },
    "chinese_clip": {
        "text_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "max_position_embeddings": 512,
            "vocab_size": 21128,
        },
        "vision_config": _VISION,
        "projection_dim": 512,
    },
}
# Token budget of each family's tokenizer, special tokens included.
_CONTEXT = {"clip": 77, "chinese_clip": 52}


@dataclass
class Runner:
    """One way of computing features: a model, maybe under autocast."""

    label: str
    model: torch.nn.Module
    autocast: torch.dtype | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.autocast is None:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.autocast):
                    yield

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features of one batch."""
        with self._context():
            return _tensor(self.model.get_image_features(pixel_values=pixels))

    def text(self, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Text features of every batch, concatenated."""
        with self._context():
            return torch.cat([_tensor(self.model.get_text_features(**b)) for b in batches])


def _tensor(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output holds the features.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def caption_batches(
    family: str, count: int, batch_size: int, device: torch.device, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Random token ids shaped like alt-text captions, batched as the Encoder batches them.

    Lengths follow a log-normal distribution with a median of 14 tokens and a long tail cut at
    the family's context (77 for CLIP, 52 for Chinese-CLIP), like web alt-text. Captions are
    sorted by length and each batch is padded to its own longest caption.
    """
    gen = torch.Generator().manual_seed(seed)
    context = _CONTEXT[family]
    lengths = torch.exp(torch.randn(count, generator=gen) * 0.6 + 2.64).round().long()
    lengths = sorted(lengths.clamp(4, context).tolist())
    vocab = _CONFIGS[family]["text_config"]["vocab_size"]
    # CLIP: <|startoftext|> ... <|endoftext|> (the largest ids), pad with <|endoftext|>;
    # Chinese-CLIP: [CLS] ... [SEP], pad with [PAD] = 0.
    bos, eos, pad = (vocab - 2, vocab - 1, vocab - 1) if family == "clip" else (101, 102, 0)
    batches = []
    for start in range(0, count, batch_size):
        group = lengths[start : start + batch_size]
        longest = max(group)
        ids = torch.full((len(group), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(group), longest), dtype=torch.long)
        for row, n in enumerate(group):
            ids[row, 1 : n - 1] = torch.randint(1000, vocab - 2, (n - 2,), generator=gen)
            ids[row, 0], ids[row, n - 1] = bos, eos
            mask[row, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if family == "chinese_clip":
            batch["token_type_ids"] = torch.zeros_like(ids)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def build_checkpoint(family: str, directory: Path, seed: int) -> Path:
    """Saves a transformers model of ``family`` with random weights; returns the folder."""
    torch.manual_seed(seed)
    if family == "clip":
        ref = transformers.CLIPModel(transformers.CLIPConfig(**_CONFIGS[family]))
    else:
        ref = transformers.ChineseCLIPModel(transformers.ChineseCLIPConfig(**_CONFIGS[family]))
    ref.save_pretrained(directory)
    return directory


def load_reference(family: str, path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """transformers' model from ``path`` (its default SDPA attention), in eval mode."""
    cls = transformers.CLIPModel if family == "clip" else transformers.ChineseCLIPModel
    return cls.from_pretrained(path, dtype=dtype).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each callable, timed in turn within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(minimum, mean) cosine similarity of matching rows."""
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    return float(cos.min()), float(cos.mean())


def image_tower_flops(vision: dict[str, Any], projection_dim: int) -> float:
    """Floating-point operations of one full image-tower pass (as transformers computes it).

    Products only (2 per multiply-add): patch embedding, per layer q/k/v, output projection,
    MLP and the two attention products, and the projection of the pooled state. LayerNorms and
    activations are left out (under 1% at ViT-B/16).
    """
    width, inner = vision["hidden_size"], vision["intermediate_size"]
    patch = vision["patch_size"]
    tokens = (vision["image_size"] // patch) ** 2 + 1
    per_layer = tokens * (4 * width * width + 2 * width * inner) + 2 * tokens * tokens * width
    embed = (tokens - 1) * 3 * patch * patch * width
    return 2.0 * (embed + vision["num_hidden_layers"] * per_layer + width * projection_dim)


def product_ceiling(rows: int, width: int, inner: int, repeats: int) -> float:
    """The best GFLOP/s that one ``[rows, width] x [width, inner]`` float32 product reaches here.

    Both CPU kernels (``F.linear``: MKL; :func:`clipbeam.model.kernels.linear`: oneDNN) are timed
    on the
    image tower's largest product (the first MLP layer); the faster median wins. A tower doing
    the same products cannot run them faster than this, so ``ceiling / reference rate`` bounds
    the speed-up any float32 implementation can get by kernels alone.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen)
    weight = torch.randn(inner, width, generator=gen) * width**-0.5
    bias = torch.zeros(inner)
    calls = {
        "F.linear": lambda: torch.nn.functional.linear(x, weight, bias),
        "oneDNN": lambda: kernels.linear(x, weight, bias),
    }
    with torch.inference_mode():
        for call in calls.values():
            call()
        medians = interleaved_medians(calls, max(repeats, 5), torch.device("cpu"))
    return 2.0 * rows * width * inner / min(medians.values()) / 1e9


def runners_for(
    family: str, path: Path, device: torch.device, compile_ours: bool
) -> tuple[list[Runner], list[tuple[str, str]]]:
    """The variants to time and the (clipbeam, transformers) pairs whose ratio is reported."""
    ours_cls = model.CLIPModel if family == "clip" else model.ChineseCLIPModel
    runners: list[Runner] = []
    pairs: list[tuple[str, str]] = []

    def add_ours(dtype: torch.dtype) -> None:
        name = str(dtype).removeprefix("torch.")
        eager = ours_cls.from_pretrained(path, device=device, dtype=dtype)
        runners.append(Runner(f"clipbeam {name}", eager, device=device))
        if compile_ours:
            compiled = compile_towers(ours_cls.from_pretrained(path, device=device, dtype=dtype))
            runners.append(Runner(f"clipbeam {name} compiled", compiled, device=device))

    if device.type == "cpu":
        runners.append(Runner("transformers float32", load_reference(family, path, device, None)))
        add_ours(torch.float32)
        pairs += [("clipbeam float32", "transformers float32")]
        quantized = quantize_int8(ours_cls.from_pretrained(path, device=device))
        runners.append(Runner("clipbeam int8", quantized, device=device))
        pairs += [("clipbeam int8", "clipbeam float32"), ("clipbeam int8", "transformers float32")]
        auto = compute_dtype("auto", device)
        if auto != torch.float32:
            name = str(auto).removeprefix("torch.")
            reference = runners[0].model
            runners.append(Runner(f"transformers {name} autocast", reference, autocast=auto))
            runners.append(
                Runner(f"transformers {name}", load_reference(family, path, device, auto))
            )
            add_ours(auto)
            for ref in (f"transformers {name} autocast", f"transformers {name}"):
                pairs.append((f"clipbeam {name}", ref))
    else:
        for dtype in (torch.float16, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            runners.append(
                Runner(
                    f"transformers {name}",
                    load_reference(family, path, device, dtype),
                    device=device,
                )
            )
            add_ours(dtype)
            pairs.append((f"clipbeam {name}", f"transformers {name}"))
    if compile_ours:
        pairs += [(f"{mine} compiled", ref) for mine, ref in list(pairs) if "int8" not in mine]
    return runners, pairs


def bench_family(family: str, args: argparse.Namespace, device: torch.device) -> None:
    """Times every variant of one family and prints rates, ratios and accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(family, Path(tmp), args.seed)
        runners, pairs = runners_for(family, path, device, args.compile)
    by_label = {r.label: r for r in runners}
    gen = torch.Generator().manual_seed(args.seed)
    texts = caption_batches(family, args.captions, args.text_batch_size, device, args.seed)
    tokens = sum(int(b["attention_mask"].sum()) for b in texts)
    padded = sum(b["input_ids"].numel() for b in texts)
    print(f"\n== {family}: ViT-B/16 image tower, {len(runners)} variants ==")
    for label in ("clipbeam float32", "clipbeam int8"):
        if label in by_label:
            megabytes = model_bytes(by_label[label].model) / 2**20
            print(f"  {label}: weights take {megabytes:.0f} MiB in memory (both towers)")

    # Warm up (and compile) every variant on the exact shapes it will be timed on.
    features: dict[str, dict[str, torch.Tensor]] = {"image": {}, "text": {}}
    pixels = {b: torch.randn(b, 3, 224, 224, generator=gen).to(device) for b in args.batch_sizes}
    for r in runners:
        start = time.perf_counter()
        for b in args.batch_sizes:
            features["image"][r.label] = r.image(pixels[b]).cpu()
        features["text"][r.label] = r.text(texts).cpu()
        _sync(device)
        if "compiled" in r.label:
            print(f"  {r.label}: first calls (compilation) took {time.perf_counter() - start:.0f}s")

    rows: list[tuple[str, str, float]] = []
    for b in args.batch_sizes:
        calls = {r.label: (lambda r=r, b=b: r.image(pixels[b])) for r in runners}
        for label, t in interleaved_medians(calls, args.repeats, device).items():
            rows.append((f"image features/s, batch {b}", label, b / t))
    calls = {r.label: (lambda r=r: r.text(texts)) for r in runners}
    for label, t in interleaved_medians(calls, args.repeats, device).items():
        rows.append((f"text features/s, {args.captions} captions", label, args.captions / t))

    print(
        f"  captions: {tokens} tokens in batches of {args.text_batch_size}, padded to "
        f"{padded} ({tokens / args.captions:.1f} tokens per caption on average)"
    )
    if device.type == "cpu":
        print_ceiling(family, args, rows)
    for workload in dict.fromkeys(w for w, _, _ in rows):
        print(f"  {workload}:")
        rate = {label: r for w, label, r in rows if w == workload}
        for label, value in rate.items():
            print(f"    {label:<36} {value:9.2f}")
        for ours, ref in pairs:
            print(f"    ratio {ours} / {ref}: {rate[ours] / rate[ref]:.2f}x")

    reference = "clipbeam float32" if "clipbeam float32" in by_label else None
    print("  accuracy (cosine similarity of features, min / mean over rows):")
    for tower in ("image", "text"):
        got = features[tower]
        if reference:
            low, mean = cosine(got[reference], got["transformers float32"])
            print(f"    {tower}: clipbeam float32 vs transformers float32: {low:.7f} / {mean:.7f}")
        base = reference or next(label for label in got if label.startswith("transformers"))
        for label in got:
            if label.startswith("clipbeam") and label != base:
                low, mean = cosine(got[label], got[base])
                print(f"    {tower}: {label} vs {base}: {low:.7f} / {mean:.7f}")
    print("  largest clip_score change (every image against every caption):")
    base = reference or next(label for label in features["image"] if "transformers" in label)
    compared = [(reference, "transformers float32")] if reference else []
    compared += [
        (label, base)
        for label in features["image"]
        if label.startswith("clipbeam") and label != base
    ]
    for label, other in compared:
        change = (clip_scores(features, label) - clip_scores(features, other)).abs().max()
        print(f"    {label} vs {other}: {float(change):.5f}")


def print_ceiling(
    family: str, args: argparse.Namespace, rows: list[tuple[str, str, float]]
) -> None:
    """How close transformers' float32 image tower runs to this CPU's matrix-product ceiling."""
    vision, projection = _CONFIGS[family]["vision_config"], _CONFIGS[family]["projection_dim"]
    flops = image_tower_flops(vision, projection)
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    print(f"  matrix-product ceiling (float32, {flops / 1e9:.1f} GFLOP per image):")
    for b in args.batch_sizes:
        ceiling = product_ceiling(
            b * tokens, vision["hidden_size"], vision["intermediate_size"], args.repeats
        )
        rate = {label: r for w, label, r in rows if w == f"image features/s, batch {b}"}
        reference = rate["transformers float32"] * flops / 1e9
        print(
            f"    batch {b}: best single product {ceiling:.1f} GFLOP/s; transformers' tower "
            f"{reference:.1f} GFLOP/s ({reference / ceiling:.0%} of it), so the same products "
            f"run at most {ceiling / reference:.2f}x faster; clipbeam "
            f"{rate['clipbeam float32'] * flops / 1e9:.1f} GFLOP/s of transformers' work"
        )


def clip_scores(features: dict[str, dict[str, torch.Tensor]], label: str) -> torch.Tensor:
    """``[images, captions]`` cosine similarities of one variant's features."""
    norm = torch.nn.functional.normalize
    images = norm(features["image"][label].float(), dim=-1)
    texts = norm(features["text"][label].float(), dim=-1)
    return images @ texts.T


def describe_machine(device: torch.device) -> str:
    """One line on the hardware and software the numbers come from."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.partition(":")[2].strip()
                    break
        hardware = (
            f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
            f"native bfloat16: {cpu_has_native_bf16()}"
        )
    return (
        f"{hardware}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--family", choices=(*FAMILIES, "both"), default="both")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[8, 32], help="image batch sizes"
    )
    parser.add_argument("--captions", type=int, default=256, help="captions per text call")
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time clipbeam under torch.compile (default: on CUDA only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.captions < 1 or args.repeats < 1:
        parser.error("batch sizes, --captions and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = resolve_device(args.device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    print(f"machine: {describe_machine(device)}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    families = FAMILIES if args.family == "both" else (args.family,)
    for family in families:
        bench_family(family, args, device)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
