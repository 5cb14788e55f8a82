"""Summaries, target ratios, provenance, and the JSONL / Markdown / PNG outputs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Workload


def provenance(redis_version: str | None, loop: str, sms_transport: str) -> dict[str, Any]:
    import redis as redis_py
    import rq

    from benchmarks.jobs import delivery_impl

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain")
    try:
        import uvloop

        uv: str | None = getattr(uvloop, "__version__", None)
    except ImportError:
        uv = None
    try:
        import saq

        saq_version: str | None = getattr(saq, "__version__", None)
    except ImportError:
        saq_version = None
    return {
        "type": "provenance",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "redis_server": redis_version,
        "rq": getattr(rq, "__version__", None) or getattr(rq, "VERSION", None),
        "redis_py": redis_py.__version__,
        "saq": saq_version,
        "event_loop": loop,
        "uvloop": uv,
        "sms_http_transport": sms_transport,
        "delivery_impl": delivery_impl(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def summarise(measurements: list[dict[str, Any]], wl: dict[str, Workload]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in measurements:
        groups.setdefault((m["workload"], m["contender"]), []).append(m)
    out: list[dict[str, Any]] = []
    for (w, c), ms in groups.items():
        rates = [m["jobs_per_s"] for m in ms if m["jobs_per_s"]]
        med = statistics.median(rates) if rates else None
        first = ms[0]

        def med_of(key: str, sub: str | None = None, ms: list[dict[str, Any]] = ms) -> float | None:
            vals = [(m[key] or {}).get(sub) if sub else m[key] for m in ms]
            return _median([v for v in vals if v is not None])

        out.append({
            "type": "summary", "workload": w, "contender": c, "kind": first["kind"],
            "concurrency": first["concurrency"], "processes": first["processes"],
            "total_concurrency": first["total_concurrency"], "repetitions": len(ms), "n": first["n"],
            "jobs_per_s_median": round(med, 1) if med else None,
            "jobs_per_s_min": min(rates) if rates else None, "jobs_per_s_max": max(rates) if rates else None,
            "spread_pct": round((max(rates) - min(rates)) / med * 100, 1) if rates and med else None,
            "latency_start_ms": {p: med_of("latency_start_ms", p) for p in ("p50", "p95", "p99")},
            "latency_end_ms": {p: med_of("latency_end_ms", p) for p in ("p50", "p95", "p99")},
            "peak_rss_mb": med_of("peak_rss_mb"), "cpu_s_per_1k": med_of("cpu_s_per_1k"),
            "redis_cpu_s_per_1k": med_of("redis_cpu_s_per_1k"),
            "redis_cmds_per_job": med_of("redis_cmds_per_job"),
            "verified": all(m["verified"] for m in ms),
        })
    # efficiency = achieved / min(concurrency / job latency, the contender's own no-op rate)
    noop_rate = {s["contender"]: s["jobs_per_s_median"] for s in out if s["workload"] == "noop"}
    noop_async_rate = {s["contender"]: s["jobs_per_s_median"] for s in out if s["workload"] == "noop_async"}
    for s in out:
        wk = wl.get(s["workload"])
        s["efficiency"] = None
        s["efficiency_bound"] = None
        if wk is None or not wk.latency_s or not s["jobs_per_s_median"]:
            continue
        bound = s["total_concurrency"] / wk.latency_s
        base = (noop_async_rate if wk.is_async else noop_rate).get(s["contender"]) or noop_rate.get(s["contender"])
        if base and s["kind"] != "ceiling":
            bound = min(bound, base)
        s["efficiency_bound"] = round(bound, 1)
        s["efficiency"] = round(s["jobs_per_s_median"] / bound, 3)
    out.sort(key=lambda s: (list(wl).index(s["workload"]) if s["workload"] in wl else 99,
                            _kind_order(s["kind"]), s["processes"], s["concurrency"]))
    return out


def _kind_order(kind: str) -> int:
    return ["rq-fork", "rq-simple", "saq", "asyncjobs", "ceiling"].index(kind) if kind in (
        "rq-fork", "rq-simple", "saq", "asyncjobs", "ceiling") else 9


# --------------------------------------------------------------------------- targets (issue 6, section 8)


def targets(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(s["workload"], s["contender"]): s for s in summaries}

    def rate(w: str, c: str) -> float | None:
        s = by.get((w, c))
        return s["jobs_per_s_median"] if s else None

    def best_single(w: str) -> tuple[str | None, float | None]:
        cands = [s for s in summaries if s["workload"] == w and s["kind"] == "asyncjobs" and s["processes"] == 1
                 and s["jobs_per_s_median"]]
        if not cands:
            return None, None
        b = max(cands, key=lambda s: s["jobs_per_s_median"])
        return b["contender"], b["jobs_per_s_median"]

    rows: list[dict[str, Any]] = []

    def ratio(name: str, num: float | None, den: float | None, goal: float, what: str, at_most: bool = False) -> None:
        value = round(num / den, 2) if num and den else None
        ok = None if value is None else (value <= goal if at_most else value >= goal)
        rows.append({"type": "target", "target": name, "measured": value, "goal": goal,
                     "comparison": "<=" if at_most else ">=", "met": ok, "basis": what})

    bc, br = best_single("noop")
    ratio("no-op vs 1 SimpleWorker", br, rate("noop", "rq-simple"), 10, f"{bc} / rq-simple")
    ratio("no-op vs SAQ", br, rate("noop", "saq-c50"), 3, f"{bc} / saq-c50")
    ratio("50 ms async wait, c=50, vs no-queue ceiling", rate("sleep_async", "asyncjobs-c50"),
          rate("sleep_async", "ceiling-c50"), 0.9, "asyncjobs-c50 / ceiling-c50")
    noop500 = rate("noop", "asyncjobs-c500") or br
    bound = min(10000.0, noop500) if noop500 else None
    ratio("50 ms async wait, c=500, vs min(10,000/s, no-op rate)", rate("sleep_async", "asyncjobs-c500"), bound,
          0.8, "asyncjobs-c500 / min(10000, asyncjobs no-op)")
    for w in ("smtp", "sms"):
        ratio(f"{w}: c=50 vs forking worker", rate(w, "asyncjobs-c50"), rate(w, "rq-fork"), 30,
              "asyncjobs-c50 / rq-fork")
        ratio(f"{w}: c=50 vs 8 SimpleWorkers", rate(w, "asyncjobs-c50"), rate(w, "rq-simple-x8"), 4,
              "asyncjobs-c50 / rq-simple-x8")
        a, b = by.get((w, "asyncjobs-c50")), by.get((w, "rq-simple-x8"))
        ratio(f"{w}: RSS vs 8 SimpleWorkers", a["peak_rss_mb"] if a else None, b["peak_rss_mb"] if b else None,
              0.25, "peak RSS asyncjobs-c50 / rq-simple-x8", at_most=True)
    p2 = [s for s in summaries if s["workload"] == "noop" and s["kind"] == "asyncjobs" and s["processes"] == 2]
    if p2:
        single = f"asyncjobs-c{p2[0]['concurrency']}"
        ratio("no-op, --processes 2 vs 1", p2[0]["jobs_per_s_median"], rate("noop", single), 1.4,
              f"{p2[0]['contender']} / {single}")
    paced = [s for s in summaries if s["workload"] == "paced_noop" and s["kind"] == "asyncjobs"]
    if paced:
        p99 = paced[0]["latency_start_ms"]["p99"]
        rows.append({"type": "target", "target": "enqueue-to-start p99 at half capacity (ms)", "measured": p99,
                     "goal": 25, "comparison": "<", "met": (p99 is not None and p99 < 25),
                     "basis": paced[0]["contender"]})
    a, b = by.get(("noop", "asyncjobs-c50")), by.get(("noop", "rq-simple"))
    ratio("Redis commands per job vs stock", a["redis_cmds_per_job"] if a else None,
          b["redis_cmds_per_job"] if b else None, 0.5, "asyncjobs-c50 / rq-simple (no-op)", at_most=True)
    return rows


# --------------------------------------------------------------------------- outputs


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")


def save_run(out: Path, name: str, records: list[dict[str, Any]], heading: str, body: str) -> str:
    """``<out>/<name>-<stamp>.jsonl`` and ``<out>/<name>-latest.md`` (``heading`` may use ``{stamp}``);
    prints the markdown and returns it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    write_jsonl(out / f"{name}-{stamp}.jsonl", records)
    text = heading.format(stamp=stamp) + "\n\n" + body
    (out / f"{name}-latest.md").write_text(text)
    print(text)
    return text


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def markdown(prov: dict[str, Any], summaries: list[dict[str, Any]], wl: dict[str, Workload],
             target_rows: list[dict[str, Any]], transport: list[dict[str, Any]], jsonl_name: str) -> str:
    lines = [
        "# asyncjobs benchmark results",
        "",
        f"Run {prov['date']} on {prov['cpu_count']} CPUs ({prov.get('cpu_model') or 'unknown CPU'}), "
        f"Python {prov['python']}, Redis {prov['redis_server']}, rq {prov['rq']}, redis-py {prov['redis_py']}, "
        f"SAQ {prov.get('saq') or 'n/a'}, event loop {prov['event_loop']}, commit "
        f"`{(prov.get('git_commit') or 'unknown')[:12]}`{' (dirty tree)' if prov.get('git_dirty') else ''}, "
        f"delivery tasks: `{prov['delivery_impl']}`, SMS transport: {prov['sms_http_transport']}.",
        f"Raw data: `{jsonl_name}`.",
        "",
        "Each row: N jobs enqueued with stock RQ (SAQ: its own format) before the worker starts, then drained in "
        "burst mode; every job verified finished exactly once. jobs/s = N / (first start to last end), median "
        "over repetitions, spread = (max - min) / median. Latencies are from the job hashes and include the "
        "queue wait of a full backlog (drain mode). RSS = peak sum over the worker process tree; CPU = worker "
        "processes incl. children, incl. start-up. Efficiency = achieved / min(concurrency / job latency, "
        "the contender's no-op rate).",
        "",
    ]
    for w in wl.values():
        rows = [s for s in summaries if s["workload"] == w.name]
        if not rows:
            continue
        lines += [f"## {w.name}: {w.description}", "",
                  "| contender | conc. | Nxreps | jobs/s | spread | start p50/p95/p99 ms | end p99 ms | RSS MB "
                  "| CPU s/1k | Redis CPU s/1k | Redis cmds/job | efficiency | exactly once |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for s in rows:
            ls, le = s["latency_start_ms"], s["latency_end_ms"]
            lines.append(
                f"| {s['contender']} | {s['total_concurrency']} | {s['n']}x{s['repetitions']} "
                f"| {_fmt(s['jobs_per_s_median'])} | {_fmt(s['spread_pct'])}% "
                f"| {_fmt(ls['p50'], 0)} / {_fmt(ls['p95'], 0)} / {_fmt(ls['p99'], 0)} | {_fmt(le['p99'], 0)} "
                f"| {_fmt(s['peak_rss_mb'])} | {_fmt(s['cpu_s_per_1k'], 2)} | {_fmt(s['redis_cpu_s_per_1k'], 2)} "
                f"| {_fmt(s['redis_cmds_per_job'])} | {_fmt(s['efficiency'], 2)} | {'yes' if s['verified'] else '**NO**'} |"
            )
        lines.append("")
    if transport:
        lines += ["## SMS HTTP transport (httpx interface)", "",
                  "| transport | concurrency | requests | req/s | CPU ms/request |", "|---|---:|---:|---:|---:|"]
        for t in transport:
            lines.append(f"| {t['transport']} | {t['concurrency']} | {t['n']} | {_fmt(t['req_per_s'])} "
                         f"| {_fmt(t['cpu_ms_per_request'], 3)} |")
        lines.append("")
    if target_rows:
        lines += ["## Targets (issue 6)", "", "| target | measured | goal | met | basis |", "|---|---:|---:|:---:|---|"]
        for t in target_rows:
            met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {_fmt(t['measured'], 2)} | {t['comparison']} {t['goal']} | {met} "
                         f"| {t['basis']} |")
        lines.append("")
    return "\n".join(lines)


def chart(path: Path, summaries: list[dict[str, Any]], wl: dict[str, Workload]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in wl if any(s["workload"] == w for s in summaries)]
    if not names:
        return
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, w in zip(axes.flat, names, strict=False):
        ss = [s for s in summaries if s["workload"] == w and s["jobs_per_s_median"]]
        series: dict[str, list[tuple[int, float]]] = {}
        for s in ss:
            label = s["kind"] if s["kind"] not in ("asyncjobs",) else (
                "asyncjobs" if s["processes"] == 1 else f"asyncjobs x{s['processes']} proc")
            if s["kind"] == "rq-simple":
                label = "rq SimpleWorker xK"
            series.setdefault(label, []).append((s["total_concurrency"], s["jobs_per_s_median"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    linestyle="-" if len(pts) > 1 else "none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{w}: {wl[w].description}", fontsize=9)
        ax.set_xlabel("jobs in flight (concurrency x processes)")
        ax.set_ylabel("jobs/s (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
