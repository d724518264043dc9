"""transforms.storage on local disk and on gs:// (gcp-storage-emulator, see tests/gcs.py)."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbeam.transforms import storage
from tests.loopback import serve_http

if TYPE_CHECKING:
    from tests.gcs import GcsEmulator

# Until tests/conftest.py loads the plugin for every test package.


@pytest.fixture(params=["local", "gs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder that does not exist yet: on local disk, or a fresh gs:// prefix."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("gcs_dir")


def _leftovers(root: str) -> list[str]:
    """Every name under a local root, hidden ones included (list_files hides temporaries)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_join() -> None:
    assert storage.join("gs://b/out/", "kept", "/part.parquet") == "gs://b/out/kept/part.parquet"
    assert storage.join("gs://b", "x") == "gs://b/x"
    assert storage.join("/data/out", "kept", "part.parquet") == "/data/out/kept/part.parquet"
    assert storage.is_local("/data") and storage.is_local("file:///data")
    assert not storage.is_local("gs://b/x")


def test_write_read_exists_delete(root: str) -> None:
    path = storage.join(root, "a", "b.bin")
    assert not storage.exists(path)
    storage.write_atomic(path, b"0123456789")
    assert storage.exists(path)
    assert storage.read_bytes(path) == b"0123456789"
    with storage.open_input(path) as f:
        f.seek(3)
        assert f.read(4) == b"3456"
        f.seek(-2, os.SEEK_END)
        assert f.read() == b"89"
    storage.delete(path)
    assert not storage.exists(path)
    storage.delete(path, missing_ok=True)


def test_rewrite_replaces_instead_of_duplicating(root: str) -> None:
    path = storage.join(root, "part-00000-00001.parquet")
    storage.write_atomic(path, b"first attempt")
    storage.write_atomic(path, b"retry")
    assert storage.list_files(root) == [path]
    assert storage.read_bytes(path) == b"retry"
    if storage.is_local(root):
        assert _leftovers(root) == ["part-00000-00001.parquet"]


def test_failed_block_writes_nothing_and_keeps_the_old_file(root: str) -> None:
    path = storage.join(root, "out.bin")
    with pytest.raises(RuntimeError, match="interrupted"), storage.atomic_writer(path) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert not storage.exists(path)
    storage.write_atomic(path, b"complete")
    with pytest.raises(RuntimeError, match="interrupted"), storage.atomic_writer(path) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert storage.read_bytes(path) == b"complete"
    assert storage.list_files(root) == [path]
    if storage.is_local(root):
        assert _leftovers(root) == ["out.bin"]


def test_parquet_round_trip(root: str) -> None:
    table = pa.table(
        {
            "id": [f"row-{i}" for i in range(7)],
            "embedding": pa.array(
                [[float(i), -float(i), 0.5] for i in range(7)], pa.list_(pa.float32(), 3)
            ),
        }
    )
    path = storage.join(root, "embeddings", "part-00003-00000.parquet")
    with storage.atomic_writer(path) as f:
        pq.write_table(table, f, row_group_size=3, compression="zstd")
    with storage.open_input(path) as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_row_groups == 3
        assert parquet.read_row_group(1).equals(table.slice(3, 3))
        assert parquet.read().equals(table)


def test_match_and_list_files(root: str) -> None:
    names = ["a/x.parquet", "a/y.parquet", "a/sub/z.parquet", "a/notes.txt", "b/w.parquet"]
    for name in names:
        storage.write_atomic(storage.join(root, *name.split("/")), name.encode())
    path = {name: storage.join(root, *name.split("/")) for name in names}

    assert storage.match(storage.join(root, "a", "*.parquet")) == [
        path["a/x.parquet"],
        path["a/y.parquet"],
    ]
    assert storage.match(storage.join(root, "a", "**.parquet")) == sorted(
        [path["a/x.parquet"], path["a/y.parquet"], path["a/sub/z.parquet"]]
    )
    assert storage.match(storage.join(root, "?", "[wx].parquet")) == [
        path["a/x.parquet"],
        path["b/w.parquet"],
    ]
    assert storage.match(path["a/notes.txt"]) == [path["a/notes.txt"]]
    assert storage.match(storage.join(root, "a", "missing.parquet")) == []
    assert storage.match(storage.join(root, "nothing", "*.parquet")) == []
    assert storage.match(storage.join(root, "a")) == []  # a folder is not a file

    assert storage.list_files(storage.join(root, "a")) == sorted(
        path[n] for n in names if n.startswith("a/")
    )
    assert storage.list_files(storage.join(root, "a") + "/") == storage.list_files(
        storage.join(root, "a")
    )
    assert storage.list_files(storage.join(root, "missing")) == []


def test_list_files_skips_writes_in_progress(root: str) -> None:
    done = storage.join(root, "part.parquet")
    storage.write_atomic(done, b"done")
    with storage.atomic_writer(storage.join(root, "other.parquet")) as f:
        f.write(b"in progress")
        if storage.is_local(root):
            assert len(_leftovers(root)) == 2  # the hidden temporary file is there
        assert storage.list_files(root) == [done]


def test_missing_paths_give_clear_errors(root: str) -> None:
    missing = storage.join(root, "missing.parquet")
    with pytest.raises(storage.StorageNotFoundError, match="no such file") as info:
        storage.open_input(missing)
    assert missing in str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # callers may catch the builtin
    with pytest.raises(storage.StorageNotFoundError, match="no such file"):
        storage.read_bytes(missing)
    with pytest.raises(storage.StorageNotFoundError, match="Cannot delete"):
        storage.delete(missing)


def test_makedirs_and_check_writable(root: str) -> None:
    out = storage.join(root, "out", "nested")
    storage.makedirs(out)
    storage.makedirs(out)  # idempotent
    storage.check_writable(out)
    assert storage.list_files(out) == []  # the probe is gone
    if storage.is_local(root):
        assert Path(out).is_dir()
        assert _leftovers(root) == []


def test_local_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file where a folder should be")
    with pytest.raises(storage.StorageError, match=r"Cannot write to .*blocker.*Check that"):
        storage.check_writable(str(blocker / "out"))
    with pytest.raises(storage.StorageError, match="it is a folder"):
        storage.open_input(str(tmp_path))
    with pytest.raises(storage.StorageError, match="files only"):
        storage.delete(str(tmp_path))
    assert tmp_path.is_dir()


def test_gcs_errors(gcs_emulator: GcsEmulator) -> None:
    with pytest.raises(storage.StorageError, match=r"no-such-bucket.*does the bucket exist"):
        storage.check_writable("gs://no-such-bucket/out")
    with pytest.raises(storage.StorageError, match="Cannot list 'gs://no-such-bucket/"):
        storage.list_files("gs://no-such-bucket/out")
    assert not storage.exists("gs://no-such-bucket/x.bin")


def test_unknown_scheme_is_rejected() -> None:
    with pytest.raises(storage.StorageError, match="No Beam filesystem handles 'nosuch://"):
        storage.match("nosuch://bucket/*.parquet")


def test_fresh_process_reaches_the_emulator_quickly(gcs_dir: str) -> None:
    """What a multi_processing worker does: a new interpreter with the session's environment."""
    path = f"{gcs_dir}/from-subprocess.bin"
    script = textwrap.dedent(
        f"""
        import time
        start = time.monotonic()
        from clipbeam.transforms import storage
        storage.write_atomic({path!r}, b"worker")
        assert storage.read_bytes({path!r}) == b"worker"
        print(f"{{time.monotonic() - start:.2f}}")
        """
    )
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Beam's credential search alone takes about 26 s when the session's settings do not reach
    # the subprocess; imports and two requests take 1 to 3 s.
    assert float(done.stdout.split()[-1]) < 10, done.stderr
    assert storage.read_bytes(path) == b"worker"


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow.jpg":
            time.sleep(2)
        if self.path in ("/image.jpg", "/slow.jpg"):
            body = b"\xff\xd8 not really a jpeg"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client of the timeout case has hung up by now.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    with serve_http(_SlowHandler) as url:
        yield url


def test_read_bytes_over_http(http_server: str) -> None:
    assert (
        storage.read_bytes(f"{http_server}/image.jpg", timeout=5) == b"\xff\xd8 not really a jpeg"
    )
    with pytest.raises(storage.StorageNotFoundError):
        storage.read_bytes(f"{http_server}/missing.jpg", timeout=5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        storage.read_bytes(f"{http_server}/slow.jpg", timeout=0.3)
    assert time.monotonic() - start < 1.5


def test_remove_temporaries_keeps_a_concurrent_attempts_file(tmp_path):
    """Only temporaries written before the cleaning attempt started go: another attempt at the
    same unit (Dask computing a unit twice, a zombie worker) may be writing its own right now."""
    import uuid

    target = tmp_path / "part-00000-00000.parquet"
    old = tmp_path / f".{target.name}.{uuid.uuid4().hex}.tmp"
    live = tmp_path / f".{target.name}.{uuid.uuid4().hex}.tmp"
    old.write_bytes(b"killed")
    os.utime(old, (time.time() - 60, time.time() - 60))
    started = time.time() - 1
    live.write_bytes(b"being written")
    assert storage.remove_temporaries(str(target), before=started) == 1
    assert not old.exists() and live.exists()
    assert storage.remove_temporaries(str(target)) == 1 and not live.exists()


def test_delete_folder_removes_every_file_below_it(tmp_path):
    folder = tmp_path / "_staging"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.parquet").write_bytes(b"a")
    (folder / "sub" / "b.parquet").write_bytes(b"b")
    (tmp_path / "kept.parquet").write_bytes(b"k")
    storage.delete_folder(str(folder))
    assert not folder.exists()
    assert (tmp_path / "kept.parquet").exists()
    storage.delete_folder(str(folder))  # absent: nothing to do
