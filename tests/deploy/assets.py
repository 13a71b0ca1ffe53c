"""Where the deployment assets live, how to read them, and which metrics they query.

``metric_names_used()`` is the one list of LMaaS metric names that the alerts, the dashboard, the
autoscalers and the prometheus-adapter rules depend on. A test that scrapes real servers can check
that every one of them is exported. Names are sample names as exposed in ``/metrics`` with the
histogram suffixes ``_bucket``/``_sum``/``_count`` removed; counters keep ``_total``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .kustomize import render

__all__ = [
    "DEPLOY",
    "DOCKERFILE",
    "KEDA",
    "KUBERNETES",
    "MONITORING",
    "OVERLAYS",
    "REPO",
    "containers",
    "dashboard_expressions",
    "load_documents",
    "metric_names",
    "metric_names_used",
    "pod_spec",
    "promql_expressions",
    "rendered",
    "rule_expressions",
]

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
MONITORING = DEPLOY / "monitoring"
OVERLAYS = {name: KUBERNETES / "overlays" / name for name in ("dev", "prod")}
KEDA = KUBERNETES / "extras" / "keda"

_METRIC = re.compile(r"(?<![A-Za-z0-9_:])lmaas_[a-z0-9_]*[a-z0-9]")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def load_documents(path: Path) -> list[Doc]:
    """Every non-empty YAML document in ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def rendered(directory: Path) -> list[Doc]:
    """The resources a kustomization directory renders to."""
    return render(directory)


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload (Deployment, StatefulSet, ...), or None for other kinds."""
    spec: Doc = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    pod = template.get("spec") if isinstance(template, dict) else None
    return pod if isinstance(pod, dict) else None


def containers(doc: Doc) -> list[Doc]:
    """Init and regular containers of a workload."""
    pod = pod_spec(doc) or {}
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def metric_names(expression: str) -> set[str]:
    """LMaaS metric names in a PromQL expression, histogram suffixes removed."""
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(expression)}


def rule_expressions() -> Iterator[tuple[str, str]]:
    """(alert or record name, expr) for every rule in the PrometheusRule."""
    for doc in load_documents(MONITORING / "prometheusrule.yaml"):
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(panel title or variable name, query) for every query in the Grafana dashboard."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield f"${variable['name']}", query["query"] if isinstance(query, dict) else query
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def promql_expressions() -> Iterator[tuple[str, str]]:
    """Every query an asset runs against Prometheus, with where it comes from."""
    for name, expr in rule_expressions():
        yield f"prometheusrule:{name}", expr
    for name, expr in dashboard_expressions():
        yield f"dashboard:{name}", expr
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    for rule in values["rules"]["custom"]:
        yield f"prometheus-adapter:{rule['name']['as']}", rule["seriesQuery"]
    for doc in load_documents(KEDA / "scaledobject.yaml"):
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                yield f"keda:{doc['metadata']['name']}", trigger["metadata"]["query"]


def metric_names_used() -> set[str]:
    """Every LMaaS metric that the monitoring and autoscaling assets depend on."""
    names: set[str] = set()
    for _, expr in promql_expressions():
        names |= metric_names(expr)
    for overlay in OVERLAYS.values():
        for doc in rendered(overlay):
            if doc["kind"] == "HorizontalPodAutoscaler":
                for metric in doc["spec"].get("metrics", []):
                    source = metric.get(metric["type"][0].lower() + metric["type"][1:], {})
                    if "metric" in source:
                        names |= metric_names(source["metric"]["name"])
    return names


def _panels(panels: list[Doc]) -> Iterator[Doc]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))
