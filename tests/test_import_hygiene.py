"""Import hygiene: importing our modules has no side effects, and the layers keep their rules.

The dependency rules, read from every module's imports (function-level ones included):
- `core` imports nothing of the project outside `core` but `errors` (our exceptions, which
  import nothing of the project), and no driver;
- `adapters` import only `core`, `config`, `errors`, `redaction` and each other;
- only `adapters` and the composition module `services` import redis, sqlalchemy, kombu or
  psycopg2 (so nothing else can catch a driver's exception either);
- the CLI, the Celery tasks and the Python API reach adapters, scan and actions only through
  the service (`maintenance.service`), never directly nor through the composition module.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import pytest

import maintenance

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "maintenance"
COMPOSITION_ROOTS = {"maintenance.worker"}  # the `celery -A` entry module
DRIVERS = ("redis", "sqlalchemy", "kombu", "psycopg2")
OPTIONAL_DJANGO = "maintenance.contrib.django."  # its package module imports no Django

# Runs in a fresh interpreter. Third-party packages are imported first, so that what is recorded
# is what *our* modules do at import time: sockets opened, files opened other than code, the
# environment read from our own code, and logging configured.
PROBE = r"""
import importlib, json, logging, os, sys, sysconfig

for name in ("celery", "kombu", "redis", "sqlalchemy", "structlog", "orjson", "psycopg2"):
    importlib.import_module(name)
import structlog

events, env_reads = [], []
CODE = (".py", ".pyc", ".so", ".pth", ".typed")
STDLIB = sysconfig.get_paths()["stdlib"]

def ours(depth):
    # Whether the nearest caller outside the standard library (and this probe) is ours.
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith((STDLIB, "<frozen", "<string>"))):
            return "/maintenance/" in name and f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return False

def audit(event, args):
    if event.startswith("socket."):
        events.append(f"{event} {args!r}"[:200])
    elif event == "open" and isinstance(args[0], str) and not args[0].endswith(CODE):
        if (where := ours(1)) and not os.path.isdir(args[0]):
            events.append(f"open {args[0]} from {where}")

class Recorder(type(os.environ)):
    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

    def _note(self, key):
        if where := ours(2):
            env_reads.append(f"{key} from {where}")

old = os.environ
os.environ = Recorder(old._data, old.encodekey, old.decodekey, old.encodevalue,
                      old.decodevalue)
handlers_before = list(logging.getLogger().handlers)
sys.addaudithook(audit)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps({
    "events": events,
    "env_reads": env_reads,
    "handlers_added": len(logging.getLogger().handlers) - len(handlers_before),
    "structlog_configured": structlog.is_configured(),
    "modules": sorted(sys.modules),
}))
"""


class ProbeResult(TypedDict):
    """What the probe prints: side effects of importing the modules, and what got imported."""

    events: list[str]
    env_reads: list[str]
    handlers_added: int
    structlog_configured: bool
    modules: list[str]


def our_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(maintenance.__path__, "maintenance.")]
    if importlib.util.find_spec("django") is None:  # the [django] extra's modules need Django
        names = [name for name in names if not name.startswith(OPTIONAL_DJANGO)]
    return sorted(set(names) - COMPOSITION_ROOTS)


def probe(modules: list[str], env: dict[str, str] | None = None) -> ProbeResult:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=None if env is None else {**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    result: ProbeResult = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_module_list_is_complete() -> None:
    """The probe walks the real package: core, adapters, CLI and services are all in it."""
    names = our_modules()
    for expected in (
        "maintenance.core.diff",
        "maintenance.adapters.redis_reader",
        "maintenance.cli.main",
        "maintenance.services",
        "maintenance.config",
    ):
        assert expected in names
    assert "maintenance.worker" not in names


def test_importing_has_no_side_effects() -> None:
    """Importing every maintenance module opens no socket or file, reads no env, logs nothing."""
    result = probe(our_modules())
    assert result["events"] == []
    assert result["env_reads"] == []
    assert result["handlers_added"] == 0
    assert result["structlog_configured"] is False


def test_the_probe_sees_side_effects() -> None:
    """The probe itself works: the worker entry module, which reads its config at import, is
    caught."""
    result = probe(
        ["maintenance.worker"],
        {"MAINTENANCE_CONFIG": str(ROOT / "config" / "maintenance.example.toml")},
    )
    assert any("MAINTENANCE_CONFIG" in read for read in result["env_reads"])


def test_core_imports_no_driver() -> None:
    """maintenance.core is pure: importing all of it pulls in no Redis, SQL or Celery code."""
    core = [name for name in our_modules() if name.startswith("maintenance.core")]
    assert "maintenance.core.diff" in core
    code = (
        "import importlib, json, sys\n"
        f"for name in {core!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    drivers = {"redis", "sqlalchemy", "celery", "kombu", "psycopg2"}
    assert sorted(name for name in loaded if name.split(".")[0] in drivers) == []


def test_package_import_is_lazy() -> None:
    """`import maintenance` alone loads neither Celery nor SQLAlchemy."""
    code = "import json, sys, maintenance; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    assert "celery" not in loaded and "sqlalchemy" not in loaded


# -- dependency rules -------------------------------------------------------------------------
def imports_of(source: str) -> Iterator[str]:
    """Every module a source imports, at any depth of the file (lazy imports count too)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def violations(module: str, imported: list[str]) -> list[str]:
    """The dependency rules broken by `module` importing `imported`."""
    ours = [name for name in imported if _within(name, "maintenance")]
    found: list[str] = []
    if _within(module, "maintenance.core"):
        allowed_in_core = ("maintenance.core", "maintenance.errors")
        found += [f"core imports {name}" for name in ours if not _within(name, *allowed_in_core)]
    if module == "maintenance.errors":
        found += [f"errors imports {name}" for name in ours]
    if _within(module, "maintenance.adapters"):
        allowed = (
            "maintenance.core",
            "maintenance.config",
            "maintenance.errors",
            "maintenance.redaction",
            "maintenance.adapters",
        )
        found += [f"an adapter imports {name}" for name in ours if not _within(name, *allowed)]
    if not _within(module, "maintenance.adapters", "maintenance.services"):
        found += [
            f"driver {name} imported outside the adapters"
            for name in imported
            if _within(name, *DRIVERS)
        ]
    if _within(module, "maintenance.cli", "maintenance.tasks", "maintenance.api"):
        hidden = (
            "maintenance.adapters",
            "maintenance.scan",
            "maintenance.actions",
            "maintenance.services",
        )
        found += [f"{name} reached around the service" for name in ours if _within(name, *hidden)]
    return sorted(set(found))


def module_sources() -> Iterator[tuple[str, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path.read_text()


def test_every_module_keeps_the_dependency_rules() -> None:
    """No module of the package breaks a layer's rule."""
    broken = {
        name: found
        for name, source in module_sources()
        if (found := violations(name, list(imports_of(source))))
    }
    assert broken == {}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "maintenance.core.plan",
            "from maintenance.config import Settings",
            "core imports maintenance.config",
        ),
        ("maintenance.core.diff", "import redis", "driver redis imported outside the adapters"),
        (
            "maintenance.errors",
            "from maintenance.redaction import redact_url",
            "errors imports maintenance.redaction",
        ),
        (
            "maintenance.adapters.quarantine",
            "from maintenance.actions.apply import Applier",
            "an adapter imports maintenance.actions.apply",
        ),
        (
            "maintenance.actions.run",
            "def f():\n    from redis.exceptions import LockError",
            "driver redis.exceptions imported outside the adapters",
        ),
        (
            "maintenance.cli.commands",
            "from maintenance.services import open_adapters",
            "maintenance.services reached around the service",
        ),
        (
            "maintenance.tasks",
            "from maintenance.adapters import workers",
            "maintenance.adapters reached around the service",
        ),
        (
            "maintenance.api",
            "import maintenance.scan.reconciler",
            "maintenance.scan.reconciler reached around the service",
        ),
    ],
)
def test_the_rules_catch_a_violation(module: str, source: str, expected: str) -> None:
    """Each rule fires on a module that breaks it (the check above is not vacuous)."""
    assert expected in violations(module, list(imports_of(source)))


def test_the_composition_module_may_open_connections() -> None:
    """`services` builds the adapters, so it alone besides them imports a driver."""
    assert violations("maintenance.services", ["redis", "maintenance.adapters.workers"]) == []
