"""Credentials never leak: not in error rows, logs, launch errors, summary.json or file metadata.

Image URLs with credentials are run through every job in test_corpus.py; here a model is read
from a URL with ``user:password@`` (a loopback server that demands them), and everything the job
wrote or printed is searched for the password.
"""

from __future__ import annotations

import base64
import functools
import http.server
import logging
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline import cli
from clipbeam.transforms.redact import redact, redact_url
from tests.datasets import build_dataset
from tests.pipeline.jobtools import DIRECT
from tests.reliability.conftest import PASSWORD, USER


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://bob:hunter2@h.com/a.jpg", "https://REDACTED@h.com/a.jpg"),
        ("https://ghp_TOKEN@github.com/o/r", "https://REDACTED@github.com/o/r"),
        ("http://u:p%40ss@h.com:8080", "http://REDACTED@h.com:8080"),
        (
            "https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=0a1b&X-Goog-Expires=900",
            "https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=REDACTED&X-Goog-Signature=REDACTED&X-Goog-Expires=900",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=t&X-Amz-Signature=s&w=2",
            "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"
            "&w=2",
        ),
        (
            "https://a.blob.core.windows.net/c/x?sv=2022&sig=abc%3D",
            "https://a.blob.core.windows.net/c/x?sv=2022&sig=REDACTED",
        ),
        ("https://cdn.example/x.jpg?Policy=p&Signature=s&Key-Pair-Id=k", None),
        ("https://h/x?api_key=1;access_token=2#id_token=3", None),
        ("gs://bucket/dir/part-0.parquet", "gs://bucket/dir/part-0.parquet"),
        ("https://h/path@with-at/x.jpg?width=5", "https://h/path@with-at/x.jpg?width=5"),
    ],
)
def test_redact_url(url, redacted):
    got = redact_url(url)
    if redacted is not None:
        assert got == redacted
    else:  # every parameter value is a credential
        assert got.count("REDACTED") == url.count("="), got
    assert redact_url(got) == got


def test_redact_finds_urls_inside_text():
    text = "reading 'https://u:pw@h/a.jpg' failed; see \"gs://b/x\" and http://h/y?sig=z."
    assert redact(text) == (
        "reading 'https://REDACTED@h/a.jpg' failed; see \"gs://b/x\" and http://h/y?sig=REDACTED."
    )
    assert redact("no url here, just user:pw@ text") == "no url here, just user:pw@ text"


@pytest.fixture
def model_server(clip_checkpoint, tmp_path, monkeypatch):
    """Serves the checkpoint's folder at /ckpt/, only to requests with the credentials."""
    monkeypatch.setenv("CLIPBEAM_CACHE", str(tmp_path / "cache"))  # remote files are cached
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "ckpt").symlink_to(clip_checkpoint)
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def send_head(self):
            if self.headers.get("Authorization") != expected:
                self.send_error(401)
                return None
            return super().send_head()

        def log_message(self, format, *args):
            pass

    handler = functools.partial(Handler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{USER}:{PASSWORD}@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_model_url_credentials_appear_nowhere(model_server, tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO)
    data = build_dataset(
        tmp_path / "in", num_files=1, rows_per_file=3, plant={"corrupt_image": 1}, seed=2
    )
    out = tmp_path / "out"
    argv = ["embed", "--input", data.pattern, "--output", str(out), "--model"]
    argv += [f"{model_server}/ckpt/", "--id-column", "id", *DIRECT]
    assert cli.main(argv) == 0

    written = _everything_written(out)
    assert "REDACTED@127.0.0.1" in written  # the model's location is recorded, redacted
    printed = capfd.readouterr()
    for where, text in (
        ("output files", written),
        ("logs", caplog.text),
        ("stdout", printed.out),
        ("stderr", printed.err),
    ):
        assert PASSWORD not in text, where


def test_launch_errors_redact_credentials(model_server, tmp_path, capsys):
    data = build_dataset(tmp_path / "in", num_files=1, rows_per_file=1, seed=4)
    argv = ["embed", "--input", data.pattern, "--output", str(tmp_path / "out")]
    assert cli.main([*argv, "--model", f"{model_server}/no-such-model/"]) == 2
    err = capsys.readouterr().err
    assert "--model http://REDACTED@127.0.0.1" in err and PASSWORD not in err


def _everything_written(folder: Path) -> str:
    """Every file below ``folder`` as text: Parquet files as their rows and key-value metadata
    (their pages are compressed, so a byte search would miss what they hold), others as is."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            file = pq.ParquetFile(path)
            parts.append(str(file.schema_arrow.metadata))
            parts.append(str(file.read().to_pylist()))
        else:
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)
