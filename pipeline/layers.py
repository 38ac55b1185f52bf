"""The custom Keras layers that model packs refer to: what inference needs to load a ``.keras`` file.

Registered under the package name ``deepscan``, so a saved member finds its layers whatever module defines
them. Keras 3 API only (no backend-specific ops): a member runs on TensorFlow here and on JAX or PyTorch
elsewhere. Every image layer takes RGB float32 in [0, 1] of shape (N, H, W, 3); the audio layer
(``LogMelStatistics``) takes the standardised log-mel windows of ``pipeline.audio.member_inputs``. The builders
that assemble members from these layers live in ``training.architectures``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

CAPTION_BAND = 0.08  # bottom fraction of a face crop every image member ignores (see CaptionMask)
EXPOSURE_LEVELS = 32  # histogram resolution of brightness and saturation (1/32 of the range per level)
# The lattice of the layers' ``exact`` option: quarters of an 8-bit level, on which the 2 x 2 averages of
# 8-bit pixels are exact and every sum or difference of a few values is exact in float32.
QUARTER_LEVELS = 4 * 255
_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], "float32"
)


def _ring_index(h: int, w: int, bins: int) -> np.ndarray:
    """(H, W) ring number of every frequency of an unshifted 2-D FFT: 0 at DC, ``bins - 1`` at the corners."""
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx) / np.hypot(0.5, 0.5)
    return np.minimum((radius * bins).astype(np.int64), bins - 1)


@keras.saving.register_keras_serializable(package="deepscan")
class CaptionMask(layers.Layer):
    """Sets the bottom ``fraction`` of the rows to mid-grey, for real and fake crops alike.

    Generated-face sites stamp a caption in the bottom corner (thispersondoesnotexist's StyleGAN2 faces
    carry "StyleGAN2 (Karras et al.)": 9 of the first 32 fake crops in our data show it). A member that could see it
    would learn the caption, not the face. The band is chin and neck in a 1.3x-margin crop, so little is lost,
    and since the mask is part of the model it applies at inference exactly as in training.
    """

    def __init__(self, fraction: float = CAPTION_BAND, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fraction = float(fraction)

    def call(self, images: Any) -> Any:
        h = ops.shape(images)[1]
        keep = ops.cast(
            ops.arange(h) < h - ops.cast(ops.ceil(self.fraction * ops.cast(h, "float32")), "int32"),
            images.dtype,
        )
        keep = ops.reshape(keep, (1, -1, 1, 1))
        return images * keep + 0.5 * (1.0 - keep)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fraction": self.fraction}


def _log_magnitude(planes: Any, *, exact: bool = False) -> Any:
    """Log magnitude of the unshifted 2-D FFT of each zero-mean (N, H, W) plane.

    Removing the mean leaves the zero frequency at rounding noise, whose log depends on the order in which
    a backend adds (between TensorFlow and JAX it moved the profile member's first ring by up to 0.55):
    ``exact`` sets it to 0.
    """
    planes = planes - ops.mean(planes, axis=(1, 2), keepdims=True)
    real, imag = ops.fft2((planes, ops.zeros_like(planes)))
    magnitude = ops.sqrt(real * real + imag * imag)
    if exact:
        without_dc = np.ones(planes.shape[1:], "float32")
        without_dc[0, 0] = 0.0
        magnitude = magnitude * ops.convert_to_tensor(without_dc, magnitude.dtype)
    return ops.log(magnitude + 1e-6)


def _ycbcr_plane(images: Any, plane: int) -> Any:
    """One plane of the YCbCr transform (0: Y, 1: Cb, 2: Cr) of an RGB batch: (N, H, W, 3) -> (N, H, W)."""
    return ops.sum(images * ops.convert_to_tensor(_YCBCR[plane], dtype=images.dtype), axis=-1)


def _log_magnitude_spectrum(images: Any, *, exact: bool = False) -> Any:
    """Log magnitude of the unshifted 2-D FFT of the zero-mean luminance: (N, H, W, 3) -> (N, H, W)."""
    return _log_magnitude(_ycbcr_plane(images, 0), exact=exact)


def _centred(magnitude: Any) -> Any:
    """Move the zero frequency of (N, H, W) spectra to the middle."""
    h, w = ops.shape(magnitude)[1], ops.shape(magnitude)[2]
    return ops.roll(ops.roll(magnitude, h // 2, axis=1), w // 2, axis=2)


@keras.saving.register_keras_serializable(package="deepscan")
class LogSpectrum(layers.Layer):
    """Centred log-magnitude 2-D spectrum of the luminance of an RGB batch.

    Input (N, H, W, 3) in [0, 1]; output (N, H, W, 1). Upsampling and blending leave periodic traces in
    the high frequencies that are hard to see in pixels (Durall et al., 2020; Frank et al., 2020).
    """

    def call(self, images: Any) -> Any:
        return ops.expand_dims(_centred(_log_magnitude_spectrum(images)), -1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(package="deepscan")
class ColourSpectrum(layers.Layer):
    """Centred log-magnitude 2-D spectra of the Y, Cb and Cr planes: (N, H, W, 3) -> (N, H, W, 3).

    The front end of a classic backbone that reads frequencies instead of pixels, as F3-Net puts Xception
    over a frequency decomposition (Qian et al., 2020). The chroma spectra carry what the luminance one
    cannot: colour transfer and chroma smoothing around a pasted face, a generator's colour statistics.
    """

    def call(self, images: Any) -> Any:
        return ops.stack([_centred(_log_magnitude(_ycbcr_plane(images, i))) for i in range(3)], axis=-1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="deepscan")
class SpectrumProfile(layers.Layer):
    """Radial profile of the log-magnitude spectrum of the luminance, colour and exposure statistics.

    Input (N, H, W, 3) in [0, 1]; output (N, bins + 12 + 2 * (EXPOSURE_LEVELS - 1)): the mean log magnitude
    in ``bins`` rings from the centre of the spectrum to its corners; the mean and standard deviation of R,
    G, B, Y, Cb and Cr; then the cumulative histograms of the brightest channel and of the saturation.
    Blending a swapped face into a photograph changes the high-frequency fall-off (resampling and smoothing)
    and the colour distribution (the pasted face's colour transfer). GAN generators rarely produce clipped
    highlights or fully saturated colours, which real sensors often do (McCloskey and Albright, 2018).

    ``exact``: the zero frequency, rounding noise once the mean is removed, counts as 0 in the first ring
    (``_log_magnitude``), and brightness is compared with the levels' edges on the ``QUARTER_LEVELS``
    lattice, so that neither depends on the order of a backend's arithmetic. Members saved without the
    option load as they were trained.
    """

    def __init__(self, bins: int = 64, exact: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bins = int(bins)
        self.exact = bool(exact)

    def call(self, images: Any) -> Any:
        h, w = images.shape[1], images.shape[2]
        rings = _ring_index(h, w, self.bins)
        magnitude = _log_magnitude_spectrum(images, exact=self.exact)
        flat = ops.transpose(ops.reshape(magnitude, (-1, h * w)))  # (H*W, N): segments run over axis 0
        sums = ops.segment_sum(flat, ops.convert_to_tensor(rings.ravel(), "int32"), num_segments=self.bins)
        counts = ops.convert_to_tensor(np.bincount(rings.ravel(), minlength=self.bins)[:, None], images.dtype)
        profile = ops.transpose(sums / counts)  # (N, bins)
        ycbcr = ops.matmul(images, ops.convert_to_tensor(_YCBCR.T, images.dtype))
        colours = ops.concatenate([images, ycbcr], axis=-1)  # (N, H, W, 6)
        stats = [ops.mean(colours, axis=(1, 2)), ops.std(colours, axis=(1, 2))]
        brightest, darkest = ops.max(images, axis=-1), ops.min(images, axis=-1)
        saturation = (brightest - darkest) / (brightest + 1e-6)
        edges = np.arange(1, EXPOSURE_LEVELS) / EXPOSURE_LEVELS
        brightness_edges = edges
        if self.exact:  # on the lattice, where a pixel at a level's edge is there exactly, not by rounding
            brightest = ops.round(brightest * float(QUARTER_LEVELS))
            brightness_edges = edges * QUARTER_LEVELS
        exposure = [  # the fraction of pixels at or above each level
            ops.mean(
                ops.cast(
                    ops.expand_dims(x, -1) >= ops.convert_to_tensor(x_edges, images.dtype), images.dtype
                ),
                axis=(1, 2),
            )
            for x, x_edges in ((brightest, brightness_edges), (saturation, edges))
        ]
        return ops.concatenate([profile, *stats, *exposure], axis=-1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.bins + 12 + 2 * (EXPOSURE_LEVELS - 1))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins, "exact": self.exact}


def _joint_frequencies(a: Any, a_bins: int, b: Any, b_bins: int, where: np.ndarray | None = None) -> Any:
    """Joint histogram of two int code maps of the same shape (N, H, W): (N, a_bins * b_bins) frequencies.

    Counted as a product of one-hot codes, which traces on every backend (``ops.bincount`` does not
    under JAX: its output shape depends on the values). ``where``, an (H, W) boolean mask, counts only
    the cells it marks.
    """
    cells = a.shape[1] * a.shape[2]
    a_1hot = ops.reshape(ops.one_hot(a, a_bins), (-1, cells, a_bins))
    b_1hot = ops.reshape(ops.one_hot(b, b_bins), (-1, cells, b_bins))
    if where is not None:
        b_1hot = b_1hot * ops.convert_to_tensor(where.reshape(1, cells, 1).astype("float32"))
        cells = int(where.sum())
    joint = ops.matmul(ops.transpose(a_1hot, (0, 2, 1)), b_1hot)  # (N, a_bins, b_bins): counts
    return ops.reshape(joint, (-1, a_bins * b_bins)) / cells


@keras.saving.register_keras_serializable(package="deepscan")
class ColourTexture(layers.Layer):
    """Joint HSV colour histogram and local-binary-pattern texture histograms of a face crop.

    Input (N, H, W, 3) in [0, 1]; output (N, 12 * 4 * 4 + 4 * 10), square roots of frequencies:

    - the joint histogram of hue (12 sectors of 30 degrees), saturation and value (4 levels each).
      Generators reproduce the luminance of faces better than their chrominance, so hue and saturation
      separate GAN images from photographs where RGB statistics do not (Li et al., 2020, "Identification
      of deep network generated images using disparities in color components");
    - uniform local binary patterns (Ojala et al., 2002) of the luminance with 8 neighbours at radius 1
      and 2 (the square ring), counted in the middle of the crop (the face) and in its side strips
      (hair and background): skin and background micro-texture that blending and generation smooth.
      A pattern is its number of brighter-or-equal neighbours when it has at most two 0/1 transitions
      around the ring, and a tenth class otherwise.
    """

    HUE_BINS, LEVELS, PATTERNS = 12, 4, 10
    RADII = (1, 2)
    FACE_ROWS, FACE_COLUMNS, SIDE_STRIP = (0.23, 0.70), (0.25, 0.75), 0.16  # fractions of the crop's side
    _RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # (dy, dx), in order

    def call(self, images: Any) -> Any:
        return ops.concatenate([self._hsv_histogram(images), *self._texture(images)], axis=-1)

    def _hsv_histogram(self, images: Any) -> Any:
        r, g, b = images[..., 0], images[..., 1], images[..., 2]
        value = ops.max(images, axis=-1)
        spread = value - ops.min(images, axis=-1)
        safe = ops.where(spread > 0, spread, 1.0)
        sector = ops.where(  # hue in units of 60 degrees, in [0, 6)
            value == r,
            ops.mod((g - b) / safe, 6.0),
            ops.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
        )
        hue = ops.where(spread > 0, sector, 0.0) / 6.0  # in [0, 1)
        saturation = spread / ops.where(value > 0, value, 1.0)

        def level(x: Any, n: int) -> Any:  # [0, 1] -> n equal bins
            return ops.cast(ops.clip(ops.floor(x * n), 0, n - 1), "int32")

        sv = level(saturation, self.LEVELS) * self.LEVELS + level(value, self.LEVELS)
        return ops.sqrt(_joint_frequencies(level(hue, self.HUE_BINS), self.HUE_BINS, sv, self.LEVELS**2))

    def _texture(self, images: Any) -> list[Any]:
        luma = _ycbcr_plane(images, 0)
        h, w = images.shape[1], images.shape[2]
        histograms = []
        for radius in self.RADII:
            centre = luma[:, radius : h - radius, radius : w - radius]
            bits = [
                ops.cast(
                    luma[
                        :,
                        radius + dy * radius : h - radius + dy * radius,
                        radius + dx * radius : w - radius + dx * radius,
                    ]
                    >= centre,
                    "int32",
                )
                for dy, dx in self._RING
            ]
            ones = sum(bits)
            transitions = sum(ops.abs(bits[i] - bits[(i + 1) % len(bits)]) for i in range(len(bits)))
            pattern = ops.where(transitions <= 2, ones, self.PATTERNS - 1)
            onehot = ops.one_hot(pattern, self.PATTERNS)  # (N, h', w', 10)
            ph, pw = h - 2 * radius, w - 2 * radius
            (top, bottom), (left, right) = self.FACE_ROWS, self.FACE_COLUMNS
            face = onehot[:, int(top * ph) : int(bottom * ph), int(left * pw) : int(right * pw)]
            strip = max(1, int(self.SIDE_STRIP * pw))
            sides = ops.concatenate([onehot[:, :, :strip], onehot[:, :, pw - strip :]], axis=2)
            histograms += [ops.sqrt(ops.mean(region, axis=(1, 2))) for region in (face, sides)]
        return histograms

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.HUE_BINS * self.LEVELS**2 + 2 * len(self.RADII) * self.PATTERNS)


@keras.saving.register_keras_serializable(package="deepscan")
class ChromaCooccurrence(layers.Layer):
    """Co-occurrence histograms of the high-pass residuals of the crop's colour differences.

    Input (N, H, W, 3) in [0, 1]; output (N, 3 * 2 * 2 * (2 * T + 1) ** 2) with ``T = truncation``, the log
    frequencies of every pair of neighbouring residual values. For each colour difference R - G, G - B and
    R - B (in 8-bit units), the first-order (x[i+1] - x[i]) and second-order (x[i-1] - 2 x[i] + x[i+1])
    residuals are taken along the rows and along the columns, rounded, clipped to [-T, T], and the pair
    (residual at a pixel, residual at the next pixel in the same direction) is counted: the subtractive
    pixel adjacency model of steganalysis (Pevny et al., 2010), applied to chrominance, where generators
    leave traces in the correlation between colour channels (Nataraj et al., 2019, co-occurrence matrices
    for GAN detection; Li et al., 2020, colour disparities). Adding the same value to R, G and B changes
    nothing: the layer sees colour structure, not brightness.

    With ``border`` > 0 every histogram is counted twice: over the middle of the crop (rows and columns
    from ``border`` to ``1 - border`` of the side: the face) and over the ring around it (hair, ears,
    background), where generators paint differently from cameras; a pair belongs to the region of its
    first pixel.

    ``exact``: the channels are first rounded to quarters of an 8-bit level, where every difference below
    is exact in float32, and a residual halfway between two integers rounds to the even one on every
    backend. Without it, the 2 x 2 averages of 8-bit pixels (quarter levels themselves) put about a
    quarter of the residuals at such halves, plus or minus rounding noise that depends on the order of a
    backend's arithmetic: JAX's fused kernels moved histogram cells by up to 6.5 in log frequency where
    TensorFlow runs op by op. Members saved without the option load as they were trained.
    """

    PAIRS = ((0, 1), (1, 2), (0, 2))

    def __init__(self, truncation: int = 3, border: float = 0.0, exact: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.truncation = int(truncation)
        self.border = float(border)
        self.exact = bool(exact)

    def call(self, images: Any) -> Any:
        t, side = self.truncation, 2 * self.truncation + 1
        if self.exact:
            images = ops.round(images * float(QUARTER_LEVELS))  # integers, exact in float32
        histograms = []
        for a, b in self.PAIRS:
            if self.exact:
                plane = (images[..., a] - images[..., b]) / (QUARTER_LEVELS / 255)  # 8-bit levels, exactly
            else:
                plane = (images[..., a] - images[..., b]) * 255.0
            for rows_first in (True, False):  # neighbours along the rows, then along the columns
                x = plane if rows_first else ops.transpose(plane, (0, 2, 1))
                first = x[:, :, 1:] - x[:, :, :-1]
                second = x[:, :, :-2] - 2.0 * x[:, :, 1:-1] + x[:, :, 2:]
                for residual in (first, second):
                    r = ops.cast(ops.clip(ops.round(residual), -t, t), "int32") + t
                    here, following = r[:, :, :-1], r[:, :, 1:]
                    for where in self._regions(x.shape[1], x.shape[2], here.shape[2]):
                        pairs = _joint_frequencies(here, side, following, side, where)
                        histograms.append(ops.log(pairs + 1e-5))
        return ops.concatenate(histograms, axis=-1)

    def _regions(self, height: int, width: int, columns: int) -> list[np.ndarray | None]:
        """Masks of the (height, columns) pair map: the whole of it, or its middle and the ring around it."""
        if not self.border:
            return [None]
        rows, cols = np.arange(height)[:, None], np.arange(columns)[None, :]
        top, left = int(self.border * height), int(self.border * width)
        middle = (rows >= top) & (rows < height - top) & (cols >= left) & (cols < width - left)
        return [middle, ~middle]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        regions = 2 if self.border else 1
        return (input_shape[0], len(self.PAIRS) * 4 * regions * (2 * self.truncation + 1) ** 2)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "truncation": self.truncation,
            "border": self.border,
            "exact": self.exact,
        }


@keras.saving.register_keras_serializable(package="deepscan")
class ChromaResidual(layers.Layer):
    """Truncated high-pass residual maps of the crop's colour differences: (N, H, W, 3) -> (N, H, W, 12).

    The maps ``ChromaCooccurrence`` counts, handed to a CNN instead: for R - G, G - B and R - B (in 8-bit
    units) the first-order and second-order residuals along the rows and along the columns, clipped to
    [-T, T] and divided by T (the truncated linear unit of steganalysis CNNs, Ye et al., 2017). Fixed
    high-pass filters in front of a backbone are how SRM-style detectors make it read noise rather than
    content (Zhou et al., 2018; Luo et al., 2021). Borders repeat the edge pixels, so a flat image gives
    zeros everywhere.
    """

    MAPS = len(ChromaCooccurrence.PAIRS) * 4  # (first, second order) x (rows, columns) per difference

    def __init__(self, truncation: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.truncation = float(truncation)
        first, second = np.zeros((3, 3), "float32"), np.zeros((3, 3), "float32")
        first[1, 1:] = (-1.0, 1.0)  # x[i+1] - x[i]
        second[1, :] = (1.0, -2.0, 1.0)  # x[i-1] - 2 x[i] + x[i+1]
        kernels = np.stack([first, first.T, second, second.T], axis=-1)  # rows, columns, rows, columns
        pairs = len(ChromaCooccurrence.PAIRS)
        self._kernel = np.repeat(kernels[:, :, None, :], pairs, axis=2)  # (3, 3, differences, 4 residuals)

    def call(self, images: Any) -> Any:
        differences = (
            ops.stack([images[..., a] - images[..., b] for a, b in ChromaCooccurrence.PAIRS], axis=-1) * 255.0
        )
        padded = ops.pad(differences, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")  # = edge, 1 px
        residuals = ops.depthwise_conv(padded, ops.convert_to_tensor(self._kernel), padding="valid")
        return ops.clip(residuals, -self.truncation, self.truncation) / self.truncation

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.MAPS)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "truncation": self.truncation}


LOGMEL_STATISTICS = ("mean", "std", "delta", "delta2", "band_delta")
# A frame whose bands span less than this (in units of the window's standard deviation) is digital
# silence: the zero padding of a clip shorter than a window, or a generator's exact zeros. Real recordings
# never reach it (their noise floor varies across bands); statistics skip such frames.
SILENT_FRAME_SPREAD = 1e-3


@keras.saving.register_keras_serializable(package="deepscan")
class LogMelStatistics(layers.Layer):
    """Per-band statistics over time of a standardised log-mel window: (N, F, T, 1) -> (N, D).

    For every band, over the frames that are not digital silence (``SILENT_FRAME_SPREAD``):

    - ``mean``: the band's mean log power (the long-term spectral envelope), F values;
    - ``std``: its standard deviation over time, F values;
    - ``delta``: the mean absolute frame-to-frame change (10 ms apart), F values;
    - ``delta2``: the mean absolute second difference, x[t-1] - 2 x[t] + x[t+1], F values;
    - ``band_delta``: the mean absolute difference between neighbouring bands, F - 1 values.

    Vocoders and codecs rebuild the fine time structure of a spectrogram from a coarse one; how much each
    band moves from frame to frame, and how smooth it is across bands, is where they differ from
    recordings, and statistics over a whole window do not depend on what is said (log-mel statistics
    as countermeasure features: Sahidullah et al., 2015, "A comparison of features for synthetic speech
    detection"). No weights: the member's head reads these.
    """

    def __init__(self, statistics: tuple[str, ...] | list[str] = LOGMEL_STATISTICS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = [s for s in statistics if s not in LOGMEL_STATISTICS]
        if unknown or not statistics:
            raise ValueError(
                f"statistics must be a non-empty subset of {LOGMEL_STATISTICS}, got {statistics}"
            )
        self.statistics = tuple(str(s) for s in statistics)

    def call(self, spectrogram: Any) -> Any:
        x = spectrogram[..., 0]  # (N, F, T)
        spread = ops.max(x, axis=1) - ops.min(x, axis=1)  # (N, T)
        sound = ops.expand_dims(ops.cast(spread > SILENT_FRAME_SPREAD, x.dtype), 1)  # (N, 1, T)

        def average(values: Any, weights: Any) -> Any:  # weighted mean over time: (N, F', T') -> (N, F')
            return ops.sum(values * weights, axis=2) / (ops.sum(weights, axis=2) + 1e-6)

        mean = average(x, sound)
        out = []
        for name in self.statistics:
            if name == "mean":
                out.append(mean)
            elif name == "std":
                centred = x - ops.expand_dims(mean, -1)
                out.append(ops.sqrt(average(centred * centred, sound) + 1e-6))
            elif name == "delta":
                out.append(average(ops.abs(x[:, :, 1:] - x[:, :, :-1]), sound[:, :, 1:] * sound[:, :, :-1]))
            elif name == "delta2":
                second = x[:, :, :-2] - 2.0 * x[:, :, 1:-1] + x[:, :, 2:]
                out.append(average(ops.abs(second), sound[:, :, :-2] * sound[:, :, 1:-1] * sound[:, :, 2:]))
            else:  # band_delta
                out.append(average(ops.abs(x[:, 1:, :] - x[:, :-1, :]), sound))
        return ops.concatenate(out, axis=-1)

    def output_size(self, bands: int) -> int:
        return sum(bands - 1 if name == "band_delta" else bands for name in self.statistics)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        bands = input_shape[1]
        return (input_shape[0], None if bands is None else self.output_size(bands))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "statistics": list(self.statistics)}


@keras.saving.register_keras_serializable(package="deepscan")
class Magnitude(layers.Layer):
    """The absolute value of a learned filterbank's output (RawNet2's front end keeps no sign)."""

    def call(self, x: Any) -> Any:
        return ops.abs(x)


# The layers with an ``exact`` option: off, their features depend on the order of the backend's arithmetic.
EXACT_OPTION_LAYERS = (SpectrumProfile, ChromaCooccurrence)


def backend_dependent_layers(model: keras.Model) -> list[str]:
    """The names of ``model``'s layers whose features depend on the order of the backend's arithmetic
    (saved before their ``exact`` option existed): on another backend than the one it was trained on, the
    member scores differently (pack 0.10.0's profile members: up to 0.12 apart in P(fake), TensorFlow
    against JAX)."""
    return [
        layer.name for layer in model.layers if isinstance(layer, EXACT_OPTION_LAYERS) and not layer.exact
    ]
