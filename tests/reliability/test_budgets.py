"""One row never holds a worker: decoding, fetching and converting one image are bounded.

Which promise each test holds:

- ``test_crafted_structures_are_refused_before_decoding``: Thousands of empty progressive-JPEG
  scans, JPEG marker segments, tiny PNG chunks, GIF comment sub-blocks or stray bytes:
  ``image_too_complex`` in well under a second, counted before any decoder runs; the message
  describes, never quotes.
- ``test_the_budgets_are_exact_and_real_images_pass``: Each budget (scans, segments, chunks,
  sub-blocks) passes at its value and refuses one above; Pillow's own progressive JPEGs and PNGs in
  1 KiB IDAT chunks decode.
- ``test_tiff_strips_are_counted_too``: A TIFF of 300,000 one-byte strips is refused the same way;
  a real one-row-per-strip TIFF decodes.
- ``test_a_job_writes_crafted_rows_to_errors_and_goes_on``: A DirectRunner ``score`` job puts every
  crafted row in ``errors/`` as ``image_too_complex`` and scores the good one.
- ``test_16_bit_conversion_costs_about_an_8_bit_rgb_image``: A 12-megapixel 16-bit PNG is converted
  with a peak under 1.5 bytes per pixel (the 8-bit result plus one strip), not a float64 copy.
- ``test_deep_images_keep_their_scaling``,
  ``test_float_images_with_nan_or_infinity_are_rows_not_crashes``: 16-bit, 32-bit and float images
  keep their 8-bit values; NaN and infinity become 0.
- ``test_integer_arrays_are_range_checked_without_a_copy``: A 16-bit array given to the processor
  costs no int64 or float64 copy.
- ``test_one_deadline_covers_status_line_headers_and_redirects``: ``--http-timeout`` bounds the
  whole fetch: a status line or headers trickled a byte at a time, and 9 slow redirects, are cut
  off at the deadline (loopback servers).
- ``test_the_deadline_covers_resolving_the_host_name``: A resolver answering after 5 s is cut off
  at a 1 s ``--http-timeout``; one answering in time fetches.
- ``test_each_resolved_address_is_tried_in_turn``: An address refusing the connection is followed
  by the next one the host name resolved to.
- ``test_one_deadline_covers_every_request_of_a_gs_read``: A gs:// read whose two requests are
  each answered just inside ``--http-timeout`` is cut off at it (one cancelled task for all of
  them, on a loopback server speaking GCS's JSON API).
- ``test_fetches_within_the_deadline_still_work``: Redirect chains within the deadline still fetch;
  no watchdog thread outlives its fetch.
- ``test_absurd_model_sizes_are_refused_before_anything_is_built``, ``test_real_model_sizes_pass``:
  ``num_hidden_layers`` 10^7, a huge ``image_size``, ``patch_size`` 1, a 10^12 vocabulary: refused
  in milliseconds, naming the field, when the tower cannot fit the machine's memory; ViT-H passes.
- ``test_a_checkpoint_with_absurd_sizes_fails_at_launch_in_one_line``: Such a ``config.json``, or
  ``preprocessor_config.json`` sizes above 4096 pixels: one line, exit 2, the file and the field
  named, no pipeline built.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import socket
import struct
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbeam.transforms.errors import RowError
from clipbeam.transforms.image_structure import (
    BASE_PIECES,
    BYTES_PER_PIECE,
    GIF_MAX_EXTENSION_BLOCKS,
    JPEG_MAX_SCANS,
    JPEG_MAX_SEGMENTS,
)
from clipbeam.transforms.images import decode_image
from clipbeam.transforms.limits import Limits, read_limited
from tests.loopback import serve_http
from tests.pipeline.jobtools import run_job

# Planted in every crafted file: a message that quoted the file would show it.
MARKER = b"tok3n-ya29-SECRET"


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def progressive_with_scans(extra: int, size: tuple[int, int] = (512, 512)) -> bytes:
    """A progressive JPEG whose last scan is repeated ``extra`` more times (a few bytes each)."""
    data = _jpeg(Image.new("RGB", size, (120, 80, 40)), progressive=True, quality=50)
    first = data.index(b"\xff\xda")
    # 0xFFDA cannot occur inside entropy-coded data (0xFF is stuffed there), so this splits scans.
    last = b"\xff\xda" + data[first:-2].split(b"\xff\xda")[-1]
    return data[:-2] + last * extra + b"\xff\xd9"


def scan_count(data: bytes) -> int:
    return data.count(b"\xff\xda")


def jpeg_with_comments(count: int) -> bytes:
    """A small baseline JPEG with ``count`` COM segments after SOI."""
    data = _jpeg(Image.new("RGB", (8, 8), (1, 2, 3)))
    comment = b"\xff\xfe" + struct.pack(">H", 2 + len(MARKER)) + MARKER
    return data[:2] + comment * count + data[2:]


def _chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_with_chunks(count: int, *, idat_pieces: int = 1) -> bytes:
    """A 4x4 grey PNG with ``count`` unknown ancillary chunks before its pixel data."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
    junk = _chunk(b"tkNz", MARKER)
    pixels = zlib.compress(b"\x00\x80\x80\x80\x80" * 4)
    step = max(1, -(-len(pixels) // idat_pieces))
    idats = b"".join(_chunk(b"IDAT", pixels[i : i + step]) for i in range(0, len(pixels), step))
    return b"\x89PNG\r\n\x1a\n" + header + junk * count + idats + _chunk(b"IEND")


def gif_with(blocks: bytes) -> bytes:
    """A 1x1 GIF with ``blocks`` (extensions, stray bytes) before its image."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + blocks + image + b";"


def comment_sub_blocks(count: int) -> bytes:
    return b"!\xfe" + (bytes([len(MARKER)]) + MARKER) * count + b"\x00"


CRAFTED = {
    "jpeg-scans": lambda: progressive_with_scans(3000),
    "jpeg-segments": lambda: jpeg_with_comments(200_000),
    "png-chunks": lambda: png_with_chunks(200_000),
    "gif-comment-blocks": lambda: gif_with(comment_sub_blocks(100_000)),
    "gif-stray-bytes": lambda: gif_with(b"\x07" * 200_000),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_structures_are_refused_before_decoding(case):
    data = CRAFTED[case]()
    start = time.monotonic()
    with pytest.raises(RowError) as info:
        decode_image(data, what="image 'x.jpg'")
    assert time.monotonic() - start < 2, case  # Pillow alone: 1-30 s
    assert info.value.error_type == "image_too_complex"
    message = info.value.message
    assert message.startswith("image 'x.jpg' is a ") and "crafted to stall the decoder" in message
    assert MARKER.decode() not in message and "\\x" not in message  # described, never quoted


def test_the_budgets_are_exact_and_real_images_pass():
    # Pillow's own progressive JPEG, and one at the scan budget, decode; one scan more does not.
    assert decode_image(_jpeg(Image.new("RGB", (64, 48)), progressive=True)).size == (64, 48)
    real = _jpeg(Image.new("RGB", (64, 48)), progressive=True)
    at_budget = progressive_with_scans(JPEG_MAX_SCANS - scan_count(real), (64, 48))
    assert scan_count(at_budget) == JPEG_MAX_SCANS
    assert decode_image(at_budget).size == (64, 48)
    with pytest.raises(RowError, match=f"more scans than {JPEG_MAX_SCANS}"):
        decode_image(progressive_with_scans(JPEG_MAX_SCANS - scan_count(real) + 1, (64, 48)))

    baseline_segments = 6  # APP0, DQT x2, SOF0, DHT block, SOS as Pillow writes them
    decode_image(jpeg_with_comments(JPEG_MAX_SEGMENTS - baseline_segments - 4))
    with pytest.raises(RowError, match=f"more marker segments than {JPEG_MAX_SEGMENTS}"):
        decode_image(jpeg_with_comments(JPEG_MAX_SEGMENTS))

    # PNG: the budget grows with the file (a PNG in 1-KiB IDAT chunks is fine at any size).
    assert decode_image(png_with_chunks(BASE_PIECES - 10)).size == (4, 4)
    with pytest.raises(RowError, match=f"PNG with more chunks than {BASE_PIECES}"):
        decode_image(png_with_chunks(BASE_PIECES))
    big = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, "PNG", compress_level=0)
    data = buffer.getvalue()
    idat = data.index(b"IDAT") - 4
    pixels = zlib.compress(b"".join(b"\x00" + big[y].tobytes() for y in range(512)), level=0)
    pieces = b"".join(
        _chunk(b"IDAT", pixels[i : i + BYTES_PER_PIECE])
        for i in range(0, len(pixels), BYTES_PER_PIECE)
    )
    many_idats = data[:idat] + pieces + _chunk(b"IEND")
    assert many_idats.count(b"IDAT") > 700
    assert np.array_equal(np.asarray(decode_image(many_idats)), big)

    comments = comment_sub_blocks(GIF_MAX_EXTENSION_BLOCKS)
    assert decode_image(gif_with(comments)).size == (1, 1)
    with pytest.raises(
        RowError, match=f"sub-blocks or stray bytes than {GIF_MAX_EXTENSION_BLOCKS}"
    ):
        decode_image(gif_with(comment_sub_blocks(GIF_MAX_EXTENSION_BLOCKS + 1)))


# -- 16-bit and float images -----------------------------------------------------------------------


def _png16(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG of a smooth ramp: megapixels in a few hundred kilobytes."""
    ramp = (np.arange(width, dtype=np.uint32) * 65535 // max(1, width - 1)).astype(np.uint16)
    image = Image.fromarray(np.broadcast_to(ramp, (height, width)).copy())  # I;16
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_16_bit_conversion_costs_about_an_8_bit_rgb_image():
    width, height = 4000, 3000  # 12 megapixels: 36 MB as 8-bit RGB, 96 MB as float64
    data = _png16(width, height)
    tracemalloc.start()
    try:
        image = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "L" and image.size == (width, height)
    row = np.asarray(image)[0]
    assert row[0] == 0 and row[-1] == 255
    # tracemalloc sees numpy's buffers (not Pillow's own image memory): the 8-bit result and
    # bounded strips, far below one float64 or even one uint32 copy of the image.
    assert peak < 1.5 * width * height, peak


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", [0, 257, 32896, 65535], [0, 1, 128, 255]),
        ("I", [0, 1000, 65535, 30000], [0, 4, 255, 117]),  # 16-bit range in 32-bit pixels
        ("I", [0, 10, 200, 255], [0, 10, 200, 255]),  # already 8-bit values
        ("F", [0.0, 0.5, 1.0, 0.25], [0, 128, 255, 64]),  # 0-1 floats
        ("F", [0.0, 2.0e6, 4.0e6, 1.0e6], [0, 128, 255, 64]),  # by range
    ],
)
def test_deep_images_keep_their_scaling(mode, values, expected):
    array = np.array([values] * 3, dtype=np.uint16 if mode == "I;16" else None)
    if mode == "I":
        array = array.astype(np.int32)
    elif mode == "F":
        array = array.astype(np.float32)
    image = Image.fromarray(array)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    decoded = decode_image(buffer.getvalue())
    assert decoded.mode == "L"
    assert np.asarray(decoded)[1].tolist() == expected


def test_float_images_with_nan_or_infinity_are_rows_not_crashes():
    array = np.array([[0.0, np.nan, 1.0, np.inf]] * 2, dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray(array, mode="F").save(buffer, "TIFF")
    decoded = decode_image(buffer.getvalue())
    assert np.asarray(decoded)[0].tolist() == [0, 0, 255, 0]


# -- through a job -----------------------------------------------------------------------------


def test_a_job_writes_crafted_rows_to_errors_and_goes_on(tmp_path, clip_checkpoint):
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good, "PNG")
    rows = {"good": good.getvalue(), **{name: build() for name, build in CRAFTED.items()}}
    table = pa.table(
        {
            "id": list(rows),
            "image": pa.array(list(rows.values()), pa.binary()),
            "text": ["a red square"] * len(rows),
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    start = time.monotonic()
    run = run_job(
        "score",
        str(tmp_path / "in" / "*.parquet"),
        str(tmp_path / "out"),
        clip_checkpoint,
        "--id-column",
        "id",
        "--max-image-bytes",
        "8MiB",
    )
    assert time.monotonic() - start < 120
    errors = {r["id"]: r for r in run.table("errors").to_pylist()}
    assert {i: r["error_type"] for i, r in errors.items()} == {
        name: "image_too_complex" for name in CRAFTED
    }
    assert run.table("scores")["id"].to_pylist() == ["good"]
    assert all(MARKER.decode() not in r["error_message"] for r in errors.values())


# -- one deadline for a whole HTTP fetch ---------------------------------------------------------

TRICKLE_GAP = 0.05  # seconds between bytes: each wait is far below any socket timeout


@pytest.fixture(scope="module")
def slow_server():
    """A loopback server that is slow in the ways a socket timeout does not see.

    ``/status``: the status line and headers one byte at a time (about 4 s in all, then a valid
    image); ``/headers``: the status line at once, then the headers one byte at a time;
    ``/hop/N``: waits 0.3 s, then redirects to ``/hop/N-1``; ``/hop/0`` is the image.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (5, 5), (0, 90, 0)).save(buffer, "PNG")
    body = buffer.getvalue()
    stop = threading.Event()
    head = f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\nX-Pad: {'p' * 20}\r\n\r\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if self.path == "/status":
                    self._trickle(b"HTTP/1.1 200 OK\r\n" + head.encode())
                elif self.path == "/headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self._trickle(head.encode())
                elif self.path.startswith("/hop/"):
                    hops = int(self.path.removeprefix("/hop/"))
                    if hops == 0 or stop.wait(0.3):
                        self._trickle(b"HTTP/1.1 200 OK\r\n" + head.encode(), gap=0)
                        return
                    self.send_response(302)
                    self.send_header("Location", f"/hop/{hops - 1}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.wfile.write(body)

        def _trickle(self, data: bytes, gap: float = TRICKLE_GAP) -> None:
            for i in range(len(data)):
                if gap and stop.wait(gap):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        try:
            yield url
        finally:
            stop.set()  # releases the trickling handlers


@pytest.mark.parametrize("path", ["/status", "/headers", "/hop/9"])
def test_one_deadline_covers_status_line_headers_and_redirects(slow_server, path):
    start = time.monotonic()
    with pytest.raises(RowError) as info:
        read_limited(slow_server + path, Limits(fetch_timeout=1.0))
    elapsed = time.monotonic() - start
    assert info.value.error_type == "unreadable_image"
    assert "took more than --http-timeout 1 s" in info.value.message
    assert elapsed < 1.8, elapsed  # without the deadline: about 4 s (trickle), 2.7 s (9 hops)


def test_fetches_within_the_deadline_still_work(slow_server):
    data = read_limited(slow_server + "/hop/3", Limits(fetch_timeout=5.0))  # 0.9 s of hops
    assert decode_image(data).size == (5, 5)
    threads = threading.active_count()
    for _ in range(20):  # the watchdog of each fetch is gone with the fetch
        read_limited(slow_server + "/hop/0", Limits(fetch_timeout=5.0))
    assert threading.active_count() <= threads + 1


@pytest.fixture
def resolver(monkeypatch):
    """The system resolver, with host names of this test's own: ``slow.test`` answers after
    ``delay`` seconds, ``fallback.test`` first with a loopback port nobody listens on;
    both then with the port asked for on 127.0.0.1. Every other name is resolved as usual."""
    real = socket.getaddrinfo
    state = {"delay": 0.0, "closed_port": None}

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "slow.test":
            time.sleep(state["delay"])
            return real("127.0.0.1", port, *args, **kwargs)
        if host == "fallback.test":
            closed = real("127.0.0.1", state["closed_port"], *args, **kwargs)
            return closed + real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


def test_the_deadline_covers_resolving_the_host_name(slow_server, resolver):
    """A resolver that answers late (the system's retries take tens of seconds) is cut off at
    the fetch's deadline, like any other wait; one that answers in time fetches."""
    port = slow_server.rsplit(":", 1)[1]
    resolver["delay"] = 5.0
    start = time.monotonic()
    with pytest.raises(RowError) as info:
        read_limited(f"http://slow.test:{port}/hop/0", Limits(fetch_timeout=1.0))
    elapsed = time.monotonic() - start
    assert "took more than --http-timeout 1 s" in info.value.message
    assert elapsed < 1.8, elapsed  # without the bound: 5 s
    resolver["delay"] = 0.2
    data = read_limited(f"http://slow.test:{port}/hop/0", Limits(fetch_timeout=5.0))
    assert decode_image(data).size == (5, 5)


def test_each_resolved_address_is_tried_in_turn(slow_server, resolver):
    """As socket.create_connection does: an address that refuses the connection is followed by
    the next one the name resolved to."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        resolver["closed_port"] = probe.getsockname()[1]  # bound, not listening: refused
        port = slow_server.rsplit(":", 1)[1]
        data = read_limited(f"http://fallback.test:{port}/hop/0", Limits(fetch_timeout=5.0))
    assert decode_image(data).size == (5, 5)


@pytest.fixture
def slow_gcs(monkeypatch):
    """A loopback server answering the two GCS JSON API requests of an object read (its
    metadata, then its bytes), each after ``delay`` seconds; ``STORAGE_EMULATOR_HOST`` sends
    gcsfs there for the test."""
    buffer = io.BytesIO()
    Image.new("RGB", (5, 5), (0, 90, 0)).save(buffer, "PNG")
    body = buffer.getvalue()
    state = {"delay": 0.0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(state["delay"])
            if "alt=media" in self.path:
                data, kind = body, "application/octet-stream"
            else:
                meta = {"kind": "storage#object", "bucket": "b", "name": "img.png",
                        "size": str(len(body)), "generation": "1", "contentType": "image/png",
                        "updated": "2026-01-01T00:00:00Z"}  # fmt: skip
                data, kind = json.dumps(meta).encode(), "application/json"
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield state


def test_one_deadline_covers_every_request_of_a_gs_read(slow_gcs):
    """A gs:// image is read within one --http-timeout for all its requests (metadata, bytes,
    gcsfs's retries): two requests each answered just inside the timeout overran it before."""
    data = read_limited("gs://b/img.png", Limits(fetch_timeout=5.0))
    assert decode_image(data).size == (5, 5)
    slow_gcs["delay"] = 0.85
    start = time.monotonic()
    with pytest.raises(RowError) as info:
        read_limited("gs://b/img.png", Limits(fetch_timeout=1.0))
    elapsed = time.monotonic() - start
    assert "took more than --http-timeout 1 s" in info.value.message
    assert elapsed < 1.4, elapsed  # without the one deadline: 1.7 s (two requests of 0.85 s)


# -- sizes in config.json and preprocessor_config.json ---------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"vision_config": {"num_hidden_layers": 10**7}}, "CLIPVisionConfig.num_hidden_layers"),
        ({"text_config": {"num_hidden_layers": 10**400}}, "CLIPTextConfig.num_hidden_layers"),
        ({"vision_config": {"image_size": 10**6}}, "CLIPVisionConfig.image_size"),
        ({"vision_config": {"patch_size": 1, "image_size": 2048}}, "CLIPVisionConfig.patch_size"),
        ({"text_config": {"vocab_size": 10**12}}, "CLIPTextConfig.vocab_size"),
        ({"text_config": {"hidden_size": 2**20, "num_attention_heads": 8}}, "hidden_size"),
    ],
)
def test_absurd_model_sizes_are_refused_before_anything_is_built(config, field):
    from clipbeam.model.configuration import CLIPConfig

    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        CLIPConfig.from_dict(config)
    assert time.monotonic() - start < 0.1
    message = str(info.value)
    assert field in message and "GiB of memory" in message and "\n" not in message
    assert len(message) < 400


def test_real_model_sizes_pass():
    from clipbeam.model.configuration import ChineseCLIPConfig, CLIPConfig

    large = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32}
    vit_h = {**large, "num_attention_heads": 16, "image_size": 224, "patch_size": 14}
    assert CLIPConfig.from_dict({"vision_config": vit_h}).vision_config.num_positions == 257
    ChineseCLIPConfig.from_dict({"text_config": {"vocab_size": 21128}})


@pytest.mark.parametrize(
    ("file", "change", "named"),
    [
        ("config.json", {"num_hidden_layers": 10**9}, "CLIPVisionConfig.num_hidden_layers = 1000"),
        ("config.json", {"image_size": 10**7}, "CLIPVisionConfig.image_size = 10000000"),
        ("preprocessor_config.json", {"crop_size": 100_000}, "crop_size['height'] is 100000"),
        ("preprocessor_config.json", {"size": 10**15}, "size['shortest_edge'] is a 16-digit"),
    ],
)
def test_a_checkpoint_with_absurd_sizes_fails_at_launch_in_one_line(
    file, change, named, clip_checkpoint, tmp_path, capsys, monkeypatch
):
    import json
    import shutil

    from clipbeam.pipeline import cli
    from tests.datasets import build_dataset

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built although the model should have been refused")

    monkeypatch.setattr("clipbeam.pipeline.jobs.build_job", refuse)
    model = tmp_path / "model"
    shutil.copytree(clip_checkpoint, model)
    data = json.loads((model / file).read_text())
    (data["vision_config"] if file == "config.json" else data).update(change)
    (model / file).write_text(json.dumps(data))
    dataset = build_dataset(tmp_path / "data", num_files=1, rows_per_file=2, seed=1)
    argv = ["score", "--input", dataset.pattern, "--output", str(tmp_path / "out")]
    start = time.monotonic()
    status = cli.main([*argv, "--model", str(model)])
    captured = capsys.readouterr()
    assert status == 2, captured
    assert time.monotonic() - start < 30
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert named in captured.err and file in captured.err, captured.err


def tiff_with_strips(rows: int) -> bytes:
    """A 1-pixel-wide grey TIFF of ``rows`` rows, one row (one byte) per strip."""
    pixels = b"\x80" * rows
    offsets_at = 8 + rows
    counts_at = offsets_at + 4 * rows
    directory_at = counts_at + 4 * rows
    offsets = struct.pack(f"<{rows}I", *range(8, 8 + rows))
    counts = struct.pack(f"<{rows}I", *([1] * rows))
    tags = [(256, 4, 1, 1), (257, 4, 1, rows), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(273, 4, rows, offsets_at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, rows, counts_at)]
    directory = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    header = b"II*\x00" + struct.pack("<I", directory_at)
    return header + pixels + offsets + counts + directory + b"\x00" * 4


def test_tiff_strips_are_counted_too():
    assert decode_image(tiff_with_strips(3000)).size == (1, 3000)
    start = time.monotonic()
    with pytest.raises(RowError, match="TIFF with more strips or tiles than") as info:
        decode_image(tiff_with_strips(300_000))  # Pillow alone: about 3 s
    assert time.monotonic() - start < 1 and info.value.error_type == "image_too_complex"
    # Pillow's own TIFFs, with one strip per row, and BigTIFF headers are walked the same way.
    image = Image.fromarray(np.zeros((5000, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "TIFF", tiffinfo={278: 1})
    assert decode_image(buffer.getvalue()).size == (3, 5000)


def test_integer_arrays_are_range_checked_without_a_copy():
    from clipbeam.model.image_processing import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size=8)
    pixels = np.full((2000, 3000, 3), 200, dtype=np.uint16)  # 36 MB of 0-255 values
    tracemalloc.start()
    try:
        out = processor.preprocess(pixels, return_tensors="np")["pixel_values"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 3, 8, 8)
    assert peak < 1.5 * pixels.nbytes, peak  # an int64 copy alone is 4 times the array
    with pytest.raises(ValueError, match=r"integer values in \[0, 4095\]"):
        processor.preprocess(np.arange(4096, dtype=np.uint16).reshape(64, 64), return_tensors="np")
