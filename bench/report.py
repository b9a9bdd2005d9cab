"""The benchmark's verdicts against its targets, and the table it prints."""

from __future__ import annotations

from typing import Any

__all__ = ["ADDED_P50_TARGET_MS", "CPU_TARGET", "PASSTHROUGH_TARGET", "THROUGHPUT_TARGET", "evaluate",
           "format_table"]

# stackd CPU per request / the upstream's own CPU per request, at most (docs/benchmarks.md).
CPU_TARGET = {"stream": 1.5, "non-stream": 2.0}
# Requests/s through stackd / requests/s direct, at least, at this concurrency.
THROUGHPUT_TARGET = (128, 0.90)


# stackd CPU/request over the bare aiohttp pass-through's, at most (issue 15); 1.5 with auth + quota.
PASSTHROUGH_TARGET = {"default": 1.3, "no-store": 1.3, "no-log": 1.3, "auth-quota": 1.5}
# stackd's p50 latency over the pass-through's, at most (ms).
ADDED_P50_TARGET_MS = 1.0


def _find(results: list[dict[str, Any]], target: str, mode: str, c: int, before: int | None = None
          ) -> dict[str, Any] | None:
    """The latest result of ``target`` in this mode before index ``before``: with ``--repeat``,
    the one of the same round."""
    found = None
    for r in results[:before]:
        if r["target"] == target and r["mode"] == mode and r["concurrency"] == c:
            found = r
    return found


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def evaluate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds comparisons to each proxied result (in place) and returns one verdict per target check."""
    verdicts: list[dict[str, Any]] = []
    for i, r in enumerate(results):
        if r["target"] == "direct":
            continue
        direct = _find(results, "direct", r["mode"], r["concurrency"], i)
        if direct is None:
            continue
        r["added_p50_ms"] = _sub(r["p50_ms"], direct["p50_ms"])
        r["added_p99_ms"] = _sub(r["p99_ms"], direct["p99_ms"])
        r["rps_vs_direct"] = _div(r["rps"], direct["rps"])
        # The upstream's own cost, measured in this same phase (it served the proxy's requests).
        r["cpu_ratio"] = _div(r.get("server_cpu_ms_per_req"), r["upstream_cpu_ms_per_req"])
        # The same against the direct phase: the upstream serving the load generator itself.
        r["cpu_ratio_vs_direct_phase"] = _div(r.get("server_cpu_ms_per_req"), direct["upstream_cpu_ms_per_req"])
        if not r["target"].startswith("stackd"):
            continue
        variant = r["target"].removeprefix("stackd").removeprefix("-") or "default"
        for ref in ("passthrough", "nginx"):
            other = _find(results, ref, r["mode"], r["concurrency"], i)
            if other is not None:
                r[f"cpu_vs_{ref}"] = _div(r.get("server_cpu_ms_per_req"), other.get("server_cpu_ms_per_req"))
                r[f"added_p50_ms_vs_{ref}"] = _sub(r["p50_ms"], other["p50_ms"])
        if "cpu_vs_passthrough" in r:
            limit = PASSTHROUGH_TARGET.get(variant, 1.3)
            verdicts.append({
                "check": f"{r['target']} CPU/request <= {limit}x the aiohttp pass-through "
                         f"({r['mode']}, c={r['concurrency']})",
                "value": r["cpu_vs_passthrough"],
                "met": r["cpu_vs_passthrough"] is not None and r["cpu_vs_passthrough"] <= limit,
            })
            verdicts.append({
                "check": f"{r['target']} p50 <= pass-through p50 + {ADDED_P50_TARGET_MS:g} ms ({r['mode']}, "
                         f"c={r['concurrency']})",
                "value": r["added_p50_ms_vs_passthrough"],
                "met": r["added_p50_ms_vs_passthrough"] is not None
                and r["added_p50_ms_vs_passthrough"] <= ADDED_P50_TARGET_MS,
            })
        limit = CPU_TARGET[r["mode"]]
        verdicts.append({
            "check": f"{r['target']} CPU/request <= {limit}x upstream ({r['mode']}, c={r['concurrency']})",
            "value": r["cpu_ratio"],
            "met": r["cpu_ratio"] is not None and r["cpu_ratio"] <= limit,
        })
        c, floor = THROUGHPUT_TARGET
        if r["concurrency"] == c:
            verdicts.append({
                "check": f"throughput through {r['target']} >= {floor:.0%} of direct ({r['mode']}, c={c})",
                "value": r["rps_vs_direct"],
                "met": r["rps_vs_direct"] is not None and r["rps_vs_direct"] >= floor,
            })
    return verdicts


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    head = ("| mode | c | target | req/s | chunks/s | p50 ms | p99 ms | +p50 ms | +p99 ms | "
            "server CPU ms/req | upstream CPU ms/req | ratio | vs passthrough | vs nginx | loadgen CPU ms/req | "
            "% of direct | errors |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["results"]:
        errors = sum(r["errors"].values()) if r["errors"] else 0
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['target']} | {_f(r['rps'], 0)} | "
            f"{_f(r['events_per_s'], 0) if r['mode'] == 'stream' else '-'} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
            f"{_f(r.get('added_p50_ms'))} | {_f(r.get('added_p99_ms'))} | "
            f"{_f(r.get('server_cpu_ms_per_req'), 2)} | {_f(r['upstream_cpu_ms_per_req'], 2)} | "
            f"{_f(r.get('cpu_ratio'), 2)} | {_f(r.get('cpu_vs_passthrough'), 2)} | {_f(r.get('cpu_vs_nginx'), 1)} | "
            f"{_f(r['client_cpu_ms_per_req'], 2)} | "
            f"{_f(100 * r['rps_vs_direct'], 0) + '%' if r.get('rps_vs_direct') else '-'} | {errors} |"
        )
    lines.append("")
    lines.append("| process | start s | RSS MB after start | RSS MB after load | peak RSS MB |")
    lines.append("|---|---|---|---|---|")
    for name, s in report["startup"].items():
        lines.append(f"| {name} | {_f(s['start_s'], 2)} | {_f(s['rss_mb_after_start'], 0)} | "
                     f"{_f(s.get('rss_mb_after_load'), 0)} | {_f(s.get('peak_rss_mb'), 0)} |")
    lines.append("")
    for v in report["targets"]:
        value = v["value"]
        shown = "-" if value is None else (f"{value:.0%}" if "throughput" in v["check"]
                                           else f"{value:+.2f} ms" if " ms " in v["check"] else f"{value:.2f}x")
        lines.append(f"{'MET ' if v['met'] else 'MISS'}  {v['check']}: {shown}")
    return "\n".join(lines)
