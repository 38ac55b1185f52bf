"""Face datasets for training and evaluation: several folders at once, split by cluster, one crop form.

A dataset is a folder as ``training.fitting`` reads it (files below ``real/`` or ``fake/``; the path above
names the source). Two things differ between the datasets in ``../shared/data`` and are handled here:

- Clusters. DFDC's fakes are made from real clips (``original`` in the folder's ``manifest.csv``): a real
  clip and its fakes show one actor in one scene and must sit on one side of the split. Where a
  ``manifest.csv`` at the folder's root has an ``original`` column, a file's split key is its source and that
  clip, not its path.
- Crop geometry. ``faces/`` and ``faces2/stylegan`` were cut with the project's recipe (the Haar box with a
  1.3x margin); DFDC's crops are the face box alone ("tight"), cut by another detector. Crops are held in the
  pipeline's form, the margin crop that ``square_crop`` makes from a frame: ``training.fitting.load_crops``
  gives a tight crop its margin by mirroring its edges outwards (the context outside the box is unknown). Each member then sees the region of
  its ``crop_geometry`` (``pipeline.faces.face_region``), in training as at inference: a tight member sees a
  DFDC crop exactly as it was cut, and every other face as the box Haar found.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.errors import DeepscanError
from training.fitting import IMAGE_SUFFIXES, Sample, find_labelled_files, split_samples

logger = logging.getLogger(__name__)

MANIFEST_CSV = "manifest.csv"  # optional, at a dataset's root: path,label,...,original (faces2)


def _clusters(root: Path) -> dict[str, str]:
    """File path (relative to ``root``) -> the clip it was made from, from ``root/manifest.csv``; {} if none."""
    table = root / MANIFEST_CSV
    if not table.is_file():
        return {}
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "original" not in rows[0] or "path" not in rows[0]:
        return {}
    return {row["path"]: row["original"] for row in rows if row.get("original")}


def find_face_samples(data: Sequence[str | Path], tight_sources: Collection[str] = ()) -> list[Sample]:
    """Every labelled face crop of the folders in ``data``, with split keys by cluster and crop geometry.

    ``tight_sources`` names the sources whose crops are the face box alone (``dfdc``). Two folders may not
    hold sources of one name: figures are reported per source.
    """
    samples: list[Sample] = []
    owner: dict[str, Path] = {}
    for root in (Path(d) for d in data):
        found = find_labelled_files(root, IMAGE_SUFFIXES)
        if not found:
            raise DeepscanError(f"no images below real/ or fake/ folders in {root}")
        clusters = _clusters(root)
        for source in sorted({s.source for s in found}):
            if owner.setdefault(source, root) != root:
                raise DeepscanError(f"source {source!r} is in both {owner[source]} and {root}: rename one")
        samples += [
            replace(
                s,
                key=f"{s.source}/{clusters[s.key]}" if s.key in clusters else s.key,
                geometry="tight" if s.source in tight_sources else "margin",
            )
            for s in found
        ]
    unknown = set(tight_sources) - set(owner)
    if unknown:
        raise DeepscanError(f"no source named {', '.join(sorted(unknown))} in {', '.join(map(str, data))}")
    return samples


def face_splits(
    data: Sequence[str | Path],
    tight_sources: Collection[str] = (),
    *,
    limit_per_split: int | None = None,
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """The train/val/test split of the faces in ``data`` (clusters whole), optionally a subset per split."""
    splits = split_samples(find_face_samples(data, tight_sources))
    if limit_per_split:
        rng = np.random.default_rng(seed)  # a subset of both classes, for smoke runs and tests
        splits = {
            k: [v[i] for i in sorted(rng.permutation(len(v))[:limit_per_split])] for k, v in splits.items()
        }
    for name, items in splits.items():
        logger.info("%s: %d images (%d fake)", name, len(items), sum(s.label for s in items))
    return splits
