"""The engine as Beam transforms: work units in, output files and per-unit counts out.

:class:`ProcessUnits` is the whole job for a :class:`~clipbeam.transforms.spec.JobSpec`. A filter
with
``top_fraction`` needs the score distribution of the whole dataset before it can decide any row,
so it runs in two passes, also offered separately for custom pipelines:

1. :class:`StageScores` scores every unit, stages its rows under ``<output>/_staging/`` and emits
   the unit's scores;
2. :func:`top_fraction_threshold` turns all scores into one cut with
   ``beam.ApproximateQuantiles``;
3. :func:`persist_threshold` stores that cut in ``<output>/_top_fraction.json``; a resumed run
   reads it back instead of using its own, so every unit of one output is split by one cut;
4. :class:`SelectStaged` reads the staged rows back and writes ``kept/`` and ``rejected/`` with
   the cut as a side input;
5. :func:`drop_staging` deletes ``_staging/`` once every unit is split, so that the output holds
   each row once (``read_parquet('out/**/*.parquet')``); until then a resume reads it back.

Every unit writes ``<output>/<dir>/part-FFFFF-GGGGG.parquet`` (and its errors to
``<output>/errors/``), then a completion marker ``<output>/_units/<pass>-part-FFFFF-GGGGG.json``
holding its :class:`~clipbeam.transforms.stats.UnitStats`. With ``resume``, a unit whose marker
exists is
skipped and its stored counts are emitted again, so totals stay exact across runs. A unit
without error rows writes no errors file; :func:`settle_errors`, run once at the end of a job,
leaves an empty one when the whole job had none, so ``errors/`` always reads as a table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import posixpath
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from clipbeam.transforms import storage
from clipbeam.transforms.compute import (
    Prompts,
    output_schema,
    result_columns,
    rule_counts,
    split_filtered,
)
from clipbeam.transforms.encoder import Encoder, acquire_encoder
from clipbeam.transforms.errors import RowError
from clipbeam.transforms.images import resolve_image_format
from clipbeam.transforms.rows import (
    EncodedWindow,
    encode_window,
    error_schema,
    error_table,
    id_array,
)
from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.stats import UnitStats, score_histogram
from clipbeam.transforms.storage import StorageError
from clipbeam.transforms.units import WorkUnit, iter_batches, plain_batch, plain_schema
from clipbeam.transforms.writer import COMPRESSION, ParquetSpool, job_metadata

__all__ = [
    "EMPTY_ERRORS_FILE",
    "ERRORS_DIR",
    "METRICS_NAMESPACE",
    "THRESHOLD_FILE",
    "TOP_FRACTION_QUANTILES",
    "ProcessUnits",
    "SelectStaged",
    "StageScores",
    "UnitDoFn",
    "drop_staging",
    "persist_threshold",
    "settle_errors",
    "top_fraction_threshold",
]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "clipbeam"
# 1001 quantiles = cuts every 0.1% of rows; Beam's sketch then guarantees a rank error below
# 1/1001 of the row count; the cut is then placed exactly among the scores near it, so
# --top-fraction F keeps floor(F * rows) of the scored rows (plus any tied with the cut).
TOP_FRACTION_QUANTILES = 1001
STAGING_DIR = "_staging"
MARKER_DIR = "_units"
ERRORS_DIR = "errors"
# Written to errors/ by settle_errors when a job had no error rows at all. Not hidden (no "_" or
# "." prefix): pyarrow.dataset must see it to learn the folder's schema.
EMPTY_ERRORS_FILE = "empty.parquet"
# The --top-fraction cut of the run that first computed it, next to the launcher's _job.json.
THRESHOLD_FILE = "_top_fraction.json"
SCORES_TAG = "scores"
STATS_TAG = "stats"

# Rows read from Parquet per window. Texts of a window are sorted by length before batching,
# so a window a few batches long lets short captions share batches; images are still decoded
# only one batch at a time.
_WINDOW_BATCHES = 4


class UnitDoFn(beam.DoFn):
    """Processes work units for one pass of a job.

    Args:
        spec: the job.
        mode: ``"write"`` (the kind's output in one pass), ``"stage"`` (filter pass 1: stage
            rows under ``_staging/`` and also emit each unit's scores to the ``scores`` output)
            or ``"select"`` (filter pass 2: split staged rows with the threshold side input).
    """

    def __init__(self, spec: JobSpec, mode: str = "write"):
        if mode not in ("write", "stage", "select"):
            raise ValueError(f"mode must be write, stage or select (got {mode!r})")
        if mode != "write" and spec.kind != "filter":
            raise ValueError(f"mode {mode!r} is for filter jobs, not {spec.kind}")
        self.spec = spec
        self.mode = mode
        self._encoder: Encoder | None = None
        self._prompts: Prompts | None = None
        self._counters = {
            name: Metrics.counter(METRICS_NAMESPACE, name)
            for name in (
                "input_rows",
                "output_rows",
                "error_rows",
                "kept",
                "rejected",
                "units",
                "resumed_units",
            )
        }

    def __getstate__(self) -> dict[str, Any]:
        # A worker may pickle this DoFn again after it loaded its model (Dask ships a side
        # input's task graph, this DoFn in it, from inside a running task): the model and its
        # locks stay behind, a copy loads its own.
        return {**self.__dict__, "_encoder": None, "_prompts": None}

    # -- Beam entry points --------------------------------------------------------------------

    def process(
        self, unit: WorkUnit, threshold: float | None = None
    ) -> Iterator[UnitStats | tuple[str, UnitStats | list[float]]]:
        # "stage" emits (STATS_TAG, stats) and (SCORES_TAG, scores) pairs on its one output
        # for StageScores to split: see there why it is not a multi-output ParDo.
        marker = self._path(MARKER_DIR, f"{self.mode}-{unit.name}.json")
        finished = _read_marker(marker, unit) if self.spec.resume else None
        if finished is not None:
            stats = finished.as_resumed()
            if self.mode == "stage":
                yield SCORES_TAG, self._staged_scores(unit)
        else:
            started = time.time()
            if self.mode == "select":
                stats = self._select(unit, threshold)
            else:
                stats, scores = self._process(unit)
                if self.mode == "stage":
                    yield SCORES_TAG, scores
            # Written last: a marker promises that every file of the unit is in place.
            storage.write_atomic(marker, _marker_json(unit, stats).encode("utf-8"))
            # Then the temporary files of earlier attempts (a killed worker) go, those written
            # before this attempt started only: a concurrent attempt may still be writing its own.
            for path in self._unit_files(unit, marker):
                storage.remove_temporaries(path, before=started)
        self._count(stats)
        yield (STATS_TAG, stats) if self.mode == "stage" else stats

    # -- passes -------------------------------------------------------------------------------

    def _process(self, unit: WorkUnit) -> tuple[UnitStats, list[float]]:
        try:
            return self._process_rows(unit)
        except (OSError, pa.ArrowException) as exc:
            reason = self._unreadable(unit, exc)
        # The row group cannot be read: its rows go to errors/, the job goes on.
        return self._process_rows(unit, unreadable=reason)

    def _unreadable(self, unit: WorkUnit, exc: BaseException) -> str:
        """Why ``unit``'s data cannot be read, if ``exc`` came from data that is corrupt.

        Decoding errors of a damaged page (a thrift header that does not parse, a bad
        compressed block) and failures of reading, writing or the network are alike to tell by
        type. So the row group is read again alone, from a fresh handle: if that read fails too,
        with an error of the same kind, the data is what is wrong. Otherwise ``exc`` is raised
        again for Beam to retry the bundle (a lost connection, a full disk...).
        """
        if isinstance(exc, StorageError | ConnectionError | TimeoutError) or getattr(
            exc, "errno", None
        ):
            raise exc
        try:
            for _ in iter_batches(unit, self._input_columns(), batch_size=1024):
                pass
        except (OSError, pa.ArrowException) as again:
            if type(again) is type(exc):
                return " ".join(str(again).split())[:300] or type(again).__name__
        raise exc

    def _unit_errors(self, unit: WorkUnit, reason: str, schema: pa.Schema) -> pa.Table:
        """One error row per row of a unit whose data cannot be read: ids if the id column
        still reads, else null ids (``source_file`` and ``row_number`` always say which row)."""
        spec = self.spec
        rows = range(unit.num_rows)
        if spec.id_column is None:
            ids = pa.array([unit.row_id(i) for i in rows], type=pa.string())
        else:
            try:
                batches = list(iter_batches(unit, [spec.id_column], batch_size=1024))
                ids = pa.concat_arrays([b.column(0) for b in batches]).cast(schema.field(0).type)
            except (OSError, pa.ArrowException):
                ids = pa.nulls(unit.num_rows, type=schema.field(0).type)
            if len(ids) != unit.num_rows:
                ids = pa.nulls(unit.num_rows, type=schema.field(0).type)
        message = (
            f"row group {unit.row_group} of {unit.path} cannot be read ({reason}): a corrupt "
            f"data page; all {unit.num_rows} rows of that row group are reported here, the other "
            "row groups are processed. Repair or rewrite the file, then run into a new output"
        )
        columns = [
            ids,
            pa.array([unit.path] * unit.num_rows, type=pa.string()),
            pa.array([unit.row_offset + i for i in rows], type=pa.int64()),
            pa.array(["corrupt_input"] * unit.num_rows, type=pa.string()),
            pa.array([RowError("corrupt_input", message).message] * unit.num_rows, pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=schema)

    def _process_rows(
        self, unit: WorkUnit, unreadable: str | None = None
    ) -> tuple[UnitStats, list[float]]:
        spec = self.spec
        encoder = self._acquire()
        # Every spool is entered as soon as it exists: an error anywhere discards them all.
        with storage.open_input(unit.path) as f, contextlib.ExitStack() as spools:
            parquet = pq.ParquetFile(f)
            schema = plain_schema(parquet.schema_arrow)
            image_format = ""
            if spec.image_column is not None:
                image_format = resolve_image_format(
                    spec.image_column, schema.field(spec.image_column).type, spec.image_format
                )
            metadata = job_metadata(spec, encoder.metadata())
            outputs = {
                folder: spools.enter_context(ParquetSpool(path, out_schema))
                for folder, path, out_schema in self._outputs(
                    unit, schema, encoder.projection_dim, metadata
                )
            }
            errors_path = self._path(ERRORS_DIR, f"{unit.name}.parquet")
            errors = spools.enter_context(ParquetSpool(errors_path, error_schema(spec, schema)))
            input_rows, scores, rules = 0, [], Counter()
            if unreadable is not None:
                errors.write(self._unit_errors(unit, unreadable, errors.schema))
                input_rows = unit.num_rows
            batches = parquet.iter_batches(
                batch_size=spec.batch_size * _WINDOW_BATCHES,
                row_groups=[unit.row_group],
                columns=self._input_columns(),
            )
            for batch in batches if unreadable is None else ():
                window = encode_window(
                    plain_batch(batch), spec, encoder, image_format, posixpath.dirname(unit.path)
                )
                errors.write(error_table(spec, unit, window, input_rows, errors.schema))
                table = self._result_table(unit, window, input_rows, outputs)
                if "clip_score" in table.column_names:
                    scores.extend(table.column("clip_score").to_pylist())
                rules += self._write_results(table, outputs)
                input_rows += batch.num_rows
            if input_rows != unit.num_rows:
                raise RuntimeError(
                    f"{unit.path} row group {unit.row_group}: read {input_rows} rows, its "
                    f"footer says {unit.num_rows}. Was the file rewritten while the job ran?"
                )
            for spool in outputs.values():
                spool.commit()
            if errors.rows:
                errors.commit()
            else:
                # A retry that no longer fails must not leave an older attempt's errors behind.
                errors.discard()
                storage.delete(errors_path, missing_ok=True)

        written = sum(s.rows for s in outputs.values())
        stats = UnitStats(input_rows=input_rows, error_rows=errors.rows, units=1)
        if self.mode == "write":
            stats = UnitStats(
                input_rows=input_rows,
                output_rows=written,
                error_rows=errors.rows,
                kept=outputs["kept"].rows if "kept" in outputs else 0,
                rejected=outputs["rejected"].rows if "rejected" in outputs else 0,
                histogram=score_histogram(np.asarray(scores)) if self._has_scores() else (),
                units=1,
                rejected_by_rule=tuple(sorted(rules.items())),
            )
        return stats, scores

    def _select(self, unit: WorkUnit, threshold: float | None) -> UnitStats:
        staged = self._path(STAGING_DIR, f"{unit.name}.parquet")
        with storage.open_input(staged) as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            kept_schema = schema.remove(schema.get_field_index("reject_reason"))
            scores: list[float] = []
            rules: Counter[str] = Counter()
            with contextlib.ExitStack() as spools:
                kept_path = self._path("kept", f"{unit.name}.parquet")
                kept = spools.enter_context(ParquetSpool(kept_path, kept_schema))
                rejected_path = self._path("rejected", f"{unit.name}.parquet")
                rejected = spools.enter_context(ParquetSpool(rejected_path, schema))
                for batch in parquet.iter_batches(batch_size=max(1024, self.spec.batch_size)):
                    table = pa.Table.from_batches([batch])
                    scores.extend(table.column("clip_score").to_pylist())
                    k, r = split_filtered(table, threshold)
                    kept.write(k)
                    rejected.write(r)
                    rules += rule_counts(r)
                kept.commit()
                rejected.commit()
        return UnitStats(
            output_rows=kept.rows + rejected.rows,
            kept=kept.rows,
            rejected=rejected.rows,
            histogram=score_histogram(np.asarray(scores)),
            rejected_by_rule=tuple(sorted(rules.items())),
        )

    def _staged_scores(self, unit: WorkUnit) -> list[float]:
        staged = self._path(STAGING_DIR, f"{unit.name}.parquet")
        # A finished job has split every unit and dropped _staging/: its rows are in the outputs.
        paths = [staged] if storage.exists(staged) else self._split_paths(unit)
        scores: list[float] = []
        for path in paths:
            with storage.open_input(path) as f:
                scores += pq.read_table(f, columns=["clip_score"]).column("clip_score").to_pylist()
        return scores

    def _split_paths(self, unit: WorkUnit) -> list[str]:
        marker = self._path(MARKER_DIR, f"select-{unit.name}.json")
        if not storage.exists(marker):
            raise FileNotFoundError(
                f"unit {unit.name} was staged by an earlier run, but neither its staged rows nor "
                "its split are there: rerun without --resume into an empty --output folder"
            )
        paths = [self._path(folder, f"{unit.name}.parquet") for folder in ("kept", "rejected")]
        return [p for p in paths if storage.exists(p)]

    # -- helpers ------------------------------------------------------------------------------

    def _acquire(self) -> Encoder:
        if self._encoder is None:
            spec = self.spec
            self._encoder = acquire_encoder(
                spec.model,
                device=spec.device,
                dtype=spec.dtype,
                batch_size=spec.batch_size,
                compile=spec.compile,
                heads=spec.heads,
            )
            self._prompts = Prompts.build(spec, self._encoder)
        return self._encoder

    def _path(self, folder: str, name: str) -> str:
        return storage.join(self.spec.output, folder, name)

    def _unit_files(self, unit: WorkUnit, marker: str) -> list[str]:
        """Every file this pass of the unit writes, its marker included."""
        name = f"{unit.name}.parquet"
        folders = {
            "write": [*self.spec.output_dirs, ERRORS_DIR],
            "stage": [STAGING_DIR, ERRORS_DIR],
        }
        return [self._path(d, name) for d in folders.get(self.mode, ["kept", "rejected"])] + [
            marker
        ]

    def _input_columns(self) -> list[str]:
        spec = self.spec
        names = [spec.id_column, spec.image_column, spec.text_column, *spec.keep_columns]
        return list(dict.fromkeys(n for n in names if n is not None))

    def _has_scores(self) -> bool:
        spec = self.spec
        return spec.kind in ("score", "filter") or (
            spec.kind == "embed" and spec.image_column is not None and spec.text_column is not None
        )

    def _outputs(
        self, unit: WorkUnit, schema: pa.Schema, dim: int, metadata: dict[str, str]
    ) -> list[tuple[str, str, pa.Schema]]:
        """``(folder, path, schema)`` of each file this unit writes rows to."""
        spec = self.spec
        name = f"{unit.name}.parquet"
        full = output_schema(spec, schema, dim, metadata)
        if self.mode == "stage":
            return [(STAGING_DIR, self._path(STAGING_DIR, name), full)]
        if spec.kind == "filter":
            kept = output_schema(spec, schema, dim, metadata, rejected=False)
            return [
                ("kept", self._path("kept", name), kept),
                ("rejected", self._path("rejected", name), full),
            ]
        (folder,) = spec.output_dirs
        return [(folder, self._path(folder, name), full)]

    def _result_table(
        self, unit: WorkUnit, window: EncodedWindow, start: int, outputs: dict[str, ParquetSpool]
    ) -> pa.Table:
        """Id, computed and kept columns of the window's good rows, in the full schema."""
        spool = outputs.get("rejected") or next(iter(outputs.values()))
        if not window.good:
            return spool.schema.empty_table()
        take = pa.array(window.good, type=pa.int64())
        columns = [id_array(self.spec, unit, window.batch, start, window.good)]
        columns += result_columns(self.spec, window, self._prompts)  # type: ignore[arg-type]
        columns += [window.batch.column(name).take(take) for name in self.spec.keep_columns]
        return pa.Table.from_arrays(columns, schema=spool.schema)

    def _write_results(self, table: pa.Table, outputs: dict[str, ParquetSpool]) -> Counter[str]:
        """Writes the rows; returns how many rows failed each filter rule."""
        if "kept" in outputs:
            kept, rejected = split_filtered(table)
            outputs["kept"].write(kept)
            outputs["rejected"].write(rejected)
            return rule_counts(rejected)
        next(iter(outputs.values())).write(table)
        return Counter()

    def _count(self, stats: UnitStats) -> None:
        for name, counter in self._counters.items():
            value = getattr(stats, name)
            if value:
                counter.inc(value)


def _marker_json(unit: WorkUnit, stats: UnitStats) -> str:
    """A completion marker: the unit's counts, and which file and row group they are of."""
    return json.dumps({"unit": unit.identity, "stats": json.loads(stats.to_json())}, sort_keys=True)


def _read_marker(path: str, unit: WorkUnit) -> UnitStats | None:
    """The stored counts of ``unit`` if an earlier run finished it, else ``None``.

    A marker is taken only if it records this very unit (same file, file version and row group):
    unit names follow the files' positions in the input listing, so a marker of another input
    set may sit under this unit's name; that unit is then processed again, and its files
    replaced. Markers without an identity (older clipbeam versions) are not trusted either.
    """
    if not storage.exists(path):
        return None
    record = json.loads(storage.read_bytes(path).decode("utf-8"))
    if not isinstance(record, dict) or record.get("unit") != unit.identity:
        _LOGGER.info("--resume: %s is not a marker of %s; processing the unit again", path, unit)
        return None
    return UnitStats.from_json(json.dumps(record["stats"]))


class StageScores(beam.PTransform):
    """Filter pass 1: scores and stages every unit.

    Returns a dict of two PCollections: ``"stats"`` (one :class:`UnitStats` per unit, with
    ``input_rows`` and ``error_rows``) and ``"scores"`` (one list of ``clip_score`` per unit).
    """

    def __init__(self, spec: JobSpec):
        super().__init__()
        self.spec = spec

    def expand(self, units: beam.PCollection[WorkUnit]) -> dict[str, beam.PCollection]:
        # One output of (tag, value) pairs split by two FlatMaps, not ParDo.with_outputs: Beam's
        # DaskRunner (2.77) keys a transform's Dask bag by the producing transform, not by the
        # output tag, so every consumer of a multi-output ParDo gets the elements of all its
        # outputs (the scores' quantiles would get UnitStats).
        tagged = units | "Stage" >> beam.ParDo(UnitDoFn(self.spec, "stage"))
        return {
            tag: tagged | f"Split{tag.title()}" >> beam.FlatMap(_tagged_values, tag)
            for tag in (STATS_TAG, SCORES_TAG)
        }


def _tagged_values(pair: tuple[str, Any], tag: str) -> Iterator[Any]:
    """The value of a (tag, value) pair if its tag is ``tag``."""
    if pair[0] == tag:
        yield pair[1]


class SelectStaged(beam.PTransform):
    """Filter pass 2: splits staged rows into ``kept/`` and ``rejected/``.

    Args:
        spec: the job.
        threshold: a singleton side input (``beam.pvalue.AsSingleton``) holding the score cut,
            or ``None`` for no ``top_fraction`` rule.
    """

    def __init__(self, spec: JobSpec, threshold: Any):
        super().__init__()
        self.spec = spec
        self.threshold = threshold

    def expand(self, units: beam.PCollection[WorkUnit]) -> beam.PCollection[UnitStats]:
        return units | "Select" >> beam.ParDo(UnitDoFn(self.spec, "select"), self.threshold)


# Quantile steps on either side of the approximate cut whose scores are gathered to place it
# exactly: the sketch's rank error is below one step (1 / TOP_FRACTION_QUANTILES of the rows).
_BAND_STEPS = 3


def _keep_count(fraction: float, count: int) -> int:
    """How many of ``count`` rows ``fraction`` keeps at most (a hair of float slack: 0.3 * 10)."""
    return min(count, math.floor(fraction * count + 1e-9))


def _band(quantiles: list[float], fraction: float, count: int) -> tuple[float, float] | None:
    """The score range, from the sketch, that holds the exact cut; ``None``: no rows scored."""
    if not quantiles or not count:
        return None
    steps = len(quantiles) - 1
    rank = count - _keep_count(fraction, count)  # ascending rank of the lowest kept score
    index = min(rank * steps // count + 1, steps) if rank else 0
    return quantiles[max(index - _BAND_STEPS, 0)], quantiles[min(index + _BAND_STEPS, steps)]


def _in_band(scores: list[float], band: tuple[float, float] | None) -> tuple[int, list[float]]:
    """Of one batch: how many scores lie above the band, and the scores inside it."""
    if band is None:
        return 0, []
    low, high = band
    values = np.asarray(scores, dtype=np.float64)
    return int((values > high).sum()), values[(values >= low) & (values <= high)].tolist()


def _merge_bands(parts: Iterable[tuple[int, list[float]]]) -> tuple[int, list[float]]:
    above, inside = 0, []
    for count, values in parts:
        above += count
        inside += values
    return above, inside


def _cut(
    gathered: tuple[int, list[float]],
    fraction: float,
    count: int,
    band: tuple[float, float] | None,
) -> float | None:
    """The lowest kept score: the ``keep``-th highest of all, found among the band's scores."""
    if band is None:
        return None
    above, inside = gathered
    need = _keep_count(fraction, count) - above  # rows still to keep, from the band down
    inside.sort(reverse=True)
    if need <= 0:  # the sketch erred beyond the band: keep only what lies above it
        return math.nextafter(band[1], math.inf)
    if need > len(inside):  # or below it: keep the whole band
        return band[0]
    return inside[need - 1]


def top_fraction_threshold(
    scores: beam.PCollection[list[float]], fraction: float
) -> beam.PCollection[float | None]:
    """The lowest ``clip_score`` of the best ``fraction`` of all rows, from batched scores.

    At most ``floor(fraction * rows)`` rows score above the cut or on it, except for ties: rows
    tied with the cut's score are all kept, so ties at the cut can keep a few more (the scores
    do not allow fewer without rejecting a row that scores as well as a kept one).

    Beam's ``ApproximateQuantiles`` sketch with :data:`TOP_FRACTION_QUANTILES` cuts bounds the
    rank error by ``1 / TOP_FRACTION_QUANTILES`` of the number of scores (its default epsilon);
    the scores within a few of its steps of the cut are then gathered (a few per mille of the
    rows) and the cut is placed among them exactly. For 1001 cuts the sketch keeps up to 17
    buffers of 15,259 scores, so below 18 buffers (274,662 scores) it holds every score; above,
    it merges buffers, and its quantiles may differ between runs over the same scores (see
    :func:`persist_threshold`).
    """
    count = scores | "CountScores" >> beam.Map(len) | "Rows" >> beam.CombineGlobally(sum)
    count = beam.pvalue.AsSingleton(count)
    band = (
        scores
        | "Quantiles"
        >> beam.ApproximateQuantiles.Globally(TOP_FRACTION_QUANTILES, input_batched=True)
        | "Band" >> beam.Map(_band, fraction, count)
    )
    band = beam.pvalue.AsSingleton(band)
    return (
        scores
        | "InBand" >> beam.Map(_in_band, band)
        | "Gather" >> beam.CombineGlobally(_merge_bands)
        | "Cut" >> beam.Map(_cut, fraction, count, band)
    )


class _PersistThreshold(beam.DoFn):
    """Stores the cut this run computed, or, resuming, returns the one stored by an earlier run."""

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def process(self, computed: float | None) -> Iterator[float | None]:
        spec = self.spec
        path = storage.join(spec.output, THRESHOLD_FILE)
        if spec.resume and storage.exists(path):
            stored = json.loads(storage.read_bytes(path))
            if stored.get("top_fraction") != spec.top_fraction:
                raise ValueError(
                    f"{path} holds the cut of --top-fraction {stored.get('top_fraction')}, this "
                    f"job asks for {spec.top_fraction}: --resume must repeat the earlier run's "
                    "options. Rerun with them, or choose an empty --output folder."
                )
            threshold = stored["threshold"]
            if threshold != computed:
                _LOGGER.info(
                    "--resume: splitting by the earlier run's cut %r (%s), not this run's %r",
                    threshold,
                    path,
                    computed,
                )
            yield threshold
            return
        record = {"top_fraction": spec.top_fraction, "threshold": computed}
        storage.write_atomic(path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        yield computed


def persist_threshold(
    threshold: beam.PCollection[float | None], spec: JobSpec
) -> beam.PCollection[float | None]:
    """The cut that splits every unit of ``spec.output``: one run's, whatever the resumes.

    A fresh run stores its cut (from :func:`top_fraction_threshold`) in
    ``<output>/_top_fraction.json`` and passes it on. A run with ``resume`` whose output folder
    already holds that file passes the stored cut on instead of its own: above about 275,000
    scores Beam's sketch is approximate and its result may change from run to run (bundles are
    merged in another order), and units split by an earlier run must not mix with units split
    by another cut. The file is written before any unit is split (the cut reaches pass 2 only as
    a side input), so a unit split by an earlier run always has its cut stored.

    Raises:
        ValueError: (when run) the stored cut belongs to another ``top_fraction``.
    """
    return threshold | "PersistCut" >> beam.ParDo(_PersistThreshold(spec))


def _drop_staging(units: int, spec: JobSpec) -> int:
    storage.delete_folder(storage.join(spec.output, STAGING_DIR))
    return units


def drop_staging(selected: beam.PCollection[UnitStats], spec: JobSpec) -> beam.PCollection[int]:
    """Deletes ``<output>/_staging/`` once every unit of pass 2 is split (``selected``).

    The staged rows are a second copy of every scored row; a resume needs them only for units
    not split yet, and a resumed run over a finished output reads pass 1's scores back from
    ``kept/`` and ``rejected/``. Returns the number of split units.
    """
    return (
        selected
        | "CountSplit" >> beam.combiners.Count.Globally()
        | "DropStaging" >> beam.Map(_drop_staging, spec)
    )


def settle_errors(spec: JobSpec, input_schema: pa.Schema, error_rows: int) -> None:
    """Makes ``<output>/errors/`` readable as a table, errors or none: call once, after every unit.

    Units write an errors file only when they have error rows (the file count stays that of the
    units that failed somewhere). When the whole job had none, this writes
    :data:`EMPTY_ERRORS_FILE`, no rows in the errors schema, so that ``pyarrow.dataset`` and
    query engines read ``errors/`` as an empty table with the right columns; when it had some,
    it deletes a leftover empty file. Writing is atomic and repeatable (retries, resumes).

    Args:
        spec: the job.
        input_schema: the Arrow schema of the (first) input file, which types the id column.
        error_rows: the job's total of error rows, resumed units included.
    """
    path = storage.join(spec.output, ERRORS_DIR, EMPTY_ERRORS_FILE)
    if error_rows:
        storage.delete(path, missing_ok=True)
        return
    with storage.atomic_writer(path) as f:
        pq.write_table(error_schema(spec, input_schema).empty_table(), f, compression=COMPRESSION)


class ProcessUnits(beam.PTransform):
    """The whole job: work units in, one :class:`UnitStats` per unit and pass out.

    The stats add up (``beam.CombineGlobally(sum)``) to the job's totals. For a filter with
    ``top_fraction`` this runs :class:`StageScores`, :func:`top_fraction_threshold`,
    :func:`persist_threshold` and :class:`SelectStaged`; otherwise one pass.
    """

    def __init__(self, spec: JobSpec):
        super().__init__()
        self.spec = spec

    def expand(self, units: beam.PCollection[WorkUnit]) -> beam.PCollection[UnitStats]:
        spec = self.spec
        if spec.kind != "filter" or spec.top_fraction is None:
            return units | "Process" >> beam.ParDo(UnitDoFn(spec, "write"))
        staged = units | "Pass1" >> StageScores(spec)
        threshold = top_fraction_threshold(staged["scores"], spec.top_fraction)
        threshold = persist_threshold(threshold, spec)
        # Pass 2 must only start once every unit is staged: the side input enforces that.
        selected = units | "Pass2" >> SelectStaged(spec, beam.pvalue.AsSingleton(threshold))
        drop_staging(selected, spec)
        return (staged["stats"], selected) | "AllStats" >> beam.Flatten()
