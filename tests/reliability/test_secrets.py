"""Secrets never copied into outputs: what came back instead of an image is described, never
quoted, and URL credentials are redacted whatever characters the password holds.

What a URL or a path gives instead of an image is often an OAuth token endpoint's JSON, a login
page, or a local credentials file; error messages tell its kind, size, HTTP status and media type.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbeam.transforms.redact import redact, redact_obj, redact_url
from tests.pipeline.jobtools import run_job

SECRET = "ya29.a0AfB_byC-SECRET-9f8e7d6c5b4a"
BODIES = {
    "token.json": json.dumps({"access_token": SECRET, "token_type": "Bearer"}).encode(),
    "login.html": f"<html><head><title>Sign in {SECRET}</title></head></html>".encode(),
    "note.txt": f"token {SECRET}\n".encode(),
    "key.der": b"\x30\x82\x01\x0a" + SECRET.encode() + bytes(range(256)),
    "creds.xml": f"<?xml version='1.0'?><key>{SECRET}</key>".encode(),
}


def _fragments(secret: str, size: int = 6) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def _errors(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "errors").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def _write(path: Path, images: list, image_type: pa.DataType) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"r{i}" for i in range(len(images))]
    table = pa.table(
        {
            "id": ids,
            "image": pa.array(images, type=image_type),
            "text": ["a caption"] * len(images),
        }
    )
    pq.write_table(table, path)
    return str(path)


def _assert_described_not_quoted(out: Path, expected: int) -> list[dict]:
    rows = _errors(out)
    assert len(rows) == expected, rows
    everything = json.dumps(rows) + (out / "summary.json").read_text()
    for fragment in _fragments(SECRET):
        assert fragment not in everything, fragment
    return rows


def test_bytes_that_are_not_images_are_described(tmp_path, clip_checkpoint):
    data = _write(tmp_path / "in" / "a.parquet", list(BODIES.values()), pa.binary())
    out = tmp_path / "out"
    run_job("score", data, str(out), clip_checkpoint, "--id-column", "id")
    rows = _assert_described_not_quoted(out, len(BODIES))
    by_id = {r["id"]: r["error_message"] for r in rows}
    for i, (name, body) in enumerate(BODIES.items()):
        assert f"{len(body)} bytes" in by_id[f"r{i}"], (name, by_id[f"r{i}"])
    assert "is a JSON document" in by_id["r0"] and "is an HTML page" in by_id["r1"]


def test_files_and_urls_that_are_not_images_are_described(tmp_path, clip_checkpoint, image_server):
    local = tmp_path / "secrets"
    local.mkdir()
    for name, body in BODIES.items():
        (local / name).write_bytes(body)
        image_server.files[f"s-{name}"] = body
    image_server.files["reason"] = f"Denied {SECRET}".encode()
    image_server.files["garbage"] = SECRET.encode()
    locations = [str(local / n) for n in BODIES]
    locations += [f"{image_server.url}/img/s-{n}" for n in BODIES]
    locations += [f"{image_server.url}/reason/reason", f"{image_server.url}/garbage/garbage"]
    data = _write(tmp_path / "in" / "a.parquet", locations, pa.string())
    out = tmp_path / "out"
    run_job("score", data, str(out), clip_checkpoint, "--id-column", "id", "--http-timeout", "5")
    rows = _assert_described_not_quoted(out, len(locations))
    by_id = {r["id"]: r for r in rows}
    reason = by_id[f"r{len(locations) - 2}"]
    assert reason["error_type"] == "unreadable_image"
    assert "HTTP 500 Internal Server Error, a text/html reply" in reason["error_message"]
    assert "not valid HTTP" in by_id[f"r{len(locations) - 1}"]["error_message"]


# -- URL credentials: a parse that cannot be fooled ------------------------------------------

HOST = "host.example:8080/a/b.jpg?w=1"


def _passwords() -> list[str]:
    """One password per printable character (alone, and around letters), and random ones."""
    rng = random.Random(12)
    chars = string.printable
    found = [c for c in chars] + [f"Zq{c}9{c}Xk" for c in chars]
    found += ["".join(rng.choice(chars) for _ in range(rng.randint(4, 24))) for _ in range(300)]
    return found


@pytest.mark.parametrize("scheme", ["http", "https", "gs"])
def test_redact_url_hides_any_password(scheme):
    for password in _passwords():
        for user in ("alice", ""):
            url = f"{scheme}://{user}:{password}@{HOST}"
            assert redact_url(url) == f"{scheme}://REDACTED@{HOST}", repr(url)
    # A bare token in the user's place, holding any character but a blank.
    for token in _passwords():
        if "@" in token or not token.strip() or any(c.isspace() for c in token):
            continue
        url = f"{scheme}://{token}:x@{HOST}"
        assert redact_url(url) == f"{scheme}://REDACTED@{HOST}", repr(url)


def test_redact_in_messages_and_values_hides_any_password():
    for password in _passwords():
        url = f"https://u:{password}@{HOST}"
        shown = f"https://REDACTED@{HOST}"
        # Messages quote locations with repr() and JSON with double quotes.
        quote = repr(url)[0]
        assert redact(f"reading {url!r} failed") == f"reading {quote}{shown}{quote} failed", url
        assert redact(json.dumps({"model": url})) == json.dumps({"model": shown}), repr(url)
        assert redact_obj({"model": url}) == {"model": shown}, repr(url)
        if not any(c.isspace() or c in "'\"<>`" for c in password):
            assert redact(f"reading {url} failed") == f"reading {shown} failed", repr(url)


def test_redact_keeps_urls_without_credentials():
    for url in (
        "https://medium.com/@user/post?x=1",
        "https://h.example:8443/a/b.jpg",
        "gs://bucket/dir/part-0.parquet",
    ):
        assert redact_url(url) == url


def test_credentials_with_special_characters_never_reach_errors(
    tmp_path, clip_checkpoint, image_server
):
    """The issue's case: ``http://u:p/ss@host/x`` landed whole in errors/, with the parse error
    (which quotes a fragment of the password as a port)."""
    host = image_server.url.removeprefix("http://")
    passwords = ["p/ss", "p#ss", "p?ss", "p@ss", "p:ss", "p ss", "p'ss\"x", "12/x", "12?x"]
    passwords += [f"Zq{c}9Xk" for c in "/?#@:%[]\\ "]
    locations = [f"http://alice:{pw}@{host}/img/none.jpg" for pw in passwords]
    data = _write(tmp_path / "in" / "a.parquet", locations, pa.string())
    out = tmp_path / "out"
    run_job("score", data, str(out), clip_checkpoint, "--id-column", "id", "--http-timeout", "5")
    rows = _errors(out)
    assert len(rows) == len(locations)
    for row in rows:
        password = passwords[int(row["id"][1:])]
        assert password not in row["error_message"], row
        assert "Zq" not in row["error_message"] and "Xk" not in row["error_message"], row
        assert "REDACTED@" in row["error_message"], row
