"""deploy/kubernetes: every manifest validates offline, and what the pods run and read exists.

The manifests are validated with kubernetes-validate's bundled JSON schemas in strict mode (an
unknown or misspelt field is an error), against one pinned Kubernetes version: the oldest the
manifests promise to run on. The rest ties them to the repo: the ConfigMap is a config the service
loads, the commands name real modules and console scripts, the Secret keys are the URL overrides.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from maintenance.config import CONFIG_ENV, URL_OVERRIDES, Settings, settings_from_mapping
from tests.conftest import ROOT

K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are checked against
K8S = ROOT / "deploy" / "kubernetes"
# Manifests in the directory that kustomize must not apply: the Secret is a template of
# placeholders (applying it would reset the real URLs), the CronJob has its own kustomization.
NOT_IN_DEFAULT_SET = {"secret.example.yaml"}
KUSTOMIZATION = "kustomization.yaml"
NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
WORKLOADS = {"Deployment", "CronJob"}
CONFIG_KEY = "maintenance.toml"
ENV = {
    "REDIS_URL": "redis://redis.example:6379/0",
    "DATABASE_URL": "postgresql+psycopg2://app:pw@db.example:5432/app",
}


# -- reading the manifests ------------------------------------------------------------------------
def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_documents() -> list[tuple[Path, int, dict[str, Any]]]:
    return [(p, i, doc) for p in manifest_files() for i, doc in enumerate(documents(p))]


def resources() -> list[dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes (kustomizations are not objects)."""
    return [doc for _, _, doc in all_documents() if doc["kind"] != "Kustomization"]


def one(kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in resources()
        if doc["kind"] == kind
        and (component is None or doc["metadata"]["labels"].get(COMPONENT) == component)
    ]
    assert len(found) == 1, (kind, component, [d["metadata"]["name"] for d in found])
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [doc for doc in resources() if doc["kind"] in WORKLOADS]


def pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(doc)["spec"]
    return spec


def only_container(doc: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(doc)["containers"]
    assert len(containers) == 1, doc["metadata"]["name"]
    return containers[0]


def env_value(container: dict[str, Any], name: str) -> str:
    values = [e["value"] for e in container.get("env", []) if e["name"] == name and "value" in e]
    assert len(values) == 1, (container["name"], name)
    return str(values[0])


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def volume_at(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume mounted at `path` (or at a directory above it)."""
    container = only_container(doc)
    target = PurePosixPath(path)
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if target == PurePosixPath(m["mountPath"])
        or PurePosixPath(m["mountPath"]) in target.parents
    ]
    assert mounts, (doc["metadata"]["name"], path)
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    volume: dict[str, Any] = volumes[mount["name"]]
    return volume


def config_text() -> str:
    text: str = one("ConfigMap")["data"][CONFIG_KEY]
    return text


def config_settings() -> Settings:
    raw = tomllib.loads(config_text())
    return settings_from_mapping(raw, env=ENV, source=str(K8S / "configmap.yaml"))


def compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command: list[str] = compose["services"][service]["command"]
    return command


def exec_argv(command: list[str]) -> list[str]:
    """A command as the process runs it: `sh -c SCRIPT` split into the script's words."""
    if command[:2] == ["sh", "-c"]:
        return shlex.split(command[2])
    return command


def pyproject_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    return scripts


def run_console_script(name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a [project.scripts] entry point's target as the installed script would."""
    module, _, function = pyproject_scripts()[name].partition(":")
    code = (
        "import importlib, sys; "
        f"sys.argv = [{name!r}, *sys.argv[1:]]; "
        f"sys.exit(importlib.import_module({module!r}).{function}())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    command = kustomize()
    assert command is not None
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def validate(doc: dict[str, Any], where: str) -> None:
    try:
        version = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        at = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        pytest.fail(f"{where}: {at}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message}")
    assert version == K8S_VERSION, (where, version)


# -- schema validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "index"),
    [(p, i) for p, i, _ in all_documents()],
    ids=[f"{p.relative_to(K8S)}#{i}" for p, i, _ in all_documents()],
)
def test_manifest_validates_strictly(path: Path, index: int) -> None:
    """Each document passes the pinned version's schema; unknown fields are errors."""
    doc = documents(path)[index]
    where = f"{path.relative_to(ROOT)}#{index}"
    if doc["kind"] == "Kustomization":  # kustomize's own file: no Kubernetes schema
        assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1", where
        assert set(doc) <= {"apiVersion", "kind", "resources", "namespace", "images"}, where
        return
    validate(doc, where)


def test_every_expected_manifest_is_there() -> None:
    """The glob above found the set (an empty directory would validate trivially)."""
    names = {str(p.relative_to(K8S)) for p in manifest_files()}
    assert names == {
        "kustomization.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "worker.yaml",
        "beat.yaml",
        "service.yaml",
        "cronjob/kustomization.yaml",
        "cronjob/cronjob.yaml",
    }


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The control: the validator really is strict, down to a probe's fields."""
    worker = copy.deepcopy(one("Deployment", "worker"))
    only_container(worker)["readinessProbe"]["httpGet"]["paht"] = "/metrics"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


# -- kustomize ------------------------------------------------------------------------------------
def test_kustomizations_list_every_manifest_and_only_those() -> None:
    """Each kustomization lists the existing manifests beside it, bar the Secret template."""
    kustomizations = sorted(K8S.rglob(KUSTOMIZATION))
    assert {k.parent for k in kustomizations} == {K8S, K8S / "cronjob"}
    for kustomization in kustomizations:
        here = kustomization.parent
        listed: list[str] = yaml.safe_load(kustomization.read_text())["resources"]
        assert len(listed) == len(set(listed)), kustomization
        for entry in listed:
            target = here / entry
            assert target.is_file() or (target / KUSTOMIZATION).is_file(), (kustomization, entry)
        beside = {
            p.name
            for p in here.iterdir()
            if p.suffix in (".yaml", ".yml") and p.name != KUSTOMIZATION
        }
        assert set(listed) == beside - NOT_IN_DEFAULT_SET, kustomization
    assert (K8S / "secret.example.yaml").is_file()
    # The CronJob stays out of the default set, one documented line away.
    root_text = (K8S / KUSTOMIZATION).read_text()
    assert re.search(r"^  # - cronjob$", root_text, re.M), "the commented CronJob line"
    assert re.search(r"^  - beat\.yaml$", root_text, re.M)


@pytest.mark.skipif(kustomize() is None, reason="neither kustomize nor kubectl installed")
def test_kustomize_renders_beat_by_default_and_the_cronjob_when_swapped(tmp_path: Path) -> None:
    """Rendered, the default set has Beat; swapping its line for `cronjob` has the CronJob."""
    default = render(K8S)
    for doc in default:
        validate(doc, f"kustomize {K8S.relative_to(ROOT)}: {doc['metadata']['name']}")
    kinds = sorted((d["kind"], d["metadata"]["labels"].get(COMPONENT, "")) for d in default)
    assert kinds == [
        ("ConfigMap", ""),
        ("Deployment", "beat"),
        ("Deployment", "worker"),
        ("Service", "worker"),
    ]
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_dir)
    text = (copy_dir / KUSTOMIZATION).read_text()
    swapped = text.replace("\n  - beat.yaml\n", "\n  # - beat.yaml\n").replace(
        "\n  # - cronjob\n", "\n  - cronjob\n"
    )
    assert swapped.count("\n  - ") == text.count("\n  - ")
    (copy_dir / KUSTOMIZATION).write_text(swapped)
    variant = render(copy_dir)
    for doc in variant:
        validate(doc, f"kustomize (CronJob variant): {doc['metadata']['name']}")
    kinds = sorted((d["kind"], d["metadata"]["labels"].get(COMPONENT, "")) for d in variant)
    assert kinds == [
        ("ConfigMap", ""),
        ("CronJob", "cleanup"),
        ("Deployment", "worker"),
        ("Service", "worker"),
    ]


# -- the config and the secret --------------------------------------------------------------------
def test_config_map_loads_and_serves_metrics_on_the_metrics_port() -> None:
    """The TOML is a valid config without URLs; its metrics port is the one exposed and scraped."""
    raw = tomllib.loads(config_text())
    for section, key in URL_OVERRIDES.values():
        assert key not in raw.get(section, {}), f"{section}.{key}: URLs come from the Secret"
    settings = config_settings()
    assert settings.redis.broker_url == ENV["REDIS_URL"]
    assert settings.database.url == ENV["DATABASE_URL"]
    worker = one("Deployment", "worker")
    ports = {p["name"]: p["containerPort"] for p in only_container(worker)["ports"]}
    assert settings.metrics.port == ports["metrics"] == 8758
    service = one("Service")
    [service_port] = service["spec"]["ports"]
    assert service_port["name"] == "metrics"
    assert service_port["port"] == settings.metrics.port
    assert service_port["targetPort"] in ("metrics", settings.metrics.port)
    annotations = pod_template(worker)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics.port)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_every_pod_mounts_the_config_where_maintenance_config_points() -> None:
    """MAINTENANCE_CONFIG names the ConfigMap's file; the log directory is writable."""
    configmap = one("ConfigMap")["metadata"]["name"]
    settings = config_settings()
    for doc in workloads():
        container = only_container(doc)
        path = PurePosixPath(env_value(container, CONFIG_ENV))
        assert path == PurePosixPath("/app/config/maintenance.toml")
        volume = volume_at(doc, str(path))
        assert volume["configMap"]["name"] == configmap
        [item] = volume["configMap"]["items"]
        assert item == {"key": CONFIG_KEY, "path": path.name}
        assert "emptyDir" in volume_at(doc, settings.logging.dir), doc["metadata"]["name"]


def test_pods_read_exactly_the_url_keys_of_the_secret() -> None:
    """Each pod reads REDIS_URL, RESULT_BACKEND_URL, DATABASE_URL from the Secret, as themselves."""
    secret = one("Secret")
    assert set(secret["stringData"]) == set(URL_OVERRIDES)
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"{key} must be a placeholder to replace"
    for doc in workloads():
        container = only_container(doc)
        assert "envFrom" not in container, doc["metadata"]["name"]
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert set(refs) == set(URL_OVERRIDES), doc["metadata"]["name"]
        for name, ref in refs.items():
            assert ref["key"] == name and ref["name"] == secret["metadata"]["name"], ref
        assert {e["name"] for e in container["env"]} == {*URL_OVERRIDES, CONFIG_ENV}


# -- what the pods run ----------------------------------------------------------------------------
def test_every_command_names_a_real_module_or_console_script() -> None:
    """`-A MODULE` is a module of the repo; `task-cleanup` is a declared console script."""
    scripts = pyproject_scripts()
    seen: set[str] = set()
    for doc in workloads():
        container = only_container(doc)
        commands = [container["command"]]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if "exec" in container.get(probe, {}):
                commands.append(container[probe]["exec"]["command"])
        for command in commands:
            argv = exec_argv(command)
            seen.add(argv[0])
            assert argv[0] in ("celery", "task-cleanup", "kill"), command
            if argv[0] == "celery":
                module = option(argv, "-A")
                spec = importlib.util.find_spec(module)
                assert spec is not None and spec.origin is not None, module
                assert Path(spec.origin).resolve().is_relative_to(ROOT), spec.origin
            if argv[0] == "task-cleanup":
                target_module, _, function = scripts["task-cleanup"].partition(":")
                assert callable(getattr(importlib.import_module(target_module), function))
    assert {"celery", "task-cleanup"} <= seen


def test_worker_runs_the_compose_command_with_probes_and_a_clean_stop() -> None:
    """Worker: the compose/Dockerfile command, a ping liveness, /metrics readiness, 120 s grace."""
    worker = one("Deployment", "worker")
    container = only_container(worker)
    command: list[str] = container["command"]
    assert command == compose_command("maintenance-worker")
    assert command[:4] == ["celery", "-A", "maintenance.worker", "worker"]
    assert option(command, "-Q") == config_settings().schedule.queue
    node = option(command, "-n")
    assert node == "maintenance@%h", "Celery's %h: $(HOSTNAME) is not expanded by Kubernetes"
    assert not any("$(" in word for word in command)
    liveness = container["livenessProbe"]
    ping = exec_argv(liveness["exec"]["command"])
    assert ping[:5] == ["celery", "-A", "maintenance.worker", "inspect", "ping"]
    assert option(ping, "-d") == node.replace("%h", "$HOSTNAME")
    timeout = float(option(ping, "--timeout"))
    assert liveness["timeoutSeconds"] > timeout and liveness["periodSeconds"] >= 30
    assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == 120
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "768Mi"},
    }
    for path in ("/app/logs", "/app/run"):
        assert "emptyDir" in volume_at(worker, path)


def test_beat_is_one_recreated_deployment_with_its_state_in_an_empty_dir() -> None:
    """Beat: never two (replicas 1, Recreate); the compose command; its pidfile probed."""
    beat = one("Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    container = only_container(beat)
    command: list[str] = container["command"]
    assert command == compose_command("maintenance-beat")
    assert command[:4] == ["celery", "-A", "maintenance.worker", "beat"]
    pidfile, schedule = option(command, "--pidfile"), option(command, "-s")
    for path in (pidfile, schedule):
        assert "emptyDir" in volume_at(beat, path), path
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and f"$(cat {pidfile})" in probe[2]
    assert probe[2].startswith("kill -0 ")
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]


def test_cronjob_runs_a_forced_cleanup_nightly_and_never_twice_at_once() -> None:
    """CronJob: `task-cleanup cleanup --force` on the config's crontab, Forbid, bounded."""
    cronjob = one("CronJob")
    spec = cronjob["spec"]
    settings = config_settings()
    assert spec["schedule"] == "0 2 * * *" == settings.schedule.cleanup_expired_tasks
    assert spec["timeZone"] == "UTC" == settings.schedule.timezone
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] in (0, 1)
    assert 0 < job["activeDeadlineSeconds"] <= settings.schedule.time_limit_s
    assert job["activeDeadlineSeconds"] < settings.cleanup.lock_ttl_s
    assert pod_spec(cronjob)["restartPolicy"] == "Never"
    command = only_container(cronjob)["command"]
    assert command == ["task-cleanup", "cleanup", "--force"]
    # The script's own help for the subcommand offers the flag (whatever parses the arguments).
    done = run_console_script(command[0], [*command[1:-1], "--help"])
    assert done.returncode == 0, done.stderr
    assert re.search(r"(^|\s)--force\b", done.stdout), done.stdout


# -- labels and security --------------------------------------------------------------------------
def test_labels_select_the_right_pods() -> None:
    """Every object is labelled; each workload's selector matches its own pods only."""
    for doc in resources():
        assert doc["metadata"]["labels"][NAME] == "task-maintenance", doc["metadata"]["name"]
    components = set()
    for doc in workloads():
        component = doc["metadata"]["labels"][COMPONENT]
        components.add(component)
        labels = pod_template(doc)["metadata"]["labels"]
        assert labels[NAME] == "task-maintenance" and labels[COMPONENT] == component
        if doc["kind"] == "Deployment":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items() and selector[COMPONENT] == component
    assert components == {"worker", "beat", "cleanup"}
    worker_labels = pod_template(one("Deployment", "worker"))["metadata"]["labels"]
    assert one("Service")["spec"]["selector"].items() <= worker_labels.items()
    assert one("Service")["spec"]["selector"][COMPONENT] == "worker"


def test_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    """Non-root as the Dockerfile's USER; read-only root; every writable path an emptyDir."""
    user = re.findall(r"^USER (\d+)(?::\d+)?$", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    for doc in workloads():
        name = doc["metadata"]["name"]
        security = pod_spec(doc)["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == int(user), name
        container = only_container(doc)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        for mount in container["volumeMounts"]:
            volume = volume_at(doc, mount["mountPath"])
            assert ("configMap" in volume and mount.get("readOnly")) or "emptyDir" in volume, (
                name,
                mount,
            )
