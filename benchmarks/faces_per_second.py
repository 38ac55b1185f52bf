"""Faces per second through each image member and the whole ensemble, by batch size.

What ``ModelPack.score_faces`` costs once the pack is warmed: resizing the crops to each member's input
and the padded forward passes, best of ``--repeats``. ``--classic`` measures the four classic backbones
(Xception, InceptionV3, ResNet50, DenseNet121) at their native input sizes instead of the bundled pack:
untrained, since the cost does not depend on the weights. That is the configuration of the GPU target
(2,000 faces a second as an ensemble); run it with ``KERAS_BACKEND=jax`` where TensorFlow is absent.

    python benchmarks/faces_per_second.py [--pack DIR | --classic] [--batches 1,4,16,64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
CROP_PX = 224  # a face crop as the detector cuts it from a 720p frame


def classic_pack(directory: Path) -> Path:
    from pipeline.pack import Manifest, MemberSpec, write_manifest
    from training.architectures import CLASSIC_ARCHITECTURES, _applications, build_image_member

    members = []
    for architecture in CLASSIC_ARCHITECTURES:
        side = _applications()[architecture].native_input_px
        build_image_member(architecture, (side, side)).save(directory / f"{architecture}.keras")
        members.append(MemberSpec(architecture, "image", f"{architecture}.keras", (side, side), architecture))
    write_manifest(directory, Manifest(name="classic-native", version="0", members=tuple(members)))
    return directory


def faces_per_second(score: Any, crops: list[Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        score(crops)
        best = min(best, time.perf_counter() - start)
    return len(crops) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=REPO / "pipeline" / "weights" / "default")
    parser.add_argument("--classic", action="store_true", help="the four classic members at native size")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import keras
    import numpy as np

    from pipeline.pack import ModelPack

    with tempfile.TemporaryDirectory() as tmp:
        pack = ModelPack.load(classic_pack(Path(tmp)) if args.classic else args.pack, verify=not args.classic)
        pack.warm_up()
        rng = np.random.default_rng(0)
        batches = [int(b) for b in args.batches.split(",")]
        crops = [rng.integers(0, 256, (CROP_PX, CROP_PX, 3), dtype=np.uint8) for _ in range(max(batches))]
        rows = []
        for member in pack.manifest.image_members:
            only = ModelPack(pack.directory, replace(pack.manifest, members=(member,)), pack.models)
            rows.append(
                {
                    "member": f"{member.name} ({member.input_size[0]} px)",
                    **{
                        str(n): round(faces_per_second(only.score_faces, crops[:n], args.repeats), 1)
                        for n in batches
                    },
                }
            )
        rows.append(
            {
                "member": "ensemble",
                **{
                    str(n): round(faces_per_second(pack.score_faces, crops[:n], args.repeats), 1)
                    for n in batches
                },
            }
        )
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "backend": keras.backend.backend(),
        "pack": "classic members at native size (untrained)" if args.classic else str(args.pack),
        "faces_per_second_by_batch": rows,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
