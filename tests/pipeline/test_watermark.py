"""The dwtDct watermark decoder: the library's algorithm to the bit, the reference messages, no false alarm
on the public-domain stills."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from pipeline.provenance.watermark import (
    KNOWN_MESSAGES,
    MAX_DECODED_PIXELS,
    MIN_PIXELS,
    block_bits,
    decode_bits,
    decoded_band,
    find_watermarks,
    haar_approximation,
)
from tests.provenance_media import SDXL_BITS, encode_watermark
from workers.samples import face_image

STILLS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def still(name: str) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)())


def test_the_haar_band_is_pywavelets_to_the_last_bit() -> None:
    pywt = pytest.importorskip("pywt")
    for name in STILLS:
        yuv = cv2.cvtColor(still(name)[:, :, ::-1].copy(), cv2.COLOR_BGR2YUV)
        rows, cols = yuv.shape[0] // 4 * 4, yuv.shape[1] // 4 * 4
        plane = yuv[:rows, :cols, 1]
        assert np.array_equal(haar_approximation(plane), pywt.dwt2(plane, "haar")[0]), name


def test_the_reference_messages() -> None:
    sdxl, flux, sd1, sd2 = KNOWN_MESSAGES
    assert len(sdxl.bits) == 48 and int("".join(map(str, sdxl.bits)), 2) == 0xB3EC907BB19E
    assert len(flux.bits) == 46  # bin()[2:] of a 48-bit constant with two leading zeros
    assert (len(sd1.bits), len(sd2.bits)) == (136, 32)
    assert np.packbits(np.array(sd1.bits, np.uint8)).tobytes() == b"StableDiffusionV1"
    # 1e-6 of chance per test: stricter than Stability's 35 of 48
    assert [m.min_matching_bits for m in KNOWN_MESSAGES] == [41, 39, 96, 30]


def test_a_marked_image_decodes_to_its_message_in_either_channel_order() -> None:
    face = face_image()
    marked = encode_watermark(face, SDXL_BITS)
    assert np.abs(marked.astype(int) - face).mean() < 2  # invisible
    (match,) = find_watermarks(marked)
    assert (match.message.name, match.matching_bits, match.channel_order) == (
        "Stable Diffusion XL",
        48,
        "bgr",
    )
    # diffusers hands the encoder RGB arrays as though they were BGR
    as_diffusers = encode_watermark(face[:, :, ::-1], SDXL_BITS)[:, :, ::-1]
    (match,) = find_watermarks(as_diffusers)
    assert match.channel_order == "rgb"
    sd1 = KNOWN_MESSAGES[2]
    assert [m.message.name for m in find_watermarks(encode_watermark(face, sd1.bits))] == [sd1.name]


@pytest.mark.parametrize("name", STILLS)
def test_unmarked_stills_carry_no_known_message(name: str) -> None:
    assert find_watermarks(still(name)) == []


def test_small_images_are_not_read() -> None:
    assert find_watermarks(np.zeros((255, 256, 3), np.uint8)) == []
    assert MIN_PIXELS > 255 * 256
    bits = block_bits(np.zeros((256, 256, 3), np.uint8))
    assert bits.shape == (32 * 32,) and not bits.any()  # flat: every block's largest coefficient is 0
    assert decode_bits(bits[:10], 48).tolist() == [0] * 48  # bits with no block decode as 0


def test_a_large_image_is_read_over_a_band_of_whole_block_rows() -> None:
    big = cv2.resize(face_image(), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    rows, first_block = decoded_band(*big.shape[:2])
    assert rows.start % 8 == 0 and rows.stop % 8 == 0 and first_block == rows.start // 8 * (1600 // 8)
    assert (rows.stop - rows.start) * 1600 <= MAX_DECODED_PIXELS < (rows.stop - rows.start + 8) * 1600
    whole = block_bits(big[:, :, ::-1])
    band = block_bits(big[rows, :, ::-1])
    assert np.array_equal(
        band, whole[first_block : first_block + len(band)]
    )  # the same blocks, the same bits
    (match,) = find_watermarks(encode_watermark(big, SDXL_BITS))
    assert match.matching_bits == 48
    assert decoded_band(512, 512) == (slice(0, 512), 0)


def _library_module() -> ModuleType:
    """imwatermark's EmbedMaxDct (its dwtDct), loaded from its file: the package itself imports torch."""
    spec = importlib.util.find_spec("imwatermark")
    if spec is None or not spec.submodule_search_locations:
        why = "invisible-watermark is not installed (make test installs it: pip install --no-deps ...)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI always has it
        pytest.skip(why)
    source = Path(next(iter(spec.submodule_search_locations))) / "maxDct.py"
    module_spec = importlib.util.spec_from_file_location("imwatermark_maxdct", source)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_encoder_and_decoder_match_the_library_where_it_is_installed() -> None:
    library = _library_module()
    face = face_image()
    bgr = np.ascontiguousarray(face[:, :, ::-1])
    theirs = library.EmbedMaxDct(list(SDXL_BITS), wmLen=48).encode(bgr.copy())
    ours = encode_watermark(face, SDXL_BITS)
    assert np.array_equal(ours, theirs[:, :, ::-1])
    for image in (theirs, bgr, still("coffee")[:, :, ::-1].copy()):
        decoded = library.EmbedMaxDct([], wmLen=48).decode(image)
        assert np.array_equal(decode_bits(block_bits(image), 48), np.asarray(decoded, np.uint8))
