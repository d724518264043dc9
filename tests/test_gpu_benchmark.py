"""benchmarks.gpu on a machine without CUDA: its arguments, and its one-line refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks import gpu

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_defaults_cover_batches_64_to_512():
    args = gpu.parse_args([])
    assert args.batch_sizes == [64, 128, 256, 512]
    assert (args.device, args.no_compile, args.no_job) == ("cuda", False, False)
    args = gpu.parse_args(["--batch-sizes", "128", "--no-compile", "--device", "cuda:1"])
    assert (args.batch_sizes, args.no_compile, args.device) == ([128], True, "cuda:1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-sizes", "0"], "must be at least 1"),
        (["--rows", "1"], "--rows must be at least 2"),
        (["--device", "cpu"], "--device must name a CUDA device (got 'cpu')"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        gpu.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@needs_no_gpu
def test_refuses_without_cuda_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--no-job"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("python -m benchmarks.gpu: error: no CUDA GPU: torch ")
