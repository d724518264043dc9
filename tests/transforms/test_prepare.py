"""prepare_image: one cell to model input, in exact and fast mode, with errors as row errors."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import skimage.data

from clipbeam.model.image_processing import CLIPImageProcessor
from clipbeam.model.image_settings import PREPROCESS_MODES
from clipbeam.model.image_transforms import process_image
from clipbeam.transforms.errors import RowError
from clipbeam.transforms.images import decode_image, prepare_image
from clipbeam.transforms.spec import PREPROCESS_MODES as SPEC_MODES


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    image = PIL.Image.fromarray(skimage.data.coffee()).resize((900, 600))  # 600 x 400 upscaled
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


SETTINGS = CLIPImageProcessor(size=64, crop_size=64).resolve_settings()


def test_exact_mode_is_the_processor_on_the_decoded_image(photo_jpeg):
    prepared = prepare_image(photo_jpeg, "bytes", SETTINGS)
    assert prepared.size == (900, 600)
    want = process_image(decode_image(photo_jpeg), SETTINGS)
    assert prepared.pixels.dtype == want.dtype and np.array_equal(prepared.pixels, want)


def test_fast_mode_decodes_at_reduced_scale_and_reports_the_stored_size(photo_jpeg):
    prepared = prepare_image(photo_jpeg, "bytes", SETTINGS, mode="fast")
    assert prepared.size == (900, 600)  # as stored, not as decoded (1/8: 113 x 75)
    want = process_image(PIL.Image.open(io.BytesIO(photo_jpeg)), SETTINGS, mode="fast")
    assert np.array_equal(prepared.pixels, want)
    exact = prepare_image(photo_jpeg, "bytes", SETTINGS).pixels
    assert not np.array_equal(prepared.pixels, exact)
    assert np.abs(prepared.pixels - exact).mean() < 0.05  # normalized units: about 1.5 / 255


@pytest.mark.parametrize("mode", PREPROCESS_MODES)
def test_broken_cells_are_row_errors_in_both_modes(photo_jpeg, mode):
    cases = {
        "corrupt_image": photo_jpeg[: len(photo_jpeg) // 3],  # truncated: fails while decoding
        "missing_image": None,
        "invalid_value": "not bytes",
    }
    for error_type, cell in cases.items():
        with pytest.raises(RowError) as info:
            prepare_image(cell, "bytes", SETTINGS, mode=mode)
        assert info.value.error_type == error_type


def test_struct_cells_and_paths_are_read_like_load_image(photo_jpeg, tmp_path):
    (tmp_path / "a.jpg").write_bytes(photo_jpeg)
    want = prepare_image(photo_jpeg, "bytes", SETTINGS, mode="fast").pixels
    for cell, image_format in [
        ({"bytes": photo_jpeg, "path": "a.jpg"}, "hf-struct"),
        ({"bytes": None, "path": "a.jpg"}, "hf-struct"),
        ("a.jpg", "path"),
    ]:
        got = prepare_image(cell, image_format, SETTINGS, mode="fast", base=str(tmp_path))
        assert np.array_equal(got.pixels, want)


def test_job_spec_offers_the_model_s_modes():
    assert SPEC_MODES == PREPROCESS_MODES
