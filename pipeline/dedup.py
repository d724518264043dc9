"""``clipbeam dedup``: exact and semantic (SemDeDup) deduplication of embeddings, on Beam.

SemDeDup as NeMo Curator implements it: k-means (``--clusters``, faiss, spherical) fitted on a
sample of at most ``--fit-rows`` rows drawn across all units; every row assigned to its nearest
centroid; inside each cluster rows ranked by cosine distance to the centroid, farthest first;
a row's ``max_similarity`` is its largest cosine to an earlier-ranked row of its cluster, and it
is a duplicate at ``eps`` when ``max_similarity >= 1 - eps``. Rows with byte-identical images
(``--image-column``, sha256) are grouped first: the one with the smallest id is kept.

::

    units -> ReadUnit -> sample -> Smallest -> Fit (one worker) -> centroids (side input)
                 \\-> batches -> Assign -> split (second-level k-means) -> GroupByKey(cluster)
                                        -> blocked pairwise -> dedup/, duplicates/ -> summary.json

Grouping (``--shuffle``): on Dataflow and Dask the runner's shuffle; on the DirectRunner, whose
every step boundary is held in its own memory, the batches and the grouped rows go through files
under ``OUTPUT/_staging/`` (:mod:`clipbeam.transforms.dedup.file_shuffle`), so that memory stays
flat with the rows; the result is the same either way.

Output: ``dedup/`` (one row per input row), ``duplicates/`` (the ids removed at the first
``--eps``), ``errors/`` (rows without a usable embedding), ``summary.json``.

Bounds: a group's rows are held by one worker, its similarities computed in ``--block-rows``
tiles. A cluster over ``--max-cluster-rows`` is split by a second-level k-means, which divides
ordinary large clusters but not a cluster of near copies of one image; a part still over the
bound is dealt into chunks whose pairs are tiles on workers of their own
(:mod:`clipbeam.transforms.dedup.tiles`), counted in ``groups_over_bound``. ``--against``: the
reference set (embeddings, or images embedded with ``--model``) is a side input
(:mod:`clipbeam.transforms.dedup.reference`). ``--model``: the
input is raw images, embedded in the reading step (:mod:`clipbeam.transforms.dedup.embed`).
Arguments and launch checks: :mod:`clipbeam.pipeline.dedup_launch`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa

from clipbeam.pipeline.dedup_launch import build_parser, parse, validate_dedup
from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms import storage
from clipbeam.transforms.dedup import file_shuffle, stages, tiles
from clipbeam.transforms.dedup.read import (
    BATCHES_TAG,
    SAMPLE_TAG,
    STATS_TAG,
    ReadUnits,
    error_schema,
)
from clipbeam.transforms.dedup.reference import CombineReference, ReadReference
from clipbeam.transforms.dedup.sample import SmallestCandidates
from clipbeam.transforms.dedup.spec import DedupSpec, DedupStats, eps_column
from clipbeam.transforms.units import WorkUnit

__all__ = ["build_dedup", "build_parser", "main", "parse", "run", "validate_dedup"]

_log = logging.getLogger("clipbeam")


def _metadata(spec: DedupSpec) -> dict[str, str]:
    from clipbeam.transforms.encoder import clipbeam_version

    return {
        "clipbeam.kind": "dedup",
        "clipbeam.job": spec.to_json(),
        "clipbeam.options": json.dumps(dict(spec.options), sort_keys=True, default=str),
        "clipbeam.version": clipbeam_version(),
    }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


class _WriteSummary(beam.DoFn):
    def __init__(self, spec: DedupSpec, schema: pa.Schema, inputs: Sequence[str], started: float):
        self.spec, self.schema, self.inputs, self.started = spec, schema, list(inputs), started

    def process(self, stats: DedupStats, model, counts, reference=None) -> Any:
        from clipbeam.transforms.process import EMPTY_ERRORS_FILE
        from clipbeam.transforms.redact import redact

        spec = self.spec
        errors_path = storage.join(spec.output, "errors", EMPTY_ERRORS_FILE)
        if stats.error_rows:
            storage.delete(errors_path, missing_ok=True)
        else:
            import pyarrow.parquet as pq

            with storage.atomic_writer(errors_path) as f:
                pq.write_table(error_schema(spec, self.schema).empty_table(), f)
        id_type = error_schema(spec, self.schema).field(0).type
        removed = stats.removed or (0,) * len(spec.eps)
        stages.settle_duplicates(spec, id_type, removed[0] + stats.against_removed)
        finished = time.time()
        summary = {
            "job": "dedup",
            "input_rows": stats.input_rows,
            "output_rows": stats.output_rows,
            "error_rows": stats.error_rows,
            "renormalized_rows": stats.renormalized_rows,
            "exact_duplicates": stats.exact_duplicates,
            "against_removed": stats.against_removed,
            "eps": {
                eps_column(e).removeprefix("keep_eps_"): {
                    "kept": stats.output_rows - r,
                    "removed": r,
                }
                for e, r in zip(spec.eps, removed, strict=True)
            },
            "clusters": model.k,
            "clusters_requested": spec.clusters,
            "largest_cluster": int(counts.max()) if counts is not None else 0,
            "clusters_split": len(model.splits),
            "split_clusters": {str(c): len(sub) for c, sub in sorted(model.splits.items())},
            "cluster_groups": stats.groups,
            "resumed_groups": stats.resumed_groups,
            "largest_group": stats.largest_group,
            "groups_over_bound": stats.groups_over_bound,
            "kmeans": {
                "inertia": model.inertia,
                "fit_seconds": round(model.fit_seconds, 3),
                "sample_rows": model.sample_rows,
                "implementation": "faiss spherical k-means",
            },
            "units": stats.units,
            "shuffle": spec.shuffle,
            "timings": {
                "started_at": _iso(self.started),
                "finished_at": _iso(finished),
                "seconds": round(finished - self.started, 3),
            },
            "inputs": [redact(i) for i in self.inputs],
            "output": redact(spec.output),
            "options": dict(spec.options),
        }
        if spec.model is not None:  # raw images, embedded by this model
            summary["model"] = redact(spec.model)
        if reference is not None:  # (rows used, rows skipped: no usable embedding or image)
            summary["reference"] = {"rows": reference[0], "skipped_rows": reference[1]}
        path = storage.join(spec.output, "summary.json")
        storage.write_atomic(path, (json.dumps(summary, indent=2, default=str) + "\n").encode())
        if spec.shuffle == "files":  # every group is written: nothing reads the rows again
            storage.delete_folder(spec.staging_dir)
        yield path


def _sum(stats) -> DedupStats:
    return sum(stats, DedupStats())


def _co_group(
    spec: DedupSpec, label: str, inputs: dict, buckets: int | None = None
) -> beam.PCollection:
    """``beam.CoGroupByKey`` of ``inputs``, or its file-backed equal with ``--shuffle files``
    (``buckets``: see :class:`~clipbeam.transforms.dedup.file_shuffle.CoGroupByKeyInFiles`)."""
    if spec.shuffle != "files":
        return inputs | label >> beam.CoGroupByKey()
    folder = storage.join(spec.staging_dir, label)
    return inputs | label >> file_shuffle.CoGroupByKeyInFiles(folder, buckets)


def build_dedup(
    pipeline: beam.Pipeline,
    spec: DedupSpec,
    units: Sequence[WorkUnit],
    schema: pa.Schema,
    inputs: Sequence[str],
    *,
    started_at: float,
    against_units: Sequence[WorkUnit] = (),
) -> beam.PCollection:
    """Adds the dedup job to ``pipeline``; returns the one-element PCollection of the summary's
    path, written when every group is done."""
    read = (
        pipeline
        | "PlanUnits" >> beam.Create(list(units), reshuffle=False)
        | "SpreadUnits" >> beam.Reshuffle()
        | "Read" >> ReadUnits(spec, schema)
    )
    sample = read[SAMPLE_TAG] | "Sample" >> beam.CombineGlobally(
        SmallestCandidates(spec.fit_rows, spec.dim)
    )
    model = sample | "Fit" >> beam.ParDo(stages.Fit(spec))
    sides = [beam.pvalue.AsSingleton(model)]
    if spec.against:
        reference = (
            pipeline
            | "PlanReference" >> beam.Create(list(against_units), reshuffle=False)
            | "SpreadReference" >> beam.Reshuffle()
            | "ReadReference" >> beam.ParDo(ReadReference(spec))
            | "WholeReference" >> beam.CombineGlobally(CombineReference())
        )
        sides.append(beam.pvalue.AsSingleton(reference))
        reference_counts = [
            beam.pvalue.AsSingleton(
                reference | "ReferenceRows" >> beam.Map(lambda r: (len(r.ids), r.skipped))
            )
        ]
    else:
        reference_counts = []
    batches = read[BATCHES_TAG]
    if spec.shuffle == "files":  # the runner holds file names, not rows
        staged = storage.join(spec.staging_dir, "batches")
        batches = batches | "StageBatches" >> beam.Map(file_shuffle.stage_batch, staged)
    assigned = batches | "Assign" >> beam.Map(stages.assign_batch, *sides)
    counts = stages.cluster_counts(assigned, beam.pvalue.AsSingleton(model))
    final = model | "FitSplits" >> beam.ParDo(
        stages.FitSplits(spec), beam.pvalue.AsSingleton(sample), beam.pvalue.AsSingleton(counts)
    )
    sizes = beam.pvalue.AsDict(
        assigned
        | "PartSizes" >> beam.FlatMap(stages.part_sizes, beam.pvalue.AsSingleton(final))
        | "GroupSizes" >> beam.CombinePerKey(sum)
    )
    rows = assigned | "KeyRows" >> beam.FlatMap(
        stages.key_rows, beam.pvalue.AsSingleton(final), sizes, spec
    )
    notices = _co_group(
        spec,
        "ByHash",
        {"rows": rows | "Hashes" >> beam.FlatMap(stages.hash_keys)},
        # many small keys: hashed into buckets of about 100,000 rows
        buckets=max(1, sum(u.num_rows for u in units) // 100_000),
    ) | "ExactCopies" >> beam.FlatMap(stages.exact_notices)
    # Groups over the bound: every pair of their chunks is a tile of its own.
    partials = _co_group(
        spec,
        "ByTile",
        {
            "rows": rows | "RowTiles" >> beam.FlatMap(tiles.to_tiles, sizes, spec),
            "exact": notices | "CopyTiles" >> beam.FlatMap(tiles.to_tiles, sizes, spec),
        },
    ) | "Tiles" >> beam.ParDo(tiles.Tile(spec))
    groups = _co_group(
        spec, "ByCluster", {"rows": rows, "exact": notices, "partials": partials}
    ) | "SemDeDup" >> beam.ParDo(stages.DedupGroup(spec, schema, _metadata(spec)), sizes)
    stats = (read[STATS_TAG], groups) | "AllStats" >> beam.Flatten()
    total = stats | "Sum" >> beam.CombineGlobally(_sum)
    return total | "Summary" >> beam.ParDo(
        _WriteSummary(spec, schema, inputs, started_at),
        beam.pvalue.AsSingleton(final),
        beam.pvalue.AsSingleton(counts),
        *reference_counts,
    )


def run(argv: Sequence[str], test_pipeline: beam.Pipeline | None = None, *, wait: bool = True):
    """Runs ``clipbeam dedup`` (``argv`` without the subcommand); returns the pipeline result.

    Args:
        argv: the command line after ``clipbeam dedup``.
        test_pipeline: a pipeline to build the job on instead of one made from ``argv``.
        wait: wait for the job to finish (a Dataflow template launcher submits and returns).
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from clipbeam.pipeline.validate import LOCAL_RUNNERS, check_remote, is_dataflow, runner_class

    started_at = time.time()
    spec, inputs, beam_args = parse(argv)
    options = test_pipeline.options if test_pipeline is not None else PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if is_dataflow(runner if isinstance(runner, str) else None):
        check_remote(spec, inputs)  # every worker is another machine: no launcher-local paths
    spec, units, schema, against_units = validate_dedup(spec, inputs)
    if spec.shuffle == "auto":
        name = runner if isinstance(runner, str | None) else type(runner).__name__
        # a local runner holds its shuffle (and every step boundary) in its own memory
        shuffle = "files" if runner_class(name) in LOCAL_RUNNERS else "runner"
        spec = dataclasses.replace(spec, shuffle=shuffle)
    if spec.shuffle == "files":  # what a killed run left there
        storage.delete_folder(spec.staging_dir)
    _log.info(
        "dedup: %d rows in %d work units, dimension %d -> %s",
        sum(u.num_rows for u in units),
        len(units),
        spec.dim,
        spec.output,
    )
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_dedup(
        pipeline, spec, units, schema, inputs, started_at=started_at, against_units=against_units
    )
    result = pipeline.run()
    if wait:
        result.wait_until_finish()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``clipbeam dedup ...``: 0 on success, 2 for a launch error (one line)."""
    try:
        run(sys.argv[2:] if argv is None else list(argv))
    except LaunchError as exc:
        print(f"clipbeam: error: {exc}", file=sys.stderr)
        return 2
    return 0
