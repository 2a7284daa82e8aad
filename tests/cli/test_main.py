"""The command group itself: help and examples, version, typos, option prefixes, completion,
and the same commands under Celery's own CLI (`celery -A app maintenance …`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.cli.base import expand_prefixes
from maintenance.cli.main import COMMANDS, cli, package_version
from tests.conftest import ROOT, run_cli, write_config
from tests.servers import free_port


def celery_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RESULT_BACKEND_URL")}
    return subprocess.run(
        [sys.executable, "-m", "celery", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_examples(name: str) -> None:
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: task-cleanup {name}" in result.stdout
    assert (
        "Example" in result.stdout and f"task-cleanup {name}" in result.stdout.split("Example")[1]
    )


def test_version_and_group_help_need_no_config() -> None:
    version = run_cli("--version", env={"MAINTENANCE_CONFIG": "/nonexistent.toml"})
    assert version.returncode == 0
    assert version.stdout.strip() == f"task-cleanup {package_version()}"
    assert package_version() != "unknown"  # installed: the version comes from the metadata
    helped = run_cli("--help", env={"MAINTENANCE_CONFIG": "/nonexistent.toml"})
    assert helped.returncode == 0 and "Exit codes:" in helped.stdout


def test_a_typo_suggests_the_command_and_exits_2() -> None:
    result = run_cli("chek")
    assert result.returncode == 2
    assert "No such command 'chek'" in result.stderr
    assert "Did you mean" in result.stderr and "check" in result.stderr
    option = run_cli("check", "--jsn")
    assert option.returncode == 2 and "Did you mean '--json'?" in option.stderr


def test_unique_prefixes_of_long_options_still_work() -> None:
    """argparse took `--dry` for `--dry-run`: cron lines written for it must keep working."""
    longs = ["--dry-run", "--json", "--max-orphans", "--max-orphan-ratio"]
    assert expand_prefixes(["--dry", "--js"], longs) == ["--dry-run", "--json"]
    assert expand_prefixes(["--max-orphans=3"], longs) == ["--max-orphans=3"]
    assert expand_prefixes(["--max-orphan-r=0.5"], longs) == ["--max-orphan-ratio=0.5"]
    assert expand_prefixes(["--max"], longs) == ["--max"]  # ambiguous: click reports it
    assert expand_prefixes(["--", "--dry"], longs) == ["--", "--dry"]


def test_restore_needs_ids_or_all_but_not_both() -> None:
    neither = run_cli("restore")
    both = run_cli("restore", "--all", "--task-id", "x")
    for result in (neither, both):
        assert result.returncode == 2
        assert "either --task-id" in result.stderr


def test_completion_scripts() -> None:
    bash = run_cli("completion", "bash")
    assert bash.returncode == 0 and "_TASK_CLEANUP_COMPLETE=bash_complete" in bash.stdout
    fish = run_cli("completion", "fish")
    assert fish.returncode == 0 and "complete --no-files --command task-cleanup" in fish.stdout
    # the script really completes: click answers the completion request itself
    env = {
        **os.environ,
        "_TASK_CLEANUP_COMPLETE": "bash_complete",
        "COMP_WORDS": "task-cleanup ch",
        "COMP_CWORD": "1",
    }
    answer = subprocess.run(
        [
            sys.executable,
            "-c",
            "from maintenance.cli.main import cli; cli(prog_name='task-cleanup')",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert "plain,check" in answer.stdout.splitlines()


def test_every_command_is_listed_and_loads_under_its_own_name() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name


def test_check_imports_only_what_a_check_needs() -> None:
    """Commands load when asked for: a check does not import the monitor, the cleanup run or
    the config wizard (most of a small check's wall time was imports)."""
    probe = (
        "import sys; from maintenance.cli.main import main; "
        "code = main(['check', '--help']); "
        "print(sorted(m for m in sys.modules if m.startswith('maintenance.cli.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().splitlines()[-1]
    assert "maintenance.cli.commands" in loaded
    for module in ("monitor", "cleanup_commands", "config_commands", "queue_commands"):
        assert f"maintenance.cli.{module}" not in loaded


def test_celery_maintenance_check_reads_the_broker_of_the_app(
    tmp_path: Path, redis_url: str, database_url: str, engine: sa.Engine
) -> None:
    """The config's broker is a dead port; `-A` names the demo app, whose broker is the real
    Redis: the check finds the planted orphan there, with check's exit code."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = write_config(tmp_path / "maintenance.toml", dead, database_url)
    live, gone = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(sa.insert(tasks), [dict(id=live, status="pending", updated_at=utcnow())])
    app = Celery("producer", broker=redis_url, set_as_current=False)
    for row_id in (live, gone):
        app.send_task("demo.process_video", args=[row_id], queue="video_processing")
    app.close()
    demo = {"DEMO_BROKER_URL": redis_url, "DEMO_RESULT_URL": redis_url}

    through_app = celery_cli(
        "-A", "examples.demo.app", "maintenance", "--config", str(config),
        "check", "--json", "--no-workers", env=demo,
    )  # fmt: skip
    assert through_app.returncode == 1, through_app.stderr
    report = json.loads(through_app.stdout)
    assert report["counts"]["orphan"] == 1
    assert [f["db_id"] for f in report["findings"]] == [gone]

    without_app = celery_cli(
        "maintenance", "--config", str(config), "check", "--no-workers", env=demo
    )
    assert without_app.returncode == 3, without_app.stderr  # the config's dead broker
    assert "celery maintenance:" in without_app.stderr and "Traceback" not in without_app.stderr

    missing = celery_cli("maintenance", "--config", str(tmp_path / "none.toml"), "check", env={})
    assert missing.returncode == 2 and "configuration error" in missing.stderr
