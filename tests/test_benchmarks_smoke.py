"""CI smoke for the benchmark harness: a tiny run of every workload through the real code path.

No timing assertions: only that exactly-once verification passed for every
measurement, that it catches a lost or duplicated job, and that the outputs
(JSONL, Markdown, PNG) were written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.harness import Bench, asyncjobs_available, token
from tests.testsupport.sinks import SinkProcess

pytestmark = pytest.mark.timeout(180)


def test_tiny_run_of_every_workload(tmp_path: Path) -> None:
    contenders = "rq-simple,asyncjobs-c10" if asyncjobs_available() else "rq-simple"
    rc = main(["run", "-n", "20", "--repeat", "1", "--seconds", "0.2", "--contenders", contenders,
               "--no-saq", "--no-paced", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    prov = records[0]
    assert prov["type"] == "provenance" and prov["redis_server"] and prov["rq"]
    measurements = [r for r in records if r["type"] == "measurement"]
    assert {m["workload"] for m in measurements} == {"noop", "noop_async", "sleep_async", "sleep_sync", "smtp", "sms"}
    assert {m["contender"] for m in measurements} == set(contenders.split(","))
    assert all(m["verified"] and not m["problems"] for m in measurements), [m["problems"] for m in measurements]
    for m in measurements:
        if m["workload"] in ("smtp", "sms"):
            assert m["sink_counts"]["total"] == 20 and m["sink_counts"]["distinct"] == 20
        assert m["redis_cmds_per_job"] > 0
    assert {r["transport"] for r in records if r["type"] == "transport"} == {
        "httpx-default", "httpx-aiohttp", "aiohttp-raw"}
    assert "| rq-simple |" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ledger_check_reports_lost_and_duplicated_jobs(tmp_path: Path) -> None:
    tokens = [token("t", i) for i in range(3)]
    ledger = tmp_path / "ledger"
    ledger.write_text(f"{tokens[0]}\n{tokens[0]}\n{tokens[1]}\n")
    problems = Bench._check_ledger(Bench.__new__(Bench), ledger, tokens)
    assert any("never ran" in p and tokens[2] in p for p in problems)
    assert any("more than once" in p and tokens[0] in p for p in problems)


def test_lost_job_fails_verification(tmp_path: Path) -> None:
    """A job removed from the queue before the worker runs must make the measurement fail."""
    from benchmarks.harness import Contender, workloads

    class LosingBench(Bench):
        def enqueue_rq(self, w, tokens):  # type: ignore[no-untyped-def]
            super().enqueue_rq(w, tokens)
            self.r.lpop("rq:queue:bench")  # the job hash stays, its id is gone: a lost job

    with LosingBench() as bench:
        rec = bench.measure(workloads()["noop"], Contender.parse("rq-simple"), 5)
    assert not rec["verified"]
    assert any("never ran" in p for p in rec["problems"])
    assert any("FinishedJobRegistry holds 4" in p for p in rec["problems"])


def test_sinks_count_duplicates() -> None:
    import urllib.request

    with SinkProcess("http", 0.0) as sink:
        for body in (b"x bjt-a-1", b"x bjt-a-1", b"x bjt-a-2"):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{sink.port}/sms", data=body),
                                   timeout=5).read()
        counts = sink.counts()
        assert counts["total"] == 3 and counts["distinct"] == 2 and counts["duplicated"] == 1
        sink.reset()
        assert sink.counts()["total"] == 0


def test_contender_at_a_git_revision_runs_that_revision(tmp_path: Path) -> None:
    """``asyncjobs-cC@REF`` (before/after comparisons in one run) runs the package as of REF."""
    import subprocess

    from benchmarks.harness import ROOT, Contender, workloads

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    c = Contender.parse("asyncjobs-c10@HEAD")
    assert (c.kind, c.concurrency, c.source) == ("asyncjobs", 10, "HEAD")
    with pytest.raises(ValueError, match="@REF applies to asyncjobs only"):
        Contender.parse("rq-simple@HEAD")
    with Bench() as bench:
        src = bench.package_at("HEAD")
        committed = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:asyncjobs/worker/worker.py"],
                                   capture_output=True, check=True).stdout
        assert (src / "asyncjobs" / "worker" / "worker.py").read_bytes() == committed
        assert sorted(p.name for p in src.iterdir()) == ["asyncjobs"]  # nothing else shadows this checkout
        env = bench.worker_env(workloads()["noop"], c, tmp_path / "ledger")
        assert env["PYTHONPATH"].split(":")[0] == str(src)
        rec = bench.measure(workloads()["noop"], c, 5)
    assert rec["verified"], rec["problems"]


def test_tiny_ops_run_compares_with_and_without_metrics_and_health(tmp_path: Path) -> None:
    """`python -m benchmarks ops`: each asyncjobs contender with and without both ports, stock RQ beside."""
    if not asyncjobs_available():
        pytest.skip("asyncjobs-worker is not runnable")
    pytest.importorskip("prometheus_client")
    rc = main(["ops", "--workloads", "noop", "--concurrency", "5", "--repeat", "1", "--seconds", "0.2",
               "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    (jsonl,) = tmp_path.glob("*.jsonl")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    measurements = {r["contender"]: r for r in records if r["type"] == "measurement"}
    assert set(measurements) == {"rq-simple", "asyncjobs-c5", "asyncjobs-c5-ops", "asyncjobs-c5-p2",
                                 "asyncjobs-c5-p2-ops"}
    assert all(m["verified"] for m in measurements.values())
    assert measurements["asyncjobs-c5"]["ops_answers"] is None
    table = (tmp_path / "ops-latest.md").read_text()
    assert "| noop | asyncjobs-c5-ops |" in table and "| noop | rq-simple |" in table


def test_ops_suffix_only_for_asyncjobs() -> None:
    from benchmarks.harness import Contender

    c = Contender.parse("asyncjobs-c50-p2-ops")
    assert (c.kind, c.concurrency, c.processes, c.ops) == ("asyncjobs", 50, 2, True)
    c = Contender.parse("asyncjobs-c50-ops@HEAD")
    assert (c.ops, c.source) == (True, "HEAD")
    assert not Contender.parse("asyncjobs-c50").ops
    with pytest.raises(ValueError, match="-ops"):
        Contender.parse("rq-simple-ops")


def test_claim_batch_suffix_only_for_asyncjobs() -> None:
    from benchmarks.harness import Contender

    c = Contender.parse("asyncjobs-c50-p2-b4-ops@HEAD")
    assert (c.concurrency, c.processes, c.claim_batch, c.ops, c.source) == (50, 2, 4, True, "HEAD")
    assert Contender.parse("asyncjobs-c50").claim_batch is None
    with pytest.raises(ValueError, match="-bB"):
        Contender.parse("saq-c50-b4")
    f = Contender.parse("asyncjobs-c50-b4-f0@HEAD")
    assert (f.claim_batch, f.prefetch, f.source) == (4, 0, "HEAD")
    assert Contender.parse("asyncjobs-c50").prefetch is None
    with pytest.raises(ValueError, match="-fF"):
        Contender.parse("saq-c50-f4")


def test_tiny_limits_run(tmp_path: Path) -> None:
    """``python -m benchmarks limits``: every set-up verified, the outputs written (no timing asserted)."""
    if not asyncjobs_available():
        pytest.skip("asyncjobs-worker is not runnable")
    rc = main(["limits", "-n", "60", "--rate", "10", "--windows", "2", "--repeat", "1", "--out", str(tmp_path)])
    assert rc == 0
    rows = [json.loads(line) for line in next((tmp_path / "limits").glob("limits-*.jsonl")).read_text().splitlines()]
    assert {r["setup"] for r in rows[1:]} == {"no limits", "limits checked", "rate", "beside a rate-limited queue"}
    assert all(r["verified"] for r in rows[1:])
    assert "| no limits |" in (tmp_path / "limits" / "limits-latest.md").read_text()
    assert (tmp_path / "limits" / "limits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_fanin_run(tmp_path: Path) -> None:
    """``python -m benchmarks fanin``: stock RQ and asyncjobs each drain a child of N parents, the child
    verified finished and the parents run once; the outputs written (no timing asserted)."""
    if not asyncjobs_available():
        pytest.skip("asyncjobs-worker is not runnable")
    rc = main(["fanin", "-n", "150", "--n-stock", "140", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    rows = [json.loads(line) for line in next(tmp_path.glob("fanin-*.jsonl")).read_text().splitlines()]
    assert [(r["contender"], r["n"]) for r in rows] == [("rq-simple", 140), ("asyncjobs-c50", 140), ("asyncjobs-c50", 150)]
    assert all(r["verified"] and r["commands_logged"] > 0 for r in rows)
    assert "| asyncjobs-c50 | 150 |" in (tmp_path / "fanin-latest.md").read_text()


def test_tiny_gap_run(tmp_path: Path) -> None:
    """``python -m benchmarks gap``: each contender's jobs verified once, the slot gap computed from the
    jobs' own start and end times (no timing asserted)."""
    if not asyncjobs_available():
        pytest.skip("asyncjobs-worker is not runnable")
    rc = main(["gap", "-n", "120", "--n-stock", "8", "--seconds", "0.02", "--concurrency", "10", "--repeat", "1",
               "--batches", "2", "--prefetches", "0", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    rows = [json.loads(line) for line in next(tmp_path.glob("gap-*.jsonl")).read_text().splitlines()]
    assert [(r["contender"], r["n"], r["slots"]) for r in rows] == [
        ("ceiling-c10", 120, 10), ("rq-simple", 8, 1), ("asyncjobs-c10", 120, 10), ("asyncjobs-c10-b2", 120, 10),
        ("asyncjobs-c10-f0", 120, 10)]
    for r in rows:
        assert r["verified"] and 0 < r["occupancy_pct"] <= 100
    for r in rows[1:]:  # the no-queue run has no gap to speak of
        assert r["gap_ms"]["p50"] > 0
    assert rows[2]["scripts"] > 0
    # each row of the same slot count is set against the no-queue run of its repetition
    assert rows[2]["no_queue_per_s"] == rows[0]["jobs_per_s"] and rows[2]["of_no_queue_pct"] > 0
    assert "of_no_queue_pct" not in rows[1]
    # --claim-batch 2 reached the worker: at most 2 claims per exchange, so more exchanges for 120 jobs
    assert rows[3]["scripts"] >= 60 > rows[2]["scripts"]
    assert "| 1 | asyncjobs-c10 | 120 |" in (tmp_path / "gap-latest.md").read_text()
