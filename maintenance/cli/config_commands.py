"""`task-cleanup config init|show|check|example`: a user's first hour, from nothing to a config
that `check` can trust. `init` and `check` read the app's database and Redis, never write them.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click

from maintenance.cli.base import Command, Group, finish, json_option, state
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.render import print_json
from maintenance.config import Settings, example_config, settings_from_mapping
from maintenance.config_sources import effective_config
from maintenance.core.config_check import CheckReport
from maintenance.core.config_text import ConfigProposal, render_config
from maintenance.core.proposals import StatusPick, parse_status_answer
from maintenance.errors import ConfigError
from maintenance.redaction import redact_url
from maintenance.service import ChooseStatuses, ConfigAdvisor, StatusQuestion

DEFAULT_OUTPUT = "config/maintenance.toml"
COMMAND_LINE = "command line"


@click.group(
    "config",
    cls=Group,
    short_help="write, show and check the config file",
)
def config_group() -> None:
    """Write a config for your app (init), print the documented example (example), show the
    effective config and where each value came from (show), and check it against the live
    database and Redis (check).

    \b
    Examples:
      task-cleanup config init --database-url postgresql://app@db/app --broker-url redis://r:6379/0
      task-cleanup config check
      task-cleanup config show --json
      task-cleanup config example > config/maintenance.toml
    """


@click.command("example", cls=Command, short_help="print the example config")
def example() -> None:
    """Print the example config shipped with the package: every key, its default and its unit.

    \b
    Examples:
      task-cleanup config example > config/maintenance.toml
      task-cleanup config example | less
    """
    click.echo(example_config(), nl=False)
    finish(ExitCode.OK)


@click.command(
    "init",
    cls=Command,
    short_help="write a config for your app by looking at its database and Redis",
    epilog="Exit 0 written, 1 not written (answered no), 2 usage error (no terminal to ask on: "
    "use --yes; the file exists: use --force), 3 Redis or the database unavailable.",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="the app's database, a SQLAlchemy URL (default: $DATABASE_URL)",
)
@click.option(
    "--broker-url",
    metavar="URL",
    help="the app's Redis broker (default: $REDIS_URL; under `celery -A app`: the app's)",
)
@click.option(
    "--output",
    "-o",
    metavar="PATH",
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="where to write the config",
)
@click.option("--force", is_flag=True, help="overwrite the output file if it exists")
@click.option("--yes", "-y", is_flag=True, help="do not ask: take every proposal (for scripts)")
@click.option(
    "--active-statuses",
    metavar="A,B,C",
    help="the statuses that mean 'still to run' (default: asked, or proposed with --yes)",
)
@click.option("--task-table", metavar="[SCHEMA.]TABLE", help="the task table, if not the guess")
@click.option(
    "--sample",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    metavar="N",
    help="messages read per queue (LRANGE 0..N-1) to find the bound arguments",
)
def init(
    database_url: str | None,
    broker_url: str | None,
    output: str,
    force: bool,
    yes: bool,
    active_statuses: str | None,
    task_table: str | None,
    sample: int,
) -> None:
    """Write a commented config for your app, guessed by looking at it (read-only): the task
    table and its columns (and a sub-task table, by its foreign key), the statuses present (you
    say which mean "still to run"), the queues in Redis, and per task name the argument that
    carries a row id, from a bounded sample of the queued messages. Every guess is marked
    `# proposed: <why>`. The URLs are not written: the file points at $REDIS_URL and
    $DATABASE_URL, so no password ends up in it.

    \b
    Examples:
      task-cleanup config init --database-url postgresql://app@db/app --broker-url redis://r:6379/0
      DATABASE_URL=... REDIS_URL=... task-cleanup config init --yes --output m.toml
      task-cleanup config init --active-statuses pending,running --task-table app.jobs
      celery -A proj maintenance config init --database-url postgresql://app@db/app
    """
    if not yes and not sys.stdin.isatty():
        raise ConfigError(
            "config init asks questions, but stdin is not a terminal: use --yes in scripts "
            "(with --active-statuses to choose the statuses yourself)",
            key="--yes",
            source=COMMAND_LINE,
        )
    path = Path(output)
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists: use --force to overwrite it, or --output another path",
            key="--output",
            source=COMMAND_LINE,
        )
    settings = _survey_settings(database_url, broker_url)
    with ConfigAdvisor.open(settings, sample=sample) as advisor:
        proposal = advisor.propose(_status_chooser(yes, active_statuses), task_table=task_table)
    text = render_config(proposal, dt.date.today().isoformat())
    settings_from_mapping(tomllib.loads(text), env={}, source=str(path))  # it must load as is
    if not yes:
        click.echo(text)
        if not click.confirm(f"Write it to {path}?", default=False):
            click.echo("not written", err=True)
            finish(ExitCode.FINDINGS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(_summary(proposal, path), err=yes)
    finish(ExitCode.OK)


def _survey_settings(database_url: str | None, broker_url: str | None) -> Settings:
    """Settings with just the two URLs (and, under `celery -A app`, the app's broker and
    transport options); a URL given on the command line wins over the app's."""
    st = state()
    database = database_url or st.env.get("DATABASE_URL")
    broker = broker_url or st.env.get("REDIS_URL")
    if not database:
        raise ConfigError(
            "no database URL: give --database-url or set $DATABASE_URL",
            key="--database-url",
            source=COMMAND_LINE,
        )
    if not broker and st.adapt is None:
        raise ConfigError(
            "no broker URL: give --broker-url or set $REDIS_URL",
            key="--broker-url",
            source=COMMAND_LINE,
        )
    raw = {"database": {"url": database}, "redis": {"broker_url": broker or ""}}
    settings = settings_from_mapping(raw, env={}, source=COMMAND_LINE)
    if st.adapt is not None:
        settings = st.adapt(settings)
        if broker_url:
            settings = replace(settings, redis=replace(settings.redis, broker_url=broker_url))
    return settings


def _status_chooser(yes: bool, given: str | None) -> ChooseStatuses:
    def choose(question: StatusQuestion) -> StatusPick:
        if given is not None:
            values = parse_status_answer(given, question.present)
            if not values:
                raise ConfigError(
                    "must name at least one status", key="--active-statuses", source=COMMAND_LINE
                )
            return StatusPick(values, "given with --active-statuses", proposed=False)
        if yes:
            return question.proposal
        return _ask_statuses(question)

    return choose


def _ask_statuses(question: StatusQuestion) -> StatusPick:
    where = " and ".join(question.columns)
    if not question.present:
        click.echo(f"No rows in {where} yet: no status to choose from.", err=True)
    else:
        read = "" if question.complete else " (in the newest rows)"
        click.echo(f"Statuses present in {where}{read}:", err=True)
        for index, status in enumerate(question.present, 1):
            seen = [column for column, values in question.columns.items() if status in values]
            click.echo(f"  {index}. {status}  ({', '.join(seen)})", err=True)
    click.echo(
        "Which mean 'still to run'? A row in any other status is finished, and its messages "
        "are orphans. When unsure, include it: that can only hide an orphan.",
        err=True,
    )
    default = ",".join(question.proposal.values)
    answer = click.prompt("Still to run (names or numbers, comma-separated)", default=default)
    values = parse_status_answer(answer, question.present)
    if not values:
        raise ConfigError("must name at least one status", key="active_statuses")
    return StatusPick(values, "chosen at the prompt", proposed=False)


def _summary(p: ConfigProposal, path: Path) -> str:
    sub = p.sub.table.qualified if p.sub else "none"
    config = "" if path == Path(DEFAULT_OUTPUT) else f"--config {path} "
    return (
        f"wrote {path}: task table {p.task.table.qualified}, sub-task table {sub}, "
        f"{len(p.bindings)} binding(s), {len(p.unmanaged)} unmanaged task name(s), queues "
        f"{', '.join(p.queues)}.\nNext: export DATABASE_URL and REDIS_URL (unless `celery -A "
        f"app` gives the broker), then `task-cleanup {config}config check`."
    )


@click.command(
    "show",
    cls=Command,
    short_help="the effective config, secrets redacted, and where each value came from",
)
@json_option("print it as JSON")
def show(as_json: bool) -> None:
    """Show the effective config, secrets redacted, with where each value came from: the file,
    an environment variable ($REDIS_URL, $RESULT_BACKEND_URL, $DATABASE_URL; the file itself
    from --config or $MAINTENANCE_CONFIG), the Celery app (under `celery -A app maintenance`),
    or the default.

    \b
    Examples:
      task-cleanup config show
      task-cleanup --config m.toml config show --json | jq '.values[0]'
      celery -A proj maintenance config show
    """
    st = state()
    st.settings()  # validates the file (exit 2) exactly as every command does
    shown = effective_config(st.config_path, st.env, st.adapt, st.load)
    if as_json:
        print_json(shown.as_dict())
        finish(ExitCode.OK)
    click.echo(f"config file: {shown.path} (from {shown.path_from})")
    rows = [(v.key, _short(v.value), v.source) for v in shown.values]
    click.echo(_columns(["key", "value", "source"], rows))
    if shown.bindings:
        click.echo("bindings:")
        click.echo(
            _columns(
                ["task", "id_from", "kind"],
                [(b["task"], b["id_from"], b["kind"]) for b in shown.bindings],
            )
        )
    else:
        click.echo("bindings: none (every message is unmanaged)")
    finish(ExitCode.OK)


def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns: values and reasons are text to read, not numbers to compare."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, ["-" * w for w in widths] + ["------"], *rows]:
        cells = [f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def _short(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


@click.command(
    "check",
    cls=Command,
    short_help="check the config against the live database and Redis",
    epilog="Exit 0 usable, 1 problems found, 2 config error, 3 Redis or the database unavailable.",
)
@json_option("print the findings as JSON")
@click.option(
    "--sample",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    metavar="N",
    help="messages read per queue to judge the bindings",
)
def check(as_json: bool, sample: int) -> None:
    """Check the config against the live database and Redis, read-only: the tables and columns
    exist with usable types; the configured statuses exist (and none that looks still to run is
    missing); the configured queues exist (and which queues in Redis are not scanned); and, per
    task name in a bounded sample of the queues, whether it is managed, and why or why not.

    \b
    Examples:
      task-cleanup config check
      task-cleanup --config m.toml config check --json | jq .problems
    """
    settings = state().settings()
    with ConfigAdvisor.open(settings, sample=sample) as advisor:
        report = advisor.check()
    if as_json:
        print_json(report.as_dict())
    else:
        click.echo(render_check(report, settings))
    finish(ExitCode.OK if report.usable else ExitCode.FINDINGS)


def render_check(report: CheckReport, settings: Settings) -> str:
    broker, database = redact_url(settings.redis.broker_url), redact_url(settings.database.url)
    out = [f"config {settings.source} against {database} and {broker}"]
    marks = {"problem": "PROBLEM", "warning": "warning", "info": "info"}
    for level in ("problem", "warning", "info"):
        out += [
            f"{marks[level]:<8} {i.key}: {i.message}" for i in report.issues if i.level == level
        ]
    if report.tasks:
        out += ["", "Task names in the queues (sampled):"]
        for t in report.tasks:
            where = f"{', '.join(t.queues)}; {t.sampled} sampled"
            binding = f"binding {t.binding}" if t.binding else "no binding"
            out.append(f"{marks[t.level]:<8} {t.task} ({where}; {binding}): {t.why}")
    else:
        out.append("no message waiting in the queues: the bindings could not be checked")
    problems = sum(i.level == "problem" for i in report.issues) + sum(
        t.level == "problem" for t in report.tasks
    )
    out.append("")
    out.append("usable" if report.usable else f"NOT usable: {problems} problem(s)")
    return "\n".join(out)


for _command in (init, check, show, example):
    config_group.add_command(_command)
