"""CLIP and Chinese-CLIP in plain PyTorch, with the API of the Hugging Face documentation.

Code written for ``transformers`` runs by changing only its import line::

    from clipbeam.model import CLIPModel, CLIPProcessor

Names are imported lazily (PEP 562): importing ``clipbeam.model`` costs nothing until a class is
used, and Beam can pickle DoFns that refer to this package without loading torch at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # configuration
    "CLIPConfig": "configuration",
    "CLIPTextConfig": "configuration",
    "CLIPVisionConfig": "configuration",
    "ChineseCLIPConfig": "configuration",
    "ChineseCLIPTextConfig": "configuration",
    "ChineseCLIPVisionConfig": "configuration",
    # models
    "CLIPModel": "modeling_clip",
    "CLIPTextModel": "modeling_clip",
    "CLIPVisionModel": "modeling_clip",
    "CLIPTextModelWithProjection": "modeling_clip",
    "CLIPVisionModelWithProjection": "modeling_clip",
    "ChineseCLIPModel": "modeling_chinese_clip",
    "ChineseCLIPTextModel": "modeling_chinese_clip",
    "ChineseCLIPVisionModel": "modeling_chinese_clip",
    "load_model": "auto",
    "model_type_of": "auto",
    "weights_fingerprint": "auto",
    # tokenizers
    "CLIPTokenizer": "tokenization_clip",
    "CLIPTokenizerFast": "tokenization_clip",
    "BertTokenizer": "tokenization_bert",
    "BertTokenizerFast": "tokenization_bert",
    # image processors
    "CLIPImageProcessor": "image_processing",
    "CLIPFeatureExtractor": "image_processing",
    "ChineseCLIPImageProcessor": "image_processing",
    "ChineseCLIPFeatureExtractor": "image_processing",
    # processors
    "CLIPProcessor": "processing",
    "ChineseCLIPProcessor": "processing",
    "load_processor": "processing",
    # containers and sources
    "BatchEncoding": "batch",
    "BatchFeature": "batch",
    "CheckpointError": "hub",
    "CheckpointNotFoundError": "hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipbeam.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
