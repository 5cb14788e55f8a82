"""Run workers as subprocesses, the way users run them, and poll with deadlines.

Every helper returns a :class:`WorkerProcess` handle: ``pid``, ``wait(timeout)``,
``stop()`` (SIGTERM to that PID), ``kill()`` (SIGKILL to that PID) and
``output()`` (combined stdout/stderr so far, for assertion messages).  Output
goes to a temporary file, never to a pipe, so a chatty worker cannot block.

Workers run with ``cwd`` = the project root, so ``compat.jobs.add`` is
importable exactly as an application's ``tasks.add`` is for ``rq worker``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A polled condition did not become true before its deadline."""


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``condition()`` until it returns a truthy value; return that value.

    Raises :class:`WaitTimeout` (an AssertionError, so pytest shows it as a test
    failure) naming ``message`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


class WorkerProcess:
    """A worker subprocess started by a test; stopped only by its own PID."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        self.argv = list(argv)
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="worker-", suffix=".log", delete=False
        )
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=str(cwd or PROJECT_ROOT),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for exit; on timeout, kill it and fail with its output."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WaitTimeout(
                f"worker {self.argv!r} did not exit within {timeout}s; output:\n{self.output()}"
            ) from None

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        """SIGTERM (warm shutdown), like ``kill <pid>`` or a process manager."""
        self.signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """SIGINT, like Ctrl-C."""
        self.signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        self._log.flush()
        try:
            return Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Kill if still running, reap, delete the log file."""
        self.kill()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} rc={self.proc.poll()} argv={self.argv!r}>"


def _queue_list(queues: str | Iterable[str]) -> list[str]:
    if isinstance(queues, str):
        return [queues]
    return list(queues)


def asyncjobs_worker_command() -> list[str]:
    script = BIN_DIR / "asyncjobs-worker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "asyncjobs"]


def asyncjobs_worker_available() -> bool:
    """True when ``asyncjobs-worker --help`` runs (the CLI exists and imports)."""
    try:
        result = subprocess.run(
            [*asyncjobs_worker_command(), "--help"],
            cwd=str(PROJECT_ROOT),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def run_asyncjobs_worker(
    redis_url: str, queues: str | Iterable[str], *extra_args: str, env: dict[str, str] | None = None
) -> WorkerProcess:
    """``asyncjobs-worker -u URL [extra args] QUEUE...`` (console script from the venv)."""
    argv = [*asyncjobs_worker_command(), "-u", redis_url, *extra_args, *_queue_list(queues)]
    return WorkerProcess(argv, env=env)


def rq_command() -> list[str]:
    """Stock ``rq`` (its CLI, workers and readers), run by this interpreter; see
    :mod:`tests.testsupport.stock_rq` for the one redis-py incompatibility it bounds."""
    script = Path(__file__).with_name("stock_rq.py")
    # -c keeps sys.path[0] the working directory, as the ``rq`` script's own ``--path .`` expects.
    return [sys.executable, "-c", f"import runpy, sys; sys.argv[0] = 'rq'; runpy.run_path({str(script)!r}, run_name='__main__')"]


def run_rq_worker(
    redis_url: str,
    queues: str | Iterable[str],
    *extra_args: str,
    worker_class: str | None = "rq.worker.SimpleWorker",
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Stock ``rq worker -u URL [-w CLASS] [extra args] QUEUE...``."""
    argv = [*rq_command(), "worker", "-u", redis_url]
    if worker_class:
        argv += ["-w", worker_class]
    argv += [*extra_args, *_queue_list(queues)]
    return WorkerProcess(argv, env=env)


def run_rq_worker_with_asyncjobs_class(
    redis_url: str, queues: str | Iterable[str], *extra_args: str, env: dict[str, str] | None = None
) -> WorkerProcess:
    """``rq worker -w asyncjobs.AsyncWorker ...``: RQ's own CLI driving the asyncjobs engine."""
    return run_rq_worker(redis_url, queues, *extra_args, worker_class="asyncjobs.AsyncWorker", env=env)


def run_rq_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``rq <args>`` (info, suspend, resume, requeue, ...) and return the completed process."""
    return subprocess.run(
        [*rq_command(), *args],
        cwd=str(PROJECT_ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


__all__ = [
    "PROJECT_ROOT",
    "WaitTimeout",
    "WorkerProcess",
    "asyncjobs_worker_available",
    "asyncjobs_worker_command",
    "rq_command",
    "run_asyncjobs_worker",
    "run_rq_cli",
    "run_rq_worker",
    "run_rq_worker_with_asyncjobs_class",
    "wait_for",
]
