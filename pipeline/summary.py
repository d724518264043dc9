"""The end of every job: counts summed over all units, written as ``summary.json`` and as metrics.

Both come from the same per-unit :class:`~clipbeam.transforms.stats.UnitStats` (the engine's unit
DoFn adds each to the Beam metrics counters of namespace ``clipbeam`` as it emits it), so
``summary.json`` and the counters always agree, resumed units included. The summary is written by
the pipeline itself, not by the launcher, so it also appears for jobs the launcher does not wait for
(a Dataflow job submitted from a Flex Template).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa

from clipbeam.transforms.redact import redact_value
from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.stats import UnitStats, histogram_edges

__all__ = [
    "METRICS_NAMESPACE",
    "SUMMARY_FILE",
    "SumStats",
    "WriteSummary",
    "counter_names",
    "make_summary",
]

METRICS_NAMESPACE = "clipbeam"  # the engine's counters (transforms.process)
SUMMARY_FILE = "summary.json"

# summary.json key -> UnitStats field, in the order they are written.
_COUNTS = {
    "input_rows": "input_rows",
    "output_rows": "output_rows",
    "error_rows": "error_rows",
    "kept": "kept",
    "rejected": "rejected",
    "units": "units",
    "resumed_units": "resumed_units",
}
_FILTER_ONLY = ("kept", "rejected")


def counter_names(kind: str) -> tuple[str, ...]:
    """The counters a job of ``kind`` reports (the summary's count keys)."""
    return tuple(k for k in _COUNTS if kind == "filter" or k not in _FILTER_ONLY)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


def make_summary(
    spec: JobSpec,
    stats: UnitStats,
    *,
    inputs: Sequence[str],
    started_at: float,
    finished_at: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``summary.json``.

    Args:
        spec: the job.
        stats: the sum of every unit's stats (both passes of a two-pass filter).
        inputs: the ``--input`` patterns.
        started_at: launch time, seconds since the epoch.
        finished_at: when the last unit was counted, seconds since the epoch.
        extra: more entries (e.g. the ``--top-fraction`` score threshold).

    Returns:
        A JSON-serializable dict: the job, its counts, the ``clip_score`` histogram where the job
        computes scores, timings, and the options as given.
    """
    summary: dict[str, Any] = {"job": spec.kind}
    for key in counter_names(spec.kind):
        summary[key] = getattr(stats, _COUNTS[key])
    if spec.kind == "filter":
        # Rows can fail several rules: these counts add up to at least `rejected`.
        summary["rejected_by_rule"] = dict(stats.rejected_by_rule)
    if stats.histogram:
        summary["clip_score_histogram"] = {
            # Rounded: linspace leaves float noise such as -0.3999999999999999 in the file.
            "edges": [round(edge, 6) for edge in histogram_edges()],
            "counts": list(stats.histogram),
        }
    summary.update(extra or {})
    summary["timings"] = {
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "seconds": round(finished_at - started_at, 3),
    }
    # Locations may carry credentials (https://user:token@...): never write them out.
    summary["model"] = redact_value(spec.model)
    summary["inputs"] = [redact_value(i) for i in inputs]
    summary["output"] = redact_value(spec.output)
    summary["options"] = dict(spec.options)
    from clipbeam.transforms.encoder import clipbeam_version

    summary["clipbeam_version"] = clipbeam_version()
    return summary


class SumStats(beam.CombineFn):
    """Adds :class:`UnitStats` up (an empty input gives all-zero stats, not no output)."""

    def create_accumulator(self) -> UnitStats:
        return UnitStats()

    def add_input(self, accumulator: UnitStats, element: UnitStats) -> UnitStats:
        return accumulator + element

    def merge_accumulators(self, accumulators: Iterable[UnitStats]) -> UnitStats:
        return sum(accumulators, UnitStats())

    def extract_output(self, accumulator: UnitStats) -> UnitStats:
        return accumulator


class _Write(beam.DoFn):
    """Writes the summary; side-input values arrive positionally, named by ``side_keys``."""

    def __init__(
        self,
        spec: JobSpec,
        inputs: Sequence[str],
        started_at: float,
        side_keys: Sequence[str],
        errors_schema: pa.Schema | None = None,
    ):
        self._spec = spec
        self._inputs = list(inputs)
        self._started_at = started_at
        self._side_keys = list(side_keys)
        self._errors_schema = errors_schema

    # No annotation on *side_values: Beam would read one as the type of a tuple of side inputs.
    def process(self, stats: UnitStats, *side_values) -> Iterable[str]:
        from clipbeam.transforms import storage

        if self._errors_schema is not None:
            from clipbeam.transforms.process import settle_errors

            # Before summary.json: once it exists, every output folder is complete.
            settle_errors(self._spec, self._errors_schema, stats.error_rows)
        summary = make_summary(
            self._spec,
            stats,
            inputs=self._inputs,
            started_at=self._started_at,
            finished_at=time.time(),
            extra=dict(zip(self._side_keys, side_values, strict=True)),
        )
        path = storage.join(self._spec.output, SUMMARY_FILE)
        storage.write_atomic(path, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
        yield path


class WriteSummary(beam.PTransform):
    """Sums unit stats and writes ``OUTPUT/summary.json``.

    Args:
        spec: the job.
        inputs: the ``--input`` patterns (recorded in the summary).
        started_at: launch time, seconds since the epoch.
        extras: named singleton side inputs whose values are added to the summary (e.g. the
            ``--top-fraction`` threshold).
        errors_schema: the schema of ``errors/`` files; when given, ``errors/`` is settled
            (:func:`clipbeam.transforms.process.settle_errors`) before the summary is written.

    The output is a one-element PCollection holding the summary's path.
    """

    def __init__(
        self,
        spec: JobSpec,
        inputs: Sequence[str],
        started_at: float,
        extras: Mapping[str, beam.pvalue.PCollection] | None = None,
        *,
        errors_schema: pa.Schema | None = None,
    ):
        super().__init__()
        self._spec = spec
        self._inputs = list(inputs)
        self._started_at = started_at
        self._extras = dict(extras or {})
        self._errors_schema = errors_schema

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        total = stats | "Sum" >> beam.CombineGlobally(SumStats())
        keys = list(self._extras)
        sides = [beam.pvalue.AsSingleton(self._extras[k]) for k in keys]
        return total | "Write" >> beam.ParDo(
            _Write(self._spec, self._inputs, self._started_at, keys, self._errors_schema), *sides
        )
