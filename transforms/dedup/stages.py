"""The dedup job's Beam steps after reading: fit, assign, split, group, SemDeDup, write.

::

    units -> ReadUnit -> batches ------------------> Assign -> KeyRows -> (cluster, part), row --+
               |  \\-> sample -> Smallest     -> Fit (one worker) --^  ^          \\-> sha -> GBK |
               |                     \\--------> FitSplits <- counts --+      -> exact notices --+
               \\-> stats                                                CoGroupByKey(cluster) <-+
                                                                            -> DedupGroup -> stats

Fitted centroids reach the workers as side inputs. A cluster group holds only its own rows;
a cluster larger than ``max_cluster_rows`` is split by a second-level k-means fitted on the
sample's rows of that cluster. The fitted model is stored in ``_kmeans.npz`` (and the splits in
``_kmeans_splits.npz``) before any group is written; a resumed run reads them back instead of
fitting again, so that every group of one output comes from one assignment. The group sizes
(``PartSizes``) are counted from the assigned batches, so that ``KeyRows`` keys each row with its
chunk in one pass. A batch is a :class:`~clipbeam.transforms.dedup.read.Batch`, or with
``--shuffle files`` a :class:`~clipbeam.transforms.dedup.file_shuffle.StagedBatch` (its
``load()``): the steps take either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from clipbeam.transforms import storage
from clipbeam.transforms.dedup import kmeans, semdedup, tiles
from clipbeam.transforms.dedup.read import Batch, dedup_id_field
from clipbeam.transforms.dedup.reference import Reference, nearest_reference
from clipbeam.transforms.dedup.sample import Candidates
from clipbeam.transforms.dedup.spec import DedupSpec, DedupStats, eps_column
from clipbeam.transforms.writer import COMPRESSION, ParquetSpool

__all__ = [
    "DUPLICATES_DIR",
    "GROUP_MARKER_DIR",
    "MODEL_FILE",
    "OUTPUT_DIR",
    "SPLITS_FILE",
    "DedupGroup",
    "Fit",
    "FitSplits",
    "assign_batch",
    "cluster_counts",
    "exact_notices",
    "group_name",
    "hash_keys",
    "key_rows",
    "output_schema",
    "part_sizes",
]

_LOGGER = logging.getLogger(__name__)

OUTPUT_DIR = "dedup"
DUPLICATES_DIR = "duplicates"
GROUP_MARKER_DIR = "_groups"
MODEL_FILE = "_kmeans.npz"
SPLITS_FILE = "_kmeans_splits.npz"
METRICS_NAMESPACE = "clipbeam"


def output_schema(spec: DedupSpec, schema: pa.Schema, metadata: dict[str, str]) -> pa.Schema:
    """Schema of ``dedup/`` files."""
    id_field = dedup_id_field(spec, schema)
    fields = [
        id_field,
        pa.field("cluster", pa.int32()),
        pa.field("subcluster", pa.int32()),
        pa.field("centroid_distance", pa.float32()),
        pa.field("max_similarity", pa.float32()),
        pa.field("duplicate_of", id_field.type),
        pa.field("exact_duplicate_of", id_field.type),
        *(pa.field(eps_column(e), pa.bool_()) for e in spec.eps),
    ]
    if spec.against:
        fields += [
            pa.field("max_reference_similarity", pa.float32()),
            pa.field("nearest_reference", pa.string()),
            pa.field("keep_against", pa.bool_()),
        ]
    fields += [schema.field(name) for name in spec.keep_columns]
    return pa.schema(fields, metadata=metadata)


class Fit(beam.DoFn):
    """The whole sample (one element) -> the k-means model, stored or read back (``--resume``)."""

    def __init__(self, spec: DedupSpec):
        self.spec = spec

    def process(self, sample: Candidates) -> Iterator[kmeans.KMeansModel]:
        spec = self.spec
        path = storage.join(spec.output, MODEL_FILE)
        if spec.resume and storage.exists(path):
            model = kmeans.KMeansModel.from_bytes(storage.read_bytes(path))
            _LOGGER.info("--resume: using the k-means model of the earlier run (%s)", path)
            yield model
            return
        if sample:
            model = kmeans.fit(sample.vectors, spec.clusters, seed=spec.seed, niter=spec.niter)
        else:  # every row was an error row: one placeholder centroid, nothing is assigned
            centroid = np.eye(1, spec.dim, dtype=np.float32)
            model = kmeans.KMeansModel(centroid, 0.0, 0.0, 0, spec.clusters)
        if model.k < spec.clusters:
            _LOGGER.warning(
                "dedup: %d clusters asked for, the fit sample holds %d distinct rows: using %d",
                spec.clusters,
                model.sample_rows,
                model.k,
            )
        storage.write_atomic(path, model.to_bytes())
        yield model


class FitSplits(beam.DoFn):
    """Model, sample and cluster sizes -> the model with its oversized clusters split."""

    def __init__(self, spec: DedupSpec):
        self.spec = spec

    def process(
        self, model: kmeans.KMeansModel, sample: Candidates, counts: np.ndarray
    ) -> Iterator[kmeans.KMeansModel]:
        spec = self.spec
        path = storage.join(spec.output, SPLITS_FILE)
        if spec.resume and storage.exists(path):
            model.splits = kmeans.KMeansModel.from_bytes(storage.read_bytes(path)).splits
        else:
            model.splits = kmeans.fit_splits(
                model,
                sample.vectors,
                np.zeros(model.k, np.int64) if counts is None else np.asarray(counts),
                spec.max_cluster_rows,
                seed=spec.seed,
                niter=spec.niter,
            )
            storage.write_atomic(path, model.to_bytes())
        yield model


def assign_batch(item, model: kmeans.KMeansModel, ref: Reference | None = None):
    """Sets each row's nearest centroid and cosine distance to it (and, with a reference set,
    its nearest reference row). ``item``: a :class:`Batch` or a staged one (returned with its
    assignment written beside it)."""
    batch = item.load()
    batch.distance, batch.cluster = kmeans.assign(batch.vectors, model.centroids)
    if ref is not None:
        batch.reference = nearest_reference(batch.vectors, ref)
    return item.with_assignment(batch)


def cluster_counts(batches: beam.PCollection, model) -> beam.PCollection:
    """Rows per cluster over the whole dataset: one ``(k,)`` int64 array."""

    def count(item, m: kmeans.KMeansModel) -> np.ndarray:
        return item.cluster_counts(m.k)

    def total(arrays: Iterable[np.ndarray]) -> np.ndarray | None:
        result = None
        for a in arrays:
            if a is None:
                continue
            result = a.copy() if result is None else result + a
        return result

    return (
        batches
        | "CountBatch" >> beam.Map(count, model)
        | "CountClusters" >> beam.CombineGlobally(total)
    )


def _parts(batch: Batch, model: kmeans.KMeansModel) -> tuple[np.ndarray, np.ndarray]:
    """Each row's part (its second-level centroid in a split cluster, 0 otherwise) and its
    distance to the centroid it is ranked by."""
    part = np.zeros(len(batch.ids), dtype=np.int64)
    distance = batch.distance.copy()
    for c, sub in model.splits.items():
        rows = np.flatnonzero(batch.cluster == c)
        if len(rows):
            distance[rows], part[rows] = kmeans.assign(batch.vectors[rows], sub)
    return part, distance


def part_sizes(item, model: kmeans.KMeansModel) -> Iterator[tuple]:
    """``((cluster, part), rows)`` for every group of an assigned batch."""
    batch = item.load()
    part, _ = _parts(batch, model)
    pairs = np.stack([batch.cluster.astype(np.int64), part], axis=1)
    groups, counts = np.unique(pairs, axis=0, return_counts=True)
    # a tuple key: NumPy's rows come as lists
    yield from (((c, p), n) for (c, p), n in zip(groups.tolist(), counts.tolist(), strict=True))


def key_rows(item, model: kmeans.KMeansModel, sizes: dict, spec: DedupSpec) -> Iterator[tuple]:
    """``((cluster, part, chunk), (id, vector, distance, sha, keep values, reference))`` for
    every row of an assigned batch; ``part`` is the second-level centroid of a split cluster (0
    otherwise), ``chunk`` its share of a part over the bound (:mod:`tiles`; 0 otherwise)."""
    batch = item.load()
    part, distance = _parts(batch, model)
    keep = batch.keep.to_pylist()
    for i, row_id in enumerate(batch.ids):
        key = (int(batch.cluster[i]), int(part[i]))
        ref = None
        if batch.reference is not None:
            ref = (float(batch.reference[0][i]), batch.reference[1][i])
        row = (row_id, batch.vectors[i], float(distance[i]), batch.sha[i], keep[i], ref)
        yield tiles.add_chunk((key, row), sizes, spec)


def hash_keys(keyed: tuple) -> Iterator[tuple]:
    """``(cluster key, row)`` -> ``(sha256, (id, cluster key))``; nothing for a row without
    image bytes."""
    key, row = keyed
    if row[3] is not None:
        yield row[3], (row[0], key)


def exact_notices(group: tuple) -> Iterator[tuple]:
    """One sha256 and its rows (grouped as ``{"rows": [...]}``) -> ``(cluster key, (id, kept
    id))`` for every copy but one.

    The copy kept is the one with the smallest id."""
    _, joined = group
    rows = sorted(joined["rows"], key=lambda r: r[0])
    kept = rows[0][0]
    for row_id, key in rows[1:]:
        yield key, (row_id, kept)


def group_name(key: tuple[int, int, int]) -> str:
    """The output stem of one cluster group: ``cluster-CCCCCC-PPP-KKK`` (cluster, its part
    after a split, the chunk of a tiled part)."""
    return f"cluster-{key[0]:06d}-{key[1]:03d}-{key[2]:03d}"


class DedupGroup(beam.DoFn):
    """One cluster group (its rows and exact-copy notices) -> ``dedup/`` and ``duplicates/``."""

    def __init__(self, spec: DedupSpec, schema: pa.Schema, metadata: dict[str, str]):
        self.spec = spec
        self.schema = output_schema(spec, schema, metadata)
        self.id_type = dedup_id_field(spec, schema).type
        self._groups = Metrics.counter(METRICS_NAMESPACE, "dedup_groups")
        self._rows = Metrics.counter(METRICS_NAMESPACE, "output_rows")

    def process(self, element: tuple, counts: dict) -> Iterator[DedupStats]:
        key, joined = element
        spec = self.spec
        name = group_name(key)
        marker = storage.join(spec.output, GROUP_MARKER_DIR, f"{name}.json")
        if spec.resume and storage.exists(marker):
            stats = DedupStats.from_json(storage.read_bytes(marker).decode("utf-8"))
            yield stats + DedupStats(resumed_groups=1)
            return
        rows = list(joined["rows"])
        exact = dict(joined["exact"])
        chunks = tiles.chunk_count(counts[key[:2]], spec.max_cluster_rows)
        partials = tiles.merge_partials(list(joined["partials"])) if chunks > 1 else None
        table, removed_ids, stats = self._dedup(key, rows, exact, partials)
        if chunks > 1 and key[2] == 0:
            stats += DedupStats(groups_over_bound=1)
        out = storage.join(spec.output, OUTPUT_DIR, f"{name}.parquet")
        dup_path = storage.join(spec.output, DUPLICATES_DIR, f"{name}.parquet")
        with ParquetSpool(out, self.schema) as spool:
            spool.write(table)
            spool.commit()
        if len(removed_ids):
            with ParquetSpool(dup_path, duplicates_schema(self.id_type)) as spool:
                spool.write(pa.table({"id": removed_ids}, schema=spool.schema))
                spool.commit()
        else:
            storage.delete(dup_path, missing_ok=True)
        # Written last: a marker promises that the group's files are in place.
        storage.write_atomic(marker, stats.to_json().encode("utf-8"))
        self._groups.inc()
        self._rows.inc(stats.output_rows)
        yield stats

    def _dedup(
        self, key: tuple, rows: list, exact: dict, partials: dict | None
    ) -> tuple[pa.Table, pa.Array, DedupStats]:
        spec = self.spec
        copies = [r for r in rows if r[0] in exact]
        rest = [r for r in rows if r[0] not in exact]
        order = semdedup.rank(np.array([r[2] for r in rest]), [r[0] for r in rest])
        rest = [rest[i] for i in order]
        if partials is not None:  # a tiled group: the maxima over every tile of each row
            found = [partials.get(r[0]) for r in rest]
            similarity = np.array([-np.inf if f is None else f[0] for f in found], np.float32)
            earlier_ids = [None if f is None else f[1] for f in found]
        elif rest:
            similarity, earlier = semdedup.max_similarity(
                np.stack([r[1] for r in rest]), spec.block_rows
            )
            earlier_ids = [rest[j][0] if j >= 0 else None for j in earlier]
        else:
            similarity, earlier_ids = np.zeros(0, np.float32), []
        masks = semdedup.keep_masks(similarity, spec.eps)
        has_earlier = np.array([e is not None for e in earlier_ids], dtype=bool)
        n, m = len(rest), len(copies)
        ordered = rest + copies
        columns = {
            "id": pa.array([r[0] for r in ordered], type=self.id_type),
            "cluster": pa.array([key[0]] * (n + m), type=pa.int32()),
            "subcluster": pa.array([key[1]] * (n + m), type=pa.int32()),
            "centroid_distance": pa.array([r[2] for r in ordered], type=pa.float32()),
            "max_similarity": pa.array(
                [float(v) if e else None for v, e in zip(similarity, has_earlier, strict=True)]
                + [None] * m,
                type=pa.float32(),
            ),
            "duplicate_of": pa.array(earlier_ids + [None] * m, type=self.id_type),
            "exact_duplicate_of": pa.array(
                [None] * n + [exact[r[0]] for r in copies], type=self.id_type
            ),
        }
        for e, mask in zip(spec.eps, masks, strict=True):
            columns[eps_column(e)] = pa.array([*mask.tolist(), *([False] * m)], type=pa.bool_())
        against = np.ones(n + m, dtype=bool)
        if spec.against:
            refs = [r[5] for r in ordered]
            similar = np.array([-np.inf if f[1] is None else f[0] for f in refs], np.float32)
            against = ~(similar >= 1.0 - spec.against_eps)
            columns["max_reference_similarity"] = pa.array(
                [None if f[1] is None else f[0] for f in refs], type=pa.float32()
            )
            columns["nearest_reference"] = pa.array([f[1] for f in refs], type=pa.string())
            columns["keep_against"] = pa.array(against, type=pa.bool_())
        for name in spec.keep_columns:
            column_type = self.schema.field(name).type
            columns[name] = pa.array([r[4][name] for r in ordered], type=column_type)
        arrays = list(columns.values())
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        # duplicates/: removed at the first eps, or near a reference row
        first = np.concatenate([masks[0], np.zeros(m, dtype=bool)]) & against
        removed_ids = pa.array(
            [r[0] for r, kept in zip(ordered, first, strict=True) if not kept], type=self.id_type
        )
        stats = DedupStats(
            output_rows=n + m,
            exact_duplicates=m,
            removed=tuple(int((~mask).sum()) + m for mask in masks),
            groups=1,
            largest_group=n + m,
            against_removed=int((~against).sum()),
        )
        return table, removed_ids, stats


def duplicates_schema(id_type: pa.DataType) -> pa.Schema:
    """Schema of ``duplicates/`` files: one ``id`` column, as NeMo Curator writes them."""
    return pa.schema([pa.field("id", id_type)])


def settle_duplicates(spec: DedupSpec, id_type: pa.DataType, removed: int) -> None:
    """Leaves an empty ``duplicates/empty.parquet`` when nothing was removed, so the folder
    always reads as a table; deletes it otherwise."""
    import pyarrow.parquet as pq

    path = storage.join(spec.output, DUPLICATES_DIR, "empty.parquet")
    if removed:
        storage.delete(path, missing_ok=True)
        return
    with storage.atomic_writer(path) as f:
        pq.write_table(duplicates_schema(id_type).empty_table(), f, compression=COMPRESSION)
