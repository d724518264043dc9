"""Image cells of every layout decode, and every kind of bad cell becomes a typed RowError."""

import io
import pickle
import random

import pyarrow as pa
import pytest
from PIL import Image

from clipbeam.transforms.errors import RowError
from clipbeam.transforms.images import (
    decode_image,
    load_image,
    read_image_bytes,
    resolve_image_format,
)


def encoded(fmt: str, size=(7, 5), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=(200, 10, 10) if mode == "RGB" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def noisy_png() -> bytes:
    buffer = io.BytesIO()
    pixels = random.Random(0).randbytes(64 * 64 * 3)  # noise: PNG cannot compress it away
    Image.frombytes("RGB", (64, 64), pixels).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 4000
    return buffer.getvalue()


HF_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.mark.parametrize(
    ("arrow_type", "requested", "expected"),
    [
        (pa.binary(), "auto", "bytes"),
        (pa.large_binary(), "bytes", "bytes"),
        (pa.string(), "auto", "path"),
        (pa.large_string(), "path", "path"),
        (HF_STRUCT, "auto", "hf-struct"),
        (HF_STRUCT, "hf-struct", "hf-struct"),
    ],
)
def test_resolve_image_format(arrow_type, requested, expected):
    assert resolve_image_format("image", arrow_type, requested) == expected


@pytest.mark.parametrize(
    ("arrow_type", "requested", "message"),
    [
        (pa.int64(), "auto", "needs binary, string, or struct"),
        (pa.binary(), "path", "looks like --image-format bytes"),
        (pa.string(), "hf-struct", "needs struct<bytes: binary, path: string>"),
        (pa.struct([("x", pa.int8())]), "auto", "has type struct<x: int8>"),
    ],
)
def test_resolve_image_format_rejects_unusable_types(arrow_type, requested, message):
    with pytest.raises(ValueError, match="image column 'img'") as info:
        resolve_image_format("img", arrow_type, requested)
    assert message in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decode_image_formats(fmt):
    image = decode_image(encoded(fmt))
    assert image.size == (7, 5)


def test_decode_grayscale_and_rgba_keep_their_mode():
    assert decode_image(encoded("PNG", mode="L")).mode == "L"
    assert decode_image(encoded("PNG", mode="RGBA")).mode == "RGBA"


@pytest.mark.parametrize(
    ("data", "error_type"),
    [
        (None, "missing_image"),
        (b"", "empty_image"),
        (b"not an image at all", "not_an_image"),  # plain text saved in place of an image
        (b"\xff\xd8\xff\xe0" + bytes(range(64)), "corrupt_image"),  # JPEG header, then garbage
        (noisy_png()[:2000], "corrupt_image"),  # truncated: fails when pixels are decoded
    ],
)
def test_bad_bytes_raise_typed_row_errors(data, error_type):
    with pytest.raises(RowError) as info:
        decode_image(data)
    assert info.value.error_type == error_type


def test_row_error_pickles_with_its_fields():
    error = pickle.loads(pickle.dumps(RowError("null_text", "caption is null")))
    assert (error.error_type, error.message) == ("null_text", "caption is null")
    with pytest.raises(ValueError, match="unknown error_type"):
        RowError("oops", "x")


def test_load_image_layouts(tmp_path):
    data = encoded("PNG")
    (tmp_path / "a.png").write_bytes(data)
    assert load_image(data, "bytes").size == (7, 5)
    assert load_image({"bytes": data, "path": "ignored.png"}, "hf-struct").size == (7, 5)
    # A struct without bytes points to a file; relative paths start at the Parquet file's folder.
    assert load_image({"bytes": None, "path": "a.png"}, "hf-struct", base=str(tmp_path)).size
    assert load_image(str(tmp_path / "a.png"), "path").size == (7, 5)
    assert load_image("a.png", "path", base=str(tmp_path)).size == (7, 5)
    assert load_image(f"file://{tmp_path}/a.png", "path").size == (7, 5)


@pytest.mark.parametrize(
    ("value", "fmt", "error_type"),
    [
        (None, "bytes", "missing_image"),
        (None, "hf-struct", "missing_image"),
        ({"bytes": None, "path": None}, "hf-struct", "missing_image"),
        ({"bytes": b"", "path": "x.png"}, "hf-struct", "empty_image"),
        ("", "path", "missing_image"),
        ("/nonexistent/dir/x.png", "path", "missing_image"),
        (123, "bytes", "invalid_value"),
        (b"x", "path", "invalid_value"),
    ],
)
def test_load_image_bad_cells(value, fmt, error_type):
    with pytest.raises(RowError) as info:
        load_image(value, fmt)
    assert info.value.error_type == error_type


def test_unreadable_path_is_not_missing(tmp_path):
    folder = tmp_path / "a-folder.png"
    folder.mkdir()  # exists, but reading it fails
    with pytest.raises(RowError) as info:
        read_image_bytes(str(folder), timeout=5)
    assert info.value.error_type in ("unreadable_image", "missing_image")


def test_http_images_are_read_with_a_timeout():
    import http.server
    import threading

    data = encoded("JPEG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ok.jpg":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/slow.jpg":
                threading.Event().wait(3)
                self.send_response(200)
                self.end_headers()
            else:
                self.send_response(404 if self.path == "/gone.jpg" else 500)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert load_image(f"{base}/ok.jpg", "path", timeout=5).size == (7, 5)
        for name, error_type in [
            ("gone", "missing_image"),
            ("broken", "unreadable_image"),
            ("slow", "unreadable_image"),
        ]:
            with pytest.raises(RowError) as info:
                load_image(f"{base}/{name}.jpg", "path", timeout=0.5)
            assert info.value.error_type == error_type, name
    finally:
        server.shutdown()
        server.server_close()
