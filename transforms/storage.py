"""Files on local disk, Google Cloud Storage and other URLs: the storage layer of clipbeam jobs.

One small API for local paths and ``gs://`` (and, where it makes sense, any URL that Beam or
fsspec can handle), used by the planner, the workers and the launch checks alike:

- Listing, existence, deletion and writes go through Beam's
  :class:`~apache_beam.io.filesystems.FileSystems` (its ``GCSFileSystem`` on ``gs://``), so they
  use the pipeline's options and credentials wherever Beam runs.
- Random-access reads (Parquet footers and row groups, image files) go through fsspec (gcsfs on
  ``gs://``), whose files are seekable with read-ahead caching, which is what pyarrow needs.

Writes are atomic: a reader (or ``--resume``) sees either no file or the whole file, and a
retried bundle that writes the same path again replaces the file instead of adding a second one.
The data first goes to a hidden temporary file next to the target (``.<name>.<32 hex>.tmp``, a
fresh name per attempt; skipped by pyarrow.dataset, DuckDB globs and :func:`list_files`), which
is renamed over the target once complete. On local disk that rename is POSIX's atomic replace.
On object stores the caller's bytes are spooled locally first and uploaded in one piece only if
the caller's block succeeds; the rename (a server-side copy + delete on GCS, no data through the
client) then makes the object appear under its final name only whole. The temporary name matters
there too: a resumable upload that failed half way is cancelled, and should the cancel itself
fail, whatever the client still finalizes later lands on a hidden name that nothing reads.

Credentials are the client libraries' usual ones (application default credentials). When
``STORAGE_EMULATOR_HOST`` is set, reads use the plain ``gcsfs.core.GCSFileSystem`` with anonymous
access, as google-cloud-storage does for its own clients: an emulator has no accounts, and it only
speaks the JSON API, which the experimental gcsfs class (chosen by default when
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` is not ``false``) would first probe over gRPC for 60 s.
``tests/gcs.py`` describes how the tests point both client stacks at an emulator quickly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = [
    "StorageError",
    "StorageNotFoundError",
    "absolute",
    "atomic_writer",
    "check_writable",
    "delete",
    "delete_folder",
    "exists",
    "file_version",
    "is_local",
    "join",
    "list_files",
    "makedirs",
    "match",
    "open_input",
    "read_bytes",
    "remove_temporaries",
    "write_atomic",
]

_LOGGER = logging.getLogger(__name__)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Temporary files of atomic writes (local and remote): ".<target name>.<32 hex digits>.tmp".
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
# Remote writes keep up to this much in memory before spooling to a local temporary file.
_SPOOL_MEMORY_BYTES = 32 * 1024 * 1024
_COPY_CHUNK_BYTES = 8 * 1024 * 1024


class StorageError(OSError):
    """A storage operation failed; the message names the path, the cause and what to check."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The file (or bucket) does not exist."""


def is_local(path: str) -> bool:
    """Whether ``path`` is on local disk: no URL scheme, or ``file://``."""
    match_ = _SCHEME.match(path)
    return match_ is None or match_.group(1).lower() == "file"


def absolute(path: str) -> str:
    """The same location spelled from the root: a relative local path (or glob) made absolute
    and normalized (``./data/../data/x`` -> ``/cwd/data/x``); URLs are returned unchanged.

    Two spellings of one input then compare equal (``--resume``), and a record of the location
    stays valid from another working directory (the report's thumbnails).
    """
    if _SCHEME.match(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _local_path(path: str) -> str:
    return path[len("file://") :] if path.lower().startswith("file://") else path


def _protocol(path: str) -> str:
    match_ = _SCHEME.match(path)
    return match_.group(1).lower() if match_ else "file"


def _remote_errors() -> tuple[type[Exception], ...]:
    """What the Google clients raise besides OSError (HTTP statuses, upload and auth errors)."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

    return (OSError, GoogleAPICallError, GoogleAuthError, InvalidResponse, DataCorruption)


def _cause(exc: BaseException) -> BaseException:
    """The per-path exception inside a BeamIOError, which otherwise prints as a dict."""
    details = getattr(exc, "exception_details", None)
    if isinstance(exc, BeamIOError) and isinstance(details, dict) and details:
        inner = next(iter(details.values()))
        if isinstance(inner, BaseException):
            return _cause(inner)
    return exc


def _describe(exc: BaseException) -> str:
    """A readable cause: Beam's per-path error, or an upload's HTTP status and reply."""
    from google.api_core.exceptions import GoogleAPICallError

    cause = _cause(exc)
    response = getattr(cause, "response", None)
    status = getattr(response, "status_code", None)
    hint = " (does the bucket exist?)" if status == 404 else ""
    if isinstance(cause, GoogleAPICallError):  # its text already holds status, URL and reply
        return f"{cause}{hint}"
    if status is None:
        return str(cause)
    # google-resumable-media's InvalidResponse prints as a tuple; show status and reply instead.
    reply = " ".join(str(getattr(response, "text", "")).split())[:300]
    return f"HTTP {status}{hint}: {reply or type(cause).__name__}"


def _check_beam_scheme(path: str) -> None:
    """Raises StorageError if Beam has no filesystem for the path's scheme."""
    try:
        FileSystems.get_filesystem(path)
    except ValueError as exc:
        raise StorageError(
            f"No Beam filesystem handles {path!r} (scheme {_protocol(path)!r}). Use a local path "
            "or gs://; for gs:// install apache-beam[gcp], for s3:// apache-beam[aws]."
        ) from exc


def join(base: str, *parts: str) -> str:
    """Joins path components, with ``/`` for URLs and the OS separator for local paths.

    Args:
        base: A local folder or a URL prefix such as ``gs://bucket/dir``.
        *parts: Names to append; leading and trailing slashes of URL parts are ignored.

    Returns:
        The joined path, e.g. ``join("gs://b/out", "kept", "part-00000.parquet")`` gives
        ``gs://b/out/kept/part-00000.parquet``.
    """
    if is_local(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def match(pattern: str) -> list[str]:
    """Lists the files that a path or glob names, sorted.

    Globs follow Beam: ``*`` and ``?`` stay within one folder level, ``**`` crosses levels,
    ``[...]`` is a character class. A pattern without glob characters names one file.

    Args:
        pattern: A local path or URL, optionally with glob characters.

    Returns:
        The matching files (never folders), sorted; empty if nothing matches.

    Raises:
        StorageError: The pattern cannot be listed (unknown scheme, no access, ...).
    """
    _check_beam_scheme(pattern)
    try:
        (result,) = FileSystems.match([pattern])
    except BeamIOError as exc:
        raise StorageError(f"Cannot list {pattern!r}: {_describe(exc)}") from exc
    paths = [meta.path for meta in result.metadata_list]
    if is_local(pattern):
        paths = [p for p in paths if os.path.isfile(_local_path(p))]
    return sorted(paths)


def list_files(dir_path: str) -> list[str]:
    """Lists every file below a folder (at any depth), sorted.

    Temporary files of writes still in progress are left out. On object stores a "folder" is a
    name prefix ending in ``/``.

    Args:
        dir_path: A local folder or a URL prefix such as ``gs://bucket/out/kept``.

    Returns:
        Full paths, sorted; empty if the folder does not exist or is empty.

    Raises:
        StorageError: The folder cannot be listed.
    """
    if is_local(dir_path):
        # os.walk, not a Beam glob: a folder name may itself contain glob characters.
        paths = [
            os.path.join(folder, name)
            for folder, _, names in os.walk(_local_path(dir_path))
            for name in names
        ]
    else:
        paths = match(join(dir_path, "**"))
    return sorted(p for p in paths if not _TEMP_NAME.match(p.rsplit("/", 1)[-1]))


def exists(path: str) -> bool:
    """Whether a file (or, on local disk, a folder) exists at ``path``.

    Raises:
        StorageError: Existence cannot be checked (unknown scheme, no access, ...).
    """
    _check_beam_scheme(path)
    try:
        return FileSystems.exists(path)
    except _remote_errors() as exc:
        raise StorageError(f"Cannot check whether {path!r} exists: {_describe(exc)}") from exc


def makedirs(path: str) -> None:
    """Creates a folder and its parents if missing.

    Object stores have no folders (a prefix exists once an object is written under it), so on
    them this only checks that the scheme is supported.

    Raises:
        StorageError: A local folder cannot be created (a file is in the way, no permission).
    """
    if not is_local(path):
        _check_beam_scheme(path)
        return
    try:
        os.makedirs(_local_path(path), exist_ok=True)
    except OSError as exc:
        raise StorageError(f"Cannot create folder {path!r}: {exc}") from exc


def delete(path: str, *, missing_ok: bool = False) -> None:
    """Deletes one file.

    Args:
        path: The file to delete (folders are refused, never deleted recursively).
        missing_ok: Return quietly if there is no such file (retried cleanup).

    Raises:
        StorageNotFoundError: There is no such file and ``missing_ok`` is false.
        StorageError: The path is a local folder, or deletion failed.
    """
    if is_local(path) and os.path.isdir(_local_path(path)):
        raise StorageError(f"Cannot delete {path!r}: it is a folder; delete() removes files only.")
    if not exists(path):
        if missing_ok:
            return
        raise StorageNotFoundError(f"Cannot delete {path!r}: no such file.")
    try:
        FileSystems.delete([path])
    except BeamIOError as exc:
        cause = _cause(exc)
        if missing_ok and isinstance(cause, FileNotFoundError):
            return  # deleted concurrently, e.g. by a retried bundle
        raise StorageError(f"Cannot delete {path!r}: {cause}") from exc


def delete_folder(dir_path: str) -> None:
    """Deletes a folder and every file below it; nothing to do when it does not exist.

    Raises:
        StorageError: A file below it cannot be deleted.
    """
    if is_local(dir_path):
        local = _local_path(dir_path)
        if not os.path.isdir(local):
            return
        try:
            shutil.rmtree(local)
        except OSError as exc:
            raise StorageError(f"Cannot delete folder {dir_path!r}: {exc}") from exc
        return
    for path in list_files(dir_path):
        delete(path, missing_ok=True)


def _fsspec_filesystem(path: str, timeout: float | None) -> Any:
    """The fsspec filesystem for a URL; instances are cached by fsspec per set of arguments."""
    import fsspec

    protocol = _protocol(path)
    if protocol in ("gs", "gcs"):
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from gcsfs.core import GCSFileSystem

            return GCSFileSystem(token="anon", requests_timeout=timeout, use_listings_cache=False)
        # Listings are not cached: objects are written through Beam, which gcsfs does not see.
        return fsspec.filesystem(protocol, requests_timeout=timeout, use_listings_cache=False)
    if protocol in ("http", "https"):
        if timeout is None:
            return fsspec.filesystem(protocol)
        import aiohttp

        client_kwargs = {"timeout": aiohttp.ClientTimeout(total=timeout)}
        return fsspec.filesystem(protocol, client_kwargs=client_kwargs)
    return fsspec.filesystem(protocol)


def open_input(path: str, *, timeout: float | None = None) -> IO[bytes]:
    """Opens a file for seekable binary reading (what pyarrow needs to read Parquet).

    Use it as a context manager: ``with open_input(path) as f: pq.ParquetFile(f)``.

    Args:
        path: A local path or a URL (``gs://``, ``http(s)://``, any fsspec protocol).
        timeout: Seconds before one remote request gives up; None for the client's default.

    Returns:
        A binary file object supporting ``read``, ``seek`` and ``tell``.

    Raises:
        StorageNotFoundError: There is no such file.
        StorageError: The path is a folder.
    """
    if is_local(path):
        local = _local_path(path)
        try:
            return open(local, "rb")
        except FileNotFoundError as exc:
            raise StorageNotFoundError(f"Cannot open {path!r}: no such file.") from exc
        except IsADirectoryError as exc:
            raise StorageError(f"Cannot open {path!r}: it is a folder, not a file.") from exc
    fs = _fsspec_filesystem(path, timeout)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"Cannot open {path!r}: no such file.") from exc


def file_version(f: IO[bytes], path: str) -> str:
    """What a file opened with :func:`open_input` is now, to tell later whether it changed.

    Local files: size and modification time in nanoseconds. Object stores: the object's
    generation (GCS), else its ETag, else its update time, with its size. A rewrite gives a new
    version even at the same size; an object store's metadata is the one fsspec read on opening
    (no extra request).
    """
    if is_local(path):
        info = os.fstat(f.fileno())
        return f"size={info.st_size},mtime_ns={info.st_mtime_ns}"
    details = getattr(f, "details", None) or {}
    size = details.get("size", getattr(f, "size", ""))
    for key in ("generation", "ETag", "etag", "updated", "LastModified", "mtime"):
        if details.get(key) not in (None, ""):
            return f"size={size},{key.lower()}={details[key]}"
    return f"size={size}"


def read_within(path: str, limit: int, seconds: float) -> tuple[int | None, bytes | None]:
    """A remote object's first ``limit + 1`` bytes, all requests (retries included) within one
    deadline of ``seconds``.

    Returns ``(size, data)``: the object's size as listed (``None`` where the store does not
    say), and its bytes, or ``None`` when the listed size is already over ``limit`` (nothing is
    downloaded). On an asynchronous filesystem (gcsfs, HTTP) the whole read is one task that is
    cancelled at the deadline; other filesystems read in chunks, checking the deadline between
    them.

    Raises:
        TimeoutError: the deadline passed (fsspec's ``FSTimeoutError`` is one).
        FileNotFoundError: there is no such object.
    """
    from fsspec.asyn import AsyncFileSystem, sync

    fs = _fsspec_filesystem(path, seconds)
    if isinstance(fs, AsyncFileSystem):

        async def read() -> tuple[int | None, bytes | None]:
            size = (await fs._info(path)).get("size")
            if isinstance(size, int) and size > limit:
                return size, None
            return size, await fs._cat_file(path, start=0, end=limit + 1)

        return sync(fs.loop, read, timeout=seconds)
    expires = time.monotonic() + seconds
    with fs.open(path, "rb") as f:
        size = getattr(f, "size", None)
        if isinstance(size, int) and size > limit:
            return size, None
        chunks, received = [], 0
        while received <= limit:
            if time.monotonic() > expires:
                raise TimeoutError(f"reading took more than {seconds:g} s")
            chunk = f.read(min(_READ_CHUNK, limit + 1 - received))
            if not chunk:
                break
            received += len(chunk)
            chunks.append(chunk)
    return size, b"".join(chunks)


_READ_CHUNK = 1024 * 1024


def read_bytes(path: str, *, timeout: float | None = None) -> bytes:
    """Reads a whole file.

    Args:
        path: A local path or a URL (``gs://``, ``http(s)://``, any fsspec protocol).
        timeout: Seconds before one remote request gives up; None for the client's default.

    Raises:
        StorageNotFoundError: There is no such file.
        StorageError: The path is a folder.
    """
    if is_local(path):
        with open_input(path) as f:
            return f.read()
    fs = _fsspec_filesystem(path, timeout)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"Cannot read {path!r}: no such file.") from exc


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO[bytes]]:
    """Writes a file all at once: it appears complete when the block ends, or not at all.

    If the block raises, nothing is written (an existing file at ``path`` stays as it was). A
    second successful write to the same path replaces the file, so retried work never leaves two
    copies. Parent folders are created as needed. Do not close the yielded file yourself.

    Example::

        with atomic_writer("gs://bucket/out/part-00000-00000.parquet") as f:
            pq.write_table(table, f, compression="zstd")

    Args:
        path: The file to write, local or a URL Beam can write (``gs://``, ...).

    Yields:
        A binary file object to write to (seekable, with ``tell``).

    Raises:
        StorageError: The file cannot be written (no permission, no such bucket, ...).
    """
    if is_local(path):
        with _local_atomic_writer(_local_path(path)) as f:
            yield f
    else:
        with _remote_atomic_writer(path) as f:
            yield f


def _temp_name(name: str) -> str:
    # A unique name per attempt, so concurrent retries of one unit never share a temporary file.
    return f".{name}.{uuid.uuid4().hex}.tmp"


@contextlib.contextmanager
def _local_atomic_writer(path: str) -> Iterator[IO[bytes]]:
    folder, name = os.path.split(os.path.abspath(path))
    makedirs(folder)
    # Same folder as the target, so the rename never crosses filesystems.
    temp = os.path.join(folder, _temp_name(name))
    try:
        f = open(temp, "wb")  # noqa: SIM115 (closed below, before the rename)
    except OSError as exc:
        raise StorageError(f"Cannot write {path!r}: {exc}") from exc
    try:
        with f:
            yield f  # errors of the caller's block propagate unchanged
            try:
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points to it
                f.close()
                os.replace(temp, path)
            except OSError as exc:
                raise StorageError(f"Cannot write {path!r}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)  # only still there if the block or the rename failed


@contextlib.contextmanager
def _remote_atomic_writer(path: str) -> Iterator[IO[bytes]]:
    _check_beam_scheme(path)
    folder, _, name = path.rstrip("/").rpartition("/")
    temp = f"{folder}/{_temp_name(name)}"
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES) as spool:
        yield spool  # type: ignore[misc]  # errors of the caller's block propagate unchanged
        if spool.closed:
            raise StorageError(
                f"The file for {path!r} was closed inside atomic_writer; not written."
            )
        spool.seek(0)
        errors = _remote_errors()
        try:
            _upload(spool, temp)
            FileSystems.rename([temp], [path])
        except errors as exc:
            with contextlib.suppress(*errors):  # best effort: the write error is what matters
                delete(temp, missing_ok=True)
            raise StorageError(f"Cannot write {path!r}: {_describe(exc)}") from exc


def _upload(source: IO[bytes], path: str) -> None:
    sink = FileSystems.create(
        path,
        mime_type="application/octet-stream",
        # Never compress on the fly because of a name ending in .gz or .bz2.
        compression_type=CompressionTypes.UNCOMPRESSED,
    )
    try:
        shutil.copyfileobj(source, sink, _COPY_CHUNK_BYTES)
        sink.close()  # finalizes the upload
    except BaseException:
        _cancel_upload(sink, path)
        raise


def _cancel_upload(sink: IO[bytes], path: str) -> None:
    """Cancels an unfinished upload, so that nothing finalizes it later.

    A google-cloud-storage ``BlobWriter`` whose ``close()`` failed would otherwise retry the
    upload from its finalizer when garbage collected: at some random later moment, with retries
    that block for up to minutes when the service is unreachable.
    """
    terminate = getattr(sink, "terminate", None)  # BlobWriter's cancel; absent elsewhere
    if terminate is None:
        return
    try:
        terminate()
    except _remote_errors() as exc:
        # The original error is what the caller must see; this one only explains leftovers.
        _LOGGER.warning("Could not cancel the upload of %s (%s); it may be left behind.", path, exc)


def remove_temporaries(path: str, *, before: float | None = None) -> int:
    """Deletes the temporary files that unfinished atomic writes of ``path`` left behind.

    A write killed between creating its temporary file and renaming it (kill -9, a lost worker)
    leaves ``.<name>.<32 hex>.tmp`` next to ``path``. Only that target's temporaries are touched
    (on object stores, one prefix listing).

    Args:
        path: the target whose temporaries go.
        before: on local disk, only temporaries last written before this time (seconds since the
            epoch) go: another attempt at the same unit may be writing its own right now (Dask
            computes a unit twice when two steps read it; a zombie worker on Dataflow), and its
            file is being written to, so it is newer than the start of the attempt that cleans.

    Returns:
        How many files were deleted.

    Raises:
        StorageError: The folder cannot be listed, or a temporary file cannot be deleted.
    """
    if is_local(path):
        folder, name = os.path.split(_local_path(path))
        try:
            found = [os.path.join(folder, n) for n in os.listdir(folder or ".")]
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"Cannot list {folder!r}: {exc}") from exc
    else:
        folder, _, name = path.rstrip("/").rpartition("/")
        found = match(f"{folder}/.{name}.*.tmp")
    # ".<name>.<32 hex>.tmp" exactly: another target's temporaries never match.
    mine = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}\.tmp")
    stale = [p for p in found if mine.fullmatch(os.path.basename(p.rstrip("/")))]
    if before is not None and is_local(path):
        stale = [p for p in stale if _modified(p) < before]
    for temp in stale:
        delete(temp, missing_ok=True)
    return len(stale)


def _modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return float("inf")  # gone already: nothing to delete


def write_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_writer`).

    Raises:
        StorageError: The file cannot be written.
    """
    with atomic_writer(path) as f:
        f.write(data)


def check_writable(dir_path: str) -> None:
    """Checks, before a job starts, that files can be created and deleted in a folder.

    Creates the folder if needed, then writes and deletes a small hidden probe file.

    Raises:
        StorageError: Writing or deleting there fails; the message says what to check.
    """
    probe = join(dir_path, f".clipbeam-write-check-{uuid.uuid4().hex}")
    try:
        makedirs(dir_path)
        write_atomic(probe, b"clipbeam write check\n")
        delete(probe)
    except StorageError as exc:
        raise StorageError(
            f"Cannot write to {dir_path!r}: {exc}. Check that the folder or bucket exists and "
            "that these credentials may create and delete files there."
        ) from exc
