"""Builders and the fixed layers every image member starts with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.layers import (
    CAPTION_BAND,
    EXPOSURE_LEVELS,
    CaptionMask,
    ChromaCooccurrence,
    ChromaResidual,
    ColourSpectrum,
    ColourTexture,
    LogSpectrum,
    SpectrumProfile,
    backend_dependent_layers,
)
from tests.conftest import REPO
from training.architectures import IMAGE_ARCHITECTURES, build_image_member


def box_blur(images: np.ndarray) -> np.ndarray:
    """A 2 x 2 box blur (wrapping at the edges) of (N, H, W, C) images: it damps the highest frequencies."""
    return (
        images + np.roll(images, 1, axis=1) + np.roll(images, 1, axis=2) + np.roll(images, 1, axis=(1, 2))
    ) / 4


def test_caption_mask_greys_the_bottom_band_only() -> None:
    images = np.ones((1, 100, 8, 3), np.float32)
    out = np.asarray(CaptionMask()(images))
    band = int(np.ceil(CAPTION_BAND * 100))
    np.testing.assert_array_equal(out[0, -band:], 0.5)
    np.testing.assert_array_equal(out[0, :-band], 1.0)


@pytest.mark.parametrize(
    ("architecture", "front_end"),
    [
        ("spectral", "pixels"),
        ("profile", "pixels"),
        ("spectrum_grid", "pixels"),
        ("densenet121", "pixels"),
        ("densenet121", "spectrum"),
        ("densenet121", "residual"),
    ],
)
def test_members_do_not_see_a_caption(architecture: str, front_end: str) -> None:
    """A watermark in the bottom band (where generated-face sites put theirs) cannot change a score."""
    size = 64
    model = build_image_member(architecture, (size, size), front_end=front_end)
    rng = np.random.default_rng(0)
    face = rng.random((1, size, size, 3)).astype(np.float32)
    captioned = face.copy()
    captioned[0, -3:, size // 2 :] = 1.0  # white caption text in the bottom-right corner
    moved = face.copy()
    moved[0, :3, size // 2 :] = 1.0  # the same marks anywhere else do count
    # logits, not scores: an untrained head often saturates the sigmoid (the profile member's log
    # frequencies reach -11.5), where every score is 0 or 1 within any tolerance
    head = model.get_layer("p_fake")
    features = keras.Model(model.input, head.input)
    logits = [
        float((np.asarray(features(x)) @ np.asarray(head.kernel))[0, 0] + float(head.bias[0]))
        for x in (face, captioned, moved)
    ]
    assert logits[1] == pytest.approx(logits[0], abs=1e-6)
    assert logits[2] != pytest.approx(logits[0], abs=1e-6)


def test_spectrum_profile_sees_blur_and_colour() -> None:
    rng = np.random.default_rng(1)
    sharp = rng.random((1, 64, 64, 3)).astype(np.float32)
    blurred = box_blur(sharp)
    layer = SpectrumProfile(bins=16)
    a, b = np.asarray(layer(sharp))[0], np.asarray(layer(blurred))[0]
    assert a.shape == (16 + 12 + 2 * (EXPOSURE_LEVELS - 1),)
    assert b[15] < a[15] - 1.0  # blurring removes the highest frequencies (log magnitude)
    np.testing.assert_allclose(a[16:19], sharp[0].mean(axis=(0, 1)), rtol=1e-5)  # mean R, G, B
    tinted = np.asarray(layer(np.clip(sharp * [1.0, 0.8, 0.8], 0, 1).astype(np.float32)))[0]
    assert tinted[17] < a[17] and tinted[19] < a[19]  # less green and blue: lower mean G and luma Y

    clipped = np.asarray(layer(np.clip(sharp * 1.5, 0, 1).astype(np.float32)))[0]
    brightest = slice(28, 28 + EXPOSURE_LEVELS - 1)  # fraction of pixels at or above each brightness level
    assert np.all(np.diff(a[brightest]) <= 0)  # cumulative: never rises with the level
    assert clipped[brightest][-1] > a[brightest][-1] + 0.2  # over-exposure fills the top level


def _lbp_reference(luma: np.ndarray, radius: int) -> np.ndarray:
    """The uniform pattern of every interior pixel, pixel by pixel: the definition ColourTexture vectorises."""
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    h, w = luma.shape
    out = np.empty((h - 2 * radius, w - 2 * radius), np.int64)
    for y in range(radius, h - radius):
        for x in range(radius, w - radius):
            bits = [int(luma[y + dy * radius, x + dx * radius] >= luma[y, x]) for dy, dx in ring]
            changes = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
            out[y - radius, x - radius] = sum(bits) if changes <= 2 else 9
    return out


def test_colour_texture_counts_hsv_colours_and_local_binary_patterns() -> None:
    from matplotlib.colors import rgb_to_hsv

    rng = np.random.default_rng(3)
    images = (rng.integers(0, 256, (2, 40, 40, 3)) / 255).astype(np.float32)
    images[1, :, :20] = images[1, :1, :1]  # a flat region: one colour, one pattern
    out = np.asarray(ColourTexture()(images))
    assert out.shape == (2, 12 * 4 * 4 + 4 * 10) == ColourTexture().compute_output_shape((2, 40, 40, 3))

    hsv = rgb_to_hsv(images.astype(np.float64))
    levels = [np.minimum((hsv[..., i] * n).astype(int), n - 1) for i, n in enumerate((12, 4, 4))]
    codes = (levels[0] * 4 + levels[1]) * 4 + levels[2]
    for i in range(2):
        expected = np.bincount(codes[i].ravel(), minlength=192) / codes[i].size
        np.testing.assert_allclose(out[i, :192] ** 2, expected, atol=2 / codes[i].size)  # float32 ties

    luma = images @ np.array([0.299, 0.587, 0.114], np.float32)
    for i in range(2):
        histograms = out[i, 192:].reshape(4, 10) ** 2  # radius 1 face, radius 1 sides, radius 2 face, sides
        for r, radius in enumerate((1, 2)):
            patterns = _lbp_reference(luma[i], radius)
            n = patterns.shape[0]
            face = patterns[int(0.23 * n) : int(0.70 * n), int(0.25 * n) : int(0.75 * n)]
            strip = int(0.16 * n)
            sides = np.concatenate([patterns[:, :strip], patterns[:, n - strip :]], axis=1)
            for j, region in enumerate((face, sides)):
                expected = np.bincount(region.ravel(), minlength=10) / region.size
                np.testing.assert_allclose(histograms[2 * r + j], expected, atol=1e-6)
    flat = out[1, 192:].reshape(4, 10) ** 2
    assert flat[1, 8] > 0.5 > out[0, 192:].reshape(4, 10)[1, 8] ** 2  # flat sides: all neighbours equal


def _cooccurrence_reference(
    plane: np.ndarray, order: int, t: int = 3, counted: Callable[[int, int], bool] = lambda y, x: True
) -> np.ndarray:
    """Frequencies of (residual, next residual) along the rows of one plane, loop by loop, over the pairs
    whose first residual sits at a (row, column) that ``counted`` accepts."""
    h, w = plane.shape
    counts = np.zeros((2 * t + 1, 2 * t + 1))
    for y in range(h):
        if order == 1:
            residual = [plane[y, x + 1] - plane[y, x] for x in range(w - 1)]
        else:
            residual = [plane[y, x] - 2 * plane[y, x + 1] + plane[y, x + 2] for x in range(w - 2)]
        q = [int(np.clip(np.round(r), -t, t)) + t for r in residual]
        for x, (here, following) in enumerate(zip(q[:-1], q[1:], strict=True)):
            if counted(y, x):
                counts[here, following] += 1
    return (counts / counts.sum()).ravel()


def test_chroma_cooccurrence_counts_neighbouring_colour_residuals() -> None:
    rng = np.random.default_rng(4)
    walk = np.cumsum(rng.integers(-2, 3, (2, 24, 30, 3)), axis=2) + 128  # residuals mostly inside [-3, 3]
    images = (np.clip(walk, 0, 255) / 255).astype(np.float32)
    layer = ChromaCooccurrence()
    out = np.asarray(layer(images))
    assert out.shape == (2, 3 * 4 * 49) == layer.compute_output_shape((2, 24, 30, 3))
    histograms = np.exp(out.reshape(2, 3, 2, 2, 49)) - 1e-5  # (image, colour pair, direction, order, bins)
    for i in range(2):
        for p, (a, b) in enumerate(((0, 1), (1, 2), (0, 2))):
            plane = (images[i, ..., a] - images[i, ..., b]).astype(np.float64) * 255
            for d, oriented in enumerate((plane, plane.T)):  # along the rows, then along the columns
                for o in (1, 2):
                    expected = _cooccurrence_reference(oriented, o)
                    np.testing.assert_allclose(histograms[i, p, d, o - 1], expected, atol=1e-5)

    brighter = np.asarray(layer(np.clip(images + 10 / 255, 0, 1).astype(np.float32)))
    np.testing.assert_allclose(brighter, out, atol=1e-4)  # the same shift of R, G and B: nothing to see
    grey = np.asarray(layer(np.repeat(images[..., :1], 3, axis=-1)))  # no colour: every residual is 0
    assert np.allclose(np.exp(grey.reshape(2, 12, 49)[:, :, 24]) - 1e-5, 1.0, atol=1e-5)


def _region(h: int, w: int, border: float, middle: bool) -> Callable[[int, int], bool]:
    """Whether (row, column) lies in the middle of an h x w plane (``middle``) or in the ring around it."""
    top, left = int(border * h), int(border * w)
    return lambda y, x: (top <= y < h - top and left <= x < w - left) == middle


def test_chroma_cooccurrence_counts_the_middle_and_the_ring_apart() -> None:
    rng = np.random.default_rng(6)
    walk = np.cumsum(rng.integers(-2, 3, (1, 16, 20, 3)), axis=1) + 128
    images = (np.clip(walk, 0, 255) / 255).astype(np.float32)
    layer = ChromaCooccurrence(border=0.25)
    out = np.asarray(layer(images))
    assert out.shape == (1, 3 * 4 * 2 * 49) == layer.compute_output_shape((1, 16, 20, 3))
    histograms = np.exp(out.reshape(3, 2, 2, 2, 49)) - 1e-5  # (colour pair, direction, order, region, bins)
    for p, (a, b) in enumerate(((0, 1), (1, 2), (0, 2))):
        plane = (images[0, ..., a] - images[0, ..., b]).astype(np.float64) * 255
        for d, oriented in enumerate((plane, plane.T)):
            for o in (1, 2):
                for region, middle in enumerate((True, False)):
                    counted = _region(*oriented.shape, border=0.25, middle=middle)
                    expected = _cooccurrence_reference(oriented, o, counted=counted)
                    np.testing.assert_allclose(histograms[p, d, o - 1, region], expected, atol=1e-5)
    assert ChromaCooccurrence.from_config(layer.get_config()).border == 0.25


def test_chroma_residual_maps_are_truncated_colour_difference_residuals() -> None:
    rng = np.random.default_rng(5)
    walk = np.cumsum(rng.integers(-3, 4, (2, 12, 14, 3)), axis=1) + 128  # residuals inside and beyond [-3, 3]
    images = (np.clip(walk, 0, 255) / 255).astype(np.float32)
    layer = ChromaResidual()
    out = np.asarray(layer(images))
    assert out.shape == (2, 12, 14, 12) == layer.compute_output_shape((2, 12, 14, 3))
    maps = out.reshape(2, 12, 14, 3, 4)  # (image, row, column, colour pair, residual)
    for p, (a, b) in enumerate(((0, 1), (1, 2), (0, 2))):
        plane = np.pad(
            (images[..., a] - images[..., b]).astype(np.float64) * 255, ((0, 0), (1, 1), (1, 1)), "edge"
        )
        centre = plane[:, 1:-1, 1:-1]
        expected = [
            plane[:, 1:-1, 2:] - centre,  # first order along the rows
            plane[:, 2:, 1:-1] - centre,  # ... along the columns
            plane[:, 1:-1, :-2] - 2 * centre + plane[:, 1:-1, 2:],  # second order along the rows
            plane[:, :-2, 1:-1] - 2 * centre + plane[:, 2:, 1:-1],  # ... along the columns
        ]
        for r, residual in enumerate(expected):
            np.testing.assert_allclose(maps[..., p, r], np.clip(residual, -3, 3) / 3, atol=1e-4)
    assert np.abs(out).max() == pytest.approx(1.0)  # the walk does exceed the truncation
    brighter = np.asarray(layer(np.clip(images + 10 / 255, 0, 1).astype(np.float32)))
    np.testing.assert_allclose(brighter, out, atol=1e-4)  # the same shift of R, G and B: nothing to see
    assert not np.asarray(layer(np.repeat(images[..., :1], 3, axis=-1))).any()  # no colour, no residual


def test_every_architecture_is_known() -> None:
    assert {
        "xception",
        "inception_v3",
        "resnet50",
        "densenet121",
        "spectral",
        "profile",
        "spectrum_grid",
    } == set(IMAGE_ARCHITECTURES)


def test_spectrum_grid_reads_the_magnitudes_of_frequencies() -> None:
    """The photographic negative negates every frequency of the zero-mean luminance (the grey caption band
    included) and so leaves the magnitudes and the score as they were; blurring removes high frequencies."""
    import keras

    size = 64
    keras.utils.set_random_seed(0)  # a fixed untrained model: its weights read every cell
    model = build_image_member("spectrum_grid", (size, size))
    rng = np.random.default_rng(4)
    face = (0.2 + 0.5 * rng.random((1, size, size, 3))).astype(np.float32)
    negative = 1.0 - face
    blurred = box_blur(face)
    scores = [float(model.predict(x, verbose=0)[0, 0]) for x in (face, negative, blurred)]
    # not exact: the zero-frequency bin of a zero-mean plane is rounding noise, and its log moves a little
    assert scores[1] == pytest.approx(scores[0], abs=0.01)
    assert abs(scores[2] - scores[0]) > 0.1
    with pytest.raises(ValueError, match="divisible"):
        build_image_member("spectrum_grid", (72, 72))


def test_colour_spectrum_is_the_luminance_spectrum_plus_chroma() -> None:
    rng = np.random.default_rng(2)
    grey = np.repeat(rng.random((1, 32, 32, 1)), 3, axis=-1).astype(np.float32)
    tinted = np.clip(grey * [1.0, 0.7, 0.9] + rng.normal(0, 0.05, grey.shape), 0, 1).astype(np.float32)
    for images in (grey, tinted):
        out = np.asarray(ColourSpectrum()(images))
        assert out.shape == (1, 32, 32, 3)
        np.testing.assert_allclose(out[..., :1], np.asarray(LogSpectrum()(images)), atol=1e-4)
    chroma_grey = np.asarray(ColourSpectrum()(grey))[..., 1:]
    chroma_tinted = np.asarray(ColourSpectrum()(tinted))[..., 1:]
    assert chroma_grey.max() < -5  # a grey image has no chroma: only the 1e-6 floor of the log
    assert chroma_tinted.mean() > chroma_grey.mean() + 5


def test_front_ends() -> None:
    assert build_image_member("densenet121", (32, 32), front_end="spectrum").name == "densenet121_spectrum"
    assert build_image_member("densenet121", (32, 32), front_end="residual").name == "densenet121_residual"
    with pytest.raises(ValueError, match="own front end"):
        build_image_member("profile", (32, 32), front_end="spectrum")
    with pytest.raises(ValueError, match="unknown front end"):
        build_image_member("densenet121", (32, 32), front_end="wavelet")


# --- audio: log-mel statistics ----------------------------------------------------------------------------


def test_logmel_statistics_per_band() -> None:
    from pipeline.layers import LOGMEL_STATISTICS, LogMelStatistics

    bands, frames = 4, 9
    t = np.arange(frames, dtype=np.float32)
    x = np.stack([np.full(frames, 1.0), 0.5 * t, (-1.0) ** t, np.zeros(frames)]).astype(np.float32)
    out = np.asarray(LogMelStatistics()(x[None, :, :, None]))[0]
    assert out.shape == (5 * bands - 1,)
    mean, std, delta, delta2, band_delta = np.split(out, np.cumsum([bands] * 4))
    np.testing.assert_allclose(mean, [1.0, 2.0, 1 / 9, 0.0], atol=1e-5)
    np.testing.assert_allclose(
        std, [0.0, 0.5 * t.std(), np.sqrt(1 - 1 / 81), 0.0], atol=2e-3
    )  # sqrt(v + 1e-6)
    np.testing.assert_allclose(delta, [0.0, 0.5, 2.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(delta2, [0.0, 0.0, 4.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(band_delta, np.abs(np.diff(x, axis=0)).mean(axis=1), atol=1e-5)
    only = LogMelStatistics(statistics=("std", "band_delta"))
    assert only.compute_output_shape((None, bands, frames, 1)) == (None, 2 * bands - 1)
    np.testing.assert_allclose(np.asarray(only(x[None, :, :, None]))[0], np.concatenate([std, band_delta]))
    with pytest.raises(ValueError, match="subset"):
        LogMelStatistics(statistics=("mean", "kurtosis"))
    assert set(LOGMEL_STATISTICS) == {"mean", "std", "delta", "delta2", "band_delta"}


def test_logmel_statistics_skip_digital_silence() -> None:
    """Zero padding (a clip shorter than its window) is constant across bands: it does not count."""
    from pipeline.layers import LogMelStatistics

    rng = np.random.default_rng(0)
    speech = rng.normal(size=(1, 16, 60, 1)).astype(np.float32)
    padded = np.concatenate([speech, np.full((1, 16, 40, 1), -3.0, np.float32)], axis=2)
    layer = LogMelStatistics()
    np.testing.assert_allclose(np.asarray(layer(padded)), np.asarray(layer(speech)), rtol=1e-5, atol=1e-5)


def test_logmel_stats_member_reloads_with_identical_outputs(tmp_path: Path) -> None:
    from pipeline.layers import LogMelStatistics
    from training.architectures import build_logmel_statistics, build_statistics_head

    rng = np.random.default_rng(1)
    windows = rng.normal(size=(3, 8, 21, 1)).astype(np.float32)
    statistics = np.asarray(LogMelStatistics()(windows))
    keras.utils.set_random_seed(0)
    for hidden in (0, 16):
        head = build_statistics_head(statistics.mean(axis=0), statistics.var(axis=0) + 1e-3, hidden=hidden)
        model = build_logmel_statistics((8, 21), head)
        assert model.output_shape == (None, 1)
        model.save(tmp_path / f"member{hidden}.keras")
        reloaded = keras.saving.load_model(tmp_path / f"member{hidden}.keras", compile=False)
        np.testing.assert_array_equal(model.predict(windows, verbose=0), reloaded.predict(windows, verbose=0))
        # the statistics layer inside is the registered one, with its configuration
        layer = reloaded.get_layer("logmel_statistics")
        assert isinstance(layer, LogMelStatistics) and layer.statistics == LogMelStatistics().statistics


def test_exact_features_do_not_depend_on_the_last_bit_of_their_input() -> None:
    """A backend that fuses or reorders arithmetic (JAX's compiled kernels, where TensorFlow runs op by op)
    moves a layer's values by a rounding step. The 2 x 2 averages of 8-bit pixels that the profile member's
    regional chroma statistics read put about a quarter of their residuals exactly halfway between two
    integers, and the spectrum's zero frequency is rounding noise, so such a step flipped histogram cells
    and moved the first ring (pack 0.10.0's members scored up to 0.12 apart under the two backends).
    ``exact`` features stay put under a nudge of one unit in the last place; the legacy ones do not, which
    is what shows that this test can fail."""
    rng = np.random.default_rng(7)
    pixels = np.clip(np.cumsum(rng.integers(-3, 4, (2, 64, 64, 3)), axis=2) + 128, 0, 255)
    half = (pixels.reshape(2, 32, 2, 32, 2, 3).mean(axis=(2, 4)) / 255).astype(np.float32)  # quarter levels
    away = np.where(rng.random(half.shape) < 0.5, -1.0, 2.0).astype(np.float32)
    nudged = np.nextafter(half, away)  # each value one unit in the last place down or up

    def moved(layer: keras.layers.Layer) -> float:
        return float(np.abs(np.asarray(layer(nudged)) - np.asarray(layer(half))).max())

    assert moved(ChromaCooccurrence(border=0.25, exact=True)) == 0.0
    assert moved(ChromaCooccurrence(border=0.25)) > 0.5  # a cell's log frequency
    assert moved(SpectrumProfile(bins=8, exact=True)) < 1e-3  # the other frequencies: continuous in the input
    assert moved(SpectrumProfile(bins=8)) > 0.05  # the first ring (its zero frequency) and a level's edge
    for layer in (ChromaCooccurrence(border=0.25, exact=True), SpectrumProfile(bins=8, exact=True)):
        assert type(layer).from_config(layer.get_config()).exact


def test_exact_chroma_cooccurrence_counts_8_bit_pixels_as_before() -> None:
    """Where the legacy residuals have no halves to break (8-bit pixels at full resolution: integer
    residuals), ``exact`` counts exactly what the legacy layer counts."""
    rng = np.random.default_rng(8)
    images = (np.clip(np.cumsum(rng.integers(-2, 3, (2, 24, 30, 3)), axis=2) + 128, 0, 255) / 255).astype(
        np.float32
    )
    legacy, exact = ChromaCooccurrence(border=0.25), ChromaCooccurrence(border=0.25, exact=True)
    np.testing.assert_allclose(np.asarray(exact(images)), np.asarray(legacy(images)), atol=1e-5)


def test_profile_members_are_built_exact_and_so_are_the_bundled_ones() -> None:
    """New profile members and the bundled pack's (since 0.11.0) compute features that do not depend on
    the order of a backend's arithmetic; a legacy member is named (``tests/training/test_exact_features.py``), and
    ``ModelPack.load`` warns when one runs on another backend than TensorFlow."""
    assert backend_dependent_layers(build_image_member("profile", (32, 32))) == []
    for name in ("profile", "profile_tight"):
        bundled = keras.saving.load_model(REPO / f"pipeline/weights/default/{name}.keras", compile=False)
        assert backend_dependent_layers(bundled) == [], name
