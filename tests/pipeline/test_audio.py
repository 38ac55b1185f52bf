from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.audio import AudioFrontEnd, level_dbfs, member_inputs, split_windows
from pipeline.errors import SilentAudioError, TooShortError

FE = AudioFrontEnd(window_s=2.0, hop_s=1.0)
RATE = FE.sample_rate_hz


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def test_windows_overlap_and_cover_the_tail() -> None:
    windows = split_windows(tone(5.5), FE)
    assert windows.shape == (5, 2 * RATE)  # starts 0,1,2,3 and one flush with the end at 3.5 s
    np.testing.assert_array_equal(windows[-1], tone(5.5)[-2 * RATE :])


def test_short_clip_is_padded_into_one_window() -> None:
    windows = split_windows(tone(1.5), FE)
    assert windows.shape == (1, 2 * RATE) and not windows[0, -100:].any()


def test_too_short_and_silent_are_refused() -> None:
    with pytest.raises(TooShortError):
        split_windows(tone(0.5), FE)
    with pytest.raises(SilentAudioError):
        split_windows(np.zeros(3 * RATE, np.float32), FE)
    with pytest.raises(SilentAudioError):
        split_windows(tone(3, amplitude=1e-4), FE)


def test_level_dbfs() -> None:
    assert level_dbfs(np.ones(100, np.float32)) == pytest.approx(0.0)
    assert level_dbfs(np.zeros(10, np.float32)) == float("-inf")


@pytest.mark.parametrize("feature", ["logmel", "linear", "cqt", "waveform"])
def test_spectrogram_shape_matches_the_declared_input(feature: str) -> None:
    fe = replace(AudioFrontEnd.for_feature(feature), window_s=2.0, hop_s=1.0)
    features = member_inputs(split_windows(tone(3.0), fe), fe)
    assert features.shape == (2, *fe.input_shape, 1) and features.dtype == np.float32
    assert abs(features.mean()) < 1e-3 and features.std() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("feature", ["logmel", "waveform"])
def test_gain_does_not_change_features(feature: str) -> None:
    fe = replace(FE, feature=feature)
    sound = tone(2.0) + np.random.default_rng(0).normal(0, 0.05, 2 * RATE).astype(np.float32)  # broadband
    a = member_inputs(split_windows(0.1 * sound, fe), fe)
    b = member_inputs(split_windows(sound, fe), fe)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_cqt_needs_a_compatible_hop() -> None:
    with pytest.raises(ValueError, match="divisible by 128"):
        AudioFrontEnd.from_dict({"feature": "cqt", "hop_length": 160})


def test_cqt_resolves_a_tone_to_its_bin() -> None:
    fe = replace(AudioFrontEnd.for_feature("cqt"), window_s=2.0, hop_s=1.0)
    features = member_inputs(split_windows(tone(2.0), fe), fe)[0, :, :, 0]
    expected_bin = round(12 * np.log2(300 / 30.0))  # the 300 Hz test tone, 12 bins per octave from 30 Hz
    assert abs(int(features.mean(axis=1).argmax()) - expected_bin) <= 1


def test_front_end_round_trip() -> None:
    assert AudioFrontEnd.from_dict(FE.to_dict()) == FE
    with pytest.raises(ValueError):
        AudioFrontEnd.from_dict({"feature": "mfcc"})
