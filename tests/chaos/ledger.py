"""The side-effect ledger: one line per event, appended to a file outside Redis.

Jobs write ``B`` when an execution begins, then ``E`` when its side effect is
done (the last thing before returning) or ``X`` just before a planned failure
is raised.  Each line carries the execution's own random token, the process id
and a wall-clock time::

    B <job key> <token> <pid> <unix time>

Appends are single ``write()`` calls on an ``O_APPEND`` descriptor, so lines
from concurrent threads and processes (asyncjobs workers, stock work-horses)
never interleave, and a line written before a SIGKILL is kept.  The ledger
lives outside the Redis under test, so a Redis restart or a faulty proxy
cannot change the count.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ENV = "CHAOS_LEDGER"

_fd: int | None = None
_fd_path: str | None = None
_fd_pid = 0  # a forked work-horse opens its own descriptor
_lock = threading.Lock()


def write(kind: str, key: str, token: str) -> None:
    """Append one event (``kind`` is B, E or X) for job ``key``, execution ``token``."""
    path = os.environ.get(ENV)
    if not path:
        raise RuntimeError(f"${ENV} is not set: chaos jobs need the path of the ledger file")
    if _fd is None or _fd_path != path or _fd_pid != os.getpid():
        with _lock:
            _open(path)
    assert _fd is not None
    os.write(_fd, f"{kind} {key} {token} {os.getpid()} {time.time():.6f}\n".encode())


def _open(path: str) -> None:
    global _fd, _fd_path, _fd_pid
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _fd_path = path
    _fd_pid = os.getpid()


@dataclass
class Execution:
    """One run of a job's function, as seen in the ledger."""

    key: str
    token: str
    pid: int
    began: float
    end: str | None = None  # "E" (side effect done) | "X" (planned failure raised) | None
    ended: float | None = None


@dataclass
class Ledger:
    executions: dict[str, list[Execution]] = field(default_factory=lambda: defaultdict(list))
    malformed: list[str] = field(default_factory=list)

    def of(self, key: str) -> list[Execution]:
        return self.executions.get(key, [])

    def effects(self, key: str) -> int:
        return sum(1 for e in self.of(key) if e.end == "E")

    def raised(self, key: str) -> int:
        return sum(1 for e in self.of(key) if e.end == "X")

    def runs(self, key: str) -> int:
        return len(self.of(key))

    def by_pid(self, pid: int) -> Iterable[Execution]:
        for execs in self.executions.values():
            for e in execs:
                if e.pid == pid:
                    yield e


def read(path: Path) -> Ledger:
    """Parse a ledger file; a line that does not parse is kept in ``malformed`` (a harness bug)."""
    ledger = Ledger()
    by_token: dict[str, Execution] = {}
    if not path.exists():
        return ledger
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("B", "E", "X"):
            ledger.malformed.append(line)
            continue
        kind, key, token, pid, at = parts
        if kind == "B":
            ex = Execution(key, token, int(pid), float(at))
            by_token[token] = ex
            ledger.executions[key].append(ex)
            continue
        found = by_token.get(token)
        if found is None or found.end is not None:
            ledger.malformed.append(line)
            continue
        found.end, found.ended = kind, float(at)
    return ledger


class Tail:
    """Follows a ledger file as it grows: which executions have begun and not yet ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""
        self.open: dict[str, dict[str, float]] = defaultdict(dict)  # job key -> {token: began}

    def poll(self) -> dict[str, dict[str, float]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.open
        self._offset += len(data)
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()  # an incomplete last line waits for the next poll
        for raw in lines:
            parts = raw.decode(errors="replace").split()
            if len(parts) != 5:
                continue
            kind, key, token, _, at = parts
            if kind == "B":
                self.open[key][token] = float(at)
            else:
                self.open[key].pop(token, None)
                if not self.open[key]:
                    del self.open[key]
        return self.open
