"""One GPU, one command: clipbeam's ViT-B/16 figures for README, in under 5 minutes.

On a machine with one CUDA GPU, ``python -m benchmarks.gpu`` prints, for a ViT-B/16 CLIP with
random weights:

* model-only image features/s in float16 and bfloat16 at batches 64 to 512, clipbeam eager and
  compiled (``--compile``), and transformers on the same weights in the same dtype;
* ``clipbeam score`` end to end on the DirectRunner from a Parquet file of 1600 x 1200 JPEG
  bytes, with exact and fast preprocessing, the decode pool at the machine's cores, and
  ``--dtype float16``;
* the share of the job's time the GPU waited for decoding: ``1 - job rows/s / model rows/s`` (the
  model alone on both towers, at the job's batch size).

Without CUDA it stops at once with one line. Variants are timed in turn and medians compared
(``benchmarks.bench_model``'s method). Needs transformers (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

NAME = "python -m benchmarks.gpu"
BATCHES = (64, 128, 256, 512)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(BATCHES), help="model-only batches"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    parser.add_argument(
        "--rows", type=int, default=1024, help="rows of JPEG photos for the end-to-end job"
    )
    parser.add_argument("--job-batch-size", type=int, default=256, help="the job's --batch-size")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    parser.add_argument("--no-job", action="store_true", help="skip clipbeam score end to end")
    parser.add_argument("--device", default="cuda", help="the CUDA device (cuda, cuda:N)")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.job_batch_size < 1:
        parser.error("batch sizes, --repeats and --job-batch-size must be at least 1")
    if args.rows < 2:
        parser.error("--rows must be at least 2")
    if not args.device.startswith("cuda"):
        parser.error(f"--device must name a CUDA device (got {args.device!r})")
    return args


def cuda_problem(device: str) -> str | None:
    """Why this machine cannot run the benchmark on ``device`` (one line), or ``None``."""
    import torch

    if not torch.cuda.is_available():
        return (
            f"no CUDA GPU: torch {torch.__version__} sees none on this machine; run this on a "
            "GPU machine with a CUDA build of torch"
        )
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        return f"{device} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)"
    return None


def model_rows(args: argparse.Namespace, checkpoint: Path) -> None:
    """Image features/s per dtype and batch: transformers, clipbeam eager and compiled."""
    import torch

    from benchmarks.bench_model import Runner, interleaved_medians, load_reference
    from clipbeam import model
    from clipbeam.model.runtime import compile_towers

    device = torch.device(args.device)
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        runners = [
            Runner(
                f"transformers {name}",
                load_reference("clip", checkpoint, device, dtype),
                None,
                device,
            ),
            Runner(
                f"clipbeam {name}",
                model.CLIPModel.from_pretrained(checkpoint, device=device, dtype=dtype),
                None,
                device,
            ),
        ]
        if not args.no_compile:
            compiled = model.CLIPModel.from_pretrained(checkpoint, device=device, dtype=dtype)
            runners.append(
                Runner(f"clipbeam {name} compiled", compile_towers(compiled), None, device)
            )
        print(f"\nimage features/s, {name} (model only, ViT-B/16):")
        for batch in args.batch_sizes:
            pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            for r in runners:
                r.image(pixels)  # warm up (and compile) on this shape
            calls = {r.label: (lambda r=r, p=pixels: r.image(p)) for r in runners}
            medians = interleaved_medians(calls, args.repeats, device)
            rates = {label: batch / t for label, t in medians.items()}
            shown = ", ".join(f"{label} {rate:,.0f}" for label, rate in rates.items())
            reference = rates[f"transformers {name}"]
            ratios = ", ".join(
                f"{label} {rate / reference:.2f}x"
                for label, rate in rates.items()
                if label.startswith("clipbeam")
            )
            print(f"  batch {batch}: {shown}; vs transformers: {ratios}")
        del runners
        torch.cuda.empty_cache()


def job_rows(args: argparse.Namespace, root: Path, checkpoint: Path) -> None:
    """``clipbeam score`` end to end, exact and fast, and the GPU's share of waiting."""
    from benchmarks.bench_e2e import _timed, write_dataset
    from clipbeam.transforms.encoder import Encoder

    data, one = root / "data.parquet", root / "one.parquet"
    write_dataset(data, args.rows)
    write_dataset(one, 1)
    encoder = Encoder.load(
        str(checkpoint),
        device=args.device,
        dtype="float16",
        batch_size=args.job_batch_size,
        compile=False,
    )
    import pyarrow.parquet as pq

    texts = pq.read_table(data, columns=["text"]).column("text").to_pylist()
    import numpy as np

    pixels = np.random.default_rng(0).standard_normal((args.rows, 3, 224, 224), np.float32)
    encoder.encode_pixels(pixels[: args.job_batch_size])  # warm up
    encoder.encode_texts(texts[: args.job_batch_size])
    start = time.perf_counter()
    encoder.encode_pixels(pixels)
    encoder.encode_texts(texts)
    model_rate = args.rows / (time.perf_counter() - start)
    print(
        f"\nclipbeam score, {args.rows} rows of 1600 x 1200 JPEG bytes, float16, "
        f"batch {args.job_batch_size}, decode pool of {os.cpu_count()} threads:"
    )
    print(f"  model alone (both towers, inputs ready): {model_rate:,.0f} rows/s")
    for mode in ("exact", "fast"):
        rates = []
        for path, rows in ((data, args.rows), (one, 1)):
            out = root / f"{mode}-{rows}"
            command = [
                sys.executable,
                "-m",
                "clipbeam.pipeline",
                "score",
                "--input",
                str(path),
                "--output",
                str(out),
                "--model",
                str(checkpoint),
                "--id-column",
                "id",
                "--device",
                args.device,
                "--dtype",
                "float16",
                "--preprocess",
                mode,
                "--batch-size",
                str(args.job_batch_size),
                "--runner",
                "DirectRunner",
                "--direct_num_workers",
                "1",
            ]
            rates.append(_timed(command))
        whole, fixed = rates
        steady = (args.rows - 1) / (whole - fixed)
        waited = max(0.0, 1 - steady / model_rate)
        print(
            f"  {mode}: {args.rows / whole:,.1f} rows/s whole run, {steady:,.1f} steady state; "
            f"the GPU waited for decoding {waited:.0%} of the time"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns the exit status (2 without a usable CUDA GPU)."""
    args = parse_args(argv)
    problem = cuda_problem(args.device)
    if problem:
        print(f"{NAME}: error: {problem}", file=sys.stderr)
        return 2
    import torch
    import transformers

    from benchmarks.workloads import build_checkpoint, load_average

    transformers.logging.set_verbosity_error()
    print(
        f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}; "
        f"{os.cpu_count()} CPUs; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; load average {load_average()}"
    )
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = build_checkpoint(root / "vit-b16", "vit-b16")
        model_rows(args, checkpoint)
        if not args.no_job:
            job_rows(args, root, checkpoint)
    print(f"\ndone in {time.perf_counter() - begin:.0f} s; load average {load_average()}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
