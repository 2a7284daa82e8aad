"""Import hygiene: importing our modules has no side effects, and the core imports no drivers."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import maintenance

ROOT = Path(__file__).resolve().parent.parent
COMPOSITION_ROOTS = {"maintenance.demo.app", "maintenance.worker"}  # `celery -A` entry modules

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


def our_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(maintenance.__path__, "maintenance.")]
    return sorted(set(names) - COMPOSITION_ROOTS)


def probe(modules: list[str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_module_list_is_complete() -> None:
    """The probe walks the real package: core, adapters, CLI and services are all in it."""
    names = our_modules()
    for expected in ("maintenance.core.diff", "maintenance.adapters.redis_reader",
                     "maintenance.cli.main", "maintenance.services", "maintenance.config"):
        assert expected in names
    assert "maintenance.demo.app" not in names


def test_importing_has_no_side_effects() -> None:
    """Importing every maintenance module opens no socket or file, reads no env, logs nothing."""
    result = probe(our_modules())
    assert result["events"] == []
    assert result["env_reads"] == []
    assert result["handlers_added"] == 0
    assert result["structlog_configured"] is False


def test_the_probe_sees_side_effects() -> None:
    """The probe itself works: the demo app, which reads its env at import, is caught."""
    result = probe(["maintenance.demo.app"])
    assert any("REDIS_URL" in read for read in result["env_reads"])  # type: ignore[union-attr]


def test_core_imports_no_driver() -> None:
    """maintenance.core is pure: importing all of it pulls in no Redis, SQL or Celery code."""
    core = [name for name in our_modules() if name.startswith("maintenance.core")]
    assert "maintenance.core.diff" in core
    code = ("import importlib, json, sys\n"
            f"for name in {core!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    drivers = {"redis", "sqlalchemy", "celery", "kombu", "psycopg2"}
    assert sorted(name for name in loaded if name.split(".")[0] in drivers) == []


def test_package_import_is_lazy() -> None:
    """`import maintenance` alone loads neither Celery nor SQLAlchemy."""
    code = "import json, sys, maintenance; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    loaded = json.loads(done.stdout)
    assert "celery" not in loaded and "sqlalchemy" not in loaded
