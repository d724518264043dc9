"""The report of a ``clipbeam dedup`` output: duplicate groups with thumbnails, removed share
by eps.

``dedup/`` is streamed once, reading only its small columns (``max_similarity``,
``duplicate_of``, ``exact_duplicate_of``, the first ``keep_eps_*``). Of the rows removed at the
first ``--eps`` as semantic duplicates, the ones with the *lowest* ``max_similarity`` are kept:
the borderline cases a curator must look at to judge the threshold. They are shown as groups,
the row each was found a duplicate of (``duplicate_of``: the earlier-ranked row SemDeDup keeps
it against) next to what it removed, lowest similarity first. The removed share is counted
exactly, for the run's own ``--eps`` (``summary.json``) and for a grid of others (the stored
similarities answer any eps: a row goes at ``eps`` when ``max_similarity >= 1 - eps``).

Thumbnails: the rows are found back in the job's inputs by id (the id column is read in full,
the images of the shown rows only), when the job had an image column.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clipbeam.pipeline.report.data import Example, ReportData
from clipbeam.transforms import storage

__all__ = ["EPS_GRID", "DedupGroup", "DedupView", "collect_dedup"]

# The eps the removed-share table shows besides the run's own (cosine 0.999 ... 0.8).
EPS_GRID = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
_BATCH_ROWS = 8192
_FOLDER = "dedup"


@dataclass
class DedupGroup:
    """One kept row and the rows removed as its duplicates, lowest similarity first.

    Attributes:
        kept: the row the others are duplicates of (``duplicate_of``).
        removed: the removed rows; each :attr:`Example.score` is its ``max_similarity``.
    """

    kept: Example
    removed: list[Example]

    @property
    def lowest(self) -> float:
        return min(e.score for e in self.removed)  # type: ignore[type-var]


@dataclass
class DedupView:
    """What the page shows of a dedup output.

    Attributes:
        rows: rows in ``dedup/``.
        first_eps: the run's first ``--eps`` (the one ``duplicates/`` lists), as text.
        run_eps: ``(eps, removed)`` of every ``--eps`` of the run (``summary.json``).
        curve: ``(eps, removed)`` for :data:`EPS_GRID` and the run's eps, counted from the
            stored similarities (exact copies counted at every eps).
        exact: rows removed as byte-identical copies.
        against_removed: rows removed as near a reference row (``--against``).
        groups: borderline duplicate groups, lowest similarity first.
    """

    rows: int = 0
    first_eps: str = ""
    run_eps: list[tuple[str, int]] = field(default_factory=list)
    curve: list[tuple[float, int]] = field(default_factory=list)
    exact: int = 0
    against_removed: int = 0
    groups: list[DedupGroup] = field(default_factory=list)

    def examples(self) -> list[Example]:
        return [e for g in self.groups for e in (g.kept, *g.removed)]


def collect_dedup(
    output: str,
    summary: dict[str, Any],
    job: dict[str, Any] | None,
    examples: int,
    thumbnail_side: int,
) -> tuple[DedupView, int, list[str]]:
    """Reads ``dedup/`` of ``output``; returns ``(view, rows read, notes)``."""
    run_eps = list((summary.get("eps") or {}).items())
    view = DedupView(
        first_eps=run_eps[0][0] if run_eps else "",
        run_eps=[(e, int(counts.get("removed", 0))) for e, counts in run_eps],
        against_removed=int(summary.get("against_removed") or 0),
    )
    grid = sorted({*EPS_GRID, *(float(e) for e, _ in run_eps)})
    removed_at = np.zeros(len(grid), dtype=np.int64)
    # (similarity, sequence, id, duplicate_of): the lowest-similarity removed rows, bounded
    pairs: list[tuple[float, int, Any, Any]] = []
    keep = 3 * examples
    column = f"keep_eps_{view.first_eps}"
    paths = [
        p
        for p in storage.list_files(storage.join(output, _FOLDER))
        if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(("_", "."))
    ]
    for path in paths:
        with storage.open_input(path) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            wanted = ["max_similarity", "duplicate_of", "exact_duplicate_of"]
            if column in names:
                wanted.append(column)
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[names[0], *wanted]):
                sim = batch.column("max_similarity").to_numpy(zero_copy_only=False)
                sim = np.where(np.isnan(sim.astype(np.float64)), -np.inf, sim)
                exact = batch.column("exact_duplicate_of").is_valid().to_numpy(zero_copy_only=False)
                view.exact += int(exact.sum())
                for k, eps in enumerate(grid):
                    removed_at[k] += int((sim >= 1.0 - eps).sum()) + int(exact.sum())
                if column in names:
                    gone = ~batch.column(column).to_numpy(zero_copy_only=False) & ~exact
                    gone &= batch.column("duplicate_of").is_valid().to_numpy(zero_copy_only=False)
                    chosen = np.flatnonzero(gone)
                    chosen = chosen[np.argsort(sim[chosen], kind="stable")[:keep]]
                    ids = batch.column(0)
                    targets = batch.column("duplicate_of")
                    for i in chosen.tolist():
                        item = (float(sim[i]), view.rows + i, ids[i].as_py(), targets[i].as_py())
                        bisect.insort(pairs, item, key=lambda p: p[:2])
                    del pairs[keep:]
                view.rows += batch.num_rows
    view.curve = list(zip(grid, removed_at.tolist(), strict=True))
    view.groups = _groups(pairs, examples)
    notes = _attach_images(view, job, thumbnail_side) if view.groups else []
    return view, view.rows, notes


def _groups(pairs: list[tuple[float, int, Any, Any]], examples: int) -> list[DedupGroup]:
    """Up to ``examples`` groups of the lowest-similarity pairs, lowest first."""
    groups: dict[Any, DedupGroup] = {}
    for similarity, _, row_id, target in pairs:
        group = groups.get(target)
        if group is None:
            if len(groups) == examples:
                continue
            group = groups[target] = DedupGroup(Example(target, _FOLDER, ""), [])
        group.removed.append(Example(row_id, _FOLDER, "", similarity))
    return list(groups.values())


def _attach_images(view: DedupView, job: dict[str, Any] | None, side: int) -> list[str]:
    """Thumbnails of the shown rows, found by id in the job's inputs."""
    from clipbeam.pipeline.report.inputs import read_rows_by_id
    from clipbeam.transforms.units import plan_units

    shown = view.examples()
    if job is None or job.get("image_column") is None:
        for example in shown:
            example.note = "no image column"
        return [] if job is not None else ["no thumbnails: _job.json is missing"]
    try:
        units = plan_units(job.get("inputs") or [])
    except (FileNotFoundError, ValueError, OSError) as exc:
        return [f"no thumbnails: the job's inputs cannot be read any more ({exc})"]
    missing = read_rows_by_id(units, shown, job, side)
    if missing:
        return [f"{missing} of {len(shown)} shown rows were not found in the inputs any more"]
    return []


def dedup_report_data(
    output: str,
    summary: dict[str, Any],
    job: dict[str, Any] | None,
    examples: int,
    thumbnail_side: int,
) -> ReportData:
    """The page's content for a dedup output (the per-row sections left empty)."""
    from collections import Counter

    from clipbeam.pipeline.report.collect import read_errors
    from clipbeam.pipeline.report.data import ScoreStats

    view, rows, notes = collect_dedup(output, summary, job, examples, thumbnail_side)
    error_counts, error_examples, error_rows = read_errors(output)
    if isinstance(summary.get("output_rows"), int) and rows != summary["output_rows"]:
        notes.insert(
            0,
            f"dedup/ holds {rows:,} rows but summary.json counts {summary['output_rows']:,}: the "
            "folder was changed after the job ran, or holds files of another run",
        )
    return ReportData(
        output=output,
        summary=summary,
        job=job,
        score_name=None,
        scores=ScoreStats(),
        best=[],
        worst=[],
        samples=[],
        rejected=[],
        reject_rules=Counter(),
        label_counts=Counter(),
        error_counts=error_counts,
        error_examples=error_examples,
        file_rows={_FOLDER: rows, "errors": error_rows},
        notes=notes,
        dedup=view,
    )
