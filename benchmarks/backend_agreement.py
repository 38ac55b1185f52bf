"""Whether a pack scores the same under two Keras backends: TensorFlow here, JAX on a GPU machine.

Scores fixed inputs with every member under this process's backend (``KERAS_BACKEND``) and saves the
scores; given the file another backend saved, prints each member's largest difference in P(fake).
Inputs: the first ``--faces`` crops of each face set in ``../shared/data`` (where present) and as many
random crops, and sine-and-noise audio windows.

    python benchmarks/backend_agreement.py --save tf.npz
    KERAS_BACKEND=jax python benchmarks/backend_agreement.py --save jax.npz --compare tf.npz
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FACE_SETS = ("faces/faceswap_lfw", "faces/gan_ffhq_tpdne", "faces2/dfdc", "faces2/stylegan")
SAMPLE_RATE_HZ = 16_000


def face_crops(data: Path, per_set: int) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(per_set)]
    for name in FACE_SETS:
        for path in sorted((data / name).rglob("*.jpg"))[:per_set]:
            crops.append(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    return crops


def audio_windows(samples: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(samples) / SAMPLE_RATE_HZ
    tones = [0.1 * np.sin(2 * np.pi * f * t) + rng.normal(0, 0.01, samples) for f in (110, 220, 440, 880)]
    return np.stack(tones).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=REPO / "pipeline" / "weights" / "default")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--faces", type=int, default=16, help="crops per face set, and random crops")
    parser.add_argument("--save", type=Path, required=True)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()

    import keras

    from pipeline.pack import ModelPack

    pack = ModelPack.load(args.pack)
    scores = {"faces": pack.score_faces(face_crops(args.data, args.faces))}
    if pack.manifest.audio_members:
        front_end = pack.manifest.front_end_of(pack.manifest.audio_members[0])
        scores["audio"] = pack.score_audio_windows(audio_windows(front_end.window_samples))
    np.savez(args.save, **scores)
    print(f"{pack.manifest.label} on {keras.backend.backend()}: {len(scores['faces'])} faces -> {args.save}")
    if args.compare is None:
        return
    other = np.load(args.compare)
    members = {"faces": pack.manifest.image_members, "audio": pack.manifest.audio_members}
    for kind, matrix in scores.items():
        gaps = np.abs(matrix - other[kind]).max(axis=0)
        for member, gap in zip(members[kind], gaps, strict=True):
            print(f"{member.name}: largest difference in P(fake) {gap:.2g}")


if __name__ == "__main__":
    main()
