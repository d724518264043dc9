"""The limits as options, and what the corpus run cannot show: decoded values, what never runs,
how long a fetch may take, where credentials are sent."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from clipbeam.pipeline.arguments import parse_args
from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms.errors import RowError
from clipbeam.transforms.images import decode_image, load_image
from clipbeam.transforms.limits import DEFAULT_LIMITS, Limits, check_caption, read_limited
from clipbeam.transforms.spec import JobSpec
from tests.reliability.conftest import PASSWORD, USER
from tests.reliability.corpus import EPS, animated, bomb_png, encode, sixteen_bit_png

BASE = ["score", "--input", "in/*.parquet", "--output", "out", "--model", "m"]


# -- options ---------------------------------------------------------------------------------------


def test_limit_options_have_safe_defaults():
    spec = parse_args(BASE).spec
    assert spec.limits == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_image_pixels == Image.MAX_IMAGE_PIXELS  # Pillow's bomb threshold
    assert DEFAULT_LIMITS.max_image_bytes == 64 * 2**20
    assert DEFAULT_LIMITS.max_text_chars == 10_000
    assert DEFAULT_LIMITS.fetch_timeout == 30
    assert DEFAULT_LIMITS.allowed_url_schemes == ("file", "gs", "http", "https")


@pytest.mark.parametrize("dash", [True, False])
def test_limit_options_in_both_spellings(dash):
    names = ["max-image-pixels", "max-image-bytes", "max-text-chars", "http-timeout"]
    names.append("allowed-url-schemes")
    values = ["1000000", "5MiB", "300", "2.5", "https://, GS"]
    argv = list(BASE)
    for name, value in zip(names, values, strict=True):
        argv += [f"--{name if dash else name.replace('-', '_')}", value]
    limits = parse_args(argv).spec.limits
    assert limits == Limits(1_000_000, 5 * 2**20, 300, 2.5, ("https", "gs"))
    assert parse_args([*BASE, "--max-image-bytes", "2MB"]).spec.max_image_bytes == 2_000_000


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-image-pixels", "0", "expected a value in [1, inf]"),
        ("--max-image-pixels", "10000000000", "the most pixels Pillow opens at all"),
        ("--max-image-bytes", "12 parsecs", "expected a number of bytes such as"),
        ("--max-text-chars", "-5", "expected a value in [1, 2147483647]"),
        ("--http-timeout", "0", "expected a value in (0, 86400.0]"),
        ("--allowed-url-schemes", "https,,gs", "--allowed-url-schemes holds an empty name"),
        ("--allowed-url-schemes", "http s", "are not URL schemes"),
    ],
)
def test_bad_limit_values_fail_at_launch_in_one_line(option, value, message):
    with pytest.raises(LaunchError) as info:
        parse_args([*BASE, option, value])
    assert message in str(info.value)


def test_spec_checks_limits_for_people_who_build_it_directly():
    with pytest.raises(ValueError, match="max_text_chars must be at least 1") as info:
        JobSpec(kind="score", model="m", output="o", max_text_chars=0, allowed_url_schemes=())
    assert "allowed_url_schemes is empty" in str(info.value)


# -- decoding ------------------------------------------------------------------------------------


def test_16_bit_images_are_scaled_to_8_bits_not_clipped():
    data, pixels = sixteen_bit_png()
    image = decode_image(data)
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), np.rint(pixels / 257).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(fmt):
    image = decode_image(animated(fmt))
    assert image.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


def test_modes_pillow_cannot_turn_into_rgb_are_converted_here():
    lab = Image.new("LAB", (4, 4), (50, 20, 20))
    image = decode_image(encode(lab, "TIFF"))
    assert image.mode == "RGB"


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    small = Limits(max_image_pixels=100 * 100)
    assert decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), limits=small).size
    start = time.monotonic()
    with pytest.raises(RowError, match=r"declares 101x100 = 10100 pixels \(PNG\), over"):
        decode_image(bomb_png(101, 100), limits=small)
    with pytest.raises(RowError, match="over --max-image-pixels 10000"):
        decode_image(bomb_png(60000, 60000), limits=small)  # past Pillow's own refusal
    assert time.monotonic() - start < 1


def test_postscript_is_never_handed_to_ghostscript(monkeypatch, tmp_path):
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was asked to render data from a row")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    with pytest.raises(RowError) as info:
        decode_image(EPS)
    assert info.value.error_type == "not_an_image"
    assert not (tmp_path / "clipbeam-eps-ran").exists()


# -- captions ----------------------------------------------------------------------------------


def test_captions():
    assert check_caption("é\x00") == "é\x00"
    assert check_caption("é".encode()) == "é"
    assert check_caption("x" * 10, Limits(max_text_chars=10)) == "x" * 10
    with pytest.raises(RowError, match="caption has 11 characters, more than --max-text-chars 10"):
        check_caption("x" * 11, Limits(max_text_chars=10))
    with pytest.raises(RowError, match="holds a int, not text"):
        check_caption(5)


# -- reading -----------------------------------------------------------------------------------


def test_local_reads_stop_at_the_byte_limit(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 2000)
    assert len(read_limited(str(path), Limits(max_image_bytes=2000))) == 2000
    with pytest.raises(RowError, match="holds 2000 bytes, over --max-image-bytes 1999"):
        read_limited(f"file://{path}", Limits(max_image_bytes=1999))


def test_schemes_outside_the_allowed_list_are_refused(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))
    remote_only = Limits(allowed_url_schemes=("gs", "https"))
    with pytest.raises(RowError, match="local paths are not allowed") as info:
        load_image(str(path), "path", limits=remote_only)
    assert info.value.error_type == "url_not_allowed"
    with pytest.raises(RowError, match="http:// URLs are not allowed"):
        read_limited("http://127.0.0.1:9/a.png", remote_only)


def test_a_trickling_server_is_cut_off_at_the_deadline(image_server):
    start = time.monotonic()
    with pytest.raises(RowError, match=r"--http-timeout 0\.5 s"):
        read_limited(f"{image_server.url}/trickle", Limits(fetch_timeout=0.5))
    # The deadline is checked after each chunk; one wait for a chunk is bounded by the timeout.
    assert time.monotonic() - start < 1.2


def test_credentials_go_to_their_host_only_and_never_after_a_redirect(image_server):
    image_server.files["cred.png"] = encode(Image.new("RGB", (3, 3)), "PNG")
    host = image_server.url.removeprefix("http://")
    assert load_image(f"http://{USER}:{PASSWORD}@{host}/private/cred.png", "path").size == (3, 3)
    assert load_image(f"http://{USER}:{PASSWORD}@{host}/redirect/cred.png", "path").size == (3, 3)
    redirected = [h for path, h in image_server.requests if path == "/img/cred.png"]
    assert redirected and all("Authorization" not in h for h in redirected)
    assert not any(PASSWORD in path for path, _ in image_server.requests)
