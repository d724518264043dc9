"""Per-kind output columns: embeddings, scores, filter verdicts and zero-shot labels.

Each kind's schema is fixed up front (from the input schema and the model's embedding size), so a
unit whose rows all fail still writes a well-typed, empty file and a job's folder reads as one
table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipbeam.transforms.encoder import Encoder
from clipbeam.transforms.heads import head_reasons
from clipbeam.transforms.rows import EncodedWindow, id_field
from clipbeam.transforms.spec import JobSpec

__all__ = [
    "Prompts",
    "filter_reasons",
    "output_schema",
    "result_columns",
    "rule_counts",
    "split_filtered",
]

_EMBEDDING_TYPES = {"float32": pa.float32(), "float16": pa.float16()}
_NUMPY_TYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class Prompts:
    """Text embeddings the job needs once, not per row: classify labels and filter concepts.

    Attributes:
        labels: ``float32[len(spec.labels), D]``, normalized template means (classify).
        concepts: ``float32[len(spec.reject_concepts), D]`` (filter with concepts).
        logit_scale: the model's ``exp(logit_scale)``.
    """

    labels: np.ndarray | None
    concepts: np.ndarray | None
    logit_scale: float

    @classmethod
    def build(cls, spec: JobSpec, encoder: Encoder) -> Prompts:
        """Embeds the spec's labels and concepts over its templates."""
        labels = concepts = None
        if spec.kind == "classify":
            labels = encoder.prompt_embeddings(spec.labels, spec.templates)
        if spec.kind == "filter" and spec.reject_concepts:
            concepts = encoder.prompt_embeddings(spec.reject_concepts, spec.templates)
        return cls(labels, concepts, encoder.logit_scale)


def result_fields(spec: JobSpec, dim: int, *, rejected: bool = True) -> list[pa.Field]:
    """The columns ``spec.kind`` computes, in output order: the kind's, then one float32 column
    per head, then (filter) ``reject_reason``.

    Args:
        spec: the job.
        dim: the model's embedding size.
        rejected: filter: include ``reject_reason`` (the rejected/ and staging schema).
    """
    heads = [pa.field(name, pa.float32()) for name in spec.head_names]
    return _kind_fields(spec, dim) + heads + _reason_field(spec, rejected)


def _reason_field(spec: JobSpec, rejected: bool) -> list[pa.Field]:
    reasons = pa.field("reject_reason", pa.list_(pa.string()))
    return [reasons] if spec.kind == "filter" and rejected else []


def _kind_fields(spec: JobSpec, dim: int) -> list[pa.Field]:
    embedding = pa.list_(_EMBEDDING_TYPES[spec.embedding_dtype], dim)
    score = pa.field("clip_score", pa.float32())
    if spec.kind == "embed":
        fields = []
        if spec.image_column is not None:
            fields.append(pa.field("image_embedding", embedding))
        if spec.text_column is not None:
            fields.append(pa.field("text_embedding", embedding))
        if spec.image_column is not None and spec.text_column is not None:
            fields.append(score)
        return fields
    if spec.kind == "score":
        return [score]
    if spec.kind == "classify":
        return [
            pa.field("labels", pa.list_(pa.string())),
            pa.field("probabilities", pa.list_(pa.float32())),
        ]
    fields = [score, pa.field("image_width", pa.int32()), pa.field("image_height", pa.int32())]
    if spec.reject_concepts:
        fields.append(pa.field("concept_scores", concept_scores_type(spec.reject_concepts)))
    return fields


def output_schema(
    spec: JobSpec,
    input_schema: pa.Schema,
    dim: int,
    metadata: dict[str, str] | None = None,
    *,
    rejected: bool = True,
) -> pa.Schema:
    """The schema of an output file: id column, computed columns, then ``keep_columns``."""
    fields = [id_field(spec, input_schema), *result_fields(spec, dim, rejected=rejected)]
    fields += [input_schema.field(name) for name in spec.keep_columns]
    return pa.schema(fields, metadata=metadata)


def _scores(window: EncodedWindow) -> np.ndarray:
    # Both embeddings are unit vectors in float32: their dot product is the cosine.
    products = window.image_embeddings * window.text_embeddings  # type: ignore[operator]
    return products.sum(axis=1, dtype=np.float32)


def _embeddings(values: np.ndarray, field: pa.Field, dtype: str) -> pa.Array:
    """Rows of ``values`` as a ``fixed_size_list`` column, stored as ``dtype``."""
    flat = values.astype(_NUMPY_TYPES[dtype], copy=False).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(
        pa.array(flat, type=field.type.value_type), field.type.list_size
    )


def result_columns(spec: JobSpec, window: EncodedWindow, prompts: Prompts) -> list[pa.Array]:
    """The computed columns for the good rows of ``window``, matching :func:`result_fields`
    (with ``reject_reason`` holding the rules failed so far, null when none)."""
    columns = _kind_columns(spec, window, prompts)
    if spec.heads:
        heads: np.ndarray = window.head_outputs  # type: ignore[assignment]
        columns += [pa.array(heads[:, j], type=pa.float32()) for j in range(len(spec.heads))]
    if spec.kind == "filter":
        columns.append(_reasons(spec, window, prompts))
    return columns


def _kind_columns(spec: JobSpec, window: EncodedWindow, prompts: Prompts) -> list[pa.Array]:
    dim = (
        window.image_embeddings if window.image_embeddings is not None else window.text_embeddings
    ).shape[1]  # type: ignore[union-attr]
    fields = _kind_fields(spec, dim)
    if spec.kind == "embed":
        columns = []
        for f in fields:
            if f.name == "clip_score":
                columns.append(pa.array(_scores(window), type=pa.float32()))
            else:
                tower = window.image_embeddings if f.name == "image_embedding" else None
                tower = window.text_embeddings if tower is None else tower
                columns.append(_embeddings(tower, f, spec.embedding_dtype))  # type: ignore[arg-type]
        return columns
    if spec.kind == "score":
        return [pa.array(_scores(window), type=pa.float32())]
    if spec.kind == "classify":
        return _classify(spec, window.image_embeddings, prompts)  # type: ignore[arg-type]

    scores = _scores(window)
    widths = [w for w, _ in window.sizes]
    heights = [h for _, h in window.sizes]
    columns = [
        pa.array(scores, type=pa.float32()),
        pa.array(widths, type=pa.int32()),
        pa.array(heights, type=pa.int32()),
    ]
    if spec.reject_concepts:
        concept_scores = _concept_scores(window, prompts)
        columns.append(
            pa.StructArray.from_arrays(
                [pa.array(concept_scores[:, c]) for c in range(len(spec.reject_concepts))],
                fields=list(concept_scores_type(spec.reject_concepts)),
            )
        )
    return columns


def concept_scores_type(concepts: tuple[str, ...]) -> pa.StructType:
    """``concept_scores``: one float32 field per ``--reject-concept``, named by the concept, so
    that a query reads ``concept_scores.nsfw`` (DuckDB), ``pl.col("concept_scores")
    .struct.field("nsfw")`` (Polars) or ``pc.struct_field(column, "nsfw")`` (pyarrow)."""
    return pa.struct([pa.field(concept, pa.float32()) for concept in concepts])


def _concept_scores(window: EncodedWindow, prompts: Prompts) -> np.ndarray:
    scores = window.image_embeddings @ prompts.concepts.T  # type: ignore[union-attr,operator]
    return scores.astype(np.float32)


def _reasons(spec: JobSpec, window: EncodedWindow, prompts: Prompts) -> pa.Array:
    """``reject_reason`` of a filter window's good rows: every rule failed, null where none."""
    concept_scores = _concept_scores(window, prompts) if spec.reject_concepts else None
    reasons = filter_reasons(
        spec, _scores(window), window.sizes, window.texts, concept_scores, window.head_outputs
    )
    return pa.array([r or None for r in reasons], type=pa.list_(pa.string()))


def _classify(spec: JobSpec, images: np.ndarray, prompts: Prompts) -> list[pa.Array]:
    """Standard CLIP zero-shot: softmax over scaled cosines to each label's prompt embedding."""
    logits = prompts.logit_scale * (images @ prompts.labels.T)  # type: ignore[union-attr]
    logits = logits - logits.max(axis=1, keepdims=True)  # stable softmax
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = spec.effective_top_k
    # argsort is stable: equal probabilities keep label order.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = [[spec.labels[j] for j in row] for row in top]
    values = np.take_along_axis(probs, top, axis=1).astype(np.float32)
    return [
        pa.array(names, type=pa.list_(pa.string())),
        pa.array(list(values), type=pa.list_(pa.float32())),
    ]


def filter_reasons(
    spec: JobSpec,
    scores: np.ndarray,
    sizes: list[tuple[int, int]],
    texts: list[str],
    concept_scores: np.ndarray | None,
    head_outputs: np.ndarray | None = None,
) -> list[list[str]]:
    """The rules each row fails, in a fixed order (``top_fraction`` is applied later, in
    :func:`split_filtered`, once the dataset-wide threshold is known); head rules
    (``min_head:NAME``, ``max_head:NAME``) come last."""
    by_heads = head_reasons(spec, head_outputs)
    reasons: list[list[str]] = []
    for row, score in enumerate(scores):
        failed = []
        if spec.min_score is not None and score < spec.min_score:
            failed.append("min_score")
        width, height = sizes[row]
        if spec.min_image_side is not None and min(width, height) < spec.min_image_side:
            failed.append("min_image_side")
        ratio = max(width, height) / max(1, min(width, height))
        if spec.max_aspect_ratio is not None and ratio > spec.max_aspect_ratio:
            failed.append("max_aspect_ratio")
        if spec.min_text_chars is not None and len(texts[row].strip()) < spec.min_text_chars:
            failed.append("min_text_chars")
        if concept_scores is not None:
            for c, concept in enumerate(spec.reject_concepts):
                if concept_scores[row, c] >= spec.concept_threshold:  # type: ignore[operator]
                    failed.append(f"concept:{concept}")
        if by_heads:
            failed += by_heads[row]
        reasons.append(failed)
    return reasons


def split_filtered(table: pa.Table, threshold: float | None = None) -> tuple[pa.Table, pa.Table]:
    """Splits filter rows (with ``reject_reason``) into kept and rejected tables.

    Args:
        table: rows in the rejected/ schema; ``reject_reason`` null where no rule failed yet.
        threshold: the ``--top-fraction`` score cut; rows scoring below it fail ``top_fraction``.

    Returns:
        ``(kept, rejected)``: kept rows without the ``reject_reason`` column; rejected rows with
        every failed rule in ``reject_reason``, a list in :func:`filter_reasons`' order (then
        ``top_fraction``).
    """
    reasons = table.column("reject_reason").to_pylist()
    if threshold is not None:
        scores = table.column("clip_score").to_numpy(zero_copy_only=False)
        reasons = [
            [*(r or []), "top_fraction"] if s < threshold else r
            for r, s in zip(reasons, scores, strict=True)
        ]
        index = table.schema.get_field_index("reject_reason")
        field = table.schema.field(index)
        table = table.set_column(index, field, pa.array(reasons, type=field.type))
    passed = pa.array([not r for r in reasons], type=pa.bool_())
    kept = table.filter(passed).drop_columns(["reject_reason"])
    rejected = table.filter(pc.invert(passed))
    return kept, rejected


def rule_counts(rejected: pa.Table) -> Counter[str]:
    """How many rows of a ``rejected/`` table failed each rule (a row may fail several)."""
    counts: Counter[str] = Counter()
    for reason in rejected.column("reject_reason").to_pylist():
        counts.update(reason or [])
    return counts
