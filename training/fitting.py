"""Training of pack members: labelled datasets, a stable split, class-neutral augmentation, resumable runs.

Datasets are folders in which every file sits below a directory named ``real`` or ``fake`` (any case);
the path above that directory names the *source* (``faceswap_lfw``, ``gan_ffhq_tpdne``, ...), so figures
can be reported per source. The split is a hash of each file's path relative to the dataset root: stable
across machines and runs, and independent of the order files are listed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.faces import to_model_input, with_margin
from training.metrics import roc_auc
from training.pseudofakes import PseudoFakes, pseudo_fake

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train / val (early stopping, aggregation) / test (reported)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a"})
CROP_SIDE_PX = 256  # side of the stored face crops in ../shared/data/faces
_LABELS = {"real": 0, "fake": 1}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = fake
    source: str
    key: str  # the split's hash input: the path relative to the dataset root, or the file's cluster
    geometry: str = "margin"  # how the crop was cut: "margin" (our recipe) or "tight" (the face box alone)


def find_labelled_files(root: str | Path, suffixes: frozenset[str]) -> list[Sample]:
    """Every file with one of ``suffixes`` under a ``real``/``fake`` directory of ``root``, sorted."""
    root = Path(root)
    samples = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        rel = path.relative_to(root)
        label_index = next((i for i, part in enumerate(rel.parts[:-1]) if part.lower() in _LABELS), None)
        if label_index is None:
            continue
        source = "/".join(rel.parts[:label_index]) or root.name
        samples.append(Sample(path, _LABELS[rel.parts[label_index].lower()], source, rel.as_posix()))
    return samples


def split_of(key: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Deterministic split for a sample key: its sha1 as a number in [0, 1) against cumulative fractions."""
    u = int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / float(1 << 48)
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]


def split_samples(
    samples: Sequence[Sample], fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS
) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in samples:
        out[split_of(sample.key, fractions)].append(sample)
    return out


def balanced_weights(samples: Sequence[Sample]) -> np.ndarray:
    """Per-sample weights giving every (source, label) group the same total weight; mean weight 1."""
    groups = Counter((s.source, s.label) for s in samples)
    raw = np.array([1.0 / groups[(s.source, s.label)] for s in samples], dtype=np.float64)
    return (raw * len(samples) / raw.sum()).astype(np.float32)


def load_crops(samples: Sequence[Sample], side_px: int = CROP_SIDE_PX) -> np.ndarray:
    """Read face crops as uint8 RGB margin crops (N, side, side, 3), the form the pipeline cuts from frames.

    Tight crops get a mirrored margin (``with_margin``); crops of another size are resized (INTER_AREA down).
    """
    out = np.empty((len(samples), side_px, side_px, 3), dtype=np.uint8)
    for i, sample in enumerate(samples):
        bgr = cv2.imread(str(sample.path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"unreadable training image {sample.path}")
        if sample.geometry == "tight":
            bgr = with_margin(bgr)
        if bgr.shape[:2] != (side_px, side_px):
            interpolation = cv2.INTER_AREA if bgr.shape[0] >= side_px else cv2.INTER_CUBIC
            bgr = cv2.resize(bgr, (side_px, side_px), interpolation=interpolation)
        out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


@dataclass(frozen=True)
class Augmentation:
    """Random treatment applied identically to both classes, so that it cannot carry the label."""

    flip: bool = True
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)
    downscale_probability: float = 0.4
    downscale_range: tuple[float, float] = (0.3, 0.9)  # faces in videos are often far below 256 px
    shift_probability: float = 0.5
    max_shift: float = 0.05  # of the crop side: margins differ a little between detectors


def augment(crop: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Augment one uint8 RGB crop; returns a uint8 crop of the same shape."""
    side = crop.shape[0]
    out = crop
    if aug.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < aug.shift_probability:
        dx, dy = (rng.uniform(-aug.max_shift, aug.max_shift, size=2) * side).round().astype(int)
        matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (side, side), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < aug.downscale_probability:
        small = max(16, round(side * rng.uniform(*aug.downscale_range)))
        out = cv2.resize(np.ascontiguousarray(out), (small, small), interpolation=cv2.INTER_AREA)
        out = cv2.resize(out, (side, side), interpolation=cv2.INTER_LINEAR)
    if rng.random() < aug.jpeg_probability:
        quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(out), [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out = np.asarray(decoded)
    return np.ascontiguousarray(out)


def make_face_sequence(
    crops: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    input_size: tuple[int, int],
    batch_size: int,
    aug: Augmentation | None,
    seed: int,
    geometry: str = "margin",
    pseudo_fakes: PseudoFakes | None = None,
) -> Any:
    """A ``keras.utils.PyDataset`` yielding (x, y, sample_weight) batches, reshuffled every epoch.

    ``crops`` are margin crops; the member sees the region of its ``geometry``. With ``pseudo_fakes`` a real
    face of a batch is, with its probability, also in the batch as a pseudo-fake (label 1, weight 1; the
    donor of a local edit is another real face of the training set), augmented like every other crop.
    """
    import keras

    reals = np.flatnonzero(labels == 0)

    class FaceSequence(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng(seed).permutation(len(labels))

        def __len__(self) -> int:
            return int(np.ceil(len(labels) / batch_size))

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            idx = self.order[index * batch_size : (index + 1) * batch_size]
            rng = np.random.default_rng((seed, self.epoch, index))
            batch, y, w = list(crops[idx]), labels[idx].astype(np.float32), weights[idx]
            if pseudo_fakes is not None and len(reals):
                chosen = [i for i in idx if labels[i] == 0 and rng.random() < pseudo_fakes.probability]
                donors = rng.choice(reals, size=len(chosen))
                batch += [
                    pseudo_fake(crops[i], crops[d], rng, pseudo_fakes)
                    for i, d in zip(chosen, donors, strict=True)
                ]
                y = np.concatenate([y, np.ones(len(chosen), np.float32)])
                w = np.concatenate([w, np.ones(len(chosen), np.float32)])
            if aug is not None:
                batch = [augment(crop, rng, aug) for crop in batch]
            return to_model_input(batch, input_size, geometry), y[:, None], w

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng((seed, self.epoch)).permutation(len(labels))

    return FaceSequence()


def make_array_sequence(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, batch_size: int, seed: int) -> Any:
    """A ``keras.utils.PyDataset`` of in-memory (x, y, sample_weight) batches, reshuffled every epoch."""
    import keras

    class ArraySequence(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.arange(len(y))

        def __len__(self) -> int:
            return int(np.ceil(len(y) / batch_size))

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            idx = self.order[index * batch_size : (index + 1) * batch_size]
            return x[idx], y[idx], w[idx]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng((seed, self.epoch)).permutation(len(y))

    return ArraySequence()


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5  # epochs without a better validation AUC before stopping
    seed: int = 0
    # training batches whose statistics replace the batch-norm moving averages before each validation
    # (see recalibrate_batch_norm); 0 keeps the moving averages as training left them
    bn_recalibration_batches: int = 20


class ResumableCheckpoint:
    """Saves the last and the best model plus a small state file each epoch; early-stops on val AUC.

    A run restarted with the same checkpoint directory resumes at the epoch after the last one saved,
    with the early-stopping counter it had.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.last_path = directory / f"{name}.last.keras"
        self.best_path = directory / f"{name}.best.keras"
        self.state_path = directory / f"{name}.state.json"

    def load_state(self) -> dict[str, Any]:
        if self.state_path.is_file() and self.last_path.is_file():
            return dict(json.loads(self.state_path.read_text()))
        return {"epoch": -1, "best_auc": -1.0, "best_epoch": -1, "history": []}

    def save(self, model: Any, state: dict[str, Any], improved: bool) -> None:
        model.save(self.last_path)
        if improved:
            model.save(self.best_path)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)


def _batch_norm_layers(layer: Any) -> list[Any]:
    """Every BatchNormalization layer in ``layer``, including those of nested models (a backbone)."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [bn for sub in getattr(layer, "layers", []) for bn in _batch_norm_layers(sub)]


def recalibrate_batch_norm(model: Any, batches: Iterable[np.ndarray]) -> int:
    """Replace the moving mean and variance of every batch-norm layer by their average over ``batches``.

    Batch norm normalises with the statistics of the batch in training and with moving averages
    (momentum 0.99) at inference. A backbone trained from scratch for a few dozen steps an epoch changes
    faster than those averages follow, so at inference it normalises with statistics of weights it no
    longer has. Xception over colour spectra, after 5 epochs, scored the validation split at 0.70 AUC
    with every output in 0.669-0.678, and at 0.79 with batch statistics. This is "precise BN" (Wu and
    Johnson, 2021, "Rethinking 'Batch' in BatchNorm"): forward passes in training mode with momentum
    k / (k + 1) for the k-th batch, which makes each moving statistic the plain mean over the batches.
    No weight changes.
    Returns the number of batches used.
    """
    layers = _batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for batch in batches:
            for layer in layers:
                layer.momentum = used / (used + 1)
            model(batch, training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used


def _training_inputs(train_data: Any, count: int) -> Iterator[np.ndarray]:
    """The inputs of the first ``count`` batches of an indexable dataset (a PyDataset); none otherwise."""
    if not (hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__")):
        return
    for index in range(min(count, len(train_data))):
        yield train_data[index][0]


def fit_member(
    build: Callable[[], Any],
    name: str,
    train_data: Any,
    val_inputs: np.ndarray,
    val_labels: np.ndarray,
    checkpoint_dir: Path,
    config: FitConfig,
    *,
    verbose: int = 1,
) -> tuple[Any, dict[str, Any]]:
    """Train one member with AdamW and binary cross-entropy, keeping the epoch with the best val AUC.

    ``train_data`` is a PyDataset (or anything ``model.fit`` takes); validation inputs are preprocessed
    arrays. After each epoch the batch-norm statistics are recalibrated on training batches (when
    ``train_data`` can be indexed) before the model is validated and saved. Returns the best model and
    the run state (history, best epoch and AUC).
    """
    import keras

    checkpoint = ResumableCheckpoint(checkpoint_dir, name)
    state = checkpoint.load_state()
    if state["epoch"] >= 0:
        model = keras.saving.load_model(checkpoint.last_path)
        logger.info(
            "resuming %s after epoch %d (best val AUC %.4f)", name, state["epoch"] + 1, state["best_auc"]
        )
    else:
        keras.utils.set_random_seed(config.seed)
        model = build()
        model.compile(
            optimizer=keras.optimizers.AdamW(
                learning_rate=config.learning_rate, weight_decay=config.weight_decay
            ),
            loss="binary_crossentropy",
        )

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            recalibrate_batch_norm(self.model, _training_inputs(train_data, config.bn_recalibration_batches))
            scores = np.asarray(self.model.predict(val_inputs, batch_size=64, verbose=0)).reshape(-1)
            auc = roc_auc(val_labels, scores)
            improved = auc > state["best_auc"] or not checkpoint.best_path.is_file()
            if improved:
                state.update(best_auc=auc, best_epoch=epoch)
            state["epoch"] = epoch
            state["history"].append(
                {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), "val_auc": auc}
            )
            checkpoint.save(self.model, state, improved)
            logger.info(
                "%s epoch %d: loss %.4f val AUC %.4f%s",
                name,
                epoch + 1,
                (logs or {}).get("loss", np.nan),
                auc,
                " (best)" if improved else "",
            )
            if epoch - state["best_epoch"] >= config.patience:
                self.model.stop_training = True

    remaining = config.epochs - (state["epoch"] + 1)
    stopped = state["epoch"] >= 0 and state["epoch"] - state["best_epoch"] >= config.patience
    if remaining > 0 and not stopped:
        model.fit(
            train_data,
            initial_epoch=state["epoch"] + 1,
            epochs=config.epochs,
            callbacks=[EpochEnd(), keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)],
            verbose=verbose,
        )
    best = keras.saving.load_model(checkpoint.best_path)
    return best, state
