"""The container image and the Kubernetes manifests, checked offline: every manifest valid
against the Kubernetes schemas (kubernetes-validate), and agreeing with the code — the commands
the containers run exist, the ports and probe paths are the ones the processes serve, every
setting named is one the code reads, the grace period covers a worker's shutdown — and locked
down: every pod meets the Pod Security "restricted" profile with a read-only root filesystem, the
namespace denies all traffic but what each component's NetworkPolicy allows, and only the API
can read ADMIN_TOKEN (docs/deploy.md, "Network policies and pod security")."""

from __future__ import annotations

import ipaddress
import re
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
#: The kinds that make pods, and where their pod template is.
WORKLOADS = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
             "DaemonSet": ("spec", "template"), "ReplicaSet": ("spec", "template"),
             "Job": ("spec", "template"), "CronJob": ("spec", "jobTemplate", "spec", "template")}


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
        ("Namespace", "wmq"), ("ConfigMap", "wmq"), ("Secret", "wmq"), ("Secret", "wmq-api"),
        ("Deployment", "wmq-api"), ("Service", "wmq-api"), ("Deployment", "wmq-worker"), ("Job", "wmq-migrate"),
        ("PodDisruptionBudget", "wmq-api"), ("PodDisruptionBudget", "wmq-worker"),
        ("HorizontalPodAutoscaler", "wmq-worker"), ("NetworkPolicy", "default-deny"),
        ("NetworkPolicy", "wmq-api"), ("NetworkPolicy", "wmq-worker"), ("NetworkPolicy", "wmq-migrate"),
    }
    assert all(d["metadata"].get("namespace") == "wmq" for d in documents() if d["kind"] != "Namespace")


def test_containers_run_commands_the_cli_has_and_read_only_real_settings() -> None:
    known = {name.upper() for name in Settings.model_fields}
    for doc in documents():
        if doc["kind"] in ("Deployment", "Job"):
            for spec in doc["spec"]["template"]["spec"]["containers"]:
                assert spec["args"][0] == "wmq" and spec["args"][1] in COMMANDS, spec["args"]
                own = [{"secretRef": {"name": "wmq-api"}}] if doc["metadata"]["name"] == "wmq-api" else []
                assert spec["envFrom"] == [{"configMapRef": {"name": "wmq"}}, {"secretRef": {"name": "wmq"}}, *own]
                assert set(env_of(spec)) - {"TMPDIR"} <= known, env_of(spec)
    secrets = {key for d in documents() if d["kind"] == "Secret" for key in d["stringData"]}
    named = set(config()) | secrets
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


# Locked down: pod security, network policies, secrets per component.

def pods() -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(kind/name, labels, pod spec) of every pod the manifests make, whatever makes it."""
    found = []
    for doc in documents():
        if doc["kind"] == "Pod":
            found.append((f"Pod/{doc['metadata']['name']}", doc["metadata"].get("labels", {}), doc["spec"]))
        elif doc["kind"] in WORKLOADS:
            template = doc
            for key in WORKLOADS[doc["kind"]]:
                template = template[key]
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", template["metadata"].get("labels", {}),
                          template["spec"]))
    return found


def containers_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(key, [])]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def image_uid() -> int:
    found = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert found, "the Dockerfile names its user by number"
    return int(found.group(1))


def test_the_pods_found_are_every_component() -> None:
    names = {name for name, _, _ in pods()}
    assert names >= {"Deployment/wmq-api", "Deployment/wmq-worker", "Job/wmq-migrate"}, names


@pytest.mark.parametrize("name", [name for name, _, _ in pods()])
def test_every_pod_meets_the_restricted_pod_security_profile(name: str) -> None:
    spec = next(spec for found, _, spec in pods() if found == name)
    pod = spec.get("securityContext", {})
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), name
    allowed = {"name", "emptyDir", "configMap", "secret", "projected", "downwardAPI", "persistentVolumeClaim",
               "csi", "ephemeral"}
    assert all(set(volume) <= allowed for volume in spec.get("volumes", [])), name
    for c in containers_of(spec):
        own = c.get("securityContext", {})
        effective = {**{k: v for k, v in pod.items() if k in ("runAsNonRoot", "runAsUser", "runAsGroup",
                                                               "seccompProfile")}, **own}
        where = (name, c["name"])
        assert effective.get("runAsNonRoot") is True, where
        assert effective.get("runAsUser") == image_uid(), where
        assert isinstance(effective.get("runAsGroup"), int) and effective["runAsGroup"] > 0, where
        assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert own.get("allowPrivilegeEscalation") is False, where
        assert own.get("privileged") is not True, where
        assert own.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not own.get("capabilities", {}).get("add"), where


def test_no_pod_mounts_a_service_account_token() -> None:
    """Nothing here talks to the Kubernetes API."""
    for name, _, spec in pods():
        assert spec.get("automountServiceAccountToken") is False, name


def test_every_container_has_a_read_only_root_and_writes_only_to_empty_dirs() -> None:
    """DATA_DIR (the worker's alive file, `wmq healthcheck worker`) and TMPDIR (ffmpeg's
    temporary files, Go's and Python's) are emptyDir volumes; the rest of the image is read-only."""
    for name, _, spec in pods():
        empty = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in containers_of(spec):
            where = (name, c["name"])
            assert c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, where
            writable = {Path(m["mountPath"]) for m in c.get("volumeMounts", [])
                        if m["name"] in empty and not m.get("readOnly")}
            env = env_of(c)
            assert {"DATA_DIR", "TMPDIR"} <= set(env), where
            alive = Settings(data_dir=env["DATA_DIR"]).worker_alive_file
            for path in (Path(env["DATA_DIR"]), alive.parent, Path(env["TMPDIR"]), Path("/tmp")):
                assert any(path == w or w in path.parents for w in writable), (where, path)


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[op]:
            return False
    return True


def policies() -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == "NetworkPolicy"]


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress"] + (["Egress"] if "egress" in spec else [])


def isolating(labels: dict[str, str], direction: str) -> list[dict[str, Any]] | None:
    """The policies isolating a pod in a direction, or None: not isolated, everything allowed."""
    found = [p for p in policies() if direction in policy_types(p) and matches(p["spec"]["podSelector"], labels)]
    return found or None


def rules(labels: dict[str, str], direction: str) -> list[dict[str, Any]] | None:
    found = isolating(labels, direction)
    return None if found is None else [r for p in found for r in p["spec"].get(direction.lower(), [])]


def port_allowed(rule: dict[str, Any], protocol: str, port: int) -> bool:
    return not rule.get("ports") or any(
        p.get("protocol", "TCP") == protocol
        and ("port" not in p or (isinstance(p["port"], int) and p["port"] <= port <= p.get("endPort", p["port"])))
        for p in rule["ports"])


def egress_allows(labels: dict[str, str], address: str, port: int, protocol: str = "TCP") -> bool:
    """Whether a pod may open a connection to an address outside the cluster (not a pod)."""
    ip = ipaddress.ip_address(address)

    def holds(peer: dict[str, Any]) -> bool:
        block = peer.get("ipBlock")  # pod and namespace selectors pick pods, not outside addresses
        if block is None or ipaddress.ip_network(block["cidr"]).version != ip.version:
            return False
        excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in e for e in excepted if e.version == ip.version)

    found = rules(labels, "Egress")
    return found is None or any(port_allowed(r, protocol, port) and (not r.get("to") or any(map(holds, r["to"])))
                                for r in found)


def allowed_ports(labels: dict[str, str], direction: str) -> set[tuple[str, int | str]] | None:
    """The (protocol, port) pairs some rule lets through in a direction; None: anything goes."""
    found = rules(labels, direction)
    if found is None or any(not r.get("ports") for r in found):
        return None
    return {(p.get("protocol", "TCP"), p.get("port", "any")) for r in found for p in r["ports"]}


def labels_of(name: str) -> dict[str, str]:
    return next(labels for found, labels, _ in pods() if found == name)


def test_the_namespace_denies_all_traffic_by_default() -> None:
    default = [p for p in policies() if p["spec"]["podSelector"] == {}
               and set(policy_types(p)) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert default, "a default-deny NetworkPolicy for the namespace"
    labels = one("Namespace", "wmq")["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"


def test_every_component_has_a_policy_of_its_own() -> None:
    for name, labels, _ in pods():
        own = [p for p in policies() if p["spec"]["podSelector"] != {} and matches(p["spec"]["podSelector"], labels)]
        assert own, name
        for direction in ("Ingress", "Egress"):
            assert isolating(labels, direction) is not None, (name, direction)


def test_what_each_component_may_reach() -> None:
    dns = {("UDP", 53), ("TCP", 53)}
    public = ["157.240.0.53", "2a03:2880:f000::1"]  # WhatsApp (Meta) addresses, IPv4 and IPv6
    api, worker, migrate = (labels_of(n) for n in ("Deployment/wmq-api", "Deployment/wmq-worker", "Job/wmq-migrate"))

    assert allowed_ports(api, "Ingress") == {("TCP", int(config()["PORT"]))}
    assert allowed_ports(worker, "Ingress") == {("TCP", int(config()["WORKER_METRICS_PORT"]))}
    assert allowed_ports(migrate, "Ingress") == set()

    assert allowed_ports(api, "Egress") == allowed_ports(migrate, "Egress") == dns | {("TCP", 5432)}
    assert (allowed_ports(worker, "Egress") or set()) >= dns | {("TCP", 5432), ("TCP", 443), ("TCP", 5222)}
    for labels in (api, migrate):
        assert not any(egress_allows(labels, ip, port) for ip in public for port in (80, 443, 5222))
    assert egress_allows(worker, "157.240.0.53", 443) and egress_allows(worker, "157.240.0.53", 5222)
    assert egress_allows(worker, "157.240.0.53", 80)


def test_the_workers_reach_the_internet_but_not_the_metadata_service_nor_private_networks() -> None:
    worker = labels_of("Deployment/wmq-worker")
    inside = ["169.254.169.254", "169.254.170.2", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1",
              "127.0.0.1"]
    blocks = [peer["ipBlock"]["cidr"] for p in policies() for r in p["spec"].get("egress", [])
              for peer in r.get("to", []) if "ipBlock" in peer]
    if any(ipaddress.ip_network(cidr).version == 6 for cidr in blocks):
        inside += ["fd00:ec2::254", "fe80::1", "::1"]
        assert egress_allows(worker, "2a03:2880:f000::1", 443)
    for address in inside:
        for port in (80, 443, 5222, 8080):
            assert not egress_allows(worker, address, port), (address, port)


def holders(key: str) -> tuple[set[str], set[str]]:
    """The Secrets and the ConfigMaps holding a key."""
    def holding(kind: str) -> set[str]:
        return {d["metadata"]["name"] for d in documents()
                if d["kind"] == kind and key in {**d.get("data", {}), **d.get("stringData", {})}}
    return holding("Secret"), holding("ConfigMap")


def can_read(spec: dict[str, Any], c: dict[str, Any], key: str) -> bool:
    """Through env, env valueFrom, envFrom, or a mounted secret or configMap volume."""
    secrets, configmaps = holders(key)
    for e in c.get("env", []):
        ref = e.get("valueFrom", {})
        if e["name"] == key or ref.get("secretKeyRef", {}).get("key") == key \
                or ref.get("configMapKeyRef", {}).get("key") == key:
            return True
    for source in c.get("envFrom", []):
        if (source.get("secretRef", {}).get("name") in secrets
                or source.get("configMapRef", {}).get("name") in configmaps):
            return True
    mounted = {m["name"] for m in c.get("volumeMounts", [])}
    for volume in spec.get("volumes", []):
        sources = [volume] + volume.get("projected", {}).get("sources", [])
        if volume["name"] in mounted and any(
                s.get("secret", {}).get("secretName", s.get("secret", {}).get("name")) in secrets
                or s.get("configMap", {}).get("name") in configmaps for s in sources):
            return True
    return False


def test_only_the_api_can_read_the_admin_token() -> None:
    assert holders("ADMIN_TOKEN")[0], "an example Secret holds ADMIN_TOKEN"
    for name, _, spec in pods():
        for c in containers_of(spec):
            assert can_read(spec, c, "DATABASE_URL"), (name, c["name"])
            assert can_read(spec, c, "ADMIN_TOKEN") == (name == "Deployment/wmq-api"), (name, c["name"])


def test_the_example_secrets_cannot_be_applied_as_they_are() -> None:
    """Placeholders the service refuses at start: ADMIN_TOKEN under 32 characters or with CHANGE-ME."""
    for doc in documents():
        if doc["kind"] == "Secret":
            for key, value in doc["stringData"].items():
                assert "CHANGE-ME" in value, (doc["metadata"]["name"], key)
                if key == "ADMIN_TOKEN":
                    with pytest.raises(ValueError, match="openssl rand -hex 32"):
                        Settings(admin_token=value)
