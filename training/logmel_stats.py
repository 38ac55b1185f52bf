"""The ``logmel_stats`` audio member: log-mel statistics (``pipeline.layers.LogMelStatistics``) and a small head.

The statistics have no weights, so they are computed once per window (and per processed copy of each
training clip) and only the head is trained; the member that ships is the layer with the head on top, and
it runs through the pack's ordinary audio path (``ModelPack.score_audio_windows``, front end ``logmel``).
The windows and their processed copies come from ``training.audio_windows``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd
from pipeline.layers import LOGMEL_STATISTICS
from pipeline.pack import Manifest, MemberSpec, write_manifest
from training.audio_windows import WindowFeatures, balanced_batches, balanced_window_weights, window_features
from training.fitting import FitConfig, fit_member
from training.recipes import (
    DataDirs,
    _audio_pack_with,
    _audio_splits,
    _base_manifest,
    _save_inference_copy,
    fit_audio_fusion,
)
from training.spoofs import DEFAULT_PROCESSING, Processing

logger = logging.getLogger(__name__)

ARCHITECTURE = "logmel_stats"
DEFAULT_HIDDEN = 32  # units of the head's hidden layer (0: a logistic regression)
# the floor the issue sets (#16): a logistic regression over these statistics alone
FLOOR_STATISTICS = ("mean", "std", "delta")


def fit_head(
    train: WindowFeatures,
    val: WindowFeatures,
    checkpoint_dir: Path,
    name: str,
    *,
    hidden: int = DEFAULT_HIDDEN,
    config: FitConfig = FitConfig(epochs=60, batch_size=128, learning_rate=3e-3, patience=8),
    verbose: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train the head on the statistics of ``train``, early-stopped on the window AUC of ``val``.

    The statistics are standardised with the training windows' mean and variance, stored in the head.
    Returns the best head and the run state (``fit_member``).
    """
    from training.architectures import build_statistics_head

    mean = train.x.mean(axis=0)
    variance = np.maximum(train.x.var(axis=0), 1e-6)
    return fit_member(
        lambda: build_statistics_head(mean, variance, hidden=hidden), name, balanced_batches(train, config),
        val.x, val.labels, checkpoint_dir, config, verbose=verbose,
    )  # fmt: skip


def assemble_member(
    head: Any, front_end: AudioFrontEnd, statistics: Sequence[str] = LOGMEL_STATISTICS
) -> Any:
    """The member that ships: ``LogMelStatistics`` over the front end's windows, then ``head`` (which was
    trained on those ``statistics``)."""
    from training.architectures import build_logmel_statistics

    return build_logmel_statistics(front_end.input_shape, head, statistics=tuple(statistics))


def fit_floor(train: WindowFeatures) -> Any:
    """The issue's floor: a logistic regression over standardised per-band mean, spread and change.

    ``train`` holds only those statistics (``WindowFeatures.columns(FLOOR_STATISTICS, ...)``). Returns a
    fitted scikit-learn pipeline; ``predict_proba(x)[:, 1]`` is P(fake) per window.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(train.x, train.labels, logisticregression__sample_weight=balanced_window_weights(train))
    return model


def train_statistics_member(
    data: DataDirs,
    out_dir: str | Path,
    *,
    front_end: AudioFrontEnd = AudioFrontEnd(),
    hidden: int = DEFAULT_HIDDEN,
    copies: int = 1,
    processing: Processing = DEFAULT_PROCESSING,
    config: FitConfig = FitConfig(epochs=60, batch_size=128, learning_rate=3e-3, patience=8),
    holdout_families: Sequence[str] = (),
    name: str = "audio_logmel_stats",
    pack_name: str = "deepscan-default",
    version: str | None = None,
    cache_dir: Path | None = None,
    verbose: int = 1,
) -> Manifest:
    """Train a ``logmel_stats`` member on the clips of ``data`` (one dataset folder or several) and add it
    to the pack in ``out_dir``, then refit the pack's audio fusion (``fit_audio_fusion``).

    The split is speaker-disjoint; ``holdout_families`` stay out of training and validation. Training
    windows are the clips as they are plus ``copies`` processed copies of each; validation windows are
    the clips as they are. Returns the pack's new manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _audio_pack_with(out_dir, name, front_end)  # refuses windows the pack cannot fuse, before training
    splits = _audio_splits(data, holdout_families)
    train = window_features(splits["train"], front_end, copies=copies, processing=processing,
                            seed=config.seed, cache_dir=cache_dir)  # fmt: skip
    val = window_features(splits["val"], front_end, seed=config.seed, cache_dir=cache_dir)
    checkpoints = out_dir / "checkpoints"
    head, state = fit_head(train, val, checkpoints, name, hidden=hidden, config=config, verbose=verbose)
    assembled = checkpoints / f"{name}.assembled.keras"
    assemble_member(head, front_end).save(assembled)
    file = f"{name}.keras"
    _save_inference_copy(assembled, out_dir / file)
    spec = MemberSpec(name=name, kind="audio", file=file, input_size=front_end.input_shape, architecture=ARCHITECTURE,
                      metrics={"val_auc": state["best_auc"], "best_epoch": state["best_epoch"] + 1},
                      front_end=front_end)  # fmt: skip
    previous, members, layout = _audio_pack_with(out_dir, name, front_end)
    base = _base_manifest(previous, pack_name, version, [spec])
    write_manifest(out_dir, replace(base, members=(*members, spec), audio=layout))
    recipe = {"hidden": hidden, "copies": copies, "processing": asdict(processing), "train_windows": len(train.labels),
              "val_windows": len(val.labels)}  # fmt: skip
    (out_dir / f"{name}.report.json").write_text(
        json.dumps({"state": state, "config": config.__dict__, "recipe": recipe}, indent=2)
    )
    return fit_audio_fusion(data, out_dir, holdout_families=holdout_families, config=config)
