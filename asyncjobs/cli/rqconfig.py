"""Connection and settings-module options shared by ``asyncjobs-worker`` and its ``info``/``check``.

Where Redis is, with ``rq worker``'s precedence (rq/cli/helpers.py, rq/cli/cli.py):

1. ``-u/--url`` (or ``$RQ_REDIS_URL``), or ``--sentinel host:port,... --sentinel-master NAME``;
2. else the ``-c/--config`` settings module: ``REDIS_URL``, else ``SENTINEL`` (a dict as stock:
   ``INSTANCES``, ``MASTER_NAME``, ``DB``, ``USERNAME``, ``PASSWORD``, ``SOCKET_TIMEOUT``, ``SSL``,
   ``CONNECTION_KWARGS``, ``SENTINEL_KWARGS``), else ``REDIS_HOST``/``REDIS_PORT``/``REDIS_DB``/
   ``REDIS_PASSWORD``/``REDIS_SSL*`` with their defaults;
3. else the environment: ``REDIS_URL``, else the same ``REDIS_*`` variables, else localhost:6379/0.

The TLS and ACL flags (``--ssl-*``, ``--redis-username``, ``--redis-password-file``) apply on
top of whichever source won.  Passwords are read from files, never from the command line
(where ``ps`` would show them).
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Mapping
from typing import Any

from asyncjobs.connection import DEFAULT_REDIS_URL, RedisTarget, parse_sentinels

__all__ = [
    "add_connection_args",
    "read_settings_module",
    "resolve_target",
    "target_from_settings",
]

_CERT_REQS = ("required", "optional", "none")


def add_connection_args(p: argparse.ArgumentParser, *, config_short: bool = True) -> None:
    g = p.add_argument_group("Redis connection (precedence as `rq worker`: --url/--sentinel, -c settings, env)")
    g.add_argument("--url", "-u", default=None,
                   help="Redis URL: redis://, rediss:// (TLS) or unix:// (default: -c settings, $REDIS_URL, "
                        f"{DEFAULT_REDIS_URL})")
    if config_short:
        g.add_argument("--config", default=None, metavar="MODULE",
                       help="RQ settings module (REDIS_URL, SENTINEL, REDIS_HOST..., QUEUES, NAME, DICT_CONFIG), "
                            "as `rq worker -c`; default $RQ_CONFIG")
    else:
        g.add_argument("--config", "-c", default=None, metavar="MODULE",
                       help="RQ settings module, as `rq -c` (default $RQ_CONFIG)")
    g.add_argument("--sentinel", default=None, metavar="HOST:PORT,...", help="Redis Sentinel addresses")
    g.add_argument("--sentinel-master", default=None, metavar="NAME",
                   help="name of the master the sentinels monitor (default mymaster)")
    g.add_argument("--sentinel-username", default=None, help="ACL user for the sentinels themselves")
    g.add_argument("--sentinel-password-file", default=None, metavar="FILE",
                   help="file holding the sentinels' own password")
    g.add_argument("--db", type=int, default=None, help="database number (with --sentinel; default 0)")
    g.add_argument("--cluster", action="store_true",
                   help="the URL names a node of a Redis Cluster: use the node that owns the slot of RQ's key "
                        "prefix (RQ 3's RQ_KEY_PREFIX, a hash tag such as {rq}) and follow it after failovers")
    g.add_argument("--redis-username", default=None, help="Redis ACL user")
    g.add_argument("--redis-password-file", default=None, metavar="FILE",
                   help="file holding the Redis password (or put it in the URL / settings module)")
    g.add_argument("--ssl", action="store_true", help="TLS to Redis (implied by rediss://)")
    g.add_argument("--ssl-ca-certs", default=None, metavar="FILE", help="CA bundle to verify the server with")
    g.add_argument("--ssl-certfile", default=None, metavar="FILE", help="client certificate (mutual TLS)")
    g.add_argument("--ssl-keyfile", default=None, metavar="FILE", help="client private key (mutual TLS)")
    g.add_argument("--ssl-cert-reqs", default=None, choices=_CERT_REQS,
                   help="server certificate check (default required)")


def read_settings_module(name: str) -> dict[str, Any]:
    """All UPPERCASE names of a settings module, as ``rq -c`` reads them."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import settings module {name!r} (-c/--config): {exc}; give a dotted module name "
            "importable from the working directory or --path, e.g. -c myapp.rq_settings"
        ) from None
    return {k: v for k, v in vars(module).items() if k.upper() == k and not k.startswith("_")}


def _read_secret(path: str, flag: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {flag} {path!r}: {exc.strerror}; give a readable file") from None


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("y", "yes", "t", "true", "1"):
        return True
    if text in ("n", "no", "f", "false", "0", ""):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def target_from_settings(settings: Mapping[str, Any], *, allow_sentinel: bool = True) -> RedisTarget:
    """RQ's ``get_redis_from_config`` as plain values: REDIS_URL, else SENTINEL, else REDIS_HOST & co."""
    if settings.get("REDIS_URL"):
        return RedisTarget(url=str(settings["REDIS_URL"]))
    sentinel = settings.get("SENTINEL") if allow_sentinel else None
    if sentinel is not None:
        if not isinstance(sentinel, Mapping):
            raise ValueError(f"SENTINEL must be a dict like stock RQ's, got {type(sentinel).__name__}")
        instances = sentinel.get("INSTANCES", [("localhost", 26379)])
        try:
            sentinels = tuple((str(h), int(p)) for h, p in instances)
        except (TypeError, ValueError):
            raise ValueError(
                f"SENTINEL['INSTANCES'] must be a list of (host, port) pairs, got {instances!r}"
            ) from None
        options: dict[str, Any] = {
            "db": int(sentinel.get("DB", 0)),
            "username": sentinel.get("USERNAME"),
            "password": sentinel.get("PASSWORD"),
            "socket_timeout": sentinel.get("SOCKET_TIMEOUT"),
            "ssl": _bool(sentinel.get("SSL", False), "SENTINEL['SSL']"),
        }
        options.update(dict(sentinel.get("CONNECTION_KWARGS", {}) or {}))
        return RedisTarget(
            url=None,
            sentinels=sentinels,
            master_name=str(sentinel.get("MASTER_NAME", "mymaster")),
            options={k: v for k, v in options.items() if v is not None and not (k == "ssl" and v is False)},
            sentinel_options=dict(sentinel.get("SENTINEL_KWARGS", {}) or {}),
        )
    ssl = _bool(settings.get("REDIS_SSL", False), "REDIS_SSL")
    options = {
        "host": settings.get("REDIS_HOST", "localhost"),
        "port": int(settings.get("REDIS_PORT", 6379)),
        "db": int(settings.get("REDIS_DB", 0)),
        "password": settings.get("REDIS_PASSWORD"),
    }
    if ssl:
        options.update(
            ssl=True,
            ssl_ca_certs=settings.get("REDIS_SSL_CA_CERTS"),
            ssl_cert_reqs=settings.get("REDIS_SSL_CERT_REQS", "required"),
            ssl_ca_data=settings.get("REDIS_SSL_CA_DATA"),
            ssl_keyfile=settings.get("REDIS_SSL_KEYFILE"),
            ssl_certfile=settings.get("REDIS_SSL_CERTFILE"),
        )
    return RedisTarget(url=None, options={k: v for k, v in options.items() if v is not None})


def resolve_target(
    args: argparse.Namespace, settings: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> RedisTarget:
    """The Redis target from the flags, the settings module and the environment (module docstring)."""
    env = os.environ if environ is None else environ
    url = args.url or env.get("RQ_REDIS_URL") or None
    if url and args.sentinel:
        raise ValueError("give either --url or --sentinel, not both")
    if args.sentinel:
        target = RedisTarget(
            url=None,
            sentinels=parse_sentinels(args.sentinel),
            master_name=args.sentinel_master or "mymaster",
            options={"db": args.db or 0},
        )
    elif args.sentinel_master:
        raise ValueError("--sentinel-master needs --sentinel host:port[,host:port...]")
    elif url:
        target = RedisTarget(url=url)
    elif settings is not None:
        target = target_from_settings(settings)
    elif env.get("REDIS_URL"):
        target = RedisTarget(url=env["REDIS_URL"])
    elif any(k in env for k in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_SSL")):
        target = target_from_settings(env, allow_sentinel=False)
    else:
        target = RedisTarget(url=DEFAULT_REDIS_URL)
    return _with_overrides(target, args)


def _with_overrides(target: RedisTarget, args: argparse.Namespace) -> RedisTarget:
    options = dict(target.options)
    if args.db is not None and not target.is_sentinel:
        options["db"] = args.db
    if args.redis_username:
        options["username"] = args.redis_username
    if args.redis_password_file:
        options["password"] = _read_secret(args.redis_password_file, "--redis-password-file")
    tls_files = {
        "ssl_ca_certs": args.ssl_ca_certs, "ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile,
    }
    for key, path in tls_files.items():
        if path is not None:
            if not os.path.isfile(os.path.expanduser(path)):
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{flag} {path!r}: no such file; give the path of a PEM file")
            options[key] = os.path.expanduser(path)
    if args.ssl_cert_reqs is not None:
        options["ssl_cert_reqs"] = args.ssl_cert_reqs
    wants_tls = args.ssl or any(v is not None for v in tls_files.values()) or args.ssl_cert_reqs is not None
    if wants_tls:
        if target.url is not None and target.url.startswith("redis://"):
            raise ValueError(
                f"TLS options were given but the URL is plain {target.describe()!r}: use rediss:// for TLS"
            )
        if target.url is None:
            options["ssl"] = True
    sentinel_options = dict(target.sentinel_options)
    if args.sentinel_username:
        sentinel_options["username"] = args.sentinel_username
    if args.sentinel_password_file:
        sentinel_options["password"] = _read_secret(args.sentinel_password_file, "--sentinel-password-file")
    return RedisTarget(
        url=target.url,
        sentinels=target.sentinels,
        master_name=target.master_name,
        options=options,
        sentinel_options=sentinel_options,
        cluster=bool(getattr(args, "cluster", False)),
        # With --key-prefix, the supervisor follows the first prefix's slot (each child its own).
        slot_key=(getattr(args, "key_prefix", None) or [None])[0] if getattr(args, "cluster", False) else None,
    )
