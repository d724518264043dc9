"""``clipbeam report DIR``: one self-contained HTML page about a finished job's output folder.

The page shows the job's counts (from ``summary.json``), the distribution of ``clip_score``, the
highest and lowest scored pairs with their captions and thumbnails, filter rejections by rule with
examples, zero-shot label counts, and errors by type. It needs no network to be viewed: styles are
inline, the histogram is inline SVG, thumbnails are small JPEG ``data:`` URIs, and a Content
Security Policy forbids the page from loading or running anything else. Every string that comes
from the data (captions, ids, labels, error messages) is HTML-escaped.

Output rows carry ids, not images, so thumbnails and captions are joined back to the input: an
output file ``part-FFFFF-GGGGG.parquet`` holds rows of one work unit (input file ``FFFFF`` of the
sorted input listing, row group ``GGGGG``), and inside that row group a row is found by its id
(``--id-column``) or by the row number in its default ``"<file>:<row>"`` id. The inputs and
columns come from the launcher's ``_job.json``. Only the few example rows are read back, a row
group at a time in small batches, so the cost does not grow with the dataset.

The output files themselves are read once, streaming, and only their small columns (never the
embeddings); the counts they hold are checked against ``summary.json``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import posixpath
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from clipbeam.pipeline.summary import SUMMARY_FILE, counter_names
from clipbeam.pipeline.validate import JOB_FILE
from clipbeam.transforms import storage
from clipbeam.transforms.errors import ERROR_TYPES, RowError
from clipbeam.transforms.spec import OUTPUT_DIRS
from clipbeam.transforms.stats import score_histogram
from clipbeam.transforms.units import WorkUnit, plan_units

__all__ = [
    "DEFAULT_EXAMPLES",
    "REPORT_FILE",
    "Example",
    "ReportData",
    "ReportError",
    "build_parser",
    "collect",
    "main",
    "render",
    "thumbnail_uri",
    "write_report",
]

REPORT_FILE = "report.html"
DEFAULT_EXAMPLES = 12
THUMBNAIL_SIDE = 160
# Error rows listed per error type (all of them are counted).
ERROR_EXAMPLES = 5

# The page's histogram is finer than summary.json's 0.1-wide bins, which would put typical CLIP
# scores (0.15 to 0.40) into three bars: scores are counted in 0.005-wide bins over [-1, 1] and
# the bars cover only the range that holds scores.
_FINE_BINS = 400
_MAX_BARS = 40
_REBIN_FACTORS = (1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 100, 200, 400)  # divisors of 400

_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
_BATCH_ROWS = 4096
_IMAGE_BATCH_ROWS = 64  # image cells are large: read them back in small batches
# Output columns the report reads (besides the id column, always the first); never embeddings.
_LIGHT_COLUMNS = ("clip_score", "image_width", "image_height", "reject_reason", "labels")


class ReportError(Exception):
    """The folder is not a finished clipbeam job's output, or the report cannot be written."""


# -- what the page shows -----------------------------------------------------------------------


@dataclass
class Example:
    """One output row shown on the page.

    Attributes:
        id: the row's id (its ``--id-column`` value, or ``"<file>:<row>"``).
        folder: the output folder holding the row (``scores``, ``kept``, ``rejected``...).
        file: the output file's name, ``part-FFFFF-GGGGG.parquet``.
        score: ``clip_score``, or the top label's probability for classify; ``None`` without.
        values: the row's other small output columns (``reject_reason``, ``labels``...).
        caption: the row's caption, read back from the input.
        thumbnail: the row's image as a small JPEG ``data:`` URI, read back from the input.
        note: why the caption or image could not be shown.
    """

    id: Any
    folder: str
    file: str
    score: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    thumbnail: str | None = None
    note: str | None = None


@dataclass
class ScoreStats:
    """Scores over every output row: exact count, mean and range, and fine histograms."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    # Per output folder: 400 bins over [-1, 1], and summary.json's 20 bins (for the check).
    fine: dict[str, np.ndarray] = field(default_factory=dict)
    coarse: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, folder: str, scores: np.ndarray) -> None:
        if len(scores) == 0:
            return
        self.count += len(scores)
        self.total += float(scores.sum(dtype=np.float64))
        self.low = min(self.low, float(scores.min()))
        self.high = max(self.high, float(scores.max()))
        bins = np.clip(
            np.floor((scores.astype(np.float64) + 1) / 2 * _FINE_BINS), 0, _FINE_BINS - 1
        )
        fine = np.bincount(bins.astype(np.int64), minlength=_FINE_BINS)
        coarse = np.asarray(score_histogram(scores))
        self.fine[folder] = self.fine.get(folder, 0) + fine
        self.coarse[folder] = self.coarse.get(folder, 0) + coarse

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass
class ReportData:
    """Everything the page shows, gathered by :func:`collect` and turned into HTML by
    :func:`render`.

    Attributes:
        output: the job's output folder.
        summary: ``summary.json``.
        job: ``_job.json`` (the job's spec and inputs), ``None`` when absent.
        score_name: what :attr:`Example.score` is (``"clip_score"``, ``"top-1 probability"``), or
            ``None`` when the job computed no score.
        scores: statistics of the scores in the output files.
        best: rows with the highest scores, highest first.
        worst: rows with the lowest scores, lowest first (none of :attr:`best`).
        samples: the first rows, for a job without scores.
        rejected: filter: rejected rows, spread over the rules that rejected them.
        reject_rules: filter: rows failing each rule (a row can fail several).
        label_counts: classify: rows per top-1 label.
        error_counts: error rows per ``error_type``.
        error_examples: a few error rows (as dicts) per ``error_type``.
        file_rows: rows found in each output folder's files.
        notes: problems found while reading (shown at the top of the page).
    """

    output: str
    summary: dict[str, Any]
    job: dict[str, Any] | None
    score_name: str | None
    scores: ScoreStats
    best: list[Example]
    worst: list[Example]
    samples: list[Example]
    rejected: list[Example]
    reject_rules: Counter[str]
    label_counts: Counter[str]
    error_counts: Counter[str]
    error_examples: dict[str, list[dict[str, Any]]]
    file_rows: dict[str, int]
    notes: list[str]

    @property
    def kind(self) -> str:
        return str(self.summary["job"])

    def examples(self) -> Iterator[Example]:
        """Every example on the page (a row may appear in two sections)."""
        yield from self.best
        yield from self.worst
        yield from self.samples
        yield from self.rejected


# -- reading the output folder -------------------------------------------------------------------


def collect(
    output: str, *, examples: int = DEFAULT_EXAMPLES, thumbnail_side: int = THUMBNAIL_SIDE
) -> ReportData:
    """Reads a job's output folder (and, for thumbnails and captions, a few input rows).

    Args:
        output: the job's ``--output`` folder, local or ``gs://``.
        examples: rows shown per section (highest, lowest, rejected).
        thumbnail_side: longest side of the thumbnails, in pixels.

    Returns:
        What :func:`render` turns into the page.

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
    if kind not in OUTPUT_DIRS:
        raise ReportError(
            f"{storage.join(output, SUMMARY_FILE)} names job {kind!r}, expected one of "
            f"{', '.join(OUTPUT_DIRS)}; was it written by a different tool?"
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
    # A small output puts a row among both the highest and the lowest: show it once.
    shown = {(e.file, e.id) for e in data.best}
    data.worst = [e for e in reader.worst.ranked() if (e.file, e.id) not in shown]
    notes.extend(_consistency(data))
    notes.extend(_attach_inputs(data, thumbnail_side))
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


class _OutputReader:
    """Streams the unit files of a job's output folders, keeping only what the page shows."""

    def __init__(self, kind: str, examples: int):
        self.kind = kind
        self.examples = examples
        self.score_name: str | None = None
        self.stats = ScoreStats()
        self.best = _Ranked(examples, 1)
        self.worst = _Ranked(examples, -1)
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
        elif len(self.samples) < self.examples:
            take = min(table.num_rows, self.examples - len(self.samples))
            self.samples += [make(i) for i in range(take)]

        if folder == "rejected" and "reject_reason" in table.column_names:
            for i, reason in enumerate(table.column("reject_reason").to_pylist()):
                for rule in (reason or "").split(","):
                    if not rule:
                        continue
                    self.reject_rules[rule] += 1
                    picked = self._rejected_by_rule.setdefault(rule, [])
                    if len(picked) < self.examples:
                        picked.append(make(i))

    def pick_rejected(self) -> list[Example]:
        """Up to ``examples`` rejected rows, taking rules in turn so each rule gets examples."""
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


# -- joining examples back to the input ----------------------------------------------------------


def _attach_inputs(data: ReportData, thumbnail_side: int) -> list[str]:
    """Fills in the captions and thumbnails of every example from the job's input files.

    Returns:
        Notes for the page when some examples could not be found.
    """
    examples = list(data.examples())
    if not examples:
        return []
    job = data.job
    if job is None:
        return [
            f"no thumbnails or captions: {JOB_FILE} (written by the launcher, naming the inputs "
            "and columns) is missing from the output folder"
        ]
    image_column, text_column = job.get("image_column"), job.get("text_column")
    if image_column is None and text_column is None:
        return []

    try:
        units = plan_units(job.get("inputs") or [])
    except (FileNotFoundError, ValueError, OSError) as exc:
        note = f"no thumbnails or captions: the job's inputs cannot be read any more ({exc})"
        for example in examples:
            example.note = "input not readable"
        return [note]
    by_name = {u.name: u for u in units}

    wanted: dict[str, list[Example]] = {}
    for example in examples:
        wanted.setdefault(example.file.removesuffix(".parquet"), []).append(example)
    for name, group in wanted.items():
        unit = by_name.get(name)
        if unit is None:
            for example in group:
                example.note = f"its input row group ({name}) is no longer in the inputs"
            continue
        try:
            _read_unit_rows(unit, group, job, thumbnail_side)
        except (OSError, ValueError) as exc:  # unreadable file, changed schema (ArrowInvalid)
            for example in group:
                example.note = f"cannot read {unit.path}: {exc}"
    missing = sum(1 for e in examples if e.note)
    if missing:
        return [
            f"{missing} of {len(examples)} examples could not be read back from the inputs "
            "(each says why): the inputs may have changed since the job ran"
        ]
    return []


def _read_unit_rows(
    unit: WorkUnit, examples: list[Example], job: dict[str, Any], side: int
) -> None:
    """Reads the image and caption of ``examples`` (all from ``unit``) from the input file."""
    from clipbeam.transforms.images import load_image, resolve_image_format

    image_column, text_column = job.get("image_column"), job.get("text_column")
    id_column = job.get("id_column")
    with storage.open_input(unit.path) as f:
        parquet = pq.ParquetFile(f)
        schema = parquet.schema_arrow
        needed = (image_column, text_column, id_column)
        if any(c is not None and c not in schema.names for c in needed):
            for example in examples:
                example.note = f"{unit.path} no longer has the job's columns"
            return

        # Row numbers within the row group: by id column, or from the default "<file>:<row>" id.
        rows: dict[int, list[Example]] = {}
        if id_column is not None:
            positions = _id_positions(parquet, unit.row_group, id_column, {e.id for e in examples})
        for example in examples:
            if id_column is not None:
                row = positions.get(example.id)
            else:
                row = _default_id_row(example.id, unit)
            if row is None:
                example.note = (
                    f"id {example.id!r} not found in {unit.path} row group {unit.row_group}"
                )
            else:
                rows.setdefault(row, []).append(example)
        if not rows:
            return

        image_format = None
        if image_column is not None:
            image_format = resolve_image_format(
                image_column, schema.field(image_column).type, job.get("image_format", "auto")
            )
        columns = [c for c in (image_column, text_column) if c is not None]
        start = 0
        for batch in parquet.iter_batches(
            batch_size=_IMAGE_BATCH_ROWS, row_groups=[unit.row_group], columns=columns
        ):
            for row in range(start, start + batch.num_rows):
                for example in rows.get(row, ()):
                    if text_column is not None:
                        example.caption = batch.column(text_column)[row - start].as_py()
                    if image_column is None:
                        continue
                    cell = batch.column(image_column)[row - start].as_py()
                    try:
                        image = load_image(
                            cell,
                            image_format,  # type: ignore[arg-type]
                            timeout=float(job.get("http_timeout") or 30.0),
                            base=posixpath.dirname(unit.path),
                        )
                    except RowError as exc:
                        example.note = f"image not readable: {exc}"
                        continue
                    example.thumbnail = thumbnail_uri(image, side)
            start += batch.num_rows


def _id_positions(
    parquet: pq.ParquetFile, row_group: int, id_column: str, ids: set[Any]
) -> dict[Any, int]:
    """Row numbers (within the row group) of ``ids``; the first row wins for a repeated id."""
    positions: dict[Any, int] = {}
    start = 0
    for batch in parquet.iter_batches(
        batch_size=_BATCH_ROWS, row_groups=[row_group], columns=[id_column]
    ):
        for i, value in enumerate(batch.column(0).to_pylist()):
            if value in ids and value not in positions:
                positions[value] = start + i
        start += batch.num_rows
    return positions


def _default_id_row(row_id: Any, unit: WorkUnit) -> int | None:
    """The row (within the unit's row group) of a default ``"<file>:<row>"`` id."""
    source, _, number = str(row_id).rpartition(":")
    if source != (unit.source_name or unit.path) or not number.isdigit():
        return None
    row = int(number) - unit.row_offset
    return row if 0 <= row < unit.num_rows else None


def thumbnail_uri(image: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """A small JPEG ``data:`` URI of ``image``, its longest side at most ``side`` pixels.

    Transparent images are put on white first (JPEG has no alpha, and a plain conversion would
    turn transparent pixels into whatever colour they hide).
    """
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    else:
        image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    # No chroma subsampling: at thumbnail size it would visibly smear coloured edges.
    image.save(buffer, format="JPEG", quality=80, subsampling=0, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the page ------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """HTML-escapes any value's text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { --fg: #1d2330; --muted: #5b6578; --line: #d9dee7; --bg: #f6f7f9; --card: #fff;
  --accent: #2f6fdb; --kept: #2e9e6a; --rejected: #d9822b; --error: #c4384a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans",
  "PingFang SC", "Microsoft YaHei", sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
h3 { font-size: 14px; margin: 16px 0 8px; color: var(--muted); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; overflow-wrap: anywhere; }
.muted { color: var(--muted); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 4px 18px 16px; margin-top: 16px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 10px 0 0; }
.meta dt { color: var(--muted); } .meta dd { margin: 0; overflow-wrap: anywhere; }
.notes { background: #fff6e5; border: 1px solid #f0c36d; border-radius: 8px; padding: 8px 16px;
  margin-top: 16px; } .notes li { margin: 4px 0; }
.counts { display: flex; flex-wrap: wrap; gap: 10px; }
.count { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 130px; }
.count .value { font-size: 22px; font-weight: 600; display: block; }
.count .name { color: var(--muted); font-size: 12px; }
.check { margin: 10px 0 0; } .ok { color: var(--kept); } .bad { color: var(--error); }
svg.histogram { width: 100%; max-width: 880px; height: auto; display: block; }
svg text { font-size: 11px; fill: var(--muted); }
.legend span { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 5px 8px;
  border-bottom: 1px solid var(--line); vertical-align: top; } th { color: var(--muted);
  font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #e7ecf5; border-radius: 3px; height: 12px; min-width: 120px; }
.bar > div { background: var(--accent); height: 12px; border-radius: 3px; }
.bar.rejected > div { background: var(--rejected); } .bar.error > div { background: var(--error); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
figure.card { margin: 0; border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
  background: var(--card); display: flex; flex-direction: column; }
.thumb { height: 160px; display: flex; align-items: center; justify-content: center;
  background: #eef1f5; }
.thumb img { width: 100%; height: 160px; object-fit: contain; display: block; }
.thumb .missing { color: var(--muted); font-size: 12px; padding: 8px; text-align: center; }
figcaption { padding: 8px 10px; display: flex; flex-direction: column; gap: 3px; }
.score { font-weight: 600; font-variant-numeric: tabular-nums; }
.caption { overflow-wrap: anywhere; display: -webkit-box; -webkit-line-clamp: 5;
  -webkit-box-orient: vertical; overflow: hidden; }
.tag { display: inline-block; background: #fde9d6; color: #8a4a0c; border-radius: 4px;
  padding: 0 6px; margin: 1px 4px 1px 0; font-size: 12px; }
details { margin-top: 10px; } summary { cursor: pointer; color: var(--accent); }
"""


def render(data: ReportData) -> str:
    """The report page for ``data``: one HTML document with everything inline."""
    kind = data.kind
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>clipbeam {_e(kind)} report: {_e(data.output)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        _header(data),
    ]
    if data.notes:
        items = "".join(f"<li>{_e(note)}</li>" for note in data.notes)
        parts.append(
            f'<div class="notes" id="notes"><strong>Warnings</strong><ul>{items}</ul></div>'
        )
    parts += [_counts(data), _scores(data)]
    if kind == "classify":
        parts.append(_labels(data))
    parts.append(_examples(data))
    if kind == "filter":
        parts.append(_rejections(data))
    parts += [_errors(data), _options(data), "</main></body></html>\n"]
    return "\n".join(p for p in parts if p)


def _header(data: ReportData) -> str:
    summary = data.summary
    timings = summary.get("timings") or {}
    rows = [
        ("output", data.output),
        ("model", summary.get("model", "")),
        ("inputs", ", ".join(summary.get("inputs") or [])),
        ("started", timings.get("started_at", "")),
        ("finished", timings.get("finished_at", "")),
        ("clipbeam", summary.get("clipbeam_version", "")),
    ]
    seconds = timings.get("seconds")
    if isinstance(seconds, (int, float)) and seconds > 0:
        rate = summary.get("input_rows", 0) / seconds
        rows.insert(5, ("duration", f"{seconds:,.1f} s ({rate:,.1f} rows/s)"))
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v != "")
    return f'<h1>clipbeam {_e(data.kind)} report</h1><dl class="meta">{meta}</dl>'


_COUNT_NAMES = {
    "input_rows": "input rows",
    "output_rows": "output rows",
    "error_rows": "error rows",
    "kept": "kept",
    "rejected": "rejected",
    "units": "work units",
    "resumed_units": "resumed units",
}


def _counts(data: ReportData) -> str:
    summary = data.summary
    cards = []
    for key in counter_names(data.kind):
        if key not in summary:
            continue
        cards.append(
            f'<div class="count"><span class="value" data-count="{_e(key)}">'
            f"{_e(_int(summary[key]))}</span>"
            f'<span class="name">{_e(_COUNT_NAMES.get(key, key))}</span></div>'
        )
    checks = []
    n_in, n_out, n_err = (summary.get(k) for k in ("input_rows", "output_rows", "error_rows"))
    if all(isinstance(v, int) for v in (n_in, n_out, n_err)):
        checks.append(("input rows = output rows + error rows", n_in == n_out + n_err))
    if data.kind == "filter" and isinstance(summary.get("kept"), int):
        balanced = n_in == summary["kept"] + summary.get("rejected", 0) + (n_err or 0)
        checks.append(("input rows = kept + rejected + error rows", balanced))
    lines = "".join(
        f'<div class="check {"ok" if ok else "bad"}">{"✓" if ok else "✗"} {_e(text)}</div>'
        for text, ok in checks
    )
    files = ", ".join(f"{folder}/ {rows:,} rows" for folder, rows in data.file_rows.items())
    return (
        f'<section id="counts"><h2>Counts</h2><div class="counts">{"".join(cards)}</div>{lines}'
        f'<p class="muted">In the output files: {_e(files)}.</p></section>'
    )


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _scores(data: ReportData) -> str:
    stats = data.scores
    if data.score_name != "clip_score" or stats.count == 0:
        if data.kind == "embed":
            why = (
                "This embed job computed no clip_score: it embedded only "
                f"{'images' if (data.job or {}).get('text_column') is None else 'texts'}, and "
                "a score needs both an image and a caption. There is no score histogram and no "
                "highest or lowest pairs; the first rows are shown instead."
            )
            if data.job is None:
                why = (
                    "This embed job computed no clip_score (it embedded only images or only "
                    "texts): there is no score histogram and no highest or lowest pairs."
                )
        elif data.kind == "classify":
            why = (
                "Zero-shot classification computes no image-text clip_score; rows are ranked by "
                "the probability of their top label instead."
            )
        else:
            why = "No row was scored (every row failed: see the errors below)."
        return (
            f'<section id="scores"><h2>Scores</h2><p class="muted" id="no-scores">{_e(why)}</p>'
            "</section>"
        )

    lines = []
    job = data.job or {}
    if data.kind == "filter" and job.get("min_score") is not None:
        lines.append(("--min-score", float(job["min_score"])))
    threshold = data.summary.get("top_fraction_threshold")
    if isinstance(threshold, (int, float)):
        lines.append(("--top-fraction cut", float(threshold)))
    folders = list(stats.fine)
    colours = {"kept": "var(--kept)", "rejected": "var(--rejected)"}
    svg = _histogram_svg(
        [(f, stats.fine[f], colours.get(f, "var(--accent)")) for f in folders], lines
    )
    legend = ""
    if len(folders) > 1:
        legend = (
            '<div class="legend">'
            + "".join(
                f'<span><i class="swatch" style="background:{colours.get(f, "var(--accent)")}"></i>'
                f"{_e(f)}</span>"
                for f in folders
            )
            + "</div>"
        )
    figures = (
        f"{stats.count:,} scored rows; mean {stats.mean:.4f}, lowest {stats.low:.4f}, highest "
        f"{stats.high:.4f}"
    )
    return (
        f'<section id="scores"><h2>clip_score distribution</h2><p>{_e(figures)}</p>{svg}{legend}'
        '<p class="muted">Cosine similarity of each pair\'s image and caption embeddings.</p>'
        "</section>"
    )


def _nice_step(span: float, ticks: int) -> float:
    """The smallest of 1, 2, 5 times a power of ten that cuts ``span`` into at most ``ticks``."""
    raw = span / ticks if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def _histogram_svg(
    series: Sequence[tuple[str, np.ndarray, str]], lines: Sequence[tuple[str, float]]
) -> str:
    """Stacked bars of fine score histograms, over the range that holds scores.

    Args:
        series: ``(name, 400 fine bin counts, colour)`` per stacked series.
        lines: ``(label, score)`` of vertical threshold lines.
    """
    total = sum(counts for _, counts, _ in series)
    nonzero = np.flatnonzero(total)
    first, last = int(nonzero[0]), int(nonzero[-1]) + 1
    for value in (v for _, v in lines):  # keep threshold lines inside the plotted range
        b = int(np.clip(math.floor((value + 1) / 2 * _FINE_BINS), 0, _FINE_BINS - 1))
        first, last = min(first, b), max(last, b + 1)
    factor = next(f for f in _REBIN_FACTORS if math.ceil(last / f) - first // f <= _MAX_BARS)
    lo, hi = first // factor, math.ceil(last / factor)
    bars = hi - lo
    binned = [
        (name, counts.reshape(-1, factor).sum(axis=1)[lo:hi], colour)
        for name, counts, colour in series
    ]
    bin_width = 2.0 / _FINE_BINS * factor
    x0, x1 = -1 + lo * bin_width, -1 + hi * bin_width
    y_step = max(1, round(_nice_step(int(sum(b for _, b, _ in binned).max()), 4)))
    y_top = y_step * max(1, math.ceil(int(sum(b for _, b, _ in binned).max()) / y_step))

    width, height, left, right, bottom, top = 760, 230, 50, 12, 28, 18
    plot_w, plot_h = width - left - right, height - bottom - top
    bar_w = plot_w / bars

    def x_of(score: float) -> float:
        return left + (score - x0) / (x1 - x0) * plot_w

    def y_of(count: float) -> float:
        return top + plot_h - plot_h * count / y_top

    out = [
        f'<svg class="histogram" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="clip_score histogram" xmlns="http://www.w3.org/2000/svg">'
    ]
    for count in range(0, y_top + 1, y_step):  # horizontal grid lines with counts
        y = y_of(count)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{count:,}</text>'
        )
    for i in range(bars):
        start = x0 + i * bin_width
        tooltip = [f"{start:.3f} to {start + bin_width:.3f}"]
        stacked = 0
        for name, counts, colour in binned:
            count = int(counts[i])
            tooltip.append(f"{name}: {count:,}")
            if count:
                y = y_of(stacked + count)
                out.append(
                    f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{y:.1f}" '
                    f'width="{max(bar_w - 1, 0.5):.1f}" height="{y_of(stacked) - y:.1f}" '
                    f'fill="{colour}"/>'
                )
                stacked += count
        # A transparent full-height target carries the tooltip for the whole bar.
        out.append(
            f'<rect x="{left + i * bar_w:.1f}" y="{top}" width="{bar_w:.1f}" height="{plot_h}" '
            f'fill="transparent"><title>{_e("; ".join(tooltip))}</title></rect>'
        )
    x_step = _nice_step(x1 - x0, 8)
    for k in range(math.ceil(x0 / x_step - 1e-9), math.floor(x1 / x_step + 1e-9) + 1):
        value = round(k * x_step, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        out.append(
            f'<text x="{x_of(value):.1f}" y="{height - 8}" text-anchor="middle">{value:g}</text>'
        )
    for label, value in lines:
        x = x_of(value)
        # Label on the side with room: right of the line, or left of it near the right edge.
        anchor, dx = ("end", -4) if x > left + 0.7 * plot_w else ("start", 4)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 8}" y2="{top + plot_h}" '
            f'stroke="#1d2330" stroke-dasharray="4 3"/>'
            f'<text x="{x + dx:.1f}" y="{top - 8}" text-anchor="{anchor}" '
            f'style="fill:#1d2330">{_e(label)} {value:.4f}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _labels(data: ReportData) -> str:
    if not data.label_counts:
        return ""
    total = sum(data.label_counts.values())
    most = max(data.label_counts.values())
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td class='num'>{count:,}</td>"
        f"<td class='num'>{count / total:.1%}</td><td>{_bar(count, most)}</td></tr>"
        for label, count in data.label_counts.most_common()
    )
    return (
        '<section id="labels"><h2>Top-1 labels</h2><table><tr><th>label</th><th>rows</th>'
        f"<th>share</th><th></th></tr>{rows}</table></section>"
    )


def _bar(value: int, most: int, kind: str = "") -> str:
    share = 100 * value / most if most else 0
    return f'<div class="bar {kind}"><div style="width:{share:.1f}%"></div></div>'


def _examples(data: ReportData) -> str:
    if data.samples:
        return _card_section(
            "samples", "First rows", data.samples, "The first output rows, in file order."
        )
    if not data.best:
        return ""
    if data.score_name == "top-1 probability":
        titles = ("Most confident", "Least confident")
    else:
        titles = ("Highest clip_score", "Lowest clip_score")
    sections = [_card_section("highest", titles[0], data.best, "")]
    if data.worst:
        sections.append(_card_section("lowest", titles[1], data.worst, ""))
    return "\n".join(sections)


def _card_section(id_: str, title: str, examples: Sequence[Example], intro: str) -> str:
    intro_html = f'<p class="muted">{_e(intro)}</p>' if intro else ""
    cards = "".join(_card(e) for e in examples)
    return (
        f'<section id="{_e(id_)}"><h2>{_e(title)}</h2>{intro_html}'
        f'<div class="cards">{cards}</div></section>'
    )


def _card(example: Example) -> str:
    picture = ""  # no image and no note: the job read no images (a text-only embed)
    if example.thumbnail:
        picture = f'<div class="thumb"><img src="{example.thumbnail}" alt="{_e(example.id)}"></div>'
    elif example.note:
        picture = f'<div class="thumb"><div class="missing">{_e(example.note)}</div></div>'
    lines = []
    if example.score is not None:
        name = "clip_score" if "clip_score" in example.values else "top-1 p"
        lines.append(f'<span class="score">{_e(name)} {example.score:.4f}</span>')
    reason = example.values.get("reject_reason")
    if reason:
        lines.append("".join(f'<span class="tag">{_e(r)}</span>' for r in reason.split(",")))
    labels, probabilities = example.values.get("labels"), example.values.get("probabilities")
    if labels:
        shown = ", ".join(
            f"{lab} {p:.2f}" for lab, p in zip(labels[:3], probabilities[:3], strict=True)
        )
        lines.append(f"<span>{_e(shown)}</span>")
    width, height = example.values.get("image_width"), example.values.get("image_height")
    if width and height:
        lines.append(f'<span class="muted">{width}×{height} px</span>')
    if example.caption is not None:
        lines.append(
            f'<span class="caption" title="{_e(example.caption)}">{_e(example.caption)}</span>'
        )
    lines.append(f'<span class="muted mono">{_e(example.id)}</span>')
    return f'<figure class="card">{picture}<figcaption>{"".join(lines)}</figcaption></figure>'


_RULES = {
    "min_score": "clip_score below --min-score",
    "top_fraction": "below the --top-fraction cut",
    "min_image_side": "shorter image side below --min-image-side",
    "max_aspect_ratio": "aspect ratio above --max-aspect-ratio",
    "min_text_chars": "caption shorter than --min-text-chars",
}


def _rejections(data: ReportData) -> str:
    total = data.summary.get("rejected", 0)
    if not data.reject_rules:
        return (
            f'<section id="rejected"><h2>Rejected</h2><p>{_e(_int(total))} rows rejected.</p>'
            "</section>"
        )
    most = max(data.reject_rules.values())
    rows = "".join(
        f"<tr><td><code>{_e(rule)}</code></td><td>{_e(_rule_text(rule))}</td>"
        f"<td class='num'>{count:,}</td><td>{_bar(count, most, 'rejected')}</td></tr>"
        for rule, count in data.reject_rules.most_common()
    )
    cards = "".join(_card(e) for e in data.rejected)
    return (
        f'<section id="rejected"><h2>Rejected</h2><p>{_e(_int(total))} rows rejected; a row can '
        "fail several rules.</p><table><tr><th>rule</th><th>meaning</th><th>rows</th><th></th>"
        f'</tr>{rows}</table><h3>Examples</h3><div class="cards">{cards}</div></section>'
    )


def _rule_text(rule: str) -> str:
    if rule.startswith("concept:"):
        return f"image too similar to the concept {rule.removeprefix('concept:')!r}"
    if rule.startswith(("min_head:", "max_head:")):
        bound, name = rule.split(":", 1)
        return f"head {name!r} {'below --min-head' if bound == 'min_head' else 'above --max-head'}"
    return _RULES.get(rule, "")


def _errors(data: ReportData) -> str:
    if not data.error_counts:
        return '<section id="errors"><h2>Errors</h2><p class="ok">No row failed.</p></section>'
    most = max(data.error_counts.values())
    rows, details = [], []
    for kind, count in data.error_counts.most_common():
        rows.append(
            f"<tr><td><code>{_e(kind)}</code></td><td>{_e(ERROR_TYPES.get(kind, ''))}</td>"
            f'<td class="num" data-error-count="{_e(kind)}">{count:,}</td>'
            f"<td>{_bar(count, most, 'error')}</td></tr>"
        )
        listed = "".join(
            f"<tr><td class='mono'>{_e(r['id'])}</td>"
            f"<td class='mono'>{_e(r.get('source_file'))}:{_e(r.get('row_number'))}</td>"
            f"<td>{_e(r.get('error_message'))}</td></tr>"
            for r in data.error_examples.get(kind, [])
        )
        details.append(
            f"<details><summary>{_e(kind)}: first {len(data.error_examples.get(kind, []))} of "
            f"{count:,}</summary><table><tr><th>id</th><th>input row</th><th>message</th></tr>"
            f"{listed}</table></details>"
        )
    return (
        '<section id="errors"><h2>Errors by type</h2><table><tr><th>error_type</th>'
        f"<th>meaning</th><th>rows</th><th></th></tr>{''.join(rows)}</table>{''.join(details)}"
        "</section>"
    )


def _options(data: ReportData) -> str:
    options = data.summary.get("options") or {}
    if not options:
        return ""
    rows = "".join(
        f"<tr><td><code>{_e(k)}</code></td>"
        f"<td class='mono'>{_e(json.dumps(v, ensure_ascii=False))}</td></tr>"
        for k, v in sorted(options.items())
    )
    return (
        '<section id="options"><h2>Options</h2><details><summary>the job\'s options as given'
        f"</summary><table>{rows}</table></details></section>"
    )


# -- entry points ----------------------------------------------------------------------------------


def write_report(
    output: str,
    destination: str | None = None,
    *,
    examples: int = DEFAULT_EXAMPLES,
    thumbnail_side: int = THUMBNAIL_SIDE,
) -> str:
    """Builds the report of a job's output folder and writes it.

    Args:
        output: the job's ``--output`` folder, local or ``gs://``.
        destination: where to write the page; ``OUTPUT/report.html`` by default.
        examples: rows shown per section.
        thumbnail_side: longest side of the thumbnails, in pixels.

    Returns:
        The path of the page.

    Raises:
        ReportError: the folder is not a finished job's output, or the page cannot be written.
    """
    data = collect(output, examples=examples, thumbnail_side=thumbnail_side)
    path = destination or storage.join(data.output, REPORT_FILE)
    try:
        storage.write_atomic(path, render(data).encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path}: {exc}") from None
    return path


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid ... value" messages
    return parse


def build_parser(prog: str = "clipbeam report") -> argparse.ArgumentParser:
    """The argument parser of ``clipbeam report``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Writes one self-contained HTML page (viewable offline) about a finished "
        "job's output folder: counts, score histogram, highest and lowest scored pairs with "
        "thumbnails, rejected examples with their reasons, errors by type.",
    )
    parser.add_argument("dir", metavar="DIR", help="the job's --output folder, local or gs://")
    parser.add_argument(
        "--out", metavar="FILE", help=f"where to write the page (default: DIR/{REPORT_FILE})"
    )
    parser.add_argument(
        "--examples",
        type=_at_least(0),
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"rows shown per section: highest, lowest, rejected (default: {DEFAULT_EXAMPLES})",
    )
    parser.add_argument(
        "--thumbnail-size",
        type=_at_least(16),
        default=THUMBNAIL_SIDE,
        metavar="PX",
        help=f"longest side of the thumbnails (default: {THUMBNAIL_SIDE})",
    )
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """``clipbeam report DIR``: writes the page and prints its path.

    Returns:
        0 on success, 2 when the folder is not a finished job's output or the page cannot be
        written (the reason is printed on one line).
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        path = write_report(
            args.dir, args.out, examples=args.examples, thumbnail_side=args.thumbnail_size
        )
    except ReportError as exc:
        print(f"clipbeam report: error: {exc}", file=sys.stderr)
        return 2
    print(f"clipbeam report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
