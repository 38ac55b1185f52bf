"""Switch a pack's members to exact features (``pipeline.layers``, the ``exact`` option): the saved
configuration of every layer that has the option turns it on, the weights stay as trained, and the
manifest's checksums follow the files. The members' scores move a little; refit the stacking after it
(``deepscan train image ... --fuse-only``).

    python -m training.exact_features --pack DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.layers import EXACT_OPTION_LAYERS
from pipeline.pack import read_archive, read_manifest, write_archive, write_manifest

CONFIG_ENTRY = "config.json"  # the model's architecture inside a .keras archive
EXACT_LAYERS = tuple(layer.__name__ for layer in EXACT_OPTION_LAYERS)  # as saved configurations name them


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
    entries = read_archive(path)
    config = json.loads(dict((info.filename, data) for info, data in entries)[CONFIG_ENTRY])
    changed = _turn_on(config)
    if changed:
        exact = json.dumps(config).encode()
        write_archive(
            path, [(info, exact if info.filename == CONFIG_ENTRY else data) for info, data in entries]
        )
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
