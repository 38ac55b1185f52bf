"""Model builders, one per member architecture: what training assembles from ``pipeline.layers``.

Every image member takes RGB float32 in [0, 1] of shape (N, H, W, 3) and returns P(fake) of shape (N, 1);
the audio members take log-spectrogram windows of shape (N, F, T, 1) (a raw waveform: (N, 1, samples, 1))
and return P(fake) of shape (N, 1).
ImageNet weights are not available here, so every backbone starts from ``weights=None``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from pipeline.layers import (
    CaptionMask,
    ChromaCooccurrence,
    ChromaResidual,
    ColourSpectrum,
    ColourTexture,
    LogMelStatistics,
    LogSpectrum,
    Magnitude,
    SpectrumProfile,
)


@dataclass(frozen=True)
class Architecture:
    build_backbone: Callable[..., keras.Model]
    min_input_px: int  # keras.applications refuses smaller inputs
    native_input_px: int  # the size the architecture was designed for


def _applications() -> dict[str, Architecture]:
    apps = keras.applications
    return {
        "xception": Architecture(apps.Xception, 71, 299),
        "inception_v3": Architecture(apps.InceptionV3, 75, 299),
        "resnet50": Architecture(apps.ResNet50, 32, 224),
        "densenet121": Architecture(apps.DenseNet121, 32, 224),
    }


CLASSIC_ARCHITECTURES = ("xception", "inception_v3", "resnet50", "densenet121")
# what a classic backbone reads: the crop, its colour spectra, or the residuals of its colour differences
IMAGE_FRONT_ENDS = ("pixels", "spectrum", "residual")
PROFILE_BORDER = 0.25  # the ring the profile member's regional chroma statistics set apart from the middle


def build_profile(input_size: tuple[int, int]) -> keras.Model:
    """A small dense head over ``SpectrumProfile``, ``ColourTexture`` and ``ChromaCooccurrence`` features
    (about 77 k parameters).

    The chroma co-occurrences are counted twice: over the whole crop, and at half the resolution
    (2 x 2 averages, as a 256 px crop resized to 128 px with ``INTER_AREA``) separately for the middle
    of the crop and the ring around it. Packs trained before a feature existed hold profile members
    without it; they load as saved. The features are ``exact`` (the same on every Keras backend), which
    pack 0.10.0's profile members are not.
    """
    inputs = keras.Input((*input_size, 3), name="face")
    x = CaptionMask(name="caption_mask")(inputs)
    half = layers.AveragePooling2D(2, name="half_resolution")(x)
    x = layers.Concatenate(name="features")(
        [
            SpectrumProfile(exact=True, name="profile")(x),
            ColourTexture(name="colour_texture")(x),
            ChromaCooccurrence(exact=True, name="chroma_cooccurrence")(x),
            ChromaCooccurrence(border=PROFILE_BORDER, exact=True, name="chroma_regions")(half),
        ]
    )
    x = layers.BatchNormalization(name="feature_norm")(x)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model(inputs, outputs, name="profile")


def _conv_block(x: Any, filters: int, name: str) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def build_spectral(input_size: tuple[int, int]) -> keras.Model:
    """A small CNN over the log spectrum: the frequency-domain member (about 0.1 M parameters)."""
    inputs = keras.Input((*input_size, 3), name="face")
    x = CaptionMask(name="caption_mask")(inputs)
    x = LogSpectrum(name="log_spectrum")(x)
    x = layers.BatchNormalization(name="spectrum_norm")(x)
    for i, filters in enumerate((16, 32, 64, 96)):
        x = _conv_block(x, filters, f"block{i + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model(inputs, outputs, name="spectral")


SPECTRUM_GRID = 16  # spectrum_grid averages the log spectrum over a 16 x 16 grid of frequency cells


def build_spectrum_grid(input_size: tuple[int, int]) -> keras.Model:
    """Logistic regression over the crop's log spectrum averaged in a grid of frequency cells (257 weights).

    The spectral CNN reads the spectrum of a 128 px crop, which has lost the top half of the frequencies;
    this member keeps the crop's full resolution and every direction of the spectrum (the profile member's
    rings average directions away), at the price of a linear read-out that weighs each frequency band
    and direction on its own. On the shipped data it separates face swaps (test AUC 0.957) far better
    than GAN faces (0.653).

    Batch normalisation standardises the cells (what a scaler does before a logistic regression) and the
    L2 penalty is the regression's.
    """
    if input_size[0] % SPECTRUM_GRID or input_size[1] % SPECTRUM_GRID:
        raise ValueError(f"spectrum_grid needs a side divisible by {SPECTRUM_GRID}, got {input_size}")
    cell = (input_size[0] // SPECTRUM_GRID, input_size[1] // SPECTRUM_GRID)
    inputs = keras.Input((*input_size, 3), name="face")
    x = CaptionMask(name="caption_mask")(inputs)
    x = LogSpectrum(name="log_spectrum")(x)
    x = layers.AveragePooling2D(cell, name="cells")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.BatchNormalization(name="cell_norm")(x)
    outputs = layers.Dense(
        1, activation="sigmoid", kernel_regularizer=keras.regularizers.L2(0.02), name="p_fake"
    )(x)
    return keras.Model(inputs, outputs, name="spectrum_grid")


_OWN_FRONT_END = {"spectral": build_spectral, "profile": build_profile, "spectrum_grid": build_spectrum_grid}
# what build_image_member builds: the classic backbones, then the members with their own front end
IMAGE_ARCHITECTURES = (*CLASSIC_ARCHITECTURES, *_OWN_FRONT_END)


def build_image_member(
    architecture: str, input_size: tuple[int, int], *, front_end: str = "pixels", dropout: float = 0.3
) -> keras.Model:
    """One image member: a classic backbone from ``keras.applications`` (``weights=None``) plus a binary head.

    ``input_size`` is (H, W). With the ``pixels`` front end the model rescales its [0, 1] input to the
    [-1, 1] the backbones expect; with ``spectrum`` the backbone reads the crop's ``ColourSpectrum``, with
    ``residual`` its ``ChromaResidual`` maps.
    ``spectral``, ``profile`` and ``spectrum_grid`` bring their own front ends.
    """
    if front_end not in IMAGE_FRONT_ENDS:
        raise ValueError(f"unknown front end {front_end!r}; choose from {', '.join(IMAGE_FRONT_ENDS)}")
    if architecture in _OWN_FRONT_END:
        if front_end != "pixels":
            raise ValueError(f"{architecture} has its own front end; it takes no {front_end!r}")
        return _OWN_FRONT_END[architecture](input_size)
    apps = _applications()
    if architecture not in apps:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {', '.join(IMAGE_ARCHITECTURES)}"
        )
    arch = apps[architecture]
    if min(input_size) < arch.min_input_px:
        raise ValueError(f"{architecture} needs inputs of at least {arch.min_input_px} px, got {input_size}")
    inputs = keras.Input((*input_size, 3), name="face")
    x = CaptionMask(name="caption_mask")(inputs)
    if front_end == "spectrum":
        x = ColourSpectrum(name="colour_spectrum")(x)
        x = layers.BatchNormalization(name="spectrum_norm")(x)
    elif front_end == "residual":
        x = ChromaResidual(name="chroma_residual")(x)
    else:
        x = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(x)
    with warnings.catch_warnings():  # the residual front end's 12 channels are on purpose
        warnings.filterwarnings("ignore", "This model usually expects 1 or 3 input channels")
        backbone = arch.build_backbone(
            include_top=False, weights=None, input_shape=tuple(x.shape[1:]), pooling="avg"
        )
    x = backbone(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model(
        inputs, outputs, name=architecture if front_end == "pixels" else f"{architecture}_{front_end}"
    )


def build_audio_cnn(input_shape: tuple[int, int]) -> keras.Model:
    """The audio member: a compact CNN over (F, T) log-spectrogram windows (about 0.1 M parameters).

    Input (N, F, T, 1) standardised per window; output P(fake) (N, 1).
    """
    inputs = keras.Input((*input_shape, 1), name="spectrogram")
    x = inputs
    for i, filters in enumerate((16, 32, 64, 96)):
        x = _conv_block(x, filters, f"block{i + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model(inputs, outputs, name="audio_cnn")


def _residual_block_1d(x: Any, filters: int, name: str) -> Any:
    """Two 3-tap convolutions with a (projected) skip connection, then max pooling by 3 (RawNet2's block)."""
    skip = x if x.shape[-1] == filters else layers.Conv1D(filters, 1, name=f"{name}_project")(x)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.LeakyReLU(0.3, name=f"{name}_act1")(x)
    x = layers.Conv1D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    x = layers.LeakyReLU(0.3, name=f"{name}_act2")(x)
    x = layers.Conv1D(filters, 3, padding="same", name=f"{name}_conv2")(x)
    x = layers.Add(name=f"{name}_add")([x, skip])
    return layers.MaxPooling1D(3, name=f"{name}_pool")(x)


def build_raw_cnn(input_shape: tuple[int, int]) -> keras.Model:
    """The raw-waveform audio member, after RawNet2 (Tak et al., ICASSP 2021) at CPU scale (about 90 k
    parameters): a learned filterbank (64-tap convolution with stride 4, so bands up to the Nyquist
    frequency stay, where vocoders leave their traces), the magnitude of its output, then residual blocks
    of 1-D convolutions with max pooling and global average and max pooling over time.

    Input (N, 1, samples, 1) standardised per window (``pipeline.audio.member_inputs``, feature
    ``waveform``); output P(fake) (N, 1).
    """
    inputs = keras.Input((*input_shape, 1), name="waveform")
    x = layers.Reshape((input_shape[1], 1), name="samples")(inputs)
    x = layers.Conv1D(32, 64, strides=4, padding="same", use_bias=False, name="filterbank")(x)
    x = Magnitude(name="magnitude")(x)
    x = layers.MaxPooling1D(3, name="filterbank_pool")(x)
    for i, filters in enumerate((32, 32, 64, 64, 64)):
        x = _residual_block_1d(x, filters, f"block{i + 1}")
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.LeakyReLU(0.3, name="final_act")(x)
    pooled = layers.Concatenate(name="pooled")(
        [layers.GlobalAveragePooling1D(name="gap")(x), layers.GlobalMaxPooling1D(name="gmp")(x)]
    )
    x = layers.Dense(32, activation="relu", name="hidden")(pooled)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model(inputs, outputs, name="raw_cnn")


AUDIO_ARCHITECTURES = ("audio_cnn", "raw_cnn", "logmel_stats")


def build_statistics_head(
    mean: Any, variance: Any, *, hidden: int = 32, dropout: float = 0.2, name: str = "head"
) -> keras.Model:
    """The head of a ``logmel_stats`` member: (N, D) statistics -> P(fake) (N, 1).

    The statistics are standardised with the training set's ``mean`` and ``variance`` (D values each,
    fixed), then read by one hidden layer of ``hidden`` units, or by a logistic regression with
    ``hidden=0``.
    """
    features = keras.Input((len(mean),), name="statistics")
    x = layers.Normalization(mean=mean, variance=variance, name="standardise")(features)
    if hidden:
        x = layers.Dense(hidden, activation="relu", name="hidden")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model(features, outputs, name=name)


def build_logmel_statistics(
    input_shape: tuple[int, int], head: keras.Model, *, statistics: tuple[str, ...] | None = None
) -> keras.Model:
    """The ``logmel_stats`` audio member: ``LogMelStatistics`` over (F, T) log-mel windows, then ``head``.

    Input (N, F, T, 1) standardised per window; output P(fake) (N, 1). The head is trained on the
    statistics alone (they have no weights), so that training never holds spectrograms in memory.
    """
    inputs = keras.Input((*input_shape, 1), name="spectrogram")
    kwargs = {} if statistics is None else {"statistics": statistics}
    x = LogMelStatistics(name="logmel_statistics", **kwargs)(inputs)
    return keras.Model(inputs, head(x), name="logmel_stats")
