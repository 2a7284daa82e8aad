"""deploy/prometheus and deploy/grafana: the rules pass promtool and their own unit tests, and
every query in them names only metrics and labels the exporter really serves."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from maintenance.adapters.history_totals import HistoryView
from maintenance.adapters.run_lock import Holder
from maintenance.core.models import FindingKind, Outcome
from maintenance.core.summary import ScanSummary
from maintenance.monitor.metrics import DEFAULT_METRICS_PORT, SnapshotCollector
from maintenance.monitor.snapshot import QueueDepth, Snapshot
from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
SCRAPE = PROMETHEUS / "scrape.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "task-maintenance.json"
JOB = "task-maintenance"
DATASOURCE_UID = "${datasource}"

# What the exporter serves once every part of a snapshot is known (the names the README lists).
EXPECTED_METRICS = {
    f"task_maintenance_{name}"
    for name in (
        "backend_up",
        "monitor_refresh_timestamp_seconds",
        "broker_visibility_timeout_seconds",
        "queue_messages",
        "unacked_messages",
        "unacked_oldest_age_seconds",
        "workers_online",
        "guard_skips_total",
        "run_lock_held",
        "scan_findings",
        "scan_task_findings",
        "scan_timestamp_seconds",
        "scan_duration_seconds",
        "scan_managed_messages",
        "actions_total",
        "runs_total",
        "run_in_progress",
        "last_run_timestamp_seconds",
        "last_run_duration_seconds",
        "last_run_outcome",
        "last_successful_run_timestamp_seconds",
    )
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
# celery-exporter's series (danihodovic/celery-exporter) a panel may join with, and their labels.
CELERY_TASK_LABELS = {"name", "hostname", "queue_name"}
CELERY_EXPORTER = {
    "celery_queue_length": {"queue_name"},
    "celery_worker_up": {"hostname"},
    "celery_worker_tasks_active": {"hostname"},
    "celery_active_worker_count": {"queue_name"},
    "celery_active_process_count": {"queue_name"},
    **{
        f"celery_task_{event}_total": CELERY_TASK_LABELS
        for event in ("sent", "received", "started", "succeeded", "rejected", "revoked", "retried")
    },
    "celery_task_failed_total": {*CELERY_TASK_LABELS, "exception"},
}
PROMETHEUS_OWN = {"up": set[str]()}  # written by Prometheus for each target, no labels of its own
# Label values a selector may name, per label of ours.
LABEL_VALUES = {
    "kind": {kind.value for kind in FindingKind},
    "outcome": {outcome.value for outcome in Outcome},
    "backend": {"redis", "database"},
}
SEVERITIES = {"critical", "warning", "info"}
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")


# -- what the exporter serves ---------------------------------------------------------------------
def full_snapshot(now: float = 1_700_000_000.0) -> Snapshot:
    """Every part known, so that every metric family has samples."""
    names = ("app.tasks.process_video", "app.tasks.process_segment")
    latest = ScanSummary(
        at=now - 60,
        started_at=now - 95,
        source="monitor",
        counts={kind.value: 2 for kind in FindingKind},
        managed_messages=1200,
        by_task_name={kind.value: {name: 1 for name in names} for kind in FindingKind},
    )
    history = HistoryView(
        recent=(
            {"id": "r3", "outcome": "running", "started_at": now - 30, "finished_at": None},
            {"id": "r2", "outcome": "failed", "started_at": now - 3700, "finished_at": now - 3600},
            {"id": "r1", "outcome": "ok", "started_at": now - 7300, "finished_at": now - 7200},
        ),
        action_totals={"quarantined": 5.0, "revoked_queued": 2.0, "results_deleted": 7.0},
        outcome_totals={o.value: 1 for o in Outcome if o is not Outcome.RUNNING},
        last_ok_at=now - 7200,
    )
    holder = Holder(
        what="cleanup by cli:ops@host",
        host="host",
        pid=4242,
        run_id="r3",
        started_at=now - 30,
        renewed_at=now - 5,
    )
    return Snapshot(
        taken_at=now,
        queues=(QueueDepth("celery", 0, 40), QueueDepth("celery", 3, 2), QueueDepth("video", 0, 7)),
        unacked=3,
        unacked_oldest_age_s=42.0,
        workers=("celery@w1", "celery@w2"),
        workers_checked_at=now - 1,
        latest=latest,
        previous=latest,
        guard_skips={"row_missing": 3, "row_finished": 9},
        lock_holder=holder,
        history=history,
    )


@functools.cache
def served() -> dict[str, frozenset[str]]:
    """Sample name -> the label names its samples carry, from a real scrape's text."""
    collector = SnapshotCollector(visibility_timeout_s=3600)
    collector.update(full_snapshot())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(names) for name, names in labels.items()}


def test_the_full_snapshot_serves_every_metric() -> None:
    """Else the checks below would vouch for fewer names than the exporter can serve."""
    assert set(served()) == EXPECTED_METRICS
    assert served()["task_maintenance_queue_messages"] == {"queue_name", "priority"}
    assert served()["task_maintenance_scan_task_findings"] == {"kind", "name"}


# -- a small PromQL reader ------------------------------------------------------------------------
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}
KEYWORDS |= {"ignoring", "group_left", "group_right"}


@dataclass
class Query:
    metrics: set[str] = field(default_factory=set)
    # (metric or None, label, operator, value) for every label matcher of every selector
    matchers: list[tuple[str | None, str, str, str]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # by / without / on / ignoring labels


def grafana_to_promql(expr: str) -> str:
    """Grafana's range variables as a duration; `$job` and the like only occur in strings."""
    for variable in GRAFANA_RANGES:
        expr = expr.replace(variable, "5m")
    return expr


def read_query(expr: str) -> Query:
    expr = grafana_to_promql(expr)
    query = Query()
    for match in SELECTOR.finditer(expr):
        metric = match.group(1)
        for label, op, value in MATCHER.findall(match.group(2)):
            query.matchers.append((metric, label, op, value))
    bare = SELECTOR.sub(lambda m: m.group(1) or "", expr)
    bare = STRING.sub('""', bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    for group in GROUPING.findall(bare):
        query.grouping.update(name.strip() for name in group.split(",") if name.strip())
    bare = GROUPING.sub(" ", bare)
    for match in IDENT.finditer(bare):
        name = match.group(0)
        if name in KEYWORDS or bare[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function called
        query.metrics.add(name)
    return query


def known_labels(metric: str) -> set[str] | None:
    """The labels a series of `metric` can carry; None for a name nobody serves."""
    for catalogue in (served(), CELERY_EXPORTER, PROMETHEUS_OWN):
        if metric in catalogue:
            return {*catalogue[metric], *TARGET_LABELS}
    return None


def query_problems(expr: str, templated: Iterable[str] = ()) -> list[str]:
    """What in `expr` names a metric or label nobody serves; `templated`: labels a legend or an
    annotation names, which must be labels of the query's metrics."""
    problems = [
        f"{token}: not served by the exporter"
        for token in re.findall(r"task_maintenance_[a-z_]+", expr)
        if token not in served()
    ]
    query = read_query(expr)
    available: set[str] = set(TARGET_LABELS)
    for metric in sorted(query.metrics):
        labels = known_labels(metric)
        if labels is None:
            problems.append(f"{metric}: neither ours, nor celery-exporter's, nor Prometheus's")
        else:
            available |= labels
    for selected, label, op, value in query.matchers:
        labels = known_labels(selected) if selected else available
        if labels is not None and label not in labels:
            problems.append(f"{selected}{{{label}{op}...}}: no such label on {selected}")
        ours = selected is not None and selected in served()
        if ours and label in LABEL_VALUES and "$" not in value and op in ("=", "=~"):
            unknown = set(value.split("|") if op == "=~" else [value]) - LABEL_VALUES[label]
            if unknown:
                problems.append(f'{selected}{{{label}{op}"{value}"}}: no such {label} {unknown}')
    for label in sorted((query.grouping | set(templated)) - available):
        problems.append(f"label {label!r}: on none of the metrics {sorted(query.metrics)}")
    return problems


def test_the_promql_reader() -> None:
    query = read_query(
        'max without (backend) (task_maintenance_backend_up{backend="database"} == 1) unless on '
        "(job, instance) time() - task_maintenance_scan_timestamp_seconds > 26 * 3600"
    )
    assert query.metrics == {
        "task_maintenance_backend_up",
        "task_maintenance_scan_timestamp_seconds",
    }
    assert query.matchers == [("task_maintenance_backend_up", "backend", "=", "database")]
    assert query.grouping == {"backend", "job", "instance"}
    assert read_query('increase(celery_task_failed_total{name=~"a|b"}[$__range])').metrics == {
        "celery_task_failed_total"
    }
    assert query_problems('task_maintenance_queue_messages{queue="celery"}') != []
    assert query_problems('task_maintenance_scan_findings{kind="orphans"}') != []
    assert query_problems("task_maintenance_run_failures") != []
    assert query_problems("rate(node_cpu_seconds_total[5m])") != []
    assert query_problems("sum by (name) (task_maintenance_scan_findings)") != []
    assert query_problems("task_maintenance_queue_messages", {"queue"}) != []
    assert query_problems('sum by (queue_name) (celery_queue_length{queue_name=~"$q"})') == []


# -- the alert rules ------------------------------------------------------------------------------
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: it comes with Debian's `prometheus` package; "
            "run `make system-deps` (or `apt-get install -y prometheus`)"
        )
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_alert_rules_pass_promtool_check() -> None:
    done = run_promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    done = run_promtool("test", "rules", ALERTS_TEST)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - quiet == set(), "alerts without a case where they stay quiet"
    assert (firing | quiet) - names == set(), "test cases of alerts that do not exist"


def test_every_alert_has_a_severity_a_for_and_templated_annotations() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert "for" in rule, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert "{{" in rule["annotations"]["summary"], rule["alert"]


def test_alert_queries_name_served_metrics_and_labels() -> None:
    problems = {}
    for rule in alert_rules():
        annotations = " ".join(rule["annotations"].values())
        templated = set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", annotations))
        found = query_problems(rule["expr"], templated)
        if found:
            problems[rule["alert"]] = found
    assert problems == {}


# `{{ with query (printf `...` ...) }}` in an annotation: a PromQL query run when the alert fires
# (Go raw string, label values in single quotes, %s for the alert's own labels).
ANNOTATION_QUERY = re.compile(r"\bquery\s+\(?\s*(?:printf\s+)?`([^`]*)`")


def annotation_queries(rule: dict[str, Any]) -> list[tuple[str, set[str]]]:
    """(query, the `.Labels.X` its results are read for) of each query in the annotations."""
    found = []
    for text in rule["annotations"].values():
        for query in ANNOTATION_QUERY.findall(text):
            read = set(re.findall(r"\.Labels\.([A-Za-z_][A-Za-z0-9_]*)", text))
            found.append((query.replace("%s", "x").replace("'", '"'), read))
    return found


def test_annotation_queries_name_served_metrics_and_labels(tmp_path: Path) -> None:
    queries = [(rule["alert"], *q) for rule in alert_rules() for q in annotation_queries(rule)]
    hazards = {"eta_beyond_visibility", "duplicate", "expired_waiting"}
    named = {value for _, query, _ in queries for *_, value in read_query(query).matchers}
    assert hazards <= named, "every hazard alert lists its task names"
    problems = {}
    for alert, query, read in queries:
        found = query_problems(query, read)
        if found:
            problems[f"{alert}: {query}"] = found
    assert problems == {}
    rules = [{"record": f"annotation:query_{i}", "expr": q} for i, (_, q, _) in enumerate(queries)]
    path = tmp_path / "annotation_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "annotations", "rules": rules}]}))
    done = run_promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_exporter_down_alert_selects_the_scrape_job() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "TaskMaintenanceExporterDown"]
    assert f'up{{job="{JOB}"}}' in rule["expr"]
    assert f'absent(up{{job="{JOB}"}})' in rule["expr"]


def test_the_scrape_config_is_valid_and_targets_the_default_port() -> None:
    done = run_promtool("check", "config", SCRAPE)
    assert done.returncode == 0, done.stdout + done.stderr
    (job,) = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    assert job["job_name"] == JOB
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets and all(t.endswith(f":{DEFAULT_METRICS_PORT}") for t in targets)


# -- the dashboard --------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries, including those inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        found.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return found


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    text: str = query["query"] if isinstance(query, dict) else query
    return text


def label_values(text: str) -> tuple[str, str]:
    """`label_values(selector, label)` -> (selector, label)."""
    match = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", text.strip())
    assert match, text
    return match.group(1), match.group(2)


def dashboard_queries(doc: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    """(where, expr, labels its legend names) of every panel target and query annotation."""
    queries = []
    for panel in panels(doc):
        for target in panel["targets"]:
            legend = target.get("legendFormat", "")
            templated = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend))
            queries.append((f"panel {panel['title']!r}", target["expr"], templated))
    for annotation in doc["annotations"]["list"]:
        if "expr" in annotation:
            queries.append((f"annotation {annotation['name']!r}", annotation["expr"], set()))
    return queries


def test_the_dashboard_is_importable_as_is() -> None:
    doc = dashboard()
    assert doc["uid"] == JOB and doc["id"] is None and "__inputs" not in doc
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "queue_name"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == DATASOURCE_UID
    selector, label = label_values(variable_query(variables["queue_name"]))
    assert selector.startswith("task_maintenance_queue_messages") and label == "queue_name"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_dashboard_panel_queries_our_data_source() -> None:
    doc = dashboard()
    assert panels(doc)
    for panel in panels(doc):
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for annotation in doc["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == DATASOURCE_UID


def test_dashboard_queries_name_served_metrics_and_labels() -> None:
    doc = dashboard()
    problems = {}
    for where, expr, templated in dashboard_queries(doc):
        found = query_problems(expr, templated)
        if found:
            problems[f"{where}: {expr}"] = found
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = label_values(variable_query(variable))
            found = query_problems(selector, {label})
            if found:
                problems[f"variable {variable['name']}"] = found
    assert problems == {}


def test_the_dashboard_shows_every_metric_served() -> None:
    used = set().union(*(read_query(expr).metrics for _, expr, _ in dashboard_queries(dashboard())))
    assert set(served()) - used == set()


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression."""
    exprs = [grafana_to_promql(expr) for _, expr, _ in dashboard_queries(dashboard())]
    exprs += [label_values(variable_query(v))[0] for v in dashboard()["templating"]["list"][1:]]
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
