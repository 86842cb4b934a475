"""The container image and the Kubernetes manifests, checked offline: every manifest valid
against the Kubernetes schemas (kubernetes-validate), and agreeing with the code — the commands
the containers run exist, the ports and probe paths are the ones the processes serve, every
setting named is one the code reads, the grace period covers a worker's shutdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.api.app import routes
from service.cli import COMMANDS
from service.settings import Settings, parse_duration

ROOT = Path(__file__).resolve().parent.parent.parent
MANIFESTS = sorted((ROOT / "k8s").rglob("*.yaml"))
KUBERNETES = "1.30.0"


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def container(name: str) -> dict[str, Any]:
    return one("Deployment", name)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def config() -> dict[str, str]:
    return one("ConfigMap", "wmq")["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_manifests_cover_a_deployment() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents()}
    assert kinds >= {
        ("Namespace", "wmq"), ("ConfigMap", "wmq"), ("Secret", "wmq"), ("Deployment", "wmq-api"),
        ("Service", "wmq-api"), ("Deployment", "wmq-worker"), ("Job", "wmq-migrate"),
        ("PodDisruptionBudget", "wmq-api"), ("PodDisruptionBudget", "wmq-worker"),
        ("HorizontalPodAutoscaler", "wmq-worker"),
    }
    assert all(d["metadata"].get("namespace") == "wmq" for d in documents() if d["kind"] != "Namespace")


def test_containers_run_commands_the_cli_has_and_read_only_real_settings() -> None:
    for doc in documents():
        if doc["kind"] in ("Deployment", "Job"):
            for spec in doc["spec"]["template"]["spec"]["containers"]:
                assert spec["args"][0] == "wmq" and spec["args"][1] in COMMANDS, spec["args"]
                assert [s for s in spec["envFrom"]] == [{"configMapRef": {"name": "wmq"}},
                                                        {"secretRef": {"name": "wmq"}}]
    known = {name.upper() for name in Settings.model_fields}
    named = set(config()) | set(one("Secret", "wmq")["stringData"])
    assert named <= known, named - known
    Settings(**{k.lower(): v for k, v in config().items()})  # and valid together


def test_ports_probes_and_scrapes_are_what_the_processes_serve() -> None:
    paths = {getattr(route, "path", None) for route in routes(Settings())}
    api = container("wmq-api")
    port = int(config()["PORT"])
    assert api["ports"] == [{"name": "http", "containerPort": port}]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics"} <= paths
    api_pod = one("Deployment", "wmq-api")["spec"]["template"]["metadata"]["annotations"]
    assert (api_pod["prometheus.io/port"], api_pod["prometheus.io/path"]) == (str(port), "/metrics")

    worker = container("wmq-worker")
    metrics_port = int(config()["WORKER_METRICS_PORT"])
    assert worker["ports"] == [{"name": "metrics", "containerPort": metrics_port}]
    worker_pod = one("Deployment", "wmq-worker")["spec"]["template"]["metadata"]["annotations"]
    assert worker_pod["prometheus.io/port"] == str(metrics_port)
    assert worker["livenessProbe"]["exec"]["command"] == ["wmq", "healthcheck", "worker"]
    service = one("Service", "wmq-api")["spec"]["ports"][0]
    assert service["targetPort"] == "http"


def test_the_worker_grace_period_covers_its_shutdown() -> None:
    """workers/main.py waits up to MESSAGE_QUEUE_JOB_TIMEOUT + 30 s for sends in progress."""
    grace = one("Deployment", "wmq-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= parse_duration(config()["MESSAGE_QUEUE_JOB_TIMEOUT"]) + 30 + 10
    liveness = container("wmq-worker")["livenessProbe"]
    heartbeat = parse_duration(config()["MESSAGE_QUEUE_HEARTBEAT_INTERVAL"])
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 3 * heartbeat, "an idle beat is not a death"


def test_the_image_builds_from_what_the_repository_has() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines()
              if line.startswith("COPY ") and "--from" not in line]
    assert copied and all((ROOT / source).exists() for sources in copied for source in sources)
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") >= 2, "multi-stage"
    assert "USER 10001" in dockerfile and 'HEALTHCHECK' in dockerfile and '"wmq", "healthcheck"' in dockerfile
    assert "EXPOSE 8000 9100" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".data", "**/__pycache__"} <= set(ignored)
