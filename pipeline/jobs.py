"""The shape of a clipbeam job as a Beam pipeline.

::

    Create(units) -> Reshuffle -> ProcessUnits(spec) ----------------------> UnitStats -> summary
    (filter --top-fraction:)
    Create(units) -> Reshuffle -> StageScores -> scores -> ApproximateQuantiles -> cut
                                       |                                     PersistCut (stored,
                                       |                                      or an earlier run's)
                                       |                                           | (side input)
                                       +-> UnitStats    units -> SelectStaged <----+ -> UnitStats
                                                                  +-> all split: drop _staging/
                                                                  both passes' UnitStats -> summary

Work units are planned on the launcher (:mod:`clipbeam.pipeline.validate`); each is processed on its
own, so one explicit ``Reshuffle`` spreads them over workers (``Create``'s own reshuffle is turned
off: two would shuffle twice). The summary and the metrics counters come from the same per-unit
stats. Before ``summary.json`` is written, ``errors/`` gets an empty file if the job had no error
rows (:func:`clipbeam.transforms.process.settle_errors`), so every job's ``errors/`` reads as a
table.
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from clipbeam.pipeline.summary import WriteSummary
from clipbeam.pipeline.validate import LaunchPlan
from clipbeam.transforms.process import (
    ProcessUnits,
    SelectStaged,
    StageScores,
    drop_staging,
    persist_threshold,
    top_fraction_threshold,
)
from clipbeam.transforms.rows import error_schema

__all__ = ["build_job"]


def build_job(
    pipeline: beam.Pipeline, plan: LaunchPlan, inputs: Sequence[str], *, started_at: float
) -> beam.PCollection:
    """Adds a validated job to ``pipeline``.

    Args:
        pipeline: the pipeline to build on.
        plan: the validated job and its work units.
        inputs: the ``--input`` patterns (recorded in the summary).
        started_at: launch time, seconds since the epoch (for the summary's timings).

    Returns:
        A one-element PCollection with the path of ``summary.json``, written when every unit is
        done.
    """
    spec = plan.spec
    units = pipeline | "PlanUnits" >> beam.Create(plan.units, reshuffle=False)
    units = units | "SpreadUnits" >> beam.Reshuffle()
    extras: dict[str, beam.PCollection] = {}
    if spec.kind == "filter" and spec.top_fraction is not None:
        # Composed here rather than through ProcessUnits so the cut lands in the summary.
        staged = units | "ScoreAndStage" >> StageScores(spec)
        threshold = top_fraction_threshold(staged["scores"], spec.top_fraction)
        # A resumed run splits by the cut its first run stored, so that one output has one cut.
        threshold = persist_threshold(threshold, spec)
        # The side input also orders the passes: no unit is split before every unit is staged.
        selected = units | "SplitStaged" >> SelectStaged(spec, beam.pvalue.AsSingleton(threshold))
        drop_staging(selected, spec)  # once every unit is split; a resume needs none of it
        stats = (staged["stats"], selected) | "BothPasses" >> beam.Flatten()
        extras["top_fraction_threshold"] = threshold
    else:
        stats = units | "Process" >> ProcessUnits(spec)
    return stats | "Summary" >> WriteSummary(
        spec, inputs, started_at, extras, errors_schema=error_schema(spec, plan.schema)
    )
