"""The processes of one scenario: a private Redis, optional fault proxies, asyncjobs workers and a
stock ``rq worker``, all started here and stopped by PID.

Workers are grouped in *slots* (``aj1``, ``aj2``, ``stock``).  A slot runs one process at a
time; each process is an :class:`Incarnation` with its own worker name (RQ refuses a second
live worker under one name, and a SIGKILLed worker's key lives on until it expires), so every
execution in Redis names the exact process that ran it.  A monitor thread notices any
process that exits without being told to (a crash) and restarts its slot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from asyncjobs.worker.recycle import RECYCLE_EXIT
from tests.testsupport.faultproxy import FaultProxy
from tests.testsupport.redis_server import RedisServer
from tests.testsupport.workers import PROJECT_ROOT, asyncjobs_worker_command, rq_command

QUEUES = ("chaos-high", "chaos")  # asyncjobs listens on both, highest priority first
STOCK_QUEUES = ("chaos",)  # the stock worker shares the main queue (poison entries go to chaos-high only)
SOCKET_TIMEOUT = 3.0  # in the asyncjobs workers' Redis URL; proxy delays go past it


@dataclass(eq=False)
class Incarnation:
    slot: str
    kind: str  # "asyncjobs" | "stock"
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.time)
    ended: float | None = None
    how: str | None = None  # sigkill | warm | cold | startup-term | crash | final
    signalled: float | None = None  # first SIGTERM/SIGINT
    cold_at: float | None = None  # second signal (cold shutdown)
    returncode: int | None = None
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    def __init__(
        self,
        run_dir: Path,
        tag: str,
        side_url: str,
        *,
        aof: bool = False,
        via_proxy: bool = False,
        workers: int = 2,
        concurrency: int = 16,
        shutdown_timeout: float = 15.0,
        stock: bool = True,
        worker_args: tuple[str, ...] = (),
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.tag = tag
        self.side_url = side_url
        self.ledger_path = run_dir / "ledger.txt"
        self.concurrency = concurrency
        self.shutdown_timeout = shutdown_timeout
        self.slots = [f"aj{i + 1}" for i in range(workers)]
        self.worker_args = worker_args  # extra asyncjobs-worker flags (the recycle and cron scenarios)
        self.worker_env = dict(worker_env or {})
        self.recycles = 0  # asyncjobs workers that exited with the recycle status (75) and were replaced
        self.with_stock = stock
        #: run once Redis is up, before any worker starts (e.g. queue limits every worker must see)
        self.on_redis_up: Callable[[redis.Redis], None] | None = None
        extra: tuple[str, ...] = ("--appendonly", "yes", "--appendfsync", "always") if aof else ()
        self.redis = RedisServer(extra_args=extra)
        self.via_proxy = via_proxy
        self.proxy: FaultProxy | None = None
        self.incarnations: list[Incarnation] = []
        self.current: dict[str, Incarnation] = {}
        self.crashes: list[str] = []  # unexpected exits of asyncjobs workers, described
        self.stock_exits = 0  # the stock worker exits when Redis is unreachable: it is restarted
        self.pending_dead: list[Incarnation] = []  # exited on their own, in-flight not yet recorded
        self._respawn_at: dict[str, float] = {}
        self._baseline: set[int] = set()
        self.notes: list[str] = []
        self.lock = threading.RLock()  # held while a slot is being replaced
        self.redis_lock = threading.Lock()  # the producer and a Redis restart never overlap
        self._counter = 0
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._conn: redis.Redis | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        _become_subreaper()
        self._baseline = {c.pid for c in psutil.Process().children()}  # e.g. the side Redis
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        if self.on_redis_up is not None:
            self.on_redis_up(self.conn())
        if self.via_proxy:
            self.proxy = FaultProxy("127.0.0.1", self.redis.port).start()
        for slot in self.slots:
            self.spawn(slot)
        if self.with_stock:
            self.spawn("stock")
        self._monitor = threading.Thread(target=self._watch, name="chaos-monitor", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(5)
        for inc in self.incarnations:
            if inc.alive():
                inc.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    inc.proc.wait(10)
        # Work-horses of stock workers killed above were adopted by us (subreaper): end them too.
        orphans = self.orphans()
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(orphans, timeout=10)
        if self.proxy is not None:
            self.proxy.close()
        if self._conn is not None:
            self._conn.close()
        self.redis.close()

    def conn(self) -> redis.Redis:
        """The harness's own direct connection (never through a proxy)."""
        if self._conn is None:
            self._conn = redis.Redis.from_url(self.redis.url, socket_timeout=30)
        return self._conn

    @property
    def worker_url(self) -> str:
        port = self.proxy.port if self.proxy is not None else self.redis.port
        return f"redis://127.0.0.1:{port}/0?socket_timeout={SOCKET_TIMEOUT:g}&socket_connect_timeout={SOCKET_TIMEOUT:g}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",
            CHAOS_LEDGER=str(self.ledger_path),
            CHAOS_SIDE_URL=self.side_url,
        )
        env.update(self.worker_env)
        return env

    # --------------------------------------------------------------- workers
    def _name(self, slot: str) -> str:
        self._counter += 1
        return f"{self.tag}-{slot}-{self._counter}"

    def asyncjobs_argv(self, name: str, url: str) -> list[str]:
        return [
            *asyncjobs_worker_command(),
            "-u", url,
            "--name", name,
            "--concurrency", str(self.concurrency),
            "--job-monitoring-interval", "1",
            "--shutdown-timeout", f"{self.shutdown_timeout:g}",
            "--logging-level", "INFO",
            *self.worker_args,
            *QUEUES,
        ]

    def stock_argv(self, name: str) -> list[str]:
        return [
            *rq_command(), "worker",
            "-u", self.redis.url,
            "--name", name,
            "--job-monitoring-interval", "1",
            "--logging_level", "INFO",
            *STOCK_QUEUES,
        ]

    def spawn(self, slot: str, argv: Sequence[str] | None = None, *, track: bool = True) -> Incarnation:
        """Start the next process of ``slot`` (``track=False``: a one-off not owning the slot)."""
        with self.lock:
            name = self._name(slot)
            kind = "stock" if slot == "stock" else "asyncjobs"
            if argv is None:
                argv = self.stock_argv(name) if kind == "stock" else self.asyncjobs_argv(name, self.worker_url)
            log = self.run_dir / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    list(argv), cwd=str(PROJECT_ROOT), env=self.env(),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                )
            inc = Incarnation(slot, kind, name, proc, log)
            self.incarnations.append(inc)
            if track:
                self.current[slot] = inc
            return inc

    def asyncjobs_workers(self) -> list[Incarnation]:
        with self.lock:
            return [inc for slot, inc in self.current.items() if slot != "stock" and inc.alive()]

    def all_current(self) -> list[Incarnation]:
        with self.lock:
            return [inc for inc in self.current.values() if inc.alive()]

    def worker_names(self) -> set[str]:
        return {inc.name for inc in self.incarnations}

    def live_names(self) -> set[str]:
        return {inc.name for inc in self.incarnations if inc.alive()}

    def dead_names(self) -> set[str]:
        return {inc.name for inc in self.incarnations if not inc.alive()}

    def kill(self, inc: Incarnation) -> None:
        """SIGKILL and reap; the caller restarts the slot."""
        inc.expected_exit = True
        inc.how = "sigkill"
        inc.signal(signal.SIGKILL)
        inc.proc.wait(30)
        self._ended(inc)

    def wait_exit(self, inc: Incarnation, timeout: float) -> bool:
        try:
            inc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._ended(inc)
        return True

    def _ended(self, inc: Incarnation) -> None:
        if inc.ended is None:
            inc.ended = time.time()
            inc.returncode = inc.proc.returncode

    def _watch(self) -> None:
        """Restart a slot whose process exited on its own: for asyncjobs a crash (a problem); the
        stock worker exits by design when Redis is unreachable, so it is restarted after 1 s."""
        while not self._monitor_stop.wait(0.2):
            with self.lock:
                for slot, inc in list(self.current.items()):
                    if inc.alive() or inc.expected_exit:
                        continue
                    if inc.ended is None and inc.kind == "asyncjobs" and inc.proc.returncode == RECYCLE_EXIT:
                        # --max-memory: it drained and deregistered itself; a process manager replaces it
                        self._ended(inc)
                        inc.how = "recycle"
                        self.recycles += 1
                        self.notes.append(f"asyncjobs worker {inc.name} recycled itself (exit {RECYCLE_EXIT})")
                    if inc.ended is None:
                        self._ended(inc)
                        inc.how = "crash"
                        self.pending_dead.append(inc)
                        if inc.kind == "stock":
                            self.stock_exits += 1
                            self._respawn_at[slot] = time.monotonic() + 1.0
                        else:
                            self.crashes.append(
                                f"asyncjobs worker {inc.name} (pid {inc.pid}) exited on its own with code "
                                f"{inc.returncode}; log tail:\n{inc.tail(15)}"
                            )
                    if time.monotonic() >= self._respawn_at.get(slot, 0.0):
                        self.spawn(slot)

    def orphans(self) -> list[psutil.Process]:
        """Processes adopted by this (subreaper) process: descendants of workers that died, e.g.
        the work-horse of a stock worker that exited while a job ran."""
        ours = {inc.pid for inc in self.incarnations} | self._baseline
        ours |= {p for p in (self.redis.pid,) if p is not None}
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return []
        return [c for c in children if c.pid not in ours]

    def wait_registered(self, incs: Sequence[Incarnation], timeout: float = 30.0) -> None:
        """Poll until each worker's ``rq:worker:<name>`` hash exists (it has connected and registered)."""
        conn = self.conn()
        deadline = time.monotonic() + timeout
        pending = [i for i in incs if i.alive()]
        while pending:
            pending = [i for i in pending if i.alive() and not conn.exists(f"rq:worker:{i.name}")]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(i.name for i in pending)
                raise RuntimeError(f"workers did not register within {timeout:.0f}s: {names}\n{pending[0].tail()}")
            time.sleep(0.05)

    def stop_all(self, timeout: float) -> list[str]:
        """Warm SIGTERM to every live worker (each registered first, so the signal finds it past its
        start-up); problems for an asyncjobs worker that does not exit in time or exits non-zero.
        The stock worker is not under test: how it exits is only noted."""
        self.wait_registered(self.all_current(), timeout=60)
        problems: list[str] = []
        with self.lock:
            live = [inc for inc in self.current.values() if inc.alive()]
            for inc in live:
                inc.expected_exit = True
                inc.how = "final"
                inc.signalled = time.time()
                inc.signal(signal.SIGTERM)
        for inc in live:
            if not self.wait_exit(inc, timeout):
                problems.append(f"{inc.kind} worker {inc.name} did not exit within {timeout:.0f}s of SIGTERM")
                inc.signal(signal.SIGKILL)
                inc.proc.wait(10)
                self._ended(inc)
            elif inc.returncode != 0 and inc.kind == "stock":
                self.notes.append(f"stock worker {inc.name} exited with code {inc.returncode} after a warm SIGTERM")
            elif inc.returncode != 0:
                problems.append(
                    f"{inc.kind} worker {inc.name} exited with code {inc.returncode} after a warm SIGTERM:\n{inc.tail(10)}"
                )
        return problems


def _become_subreaper() -> None:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``), so the work-horse of a stock
    worker that died is still ours to wait for; elsewhere it stays with init."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

