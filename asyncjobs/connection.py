"""One way to reach Redis: a URL, explicit connection values, or Sentinel; TLS and ACL on top.

:class:`RedisTarget` holds plain values (no clients, no sockets) and builds the
clients the worker needs: ``async_client()`` (``redis.asyncio``) for the event
loop and ``sync_client()`` (``redis``) for RQ's own code (job handles,
callbacks, maintenance, the scheduler).  Every place the worker connects goes
through it, so Sentinel, ``rediss://`` and ACL users work everywhere at once.

Three ways to say where Redis is, as ``rq worker`` has them:

* ``url``: ``redis://``, ``rediss://`` (TLS) or ``unix://``;
* ``sentinels`` + ``master_name``: ask Sentinel for the current master, and ask
  again whenever a connection fails or the server says it is now a replica
  (redis-py's Sentinel pools do that);
* neither: explicit connection values in ``options`` (``host``, ``port``,
  ``db``, ``unix_socket_path`` ...), like RQ's ``REDIS_HOST``/``REDIS_PORT``.

With ``cluster=True`` the URL (or ``host``/``port``) names any node of a Redis
Cluster, and every client connects to the node that owns the slot of RQ's key
prefix, following it after a failover (:mod:`asyncjobs.cluster`,
docs/rq-protocol.md §14).

``options`` are keyword arguments of ``redis.Redis`` (``username``,
``password``, ``db``, ``ssl``, ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``,
``socket_timeout`` ...) and apply on top of the URL.  ``repr()`` and
:meth:`describe` never show a password.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncjobs.redact import redact_url

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["DEFAULT_REDIS_URL", "PLAIN_OPTIONS", "RedisRefused", "RedisTarget", "RedisUnreachable", "parse_sentinels", "refusal_hint"]

#: Where Redis is when nothing says otherwise (as ``rq worker``): the one place this default is written.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# Connection values that mean the same to redis.Redis and redis.asyncio.Redis.
PLAIN_OPTIONS = frozenset(
    {
        "host", "port", "db", "username", "password", "unix_socket_path",
        "socket_timeout", "socket_connect_timeout", "socket_keepalive", "health_check_interval",
        "client_name", "protocol", "retry_on_timeout",
        "ssl", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password",
        "ssl_cert_reqs", "ssl_check_hostname", "ssl_ciphers", "ssl_min_version",
    }
)
_SECRET = frozenset({"password", "ssl_password"})


class RedisUnreachable(Exception):
    """A ``--burst`` worker could not reach Redis for ``--burst-redis-wait`` seconds: it gives up (exit 1)."""


class RedisRefused(Exception):
    """Redis refused the worker's configuration (wrong database, credentials, ACL, missing command):
    retrying cannot cure it, so the worker stops with this one-line message (exit 2)."""


#: Replies that mean "this configuration is wrong", never "the server is away": (text in the error, the fix).
_REFUSALS = (
    ("db index is out of range", "use a database number the server has (0-15 unless redis.conf sets `databases`)"),
    ("invalid db index", "use a database number the server has (0-15 unless redis.conf sets `databases`)"),
    ("wrongpass", "check the user and password (URL, --redis-username, --redis-password-file)"),
    ("invalid username-password", "check the user and password (URL, --redis-username, --redis-password-file)"),
    ("invalid password", "check the password (URL, --redis-password-file, REDIS_PASSWORD)"),
    ("noauth", "this Redis needs a password: put it in the URL or use --redis-password-file"),
    ("noperm", "grant this ACL user the commands and keys RQ needs (e.g. `+@all ~rq:*` ... see the README)"),
    ("unknown command", "this server lacks a command RQ needs: use Redis >= 6.2 (or a compatible server)"),
)


def refusal_hint(exc: BaseException) -> str | None:
    """The fix when ``exc`` is Redis refusing the configuration rather than an outage; else None."""
    import redis.exceptions as rexc

    if not isinstance(exc, rexc.RedisError):
        return None
    text = str(exc).lower()
    for needle, hint in _REFUSALS:
        if needle in text:
            return hint
    if isinstance(exc, (rexc.AuthenticationError, rexc.AuthorizationError)):
        return "check the user, password and ACL rules of this Redis"
    return None


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``"h1:26379,h2:26379"`` -> ``(("h1", 26379), ("h2", 26379))``; a clear error for anything else."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"invalid Sentinel address {item!r}: use host:port, e.g. --sentinel 10.0.0.1:26379,10.0.0.2:26379"
            )
        out.append((host, int(port)))
    if not out:
        raise ValueError(f"no Sentinel address in {text!r}: use host:port[,host:port...]")
    return tuple(out)


@dataclass(frozen=True, repr=False)
class RedisTarget:
    """Where Redis is and how to talk to it (plain values); builds sync and asyncio clients."""

    url: str | None = DEFAULT_REDIS_URL
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = "mymaster"
    options: Mapping[str, Any] = field(default_factory=dict)
    sentinel_options: Mapping[str, Any] = field(default_factory=dict)
    cluster: bool = False
    #: With ``cluster``: the key whose slot to follow; None = RQ's key prefix (RQ_KEY_PREFIX)
    slot_key: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.options) - PLAIN_OPTIONS
        if unknown:
            raise ValueError(
                f"unknown Redis connection option(s) {sorted(unknown)}: use keyword arguments of redis.Redis "
                f"({', '.join(sorted(PLAIN_OPTIONS))})"
            )
        if self.sentinels and not self.master_name:
            raise ValueError("Sentinel needs the master's name: --sentinel-master NAME (SENTINEL['MASTER_NAME'])")
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"invalid Redis URL {redact_url(self.url)!r}: it must start with redis://, rediss:// or unix://"
            )
        if self.url is not None:
            self._check_url(self.url)
        if self.cluster:
            self._check_cluster()

    @staticmethod
    def _check_url(url: str) -> None:
        from urllib.parse import urlsplit

        from redis.connection import parse_url

        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number
            parse_url(url)  # type: ignore[no-untyped-call, unused-ignore]
        except ValueError as exc:
            shown = redact_url(url)
            if shown == "***":  # masked whole because it does not parse: show it without the credentials
                scheme, _, rest = url.partition("://")
                shown = f"{scheme}://{rest.rpartition('@')[2]}"
            raise ValueError(
                f"invalid Redis URL {shown!r}: {exc}; write redis://[user:password@]host:port/db, e.g. "
                f"{DEFAULT_REDIS_URL}"
            ) from None

    def _check_cluster(self) -> None:
        from asyncjobs.protocol.rqversion import RQ_MAJOR, RQ_VERSION, hash_tag

        if self.sentinels:
            raise ValueError("--cluster and --sentinel exclude each other: a Redis Cluster fails over by itself")
        if (self.url or "").startswith("unix://") or self.options.get("unix_socket_path"):
            raise ValueError("--cluster needs a TCP address of a cluster node (redis:// or rediss://), not a unix socket")
        if self._seed_kwargs().get("db", 0) not in (0, "0"):
            raise ValueError(f"a Redis Cluster has only database 0: drop the /db from {self.describe()}")
        if self.slot_key is None:
            if RQ_MAJOR < 3:
                raise ValueError(
                    f"--cluster needs RQ 3 (installed: RQ {RQ_VERSION}), whose RQ_KEY_PREFIX can put every key "
                    "in one slot: install rq>=3,<4 and set RQ_KEY_PREFIX='{rq}'"
                )
            prefix = self.cluster_prefix()
            if hash_tag(prefix) is None:
                raise ValueError(
                    f"--cluster: RQ_KEY_PREFIX={prefix!r} has no hash tag, so RQ's keys spread over many slots: "
                    "set RQ_KEY_PREFIX to a tag such as '{rq}' (producers and workers alike)"
                )

    @staticmethod
    def cluster_prefix() -> str:
        from asyncjobs.protocol.keys import DEFAULT

        return DEFAULT.prefix

    def _seed_kwargs(self) -> dict[str, Any]:
        from redis.connection import parse_url

        kw: dict[str, Any] = {}
        if self.url is not None and not self.url.startswith("unix://"):
            parsed = parse_url(self.url)  # type: ignore[no-untyped-call, unused-ignore]
            kw = {k: v for k, v in parsed.items() if k != "connection_class"}
            if self.url.startswith("rediss://"):
                kw["ssl"] = True
        kw.update(self.options)
        return kw

    # ---------------------------------------------------------------- description
    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """Where this connects, for logs and errors (passwords masked)."""
        tls = " (TLS)" if self.options.get("ssl") else ""
        user = f" as {self.options['username']}" if self.options.get("username") else ""
        if self.sentinels:
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            db = self.options.get("db", 0)
            return f"Sentinel master {self.master_name!r} via {where} db {db}{user}{tls}"
        if self.cluster:
            seed = self._seed_kwargs()
            key = self.slot_key or self.cluster_prefix()
            return (f"Redis Cluster via {seed.get('host', 'localhost')}:{seed.get('port', 6379)}{user}{tls}, "
                    f"the node owning the slot of {key!r}")
        if self.url is not None:
            return f"{redact_url(self.url)}{user}{tls}"
        if self.options.get("unix_socket_path"):
            return f"unix://{self.options['unix_socket_path']}?db={self.options.get('db', 0)}{user}"
        return (
            f"redis://{self.options.get('host', 'localhost')}:{self.options.get('port', 6379)}/"
            f"{self.options.get('db', 0)}{user}{tls}"
        )

    def __repr__(self) -> str:
        opts = {k: ("***" if k in _SECRET and v else v) for k, v in self.options.items()}
        sopts = {k: ("***" if k in _SECRET and v else v) for k, v in self.sentinel_options.items()}
        cluster = f", cluster=True, slot_key={self.slot_key!r}" if self.cluster else ""
        return (
            f"RedisTarget(url={redact_url(self.url) if self.url else None!r}, sentinels={self.sentinels!r}, "
            f"master_name={self.master_name!r}, options={opts!r}, sentinel_options={sopts!r}{cluster})"
        )

    def slot_owner(self) -> Any:
        """The :class:`~asyncjobs.cluster.SlotOwner` of this target (one per process)."""
        from asyncjobs.cluster import SlotOwner

        seed = self._seed_kwargs()
        key = self.slot_key or self.cluster_prefix()
        address = (str(seed.get("host", "localhost")), int(seed.get("port", 6379)))
        ident = (address, key, seed.get("username"))
        with _OWNERS_LOCK:
            owner = _OWNERS.get(ident)
            if owner is None:
                owner = _OWNERS[ident] = SlotOwner([address], key, seed)
        return owner

    def _cluster_kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        kw = self._seed_kwargs()
        kw.update(overrides)
        kw.pop("db", None)
        return kw

    # ---------------------------------------------------------------- clients
    def _kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        kw = dict(self.options)
        kw.update(overrides)
        if self.url is not None and self.url.startswith("rediss://"):
            kw.pop("ssl", None)  # the scheme already says so; from_url rejects ssl=...
        return kw

    def async_client(self, **overrides: Any) -> redis.asyncio.Redis:
        """A new ``redis.asyncio.Redis`` (the caller closes it with ``aclose()``)."""
        import redis.asyncio as aredis

        if self.cluster:
            from asyncjobs.cluster import async_pool

            return aredis.Redis(connection_pool=async_pool(self.slot_owner(), self._cluster_kwargs(overrides)))
        kw = self._kwargs(overrides)
        if self.sentinels:
            from redis.asyncio.sentinel import Sentinel

            sentinel_kw = {k: v for k, v in kw.items() if k in ("socket_timeout", "socket_connect_timeout")}
            sentinel_kw.update(self.sentinel_options)
            manager = Sentinel(list(self.sentinels), sentinel_kwargs=sentinel_kw, **kw)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
            client: aredis.Redis = manager.master_for(self.master_name)
            return client
        if self.url is not None:
            return aredis.Redis.from_url(self.url, **kw)
        return aredis.Redis(**kw)

    def sync_client(self, **overrides: Any) -> redis.Redis:
        """A new synchronous ``redis.Redis`` (for RQ's own classes; the caller closes it)."""
        import redis as sync_redis

        if self.cluster:
            from asyncjobs.cluster import sync_pool

            return sync_redis.Redis(connection_pool=sync_pool(self.slot_owner(), self._cluster_kwargs(overrides)))
        kw = self._kwargs(overrides)
        if self.sentinels:
            from redis.sentinel import Sentinel

            sentinel_kw = {k: v for k, v in kw.items() if k in ("socket_timeout", "socket_connect_timeout")}
            sentinel_kw.update(self.sentinel_options)
            manager = Sentinel(list(self.sentinels), sentinel_kwargs=sentinel_kw, **kw)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
            sync_client: sync_redis.Redis = manager.master_for(self.master_name)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
            return sync_client
        if self.url is not None:
            return sync_redis.Redis.from_url(self.url, **kw)
        return sync_redis.Redis(**kw)

    # ---------------------------------------------------------------- from RQ
    @classmethod
    def from_client(cls, client: Any) -> RedisTarget:
        """The same target as an existing ``redis.Redis`` (e.g. the one ``rq worker`` built from its
        ``--url``, ``-c`` settings module or Sentinel settings), read from its connection pool."""
        pool = client.connection_pool
        conn_class = getattr(pool, "connection_class", None)
        is_ssl = conn_class is not None and any(c.__name__.endswith("SSLConnection") for c in conn_class.__mro__)
        options = _plain(pool.connection_kwargs)
        if is_ssl:
            options["ssl"] = True
        manager = getattr(pool, "sentinel_manager", None)
        if manager is not None:
            sentinels = tuple(
                (str(s.connection_pool.connection_kwargs.get("host", "localhost")),
                 int(s.connection_pool.connection_kwargs.get("port", 26379)))
                for s in manager.sentinels
            )
            options.pop("host", None)
            options.pop("port", None)
            return cls(
                url=None,
                sentinels=sentinels,
                master_name=str(pool.service_name),
                options=options,
                sentinel_options=_plain(getattr(manager, "sentinel_kwargs", None) or {}),
            )
        if "path" in pool.connection_kwargs:
            options["unix_socket_path"] = pool.connection_kwargs["path"]
        return cls(url=None, options=options)


_OWNERS: dict[tuple[Any, ...], Any] = {}
_OWNERS_LOCK = threading.Lock()


def _plain(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in PLAIN_OPTIONS and v is not None}
