"""``clipbeam dedup``: exact and semantic (SemDeDup) deduplication of embeddings, on Beam.

SemDeDup as NeMo Curator implements it: k-means (``--clusters``, faiss, spherical) fitted on a
sample of at most ``--fit-rows`` rows drawn across all units; every row assigned to its nearest
centroid; inside each cluster rows ranked by cosine distance to the centroid, farthest first;
a row's ``max_similarity`` is its largest cosine to an earlier-ranked row of its cluster, and it
is a duplicate at ``eps`` when ``max_similarity >= 1 - eps``. Rows with byte-identical images
(``--image-column``, sha256) are grouped first: the one with the smallest id is kept.

::

    units -> ReadUnit -> sample -> Top -> Fit (one worker) -> centroids (side input)
                 \\-> batches -> Assign -> split (second-level k-means) -> GroupByKey(cluster)
                                        -> blocked pairwise -> dedup/, duplicates/ -> summary.json

Output: ``dedup/`` (one row per input row), ``duplicates/`` (the ids removed at the first
``--eps``), ``errors/`` (rows without a usable embedding), ``summary.json``.

Bounds: a group's rows are held by one worker, its similarities computed in ``--block-rows``
tiles. A cluster over ``--max-cluster-rows`` is split by a second-level k-means, which divides
ordinary large clusters but not a cluster of near copies of one image; a part still over the
bound is dealt into chunks whose pairs are tiles on workers of their own
(:mod:`clipbeam.transforms.dedup.tiles`), counted in ``groups_over_bound``. ``--against``: the
reference set is a side input (:mod:`clipbeam.transforms.dedup.reference`). Still to come: raw
images with ``--model``, and the report's duplicate view.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa

from clipbeam.pipeline.options import (
    LaunchError,
    _add,
    _bool,
    _column,
    _HelpFormatter,
    _names,
    _number,
    _Parser,
)
from clipbeam.pipeline.validate import JOB_FILE, plan
from clipbeam.transforms import storage
from clipbeam.transforms.dedup import stages, tiles
from clipbeam.transforms.dedup.read import SAMPLE_TAG, STATS_TAG, ReadUnit, error_schema
from clipbeam.transforms.dedup.reference import CombineReference, ReadReference
from clipbeam.transforms.dedup.spec import DEFAULT_EPS, DedupSpec, DedupStats, eps_column
from clipbeam.transforms.embeddings import EmbeddingTypeError, embedding_dim, l2_normalize
from clipbeam.transforms.units import WorkUnit, iter_batches

__all__ = ["build_dedup", "build_parser", "main", "parse", "run", "validate_dedup"]

_log = logging.getLogger("clipbeam")

# Spec fields a resumed run may change: they do not change any output row.
_RESUMABLE = frozenset({"resume", "block_rows", "options"})


def _eps_list(text: str) -> list[float]:
    parse = _number(float, 0.0, 1.0)
    return [parse(part.strip()) for part in text.split(",") if part.strip()]


def build_parser(prog: str = "clipbeam dedup") -> _Parser:
    """The ``clipbeam dedup`` argument parser (unknown options are Beam's)."""
    parser = _Parser(
        prog=prog,
        description="exact and semantic (SemDeDup) duplicates of embeddings -> OUTPUT/dedup/, "
        "OUTPUT/duplicates/. Options are also accepted with underscores.",
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
        "resume",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        metavar="BOOL",
        help="skip cluster groups an earlier run of the same job completed",
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
        "image-column",
        type=_column,
        default=None,
        metavar="NAME",
        help="image bytes (binary or {bytes, path} struct) hashed for exact duplicates",
    )
    _add(
        columns,
        "keep-columns",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="input columns copied to OUTPUT/dedup/",
    )
    semantic = parser.add_argument_group("SemDeDup")
    _add(
        semantic,
        "clusters",
        type=_number(int, 1),
        default=1000,
        metavar="K",
        help="k-means clusters",
    )
    _add(
        semantic,
        "fit-rows",
        type=_number(int, 1),
        default=1_000_000,
        metavar="N",
        help="most rows the k-means fit sees (sampled across all inputs)",
    )
    _add(
        semantic,
        "eps",
        type=_eps_list,
        default=list(DEFAULT_EPS),
        metavar="E,F",
        help="thresholds: a row is a duplicate when max_similarity >= 1 - eps; the first "
        "one is listed in OUTPUT/duplicates/",
    )
    _add(
        semantic,
        "seed",
        type=_number(int, 0),
        default=0,
        metavar="N",
        help="seed of the fit sample and of k-means",
    )
    _add(
        semantic, "niter", type=_number(int, 1), default=20, metavar="N", help="k-means iterations"
    )
    _add(
        semantic,
        "max-cluster-rows",
        type=_number(int, 2),
        default=50_000,
        metavar="N",
        help="a cluster with more rows is split by a second-level k-means",
    )
    _add(
        semantic,
        "block-rows",
        type=_number(int, 1),
        default=1024,
        metavar="N",
        help="rows per tile of the pairwise similarities",
    )
    against = parser.add_argument_group("decontamination")
    _add(
        against,
        "against",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="embeddings of a reference set (an evaluation set): rows near one are removed",
    )
    _add(
        against,
        "against-eps",
        type=_number(float, 0.0, 1.0),
        default=0.05,
        metavar="E",
        help="a row is removed when max_reference_similarity >= 1 - E",
    )
    _add(
        against,
        "against-id-column",
        type=_column,
        default="id",
        metavar="NAME",
        help="the reference set's id column ('none': '<file>:<row>')",
    )
    _add(
        against,
        "against-embedding-column",
        default="image_embedding",
        metavar="NAME",
        help="the reference set's embedding column",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[DedupSpec, list[str], list[str]]:
    """Command line -> ``(spec without dim, inputs, beam arguments)``."""
    args, beam_args = build_parser().parse_known_args(list(argv))
    values = vars(args)
    inputs = values.pop("input")
    options = dict(values)
    try:
        spec = DedupSpec(
            output=values["output"],
            embedding_column=values["embedding_column"],
            id_column=values["id_column"],
            image_column=values["image_column"],
            keep_columns=tuple(values["keep_columns"]),
            clusters=values["clusters"],
            fit_rows=values["fit_rows"],
            eps=tuple(values["eps"]),
            seed=values["seed"],
            niter=values["niter"],
            max_cluster_rows=values["max_cluster_rows"],
            block_rows=values["block_rows"],
            against=tuple(values["against"]),
            against_eps=values["against_eps"],
            against_id_column=values["against_id_column"],
            against_embedding_column=values["against_embedding_column"],
            resume=values["resume"],
            options=options,
        )
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    return spec, inputs, beam_args


def _check_schema(spec: DedupSpec, schema: pa.Schema, path: str, unit: WorkUnit) -> int:
    """The embedding dimension of one file; every other column checked."""
    for option, name in (
        ("--id-column", spec.id_column),
        ("--image-column", spec.image_column),
        *(("--keep-columns", k) for k in spec.keep_columns),
    ):
        if name is not None and name not in schema.names:
            raise LaunchError(
                f"{option} {name!r} is not a column of {path} (its columns: "
                f"{', '.join(schema.names)})"
            )
    if spec.image_column is not None:
        t = schema.field(spec.image_column).type
        is_struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or is_struct):
            raise LaunchError(
                f"--image-column {spec.image_column!r} of {path} is {t}; exact duplicates need "
                "image bytes (binary, or a struct with a bytes field)"
            )
    first = None
    t = schema.field(spec.embedding_column).type if spec.embedding_column in schema.names else None
    if t is not None and not pa.types.is_fixed_size_list(t):
        first = next(iter_batches(unit, [spec.embedding_column], 64)).column(0)
    try:
        return embedding_dim(schema, spec.embedding_column, path, first)
    except EmbeddingTypeError as exc:
        raise LaunchError(str(exc)) from None


def _check_output(spec: DedupSpec, inputs: Sequence[str]) -> dict[str, Any]:
    record = json.loads(spec.to_json())
    record["inputs"] = list(inputs)
    path = storage.join(spec.output, JOB_FILE)
    if not spec.resume:
        found = [
            d
            for d in (stages.OUTPUT_DIR, "errors")
            if storage.list_files(storage.join(spec.output, d))
        ]
        if storage.exists(path) or storage.exists(storage.join(spec.output, "summary.json")):
            found.append(JOB_FILE)
        if found:
            raise LaunchError(
                f"--output {spec.output} already holds results of an earlier run "
                f"({', '.join(found)}). Pass --resume to finish that run, or choose an empty "
                "--output folder."
            )
    elif storage.exists(path):
        earlier = json.loads(storage.read_bytes(path))
        changed = sorted(
            k
            for k in set(earlier) | set(record)
            if k not in _RESUMABLE and earlier.get(k) != record.get(k)
        )
        if changed:
            raise LaunchError(
                f"--resume: {spec.output} holds a run of a different job (changed: "
                f"{', '.join(changed)}). Rerun with the same options, or choose an empty --output."
            )
    return record


def _check_against(spec: DedupSpec) -> list[WorkUnit]:
    """The reference set's units; every file's columns and dimension checked."""
    import dataclasses

    import pyarrow.parquet as pq

    units = plan(spec.against)
    as_input = dataclasses.replace(
        spec,
        embedding_column=spec.against_embedding_column,
        id_column=spec.against_id_column,
        image_column=None,
        keep_columns=(),
    )
    seen = set()
    for unit in units:
        if unit.path in seen:
            continue
        seen.add(unit.path)
        with storage.open_input(unit.path) as f:
            schema = pq.ParquetFile(f).schema_arrow
        dim = _check_schema(as_input, schema, unit.path, unit)
        if dim != spec.dim:
            raise LaunchError(
                f"--against {unit.path} holds embeddings of dimension {dim}, the --input "
                f"embeddings have dimension {spec.dim}: both must come from one model"
            )
    return units


def validate_dedup(
    spec: DedupSpec, inputs: Sequence[str]
) -> tuple[DedupSpec, list[WorkUnit], pa.Schema, list[WorkUnit]]:
    """Launch checks: inputs, columns of every file, one dimension, the reference set, the
    output folder.

    Returns:
        ``(spec with dim, units, first file's schema, reference set's units)``.
    """
    import dataclasses

    import pyarrow.parquet as pq

    from clipbeam.transforms.embeddings import embedding_matrix

    units = plan(inputs)
    schemas: dict[str, pa.Schema] = {}
    dims: dict[str, int] = {}
    for unit in units:
        if unit.path in schemas:
            continue
        with storage.open_input(unit.path) as f:
            schemas[unit.path] = pq.ParquetFile(f).schema_arrow
        dims[unit.path] = _check_schema(spec, schemas[unit.path], unit.path, unit)
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{p}: {d}" for p, d in list(dims.items())[:4])
        raise LaunchError(f"the input files hold embeddings of different dimensions ({shown})")
    spec = dataclasses.replace(spec, dim=next(iter(dims.values())))
    first = next(iter_batches(units[0], [spec.embedding_column], 1024)).column(0)
    _, _, renormalized = l2_normalize(embedding_matrix(first, spec.dim)[0])
    if renormalized.any():
        _log.info("dedup: the input embeddings are not L2-normalized; the job normalizes them")
    against_units = _check_against(spec) if spec.against else []
    record = _check_output(spec, inputs)
    try:
        storage.check_writable(spec.output)
    except OSError as exc:
        raise LaunchError(f"--output {spec.output} is not writable: {exc}") from None
    storage.write_atomic(
        storage.join(spec.output, JOB_FILE),
        (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    return spec, units, schemas[units[0].path], against_units


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

    def process(self, stats: DedupStats, model, counts) -> Any:
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


def _sum(stats) -> DedupStats:
    return sum(stats, DedupStats())


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
        | "Read"
        >> beam.ParDo(ReadUnit(spec, schema)).with_outputs(SAMPLE_TAG, STATS_TAG, main="batches")
    )
    sample = read[SAMPLE_TAG] | "Sample" >> beam.combiners.Top.Smallest(
        spec.fit_rows, key=lambda c: (c[0], c[1])
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
    assigned = read.batches | "Assign" >> beam.Map(stages.assign_batch, *sides)
    counts = stages.cluster_counts(assigned, beam.pvalue.AsSingleton(model))
    final = model | "FitSplits" >> beam.ParDo(
        stages.FitSplits(spec), beam.pvalue.AsSingleton(sample), beam.pvalue.AsSingleton(counts)
    )
    rows = assigned | "KeyRows" >> beam.FlatMap(stages.key_rows, beam.pvalue.AsSingleton(final))
    sizes = beam.pvalue.AsDict(
        rows
        | "GroupKey" >> beam.Map(lambda kv: (kv[0], 1))
        | "GroupSizes" >> beam.CombinePerKey(sum)
    )
    rows = rows | "Chunk" >> beam.Map(tiles.add_chunk, sizes, spec)
    notices = (
        rows
        | "Hashes" >> beam.FlatMap(stages.hash_keys)
        | "ByHash" >> beam.GroupByKey()
        | "ExactCopies" >> beam.FlatMap(stages.exact_notices)
    )
    # Groups over the bound: every pair of their chunks is a tile of its own.
    partials = (
        {
            "rows": rows | "RowTiles" >> beam.FlatMap(tiles.to_tiles, sizes, spec),
            "exact": notices | "CopyTiles" >> beam.FlatMap(tiles.to_tiles, sizes, spec),
        }
        | "ByTile" >> beam.CoGroupByKey()
        | "Tiles" >> beam.ParDo(tiles.Tile(spec))
    )
    groups = (
        {"rows": rows, "exact": notices, "partials": partials}
        | "ByCluster" >> beam.CoGroupByKey()
        | "SemDeDup" >> beam.ParDo(stages.DedupGroup(spec, schema, _metadata(spec)), sizes)
    )
    stats = (read[STATS_TAG], groups) | "AllStats" >> beam.Flatten()
    total = stats | "Sum" >> beam.CombineGlobally(_sum)
    return total | "Summary" >> beam.ParDo(
        _WriteSummary(spec, schema, inputs, started_at),
        beam.pvalue.AsSingleton(final),
        beam.pvalue.AsSingleton(counts),
    )


def run(argv: Sequence[str], test_pipeline: beam.Pipeline | None = None):
    """Runs ``clipbeam dedup`` (``argv`` without the subcommand); returns the pipeline result."""
    from apache_beam.options.pipeline_options import PipelineOptions

    started_at = time.time()
    spec, inputs, beam_args = parse(argv)
    spec, units, schema, against_units = validate_dedup(spec, inputs)
    _log.info(
        "dedup: %d rows in %d work units, dimension %d -> %s",
        sum(u.num_rows for u in units),
        len(units),
        spec.dim,
        spec.output,
    )
    pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(beam_args))
    build_dedup(
        pipeline, spec, units, schema, inputs, started_at=started_at, against_units=against_units
    )
    result = pipeline.run()
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
