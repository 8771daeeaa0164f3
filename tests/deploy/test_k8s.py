"""deploy/k8s: every overlay renders with `kubectl kustomize` and validates against the Kubernetes schemas
(kubernetes-validate, strict); the rendered objects hold what the issue asks and agree with ctnode's settings."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import Settings, load_settings
from tests.deploy.deploy_support import K8S, deploy_tool

OVERLAYS = ("cpu", "gpu")
ROLES = ("receiver", "worker", "delivery")


def render(directory: Path) -> str:
    done = subprocess.run([deploy_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def validate(manifests: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rendered.yaml"
    path.write_text(manifests)
    return subprocess.run([deploy_tool("kubernetes-validate"), "--strict", str(path)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, str, dict[tuple[str, str], dict[str, Any]]]:
    """(overlay name, rendered YAML, objects by (kind, name))."""
    text = render(K8S / "overlays" / request.param)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(text) if o}
    return request.param, text, objects


def test_overlay_validates_against_the_kubernetes_schemas(overlay: Any, tmp_path: Path) -> None:
    _, text, objects = overlay
    done = validate(text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" passed for resource ") == len(objects)


def test_validation_rejects_a_wrong_manifest(tmp_path: Path) -> None:
    """The schema check can fail: a Deployment with a misspelt field and a string replica count."""
    bad = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: two\n  selektor: {}\n"
           "  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n")
    done = validate(bad, tmp_path)
    assert done.returncode != 0


def pod(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return objects[(kind, name)]["spec"]["template"]["spec"]


def node_settings(objects: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                  tmp_path: Path) -> Settings:
    """ctnode's settings from the rendered ConfigMap (the file every pod mounts), as the node loads them."""
    [config_map] = [o for (kind, _), o in objects.items() if kind == "ConfigMap"]
    path = tmp_path / "ctnode.yaml"
    path.write_text(config_map["data"]["ctnode.yaml"])
    monkeypatch.setenv("CTNODE_DATABASE__URL", "postgresql://ctnode:secret@db:5432/ctnode")
    return load_settings(path)


def test_roles_run_serve_with_their_role_probes_secret_config_and_shared_volume(
        overlay: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, _, objects = overlay
    settings = node_settings(objects, monkeypatch, tmp_path)
    assert settings.metrics.host == "0.0.0.0", "probes and Prometheus reach the pod's address"
    [claim] = [o for (kind, _), o in objects.items() if kind == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    [config_map] = [n for kind, n in objects if kind == "ConfigMap"]
    for role in ROLES:
        spec = pod(objects, "Deployment", f"ctnode-{role}")
        [container] = spec["containers"]
        assert container["args"] == ["serve", "--config", "/etc/ctnode/ctnode.yaml", "--role", role]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == settings.metrics.port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        [url] = [e for e in container["env"] if e["name"] == "CTNODE_DATABASE__URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": "ctnode-database", "key": "url"}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[str(settings.storage.data_dir)]]["persistentVolumeClaim"]["claimName"] == \
            claim["metadata"]["name"]
        assert volumes[mounts["/etc/ctnode"]]["configMap"]["name"] == config_map
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["terminationGracePeriodSeconds"] >= settings.delivery.acse_timeout_s + 5 + 30
        [wait] = spec["initContainers"]
        assert "ctnode studies list" in wait["command"][-1]
    assert objects[("Deployment", "ctnode-receiver")]["spec"]["replicas"] >= 2


def test_the_dicom_service_reaches_the_receivers_on_the_configured_port(
        overlay: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, _, objects = overlay
    settings = node_settings(objects, monkeypatch, tmp_path)
    service = objects[("Service", "ctnode-dicom")]["spec"]
    receiver = objects[("Deployment", "ctnode-receiver")]
    assert service["selector"].items() <= receiver["spec"]["template"]["metadata"]["labels"].items()
    [port] = service["ports"]
    [container] = receiver["spec"]["template"]["spec"]["containers"]
    target = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
    assert target == settings.dicom.port
    assert service["externalTrafficPolicy"] == "Local", "the allow-list needs the PACS's own address"


def test_network_policy_admits_dicom_only_from_the_configured_cidrs(overlay: Any) -> None:
    _, _, objects = overlay
    policies = [o for (kind, _), o in objects.items() if kind == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "no default deny"
    dicom_rules = [rule for p in policies for rule in p["spec"].get("ingress", [])
                   if any(port["port"] == 11112 for port in rule.get("ports", []))]
    assert dicom_rules
    for rule in dicom_rules:
        assert rule["from"] and all(set(peer) == {"ipBlock"} for peer in rule["from"])
        for peer in rule["from"]:
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            assert network.prefixlen >= 8, f"{network} admits far more than a PACS network"
    other = [rule for p in policies for rule in p["spec"].get("ingress", []) if rule not in dicom_rules]
    assert all(port["port"] != 11112 for rule in other for port in rule.get("ports", [])) and \
        all(rule.get("ports") for rule in other), "another policy opens every port"


def test_disruption_budgets_migration_job_and_gpu_requests(overlay: Any) -> None:
    name, _, objects = overlay
    for role in ("receiver", "worker"):
        budget = objects[("PodDisruptionBudget", f"ctnode-{role}")]["spec"]
        labels = objects[("Deployment", f"ctnode-{role}")]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert objects[("PodDisruptionBudget", "ctnode-receiver")]["spec"]["minAvailable"] >= 1
    [job] = pod(objects, "Job", "ctnode-migrate")["containers"]
    assert job["args"] == ["db", "upgrade", "--config", "/etc/ctnode/ctnode.yaml"]
    images = {c["image"] for (kind, _), o in objects.items() if kind in ("Deployment", "Job")
              for c in [*o["spec"]["template"]["spec"]["containers"],
                        *o["spec"]["template"]["spec"].get("initContainers", [])]}
    assert len(images) == 1 and images.pop().endswith(f"-{'cuda' if name == 'gpu' else 'cpu'}")
    [worker] = pod(objects, "Deployment", "ctnode-worker")["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    gpu_request = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    if name == "gpu":
        assert gpu_request == 1 and worker["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert env["CTNODE_PIPELINE__DEVICE"] == "cuda"
    else:
        assert gpu_request is None and env["CTNODE_PIPELINE__DEVICE"] == "cpu"
        assert worker["resources"]["limits"]["cpu"] == env["CTNODE_PIPELINE__THREADS"]
    for role in ("delivery", "receiver"):
        [container] = pod(objects, "Deployment", f"ctnode-{role}")["containers"]
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
