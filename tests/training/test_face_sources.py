"""Several face datasets at once: cluster splits, crop geometry, pseudo-fakes, leave one source out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import DeepscanError
from pipeline.faces import CROP_MARGIN, face_region, to_model_input, with_margin
from tests.training.test_recipes import make_dataset
from training.face_datasets import find_face_samples
from training.fitting import load_crops, make_face_sequence, split_samples
from training.pseudofakes import PseudoFakes, local_edit, pseudo_fake, self_blend


def make_clusters(root: Path, clusters: int = 40, side: int = 112) -> Path:
    """A DFDC-like source: tight crops, one real clip and two fakes made from it per cluster, a manifest."""
    rng = np.random.default_rng(1)
    rows = []
    for c in range(clusters):
        base = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        for k, label in enumerate(("real", "fake", "fake")):
            name = f"clips/{label}/c{c}_{k}.png"
            image = base if label == "real" else cv2.resize(base[::4, ::4], (side, side), cv2.INTER_NEAREST)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), image)
            rows.append({"path": name, "label": label, "video": f"c{c}_{k}", "original": f"c{c}_0"})
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "video", "original"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_a_cluster_sits_on_one_side_of_the_split(tmp_path: Path) -> None:
    clusters = make_clusters(tmp_path / "faces2")
    faces = make_dataset(tmp_path / "faces", per_class=4)
    samples = find_face_samples([faces, clusters], tight_sources=["clips"])
    assert {s.source for s in samples} == {"swap", "gan", "clips"}
    assert {s.geometry for s in samples if s.source == "clips"} == {"tight"}
    assert {s.geometry for s in samples if s.source != "clips"} == {"margin"}
    side_of = {}
    for split, items in split_samples(samples).items():
        for s in items:
            if s.source == "clips":
                assert side_of.setdefault(s.key, split) == split, f"cluster {s.key} on two sides"
    assert len(set(side_of.values())) == 3 and len(side_of) == 40  # every split gets clusters


def test_sources_are_unique_and_tight_ones_must_exist(tmp_path: Path) -> None:
    faces = make_dataset(tmp_path / "a", per_class=2)
    twin = make_dataset(tmp_path / "b", per_class=2)
    with pytest.raises(DeepscanError, match="'gan' is in both"):
        find_face_samples([faces, twin])
    with pytest.raises(DeepscanError, match="no source named dfdc"):
        find_face_samples([faces], tight_sources=["dfdc"])
    with pytest.raises(DeepscanError, match="no images"):
        find_face_samples([tmp_path / "empty"])


def test_a_tight_crop_gets_a_margin_and_a_tight_member_sees_it_as_it_was_cut(tmp_path: Path) -> None:
    original = cv2.resize(_faces(1)[0][28:228, 28:228], (200, 200))
    (tmp_path / "clips" / "real").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "clips" / "real" / "a.png"), cv2.cvtColor(original, cv2.COLOR_RGB2BGR))
    [sample] = find_face_samples([tmp_path], ["clips"])
    margin_crop = load_crops([sample])[0]
    assert margin_crop.shape == (256, 256, 3)
    seen = to_model_input([margin_crop], (64, 64), "tight")[0]
    expected = to_model_input([original], (64, 64))[0]
    assert np.abs(seen - expected).mean() < 0.02  # the same face, up to two resizings
    assert np.abs(to_model_input([margin_crop], (64, 64))[0] - expected).mean() > 0.05  # margin: another view
    assert with_margin(original).shape[0] == round(200 * CROP_MARGIN)


def test_face_region() -> None:
    crop = np.arange(130 * 130 * 3, dtype=np.uint8).reshape(130, 130, 3)
    assert face_region(crop, "margin") is crop
    tight = face_region(crop, "tight")
    assert tight.shape == (100, 100, 3) and (tight == crop[15:115, 15:115]).all()
    with pytest.raises(ValueError, match="unknown crop geometry"):
        face_region(crop, "loose")


def test_a_member_names_its_crop_geometry_in_the_manifest() -> None:
    from pipeline.errors import ModelPackError
    from pipeline.pack import MemberSpec
    from training.recipes import MemberPlan

    entry = {"name": "p", "kind": "image", "file": "p.keras", "input_size": [64, 64]}
    assert MemberSpec.from_dict(entry).crop_geometry == "margin"
    assert "crop_geometry" not in MemberSpec.from_dict(entry).to_dict()  # older manifests stay as they were
    tight = MemberSpec.from_dict({**entry, "crop_geometry": "tight"})
    assert tight.crop_geometry == "tight" and tight.to_dict()["crop_geometry"] == "tight"
    with pytest.raises(ModelPackError, match="crop_geometry"):
        MemberSpec.from_dict({**entry, "crop_geometry": "loose"})
    assert MemberPlan("profile", (96, 96), crop_geometry="tight").name == "profile_tight"
    with pytest.raises(ValueError, match="unknown crop geometry"):
        MemberPlan("profile", (96, 96), crop_geometry="loose")


def _faces(n: int = 2) -> list[np.ndarray]:
    from workers.samples import face_image

    face = cv2.resize(face_image()[20:320, 100:400], (256, 256), interpolation=cv2.INTER_AREA)
    return [face, np.ascontiguousarray(face[:, ::-1])][:n]


def test_self_blends_change_the_face_and_repeat_with_their_seed() -> None:
    face = _faces(1)[0]
    blends = [self_blend(face, np.random.default_rng(seed)) for seed in range(12)]
    assert all(b.shape == face.shape and b.dtype == np.uint8 for b in blends)
    assert all(np.abs(b.astype(int) - face).mean() > 0.5 for b in blends)
    assert (self_blend(face, np.random.default_rng(3)) == blends[3]).all()


def test_a_local_edit_leaves_the_frame_around_the_face_alone() -> None:
    face, donor = _faces()
    edited = local_edit(face, donor, np.random.default_rng(0))
    difference = np.abs(edited.astype(int) - face).sum(axis=2)
    assert difference[:40].max() == 0 and difference[-30:].max() == 0  # above the brows, below the chin
    assert difference[80:220, 60:200].mean() > 1.0  # a part of the face was replaced
    for seed in range(5):  # local_edit_share 1: every pseudo-fake is a local edit
        made = pseudo_fake(face, donor, np.random.default_rng(seed), PseudoFakes(local_edit_share=1.0))
        assert (made[:40] == face[:40]).all() and not (made == face).all()


def test_pseudo_fakes_join_their_batch_as_fakes() -> None:
    face, other = _faces()
    crops = np.stack([face, other, face, other])
    labels = np.array([0, 0, 1, 1])
    sequence = make_face_sequence(
        crops,
        labels,
        np.full(4, 2.0, np.float32),
        input_size=(32, 32),
        batch_size=4,
        aug=None,
        seed=0,
        geometry="tight",
        pseudo_fakes=PseudoFakes(probability=1.0),
    )
    x, y, w = sequence[0]
    assert x.shape == (6, 32, 32, 3)  # both reals come back as pseudo-fakes
    assert y[:, 0].tolist()[-2:] == [1.0, 1.0] and sorted(y[:4, 0].tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert w.tolist() == [2.0] * 4 + [1.0] * 2
    plain = make_face_sequence(
        crops, labels, np.ones(4, np.float32), input_size=(32, 32), batch_size=4, aug=None, seed=0
    )
    assert plain[0][0].shape == (4, 32, 32, 3)


@pytest.mark.slow
def test_leave_one_source_out_trains_without_each_source_and_scores_it(
    tmp_path: Path, random_pack: Path
) -> None:
    from workers.cli import main

    faces = make_dataset(tmp_path / "faces", per_class=16)
    clusters = make_clusters(tmp_path / "faces2", clusters=12, side=96)
    out = tmp_path / "loso"
    args = ["evaluate", "--kind", "image", "--leave-one-out", "--data", str(faces), "--data", str(clusters)]
    args += ["--tight-sources", "clips", "--members", "spectral:32", "--crop-geometry", "tight"]
    args += ["--pseudo-fakes", "0.5", "--epochs", "2", "--batch-size", "16", "--models", str(random_pack)]
    args += ["--out", str(out), "--markdown", str(tmp_path / "loso.md")]
    assert main([*args, "--families", "gan,clips"]) == 0  # swap's test split has no real face
    table = json.loads((out / "loso.json").read_text())
    assert set(table["sources"]) == {"gan", "clips"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["all", "clips", "gan"]
    for row in table["sources"].values():
        assert set(row["held_out"]) == set(row["in_split"]) == {"ensemble", "spectral_tight"}
        assert row["pack_seen"] is False and "test-pack@0.0.1 ensemble" in row["pack"]
        figures = row["held_out"]["ensemble"]
        assert figures["n_real"] > 0 and figures["n_fake"] > 0 and 0.0 <= figures["auc"] <= 1.0
    # the fold that held 'clips' out trained on the other sources' train split only
    state = json.loads((out / "clips" / "checkpoints" / "spectral_tight.state.json").read_text())
    assert len(state["history"]) == 2
    markdown = (tmp_path / "loso.md").read_text()
    assert markdown.count("\n| clips |") == 1 and "held out" in markdown
    # a rerun reads the folds' scores instead of training again; an unknown source is a usage error
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/scores.json")}
    assert main([*args, "--families", "clips"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/scores.json")} == stamps
    assert main([*args, "--families", "nowhere"]) == 2
