"""Writing one unit's output files: streamed, zstd-compressed, published atomically.

Rows are streamed with ``pyarrow.parquet.ParquetWriter`` (memory stays bounded by one window)
into :func:`clipbeam.transforms.storage.atomic_writer`, which publishes the file whole or not at
all. A retried bundle therefore overwrites a unit's file instead of adding a second one, and readers
never see half a file.
"""

from __future__ import annotations

import json
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from clipbeam.transforms import storage
from clipbeam.transforms.spec import JobSpec

__all__ = ["COMPRESSION", "ParquetSpool", "job_metadata"]

COMPRESSION = "zstd"


def job_metadata(spec: JobSpec, model_metadata: dict[str, str]) -> dict[str, str]:
    """Key-value metadata of every output file: the model's provenance plus the job's options."""
    return {
        **model_metadata,
        "clipbeam.kind": spec.kind,
        "clipbeam.embedding_dtype": spec.embedding_dtype,
        "clipbeam.job": spec.to_json(),
        "clipbeam.options": json.dumps(dict(spec.options), sort_keys=True, default=str),
    }


class ParquetSpool:
    """One output Parquet file, written batch by batch, published whole on :meth:`commit`.

    The bytes go through :func:`clipbeam.transforms.storage.atomic_writer`: a hidden temporary file
    renamed into place on local disk, an upload finalized only on success on object stores. Use as a
    context manager: leaving the block without :meth:`commit` (an exception) discards what was
    written and leaves the destination untouched.

    Args:
        destination: the final path or URL of the file.
        schema: the file's schema, with its key-value metadata.
    """

    def __init__(self, destination: str, schema: pa.Schema):
        self.destination = destination
        self.schema = schema
        self.rows = 0
        self._sink = storage.atomic_writer(destination)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self._sink.__enter__(), schema, compression=COMPRESSION
        )

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Appends rows (in this file's schema; their own metadata is ignored)."""
        if self._writer is None:
            raise RuntimeError(f"{self.destination}: write() after commit() or discard()")
        if table.num_rows == 0:
            return
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self._writer.write_table(table.replace_schema_metadata(self.schema.metadata))
        self.rows += table.num_rows

    def commit(self) -> None:
        """Finishes the file and publishes it at :attr:`destination`, replacing any older one."""
        if self._writer is None:
            raise RuntimeError(f"{self.destination}: commit() after commit() or discard()")
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except BaseException as exc:
            self._sink.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._sink.__exit__(None, None, None)

    def discard(self) -> None:
        """Drops what was written without touching the destination (no-op after commit)."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        # Ending the atomic writer with an exception is how it is told not to publish.
        abort = _Discarded(self.destination)
        self._sink.__exit__(type(abort), abort, None)

    def __enter__(self) -> ParquetSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


class _Discarded(Exception):
    """Thrown into an atomic writer to abandon its file."""
