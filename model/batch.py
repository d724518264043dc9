"""Dict-like containers that tokenizers, image processors and processors return."""

from __future__ import annotations

from collections import UserDict
from typing import Any

import numpy as np
import torch

__all__ = ["BatchEncoding", "BatchFeature"]


class BatchFeature(UserDict):
    """A dict of model inputs (``pixel_values``, ``input_ids``...) with attribute access.

    ``return_tensors`` converts every value: ``"pt"`` to torch tensors, ``"np"`` to numpy arrays,
    ``None`` leaves them as they are (lists).
    """

    def __init__(self, data: dict[str, Any] | None = None, tensor_type: str | None = None):
        super().__init__(data or {})
        self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        if name == "data":  # UserDict sets .data in __init__; guard recursion before that
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def convert_to_tensors(self, tensor_type: str | None = None) -> BatchFeature:
        """Converts all values in place to ``tensor_type`` (``"pt"``, ``"np"`` or ``None``)."""
        if tensor_type is None:
            return self
        if tensor_type not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None (got {tensor_type!r})")
        for key, value in self.data.items():
            if tensor_type == "pt":
                if isinstance(value, torch.Tensor):
                    continue
                if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
                    value = np.stack(value)
                self.data[key] = torch.as_tensor(value)
            else:
                is_tensor = isinstance(value, torch.Tensor)
                self.data[key] = value.numpy() if is_tensor else np.asarray(value)
        return self

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Moves tensors to a device; a dtype argument casts only floating point tensors.

        Integer inputs such as ``input_ids`` keep their dtype, as in transformers.
        """
        for key, value in self.data.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.is_floating_point():
                self.data[key] = value.to(*args, **kwargs)
            else:
                device = kwargs.get("device")
                for arg in args:
                    if isinstance(arg, (str, torch.device)):
                        device = arg
                if device is not None:
                    self.data[key] = value.to(device=device)
        return self


class BatchEncoding(BatchFeature):
    """What tokenizers return: ``input_ids``, ``attention_mask`` and maybe ``token_type_ids``."""
