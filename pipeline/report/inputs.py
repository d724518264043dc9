"""Joining a report's example rows back to the job's input: their captions and thumbnails.

Output rows carry ids, not images. An output file ``part-FFFFF-GGGGG.parquet`` holds the rows of
one work unit (input file ``FFFFF`` of the sorted input listing, row group ``GGGGG``), and inside
that row group a row is found by its id (``--id-column``) or by the row number in its default
``"<file>:<row>"`` id. The inputs and columns come from the launcher's ``_job.json``. Only the few
example rows are read back, a row group at a time in small batches, so the cost does not grow with
the dataset.
"""

from __future__ import annotations

import base64
import io
import posixpath
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from clipbeam.pipeline.report.data import Example, ReportData
from clipbeam.pipeline.validate import JOB_FILE
from clipbeam.transforms import storage
from clipbeam.transforms.errors import RowError
from clipbeam.transforms.units import WorkUnit, plain_batch, plain_schema, plan_units

__all__ = ["THUMBNAIL_SIDE", "attach_inputs", "read_rows_by_id", "thumbnail_uri"]

THUMBNAIL_SIDE = 160
_ID_BATCH_ROWS = 4096
_IMAGE_BATCH_ROWS = 64  # image cells are large: read them back in small batches


def attach_inputs(data: ReportData, thumbnail_side: int) -> list[str]:
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


def read_rows_by_id(
    units: list[WorkUnit], examples: list[Example], job: dict[str, Any], side: int
) -> int:
    """Fills in the thumbnails (and captions) of ``examples`` from whichever units hold their
    ids, for outputs whose rows do not say their input unit (dedup writes rows by cluster).

    Every unit's id column is read; the images of the found rows only.

    Returns:
        How many examples were found in no unit (each gets a note).
    """
    id_column = job.get("id_column")
    remaining = list(examples)
    for unit in units:
        if not remaining:
            break
        if id_column is None:
            here = [e for e in remaining if _default_id_row(e.id, unit) is not None]
        else:
            with storage.open_input(unit.path) as f:
                parquet = pq.ParquetFile(f)
                if id_column not in parquet.schema_arrow.names:
                    continue
                ids = {e.id for e in remaining}
                present = _id_positions(parquet, unit.row_group, id_column, ids)
            here = [e for e in remaining if e.id in present]
        if here:
            try:
                _read_unit_rows(unit, here, job, side)
            except (OSError, ValueError) as exc:  # unreadable file, changed schema
                for example in here:
                    example.note = f"cannot read {unit.path}: {exc}"
            found = {id(e) for e in here}
            remaining = [e for e in remaining if id(e) not in found]
    for example in remaining:
        example.note = "not found in the inputs"
    return len(remaining)


def _read_unit_rows(
    unit: WorkUnit, examples: list[Example], job: dict[str, Any], side: int
) -> None:
    """Reads the image and caption of ``examples`` (all from ``unit``) from the input file."""
    from clipbeam.transforms.images import load_image, resolve_image_format

    image_column, text_column = job.get("image_column"), job.get("text_column")
    id_column = job.get("id_column")
    with storage.open_input(unit.path) as f:
        parquet = pq.ParquetFile(f)
        # As a job reads them: view, large and dictionary-encoded columns in their plain types.
        schema = plain_schema(parquet.schema_arrow)
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
            batch = plain_batch(batch)
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
        batch_size=_ID_BATCH_ROWS, row_groups=[row_group], columns=[id_column]
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
