"""Stopping the processes tests start, by PID, politely first."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; no-op if it already exited."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
