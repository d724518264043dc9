"""The head options of the jobs: ``--head NAME=SOURCE`` and filter's ``--min-head`` /
``--max-head NAME=X``.

Each takes one pair, or several comma-separated (a Flex Template parameter holds one value), and
may be repeated. Parsing imports neither torch nor Beam.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = ["add_head_options", "add_head_rules", "head_fields", "head_pairs", "head_thresholds"]


def _split(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(
                f"expected NAME={what} (several comma-separated), got a value of {len(text)} "
                "characters without a name, '=' or value"
            )
        pairs.append((name.strip(), value.strip()))
    return pairs


def head_pairs(text: str) -> list[str]:
    """``NAME=SOURCE[,NAME=SOURCE...]``, as ``"NAME=SOURCE"`` strings."""
    return [f"{n}={v}" for n, v in _split(text, "SOURCE")]


def head_thresholds(text: str) -> list[str]:
    """``NAME=X[,NAME=X...]`` with finite numbers X, as ``"NAME=X"`` strings."""
    pairs = _split(text, "X")
    for name, value in pairs:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected NAME=X with a number X, got {name}= and a value that is not a number"
            ) from None
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"expected a finite number for {name}")
    return [f"{n}={v}" for n, v in pairs]


def add_head_options(parser: argparse.ArgumentParser, add: Callable[..., None]) -> None:
    """Adds ``--head`` (every job)."""
    group = parser.add_argument_group(
        "heads (small learned models on the image embedding, run in the same batch as the tower)"
    )
    add(
        group,
        "head",
        type=head_pairs,
        action="extend",
        default=[],
        metavar="NAME=SOURCE",
        help="run a learned head on every image embedding and write its output as a float32 "
        "column NAME; SOURCE is a clipbeam head folder (head.json + head.safetensors), LAION's "
        "aesthetic predictor or NeMo Curator's NSFW detector (.pth or .safetensors), local or "
        "gs://; repeat for several",
    )


def add_head_rules(group: Any, add: Callable[..., None]) -> None:
    """Adds filter's ``--min-head`` and ``--max-head`` to its rules group."""
    add(
        group,
        "min-head",
        type=head_thresholds,
        action="extend",
        default=[],
        metavar="NAME=X",
        help="reject rows whose head NAME gives less than X (e.g. aesthetic=5); repeatable",
    )
    add(
        group,
        "max-head",
        type=head_thresholds,
        action="extend",
        default=[],
        metavar="NAME=X",
        help="reject rows whose head NAME gives more than X (e.g. nsfw=0.5); repeatable",
    )


def head_fields(args: dict[str, Any]) -> dict[str, tuple]:
    """The ``JobSpec`` fields of the parsed head options."""

    def pairs(key: str) -> list[tuple[str, str]]:
        return [tuple(item.split("=", 1)) for item in args.get(key) or []]  # type: ignore[misc]

    return {
        "heads": tuple(pairs("head")),
        "min_heads": tuple((n, float(x)) for n, x in pairs("min_head")),
        "max_heads": tuple((n, float(x)) for n, x in pairs("max_head")),
    }
