"""The dependency rules of the house, checked on the source.

- ``pipeline/`` is pure inference: it never imports the distributed side (celery, boto3, redis, kombu,
  sqlalchemy, ``workers``, ``db``) nor ``training``.
- ``training/`` is pure compute too: it may use ``pipeline``, never the distributed side.
- No import cycle between the project's modules (``python -m tests.imports`` lists any; this runs the same
  check).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imports import import_cycles, project_imports

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTED = ("celery", "boto3", "botocore", "redis", "kombu", "sqlalchemy", "workers", "db")
FORBIDDEN = {"pipeline": (*DISTRIBUTED, "training"), "training": DISTRIBUTED}


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / package).rglob("*.py")
        if p.stem != "__init__"
    )


def test_there_are_modules_to_check() -> None:
    assert {"pipeline.media", "pipeline.faces", "pipeline.analyze", "pipeline.pack"} <= set(
        _modules("pipeline")
    )
    assert {"training.recipes", "training.architectures", "training.evaluate"} <= set(_modules("training"))


@pytest.mark.parametrize(
    "path",
    sorted(p for package in FORBIDDEN for p in (ROOT / package).rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_forbidden_import_statements(path: Path) -> None:
    forbidden = set(FORBIDDEN[path.relative_to(ROOT).parts[0]])
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & forbidden, f"{path.name} imports {sorted(imported & forbidden)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_loads_nothing_forbidden(package: str) -> None:
    forbidden = FORBIDDEN[package]
    code = (
        "import sys\n"
        f"for m in {_modules(package)!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
        cwd=ROOT,
    )
    assert out.stdout.strip() == "", f"{package} pulled in: {out.stdout.strip()}"


def test_the_project_has_no_import_cycle() -> None:
    graph = project_imports(ROOT)
    assert "workers.tasks" in graph and "workers.producer" in graph
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_the_command_line_check_agrees() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.imports"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no import cycle" in out.stdout
