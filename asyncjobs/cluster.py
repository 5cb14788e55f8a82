"""Redis Cluster: plain connections to the node that owns the key prefix's slot, following it.

RQ 3 runs on a Redis Cluster when ``RQ_KEY_PREFIX`` is a hash tag such as ``{rq}``: every key
then hashes to one slot, and every process talks to the node that owns that slot over a plain
connection (redis-py's ``RedisCluster`` client does not work with RQ; docs/rq-protocol.md §14).
This module gives the worker such connections, for its own event loop and for RQ's code alike:

* :class:`SlotOwner` knows the slot and the cluster's nodes (seeded from the URL, then learned
  from ``CLUSTER SLOTS``) and which node owns the slot now;
* the connection classes ask it where to connect, each time they (re)connect, and turn a cluster
  redirection (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) into a ``ConnectionError`` after
  noting the new owner.  So after a failover or a resharding the command fails once, as a brief
  outage would, and the caller's usual retry reaches the new owner: the worker backs off and
  re-sends (every script it sends is safe to repeat, docs/rq-protocol.md §11.1-§11.2), RQ's own
  code (maintenance, the scheduler) gets redis-py's retry or tries again next round.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, TryAgainError
from redis.retry import Retry as SyncRetry

__all__ = ["REDIRECTIONS", "SlotOwner", "async_pool", "parse_cluster_slots", "sync_pool"]

#: Replies meaning "not here, or not now": the slot moved, is moving, or the cluster is failing over.
REDIRECTIONS = (AskError, TryAgainError, ClusterDownError)  # MovedError is an AskError

#: Options of the short-lived connections that ask a node who owns the slot.
_DISCOVERY_OPTIONS = frozenset({"username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                                "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_data", "ssl_ca_path",
                                "ssl_password"})
_DISCOVERY_TIMEOUT = 2.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_cluster_slots(reply: Any, slot: int) -> tuple[tuple[str, int] | None, list[tuple[str, int]]]:
    """The master owning ``slot`` in a ``CLUSTER SLOTS`` reply (None if no range covers it), and
    every node the reply names."""
    owner: tuple[str, int] | None = None
    nodes: list[tuple[str, int]] = []
    for entry in reply or []:
        start, end, *members = entry
        for i, member in enumerate(members):
            host, port = _text(member[0]), int(member[1])
            if not host:
                continue  # a node that does not know its own address yet
            nodes.append((host, port))
            if i == 0 and int(start) <= slot <= int(end):
                owner = (host, port)
    return owner, nodes


class SlotOwner:
    """The node that owns one hash slot, found from the cluster's own view (``CLUSTER SLOTS``).

    Shared by every connection of a process (sync and asyncio alike); safe from threads.
    """

    def __init__(self, seeds: Iterable[tuple[str, int]], slot_key: str, options: Mapping[str, Any] | None = None):
        self.slot = key_slot(slot_key.encode())
        self.slot_key = slot_key
        self.nodes: list[tuple[str, int]] = list(dict.fromkeys(seeds))
        if not self.nodes:
            raise ValueError("a Redis Cluster needs at least one node address")
        self.options = {k: v for k, v in (options or {}).items() if k in _DISCOVERY_OPTIONS and v is not None}
        self._owner: tuple[str, int] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SlotOwner(slot={self.slot}, owner={self._owner}, nodes={self.nodes})"

    @property
    def current(self) -> tuple[str, int] | None:
        return self._owner

    def moved(self, host: str, port: int) -> None:
        """A node answered that the slot is now served at ``host:port``."""
        with self._lock:
            self._owner = (host, port)
            if (host, port) not in self.nodes:
                self.nodes.append((host, port))

    def forget(self, owner: tuple[str, int] | None = None) -> None:
        """The owner did not answer: ask the cluster again before the next connection."""
        with self._lock:
            if owner is None or self._owner == owner:
                self._owner = None

    def _learned(self, owner: tuple[str, int] | None, nodes: list[tuple[str, int]]) -> tuple[str, int] | None:
        with self._lock:
            for node in nodes:
                if node not in self.nodes:
                    self.nodes.append(node)
            if owner is not None:
                self._owner = owner
            return self._owner

    def _candidates(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.nodes)

    def _no_owner(self, errors: list[str]) -> redis.exceptions.ConnectionError:
        hint = ""
        if errors and all("cluster support disabled" in e for e in errors):
            hint = " (not a Redis Cluster: drop --cluster, or give the address of a cluster node)"
        return redis.exceptions.ConnectionError(
            f"no Redis Cluster node owns slot {self.slot} (of {self.slot_key!r}) right now{hint}; asked "
            + "; ".join(errors or ["nobody"])
        )

    # -------------------------------------------------------------- discovery
    def resolve(self) -> tuple[str, int]:
        """The owner's address, asking the nodes (blocking, short timeouts) when it is not known."""
        owner = self._owner
        if owner is not None:
            return owner
        errors: list[str] = []
        for host, port in self._candidates():
            client = redis.Redis(host=host, port=port, socket_timeout=_DISCOVERY_TIMEOUT,
                                 socket_connect_timeout=_DISCOVERY_TIMEOUT, retry=SyncRetry(NoBackoff(), 0),
                                 **self.options)
            try:
                found, nodes = parse_cluster_slots(client.execute_command("CLUSTER", "SLOTS"), self.slot)  # type: ignore[no-untyped-call, unused-ignore]
            except redis.exceptions.RedisError as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            finally:
                client.close()
            if found is not None:
                return self._learned(found, nodes) or found
            errors.append(f"{host}:{port}: slot {self.slot} not served")
        raise self._no_owner(errors)

    async def aresolve(self) -> tuple[str, int]:
        """:meth:`resolve` for the event loop."""
        owner = self._owner
        if owner is not None:
            return owner
        errors: list[str] = []
        for host, port in self._candidates():
            client = aredis.Redis(host=host, port=port, socket_timeout=_DISCOVERY_TIMEOUT,
                                  socket_connect_timeout=_DISCOVERY_TIMEOUT, retry=AsyncRetry(NoBackoff(), 0),
                                  **self.options)
            try:
                reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call, unused-ignore]
                found, nodes = parse_cluster_slots(reply, self.slot)
            except redis.exceptions.RedisError as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await client.aclose()
            if found is not None:
                return self._learned(found, nodes) or found
            errors.append(f"{host}:{port}: slot {self.slot} not served")
        raise self._no_owner(errors)

    def redirected(self, exc: Exception) -> redis.exceptions.ConnectionError:
        """What a redirection reply becomes: a ConnectionError, after noting where the slot went."""
        if isinstance(exc, AskError):  # MOVED (or ASK: the slot is migrating there)
            self.moved(exc.host, exc.port)
        else:
            self.forget()
        return redis.exceptions.ConnectionError(f"Redis Cluster slot {self.slot}: {exc}")


class _SyncFollow:
    """Mixin for ``redis.connection.Connection`` (and its TLS variant)."""

    owner: SlotOwner

    def __init__(self, *args: Any, slot_owner: SlotOwner, **kwargs: Any) -> None:
        self.owner = slot_owner
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        self.host, self.port = self.owner.resolve()
        try:
            return super()._connect()  # type: ignore[misc]
        except OSError:
            self.owner.forget((self.host, self.port))
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except REDIRECTIONS as exc:
            self.disconnect()  # type: ignore[attr-defined]
            raise self.owner.redirected(exc) from exc


class _AsyncFollow:
    """Mixin for ``redis.asyncio.connection.Connection`` (and its TLS variant)."""

    owner: SlotOwner

    def __init__(self, *args: Any, slot_owner: SlotOwner, **kwargs: Any) -> None:
        self.owner = slot_owner
        super().__init__(*args, **kwargs)

    async def _connect(self) -> Any:
        self.host, self.port = await self.owner.aresolve()
        try:
            return await super()._connect()  # type: ignore[misc]
        except OSError:
            self.owner.forget((self.host, self.port))
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except REDIRECTIONS as exc:
            await self.disconnect()  # type: ignore[attr-defined]
            raise self.owner.redirected(exc) from exc


class SlotOwnerConnection(_SyncFollow, redis.connection.Connection):
    pass


class SlotOwnerSSLConnection(_SyncFollow, redis.connection.SSLConnection):
    pass


class AsyncSlotOwnerConnection(_AsyncFollow, aredis.connection.Connection):
    pass


class AsyncSlotOwnerSSLConnection(_AsyncFollow, aredis.connection.SSLConnection):
    pass


def sync_pool(owner: SlotOwner, kwargs: Mapping[str, Any]) -> redis.ConnectionPool:
    """A connection pool whose connections go to ``owner``'s node (``kwargs``: ``redis.Redis`` options)."""
    kw = dict(kwargs)
    cls = SlotOwnerSSLConnection if kw.pop("ssl", False) else SlotOwnerConnection
    kw.pop("host", None)
    kw.pop("port", None)
    return redis.ConnectionPool(connection_class=cls, slot_owner=owner, **kw)


def async_pool(owner: SlotOwner, kwargs: Mapping[str, Any]) -> aredis.ConnectionPool:
    """:func:`sync_pool` for ``redis.asyncio``."""
    kw = dict(kwargs)
    cls = AsyncSlotOwnerSSLConnection if kw.pop("ssl", False) else AsyncSlotOwnerConnection
    kw.pop("host", None)
    kw.pop("port", None)
    return aredis.ConnectionPool(connection_class=cls, slot_owner=owner, **kw)
