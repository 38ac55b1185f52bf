"""Turning a saved pack's members exact: the option set, the weights and scores of other members kept."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.layers import EXACT_OPTION_LAYERS, backend_dependent_layers
from pipeline.pack import Manifest, MemberSpec, ModelPack, write_manifest
from training.architectures import build_image_member
from training.exact_features import make_pack_exact


def legacy_profile(size: int) -> keras.Model:
    """A profile member as packs up to 0.10.0 saved them: the same layers, ``exact`` off."""
    model = build_image_member("profile", (size, size))
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] in {cls.__name__ for cls in EXACT_OPTION_LAYERS}:
            layer["config"]["exact"] = False
    legacy = keras.Model.from_config(config)
    legacy.set_weights(model.get_weights())
    return legacy


def test_a_legacy_pack_is_made_exact_with_its_weights_as_trained(tmp_path: Path) -> None:
    legacy = legacy_profile(32)
    assert backend_dependent_layers(legacy) == ["profile", "chroma_cooccurrence", "chroma_regions"]
    legacy.save(tmp_path / "profile.keras")
    build_image_member("spectral", (32, 32)).save(tmp_path / "spectral.keras")
    members = (
        MemberSpec("profile", "image", "profile.keras", (32, 32), "profile"),
        MemberSpec("spectral", "image", "spectral.keras", (32, 32), "spectral"),
    )
    write_manifest(tmp_path, Manifest(name="legacy", version="1", members=members))
    spectral_before = (tmp_path / "spectral.keras").read_bytes()

    assert make_pack_exact(tmp_path) == {"profile": 3, "spectral": 0}
    assert make_pack_exact(tmp_path) == {"profile": 0, "spectral": 0}  # once is enough
    pack = ModelPack.load(tmp_path)  # the checksums follow the rewritten file
    assert backend_dependent_layers(pack.models["profile"]) == []
    for saved, trained in zip(pack.models["profile"].get_weights(), legacy.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, trained)
    assert (tmp_path / "spectral.keras").read_bytes() == spectral_before


def test_a_legacy_member_on_another_backend_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Loaded on a backend other than TensorFlow, a member whose features depend on the backend's arithmetic
    is named in a warning; once exact, or on TensorFlow, nothing is said."""
    legacy_profile(32).save(tmp_path / "profile.keras")
    members = (MemberSpec("profile", "image", "profile.keras", (32, 32), "profile"),)
    write_manifest(tmp_path, Manifest(name="legacy", version="1", members=members))
    caplog.set_level(logging.WARNING, logger="pipeline.pack")
    ModelPack.load(tmp_path)
    assert not caplog.records  # TensorFlow, where it was trained
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    ModelPack.load(tmp_path)
    assert "members profile score differently" in caplog.text and "chroma_regions" in caplog.text
    caplog.clear()
    make_pack_exact(tmp_path)
    ModelPack.load(tmp_path)
    assert not caplog.records
