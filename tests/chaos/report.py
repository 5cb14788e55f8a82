"""The table printed after a run, and the JSON and Markdown reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.chaos.runner import Row

COLUMNS = [
    ("scenario", "scenario"),
    ("faults", "faults injected"),
    ("jobs", "jobs"),
    ("lost", "lost"),
    ("stranded", "stranded"),
    ("overrun", "run more often than allowed"),
    ("reruns", "re-runs within crash bound"),
    ("maint", "failed by RQ maintenance"),
    ("restarts", "worker restarts"),
    ("recover", "time to recover (s)"),
    ("verdict", "verdict"),
]


def _cells(r: Row) -> list[str]:
    return [
        r.scenario, str(r.faults_total), str(r.jobs), str(r.lost), str(r.stranded), str(r.overrun),
        str(r.reruns_within_crash_bound), str(r.failed_by_maintenance), str(r.worker_restarts), f"{r.recover_s:.1f}", r.verdict,
    ]


def table(rows: list[Row]) -> str:
    head = [c[0] for c in COLUMNS]
    body = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out)


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    out = [
        "# Chaos suite: latest run",
        "",
        f"`{meta['command']}` on {meta['finished_at']}, main at `{meta['main_commit']}` "
        f"(branch `{meta['branch']}` at `{meta['commit']}`), Python {meta['python']}, "
        f"redis-server {meta['redis_server']}, rq {meta['rq']}, {meta['minutes']:.1f} min.",
        "",
        "| " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    out += ["", "Faults injected, by kind:", ""]
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in r.faults.items())
        out.append(f"- **{r.scenario}** (seed {r.seed}): {kinds or 'none'}")
    failing = [r for r in rows if r.problems]
    if failing:
        out += ["", "## Problems (first of each failing scenario)", ""]
        for r in failing:
            out.append(f"### {r.scenario} (seed {r.seed}): {r.problems} problem(s)")
            out.append("")
            out += [f"- `{p.splitlines()[0][:300]}`" for p in r.problem_samples[:15]]
            out.append("")
    rq_own = [r for r in rows if r.rq_problems]
    if rq_own:
        out += ["", "## RQ's own behaviour seen during the run (not counted against asyncjobs)", ""]
        for r in rq_own:
            out.append(f"- **{r.scenario}** (seed {r.seed}): " + "; ".join(f"`{p.splitlines()[0][:200]}`" for p in r.rq_problems[:3]))
    out += ["", "Columns and the exact invariants: see tests/chaos/README.md.", ""]
    return "\n".join(out)


def write(rows: list[Row], meta: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "latest.json"
    md = out_dir / "latest.md"
    js.write_text(json.dumps({"meta": meta, "scenarios": [r.to_json() for r in rows]}, indent=2) + "\n")
    md.write_text(markdown(rows, meta))
    return js, md
