"""The clipbeam engine as Beam building blocks: work units, transforms and a RunInference handler.

Names are imported lazily (PEP 562), so ``import clipbeam.transforms`` loads neither torch nor
Beam until a name that needs them is used::

    from clipbeam.transforms import JobSpec, ProcessUnits, plan_units

    spec = JobSpec(kind="score", model="path/to/clip", output="out/")
    stats = p | beam.Create(plan_units("data/*.parquet")) | beam.Reshuffle() | ProcessUnits(spec)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "JobSpec": "spec",
    "WorkUnit": "units",
    "plan_units": "units",
    "iter_batches": "units",
    "UnitStats": "stats",
    "RowError": "errors",
    "Encoder": "encoder",
    "acquire_encoder": "encoder",
    "ProcessUnits": "process",
    "StageScores": "process",
    "SelectStaged": "process",
    "UnitDoFn": "process",
    "top_fraction_threshold": "process",
    "ClipModelHandler": "handler",
    "load_heads": "heads",
    "Head": "_model_heads",
    "HeadConfig": "_model_heads",
    "HeadError": "_model_heads",
    "load_head": "_model_heads",
    "save_head": "_model_heads",
    "prepare_example": "handler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipbeam.transforms' has no attribute {name!r}")
    if module == "_model_heads":  # the head network itself lives in clipbeam.model
        value = getattr(importlib.import_module("clipbeam.model.heads"), name)
    else:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
