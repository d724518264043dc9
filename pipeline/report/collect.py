"""Reading a finished job's output folder into the :class:`~.data.ReportData` the page shows.

``summary.json`` and ``_job.json`` are read first; then the output files, once, streaming, and only
their small columns (never the embeddings): score statistics, the highest and lowest scored rows,
filter rejections by rule, zero-shot label counts and errors by type. The counts the files hold are
checked against ``summary.json``, and the example rows get their captions and thumbnails from the
input (:mod:`.inputs`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipbeam.pipeline.report.data import (
    Example,
    ReportData,
    ReportError,
    ScoreStats,
    reject_rules,
)
from clipbeam.pipeline.report.inputs import THUMBNAIL_SIDE, attach_inputs
from clipbeam.pipeline.summary import SUMMARY_FILE
from clipbeam.pipeline.validate import JOB_FILE
from clipbeam.transforms import storage
from clipbeam.transforms.spec import OUTPUT_DIRS

__all__ = ["DEFAULT_EXAMPLES", "ERROR_EXAMPLES", "collect", "read_errors"]

DEFAULT_EXAMPLES = 12
# Error rows listed per error type (all of them are counted).
ERROR_EXAMPLES = 5

_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
_BATCH_ROWS = 4096
# Output columns the report reads (besides the id column, always the first); never embeddings.
_LIGHT_COLUMNS = ("clip_score", "image_width", "image_height", "reject_reason", "labels")


def collect(
    output: str, *, examples: int = DEFAULT_EXAMPLES, thumbnail_side: int = THUMBNAIL_SIDE
) -> ReportData:
    """Reads a job's output folder (and, for thumbnails and captions, a few input rows).

    Args:
        output: the job's ``--output`` folder, local or ``gs://``.
        examples: rows shown per section (highest, lowest, rejected).
        thumbnail_side: longest side of the thumbnails, in pixels.

    Returns:
        What :func:`~.page.render` turns into the page.

    Raises:
        ReportError: ``output`` holds no ``summary.json`` (not a finished job) or an unreadable one.
    """
    if examples < 0:
        raise ValueError(f"examples must be non-negative (got {examples})")
    if thumbnail_side < 1:
        raise ValueError(f"thumbnail_side must be at least 1 pixel (got {thumbnail_side})")
    output = output.rstrip("/") or output
    summary = _read_json(output, SUMMARY_FILE, required=True)
    kind = summary.get("job")
    if kind == "search":
        from clipbeam.pipeline.report.search import collect_search

        job = _read_json(output, JOB_FILE, required=False)
        return collect_search(output, summary, job, examples, thumbnail_side, _ErrorReader())
    if kind == "dedup":  # rows written by cluster, not by input unit: a page of its own
        from clipbeam.pipeline.report.dedup import dedup_report_data

        job = _read_json(output, JOB_FILE, required=False)
        return dedup_report_data(output, summary, job, examples, thumbnail_side)
    if kind not in OUTPUT_DIRS:
        raise ReportError(
            f"{storage.join(output, SUMMARY_FILE)} names job {kind!r}, expected one of "
            f"{', '.join([*OUTPUT_DIRS, 'search'])}; was it written by a different tool?"
        )
    job = _read_json(output, JOB_FILE, required=False)
    notes: list[str] = []

    reader = _OutputReader(kind, examples)
    file_rows: dict[str, int] = {}
    for folder in OUTPUT_DIRS[kind]:
        file_rows[folder] = reader.read_folder(output, folder)
    errors = _ErrorReader()
    file_rows["errors"] = errors.read(output)

    data = ReportData(
        output=output,
        summary=summary,
        job=job,
        score_name=reader.score_name,
        scores=reader.stats,
        best=reader.best.ranked(),
        worst=[],
        samples=reader.samples,
        rejected=reader.pick_rejected(),
        reject_rules=reader.reject_rules,
        label_counts=reader.label_counts,
        error_counts=errors.counts,
        error_examples=errors.examples,
        file_rows=file_rows,
        notes=notes,
    )
    if reader.below_cut.ranked():  # a score cut rejected rows: show both sides of it
        data.above_cut, data.below_cut = reader.above_cut.ranked(), reader.below_cut.ranked()
    # A small output puts a row among both the highest and the lowest: show it once.
    shown = {(e.file, e.id) for e in data.best}
    data.worst = [e for e in reader.worst.ranked() if (e.file, e.id) not in shown]
    notes.extend(_consistency(data))
    notes.extend(attach_inputs(data, thumbnail_side))
    return data


def _read_json(output: str, name: str, *, required: bool) -> dict[str, Any] | None:
    path = storage.join(output, name)
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        if not required:
            return None
        raise ReportError(
            f"{output} holds no {name}: pass the --output folder of a finished clipbeam job (the "
            f"job writes {name} when its last work unit is done)"
        ) from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ReportError(
            f"{path} is not valid JSON ({exc}); rerun the job to rewrite it"
        ) from None
    if not isinstance(value, dict):
        raise ReportError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def _part_files(output: str, folder: str) -> list[str]:
    """The unit files of one output folder, sorted (markers and temporary files left out)."""
    paths = storage.list_files(storage.join(output, folder))
    return [p for p in paths if _PART.match(p.rsplit("/", 1)[-1])]


class _Ranked:
    """The ``n`` examples with the highest (``sign=1``) or lowest (``sign=-1``) scores, kept
    while streaming; ties go to the row read first, so the choice is deterministic."""

    def __init__(self, n: int, sign: int):
        self.n = n
        self.sign = sign
        self._items: list[tuple[float, int, Example]] = []

    def add(self, scores: np.ndarray, first_seq: int, make: Callable[[int], Example]) -> None:
        valid = np.flatnonzero(~np.isnan(scores))
        if self.n == 0 or len(valid) == 0:
            return
        keys = -self.sign * scores[valid].astype(np.float64)
        order = valid[np.argsort(keys, kind="stable")[: self.n]]
        self._items += [
            (-self.sign * float(scores[i]), first_seq + int(i), make(int(i))) for i in order
        ]
        self._items.sort(key=lambda item: item[:2])
        del self._items[self.n :]

    def ranked(self) -> list[Example]:
        return [example for _, _, example in self._items]


_SCORE_RULES = ("min_score", "top_fraction")


def _score_rule(reason: list[str] | str | None) -> bool:
    """Whether a row's reject reason names a score cut (--min-score, --top-fraction)."""
    return any(rule in _SCORE_RULES for rule in reject_rules(reason))


class _OutputReader:
    """Streams the unit files of a job's output folders, keeping only what the page shows."""

    def __init__(self, kind: str, examples: int):
        self.kind = kind
        self.examples = examples
        self.score_name: str | None = None
        self.stats = ScoreStats()
        self.best = _Ranked(examples, 1)
        self.worst = _Ranked(examples, -1)
        # Either side of a score cut: the lowest kept, the highest rejected by the score rule.
        self.above_cut = _Ranked(examples, -1)
        self.below_cut = _Ranked(examples, 1)
        self.samples: list[Example] = []
        self.reject_rules: Counter[str] = Counter()
        self._rejected_by_rule: dict[str, list[Example]] = {}
        self.label_counts: Counter[str] = Counter()
        self._seq = 0

    def read_folder(self, output: str, folder: str) -> int:
        """Reads every unit file of ``folder``; returns its number of rows."""
        rows = 0
        for path in _part_files(output, folder):
            with storage.open_input(path) as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                columns = [names[0], *(c for c in _LIGHT_COLUMNS if c in names)]
                if "labels" in names:
                    columns.append("probabilities")
                for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                    self._add(folder, path.rsplit("/", 1)[-1], pa.Table.from_batches([batch]))
                    rows += batch.num_rows
        return rows

    def _add(self, folder: str, file: str, table: pa.Table) -> None:
        first_seq = self._seq
        self._seq += table.num_rows
        ids = table.column(0)
        rest = table.drop_columns([table.column_names[0]])

        def make(i: int, score: float | None = None) -> Example:
            values = {name: rest.column(name)[i].as_py() for name in rest.column_names}
            if score is None and "clip_score" in values:
                score = values["clip_score"]
            return Example(ids[i].as_py(), folder, file, score, values)

        scores = None
        if "clip_score" in table.column_names:
            self.score_name = "clip_score"
            scores = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float32)
            self.stats.add(folder, scores[~np.isnan(scores)])
        elif "labels" in table.column_names:
            # Classify has no image-text score: rank rows by their top label's probability.
            self.score_name = "top-1 probability"
            top = pc.list_element(table.column("probabilities"), 0)
            scores = top.to_numpy(zero_copy_only=False).astype(np.float32)
            labels = pc.list_element(table.column("labels"), 0).to_pylist()
            self.label_counts.update(label for label in labels if label is not None)

        if scores is not None:

            def scored(i: int) -> Example:
                return make(i, float(scores[i]))

            self.best.add(scores, first_seq, scored)
            self.worst.add(scores, first_seq, scored)
            if folder == "kept":
                self.above_cut.add(scores, first_seq, scored)
            elif folder == "rejected" and "reject_reason" in table.column_names:
                reasons = table.column("reject_reason").to_pylist()
                by_score = np.array([_score_rule(r) for r in reasons], dtype=bool)
                self.below_cut.add(np.where(by_score, scores, np.nan), first_seq, scored)
        elif len(self.samples) < self.examples:
            take = min(table.num_rows, self.examples - len(self.samples))
            self.samples += [make(i) for i in range(take)]

        if folder == "rejected" and "reject_reason" in table.column_names:
            for i, reason in enumerate(table.column("reject_reason").to_pylist()):
                for rule in reject_rules(reason):
                    self.reject_rules[rule] += 1
                    picked = self._rejected_by_rule.setdefault(rule, [])
                    if len(picked) < self.examples:
                        picked.append(make(i))

    def pick_rejected(self) -> list[Example]:
        """Up to ``examples`` rejected rows, taking rules in turn so each rule gets examples;
        sorted by score, highest first."""
        queues = [list(self._rejected_by_rule[rule]) for rule, _ in self.reject_rules.most_common()]
        picked: list[Example] = []
        seen: set[tuple[str, Any]] = set()
        while queues and len(picked) < self.examples:
            for queue in queues:
                while queue:
                    example = queue.pop(0)
                    if (example.file, example.id) not in seen:
                        seen.add((example.file, example.id))
                        picked.append(example)
                        break
                if len(picked) == self.examples:
                    break
            queues = [q for q in queues if q]
        # Highest score first: the rows nearest a score cut, where its threshold is judged.
        picked.sort(key=lambda e: -math.inf if e.score is None else e.score, reverse=True)
        return picked


class _ErrorReader:
    """Counts ``errors/`` rows by type and keeps the first few of each type."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def read(self, output: str) -> int:
        rows = 0
        for path in _part_files(output, "errors"):
            with storage.open_input(path) as f:
                parquet = pq.ParquetFile(f)
                for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
                    table = pa.Table.from_batches([batch])
                    kinds = [k or "unknown" for k in table.column("error_type").to_pylist()]
                    self.counts.update(kinds)
                    # Only rows still needed as examples are converted to Python.
                    for i, kind in enumerate(kinds):
                        listed = self.examples.setdefault(kind, [])
                        if len(listed) < ERROR_EXAMPLES:
                            row = table.slice(i, 1).to_pylist()[0]
                            listed.append({**row, "id": row[table.column_names[0]]})
                    rows += table.num_rows
        return rows


def read_errors(output: str) -> tuple[Counter[str], dict[str, list[dict[str, Any]]], int]:
    """``errors/`` of ``output``: rows per type, the first rows of each type, rows in all."""
    errors = _ErrorReader()
    rows = errors.read(output)
    return errors.counts, errors.examples, rows


def _consistency(data: ReportData) -> list[str]:
    """Differences between the files on disk and ``summary.json`` (a folder changed later)."""
    summary = data.summary
    expected = {"errors": summary.get("error_rows")}
    if data.kind == "filter":
        expected |= {"kept": summary.get("kept"), "rejected": summary.get("rejected")}
    else:
        expected[OUTPUT_DIRS[data.kind][0]] = summary.get("output_rows")
    notes = [
        f"{folder}/ holds {found:,} rows but summary.json counts {expected[folder]:,}: the folder "
        "was changed after the job ran, or holds files of another run"
        for folder, found in data.file_rows.items()
        if isinstance(expected.get(folder), int) and found != expected[folder]
    ]
    histogram = summary.get("clip_score_histogram")
    if histogram and data.scores.coarse:
        found = sum(data.scores.coarse.values())
        if list(found) != list(histogram.get("counts", [])):
            notes.append(
                "the clip_score values in the output files do not add up to summary.json's "
                "histogram: the files were changed after the job ran"
            )
    return notes
