"""Work units: one (Parquet file, row group) each, planned on the launcher from an input pattern.

A unit is the grain of parallelism, of output files and of ``--resume``: each unit is read,
processed and written on its own, under a name derived from its file's position in the sorted
input listing and its row group number, so a rerun over the same input names every unit the same.

A name is only stable while the input set is: a unit's *identity* is its file (path, and the
version :func:`clipbeam.transforms.storage.file_version` reads: size plus modification time, or
the object's generation on ``gs://``) and its row group (:attr:`WorkUnit.identity`). The launcher
records the planned files (:func:`file_versions`) so that ``--resume`` can tell a changed input
set, and each unit's completion marker records its identity, so that a marker left by another
file is never taken for this unit's.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from clipbeam.transforms import storage

__all__ = [
    "WorkUnit",
    "file_versions",
    "input_root",
    "iter_batches",
    "plain_batch",
    "plain_schema",
    "plain_type",
    "plan_units",
    "reaches",
]

_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class WorkUnit:
    """One row group of one input Parquet file.

    Attributes:
        path: the file (local path or URL), as the input pattern matched it.
        row_group: row group number within the file.
        num_rows: rows in this row group.
        file_index: position of ``path`` in the sorted list of input files.
        row_offset: file-level number of this row group's first row.
        source_name: ``path`` relative to the input pattern's fixed prefix; row ids without an id
            column are ``"<source_name>:<row>"``, so they do not change when data moves between
            disk and a bucket.
        version: what the file was when planned (see
            :func:`clipbeam.transforms.storage.file_version`); empty when unknown.
    """

    path: str
    row_group: int
    num_rows: int
    file_index: int
    row_offset: int = 0
    source_name: str = ""
    version: str = ""

    @property
    def name(self) -> str:
        """The unit's deterministic output stem, ``part-<file_index:05d>-<row_group:05d>``."""
        return f"part-{self.file_index:05d}-{self.row_group:05d}"

    @property
    def identity(self) -> dict[str, object]:
        """What this unit is, whatever its position: file, file version, row group, rows."""
        return {
            "path": storage.absolute(self.path),  # however the input was spelled
            "version": self.version,
            "row_group": self.row_group,
            "num_rows": self.num_rows,
        }

    def row_id(self, row_in_group: int) -> str:
        """The default id of a row: ``"<source_name>:<file-level row number>"``."""
        return f"{self.source_name or self.path}:{self.row_offset + row_in_group}"


def input_root(pattern: str) -> str:
    """The directory part of ``pattern`` before its first glob character, ending with ``/``."""
    match = _GLOB.search(pattern)
    head = pattern[: match.start()] if match else pattern
    root = head.rsplit("/", 1)[0] + "/" if "/" in head else ""
    return root


def _source_name(path: str, root: str) -> str:
    if root and path.startswith(root):
        return path[len(root) :]
    return posixpath.basename(path.rstrip("/"))


def plan_units(pattern: str | Sequence[str]) -> list[WorkUnit]:
    """Expands input patterns into work units, reading only each file's footer.

    Args:
        pattern: a Parquet file, a glob (``data/*.parquet``, ``gs://b/d/**.parquet``) or a
            directory (all ``*.parquet`` files below it); or a list of these. Files matched by
            several patterns are used once.

    Returns:
        Units ordered by file, then row group. Row groups with no rows are left out.

    Raises:
        FileNotFoundError: a pattern matches no file.
        ValueError: a matched file is not a readable Parquet file.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns:
        raise FileNotFoundError("no input pattern given: pass --input with a file, glob or folder")
    named: dict[str, str] = {}
    for pat in patterns:
        paths = _expand(pat)
        if not paths:
            raise FileNotFoundError(
                f"input pattern {pat!r} matches no file. Check the path, or quote the glob so the "
                "shell does not expand it (e.g. --input 'data/*.parquet')."
            )
        root = input_root(pat) if _GLOB.search(pat) else _dir_root(pat, paths)
        for path in paths:
            named.setdefault(path, _source_name(path, root))

    units: list[WorkUnit] = []
    for file_index, path in enumerate(sorted(named)):
        metadata, version = _footer(path)
        offset = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if rows:
                unit = WorkUnit(path, group, rows, file_index, offset, named[path], version)
                units.append(unit)
            offset += rows
    return units


def file_versions(units: Iterable[WorkUnit]) -> dict[str, str]:
    """``{path: version}`` of the files the units come from (what ``_job.json`` records)."""
    return {u.path: u.version for u in units}


def reaches(pattern: str, path: str) -> bool:
    """Whether the input pattern ``pattern`` would take the Parquet file ``path`` as input.

    The same rules as :func:`plan_units`: a glob matches as Beam's globs do (``*`` within one
    folder level, ``**`` across levels), a folder takes every Parquet file below it, a file
    only itself; names starting with ``_`` or ``.`` below the pattern's fixed part are skipped.
    Local paths are compared absolute.
    """
    if storage.is_local(pattern) != storage.is_local(path):
        return False
    if storage.is_local(pattern):
        pattern, path = _absolute(pattern), _absolute(path)
    if _GLOB.search(pattern):
        from apache_beam.io.filesystem import FileSystem

        matched = re.match(FileSystem.translate_pattern(pattern), path) is not None
        return matched and not _hidden(path, input_root(pattern))
    if pattern.endswith(".parquet"):
        return pattern == path
    root = pattern.rstrip("/") + "/"
    return path.startswith(root) and path.endswith(".parquet") and not _hidden(path, root)


def _absolute(path: str) -> str:
    local = path[len("file://") :] if path.lower().startswith("file://") else path
    trailing = "/" if local.endswith("/") else ""
    return os.path.abspath(local) + trailing


def _expand(pattern: str) -> list[str]:
    if _GLOB.search(pattern):
        return sorted(p for p in storage.match(pattern) if not _hidden(p, input_root(pattern)))
    if not pattern.endswith(".parquet"):
        # A folder: every Parquet file below it, skipping entries whose names start with "_" or
        # "." (markers, temp files), as pyarrow.dataset does.
        root = pattern.rstrip("/") + "/"
        files = [p for p in storage.list_files(pattern) if p.endswith(".parquet")]
        files = [p for p in files if not _hidden(p, root)]
        if files:
            return sorted(files)
    return storage.match(pattern)


def _dir_root(pattern: str, paths: list[str]) -> str:
    if paths == [pattern]:
        return input_root(pattern)
    return pattern.rstrip("/") + "/"


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root) :] if path.startswith(root) else posixpath.basename(path)
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def _footer(path: str) -> tuple[pq.FileMetaData, str]:
    try:
        with storage.open_input(path) as f:
            return pq.ParquetFile(f).metadata, storage.file_version(f, path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read input file {path} as Parquet: {exc}") from exc


def iter_batches(
    unit: WorkUnit, columns: Iterable[str] | None = None, batch_size: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Streams one unit's rows as record batches of at most ``batch_size`` rows.

    Only one row group is read, and only ``columns``: memory stays bounded by the batch size (and
    Parquet's page size), whatever the file size.
    """
    with storage.open_input(unit.path) as f:
        parquet = pq.ParquetFile(f)
        for batch in parquet.iter_batches(
            batch_size=batch_size,
            row_groups=[unit.row_group],
            columns=None if columns is None else list(columns),
        ):
            yield plain_batch(batch)


# -- the Arrow types a job computes on ------------------------------------------------------------


def plain_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a job reads a column of ``arrow_type`` as: the same values, in the layout every
    Arrow kernel takes.

    Writers may store Arrow's view types (``string_view``, ``binary_view``), 64-bit offset types
    (``large_string``, ``large_binary``) and dictionary-encoded columns
    (``dictionary<values=string>``); many kernels (``take``, ``filter``...) lack a case for some,
    and output files of one job must agree on one type for a copied column. Reading them as
    ``string``, ``binary`` and the dictionary's value type, at any depth (inside lists, structs
    and maps), gives one type per kind of value everywhere a column is read (a job's batches are
    far below the 2 GiB that 32-bit offsets hold).
    """
    if pa.types.is_dictionary(arrow_type):
        return plain_type(arrow_type.value_type)
    if pa.types.is_string_view(arrow_type) or pa.types.is_large_string(arrow_type):
        return pa.string()
    if pa.types.is_binary_view(arrow_type) or pa.types.is_large_binary(arrow_type):
        return pa.binary()
    if pa.types.is_struct(arrow_type):
        return pa.struct([_plain_field(arrow_type.field(i)) for i in range(arrow_type.num_fields)])
    if pa.types.is_map(arrow_type):
        key, item = _plain_field(arrow_type.key_field), _plain_field(arrow_type.item_field)
        return pa.map_(key, item, keys_sorted=arrow_type.keys_sorted)
    if pa.types.is_list_view(arrow_type) or pa.types.is_list(arrow_type):
        return pa.list_(_plain_field(arrow_type.value_field))
    if pa.types.is_large_list_view(arrow_type) or pa.types.is_large_list(arrow_type):
        return pa.large_list(_plain_field(arrow_type.value_field))
    if pa.types.is_fixed_size_list(arrow_type):
        return pa.list_(_plain_field(arrow_type.value_field), arrow_type.list_size)
    return arrow_type


def _plain_field(field: pa.Field) -> pa.Field:
    return field.with_type(plain_type(field.type))


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every field in its :func:`plain_type`, metadata kept."""
    return pa.schema([_plain_field(f) for f in schema], metadata=schema.metadata)


def plain_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with every column in its :func:`plain_type` (no copy when all are plain)."""
    schema = plain_schema(batch.schema)
    return batch if schema.equals(batch.schema) else batch.cast(schema)
