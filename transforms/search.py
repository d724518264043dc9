"""Top-k and range search of embedded rows by query vectors: the workers' side of clipbeam search.

Rows are read by dedup's reader (:class:`clipbeam.transforms.dedup.read.ReadUnit`: ids, unit
vectors; rows without a usable embedding go to ``errors/``). :class:`QueryHeaps` multiplies each
batch by the query matrix (``(queries, dim)``, a few MB for thousands of queries) in blocks of
queries, and keeps, per query, the ``spec.limit`` best rows at or above ``spec.min_similarity``
(``top_k``, or ``max_results_per_query`` for a range search) and the count of rows at or above it;
``beam.combiners.Top.SmallestPerKey`` then merges the work units' candidates into the job's
results per query. Memory per worker: the query matrix, one ``(256, 4096)`` tile, and
``queries x limit`` kept rows.

Order: larger similarity first; equal similarities go to the smaller id (ids compared as the
input column's values, ``"<file>:<row>"`` strings without an id column). The same order is used
inside a unit and in the combine, so the result does not depend on how rows are spread over
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

__all__ = [
    "BundleTopK",
    "QueryHeaps",
    "SearchSpec",
    "order_key",
    "result_schema",
    "top_k_rows",
    "write_results",
]

RESULTS_DIR = "results"
DEFAULT_MAX_RESULTS = 1000  # --max-results-per-query: the cap of a range search, per query
_QUERY_BLOCK = 256  # queries per product: a (256, 4096) float32 tile is 4 MB


@dataclass(frozen=True)
class SearchSpec:
    """Everything a search job needs (the query labels; their vectors travel separately).

    Attributes:
        output: output directory (local path or ``gs://...``).
        model: the checkpoint whose text (or image) tower embedded the queries.
        queries: the query labels, in the order given: the texts, or the query images' ids.
        templates: prompt templates (one ``{}``) of text queries; a query's vector is the mean.
        top_k: rows kept per query; ``None`` with ``min_similarity`` alone (a range search).
        min_similarity: keep only rows at or above this cosine similarity (``None``: no floor).
        max_results_per_query: the cap of a range search (``top_k`` unset): at most this many
            rows per query, the best ones; the summary names the queries that reached it.
        query_kind: ``"text"`` or ``"image"``.
        embedding_column, id_column: as ``clipbeam dedup`` takes them.
        keep_columns: columns joined to the results by id, from ``keep_from`` (or the input).
        keep_from: Parquet patterns the kept columns are read from; empty: the input.
        image_column: raw image input: the column whose images ``model`` embeds in the job
            (``None``: the input holds embeddings, ``embedding_column``).
        device, dtype, batch_size: how ``model`` embeds those images (as ``clipbeam embed``).
        resume: finish an earlier run of the same job in ``output``.
        dim: the embeddings' dimension (learned at launch).
        options: the options as given (recorded in metadata and the summary).
    """

    output: str
    model: str
    queries: tuple[str, ...]
    templates: tuple[str, ...] = ("{}",)
    top_k: int | None = 10
    min_similarity: float | None = None
    max_results_per_query: int = DEFAULT_MAX_RESULTS
    query_kind: str = "text"
    embedding_column: str = "image_embedding"
    id_column: str | None = "id"
    keep_columns: tuple[str, ...] = ()
    keep_from: tuple[str, ...] = ()
    image_column: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 32
    resume: bool = False
    dim: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError("search needs at least one query")
        if self.top_k is None and self.min_similarity is None:
            raise ValueError("search needs --top-k K, --min-similarity S, or both")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be at least 1 (got {self.top_k})")
        if self.max_results_per_query < 1:
            raise ValueError(
                f"--max-results-per-query must be at least 1 (got {self.max_results_per_query})"
            )
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(
                f"--min-similarity is a cosine similarity in [-1, 1] (got {self.min_similarity})"
            )
        if self.query_kind not in ("text", "image"):
            raise ValueError(f"query_kind must be 'text' or 'image' (got {self.query_kind!r})")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(
                    f"a --template must contain exactly one '{{}}' where the query goes "
                    f"(a template of {len(template)} characters has {template.count('{}')})"
                )

    @property
    def limit(self) -> int:
        """Rows kept per query: ``top_k``, else (a range search) ``max_results_per_query``."""
        return self.top_k if self.top_k is not None else self.max_results_per_query

    @property
    def floor(self) -> float:
        """The smallest similarity kept (``-inf`` without ``min_similarity``)."""
        return -np.inf if self.min_similarity is None else float(self.min_similarity)

    def to_json(self) -> str:
        record = asdict(self)
        record["options"] = dict(self.options)
        return json.dumps(record, sort_keys=True, default=str)


def order_key(candidate: tuple) -> tuple:
    """Sort key of a candidate ``(similarity, id, ...)``: best first, ties by id."""
    return (-candidate[0], candidate[1])


def top_k_rows(
    similarities: np.ndarray, ids: list, k: int, floor: np.ndarray | float = -np.inf
) -> list[list[int]]:
    """Per query (row of ``similarities``), the indices of its ``k`` best columns at or above
    ``floor`` (a scalar or one value per query), in :func:`order_key` order."""
    chosen: list[list[int]] = [[] for _ in range(len(similarities))]
    for q, picked in _picks(similarities, ids, k, floor):
        chosen[q] = picked
    return chosen


def _picks(
    similarities: np.ndarray, ids: list, k: int, floor: np.ndarray | float
) -> Iterator[tuple[int, list[int]]]:
    """``(row, its k best columns at or above floor, in order)`` for the rows that have any.

    Vectorized over the tile: one comparison finds each row's columns at or above its floor;
    only rows with more than ``k`` of them get an ``np.partition`` for their k-th value, and every
    column tied with it stays a candidate, so the id decides ties exactly. Python sorts at most
    ``k`` (plus ties) columns per row.
    """
    n = similarities.shape[1]
    cut = np.array(np.broadcast_to(floor, (len(similarities),)), dtype=similarities.dtype)
    mask = similarities >= cut[:, None]
    over = np.flatnonzero(mask.sum(axis=1) > k)
    if over.size:
        masked = np.where(mask[over], similarities[over], -np.inf)
        kth = np.partition(masked, n - k, axis=1)[:, n - k]
        mask[over] = similarities[over] >= np.maximum(cut[over], kth)[:, None]
    rows, cols = np.nonzero(mask)
    if not rows.size:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        q = int(rows[lo])
        row = similarities[q]
        candidates = cols[lo:hi].tolist()
        if len(candidates) > 1:
            candidates.sort(key=lambda j: (-float(row[j]), ids[j]))
        yield q, candidates[:k]


class QueryHeaps:
    """The best ``spec.limit`` rows at or above ``spec.min_similarity`` per query, over the
    batches added, and per query the count of all rows at or above the floor (to tell a capped
    range search).

    The heaps are two arrays, ``(queries, limit)`` similarities and ids, merged with each tile
    by ``np.argpartition`` for all queries at once; a query only takes part when some row of the
    tile reaches its cut (its floor, or its worst kept row once full), so after the first
    batches most tiles cost one comparison. Where equal similarities straddle the k-th place,
    that query is merged exactly in Python, by :func:`order_key`: ties always go to the smaller
    id.

    Args:
        spec: the job.
        queries: ``(len(spec.queries), dim)`` float32 unit query vectors.
    """

    def __init__(self, spec: SearchSpec, queries: np.ndarray):
        self.spec = spec
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        n, k = len(self.queries), spec.limit
        self.matches = np.zeros(n, dtype=np.int64)
        self._sim = np.full((n, k), -np.inf, dtype=np.float32)  # -inf: an empty place
        self._ids = np.full((n, k), None, dtype=object)

    @property
    def best(self) -> list[list[tuple]]:
        """Per query, its kept ``(similarity, id)``, in :func:`order_key` order."""
        out = []
        for sims, ids in zip(self._sim, self._ids, strict=True):
            kept = [(float(s), i) for s, i in zip(sims, ids, strict=True) if s > -np.inf]
            out.append(sorted(kept, key=order_key))
        return out

    def add(self, ids: list, vectors: np.ndarray) -> None:
        """Scores rows ``ids`` (unit ``vectors``, ``(n, dim)``) against every query, in blocks."""
        floor = np.float32(self.spec.floor)
        id_array = np.empty(len(ids), dtype=object)
        id_array[:] = ids
        for lo in range(0, len(self.queries), _QUERY_BLOCK):
            tile = self.queries[lo : lo + _QUERY_BLOCK] @ vectors.T
            if self.spec.min_similarity is not None:
                self.matches[lo : lo + len(tile)] += (tile >= floor).sum(axis=1)
            self._merge(lo, tile, id_array, floor)

    def _merge(self, lo: int, tile: np.ndarray, id_array: np.ndarray, floor: np.float32) -> None:
        k = self.spec.limit
        heap_sim = self._sim[lo : lo + len(tile)]
        heap_ids = self._ids[lo : lo + len(tile)]
        cut = np.maximum(heap_sim.min(axis=1), floor)
        active = np.flatnonzero((tile >= cut[:, None]).any(axis=1))
        if not active.size:
            return
        sub = tile[active]
        mask = sub >= cut[active, None]
        cand_sim, cand_ids = _candidates(sub, mask, id_array, min(k, sub.shape[1]))
        all_sim = np.concatenate([heap_sim[active], cand_sim], axis=1)
        all_ids = np.concatenate([heap_ids[active], cand_ids], axis=1)
        keep = np.argpartition(-all_sim, k - 1, axis=1)[:, :k]
        new_sim = np.take_along_axis(all_sim, keep, 1)
        kth = new_sim.min(axis=1)
        # Ambiguous: more rows than places at or above the k-th value (a tie straddles it).
        ahead = (sub >= kth[:, None]).sum(axis=1) + (heap_sim[active] >= kth[:, None]).sum(axis=1)
        tied = (ahead > k) & (kth > -np.inf)
        sure = np.flatnonzero(~tied)
        heap_sim[active[sure]] = new_sim[sure]
        heap_ids[active[sure]] = np.take_along_axis(all_ids, keep, 1)[sure]
        for a in np.flatnonzero(tied).tolist():
            q = int(active[a])
            row = sub[a]
            cols = np.flatnonzero(row >= kth[a])
            pool = [(float(row[j]), id_array[j]) for j in cols.tolist()]
            pool += [
                (float(s), i) for s, i in zip(heap_sim[q], heap_ids[q], strict=True) if s >= kth[a]
            ]
            best = sorted(pool, key=order_key)[:k]
            best += [(-np.inf, None)] * (k - len(best))
            heap_sim[q] = [b[0] for b in best]
            heap_ids[q] = [b[1] for b in best]

    def candidates(self) -> Iterator[tuple[int, tuple]]:
        """``(query index, (similarity, id))`` of every kept row."""
        for q, best in enumerate(self.best):
            for candidate in best:
                yield q, candidate


def _candidates(
    sub: np.ndarray, mask: np.ndarray, id_array: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sub``, at most ``width`` of its best entries where ``mask`` holds, as
    ``(similarities, ids)`` arrays of ``width`` columns (``-inf`` / ``None`` where fewer).

    Rows with few candidates (most, once the heaps are full) are gathered from ``np.nonzero``;
    only rows with more than ``width`` pay an ``np.argpartition`` over the whole row.
    """
    rows = len(sub)
    cand_sim = np.full((rows, width), -np.inf, dtype=np.float32)
    cand_ids = np.full((rows, width), None, dtype=object)
    counts = mask.sum(axis=1)
    over = counts > width
    if over.any():
        o = np.flatnonzero(over)
        masked = np.where(mask[o], sub[o], -np.inf)
        picked = np.argpartition(-masked, width - 1, axis=1)[:, :width]
        cand_sim[o] = np.take_along_axis(masked, picked, 1)
        cand_ids[o] = id_array[picked]
        mask = mask & ~over[:, None]
        counts = np.where(over, 0, counts)
    r, c = np.nonzero(mask)
    if r.size:
        pos = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
        cand_sim[r, pos] = sub[r, c]
        cand_ids[r, pos] = id_array[c]
    return cand_sim, cand_ids


class BundleTopK(beam.DoFn):
    """:class:`~clipbeam.transforms.dedup.read.Batch` es -> ``(query index, candidate)``, at most
    ``spec.limit`` per query per bundle; a candidate is ``(similarity, id)``.

    For pipelines that read rows their own way; ``clipbeam search`` itself keeps the candidates
    of each work unit (:class:`~clipbeam.transforms.search_units.SearchUnit`), for ``--resume``.

    Args:
        spec: the job.
        queries: ``(len(spec.queries), dim)`` float32 unit query vectors.
    """

    def __init__(self, spec: SearchSpec, queries: np.ndarray):
        self.spec = spec
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)

    def start_bundle(self) -> None:
        self._heaps = QueryHeaps(self.spec, self.queries)

    def process(self, batch: Any) -> None:
        self._heaps.add(batch.ids, batch.vectors)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for pair in self._heaps.candidates():
            yield WindowedValue(pair, GlobalWindow().max_timestamp(), [GlobalWindow()])
        self._heaps = QueryHeaps(self.spec, self.queries)


def result_schema(spec: SearchSpec, id_field: pa.Field, input_schema: pa.Schema) -> pa.Schema:
    """``query, rank, <id>, similarity`` and the kept columns, typed as in ``input_schema`` (the
    schema of the files they are joined from)."""
    return pa.schema(
        [
            pa.field("query", pa.string()),
            pa.field("rank", pa.int32()),
            id_field,
            pa.field("similarity", pa.float32()),
            # Nullable: an id the joined input does not hold gets nulls there.
            *(input_schema.field(name).with_nullable(True) for name in spec.keep_columns),
        ]
    )


def write_results(
    element: tuple[int, Iterable[tuple]],
    spec: SearchSpec,
    schema: pa.Schema,
    metadata: Mapping[str, str],
) -> Iterator[tuple[int, int]]:
    """One query's results -> ``results/query-NNNNN.parquet``, published whole; yields
    ``(query index, rows)``.

    Args:
        element: ``(query index, candidates)``; a candidate is ``(similarity, id)`` or, with
            kept columns, ``(similarity, id, {column: value})`` (``None`` for an id the joined
            input does not hold).
    """
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
        columns[name] = [None if c[2] is None else c[2][name] for c in ranked]
    table = pa.Table.from_pydict(columns, schema=schema.with_metadata(dict(metadata)))
    path = storage.join(spec.output, RESULTS_DIR, f"query-{index:05d}.parquet")
    with storage.atomic_writer(path) as f:
        pq.write_table(table, f)
    yield index, len(ranked)
