"""Model packs: a directory with ``manifest.json`` and one ``.keras`` file per member.

The manifest names the pack and its version, lists the members (``name``, ``kind`` image|audio, ``file``,
``input_size`` [h, w] (audio: the spectrogram's [F, T]), ``architecture``, ``sha256``; audio members may name
their own ``front_end``, image members their ``crop_geometry``: margin or tight), and carries the aggregation,
the thresholds and the audio window layout (``audio``: the front end of members that name none). Every file's
sha256 is checked at load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import AudioFrontEnd, member_inputs
from pipeline.batching import predict_padded
from pipeline.ensemble import Aggregation
from pipeline.errors import ModelPackError
from pipeline.faces import CROP_GEOMETRIES, to_model_input
from pipeline.media import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA = 1
DEFAULT_THRESHOLDS = {"image": 0.5, "audio": 0.5, "video_vote": 0.5}
PREDICT_BATCH = 64  # a power of two (see ModelPack._predict)
# TensorFlow traces a member's forward pass for the first two batch shapes it sees, then generalises the
# batch dimension (Keras' reduce_retracing): batches of 1 and 2 leave nothing to trace later (measured: the
# next sizes up to 64 cost their compute only). JAX compiles every shape: each padded size is warmed.
TENSORFLOW_WARM_UP_BATCHES = (1, 2)
# Where every member with backend-dependent layers (``pipeline.layers.backend_dependent_layers``) was
# trained and calibrated: packs up to 0.10.0, on this project's CPUs.
TRAINED_ON_BACKEND = "tensorflow"


@dataclass(frozen=True)
class MemberSpec:
    name: str
    kind: str  # "image" | "audio"
    file: str
    input_size: tuple[int, int]
    architecture: str
    sha256: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    front_end: AudioFrontEnd | None = None  # audio members only; None: the manifest's ``audio``
    crop_geometry: str = "margin"  # image members: what they see of a face crop (pipeline.faces.face_region)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemberSpec:
        try:
            kind = str(data["kind"])
            if kind not in ("image", "audio"):
                raise ModelPackError(f"member {data.get('name')!r} has unknown kind {kind!r}")
            h, w = (int(v) for v in data["input_size"])
            front_end = data.get("front_end")
            crop_geometry = str(data.get("crop_geometry", "margin"))
            if crop_geometry not in CROP_GEOMETRIES:
                raise ModelPackError(
                    f"member {data.get('name')!r} has unknown crop_geometry {crop_geometry!r}"
                )
            return cls(
                name=str(data["name"]),
                kind=kind,
                file=str(data["file"]),
                input_size=(h, w),
                architecture=str(data.get("architecture", data["name"])),
                sha256=str(data.get("sha256", "")),
                metrics=dict(data.get("metrics", {})),
                front_end=AudioFrontEnd.from_dict(front_end) if front_end else None,
                crop_geometry=crop_geometry,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelPackError(f"malformed member entry {dict(data)!r}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "file": self.file,
            "input_size": list(self.input_size),
            "architecture": self.architecture,
            "sha256": self.sha256,
            "metrics": dict(self.metrics),
            **({"front_end": self.front_end.to_dict()} if self.front_end else {}),
            **({"crop_geometry": self.crop_geometry} if self.crop_geometry != "margin" else {}),
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    members: tuple[MemberSpec, ...]
    aggregation: Aggregation = Aggregation()
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    audio: AudioFrontEnd | None = None
    # window scores of the audio members -> P(fake); one-member stacking is Platt calibration
    audio_aggregation: Aggregation = Aggregation()
    info: Mapping[str, Any] = field(default_factory=dict)  # free-form: training data, dates, figures

    @property
    def image_members(self) -> tuple[MemberSpec, ...]:
        return tuple(m for m in self.members if m.kind == "image")

    @property
    def audio_members(self) -> tuple[MemberSpec, ...]:
        return tuple(m for m in self.members if m.kind == "audio")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def front_end_of(self, member: MemberSpec) -> AudioFrontEnd:
        front_end = member.front_end or self.audio
        if front_end is None:
            raise ModelPackError(f"audio member {member.name!r} has no front end and the manifest names none")
        return front_end

    def check_audio_layout(self) -> None:
        """Every audio member must cut the same windows: their scores are combined window by window."""
        for member in self.audio_members:
            front_end = self.front_end_of(member)
            if self.audio is not None and not front_end.same_windows(self.audio):
                raise ModelPackError(
                    f"audio member {member.name!r} cuts windows of {front_end.window_s} s every "
                    f"{front_end.hop_s} s at {front_end.sample_rate_hz} Hz; the pack's layout is "
                    f"{self.audio.window_s} s every {self.audio.hop_s} s at {self.audio.sample_rate_hz} Hz"
                )
            if member.input_size != front_end.input_shape:
                raise ModelPackError(
                    f"audio member {member.name!r} takes {member.input_size} but its front end makes "
                    f"{front_end.input_shape}"
                )

    def threshold(self, kind: str) -> float:
        return float(self.thresholds.get(kind, DEFAULT_THRESHOLDS.get(kind, 0.5)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        try:
            members = tuple(MemberSpec.from_dict(m) for m in data["members"])
            if not members:
                raise ModelPackError("the manifest lists no members")
            audio = data.get("audio")
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                members=members,
                aggregation=Aggregation.from_dict(data.get("aggregation", {})),
                thresholds={
                    **DEFAULT_THRESHOLDS,
                    **{k: float(v) for k, v in data.get("thresholds", {}).items()},
                },
                audio=AudioFrontEnd.from_dict(audio) if audio else None,
                audio_aggregation=Aggregation.from_dict(data.get("audio_aggregation", {})),
                info=dict(data.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelPackError(f"malformed manifest: {e}") from e
        manifest.check_audio_layout()
        return manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "version": self.version,
            "members": [m.to_dict() for m in self.members],
            "aggregation": self.aggregation.to_dict(),
            "thresholds": dict(self.thresholds),
            "audio": self.audio.to_dict() if self.audio else None,
            "audio_aggregation": self.audio_aggregation.to_dict(),
            "info": dict(self.info),
        }


def read_archive(path: str | Path) -> list[tuple[Any, bytes]]:
    """The entries of a ``.keras`` archive (a zip): (ZipInfo, bytes) in order."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def write_archive(path: str | Path, entries: Sequence[tuple[Any, bytes]]) -> None:
    """Write ``entries`` (from ``read_archive``, names, order, dates and compression kept) as the archive at
    ``path``: beside it first, then moved over it, so that a crash leaves the member whole."""
    import os
    import zipfile

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    os.replace(partial, path)


def store_float16(path: str | Path) -> None:
    """Rewrite a ``.keras`` file with its float32 weights stored as float16, halving its size.

    The file stays a plain ``.keras`` archive: Keras casts each stored array to the variable's dtype when it
    loads, so the model still computes in float32 on any backend. Only the stored precision changes (about
    three significant digits, far below what moves a score). Other members of the archive are copied as they are.
    """
    import io

    entries = read_archive(path)
    write_archive(
        path,
        [
            (info, _float16_h5(io.BytesIO(data)) if info.filename.endswith(".h5") else data)
            for info, data in entries
        ],
    )


def compact_pack(directory: str | Path) -> Manifest:
    """Store every member of a pack as float16 (``store_float16``) and update the manifest's checksums.

    Figures in the manifest were measured before the rounding; ``deepscan evaluate`` re-measures them.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    for member in manifest.members:
        store_float16(directory / member.file)
    return write_manifest(directory, manifest)  # fills in the new checksums


def _float16_h5(source: Any) -> bytes:
    import io

    import h5py

    out = io.BytesIO()
    with h5py.File(source, "r") as fin, h5py.File(out, "w") as fout:
        fout.attrs.update(fin.attrs)

        def copy(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                array = item[()]
                target = fout.create_dataset(
                    name, data=array.astype(np.float16) if array.dtype == np.float32 else array
                )
            else:
                target = fout.require_group(name)
            target.attrs.update(item.attrs)

        fin.visititems(copy)
    return out.getvalue()


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as e:
        raise ModelPackError(f"no {MANIFEST_FILE} in {directory}") from e
    except json.JSONDecodeError as e:
        raise ModelPackError(f"{path} is not valid JSON: {e}") from e


def write_manifest(directory: str | Path, manifest: Manifest) -> Manifest:
    """Fill in each member's sha256 from its file and write ``manifest.json``. Returns the new manifest."""
    directory = Path(directory)
    members = tuple(
        MemberSpec(**{**m.__dict__, "sha256": sha256_file(directory / m.file)}) for m in manifest.members
    )
    manifest = Manifest(**{**manifest.__dict__, "members": members})
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


class ModelPack:
    """A loaded pack: the manifest plus one Keras model per member. Load once per process."""

    def __init__(self, directory: Path, manifest: Manifest, models: Mapping[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.models = dict(models)

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> ModelPack:
        import keras

        from pipeline.layers import backend_dependent_layers  # registers the layers the files refer to

        directory = Path(directory)
        manifest = read_manifest(directory)
        models = {}
        for member in manifest.members:
            path = directory / member.file
            if not path.is_file():
                raise ModelPackError(f"member file missing: {path}")
            if verify and member.sha256 and sha256_file(path) != member.sha256:
                raise ModelPackError(
                    f"checksum mismatch for {path}: the file is not the one the manifest lists"
                )
            try:
                models[member.name] = keras.saving.load_model(path, compile=False)
            except Exception as e:  # keras raises many types for a bad archive; all mean the same here
                raise ModelPackError(f"could not load {path}: {e}") from e
        if keras.backend.backend() != TRAINED_ON_BACKEND:
            inexact = {
                name: layers for name, model in models.items() if (layers := backend_dependent_layers(model))
            }
            if inexact:
                logger.warning(
                    "%s: on %s, members %s score differently from %s, where the pack was trained and "
                    "calibrated (their layers %s predate exact features)",
                    manifest.label,
                    keras.backend.backend(),
                    ", ".join(inexact),
                    TRAINED_ON_BACKEND,
                    ", ".join(sorted({layer for layers in inexact.values() for layer in layers})),
                )
        return cls(directory, manifest, models)

    def _predict(self, name: str, batch: np.ndarray) -> np.ndarray:
        """P(fake) for every row of ``batch``, in chunks of ``PREDICT_BATCH`` padded to a power of two
        (``predict_padded``: a bounded number of shapes to trace per member)."""
        return predict_padded(self.models[name], batch, PREDICT_BATCH).reshape(-1)

    def warm_up(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Run every member on blank inputs of ``batch_sizes`` (default: what the backend needs traced), so
        that the first object a process scores costs what the hundredth does."""
        import keras

        if batch_sizes is None:
            every_padded_size = tuple(1 << k for k in range(PREDICT_BATCH.bit_length()))
            tensorflow = keras.backend.backend() == "tensorflow"
            batch_sizes = TENSORFLOW_WARM_UP_BATCHES if tensorflow else every_padded_size
        blank_face = np.full((64, 64, 3), 128, dtype=np.uint8)
        noise = np.random.default_rng(0)
        for n in batch_sizes:
            self.score_faces([blank_face] * n)
            for member in self.manifest.audio_members:
                front_end = self.manifest.front_end_of(member)
                windows = noise.normal(0.0, 1e-3, size=(n, front_end.window_samples)).astype(np.float32)
                self._predict(member.name, member_inputs(windows, front_end))

    def score_faces(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Score uint8 RGB face crops with every image member.

        Returns float64 (N, M): P(fake) per crop and image member, in manifest order. Crops are batched
        across frames and files by the caller; each member cuts them to its crop geometry and resizes them
        to its own input size.
        """
        members = self.manifest.image_members
        scores = np.zeros((len(crops), len(members)), dtype=np.float64)
        if not crops:
            return scores
        inputs: dict[tuple[tuple[int, int], str], np.ndarray] = {}
        for j, member in enumerate(members):
            view = (member.input_size, member.crop_geometry)
            if view not in inputs:
                inputs[view] = to_model_input(list(crops), *view)
            scores[:, j] = self._predict(member.name, inputs[view])
        return scores

    def score_audio_windows(self, windows: np.ndarray) -> np.ndarray:
        """Score raw audio windows (N, window_samples) with every audio member.

        Each member gets the spectrogram of its own front end (computed once per distinct front end).
        Returns float64 (N, M_audio), P(fake) per window and audio member, in manifest order.
        """
        members = self.manifest.audio_members
        scores = np.zeros((len(windows), len(members)), dtype=np.float64)
        if not len(windows):
            return scores
        features: dict[AudioFrontEnd, np.ndarray] = {}
        for j, member in enumerate(members):
            front_end = self.manifest.front_end_of(member)
            if front_end not in features:
                features[front_end] = member_inputs(windows, front_end)
            scores[:, j] = self._predict(member.name, features[front_end])
        return scores
