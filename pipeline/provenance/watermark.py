"""The invisible watermarks that open image generators embed, decoded from pixels.

Stable Diffusion's reference scripts, diffusers' SDXL pipelines and the FLUX reference code mark their outputs
with the ``invisible-watermark`` package (``imwatermark``), method ``dwtDct``, and a fixed public message. That
package cannot be a dependency (it requires torch and opencv-python, which conflicts with
opencv-python-headless, and imports torch at import time), so this is its decoder rewritten over numpy
and OpenCV, vectorised, and bit-for-bit the same (``tests/pipeline/test_watermark.py`` checks it against
PyWavelets and against the library's own code where that is installed):

1. BGR -> YUV (OpenCV), the U plane cropped to a multiple of 4 pixels;
2. one level of a Haar DWT and its approximation band split into 4x4 blocks in raster order;
3. in each block the coefficient of largest magnitude after the first carries one bit:
   ``|c| mod 36 > 18`` (36 is the library's default scale for U);
4. block ``k`` carries message bit ``k mod L``; each bit is the majority over its blocks.

The message is public and carries no key: a match says "made by one of these generators", never who made
it, and anyone can embed it. JPEG re-encoding and resizing weaken it; it is evidence, never verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import cv2
import numpy as np

HAAR_TAP = 0.7071067811865476  # PyWavelets' Haar low-pass filter, [1/sqrt(2), 1/sqrt(2)] in float64
BLOCK_PX = 4  # imwatermark's EmbedMaxDct block side (in the DWT band)
U_SCALE = 36.0  # imwatermark's default scales [0, 36, 36]: channel 0 (Y) is skipped, its loop stops before V
MIN_PIXELS = 256 * 256  # imwatermark refuses smaller images
# Every block carries a bit, cycling through the message, so a band of whole block rows carries all of it:
# a larger image is read over its middle band of about this many pixels. A 512 px image (the reference
# scripts' size) gives each of 48 bits 85 votes; this band gives it 170 or more.
MAX_DECODED_PIXELS = 1 << 19
BLOCK_SPAN_PX = 2 * BLOCK_PX  # a block of the half-resolution Haar band covers 8x8 pixels
# A message counts as found when at most this probability of matching so many bits by chance remains
# (each bit a fair coin on unmarked content). Stability's detect script calls 35 of 48 bits "very likely";
# that is a 1e-3 chance per test, and each image is tested against 4 messages in 2 channel orders here.
FALSE_MATCH_PROBABILITY = 1e-6


def _bits_of_int(value: int) -> tuple[int, ...]:
    # As the reference scripts write it: [int(bit) for bit in bin(MESSAGE)[2:]], leading zeros dropped.
    return tuple(int(bit) for bit in bin(value)[2:])


def _bits_of_bytes(message: bytes) -> tuple[int, ...]:
    return tuple(int(bit) for bit in np.unpackbits(np.frombuffer(message, dtype=np.uint8)))


def _min_matching_bits(n_bits: int, probability: float) -> int:
    """The fewest matching bits out of ``n_bits`` that chance reaches with at most ``probability``."""
    tail = 0
    for k in range(n_bits, -1, -1):
        tail += comb(n_bits, k)
        if tail / 2**n_bits > probability:
            return k + 1
    return 0


@dataclass(frozen=True)
class WatermarkMessage:
    """A public watermark message: who embeds it and its bits."""

    name: str
    bits: tuple[int, ...]

    @property
    def min_matching_bits(self) -> int:
        return _min_matching_bits(len(self.bits), FALSE_MATCH_PROBABILITY)


KNOWN_MESSAGES: tuple[WatermarkMessage, ...] = (
    # generative-models (SDXL, SVD) and diffusers' StableDiffusionXLWatermarker: a 48-bit message
    WatermarkMessage("Stable Diffusion XL", _bits_of_int(0b101100111110110010010000011110111011000110011110)),
    # FLUX reference code: 48 bits written, bin()[2:] drops the two leading zeros, 46 embedded
    WatermarkMessage("FLUX", _bits_of_int(0b001010101111111010000111100111001111010100101110)),
    # CompVis txt2img.py (Stable Diffusion 1.x) and Stability's stablediffusion scripts (2.x): bytes
    WatermarkMessage("Stable Diffusion 1.x", _bits_of_bytes(b"StableDiffusionV1")),
    WatermarkMessage("Stable Diffusion 2.x", _bits_of_bytes(b"SDV2")),
)


@dataclass(frozen=True)
class WatermarkMatch:
    """A known message found in an image: how many of its bits matched, and in which channel order."""

    message: WatermarkMessage
    matching_bits: int
    channel_order: str  # "bgr" as the reference scripts pass it, "rgb" as diffusers does (RGB taken as BGR)


def haar_approximation(plane: np.ndarray) -> np.ndarray:
    """The approximation band of one level of a 2-D Haar DWT of an (H, W) plane with even sides.

    Returns float64 (H / 2, W / 2), equal to ``pywt.dwt2(plane, "haar")[0]`` to the last bit: the same
    float64 products and sums (pairs of rows, then pairs of columns), without the three detail bands.
    That exactness matters: the band of integer pixels often lands exactly on a multiple of the scale.
    """
    down = np.multiply(plane[1::2], HAAR_TAP)
    down += np.multiply(plane[0::2], HAAR_TAP)
    band = np.multiply(down[:, 1::2], HAAR_TAP)
    band += np.multiply(down[:, 0::2], HAAR_TAP)
    return band


def block_bits(bgr: np.ndarray) -> np.ndarray:
    """The bit each 4x4 block of the U plane's Haar band carries, in raster order.

    ``bgr``: uint8 (H, W, 3) in OpenCV's channel order. Returns bool (n_blocks,).
    """
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    u = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV)[:rows, :cols, 1]
    band = haar_approximation(u)
    n_r, n_c = band.shape[0] // BLOCK_PX, band.shape[1] // BLOCK_PX
    magnitude = np.abs(band[: n_r * BLOCK_PX, : n_c * BLOCK_PX])
    magnitude[::BLOCK_PX, ::BLOCK_PX] = 0.0  # the first coefficient of a block never carries the bit
    # The library takes the coefficient at the argmax of the magnitudes: its magnitude is their maximum
    # (a block of zeros gives 0 either way). Rows of the block first, then columns: no copy per block.
    strongest = magnitude.reshape(n_r, BLOCK_PX, -1).max(axis=1).reshape(n_r, n_c, BLOCK_PX).max(axis=2)
    return np.asarray((strongest.ravel() % U_SCALE) > 0.5 * U_SCALE)


def decode_bits(bits: np.ndarray, length: int, first_block: int = 0) -> np.ndarray:
    """A ``length``-bit message from per-block bits: block k votes for bit ``k mod length``, the blocks
    numbered from ``first_block`` (the image's first block is 0).

    Returns uint8 (length,) of 0/1; a bit with no block (an image too small) decodes as 0.
    """
    position = (np.arange(len(bits)) + first_block) % length
    votes = np.bincount(position, weights=bits.astype(np.float64), minlength=length)
    counts = np.bincount(position, minlength=length)
    mean = np.divide(votes, counts, out=np.zeros(length), where=counts > 0)
    return (mean * 255 > 127).astype(np.uint8)  # the library's own rounding of the vote


def decoded_band(height_px: int, width_px: int) -> tuple[slice, int]:
    """The rows of an image to decode (whole block rows in its middle, at most ``MAX_DECODED_PIXELS``,
    all of them for a small image) and the number of the band's first block."""
    block_rows, block_cols = height_px // BLOCK_SPAN_PX, max(width_px // BLOCK_SPAN_PX, 1)
    keep = min(block_rows, max(1, MAX_DECODED_PIXELS // (BLOCK_SPAN_PX**2 * block_cols)))
    if keep == block_rows:
        return slice(0, height_px), 0
    first_row = (block_rows - keep) // 2
    rows = slice(first_row * BLOCK_SPAN_PX, (first_row + keep) * BLOCK_SPAN_PX)
    return rows, first_row * block_cols


def find_watermarks(
    rgb: np.ndarray, messages: tuple[WatermarkMessage, ...] = KNOWN_MESSAGES
) -> list[WatermarkMatch]:
    """The known messages found in an RGB uint8 image (H, W, 3); empty for images under 256x256 pixels.

    Costs about the same for any image of a megapixel or more (``decoded_band``)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        return []
    rows, first_block = decoded_band(rgb.shape[0], rgb.shape[1])
    found: dict[str, WatermarkMatch] = {}
    for order, image in (("bgr", rgb[rows, :, ::-1]), ("rgb", rgb[rows])):
        bits = block_bits(image)
        for message in messages:
            decoded = decode_bits(bits, len(message.bits), first_block)
            matching = int(np.sum(decoded == np.asarray(message.bits, dtype=np.uint8)))
            best = found.get(message.name)
            if matching >= message.min_matching_bits and (best is None or matching > best.matching_bits):
                found[message.name] = WatermarkMatch(message, matching, order)
    return list(found.values())
