from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.recipes import MemberPlan, train_image_members
from pipeline.training import (
    IMAGE_SUFFIXES,
    Augmentation,
    FitConfig,
    augment,
    balanced_weights,
    find_labelled_files,
    split_of,
    split_samples,
)


def make_dataset(root: Path, per_class: int = 24) -> Path:
    """Two sources; 'fake' faces are the astronaut with a blocky 8x upsampling a CNN learns to see."""
    from workers.samples import face_image

    face = cv2.resize(face_image()[40:300, 120:380], (128, 128), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    for source in ("swap", "gan"):
        for label in ("real", "fake"):
            folder = root / source / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = np.clip(face.astype(int) + rng.integers(-25, 25, face.shape), 0, 255).astype(np.uint8)
                if label == "fake":
                    img = cv2.resize(img[::8, ::8], (128, 128), interpolation=cv2.INTER_NEAREST)
                cv2.imwrite(str(folder / f"{i}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


def test_layouts_and_sources(tmp_path: Path) -> None:
    for rel in (
        "a/real/1.jpg",
        "a/fake/x/2.png",
        "Dataset/Train/Real/3.jpg",
        "Dataset/Train/Fake/4.JPG",
        "loose/5.jpg",
        "a/real/notes.txt",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    samples = find_labelled_files(tmp_path, IMAGE_SUFFIXES)
    got = {(s.key, s.label, s.source) for s in samples}
    assert got == {
        ("a/real/1.jpg", 0, "a"),
        ("a/fake/x/2.png", 1, "a"),
        ("Dataset/Train/Real/3.jpg", 0, "Dataset/Train"),
        ("Dataset/Train/Fake/4.JPG", 1, "Dataset/Train"),
    }


def test_split_is_stable_and_proportional() -> None:
    keys = [f"src/real/{i}.jpg" for i in range(4000)]
    assert [split_of(k) for k in keys[:50]] == [split_of(k) for k in keys[:50]]
    counts = {name: sum(split_of(k) == name for k in keys) / len(keys) for name in ("train", "val", "test")}
    assert counts["train"] == pytest.approx(0.70, abs=0.03) and counts["test"] == pytest.approx(
        0.15, abs=0.03
    )


def test_balanced_weights_equalise_groups(tmp_path: Path) -> None:
    samples = find_labelled_files(make_dataset(tmp_path / "d", per_class=3), IMAGE_SUFFIXES)
    samples = samples[:-2]  # make one group smaller
    weights = balanced_weights(samples)
    totals: dict[tuple[str, int], float] = {}
    for s, w in zip(samples, weights, strict=True):
        totals[(s.source, s.label)] = totals.get((s.source, s.label), 0.0) + float(w)
    assert max(totals.values()) == pytest.approx(min(totals.values()))
    assert weights.mean() == pytest.approx(1.0)


def test_augmentation_keeps_shape_and_type() -> None:
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    always = Augmentation(jpeg_probability=1.0, downscale_probability=1.0, shift_probability=1.0)
    out = augment(crop, rng, always)
    assert out.shape == crop.shape and out.dtype == np.uint8 and not np.array_equal(out, crop)


@pytest.mark.slow
def test_tiny_training_run_learns_resumes_and_writes_a_pack(tmp_path: Path) -> None:
    from pipeline.pack import ModelPack

    data = make_dataset(tmp_path / "data")
    splits = split_samples(find_labelled_files(data, IMAGE_SUFFIXES))
    assert all(splits[name] for name in ("train", "val", "test"))
    out = tmp_path / "pack"
    config = FitConfig(epochs=2, batch_size=16, patience=10)
    train_image_members(data, out, [MemberPlan.parse("spectral:64")], config=config, verbose=0)
    state = json.loads((out / "checkpoints" / "spectral.state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 2

    # the same command with more epochs resumes after the last saved epoch instead of starting over
    manifest = train_image_members(
        data,
        out,
        [MemberPlan.parse("spectral:64")],
        config=FitConfig(epochs=5, batch_size=16, patience=10),
        verbose=0,
    )
    state = json.loads((out / "checkpoints" / "spectral.state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4, 5]
    assert manifest.members[0].metrics["test_auc"] > 0.9  # blockiness is easy to see in the spectrum
    pack = ModelPack.load(out)
    assert pack.manifest.info["image_training"]["split"]["test"] > 0


def test_member_plan_parsing() -> None:
    assert MemberPlan.parse("densenet121:96").input_size == (96, 96)
    assert MemberPlan.parse("Xception:128x160") == MemberPlan("xception", (128, 160))
    with pytest.raises(ValueError):
        MemberPlan.parse("resnet50")
