from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipeline.ensemble import aggregate, logit
from training.fitting import (
    IMAGE_SUFFIXES,
    Augmentation,
    FitConfig,
    augment,
    balanced_weights,
    find_labelled_files,
    recalibrate_batch_norm,
    split_of,
    split_samples,
)
from training.recipes import MemberPlan, fit_aggregation, train_image_members


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
def test_batch_norm_recalibration_sets_the_moving_statistics_to_the_batch_average() -> None:
    """Every batch-norm layer, nested backbones included, ends with the mean of the batches' statistics;
    the momentum is restored and no trained weight changes."""
    import keras

    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="outer_bn")(inner(inputs)))
    outer_bn, inner_bn = model.get_layer("outer_bn"), inner.layers[-1]
    weights = [w.copy() for w in inner.layers[0].get_weights()]
    rng = np.random.default_rng(5)
    batches = [rng.normal([5.0, -2.0, 0.5], [2.0, 0.5, 1.0], (16, 3)).astype(np.float32) for _ in range(6)]

    assert recalibrate_batch_norm(model, batches) == 6
    hidden = [np.asarray(inner.layers[0](b)) for b in batches]  # what the inner layer normalises
    np.testing.assert_allclose(inner_bn.moving_mean, np.mean([h.mean(0) for h in hidden], 0), rtol=1e-4)
    np.testing.assert_allclose(inner_bn.moving_variance, np.mean([h.var(0) for h in hidden], 0), rtol=1e-3)
    assert inner_bn.momentum == outer_bn.momentum == 0.99
    for before, after in zip(weights, inner.layers[0].get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert abs(float(np.asarray(outer_bn.moving_variance).mean()) - 1.0) < 0.2  # it sees normalised inputs
    assert recalibrate_batch_norm(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), batches) == 0


def test_tiny_training_run_learns_resumes_and_writes_a_pack(tmp_path: Path) -> None:
    from pipeline.pack import ModelPack, read_manifest
    from training.modelcard import render
    from workers.cli import main

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

    # a later run that trains more members keeps the first one and fuses all of them on validation scores
    plans = [MemberPlan.parse("profile:64"), MemberPlan.parse("densenet121+spectrum:32")]
    manifest = train_image_members(
        data,
        out,
        plans,
        target_fpr=0.1,
        version="0.2.0",
        config=FitConfig(epochs=1, batch_size=16),
        verbose=0,
    )
    assert [(m.name, m.architecture) for m in manifest.image_members] == [
        ("spectral", "spectral"),
        ("profile", "profile"),
        ("densenet121_spectrum", "densenet121+spectrum"),
    ]
    assert (pack.manifest.version, manifest.version) == ("0.1.0", "0.2.0")  # kept unless a new one is given
    assert manifest.aggregation.method == "stacking" and len(manifest.aggregation.coefficients) == 3
    info = manifest.info["image_training"]
    assert (
        set(info["members"]) == {"spectral", "profile", "densenet121_spectrum"} and info["target_fpr"] == 0.1
    )
    assert manifest.image_members[0].metrics["test_auc"] == info["members"]["spectral"]["all"]["auc"]
    # every member is measured again on the validation split the stacking saw, the training figure kept
    for m in manifest.image_members:
        assert 0.0 <= m.metrics["split_val_auc"] <= 1.0 and "val_auc" in m.metrics
    assert 0.0 < manifest.thresholds["image"] < 1.0
    # the card gives each AUC with its interval and the ensemble against each subset's best member
    against = info["test_against_best_member"]
    assert set(against) == {k for k, figures in info["test_ensemble"].items() if np.isfinite(figures["auc"])}
    for subset, comparison in against.items():
        aucs = {name: figures[subset]["auc"] for name, figures in info["members"].items()}
        assert aucs[comparison["member"]] == max(aucs.values())
        ensemble = info["test_ensemble"][subset]
        assert comparison["difference"] == pytest.approx(ensemble["auc"] - max(aucs.values()))
        assert ensemble["auc_low"] <= ensemble["auc"] <= ensemble["auc_high"]
    # each member's contribution: the ensemble refitted without it, paired on the test split
    contribution = info["test_member_contribution"]
    assert set(contribution) == {"spectral", "profile", "densenet121_spectrum"}
    for figures in contribution.values():
        assert figures["low"] <= figures["difference"] <= figures["high"]
        assert figures["difference"] == pytest.approx(
            info["test_ensemble"]["all"]["auc"] - figures["without_auc"]
        )
    card = render(manifest, out)
    assert "| auc | 95 % CI |" in card and f"| all | {against['all']['member']} |" in card
    without = contribution["densenet121_spectrum"]["without_auc"]
    assert "| member | AUC without it |" in card and f"| densenet121_spectrum | {without:.3f} | " in card
    profile = manifest.image_members[1].metrics
    assert (
        f"| {profile['val_auc']:.3f} | {profile['split_val_auc']:.3f} | {profile['test_auc']:.3f} |" in card
    )

    # --fuse-only trains nothing and finds the same fusion again, or a new one for another target FPR
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.keras")}
    refit = ["--fuse-only", "--target-fpr", "0.1", "--version", "0.2.1"]
    assert main(["train", "image", "--data", str(data), "--out", str(out), *refit]) == 0
    again = read_manifest(out)
    assert again.version == "0.2.1"
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.keras")} == before
    assert again.aggregation.coefficients == pytest.approx(manifest.aggregation.coefficients)
    assert again.thresholds["image"] == pytest.approx(manifest.thresholds["image"])
    assert again.info["image_training"]["config"] == json.loads(json.dumps(info["config"]))
    assert ModelPack.load(out).score_faces([np.zeros((64, 64, 3), np.uint8)]).shape == (1, 3)

    # --drop takes a member out, file and all, and fuses the rest
    assert main(["train", "image", "--data", str(data), "--out", str(out), *refit, "--drop", "spectral"]) == 0
    dropped = read_manifest(out)
    assert [m.name for m in dropped.image_members] == ["profile", "densenet121_spectrum"]
    assert len(dropped.aggregation.coefficients) == 2 and not (out / "spectral.keras").exists()
    assert set(dropped.info["image_training"]["members"]) == {"profile", "densenet121_spectrum"}
    assert ModelPack.load(out).score_faces([np.zeros((64, 64, 3), np.uint8)]).shape == (1, 2)
    assert main(["train", "image", "--data", str(data), "--out", str(out), *refit, "--drop", "spectral"]) == 2


def test_member_plan_parsing() -> None:
    assert MemberPlan.parse("densenet121:96").input_size == (96, 96)
    assert MemberPlan.parse("Xception:128x160") == MemberPlan("xception", (128, 160))
    plan = MemberPlan.parse("xception+spectrum:128")
    assert plan == MemberPlan("xception", (128, 128), "spectrum")
    assert (plan.name, plan.label) == ("xception_spectrum", "xception+spectrum")
    with pytest.raises(ValueError):
        MemberPlan.parse("resnet50")


def make_audio_dataset(root: Path, n_speakers: int = 24) -> Path:
    """'Real' clips are noisy chirps, 'fake' ones pure tones (family 'tone') or clicks (family 'click')."""
    from workers.samples import write_wav

    rate = 16_000
    t = np.arange(2 * rate) / rate
    rng = np.random.default_rng(0)
    for speaker in range(100, 100 + n_speakers):
        f0 = rng.uniform(120, 240)
        real = 0.3 * np.sin(2 * np.pi * (f0 + 40 * t) * t) + rng.normal(0, 0.05, t.size)
        fakes = {
            "tone": 0.3 * np.sin(2 * np.pi * f0 * t),
            "click": 0.3 * (np.arange(t.size) % int(rate / f0) == 0),
        }
        (root / "real").mkdir(parents=True, exist_ok=True)
        write_wav(root / "real" / f"{speaker}-1-0000.wav", real.astype(np.float32))
        for family, signal in fakes.items():
            (root / "fake" / family).mkdir(parents=True, exist_ok=True)
            write_wav(root / "fake" / family / f"{speaker}-{family}-0.wav", signal.astype(np.float32))
    return root


@pytest.mark.slow
def test_audio_members_with_a_held_out_family_are_fused(tmp_path: Path) -> None:
    from pipeline.audio import AudioFrontEnd
    from pipeline.errors import ModelPackError
    from pipeline.pack import ModelPack, read_manifest
    from training.audio_datasets import load_folders, speaker_disjoint_split
    from training.recipes import train_audio_member

    data = make_audio_dataset(tmp_path / "audio")
    front_end = AudioFrontEnd(window_s=1.0, hop_s=1.0)
    config = FitConfig(epochs=3, batch_size=8, patience=5)
    manifest = train_audio_member(
        data, tmp_path / "pack", front_end=front_end, holdout_families=["click"], config=config, verbose=0
    )
    (member,) = manifest.audio_members
    assert member.name == "audio_logmel" and member.input_size == front_end.input_shape
    assert manifest.audio == member.front_end == front_end
    info = manifest.info["audio_training"]
    assert info["holdout_families"] == ["click"]
    splits = speaker_disjoint_split(load_folders(data))
    for name in ("train", "val"):  # the held-out family never reaches training or early stopping
        assert info["split_clips"][name] == sum(1 for item in splits[name] if item.family != "click")
    assert info["split_clips"]["test"] == len(splits["test"])  # but it is measured
    # every 2 s training clip gives two 1 s windows, and so does its processed copy
    recipe = json.loads((tmp_path / "pack" / "audio_logmel.report.json").read_text())["recipe"]
    assert recipe == {"copies": 1, "train_windows": 4 * info["split_clips"]["train"],
                      "val_windows": 2 * info["split_clips"]["val"]}  # fmt: skip
    figures = info["test_clips"]
    assert {"all", "tone", "click", "held_out_pooled"} <= set(figures)
    assert figures["tone"]["n"] == figures["click"]["n"]  # each family against the same real clips
    calibration = manifest.audio_aggregation  # Platt scaling of window scores, fitted on validation windows
    assert calibration.method == "stacking" and len(calibration.coefficients) == 1
    threshold = manifest.thresholds["audio"]  # chosen at the validation EER, used for every test figure
    assert 0.0 < threshold < 1.0 and figures["all"]["threshold"] == figures["click"]["threshold"] == threshold

    # a second front end joins the first: both stay, and one logistic regression fuses their windows; the
    # waveform is read by the raw-waveform network
    waveform = AudioFrontEnd(feature="waveform", window_s=1.0, hop_s=1.0)
    manifest = train_audio_member(
        data, tmp_path / "pack", front_end=waveform, holdout_families=["click"], config=config, verbose=0
    )
    assert [(m.name, m.architecture) for m in manifest.audio_members] == [
        ("audio_logmel", "audio_cnn"),
        ("audio_waveform", "raw_cnn"),
    ]
    assert len(manifest.audio_aggregation.coefficients) == 2
    assert set(manifest.info["audio_training"]["members"]) == {"audio_logmel", "audio_waveform"}
    for m in manifest.audio_members:
        assert manifest.info["audio_training"]["members"][m.name]["all"]["auc"] == m.metrics["test_auc"]
        assert 0.0 <= m.metrics["split_val_auc"] <= 1.0
    pack = ModelPack.load(tmp_path / "pack")
    assert pack.score_audio_windows(np.zeros((2, front_end.window_samples), np.float32)).shape == (2, 2)

    # --fuse-only trains nothing and measures the same members again: the same fusion, the same figures
    from workers.cli import main

    fused = manifest.info["audio_training"]
    assert (
        main(
            [
                "train",
                "audio",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "pack"),
                "--fuse-only",
                "--holdout-families",
                "click",
            ]
        )
        == 0
    )
    again = read_manifest(tmp_path / "pack")
    assert again.audio_aggregation.coefficients == pytest.approx(manifest.audio_aggregation.coefficients)
    assert again.info["audio_training"]["test_clips"] == json.loads(json.dumps(fused["test_clips"]))

    # a member whose windows differ from the pack's cannot be fused: refused before any training
    with pytest.raises(ModelPackError, match="would cut windows"):
        train_audio_member(
            data,
            tmp_path / "pack",
            front_end=AudioFrontEnd(window_s=2.0, hop_s=1.0),
            config=FitConfig(epochs=1, batch_size=8),
            verbose=0,
        )
    assert [m.name for m in read_manifest(tmp_path / "pack").audio_members] == [
        "audio_logmel",
        "audio_waveform",
    ]


@pytest.mark.slow
def test_the_classic_members_build_and_score_at_their_native_input_sizes() -> None:
    """The four classic backbones at the sizes they were designed for, as ``train image`` builds them
    (training them there is a benchmark's job: one epoch of all four took minutes of the suite; the
    training path itself is ``test_tiny_training_run_learns_resumes_and_writes_a_pack``'s, at small sizes)."""
    import keras

    from training.architectures import CLASSIC_ARCHITECTURES, _applications, build_image_member

    sizes = {}
    for architecture in CLASSIC_ARCHITECTURES:
        native = _applications()[architecture].native_input_px
        model = build_image_member(architecture, (native, native), front_end="residual")
        scores = np.asarray(model.predict(np.zeros((1, native, native, 3), np.float32), verbose=0))
        assert scores.shape == (1, 1) and 0.0 <= float(scores[0, 0]) <= 1.0, architecture
        sizes[architecture] = tuple(model.input_shape[1:3])
        keras.backend.clear_session()
    assert sizes == {
        "xception": (299, 299),
        "inception_v3": (299, 299),
        "resnet50": (224, 224),
        "densenet121": (224, 224),
    }


def test_stacking_uses_a_member_with_a_narrow_output_range() -> None:
    # A member trained from scratch can rank well with outputs in a sliver around 0.46. Its logits are
    # standardised for the fit, so regularisation does not silence it for needing a large coefficient.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    signal = labels + rng.normal(0.0, 0.35, labels.size)
    narrow = 0.4640 + 0.0002 * signal
    noisy = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.0, labels.size)))  # no information, full range
    aggregation = fit_aggregation(np.c_[narrow, noisy], labels)
    fused = aggregate(np.c_[narrow, noisy], aggregation)
    assert roc_auc_score(labels, fused) > 0.95  # the narrow member alone ranks at about 0.98
    assert abs(aggregation.coefficients[0]) > 100 * abs(aggregation.coefficients[1])
    # the stored coefficients act on raw logits exactly as the fitted model did on standardised ones
    logits = logit(np.c_[narrow, noisy])
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(
        (logits - logits.mean(axis=0)) / logits.std(axis=0), labels
    )
    expected = reference.predict_proba((logits - logits.mean(axis=0)) / logits.std(axis=0))[:, 1]
    np.testing.assert_allclose(fused, expected, atol=1e-9)
