"""The ready-made clipbeam jobs: ``clipbeam embed | score | filter | classify``.

From Python::

    from clipbeam.pipeline import run

    run(["score", "--input", "data/*.parquet", "--output", "out", "--model", "ckpt"])

``run`` is imported lazily (PEP 562), so importing ``clipbeam.pipeline`` loads neither Beam nor
torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LaunchError", "main", "run"]

_EXPORTS = {
    "run": "clipbeam.pipeline.cli",
    "main": "clipbeam.pipeline.cli",
    "LaunchError": "clipbeam.pipeline.options",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipbeam.pipeline' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
