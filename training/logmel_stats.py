"""The ``logmel_stats`` audio member: log-mel statistics (``pipeline.layers.LogMelStatistics``) and a small head.

The statistics have no weights, so they are computed once per window (and per processed copy of each
training clip) and only the head is trained; the member that ships is the layer with the head on top, and
it runs through the pack's ordinary audio path (``ModelPack.score_audio_windows``, front end ``logmel``).

Processed copies are the spoof corpus's class-neutral degradations (``training.spoofs.process``: level,
coloured noise, band limit, an mp3 or opus round trip, gain), drawn per clip and copy from a seed and
applied alike to real and fake clips, so that no channel property can carry the label.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd, member_inputs, split_windows
from pipeline.errors import DeepscanError
from pipeline.layers import LOGMEL_STATISTICS, LogMelStatistics
from pipeline.media import load_audio
from pipeline.pack import Manifest, MemberSpec, write_manifest
from training.audio_datasets import AudioItem
from training.fitting import FitConfig, fit_member, make_array_sequence
from training.recipes import (
    DataDirs,
    _audio_pack_with,
    _audio_splits,
    _base_manifest,
    _save_inference_copy,
    fit_audio_fusion,
)
from training.spoofs import DEFAULT_PROCESSING, Processing, process

logger = logging.getLogger(__name__)

ARCHITECTURE = "logmel_stats"
FEATURE_BATCH = 256  # windows per call of the statistics layer
DEFAULT_HIDDEN = 32  # units of the head's hidden layer (0: a logistic regression)
# the floor the issue sets (#16): a logistic regression over these statistics alone
FLOOR_STATISTICS = ("mean", "std", "delta")


@dataclass(frozen=True)
class WindowFeatures:
    """Statistics of every window of a list of clips, with what each window came from.

    ``x`` (N, D) float32; ``labels``, ``clips`` (index into ``items``) and ``copies`` (0: the clip as it
    is, k > 0: its k-th processed copy) are (N,) int64.
    """

    x: np.ndarray
    labels: np.ndarray
    clips: np.ndarray
    copies: np.ndarray
    items: list[AudioItem]

    def subset(self, mask: np.ndarray) -> WindowFeatures:
        """The windows where ``mask`` (N,) is true; ``items`` (and the clip indices) are kept as they are."""
        return WindowFeatures(
            self.x[mask], self.labels[mask], self.clips[mask], self.copies[mask], self.items
        )

    def of_clips(self, keep: set[int], *, copies: bool = True) -> WindowFeatures:
        """The windows of the clips with index in ``keep``; without ``copies`` only the clips as they are."""
        mask = np.isin(self.clips, sorted(keep))
        return self.subset(mask if copies else mask & (self.copies == 0))

    def columns(self, statistics: Sequence[str], bands: int) -> WindowFeatures:
        """Only the blocks of ``statistics`` (in ``LOGMEL_STATISTICS`` order, ``bands`` mel bands)."""
        return replace(self, x=self.x[:, statistic_columns(statistics, bands)])


def statistic_columns(statistics: Sequence[str], bands: int) -> np.ndarray:
    """Column indices of ``statistics`` in the output of ``LogMelStatistics()`` (all statistics)."""
    starts, start = {}, 0
    for name in LOGMEL_STATISTICS:
        size = bands - 1 if name == "band_delta" else bands
        starts[name] = (start, start + size)
        start += size
    return np.concatenate([np.arange(*starts[name]) for name in LOGMEL_STATISTICS if name in statistics])


def _copy_rng(seed: int, path: Path, copy: int) -> np.random.Generator:
    """The random choices of one processed copy: they depend on the seed, the file name and the copy only."""
    digest = hashlib.sha1(f"{path.name}\x1f{copy}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest[:8], "little")]))


def _cache_key(items: Sequence[AudioItem], front_end: AudioFrontEnd, copies: int, processing: Processing,
               seed: int, statistics: bool) -> str:  # fmt: skip
    digest = hashlib.sha1()
    for item in items:
        stat = item.path.stat()
        digest.update(f"{item.path.resolve()}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\n".encode())
    contents = LOGMEL_STATISTICS if statistics else "inputs"
    digest.update(json.dumps([front_end.to_dict(), copies, repr(processing), seed, contents]).encode())
    return digest.hexdigest()[:20]


def window_features(
    items: Sequence[AudioItem],
    front_end: AudioFrontEnd,
    *,
    copies: int = 0,
    processing: Processing = DEFAULT_PROCESSING,
    seed: int = 0,
    cache_dir: Path | None = None,
    statistics: bool = True,
) -> WindowFeatures:
    """Every statistic of ``LogMelStatistics`` for every window of every usable clip and of ``copies``
    processed copies of each; without ``statistics``, the windows' member inputs themselves (the front
    end's spectrograms or waveforms, (N, F, T, 1)), for a network trained on them.

    A clip that cannot be cut into windows (too short, silent, undecodable) is logged and left out: it
    has no windows. With ``cache_dir`` the result is stored there under a key of the clips (path, size,
    modification time), the front end, the copies, the processing, the seed and what is kept, and read
    back next time.
    """
    if statistics and front_end.feature != "logmel":
        raise ValueError(f"log-mel statistics need the logmel front end, not {front_end.feature!r}")
    items = list(items)
    key = _cache_key(items, front_end, copies, processing, seed, statistics)
    prefix = "logmel_stats" if statistics else f"{front_end.feature}_inputs"
    cache = cache_dir / f"{prefix}-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            return WindowFeatures(stored["x"], stored["labels"], stored["clips"], stored["copies"], items)
    layer = LogMelStatistics() if statistics else None
    pending: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    labels: list[int] = []
    clips: list[int] = []
    copy_of: list[int] = []

    def flush() -> None:
        if pending:
            batch = np.concatenate(pending)
            for i in range(0, len(batch), FEATURE_BATCH):
                chunk = batch[i : i + FEATURE_BATCH]
                parts.append(np.asarray(layer(chunk), dtype=np.float32) if layer else chunk)
            pending.clear()

    for index, item in enumerate(items):
        try:
            signal = load_audio(item.path, sample_rate_hz=front_end.sample_rate_hz)
            split_windows(signal, front_end)  # raises for a clip without a score, before any copy is made
        except DeepscanError as e:
            logger.warning("skipping %s: %s", item.path, e.reason)
            continue
        for copy in range(copies + 1):
            version = signal if copy == 0 else process(
                signal, _copy_rng(seed, item.path, copy), processing,
                sample_rate_hz=front_end.sample_rate_hz,
            )  # fmt: skip
            try:
                windows = split_windows(version, front_end)
            except DeepscanError as e:  # processing rarely makes a clip silent; the copy is left out
                logger.warning("skipping copy %d of %s: %s", copy, item.path, e.reason)
                continue
            pending.append(member_inputs(windows, front_end))
            labels += [item.label] * len(windows)
            clips += [index] * len(windows)
            copy_of += [copy] * len(windows)
        if sum(len(p) for p in pending) >= FEATURE_BATCH:
            flush()
    flush()
    if not parts:
        raise DeepscanError("no usable audio clips")
    features = WindowFeatures(
        np.concatenate(parts), np.asarray(labels, np.int64), np.asarray(clips, np.int64),
        np.asarray(copy_of, np.int64), items,
    )  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, x=features.x, labels=features.labels, clips=features.clips, copies=features.copies)
        tmp.replace(cache)
    return features


def balanced_window_weights(features: WindowFeatures) -> np.ndarray:
    """(N,) float32 weights: each (dataset, class) group weighs the same within its class, and the two
    classes weigh half each; mean weight 1.

    A dataset with many windows (a long real corpus, a page with many fakes) would otherwise decide what
    "real" or "fake" means.
    """
    groups = [
        (features.items[c].source, int(label))
        for c, label in zip(features.clips, features.labels, strict=True)
    ]
    counts = Counter(groups)
    per_class = {label: len({g for g in counts if g[1] == label}) for label in (0, 1)}
    raw = np.array([1.0 / (counts[g] * per_class[g[1]]) for g in groups], dtype=np.float64)
    return (raw * len(raw) / raw.sum()).astype(np.float32)


def balanced_batches(train: WindowFeatures, config: FitConfig) -> Any:
    """The windows of ``train`` as shuffled training batches weighted by ``balanced_window_weights``."""
    weights = balanced_window_weights(train)
    order = np.random.default_rng(config.seed).permutation(len(train.labels))
    return make_array_sequence(
        train.x[order], train.labels[order].astype(np.float32)[:, None], weights[order],
        batch_size=config.batch_size, seed=config.seed,
    )  # fmt: skip


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
