"""The connection factory and the CLI's Redis options, against real redis-server processes.

* TLS (``rediss://`` + ``--ssl-ca-certs``) and an ACL user (``--redis-username``,
  ``--redis-password-file``) on a real TLS redis-server: the worker runs jobs,
  including a scheduled one (the scheduler's own sync connection), and never
  prints the password;
* ``RedisTarget.from_client`` rebuilds what RQ's CLI built (TLS, ACL, db);
* where Redis is comes from the same sources, in the same order, as ``rq worker``.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue

from asyncjobs.cli.rqconfig import add_connection_args, resolve_target, target_from_settings
from asyncjobs.cli.worker import build_parser, config_from_args
from asyncjobs.connection import RedisTarget, parse_sentinels
from examples.devserver import free_port, terminate
from tests.ops import jobs
from tests.testsupport.redis_server import find_redis_server
from tests.testsupport.workers import WorkerProcess, asyncjobs_worker_command, wait_for

PASSWORD = "s3cret-acl-pw"


class TlsRedis:
    """redis-server with TLS only (no plain port) and an ACL user ``alice``; default user disabled."""

    def __init__(self, tmp: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert_file, key_file = tmp / "server.pem", tmp / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [find_redis_server(), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
             "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--dir", str(tmp),
             "--user", "default", "off",
             "--user", "alice", "on", f">{PASSWORD}", "~*", "&*", "+@all"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, 15, message="TLS redis-server")

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, username="alice", password=PASSWORD, ssl_ca_certs=str(self.ca_file))

    def _up(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        terminate(self.proc)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path)
    try:
        yield server
    finally:
        server.close()


def test_worker_over_tls_with_acl_user(tls_redis: TlsRedis, tmp_path: Path) -> None:
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(PASSWORD + "\n")
    ledger = tmp_path / "ledger"
    with tls_redis.client() as conn:
        q = Queue("tls", connection=conn)
        q.enqueue(jobs.ledger, str(ledger), "now", job_id="now")
        q.enqueue_in(timedelta(seconds=1), jobs.ledger, str(ledger), "later", job_id="later")
        argv = [*asyncjobs_worker_command(), "-u", tls_redis.url, "--ssl-ca-certs", str(tls_redis.ca_file),
                "--redis-username", "alice", "--redis-password-file", str(pw_file), "--with-scheduler", "tls"]
        with WorkerProcess(argv) as worker:
            wait_for(lambda: conn.hget("rq:job:later", "status") == b"finished", 30,
                     message=lambda: f"the scheduled job to finish over TLS; output:\n{worker.output()}")
            assert conn.hget("rq:job:now", "status") == b"finished"
            worker.stop()
            assert worker.wait(30) == 0, worker.output()
            output = worker.output()
    assert sorted(ledger.read_text().split()) == ["later", "now"]
    assert f"connecting to {tls_redis.url} as alice" in output
    assert PASSWORD not in output


def test_tls_is_verified_against_the_given_ca(tls_redis: TlsRedis, tmp_path: Path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    wrong = RedisTarget(url=tls_redis.url, options={"username": "alice", "password": PASSWORD,
                                                   "ssl_ca_certs": str(other)})
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"), wrong.sync_client() as c:
        c.ping()
    bad_pw = RedisTarget(url=tls_redis.url, options={"username": "alice", "password": "nope",
                                                    "ssl_ca_certs": str(tls_redis.ca_file)})
    with pytest.raises(redis.AuthenticationError), bad_pw.sync_client() as c:
        c.ping()


async def test_async_and_sync_clients_from_one_target(tls_redis: TlsRedis) -> None:
    target = RedisTarget(url=tls_redis.url, options={"username": "alice", "password": PASSWORD,
                                                    "ssl_ca_certs": str(tls_redis.ca_file)})
    aconn = target.async_client()
    try:
        await aconn.set("k", "from-async")
    finally:
        await aconn.aclose()
    with target.sync_client() as conn:
        assert conn.get("k") == b"from-async"


def test_from_client_rebuilds_what_rq_built(tls_redis: TlsRedis) -> None:
    rq_conn = redis.Redis.from_url(
        f"rediss://alice:{PASSWORD}@127.0.0.1:{tls_redis.port}/3", ssl_ca_certs=str(tls_redis.ca_file)
    )
    target = RedisTarget.from_client(rq_conn)
    assert target.options["ssl"] is True and target.options["username"] == "alice" and target.options["db"] == 3
    assert PASSWORD not in repr(target) and PASSWORD not in target.describe()
    with target.sync_client() as conn:
        conn.set("db3", "yes")
    with rq_conn:
        assert rq_conn.get("db3") == b"yes"


# ---------------------------------------------------------------------- precedence, as rq worker


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_connection_args(p)
    return p.parse_args(list(argv))


def test_precedence_url_then_settings_then_environment() -> None:
    env = {"REDIS_URL": "redis://env-host:6379/1"}
    settings = {"REDIS_URL": "redis://settings-host:6379/2"}
    assert resolve_target(_args("-u", "redis://flag-host/3"), settings, env).url == "redis://flag-host/3"
    assert resolve_target(_args(), settings, env).url == "redis://settings-host:6379/2"
    assert resolve_target(_args(), None, env).url == "redis://env-host:6379/1"
    assert resolve_target(_args(), None, {"RQ_REDIS_URL": "redis://rq-env/0"}).url == "redis://rq-env/0"
    assert resolve_target(_args(), None, {}).url == "redis://localhost:6379/0"
    # rq: a settings module without REDIS_URL/SENTINEL means REDIS_HOST & co (defaults), not the env.
    from_settings = resolve_target(_args(), {"REDIS_HOST": "h", "REDIS_PORT": 7000, "REDIS_DB": 4}, env)
    assert from_settings.url is None and from_settings.options == {"host": "h", "port": 7000, "db": 4}
    from_env = resolve_target(_args(), None, {"REDIS_HOST": "eh", "REDIS_PASSWORD": "pw"})
    assert from_env.options["host"] == "eh" and "pw" not in repr(from_env)


def test_settings_sentinel_dict_as_stock() -> None:
    target = target_from_settings({
        "SENTINEL": {"INSTANCES": [("10.0.0.1", 26379), ("10.0.0.2", 26380)], "MASTER_NAME": "jobs", "DB": 2,
                     "PASSWORD": "pw", "SOCKET_TIMEOUT": 3, "SENTINEL_KWARGS": {"password": "spw"}},
    })
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert target.master_name == "jobs"
    assert target.options == {"db": 2, "password": "pw", "socket_timeout": 3}
    assert target.sentinel_options == {"password": "spw"}
    assert "pw" not in repr(target).replace("password", "")
    with pytest.raises(ValueError, match="INSTANCES"):
        target_from_settings({"SENTINEL": {"INSTANCES": ["10.0.0.1"]}})


def test_cli_sentinel_flags_and_errors(tmp_path: Path) -> None:
    t = resolve_target(_args("--sentinel", "a:26379,b:26380", "--sentinel-master", "jobs", "--db", "1"), None, {})
    assert t.sentinels == (("a", 26379), ("b", 26380)) and t.master_name == "jobs" and t.options["db"] == 1
    with pytest.raises(ValueError, match="either --url or --sentinel"):
        resolve_target(_args("-u", "redis://x", "--sentinel", "a:1"), None, {})
    with pytest.raises(ValueError, match="'a:b'"):
        parse_sentinels("a:b")
    with pytest.raises(ValueError, match="use rediss://"):
        resolve_target(_args("-u", "redis://x", "--ssl-cert-reqs", "none"), None, {})
    with pytest.raises(ValueError, match="missing-pw"):
        resolve_target(_args("--redis-password-file", str(tmp_path / "missing-pw")), None, {})
    with pytest.raises(ValueError, match=r"ca\.pem"):
        resolve_target(_args("-u", "rediss://x", "--ssl-ca-certs", str(tmp_path / "ca.pem")), None, {})
    with pytest.raises(ValueError, match="http://x"):
        RedisTarget(url="http://x")


def test_worker_flags_settings_and_c_compatibility() -> None:
    p = build_parser()
    args = p.parse_args(["-c", "50", "emails"])  # the old meaning of -c: a number is --concurrency
    assert args.concurrency == 50 and args.config is None
    args = p.parse_args(["-c", "myapp.rq_settings"])
    assert args.config == "myapp.rq_settings" and args.concurrency == 10
    settings = {"QUEUES": ["high", "low"], "NAME": "from-settings", "REDIS_URL": "redis://s:6379/0"}
    config = config_from_args(p.parse_args([]), settings)
    assert config.queues == ("high", "low") and config.name == "from-settings"
    assert config.connection.url == "redis://s:6379/0"
    config = config_from_args(p.parse_args(["-n", "flag", "only"]), settings)
    assert config.queues == ("only",) and config.name == "flag"
    default_name = config_from_args(p.parse_args(["--concurrency", "25"]), None).name
    assert default_name is not None and default_name.startswith("asyncjobs-c25-")


def test_password_never_in_worker_config_repr(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2-secret")
    config = config_from_args(build_parser().parse_args(["--redis-password-file", str(pw)]), None)
    assert config.connection.options["password"] == "hunter2-secret"
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in config.connection.describe()
