"""Aggregate benchmark runs (medians), compute the ratios and targets, and render the table and chart."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["aggregate", "markdown_table", "plot", "targets_text"]

SERVERS = ("lmaas", "bare", "mlserver")
LABELS = {"lmaas": "LMaaS", "bare": "bare grpc.aio", "mlserver": "MLServer 1.7.1"}


def _median(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def aggregate(runs: list[dict[str, Any]], models: Sequence[str], concurrencies: Sequence[int]) -> dict[str, Any]:
    """Medians over runs, per metric, of every in-process and server measurement; plus ratios per cell."""
    out: dict[str, Any] = {}
    for model in models:
        inproc = [r["inprocess"][model] for r in runs if model in r.get("inprocess", {})]
        ip: dict[str, Any] = {
            "limit": _median([x["limit"] for x in inproc]),
            "limit_batch1": _median([x["limit_batch1"] for x in inproc]),
            "batch1_p50_us": _median([x["batch1"]["p50_us"] for x in inproc]),
            "batch1_p99_us": _median([x["batch1"]["p99_us"] for x in inproc]),
            "limit_at": {str(c): _median([x["limit_at"].get(str(c)) for x in inproc]) for c in concurrencies},
        }
        rows: dict[str, Any] = {}
        for c in concurrencies:
            cell: dict[str, Any] = {}
            for server in SERVERS:
                samples = [
                    r["servers"][server][model][str(c)]
                    for r in runs
                    if "error" not in r.get("servers", {}).get(server, {}).get(model, {}).get(str(c), {"error": 1})
                ]
                if samples:
                    cell[server] = {
                        "throughput": _median([s["throughput"] for s in samples]),
                        "p50_ms": _median([s["p50_us"] / 1000 for s in samples]),
                        "p99_ms": _median([s["p99_us"] / 1000 for s in samples]),
                        "server_cores": _median([s.get("server_cores") for s in samples]),
                        "loadgen_cores": _median([s.get("loadgen_cores") for s in samples]),
                        "cpu_us_per_infer": _median([s.get("server_cpu_us_per_infer") for s in samples]),
                        "runs": len(samples),
                    }
            lm = cell.get("lmaas", {}).get("throughput")
            cell["lmaas_vs_limit"] = _ratio(lm, ip["limit"])
            cell["lmaas_vs_limit_at_c"] = _ratio(lm, ip["limit_at"][str(c)])
            cell["lmaas_vs_mlserver"] = _ratio(lm, cell.get("mlserver", {}).get("throughput"))
            cell["lmaas_vs_bare"] = _ratio(lm, cell.get("bare", {}).get("throughput"))
            if c == 1 and "lmaas" in cell and ip["batch1_p50_us"] is not None:
                cell["added_latency_us"] = cell["lmaas"]["p50_ms"] * 1000 - ip["batch1_p50_us"]
            rows[str(c)] = cell
        out[model] = {"inprocess": ip, "concurrency": rows}
    return out


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(agg: dict[str, Any]) -> str:
    """model x concurrency: each server's infer/s, p50, p99 and the ratios."""
    head = (
        "| model | c | LMaaS infer/s | p50 ms | p99 ms | bare infer/s | bare p99 ms | LMaaS / bare "
        "| MLServer infer/s | p50 ms | p99 ms "
        "| in-process limit/s | LMaaS / limit | LMaaS / limit (b≤c) | LMaaS / MLServer | added µs @c=1 |"
    )
    lines = [head, "|" + "---|" * 16]
    for model, m in agg.items():
        ip = m["inprocess"]
        for c, cell in m["concurrency"].items():
            lm, ml, bare = cell.get("lmaas", {}), cell.get("mlserver", {}), cell.get("bare", {})
            lines.append(
                f"| {model} | {c} | {_f(lm.get('throughput'), ',.0f')} | {_f(lm.get('p50_ms'), '.2f')} "
                f"| {_f(lm.get('p99_ms'), '.2f')} | {_f(bare.get('throughput'), ',.0f')} "
                f"| {_f(bare.get('p99_ms'), '.2f')} | {_f(cell.get('lmaas_vs_bare'), '.2f')} "
                f"| {_f(ml.get('throughput'), ',.0f')} | {_f(ml.get('p50_ms'), '.2f')} "
                f"| {_f(ml.get('p99_ms'), '.2f')} | {_f(ip['limit'], ',.0f')} | {_f(cell['lmaas_vs_limit'], '.0%')} "
                f"| {_f(cell['lmaas_vs_limit_at_c'], '.0%')} | {_f(cell['lmaas_vs_mlserver'], '.2f')}x "
                f"| {_f(cell.get('added_latency_us'), '.0f')} |"
            )
    lines.append("")
    lines.append("| model | in-process batch-1 call p50 µs | batch-1 limit/s | batched limit/s |")
    lines.append("|---|---|---|---|")
    for model, m in agg.items():
        ip = m["inprocess"]
        lines.append(
            f"| {model} | {_f(ip['batch1_p50_us'], '.0f')} | {_f(ip['limit_batch1'], ',.0f')} "
            f"| {_f(ip['limit'], ',.0f')} |"
        )
    lines.append("")
    lines.append(
        "| model | c | LMaaS cores used | CPU µs / infer | MLServer cores used | CPU µs / infer | perf_analyzer cores |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for model, m in agg.items():
        for c, cell in m["concurrency"].items():
            lm, ml = cell.get("lmaas", {}), cell.get("mlserver", {})
            lines.append(
                f"| {model} | {c} | {_f(lm.get('server_cores'), '.2f')} | {_f(lm.get('cpu_us_per_infer'), ',.0f')} "
                f"| {_f(ml.get('server_cores'), '.2f')} | {_f(ml.get('cpu_us_per_infer'), ',.0f')} "
                f"| {_f(lm.get('loadgen_cores'), '.2f')} / {_f(ml.get('loadgen_cores'), '.2f')} |"
            )
    return "\n".join(lines).replace("-x", "-")


def targets(agg: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on the medians (None = not measured)."""
    result: list[dict[str, Any]] = []
    mlp = agg.get("mlp", {}).get("concurrency", {})
    if "16" in mlp:
        cell = mlp["16"]
        ratio = cell["lmaas_vs_mlserver"]
        lm_p99 = cell.get("lmaas", {}).get("p99_ms")
        ml_p99 = cell.get("mlserver", {}).get("p99_ms")
        result.append(
            {
                "target": "MLP c=16: LMaaS ≥ 4x MLServer throughput",
                "value": ratio,
                "ok": None if ratio is None else ratio >= 4,
            }
        )
        result.append(
            {
                "target": "MLP c=16: LMaaS p99 below MLServer's",
                "value": [lm_p99, ml_p99],
                "ok": None if lm_p99 is None or ml_p99 is None else lm_p99 < ml_p99,
            }
        )
    if "1" in mlp:
        added = mlp["1"].get("added_latency_us")
        result.append(
            {
                "target": "MLP c=1: added latency over the in-process call ≤ 150 µs",
                "value": added,
                "ok": None if added is None else added <= 150,
            }
        )
    for model, per_c in agg.items():  # issue 11: never slower than the bare server, p99 never above its
        for c, cell in per_c.get("concurrency", {}).items():
            r = cell.get("lmaas_vs_bare")
            if r is None:
                continue
            result.append({"target": f"{model} c={c}: LMaaS ≥ 1.00x the bare server", "value": r, "ok": r >= 1.0})
            lm_p99, bare_p99 = cell["lmaas"].get("p99_ms"), cell["bare"].get("p99_ms")
            result.append(
                {
                    "target": f"{model} c={c}: LMaaS p99 not above the bare server's",
                    "value": [lm_p99, bare_p99],
                    "ok": None if lm_p99 is None or bare_p99 is None else lm_p99 <= bare_p99,
                }
            )
    for model in ("cnn", "transformer"):
        for c, cell in agg.get(model, {}).get("concurrency", {}).items():
            if int(c) >= 4:
                r = cell["lmaas_vs_limit"]
                result.append(
                    {
                        "target": f"{model} c={c}: LMaaS ≥ 90% of the in-process limit",
                        "value": r,
                        "ok": None if r is None else r >= 0.9,
                    }
                )
    return result


def targets_text(items: list[dict[str, Any]]) -> str:
    lines = []
    for t in items:
        mark = {True: "PASS", False: "MISS", None: "n/a "}[t["ok"]]
        v = t["value"]
        if isinstance(v, list):
            shown = " vs ".join(_f(x, ".2f") + " ms" for x in v)
        elif v is None:
            shown = "-"
        elif "latency" in t["target"]:
            shown = f"{v:.0f} µs"
        elif "%" in t["target"]:
            shown = f"{v:.0%}"
        else:
            shown = f"{v:.2f}x"
        lines.append(f"- {mark} {t['target']}: {shown}")
    return "\n".join(lines)


def plot(agg: dict[str, Any], path: Path, title: str) -> Path:
    """Throughput vs concurrency, one panel per model; in-process limits as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(agg)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        m = agg[model]
        cs = [int(c) for c in m["concurrency"]]
        plotted: list[float | None] = []
        for server, style in (("lmaas", "o-"), ("bare", "^-."), ("mlserver", "s--")):
            ys = [m["concurrency"][str(c)].get(server, {}).get("throughput") for c in cs]
            pts = [(c, y) for c, y in zip(cs, ys, strict=True) if y is not None]
            plotted += ys
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=LABELS[server])
        ip = m["inprocess"]
        top = max((p for p in plotted if p is not None), default=0.0)
        off_scale: list[str] = []
        for key, color, ls, label in (
            ("limit", "gray", ":", "in-process limit (batched)"),
            ("limit_batch1", "silver", "-.", "in-process limit (batch 1)"),
        ):
            if not ip[key]:
                continue
            if top and ip[key] > 3 * top:  # e.g. the MLP: 100x above any server; a line would flatten the plot
                off_scale.append(f"{label}: {ip[key]:,.0f}/s (off scale)")
            else:
                ax.axhline(ip[key], color=color, linestyle=ls, label=label)
        if off_scale:
            ax.text(0.02, 0.02, "\n".join(off_scale), transform=ax.transAxes, fontsize=8, color="dimgray")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.08)
        ax.set_title(model)
        ax.set_xlabel("concurrency (batch-1 requests)")
        ax.set_ylabel("infer/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def noise(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median and max share of the host's CPU that other programs used during the measurement points."""
    values: list[float] = []
    for r in runs:
        values += [x["foreign_cpu"] for x in r.get("inprocess", {}).values() if x.get("foreign_cpu") is not None]
        for per_model in r.get("servers", {}).values():
            for per_c in per_model.values():
                values += [x["foreign_cpu"] for x in per_c.values() if x.get("foreign_cpu") is not None]
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}
