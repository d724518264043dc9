"""Whether the sizes in a ``config.json`` can fit this machine, checked before anything is built.

A tower's memory follows from a few integers of its config: ``num_hidden_layers`` 10^7, or an
``image_size`` that makes millions of patches, asks for more memory than any machine has, and
building even the empty (meta-device) modules of such a model stalls a launch for hours. Each
tower config calls :func:`check_fits` from its ``__post_init__``: the weights (float32, as the
launch check loads them) and one sequence's activations are estimated with integer arithmetic
and compared with the machine's memory, and the error names the field that makes the difference
(the one whose default value would shrink the estimate most).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["check_fits", "machine_memory", "text_bytes", "vision_bytes"]

_FLOAT32 = 4
# When the platform cannot tell its memory: a terabyte, more than any launch machine has.
_UNKNOWN_MEMORY = 2**40


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return _UNKNOWN_MEMORY


def _encoder_bytes(values: Mapping[str, int], embeddings: int, tokens: int) -> int:
    """A transformer encoder: its weights in float32 plus one ``tokens``-long sequence's
    activations (the MLP's hidden states and the attention weights of every head)."""
    hidden, inner = values["hidden_size"], values["intermediate_size"]
    per_layer = 4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner
    parameters = embeddings + values["num_hidden_layers"] * per_layer
    activations = tokens * (inner + values["num_attention_heads"] * tokens)
    return _FLOAT32 * (parameters + activations)


def vision_bytes(values: Mapping[str, int]) -> int:
    """A ViT tower: patch and position embeddings, encoder, projection."""
    hidden, patch = values["hidden_size"], values["patch_size"]
    tokens = (values["image_size"] // patch) ** 2 + 1
    embeddings = (
        values["num_channels"] * patch * patch + tokens + values["projection_dim"]
    ) * hidden
    return _encoder_bytes(values, embeddings, tokens)


def text_bytes(values: Mapping[str, int]) -> int:
    """A text tower (CLIP's or BERT's): token, position and type embeddings, encoder, and a
    projection or pooler."""
    hidden, positions = values["hidden_size"], values["max_position_embeddings"]
    rows = values["vocab_size"] + positions + values.get("type_vocab_size", 0)
    head = values.get("projection_dim", hidden)
    return _encoder_bytes(values, (rows + head) * hidden, positions)


def check_fits(
    config: Any, estimate: Callable[[Mapping[str, int]], int], names: Sequence[str]
) -> None:
    """Refuses a config whose tower cannot fit this machine's memory.

    Args:
        config: a tower config (a dataclass with the fields ``names``).
        estimate: bytes the tower needs, from a mapping of its field values.
        names: the size fields ``estimate`` reads.

    Raises:
        ValueError: one line naming the field, its value, the estimate and the memory.
    """
    values = {name: getattr(config, name) for name in names}
    needed = estimate(values)
    memory = machine_memory()
    if needed <= memory:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.name in values}

    def with_default(name: str) -> int:
        return estimate({**values, name: defaults[name]})

    culprit = min(names, key=with_default)
    shown = _number(values[culprit])
    raise ValueError(
        f"{type(config).__name__}.{culprit} = {shown} makes this tower need about "
        f"{_gib(needed)} of memory (float32 weights and one input's activations), more than this "
        f"machine's {_gib(memory)}: fix that key in config.json (the default is "
        f"{defaults[culprit]})"
    )


def _number(value: int) -> str:
    digits = len(str(abs(value)))
    return str(value) if digits <= 24 else f"a {digits}-digit number"


def _gib(size: int) -> str:
    gib = size >> 30
    if gib >= 10**6:  # exact integer arithmetic: such sizes overflow a float
        return f"10^{len(str(gib)) - 1} GiB"
    return f"{size / 2**30:.3g} GiB"
