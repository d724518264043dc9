"""The report of a ``clipbeam search`` output: per query, its best and its borderline results.

``results/query-NNNNN.parquet`` holds one query's kept rows, ranked; the page shows the first few
(the best) and the last few (the borderline ones: the lowest similarity kept, where a larger
``--top-k`` or a lower ``--min-similarity`` would go on), each row once. Thumbnails come from an
image column of the results (a ``--keep-columns image``), else from the rows of the job's
``--keep-from`` or ``--input`` files that hold an image column, found by id (their id column is
read, then only the shown rows' images); an input without images gives cards without
thumbnails. A kept text column (``caption``...) is the card's caption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clipbeam.pipeline.report.data import Example, ReportData, ScoreStats
from clipbeam.transforms import storage
from clipbeam.transforms.units import plain_schema

__all__ = ["QueryResults", "collect_search"]

RESULTS_DIR = "results"
_IMAGE_NAMES = ("image", "jpg", "img", "image_bytes")


@dataclass
class QueryResults:
    """One query's section of the page.

    Attributes:
        query: the query text, or the query image's id or file name.
        count: rows kept for the query.
        matches: rows at or above ``--min-similarity`` (``None`` without it).
        capped: the query reached ``--max-results-per-query``.
        best: its first results, best first.
        borderline: its last results (the lowest similarity kept), lowest first; none of
            :attr:`best`.
    """

    query: str
    count: int
    matches: int | None = None
    capped: bool = False
    best: list[Example] = field(default_factory=list)
    borderline: list[Example] = field(default_factory=list)


def collect_search(
    output: str,
    summary: dict[str, Any],
    job: dict[str, Any] | None,
    examples: int,
    thumbnail_side: int,
    errors: Any,
) -> ReportData:
    """A search output folder -> :class:`ReportData` with :attr:`ReportData.queries` set.

    Args:
        errors: the collect module's error reader (``read(output)``, ``counts``, ``examples``).
    """
    per_query = max(1, min(examples, 6))
    sections, rows, texts, images = _read_results(output, summary, per_query)
    file_rows = {RESULTS_DIR: rows, "errors": errors.read(output)}
    data = ReportData(
        output=output,
        summary=summary,
        job=job,
        score_name="similarity",
        scores=ScoreStats(),
        best=[],
        worst=[],
        samples=[],
        rejected=[],
        reject_rules=Counter(),
        label_counts=Counter(),
        error_counts=errors.counts,
        error_examples=errors.examples,
        file_rows=file_rows,
        notes=[],
        queries=sections,
    )
    if rows != summary.get("result_rows", rows):
        data.notes.append(
            f"results/ holds {rows:,} rows but summary.json counts {summary['result_rows']:,}: "
            "the folder was changed after the job ran"
        )
    shown = [e for s in sections for e in (*s.best, *s.borderline)]
    for example in shown:
        if texts:
            example.caption = example.values.get(texts[0])
    if images:
        _thumbnails_from_results(shown, images[0], thumbnail_side)
    elif shown:
        data.notes.extend(_thumbnails_from_inputs(shown, job, thumbnail_side))
    return data


def _read_results(
    output: str, summary: dict[str, Any], per_query: int
) -> tuple[list[QueryResults], int, list[str], list[str]]:
    """Every query's section, the rows read, and the kept text and image columns."""
    paths = sorted(
        p for p in storage.list_files(storage.join(output, RESULTS_DIR)) if p.endswith(".parquet")
    )
    matches = summary.get("matches_per_query") or {}
    capped = set(summary.get("capped_queries") or [])
    sections, rows = {}, 0
    texts: list[str] = []
    images: list[str] = []
    for path in paths:
        with storage.open_input(path) as f:
            table = pq.read_table(f)
        rows += table.num_rows
        schema = table.schema
        id_name = schema.field(2).name
        texts = [f.name for f in schema if f.name != "query" and pa.types.is_string(f.type)]
        texts = [n for n in texts if n != id_name]
        images = [f.name for f in schema if _is_image(f.type)]
        if table.num_rows == 0:
            continue
        records = table.sort_by("rank").to_pylist()
        query = records[0]["query"]
        file = path.rsplit("/", 1)[-1]

        def example(r: dict[str, Any], file: str = file, id_name: str = id_name) -> Example:
            values = {k: v for k, v in r.items() if k not in ("query", id_name)}
            return Example(
                id=r[id_name], folder=RESULTS_DIR, file=file, score=r["similarity"], values=values
            )

        best = [example(r) for r in records[:per_query]]
        rest = records[per_query:]
        borderline = [example(r) for r in reversed(rest[-per_query:])]
        sections[query] = QueryResults(
            query, len(records), matches.get(query), query in capped, best, borderline
        )
    ordered = []
    for query, count in (summary.get("results_per_query") or {}).items():
        ordered.append(sections.pop(query, None) or QueryResults(query, count, matches.get(query)))
    return ordered + list(sections.values()), rows, texts, images


def _is_image(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _thumbnails_from_results(shown: list[Example], column: str, side: int) -> None:
    from clipbeam.pipeline.report.inputs import thumbnail_uri
    from clipbeam.transforms.errors import RowError
    from clipbeam.transforms.images import decode_image

    for example in shown:
        cell = example.values.pop(column, None)
        if isinstance(cell, dict):
            cell = cell.get("bytes")
        try:
            example.thumbnail = thumbnail_uri(decode_image(cell, what=f"row {example.id}"), side)
        except RowError as exc:
            example.note = f"image not readable: {exc.error_type}"


def _thumbnails_from_inputs(
    shown: list[Example], job: dict[str, Any] | None, side: int
) -> list[str]:
    """Thumbnails from the first of ``--keep-from`` / ``--input`` with an image column."""
    from clipbeam.pipeline.report.inputs import _default_id_row, _id_positions, _read_unit_rows
    from clipbeam.transforms.units import plan_units

    if job is None:
        return ["no thumbnails: _job.json (naming the inputs) is missing from the output folder"]
    for patterns in (job.get("keep_from") or [], job.get("inputs") or []):
        if not patterns:
            continue
        try:
            units = plan_units(list(patterns))
        except (FileNotFoundError, ValueError, OSError) as exc:
            return [f"no thumbnails: the job's inputs cannot be read any more ({exc})"]
        with storage.open_input(units[0].path) as f:
            schema = plain_schema(pq.ParquetFile(f).schema_arrow)  # view/dictionary: plain
        named = [n for n in _IMAGE_NAMES if n in schema.names and _is_image(schema.field(n).type)]
        column = (named or [f.name for f in schema if _is_image(f.type)] or [None])[0]
        id_column = job.get("id_column")
        if column is None or (id_column is not None and id_column not in schema.names):
            continue
        reading = {"image_column": column, "text_column": None, "id_column": id_column}
        wanted: dict[Any, list[Example]] = {}
        for example in shown:
            wanted.setdefault(example.id, []).append(example)
        for unit in units:
            if not wanted:
                break
            if id_column is None:
                found = [i for i in wanted if _default_id_row(i, unit) is not None]
            else:
                with storage.open_input(unit.path) as f:
                    parquet = pq.ParquetFile(f)
                    found = list(_id_positions(parquet, unit.row_group, id_column, set(wanted)))
            group = [e for i in found for e in wanted.pop(i)]
            if group:
                _read_unit_rows(unit, group, reading, side)
        for group in wanted.values():
            for example in group:
                example.note = "id not found in the inputs"
        return []
    return []
