"""Measuring a CLIP or Chinese-CLIP model: embeddings, zero-shot accuracy, a calibrated min score.

:func:`encode_images` and :func:`encode_texts` give L2-normalized embeddings in batches,
:func:`zero_shot_accuracy` scores a model's choice of prompt per image, and
:func:`calibrate_min_score` picks the ``--min-score`` threshold that best separates mismatched
from matching pairs (the demo recipes record it with each bundled model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipbeam.pipeline.training import tokenize_texts

__all__ = [
    "Calibration",
    "calibrate_min_score",
    "encode_images",
    "encode_texts",
    "zero_shot_accuracy",
]


@torch.no_grad()
def encode_images(
    model: Any, processor: Any, images: Sequence[Any], batch_size: int = 256
) -> torch.Tensor:
    """L2-normalized image embeddings ``[len(images), projection_dim]`` (PIL images in)."""
    out = []
    for i in range(0, len(images), batch_size):
        pixels = processor.image_processor(list(images[i : i + batch_size]), return_tensors="pt")
        out.append(F.normalize(model.get_image_features(pixels["pixel_values"]), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def encode_texts(
    model: Any, processor: Any, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """L2-normalized text embeddings ``[len(texts), projection_dim]``."""
    out = []
    for i in range(0, len(texts), batch_size):
        inputs = tokenize_texts(processor.tokenizer, texts[i : i + batch_size])
        out.append(F.normalize(model.get_text_features(**inputs), dim=-1))
    return torch.cat(out)


def zero_shot_accuracy(
    model: Any, processor: Any, images: Sequence[Any], labels: Sequence[int], prompts: Sequence[str]
) -> float:
    """Fraction of images whose most similar prompt is their label's.

    Args:
        model: a CLIP or Chinese-CLIP model.
        processor: its processor.
        images: PIL images.
        labels: for each image, the index of its true prompt.
        prompts: one prompt per class.
    """
    similarity = (
        encode_images(model, processor, images) @ encode_texts(model, processor, prompts).t()
    )
    predicted = similarity.argmax(dim=1)
    return float((predicted == torch.tensor(list(labels))).float().mean())


@dataclass(frozen=True)
class Calibration:
    """A ``--min-score`` threshold chosen on held-out pairs, and how it did there.

    Attributes:
        min_score: pairs scoring below this are rejected.
        caught: fraction of the mismatched pairs rejected.
        good_rejected: fraction of the matching pairs rejected.
        mismatched: number of mismatched pairs it was chosen on.
        good: number of matching pairs it was chosen on.
    """

    min_score: float
    caught: float
    good_rejected: float
    mismatched: int
    good: int


def calibrate_min_score(scores: Sequence[float], is_mismatched: Sequence[bool]) -> Calibration:
    """Picks the score threshold that best separates mismatched from matching pairs.

    The threshold maximizes (mismatches caught) - (good pairs rejected), each as a fraction of
    its own class (Youden's J), so it does not depend on how many mismatches the data has. It
    sits halfway between the two scores it falls between.

    Args:
        scores: a ``clip_score`` per pair.
        is_mismatched: whether each pair is a planted mismatch; both kinds must occur.

    Raises:
        ValueError: no mismatched or no matching pair.
    """
    s = np.asarray(scores, dtype=np.float64)
    bad = np.asarray(is_mismatched, dtype=bool)
    if bad.all() or not bad.any():
        raise ValueError("calibration needs both mismatched and matching pairs")
    order = np.argsort(s, kind="stable")
    # Rejecting the k lowest scores, for every k: how many of each kind that rejects.
    caught = np.concatenate([[0], np.cumsum(bad[order])]) / bad.sum()
    rejected = np.concatenate([[0], np.cumsum(~bad[order])]) / (~bad).sum()
    k = int(np.argmax(caught - rejected))
    sorted_scores = s[order]
    if k == 0:
        threshold = sorted_scores[0]
    elif k == len(s):
        threshold = np.nextafter(sorted_scores[-1], np.inf)
    else:
        threshold = (sorted_scores[k - 1] + sorted_scores[k]) / 2
    # A threshold people can type; the rates are those of the rounded value, under the
    # filter's rule (a pair is rejected when its score is below min_score).
    min_score = round(float(threshold), 4)
    rejects = s < min_score
    return Calibration(
        min_score=min_score,
        caught=float(rejects[bad].mean()),
        good_rejected=float(rejects[~bad].mean()),
        mismatched=int(bad.sum()),
        good=int((~bad).sum()),
    )
