"""A temporary directory that cannot take the scan's spill files: a clear error, exit 3.

A big scan spills its findings (core/finding_store.py) and its task-id hashes
(scan/seen_hashes.py) to the temporary directory. When that is full, the run must stop with
an error that says where and what to do, not an internal error with a traceback. A full disk is
made real with RLIMIT_FSIZE in a child process: every write past the limit fails with EFBIG,
as writes to a full disk fail with ENOSPC (Python ignores the SIGXFSZ that comes with it).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import redis

from maintenance.core.finding_store import Findings
from maintenance.core.models import Finding, FindingKind, Location, Reason, Where
from maintenance.errors import ScratchUnavailable
from tests.conftest import ROOT

STALE_KEYS = 25_000  # beyond the store's 20,000 findings in memory: a batch goes to the file


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _finding(i: int) -> Finding:
    where = Location(Where.QUEUE, queue="q", key="q", index=i)
    return Finding(FindingKind.ORPHAN, Reason.ROW_MISSING, f"t{i}", "demo.t", None, where)


def test_a_findings_store_that_cannot_make_its_file_says_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "gone"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    store = Findings(memory_limit=4, batch_size=2)
    with pytest.raises(ScratchUnavailable) as raised:
        for i in range(10):
            store.append(_finding(i))
    assert str(missing) in str(raised.value) and "TMPDIR" in str(raised.value)
    store.close()


def test_the_hashes_file_on_a_full_disk_is_a_scratch_error() -> None:
    script = textwrap.dedent(
        """
        from maintenance.errors import ScratchUnavailable
        from maintenance.scan.seen_hashes import SpillingHashes
        seen = SpillingHashes(memory_limit=10, flush_every=1000, cache_kib=64)
        try:
            for start in range(0, 200_000, 1000):
                seen.add_chunk(list(range(start * 7919, start * 7919 + 1000)))
        except ScratchUnavailable as exc:
            print("scratch:", exc)
        else:
            print("no error")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        preexec_fn=lambda: _limit_file_size(0),
    )
    assert done.stdout.startswith("scratch: cannot use the temporary directory"), done
    assert "Traceback" not in done.stderr


def test_check_with_a_full_temporary_directory_exits_3_with_the_reason(
    config_file: Path, redis_client: redis.Redis
) -> None:
    value = json.dumps({"status": "SUCCESS", "date_done": "2020-01-01T00:00:00"})
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(STALE_KEYS):
            pipe.set(f"celery-task-meta-stale-{i}", value)  # no TTL: a stale result
        pipe.execute()
    command = [sys.executable, "-m", "maintenance.cli.main", "--config", str(config_file)]
    done = subprocess.run(
        [*command, "check", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        preexec_fn=lambda: _limit_file_size(256 * 1024),  # the log file stays far below
    )
    assert done.returncode == 3, done
    assert "cannot use the temporary directory" in done.stderr
    assert "No verdict" in done.stderr and "Traceback" not in done.stderr
    # Without the limit the same check completes and reports every stale key.
    report = json.loads(
        subprocess.run(
            [*command, "check", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120
        ).stdout
    )
    assert report["counts"]["stale_result"] == STALE_KEYS
