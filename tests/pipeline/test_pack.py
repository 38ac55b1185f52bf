from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelPackError
from pipeline.pack import MANIFEST_FILE, ModelPack, read_manifest
from training.architectures import CLASSIC_ARCHITECTURES, build_image_member
from workers.samples import face_image


def test_save_reload_gives_identical_outputs(random_pack: Path, tmp_path: Path) -> None:
    pack = ModelPack.load(random_pack)
    rng = np.random.default_rng(0)
    crops = [face_image()[60:220, 150:310], rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)]
    windows = rng.normal(0, 0.1, size=(3, pack.manifest.audio.window_samples)).astype(np.float32)  # type: ignore[union-attr]
    before_faces, before_audio = pack.score_faces(crops), pack.score_audio_windows(windows)

    copy = tmp_path / "copy"
    copy.mkdir()
    for name, model in pack.models.items():  # re-save every member, as a retraining run would
        model.save(copy / f"{name}.keras")
    shutil.copy(random_pack / MANIFEST_FILE, copy / MANIFEST_FILE)
    reloaded = ModelPack.load(copy, verify=False)
    np.testing.assert_array_equal(reloaded.score_faces(crops), before_faces)
    np.testing.assert_array_equal(reloaded.score_audio_windows(windows), before_audio)
    assert before_faces.shape == (2, 2) and ((before_faces >= 0) & (before_faces <= 1)).all()


def test_audio_members_with_their_own_front_ends(random_pack: Path, tmp_path: Path) -> None:
    """Members fused window by window may read different spectrograms of the same windows."""
    from dataclasses import replace

    from pipeline.audio import AudioFrontEnd, member_inputs
    from pipeline.pack import MemberSpec, write_manifest
    from training.architectures import build_audio_cnn

    copy = tmp_path / "two_audio"
    shutil.copytree(random_pack, copy)
    manifest = read_manifest(copy)
    assert manifest.audio is not None
    cqt = replace(
        AudioFrontEnd.for_feature("cqt"), window_s=manifest.audio.window_s, hop_s=manifest.audio.hop_s
    )
    build_audio_cnn(cqt.input_shape).save(copy / "audio_cqt.keras")
    member = MemberSpec("audio_cqt", "audio", "audio_cqt.keras", cqt.input_shape, "audio_cnn", front_end=cqt)
    write_manifest(copy, replace(manifest, members=(*manifest.members, member)))

    pack = ModelPack.load(copy)
    assert pack.manifest.audio_members[-1].front_end == cqt  # survives the manifest round trip
    windows = np.random.default_rng(0).normal(0, 0.1, (3, cqt.window_samples)).astype(np.float32)
    scores = pack.score_audio_windows(windows)
    assert scores.shape == (3, 2)
    alone = np.asarray(pack.models["audio_cqt"].predict_on_batch(member_inputs(windows, cqt))).reshape(-1)
    np.testing.assert_allclose(scores[:, 1], alone, rtol=1e-5)
    assert not np.allclose(scores[:, 0], scores[:, 1])

    longer = replace(cqt, window_s=2 * cqt.window_s)  # windows that cannot be fused with the others
    data = json.loads((copy / MANIFEST_FILE).read_text())
    data["members"][-1]["front_end"] = longer.to_dict()
    data["members"][-1]["input_size"] = list(longer.input_shape)
    (copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelPackError, match="cuts windows"):
        read_manifest(copy)


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
    from training.architectures import _applications

    size = _applications()[architecture].min_input_px
    model = build_image_member(architecture, (size, size))
    out = model.predict(np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32), verbose=0)
    assert out.shape == (2, 1) and ((out > 0) & (out < 1)).all()
    with pytest.raises(ValueError, match="at least"):
        build_image_member(architecture, (size - 1, size - 1))


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_image_member("vgg16", (64, 64))


def test_float16_storage_halves_the_file_and_keeps_the_scores(tmp_path: Path) -> None:
    import keras

    from pipeline.pack import store_float16

    keras.utils.set_random_seed(3)
    model = build_image_member("densenet121", (32, 32))
    path = tmp_path / "member.keras"
    model.save(path)
    before = path.stat().st_size
    store_float16(path)
    assert path.stat().st_size < 0.6 * before
    reloaded = keras.saving.load_model(path, compile=False)  # a plain .keras file still
    assert all(w.dtype == "float32" for w in reloaded.weights)  # computes in float32 as before
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    expected, got = model.predict(x, verbose=0), reloaded.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert not np.array_equal(got, expected)  # the weights really were rounded


def test_bundled_pack_is_an_ensemble_within_its_size_budget() -> None:
    """What the model card promises: three or more image members, and at most 60 MB of files in git."""
    from tests.conftest import BUNDLED_PACK

    pack_bytes = sum(p.stat().st_size for p in BUNDLED_PACK.iterdir() if p.is_file())
    assert pack_bytes <= 60_000_000, f"{pack_bytes / 1e6:.1f} MB"
    assert len(read_manifest(BUNDLED_PACK).image_members) >= 3


def test_a_warmed_pack_traces_nothing_more_for_any_batch_size(random_pack: Path) -> None:
    """What makes a worker's first object cost what its hundredth does (``ModelPack.warm_up``)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tracing counts are TensorFlow's; other backends warm every padded size")
    pack = ModelPack.load(random_pack)
    pack.warm_up()

    def traces() -> dict[str, int]:
        return {
            name: model.predict_function.experimental_get_tracing_count()
            for name, model in pack.models.items()
        }

    warmed = traces()
    assert all(count >= 1 for count in warmed.values()), warmed
    face = np.full((90, 90, 3), 100, np.uint8)
    for n in (1, 3, 16, 64, 65):
        pack.score_faces([face] * n)
    front_end = pack.manifest.front_end_of(pack.manifest.audio_members[0])
    for n in (1, 5):
        pack.score_audio_windows(np.zeros((n, front_end.window_samples), np.float32))
    assert traces() == warmed
