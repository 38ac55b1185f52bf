"""Audio windows as training reads them: every window of every clip, and of processed copies of each.

Processed copies are the spoof corpus's class-neutral degradations (``training.spoofs.process``: level,
coloured noise, band limit, an mp3 or opus round trip, gain), drawn per clip and copy from a seed and
applied alike to real and fake clips, so that no channel property can carry the label. The windows are
the statistics of ``LogMelStatistics`` (for the ``logmel_stats`` head) or the member inputs themselves
(for a network), and training batches weigh each dataset alike within its class.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd, member_inputs, split_windows
from pipeline.errors import DeepscanError
from pipeline.layers import LOGMEL_STATISTICS, LogMelStatistics
from pipeline.media import load_audio
from training.audio_datasets import AudioItem
from training.fitting import FitConfig, make_array_sequence
from training.spoofs import DEFAULT_PROCESSING, Processing, process

logger = logging.getLogger(__name__)

FEATURE_BATCH = 256  # windows per call of the statistics layer


@dataclass(frozen=True)
class WindowFeatures:
    """Every window of a list of clips, with what each window came from.

    ``x`` float32: (N, D) statistics, or the member inputs themselves ((N, F, T, 1) spectrograms, (N, S, 1)
    waveforms); ``labels``, ``clips`` (index into ``items``) and ``copies`` (0: the clip as it is, k > 0:
    its k-th processed copy) are (N,) int64.
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
        digest.update(
            f"{item.path.resolve()}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\x1f{item.label}\n".encode()
        )
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
