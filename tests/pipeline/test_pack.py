from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelPackError
from pipeline.models import CLASSIC_ARCHITECTURES, build_image_member
from pipeline.pack import MANIFEST_FILE, ModelPack, read_manifest
from workers.samples import face_image


def test_save_reload_gives_identical_outputs(random_pack: Path, tmp_path: Path) -> None:
    pack = ModelPack.load(random_pack)
    rng = np.random.default_rng(0)
    crops = [face_image()[60:220, 150:310], rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)]
    spectro = rng.normal(size=(3, *pack.manifest.audio.input_shape, 1)).astype(np.float32)  # type: ignore[union-attr]
    before_faces, before_audio = pack.score_faces(crops), pack.score_spectrograms(spectro)

    copy = tmp_path / "copy"
    copy.mkdir()
    for name, model in pack.models.items():  # re-save every member, as a retraining run would
        model.save(copy / f"{name}.keras")
    shutil.copy(random_pack / MANIFEST_FILE, copy / MANIFEST_FILE)
    reloaded = ModelPack.load(copy, verify=False)
    np.testing.assert_array_equal(reloaded.score_faces(crops), before_faces)
    np.testing.assert_array_equal(reloaded.score_spectrograms(spectro), before_audio)
    assert before_faces.shape == (2, 2) and ((before_faces >= 0) & (before_faces <= 1)).all()


def test_checksum_mismatch_is_refused(random_pack: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(random_pack, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["members"][0]["sha256"] = "0" * 64
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackError, match="checksum"):
        ModelPack.load(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("members"), "malformed"),
        (lambda m: m.update(members=[]), "no members"),
        (lambda m: m["members"][0].update(kind="text"), "unknown kind"),
        (lambda m: m["members"][0].update(file="missing.keras", sha256=""), "missing"),
    ],
)
def test_malformed_manifests_are_refused(random_pack: Path, tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "bad"
    shutil.copytree(random_pack, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    edit(manifest)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackError, match=message):
        ModelPack.load(copy)


def test_missing_pack_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="no manifest.json"):
        read_manifest(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", CLASSIC_ARCHITECTURES)
def test_classic_members_build_at_their_smallest_input(architecture: str) -> None:
    from pipeline.models import _applications

    size = _applications()[architecture].min_input_px
    model = build_image_member(architecture, (size, size))
    out = model.predict(np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32), verbose=0)
    assert out.shape == (2, 1) and ((out > 0) & (out < 1)).all()
    with pytest.raises(ValueError, match="at least"):
        build_image_member(architecture, (size - 1, size - 1))


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_image_member("vgg16", (64, 64))
