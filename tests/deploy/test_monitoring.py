"""Monitoring assets: metric names and labels against the servers' contract, PromQL that parses,
alerts that fire when (and only when) they should, a dashboard that Grafana can lay out.

PromQL syntax and the alert unit tests need ``promtool`` (Debian: ``apt-get install prometheus``);
those tests are skipped without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .assets import (
    MONITORING,
    OVERLAYS,
    dashboard_expressions,
    load_documents,
    metric_names,
    metric_names_used,
    promql_expressions,
    rendered,
)

Doc = dict[str, Any]

# What the servers export (name as sampled → label names), the contract the assets are written to.
EXPORTED_METRICS: dict[str, frozenset[str]] = {
    # worker
    "lmaas_inference_requests_total": frozenset({"model", "version", "code"}),
    "lmaas_inferences_total": frozenset({"model", "version"}),
    "lmaas_inference_executions_total": frozenset({"model", "version"}),
    "lmaas_inference_request_duration_seconds": frozenset({"model", "version"}),
    "lmaas_inference_queue_duration_seconds": frozenset({"model", "version"}),
    "lmaas_inference_compute_duration_seconds": frozenset({"model", "version"}),
    "lmaas_inference_batch_size": frozenset({"model", "version"}),
    "lmaas_inference_pending_requests": frozenset({"model", "version"}),
    "lmaas_inference_rejected_total": frozenset({"model", "version", "reason"}),
    "lmaas_model_loaded": frozenset({"model", "version"}),
    "lmaas_model_load_duration_seconds": frozenset({"model"}),
    "lmaas_worker_snapshot_revision": frozenset(),
    "lmaas_http_requests_total": frozenset({"route", "method", "status"}),
    # worker, generative models
    "lmaas_llm_time_to_first_token_seconds": frozenset({"model", "version"}),
    "lmaas_llm_inter_token_latency_seconds": frozenset({"model", "version"}),
    "lmaas_llm_request_duration_seconds": frozenset({"model", "version"}),
    "lmaas_llm_queue_duration_seconds": frozenset({"model", "version"}),
    "lmaas_llm_prompt_tokens_total": frozenset({"model", "version"}),
    "lmaas_llm_generation_tokens_total": frozenset({"model", "version"}),
    "lmaas_llm_running_sequences": frozenset({"model", "version"}),
    "lmaas_llm_waiting_sequences": frozenset({"model", "version"}),
    "lmaas_llm_kv_cache_usage_ratio": frozenset({"model", "version"}),
    "lmaas_llm_requests_finished_total": frozenset({"model", "version", "reason"}),
    "lmaas_llm_streams_cut_total": frozenset({"model", "version"}),
    "lmaas_worker_memory_capacity_bytes": frozenset(),
    "lmaas_worker_memory_used_bytes": frozenset(),
    "lmaas_model_memory_bytes": frozenset({"model", "version"}),
    "lmaas_model_lazy_loads_total": frozenset({"model", "version"}),
    "lmaas_model_evictions_total": frozenset({"model", "version"}),
    "lmaas_model_autotune_choice": frozenset({"model", "version", "setting"}),
    "lmaas_model_autotune_seconds": frozenset({"model", "version"}),
    # control plane
    "lmaas_control_rollouts_total": frozenset({"outcome"}),
    "lmaas_control_connected_workers": frozenset(),
    "lmaas_control_worker_revision": frozenset({"worker", "kind"}),
    "lmaas_control_store_duration_seconds": frozenset({"op"}),
}
HISTOGRAMS = frozenset(
    {
        "lmaas_inference_request_duration_seconds",
        "lmaas_inference_queue_duration_seconds",
        "lmaas_inference_compute_duration_seconds",
        "lmaas_inference_batch_size",
        "lmaas_model_load_duration_seconds",
        "lmaas_control_store_duration_seconds",
        "lmaas_llm_time_to_first_token_seconds",
        "lmaas_llm_inter_token_latency_seconds",
        "lmaas_llm_request_duration_seconds",
        "lmaas_llm_queue_duration_seconds",
    }
)
# Labels Prometheus adds when scraping (job/instance, Prometheus Operator's namespace/pod) and `le`.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "le"})

_SELECTOR = re.compile(r"(lmaas_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$model": ".*"}

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (apt-get install prometheus)")


def _prometheus_rule() -> Doc:
    (doc,) = load_documents(MONITORING / "prometheusrule.yaml")
    return doc


def _dashboard() -> Doc:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())  # type: ignore[no-any-return]


def _promql(expr: str) -> str:
    """A Grafana query made plain PromQL."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# ---- names and labels ------------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.99, sum by (le) (rate(lmaas_a_seconds_bucket{x="y"}[5m]))) / lmaas_b_total + x_lmaas_c'
    assert metric_names(expr) == {"lmaas_a_seconds", "lmaas_b_total"}
    assert metric_names("label_values(lmaas_model_loaded, model)") == {"lmaas_model_loaded"}


def test_assets_use_only_exported_metrics_and_show_all_of_them() -> None:
    used = metric_names_used()
    assert used - EXPORTED_METRICS.keys() == set(), "assets query metrics the servers do not export"
    assert EXPORTED_METRICS.keys() - used == set(), "exported metrics that no alert or panel shows"


def test_histogram_suffixes_only_on_histograms() -> None:
    for where, expr in promql_expressions():
        for name in re.findall(r"lmaas_[a-z0-9_]+_(?:bucket|sum|count)\b", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in HISTOGRAMS, f"{where}: {name} but {base} is not a histogram"
        for name in re.findall(r"histogram_quantile\([^,]+,\s*.*?(lmaas_[a-z0-9_]+)", expr):
            assert name.endswith("_bucket"), f"{where}: histogram_quantile over {name}, not a _bucket series"


def test_selectors_and_groupings_use_existing_labels() -> None:
    problems = []
    for where, expr in promql_expressions():
        expr = _promql(expr).replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "")
        names = metric_names(expr)
        known = TARGET_LABELS.union(*(EXPORTED_METRICS.get(n, frozenset()) for n in names))
        for metric, matchers in _SELECTOR.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            allowed = TARGET_LABELS | EXPORTED_METRICS.get(base, frozenset())
            for label in _MATCHER.findall(matchers):
                if label not in allowed:
                    problems.append(f"{where}: {metric} has no label {label}")
        for group in _GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in known:
                    problems.append(f"{where}: grouping by unknown label {label}")
    assert not problems, "\n".join(problems)


def test_label_check_notices_a_typo() -> None:
    expr = 'sum by (modle) (rate(lmaas_inference_requests_total{cod="OK"}[5m]))'
    labels = TARGET_LABELS | EXPORTED_METRICS["lmaas_inference_requests_total"]
    assert [label for label in _MATCHER.findall(_SELECTOR.findall(expr)[0][1]) if label not in labels] == ["cod"]
    assert [g for g in _GROUPING.findall(expr) if g not in labels] == ["modle"]


def test_hpa_metric_is_served_by_prometheus_adapter() -> None:
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    for rule in values["rules"]["custom"]:
        assert metric_names(rule["seriesQuery"]) == {rule["name"]["as"]}
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
    for overlay in OVERLAYS.values():
        for doc in rendered(overlay):
            if doc["kind"] == "HorizontalPodAutoscaler":
                pods_metrics = {m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"] if m["type"] == "Pods"}
                assert pods_metrics <= served


# ---- alerts ------------------------------------------------------------------------------------------


def test_required_alerts_exist() -> None:
    rules = {r["alert"]: r for g in _prometheus_rule()["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "LMaaSHighErrorRate",
        "LMaaSHighLatencyP99",
        "LMaaSPendingRequestsHigh",
        "LMaaSWorkerDisconnected",
        "LMaaSRolloutFailed",
        "LMaaSLLMTimeToFirstTokenHigh",
    } <= rules.keys()
    assert "histogram_quantile(0.99" in rules["LMaaSHighLatencyP99"]["expr"]
    assert "lmaas_inference_request_duration_seconds_bucket" in rules["LMaaSHighLatencyP99"]["expr"]
    assert "lmaas_llm_time_to_first_token_seconds_bucket" in rules["LMaaSLLMTimeToFirstTokenHigh"]["expr"]


def _write_rules(directory: Path) -> Path:
    path = directory / "lmaas-rules.yaml"
    path.write_text(yaml.safe_dump(_prometheus_rule()["spec"], sort_keys=False))
    return path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = _promtool("check", "rules", str(_write_rules(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_unit_tests(tmp_path: Path) -> None:
    _write_rules(tmp_path)
    shutil.copy(Path(__file__).parent / "promtool" / "alerts_test.yaml", tmp_path)
    result = _promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_broken_promql(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (model (lmaas_model_loaded)"}]}]}
        )
    )
    assert _promtool("check", "rules", str(path), cwd=tmp_path).returncode != 0


@needs_promtool
def test_dashboard_and_autoscaler_queries_parse(tmp_path: Path) -> None:
    """Every Grafana, KEDA and adapter query, as a recording rule, passes promtool's parser."""
    rules = []
    for i, (where, expr) in enumerate(promql_expressions()):
        if where.startswith("prometheusrule:"):
            continue
        if expr.startswith("label_values("):
            expr = expr[len("label_values(") :].rsplit(",", 1)[0]
        expr = _promql(expr)
        rules.append({"record": f"lmaas_check:q{i}", "expr": expr})
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- dashboard -------------------------------------------------------------------------------------


def _panels() -> list[Doc]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_layout() -> None:
    dashboard = _dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and dashboard["title"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the grid"
        own = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not own & cells, f"{panel['title']} overlaps another panel"
        cells |= own


def test_dashboard_queries_use_the_datasource_variable() -> None:
    variables = {v["name"] for v in _dashboard()["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


@pytest.mark.parametrize(
    "pattern",
    [
        r"histogram_quantile\(0\.5, .*lmaas_inference_request_duration_seconds_bucket",
        r"histogram_quantile\(0\.99, .*lmaas_inference_request_duration_seconds_bucket",
        r"histogram_quantile\(0\.99, .*lmaas_inference_queue_duration_seconds_bucket",
        r"rate\(lmaas_inference_requests_total",
        r"lmaas_inference_batch_size_sum",
        r"sum by \(instance\) \(lmaas_model_loaded\)",
        r"lmaas_control_rollouts_total",
        r"sum\(lmaas_control_connected_workers\)",
        r"histogram_quantile\(0\.95, .*lmaas_llm_time_to_first_token_seconds_bucket",
        r"histogram_quantile\(0\.99, .*lmaas_llm_inter_token_latency_seconds_bucket",
        r"rate\(lmaas_llm_generation_tokens_total",
        r"lmaas_llm_running_sequences",
        r"lmaas_llm_waiting_sequences",
        r"lmaas_llm_kv_cache_usage_ratio",
        r"sum by \(model, reason\) \(rate\(lmaas_llm_requests_finished_total",
    ],
)
def test_dashboard_shows(pattern: str) -> None:
    assert any(re.search(pattern, expr) for _, expr in dashboard_expressions()), pattern
