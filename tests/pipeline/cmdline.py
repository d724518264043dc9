"""Helpers of the command-line tests: a job's parsed arguments, or the launch error they raise."""

from __future__ import annotations

import pytest

from clipbeam.pipeline.arguments import ParsedArgs, parse_args
from clipbeam.pipeline.options import LaunchError

BASE = ["--input", "data/*.parquet", "--output", "out", "--model", "ckpt"]


def parse(command: str, *args: str, read_text=None) -> ParsedArgs:
    return parse_args([command, *BASE, *args], read_text=read_text)


def error_of(command: str, *args: str, read_text=None) -> str:
    with pytest.raises(LaunchError) as info:
        parse(command, *args, read_text=read_text)
    return str(info.value)
