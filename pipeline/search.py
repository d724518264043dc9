"""``clipbeam search``: the rows that best match text queries, over the whole dataset, in one pass.

The queries are embedded once, on the launcher, with the model's text tower (``--template`` as
classify has it; the default template is the query itself, ``{}``). Rows are read as ``clipbeam
dedup`` reads them (any Parquet with an id and an embedding column)::

    units -> ReadUnit -> batches -> BundleTopK (queries x batch, top-k per query per bundle)
          -> Top.SmallestPerKey(K) by (-similarity, id) -> results/query-NNNNN.parquet
          -> summary.json

Output: ``results/`` (``query, rank, <id>, similarity`` and ``--keep-columns``, carried with the
candidates from the rows they were read from), ``errors/`` (rows without a usable embedding),
``summary.json`` (queries, rows searched, per-query result counts). Ties of similarity go to
the smaller id. Still to come: ``--min-similarity``, image queries, raw images, the report view.
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

from clipbeam.pipeline.beam_options import resolve_beam_args
from clipbeam.pipeline.dedup import _iso
from clipbeam.pipeline.dedup_launch import check_schema as _check_schema
from clipbeam.pipeline.dedup_launch import refuse_dask
from clipbeam.pipeline.options import (
    LaunchError,
    _add,
    _column,
    _HelpFormatter,
    _names,
    _number,
    _Parser,
)
from clipbeam.pipeline.validate import JOB_FILE, plan
from clipbeam.transforms import storage
from clipbeam.transforms.dedup.read import (
    BATCHES_TAG,
    STATS_TAG,
    ReadUnits,
    dedup_id_field,
    error_schema,
)
from clipbeam.transforms.dedup.spec import DedupSpec, DedupStats
from clipbeam.transforms.search import (
    RESULTS_DIR,
    BundleTopK,
    SearchSpec,
    order_key,
    result_schema,
    write_results,
)
from clipbeam.transforms.units import WorkUnit

__all__ = ["build_parser", "build_search", "main", "parse", "run", "validate_search"]


def build_parser(prog: str = "clipbeam search") -> _Parser:
    """The ``clipbeam search`` argument parser (unknown options are Beam's)."""
    parser = _Parser(
        prog=prog,
        description="the rows that best match text queries -> OUTPUT/results/. Options are "
        "also accepted with underscores.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    io = parser.add_argument_group("input and output")
    _add(
        io,
        "input",
        action="extend",
        nargs="+",
        required=True,
        metavar="PATTERN",
        help="Parquet with an id and an embedding column (clipbeam embed's embeddings/)",
    )
    _add(io, "output", required=True, metavar="DIR", help="output folder, local or gs://")
    _add(
        io,
        "model",
        required=True,
        metavar="SOURCE",
        help="the checkpoint that made the embeddings; its text tower embeds the queries",
    )
    columns = parser.add_argument_group("columns")
    _add(
        columns,
        "embedding-column",
        default="image_embedding",
        metavar="NAME",
        help="fixed_size_list or list of float32/float16, one embedding per row",
    )
    _add(
        columns,
        "id-column",
        type=_column,
        default="id",
        metavar="NAME",
        help="column identifying rows; 'none' writes '<file>:<row>' ids",
    )
    _add(
        columns,
        "keep-columns",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="input columns copied next to each result",
    )
    queries = parser.add_argument_group("queries")
    _add(
        queries,
        "queries",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="text queries, comma-separated",
    )
    _add(
        queries,
        "queries-file",
        metavar="FILE",
        help="a UTF-8 text file (local or gs://) with one query per line",
    )
    _add(
        queries,
        "template",
        action="append",
        default=None,
        metavar="TEMPLATE",
        help="prompt template with one {} for the query; repeat to average several "
        "(default: '{}', the query as written)",
    )
    _add(
        queries,
        "top-k",
        type=_number(int, 1),
        default=10,
        metavar="K",
        help="rows kept per query; equal similarities go to the smaller id",
    )
    return parser


def _read_queries(path: str) -> list[str]:
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise LaunchError(f"--queries-file {path} does not exist") from None
    except OSError as exc:
        raise LaunchError(f"cannot read --queries-file {path}: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LaunchError(
            f"--queries-file {path} is not UTF-8 text ({exc.reason} at byte {exc.start} of "
            f"{len(data)})"
        ) from None
    if "\x00" in text:
        raise LaunchError(
            f"--queries-file {path} is not text: it holds NUL bytes ({len(data)} bytes); "
            "expected one query per line"
        )
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse(argv: Sequence[str]) -> tuple[SearchSpec, list[str], list[str]]:
    """Command line -> ``(spec without dim, inputs, beam arguments)``."""
    args, beam_args = build_parser().parse_known_args(list(argv))
    # --runner dask / DaskRunner and --dask_address, as the other jobs take them
    beam_args = resolve_beam_args(beam_args)
    refuse_dask(beam_args, "search")
    values = vars(args)
    inputs = values.pop("input")
    queries = [q for q in values["queries"] if q]
    if values["queries_file"]:
        if queries:
            raise LaunchError("pass --queries or --queries-file, not both")
        queries = _read_queries(values["queries_file"])
    if not queries:
        where = (
            f"--queries-file {values['queries_file']} holds"
            if values["queries_file"]
            else ("the query list is empty:")
        )
        raise LaunchError(
            f"search needs queries: {where} no query; pass --queries 'a cat,a dog' or "
            "--queries-file FILE (one per line)"
        )
    try:
        spec = SearchSpec(
            output=values["output"],
            model=values["model"],
            queries=tuple(queries),
            templates=tuple(values["template"] or ["{}"]),
            top_k=values["top_k"],
            embedding_column=values["embedding_column"],
            id_column=values["id_column"],
            keep_columns=tuple(values["keep_columns"]),
            options=dict(values),
        )
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    return spec, inputs, beam_args


def reader_spec(spec: SearchSpec) -> DedupSpec:
    """The dedup spec its :class:`ReadUnit` reads with: same columns, no image hashes, and a
    fit sample that is never drawn (``ReadUnits(sample=False)``)."""
    return DedupSpec(
        output=spec.output,
        embedding_column=spec.embedding_column,
        dim=spec.dim,
        id_column=spec.id_column,
        keep_columns=spec.keep_columns,
        fit_rows=1,
    )


def embed_queries(spec: SearchSpec) -> np.ndarray:
    """The queries' unit vectors from the model's text tower, ``(queries, projection_dim)``."""
    from clipbeam.transforms.encoder import Encoder

    try:
        encoder = Encoder.load(spec.model, device="cpu")
    except (OSError, ValueError) as exc:
        raise LaunchError(f"--model {spec.model} cannot be loaded: {exc}") from None
    return encoder.prompt_embeddings(list(spec.queries), list(spec.templates)).astype(np.float32)


def validate_search(
    spec: SearchSpec, inputs: Sequence[str]
) -> tuple[SearchSpec, list[WorkUnit], pa.Schema, np.ndarray]:
    """Launch checks: inputs, columns and dimension of every file, the model's text dimension,
    the output folder.

    Returns:
        ``(spec with dim, units, first file's schema, query vectors)``.
    """
    import pyarrow.parquet as pq

    units = plan(inputs)
    schemas: dict[str, pa.Schema] = {}
    dims: dict[str, int] = {}
    reading = reader_spec(spec)
    for unit in units:
        if unit.path in schemas:
            continue
        with storage.open_input(unit.path) as f:
            schemas[unit.path] = pq.ParquetFile(f).schema_arrow
        dims[unit.path] = _check_schema(reading, schemas[unit.path], unit.path, unit)
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{p}: {d}" for p, d in list(dims.items())[:4])
        raise LaunchError(f"the input files hold embeddings of different dimensions ({shown})")
    spec = dataclasses.replace(spec, dim=next(iter(dims.values())))
    queries = embed_queries(spec)
    if queries.shape[1] != spec.dim:
        raise LaunchError(
            f"--model {spec.model} embeds text in dimension {queries.shape[1]}, the --input "
            f"embeddings have dimension {spec.dim}: both must come from one model"
        )
    found = [d for d in (RESULTS_DIR, "errors") if storage.list_files(storage.join(spec.output, d))]
    if found or storage.exists(storage.join(spec.output, "summary.json")):
        raise LaunchError(
            f"--output {spec.output} already holds results of an earlier run "
            f"({', '.join(found or ['summary.json'])}); choose an empty --output folder"
        )
    try:
        storage.check_writable(spec.output)
    except OSError as exc:
        raise LaunchError(f"--output {spec.output} is not writable: {exc}") from None
    record = json.loads(spec.to_json())
    record["inputs"] = list(inputs)
    storage.write_atomic(
        storage.join(spec.output, JOB_FILE),
        (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    return spec, units, schemas[units[0].path], queries


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

    def process(self, stats: DedupStats, counts: dict[int, int]) -> Any:
        import pyarrow.parquet as pq

        from clipbeam.transforms.process import EMPTY_ERRORS_FILE
        from clipbeam.transforms.redact import redact

        spec = self.spec
        errors_path = storage.join(spec.output, "errors", EMPTY_ERRORS_FILE)
        if not stats.error_rows:
            with storage.atomic_writer(errors_path) as f:
                pq.write_table(error_schema(reader_spec(spec), self.schema).empty_table(), f)
        finished = time.time()
        summary = {
            "job": "search",
            "queries": len(spec.queries),
            "top_k": spec.top_k,
            "input_rows": stats.input_rows,
            "rows_searched": stats.input_rows - stats.error_rows,
            "error_rows": stats.error_rows,
            "renormalized_rows": stats.renormalized_rows,
            "result_rows": sum(counts.values()),
            "results_per_query": {q: counts.get(i, 0) for i, q in enumerate(spec.queries)},
            "ties": "equal similarities are ranked by id, smaller first",
            "units": stats.units,
            "timings": {
                "started_at": _iso(self.started),
                "finished_at": _iso(finished),
                "seconds": round(finished - self.started, 3),
            },
            "inputs": [redact(i) for i in self.inputs],
            "output": redact(spec.output),
            "options": dict(spec.options),
        }
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
) -> beam.PCollection:
    """Adds the search job to ``pipeline``; returns the one-element PCollection of the summary's
    path, written when every query's results are."""
    reading = reader_spec(spec)
    read = (
        pipeline
        | "PlanUnits" >> beam.Create(list(units), reshuffle=False)
        | "SpreadUnits" >> beam.Reshuffle()
        | "Read" >> ReadUnits(reading, schema, sample=False)
    )
    out_schema = result_schema(spec, dedup_id_field(reading, schema), schema)
    counts = (
        read[BATCHES_TAG]
        | "BundleTopK" >> beam.ParDo(BundleTopK(spec, queries))
        | "TopPerQuery" >> beam.combiners.Top.SmallestPerKey(spec.top_k, key=order_key)
        | "WriteResults" >> beam.FlatMap(write_results, spec, out_schema, _metadata(spec))
    )
    stats = read[STATS_TAG] | "Sum" >> beam.CombineGlobally(lambda s: sum(s, DedupStats()))
    return stats | "Summary" >> beam.ParDo(
        _WriteSummary(spec, schema, inputs, started_at), beam.pvalue.AsDict(counts)
    )


def run(argv: Sequence[str], test_pipeline: beam.Pipeline | None = None):
    """Runs ``clipbeam search`` (``argv`` without the subcommand); returns the pipeline result."""
    import logging

    from apache_beam.options.pipeline_options import PipelineOptions

    started_at = time.time()
    spec, inputs, beam_args = parse(argv)
    spec, units, schema, queries = validate_search(spec, inputs)
    logging.getLogger("clipbeam").info(
        "search: %d queries over %d rows in %d work units, dimension %d -> %s",
        len(spec.queries),
        sum(u.num_rows for u in units),
        len(units),
        spec.dim,
        spec.output,
    )
    pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(beam_args))
    build_search(pipeline, spec, units, schema, queries, inputs, started_at=started_at)
    result = pipeline.run()
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
