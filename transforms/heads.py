"""Heads in a job: checking them, loading them next to the model, and the filter rules on them.

A job's heads are ``(name, source)`` pairs (``JobSpec.heads``). :func:`load_heads` reads them
with ``model.heads.load_head`` and refuses one whose input size is not the model's projection
size; :class:`clipbeam.transforms.encoder.Encoder` runs them in the same batch as the image
tower, on its device. ``--min-head`` / ``--max-head`` reject rows as ``min_head:NAME`` and
``max_head:NAME`` in ``rejected/``.

This module imports neither torch nor Beam at import time: the command line checks a spec without
them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clipbeam.model.heads import Head

__all__ = ["head_problems", "head_reasons", "load_heads"]

# What a head's column may be called: a name SQL engines take without quoting.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def head_problems(spec: Any, written: set[str]) -> list[str]:
    """What is wrong with a spec's heads and head rules (see :class:`JobSpec`).

    Args:
        spec: the job.
        written: the columns the job writes besides the heads (id, results, error columns).
    """
    p: list[str] = []
    names = [name for name, _ in spec.heads]
    for name, source in spec.heads:
        if not _NAME.match(name):
            p.append(
                f"head name of {len(name)} characters is not a column name: use letters, digits "
                "and _, not starting with a digit"
            )
        if not str(source).strip():
            p.append(f"head {name!r} has an empty source")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        p.append(f"heads repeat {', '.join(duplicates)}")
    taken = sorted(set(names) & (written | set(spec.keep_columns) | {spec.id_column}))
    if taken:
        p.append(
            f"head names {taken} collide with output columns (results, the id or "
            "--keep-columns); rename the heads"
        )
    if spec.heads and spec.image_column is None:
        p.append("heads read the image embedding: they need an image column")
    rules = [*spec.min_heads, *spec.max_heads]
    if rules and spec.kind != "filter":
        p.append(f"min_heads and max_heads only apply to filter, not {spec.kind}")
    for option, pairs in (("min_heads", spec.min_heads), ("max_heads", spec.max_heads)):
        given = [name for name, _ in pairs]
        if len(set(given)) != len(given):
            p.append(f"{option} names a head twice")
        unknown = sorted(set(given) - set(names))
        if unknown:
            p.append(f"{option} names {unknown}, which are not heads of this job ({names})")
        for name, value in pairs:
            if not isinstance(value, int | float) or not np.isfinite(value):
                p.append(f"{option} {name}: the threshold must be a finite number")
    lows, highs = dict(spec.min_heads), dict(spec.max_heads)
    for name in sorted(set(lows) & set(highs)):
        if lows[name] > highs[name]:
            p.append(f"head {name}: min {lows[name]} is above max {highs[name]}: nothing passes")
    return p


def load_heads(
    heads: Sequence[tuple[str, str]], projection_dim: int, model: str
) -> dict[str, Head]:
    """Loads each head and checks that it reads embeddings of the model's size.

    Args:
        heads: ``(name, source)`` pairs.
        projection_dim: the model's embedding size.
        model: the model's source, for messages.

    Returns:
        The heads by name, in the order given, on CPU in float32.

    Raises:
        HeadError: a head does not load, or reads embeddings of another size (the message
            names both sizes and the model the head was trained on).
    """
    from clipbeam.model.heads import HeadError, load_head

    loaded: dict[str, Head] = {}
    for name, source in heads:
        try:
            head = load_head(source)
        except HeadError as exc:
            raise HeadError(f"--head {name}: {exc}") from None
        if head.embedding_dim != projection_dim:
            trained = head.config.trained_on or "a model it does not record"
            raise HeadError(
                f"--head {name}={source} reads {head.embedding_dim}-dim embeddings (trained on "
                f"{trained}), but --model {model} makes {projection_dim}-dim embeddings: use a "
                "head trained on this model's embeddings (clipbeam train-head), or the model "
                "the head was trained on"
            )
        loaded[name] = head
    return loaded


def head_reasons(spec: Any, outputs: np.ndarray | None) -> list[list[str]]:
    """The head rules each row fails: ``min_head:NAME`` (below its minimum), ``max_head:NAME``
    (above its maximum); a NaN output fails both rules it has.

    Args:
        spec: the job.
        outputs: ``float32[rows, len(spec.heads)]``, columns in ``spec.heads`` order.
    """
    if outputs is None or not (spec.min_heads or spec.max_heads):
        return [[] for _ in range(0 if outputs is None else len(outputs))]
    column = {name: i for i, (name, _) in enumerate(spec.heads)}
    failed = np.zeros((len(outputs), 0), dtype=bool)
    labels: list[str] = []
    for prefix, pairs, fails in (
        ("min_head", spec.min_heads, lambda v, x: ~(v >= x)),
        ("max_head", spec.max_heads, lambda v, x: ~(v <= x)),
    ):
        for name, threshold in pairs:
            hit = fails(outputs[:, column[name]], threshold)
            failed = np.concatenate([failed, hit[:, None]], axis=1)
            labels.append(f"{prefix}:{name}")
    return [[labels[j] for j in np.flatnonzero(row)] for row in failed]
