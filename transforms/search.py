"""Top-k search of embedded rows by query vectors: the workers' side of ``clipbeam search``.

Rows are read by dedup's reader (:class:`clipbeam.transforms.dedup.read.ReadUnit`: ids, unit
vectors, kept columns; rows without a usable embedding go to ``errors/``). :class:`BundleTopK`
multiplies each batch by the query matrix (``(queries, dim)``, a few MB for thousands of queries)
in blocks of queries, and keeps, per query, the ``top_k`` best rows of its whole bundle;
``beam.combiners.Top.SmallestPerKey`` then merges the bundles' candidates into the job's top-k per
query.

Order: larger similarity first; equal similarities go to the smaller id (ids compared as the
input column's values, ``"<file>:<row>"`` strings without an id column). The same order is used
inside a bundle and in the combine, so the result does not depend on how rows are spread over
units, bundles or workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from clipbeam.transforms import storage

__all__ = ["BundleTopK", "SearchSpec", "order_key", "result_schema", "top_k_rows", "write_results"]

RESULTS_DIR = "results"
_QUERY_BLOCK = 256  # queries per product: a (256, 4096) float32 tile is 4 MB


@dataclass(frozen=True)
class SearchSpec:
    """Everything a search job needs (the query texts; their vectors travel separately).

    Attributes:
        output: output directory (local path or ``gs://...``).
        model: the checkpoint whose text tower embedded the queries.
        queries: the query texts, in the order given.
        templates: prompt templates (one ``{}``); a query's vector is the mean over them.
        top_k: rows kept per query.
        embedding_column, id_column, keep_columns: as ``clipbeam dedup`` takes them.
        dim: the embeddings' dimension (learned at launch).
        options: the options as given (recorded in metadata and the summary).
    """

    output: str
    model: str
    queries: tuple[str, ...]
    templates: tuple[str, ...] = ("{}",)
    top_k: int = 10
    embedding_column: str = "image_embedding"
    id_column: str | None = "id"
    keep_columns: tuple[str, ...] = ()
    dim: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError("search needs at least one query")
        if self.top_k < 1:
            raise ValueError(f"--top-k must be at least 1 (got {self.top_k})")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(
                    f"a --template must contain exactly one '{{}}' where the query goes "
                    f"(a template of {len(template)} characters has {template.count('{}')})"
                )

    def to_json(self) -> str:
        record = asdict(self)
        record["options"] = dict(self.options)
        return json.dumps(record, sort_keys=True, default=str)


def order_key(candidate: tuple) -> tuple:
    """Sort key of a candidate ``(similarity, id, kept values)``: best first, ties by id."""
    return (-candidate[0], candidate[1])


def top_k_rows(similarities: np.ndarray, ids: list, k: int) -> list[list[int]]:
    """Per query (row of ``similarities``), the indices of its ``k`` best columns in
    :func:`order_key` order. Every column tied with the k-th value is considered, so the id
    decides ties exactly."""
    n = similarities.shape[1]
    chosen = []
    for row in similarities:
        if n > k:
            kth = np.partition(row, n - k)[n - k]
            candidates = np.flatnonzero(row >= kth)
        else:
            candidates = np.arange(n)
        ranked = sorted(candidates.tolist(), key=lambda j: (-float(row[j]), ids[j]))
        chosen.append(ranked[:k])
    return chosen


class BundleTopK(beam.DoFn):
    """:class:`~clipbeam.transforms.dedup.read.Batch` es -> ``(query index, candidate)``, at most
    ``top_k`` per query per bundle; a candidate is ``(similarity, id, kept values)``.

    Args:
        spec: the job.
        queries: ``(len(spec.queries), dim)`` float32 unit query vectors.
    """

    def __init__(self, spec: SearchSpec, queries: np.ndarray):
        self.spec = spec
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)

    def start_bundle(self) -> None:
        self._best: list[list[tuple]] = [[] for _ in range(len(self.queries))]

    def process(self, batch: Any) -> None:
        k = self.spec.top_k
        keep = batch.keep.to_pylist() if self.spec.keep_columns else [None] * len(batch.ids)
        for lo in range(0, len(self.queries), _QUERY_BLOCK):
            tile = self.queries[lo : lo + _QUERY_BLOCK] @ batch.vectors.T
            for q, picked in enumerate(top_k_rows(tile, batch.ids, k), start=lo):
                merged = self._best[q] + [
                    (float(tile[q - lo, j]), batch.ids[j], keep[j]) for j in picked
                ]
                self._best[q] = sorted(merged, key=order_key)[:k]

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for q, candidates in enumerate(self._best):
            for candidate in candidates:
                yield WindowedValue(
                    (q, candidate), GlobalWindow().max_timestamp(), [GlobalWindow()]
                )
        self._best = [[] for _ in range(len(self.queries))]


def result_schema(spec: SearchSpec, id_field: pa.Field, input_schema: pa.Schema) -> pa.Schema:
    """``query, rank, <id>, similarity`` and the kept columns, typed as in the input."""
    return pa.schema(
        [
            pa.field("query", pa.string()),
            pa.field("rank", pa.int32()),
            id_field,
            pa.field("similarity", pa.float32()),
            *(input_schema.field(name) for name in spec.keep_columns),
        ]
    )


def write_results(
    element: tuple[int, Iterable[tuple]],
    spec: SearchSpec,
    schema: pa.Schema,
    metadata: Mapping[str, str],
) -> Iterator[tuple[int, int]]:
    """One query's top-k -> ``results/query-NNNNN.parquet``; yields ``(query index, rows)``."""
    import pyarrow.parquet as pq

    index, candidates = element
    ranked = sorted(candidates, key=order_key)
    id_name = schema.field(2).name
    columns: dict[str, list] = {
        "query": [spec.queries[index]] * len(ranked),
        "rank": list(range(1, len(ranked) + 1)),
        id_name: [c[1] for c in ranked],
        "similarity": [c[0] for c in ranked],
    }
    for name in spec.keep_columns:
        columns[name] = [c[2][name] for c in ranked]
    table = pa.Table.from_pydict(columns, schema=schema.with_metadata(dict(metadata)))
    path = storage.join(spec.output, RESULTS_DIR, f"query-{index:05d}.parquet")
    with storage.atomic_writer(path) as f:
        pq.write_table(table, f)
    yield index, len(ranked)
