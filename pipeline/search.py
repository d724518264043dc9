"""``clipbeam search``: the rows that best match text or image queries, over the whole dataset.

The queries are embedded once, on the launcher (:mod:`.search_queries`): texts with the model's
text tower (``--template`` as classify has it; default ``{}``, the query as written), images with
its image tower. Rows are read as ``clipbeam dedup`` reads them (any Parquet with an id and an
embedding column; ``--against-column text_embedding`` searches caption embeddings)::

    units -> SearchUnit (ReadUnit, queries x batch, per-query heaps; staged + marker per unit)
          -> Top.SmallestPerKey(limit) by (-similarity, id)
          -> [--keep-columns: CoGroupByKey on the id with ReadKept over --keep-from / --input]
          -> results/query-NNNNN.parquet -> summary.json

``--top-k K`` keeps the K best rows per query; ``--min-similarity S`` every row at or above S, at
most ``--max-results-per-query`` (1000) per query, the best ones, and ``summary.json`` names the
queries that reached the cap; both together: the K best rows at or above S. Ties of similarity go
to the smaller id. Output: ``results/`` (``query, rank, <id>, similarity`` and ``--keep-columns``),
``errors/`` (rows without a usable embedding, query images that do not decode), ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from clipbeam.pipeline.dedup import _iso
from clipbeam.pipeline.dedup_launch import check_earlier_run
from clipbeam.pipeline.dedup_launch import check_schema as _check_schema
from clipbeam.pipeline.options import LaunchError
from clipbeam.pipeline.search_options import build_parser, make_spec, parse, parse_values
from clipbeam.pipeline.search_queries import (
    QUERY_ERRORS_FILE,
    QueryImage,
    embed_images,
    embed_texts,
    query_error_table,
)
from clipbeam.pipeline.validate import JOB_FILE, plan
from clipbeam.transforms import storage
from clipbeam.transforms.dedup.read import STATS_TAG, dedup_id_field, error_schema
from clipbeam.transforms.dedup.spec import DedupSpec, DedupStats
from clipbeam.transforms.search import (
    RESULTS_DIR,
    SearchSpec,
    order_key,
    result_schema,
    write_results,
)
from clipbeam.transforms.search_units import (
    CANDIDATES_TAG,
    MARKER_DIR,
    MATCHES_TAG,
    RESUMED_TAG,
    JoinKept,
    SearchUnit,
    tagged_values,
)
from clipbeam.transforms.units import WorkUnit

__all__ = [
    "build_parser",
    "build_search",
    "main",
    "make_spec",
    "parse",
    "parse_values",
    "run",
    "validate_search",
]


def reader_spec(spec: SearchSpec) -> DedupSpec:
    """The dedup spec its reader reads with: same columns, no kept columns (they are joined to
    the results afterwards), a fit sample of one row per unit (unused); with raw images, the
    model that embeds them."""
    return DedupSpec(
        output=spec.output,
        embedding_column=spec.embedding_column,
        dim=spec.dim,
        id_column=spec.id_column,
        fit_rows=1,
        image_column=spec.image_column,
        model=spec.model if spec.image_column is not None else None,
        device=spec.device,
        dtype=spec.dtype,
        batch_size=spec.batch_size,
    )


# Spec fields a resumed run may change: they do not change any output row.
_RESUMABLE = frozenset({"resume", "options"})


def _check_output(spec: SearchSpec, inputs: Sequence[str]) -> dict[str, Any]:
    """Refuses an --output of an earlier run without --resume, and one of another job with it."""
    record = json.loads(spec.to_json())
    record["inputs"] = list(inputs)
    found = []
    if not spec.resume:
        found = [
            d
            for d in (RESULTS_DIR, "errors", MARKER_DIR)
            if storage.list_files(storage.join(spec.output, d))
        ]
        found += [n for n in (JOB_FILE, "summary.json") if storage.exists(spec.output + "/" + n)]
    check_earlier_run(spec.output, spec.resume, record, found, _RESUMABLE)
    return record


def _schemas(
    spec: SearchSpec, units: Sequence[WorkUnit], check: Any
) -> tuple[dict[str, pa.Schema], dict[str, Any]]:
    import pyarrow.parquet as pq

    schemas: dict[str, pa.Schema] = {}
    found: dict[str, Any] = {}
    for unit in units:
        if unit.path in schemas:
            continue
        with storage.open_input(unit.path) as f:
            schemas[unit.path] = pq.ParquetFile(f).schema_arrow
        found[unit.path] = check(schemas[unit.path], unit)
    return schemas, found


def _check_kept(spec: SearchSpec, schema: pa.Schema, path: str) -> None:
    wanted = [c for c in (spec.id_column, *spec.keep_columns) if c is not None]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise LaunchError(
            f"{path} has no column {', '.join(map(repr, missing))} for --keep-columns (columns: "
            f"{', '.join(schema.names[:12])}); pass --keep-from the Parquet that holds them"
        )


def validate_search(
    spec: SearchSpec, inputs: Sequence[str], images: Sequence[QueryImage] = ()
) -> tuple[SearchSpec, list[WorkUnit], pa.Schema, np.ndarray, list[WorkUnit], pa.Schema]:
    """Launch checks: inputs, columns and dimension of every file, the kept columns, the model's
    query dimension, the output folder; embeds the queries and records the job.

    Returns:
        ``(spec with dim and the decoded queries, units, first file's schema, query vectors,
        units the kept columns are joined from, their first file's schema)``.
    """
    units = plan(inputs)
    queries = failures = None
    if spec.image_column is not None:  # raw images: the model gives the dimension
        spec, queries, failures = _embed_queries(spec, images)
        spec = dataclasses.replace(spec, dim=queries.shape[1])
    reading = reader_spec(spec)
    schemas, dims = _schemas(spec, units, lambda s, u: _check_schema(reading, s, u.path, u))
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{p}: {d}" for p, d in list(dims.items())[:4])
        raise LaunchError(f"the input files hold embeddings of different dimensions ({shown})")
    spec = dataclasses.replace(spec, dim=next(iter(dims.values())))
    schema = schemas[units[0].path]
    keep_units, keep_schema = units, schema
    if spec.keep_columns and spec.keep_from and spec.id_column is None:
        raise LaunchError(
            "--keep-from joins by --id-column; with --id-column none the ids are "
            "'<file>:<row>' of the --input files, which another dataset does not share"
        )
    if spec.keep_columns:
        if spec.keep_from:
            keep_units = plan(spec.keep_from)
        kept, _ = _schemas(spec, keep_units, lambda s, u: _check_kept(spec, s, u.path))
        keep_schema = kept[keep_units[0].path]
    if queries is None:
        spec, queries, failures = _embed_queries(spec, images)
    tower = "images" if spec.query_kind == "image" else "text"
    if queries.shape[1] != spec.dim:
        raise LaunchError(
            f"--model {spec.model} embeds {tower} in dimension {queries.shape[1]}, the --input "
            f"embeddings have dimension {spec.dim}: both must come from one model"
        )
    record = _check_output(spec, inputs)
    try:
        storage.check_writable(spec.output)
    except OSError as exc:
        raise LaunchError(f"--output {spec.output} is not writable: {exc}") from None
    if failures:
        import pyarrow.parquet as pq

        table = query_error_table(failures, error_schema(reading, schema))
        with storage.atomic_writer(storage.join(spec.output, "errors", QUERY_ERRORS_FILE)) as f:
            pq.write_table(table, f)
    storage.write_atomic(
        storage.join(spec.output, JOB_FILE),
        (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    return spec, units, schema, queries, keep_units, keep_schema


def _embed_queries(
    spec: SearchSpec, images: Sequence[QueryImage]
) -> tuple[SearchSpec, np.ndarray, list]:
    """The query vectors (and, for image queries, the spec's labels of those that decoded and
    the failures)."""
    if spec.query_kind == "image":
        labels, queries, failures = embed_images(spec.model, images)
        return dataclasses.replace(spec, queries=tuple(labels)), queries, failures
    return spec, embed_texts(spec.model, spec.queries, spec.templates), []


def _metadata(spec: SearchSpec) -> dict[str, str]:
    from clipbeam.transforms.encoder import clipbeam_version

    return {
        "clipbeam.kind": "search",
        "clipbeam.job": spec.to_json(),
        "clipbeam.version": clipbeam_version(),
    }


class _WriteSummary(beam.DoFn):
    def __init__(self, spec: SearchSpec, schema: pa.Schema, inputs: Sequence[str], started: float):
        self.spec, self.schema, self.inputs, self.started = spec, schema, list(inputs), started

    def process(
        self, stats: DedupStats, counts: dict[int, int], matches: dict[int, int], resumed: int
    ) -> Any:
        import pyarrow.parquet as pq

        from clipbeam.transforms.process import EMPTY_ERRORS_FILE
        from clipbeam.transforms.redact import redact

        spec = self.spec
        errors_path = storage.join(spec.output, "errors", EMPTY_ERRORS_FILE)
        query_errors = 0
        path = storage.join(spec.output, "errors", QUERY_ERRORS_FILE)
        if storage.exists(path):
            with storage.open_input(path) as f:
                query_errors = pq.ParquetFile(f).metadata.num_rows
        if not stats.error_rows and not query_errors:
            with storage.atomic_writer(errors_path) as f:
                pq.write_table(error_schema(reader_spec(spec), self.schema).empty_table(), f)
        finished = time.time()
        summary = {
            "job": "search",
            "query_kind": spec.query_kind,
            "queries": len(spec.queries),
            "query_errors": query_errors,
            "top_k": spec.top_k,
            "min_similarity": spec.min_similarity,
            "input_rows": stats.input_rows,
            "rows_searched": stats.input_rows - stats.error_rows,
            "error_rows": stats.error_rows,
            "renormalized_rows": stats.renormalized_rows,
            "result_rows": sum(counts.values()),
            "results_per_query": {q: counts.get(i, 0) for i, q in enumerate(spec.queries)},
            "ties": "equal similarities are ranked by id, smaller first",
            "units": stats.units,
            "resumed_units": resumed,
            "timings": {
                "started_at": _iso(self.started),
                "finished_at": _iso(finished),
                "seconds": round(finished - self.started, 3),
            },
            "inputs": [redact(i) for i in self.inputs],
            "output": redact(spec.output),
            "options": dict(spec.options),
        }
        if spec.min_similarity is not None:
            summary["matches_per_query"] = {
                q: matches.get(i, 0) for i, q in enumerate(spec.queries)
            }
            if spec.top_k is None:
                summary["max_results_per_query"] = spec.max_results_per_query
                summary["capped_queries"] = [
                    q
                    for i, q in enumerate(spec.queries)
                    if matches.get(i, 0) > spec.max_results_per_query
                ]
        path = storage.join(spec.output, "summary.json")
        storage.write_atomic(path, (json.dumps(summary, indent=2, default=str) + "\n").encode())
        yield path


def build_search(
    pipeline: beam.Pipeline,
    spec: SearchSpec,
    units: Sequence[WorkUnit],
    schema: pa.Schema,
    queries: np.ndarray,
    inputs: Sequence[str],
    *,
    started_at: float,
    keep_units: Sequence[WorkUnit] = (),
    keep_schema: pa.Schema | None = None,
) -> beam.PCollection:
    """Adds the search job to ``pipeline``; returns the one-element PCollection of the summary's
    path, written when every query's results are."""
    reading = reader_spec(spec)
    # One output of (tag, value) pairs split by FlatMaps, not ParDo.with_outputs (DaskRunner).
    tagged = (
        pipeline
        | "PlanUnits" >> beam.Create(list(units), reshuffle=False)
        | "SpreadUnits" >> beam.Reshuffle()
        | "Search" >> beam.ParDo(SearchUnit(spec, reading, schema, queries))
    )
    split = {
        tag: tagged | f"Split{tag.title()}" >> beam.FlatMap(tagged_values, tag)
        for tag in (CANDIDATES_TAG, MATCHES_TAG, STATS_TAG, RESUMED_TAG)
    }
    keep_schema = keep_schema or schema
    out_schema = result_schema(spec, dedup_id_field(reading, schema), keep_schema)
    ranked = split[CANDIDATES_TAG] | "TopPerQuery" >> beam.combiners.Top.SmallestPerKey(
        spec.limit, key=order_key
    )
    if spec.keep_columns:
        ranked = ranked | "KeepColumns" >> JoinKept(spec, keep_units or units)
    counts = ranked | "WriteResults" >> beam.FlatMap(
        write_results, spec, out_schema, _metadata(spec)
    )
    matches = split[MATCHES_TAG] | "SumMatches" >> beam.CombinePerKey(sum)
    resumed = split[RESUMED_TAG] | "Resumed" >> beam.CombineGlobally(sum)
    stats = split[STATS_TAG] | "Sum" >> beam.CombineGlobally(lambda s: sum(s, DedupStats()))
    return stats | "Summary" >> beam.ParDo(
        _WriteSummary(spec, schema, inputs, started_at),
        beam.pvalue.AsDict(counts),
        beam.pvalue.AsDict(matches),
        beam.pvalue.AsSingleton(resumed),
    )


def run(argv: Sequence[str], test_pipeline: beam.Pipeline | None = None, *, wait: bool = True):
    """Runs ``clipbeam search`` (``argv`` without the subcommand); returns the pipeline result
    (without waiting for it with ``wait=False``: a Flex Template launch only stages the job)."""
    import logging

    from apache_beam.options.pipeline_options import PipelineOptions

    started_at = time.time()
    spec, inputs, beam_args, images = parse(argv)
    spec, units, schema, queries, keep_units, keep_schema = validate_search(spec, inputs, images)
    logging.getLogger("clipbeam").info(
        "search: %d %s queries over %d rows in %d work units, dimension %d -> %s",
        len(spec.queries),
        spec.query_kind,
        sum(u.num_rows for u in units),
        len(units),
        spec.dim,
        spec.output,
    )
    pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(beam_args))
    build_search(
        pipeline,
        spec,
        units,
        schema,
        queries,
        inputs,
        started_at=started_at,
        keep_units=keep_units,
        keep_schema=keep_schema,
    )
    result = pipeline.run()
    if wait:
        result.wait_until_finish()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``clipbeam search ...``: 0 on success, 2 for a launch error (one line)."""
    try:
        run(sys.argv[2:] if argv is None else list(argv))
    except LaunchError as exc:
        print(f"clipbeam: error: {exc}", file=sys.stderr)
        return 2
    return 0
