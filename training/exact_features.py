"""Switch a pack's members to exact features (``pipeline.layers``, the ``exact`` option): the saved
configuration of every layer that has the option turns it on, the weights stay as trained, and the
manifest's checksums follow the files. The members' scores move a little; refit the stacking after it
(``deepscan train image ... --fuse-only``).

    python -m training.exact_features --pack DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from pipeline.pack import read_manifest, write_manifest

CONFIG_ENTRY = "config.json"  # the model's architecture inside a .keras archive
EXACT_LAYERS = ("SpectrumProfile", "ChromaCooccurrence")


def _turn_on(config: Any) -> int:
    """Set ``exact`` on every layer of ``EXACT_LAYERS`` in a Keras config tree; how many were off."""
    changed = 0
    if isinstance(config, dict):
        if config.get("class_name") in EXACT_LAYERS and not config["config"].get("exact", False):
            config["config"]["exact"] = True
            changed += 1
        changed += sum(_turn_on(value) for value in config.values())
    elif isinstance(config, list):
        changed += sum(_turn_on(value) for value in config)
    return changed


def make_member_exact(path: Path) -> int:
    """Rewrite one ``.keras`` archive with its layers exact (entries, order and dates kept); how many
    layers changed (0: the file is left as it was)."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    config = json.loads(dict((info.filename, data) for info, data in entries)[CONFIG_ENTRY])
    changed = _turn_on(config)
    if changed:  # written beside it and moved over it: a crash leaves the member as it was, not half of it
        partial = path.with_name(path.name + ".partial")
        with zipfile.ZipFile(partial, "w") as archive:
            for info, data in entries:
                archive.writestr(info, json.dumps(config).encode() if info.filename == CONFIG_ENTRY else data)
        os.replace(partial, path)
    return changed


def make_pack_exact(pack_dir: str | Path) -> dict[str, int]:
    """Every member of the pack in ``pack_dir`` made exact; the layers changed per member."""
    pack_dir = Path(pack_dir)
    manifest = read_manifest(pack_dir)
    changed = {member.name: make_member_exact(pack_dir / member.file) for member in manifest.members}
    write_manifest(pack_dir, manifest)  # the checksums of the files as they are now
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(make_pack_exact(args.pack)) + "\n")


if __name__ == "__main__":
    main()
