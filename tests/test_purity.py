"""``pipeline/`` is pure compute: importing any of its modules must not pull in the distributed side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("celery", "boto3", "botocore", "redis", "kombu", "sqlalchemy", "workers", "db")
PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
MODULES = sorted(f"pipeline.{p.stem}" for p in PIPELINE.glob("*.py") if p.stem != "__init__")


def test_there_are_modules_to_check() -> None:
    assert {"pipeline.media", "pipeline.faces", "pipeline.analyze", "pipeline.pack"} <= set(MODULES)


@pytest.mark.parametrize("path", sorted(PIPELINE.glob("*.py")), ids=lambda p: p.name)
def test_no_forbidden_import_statements(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & set(FORBIDDEN), f"{path.name} imports {sorted(imported & set(FORBIDDEN))}"


def test_importing_every_module_loads_nothing_forbidden() -> None:
    code = (
        "import sys\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
        cwd=PIPELINE.parent,
    )
    assert out.stdout.strip() == "", f"pipeline pulled in: {out.stdout.strip()}"
