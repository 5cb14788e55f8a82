"""Issue 18 items 1-3: hostile job data fails its own job, readably; it never crashes, stalls or changes the worker.

Each scenario runs a real ``asyncjobs-worker`` subprocess on a real Redis, with
ordinary jobs beside the hostile ones: the worker lives, the hostile job fails
with a reason naming the bound, the others finish, SIGTERM ends the worker.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job

from asyncjobs.protocol.serializers import PickleSerializer, RestrictedPickleSerializer
from tests.security import jobs
from tests.security.test_allow_module import (
    ALLOW,
    _data_tuple,
    _enqueue_raw,
    _failed,
    _str,
)
from tests.testsupport.workers import asyncjobs_worker_command, run_asyncjobs_worker, wait_for


def _ended(conn: redis.Redis, *job_ids: str) -> bool:
    return all(conn.hget(f"rq:job:{j}", "status") in (b"finished", b"failed") for j in job_ids)


def _run_until_ended(url: str, conn: redis.Redis, job_ids: list[str], *args: str) -> str:
    """A long-running worker (not burst): it must still be alive once every job has ended, and stop on SIGTERM."""
    with run_asyncjobs_worker(url, "default", "--concurrency", "8", *args) as proc:
        wait_for(lambda: _ended(conn, *job_ids) or not proc.is_running(), 60, message=proc.output)
        assert proc.is_running(), f"the worker died:\n{proc.output()}"
        proc.stop()
        assert proc.wait(30) == 0, proc.output()
        output = proc.output()
    assert "maintenance pass failed" not in output and "Exception in callback" not in output, output
    return output


def _call(module: str, qualname: str, *arg_opcodes: bytes) -> bytes:
    """Opcodes for ``module.qualname(*args)`` (protocol 4 names)."""
    return _str(module) + _str(qualname) + b"\x93" + b"(" + b"".join(arg_opcodes) + b"t" + b"R"


@pytest.mark.parametrize("restricted", [True, False], ids=["allow-module", "plain-pickle"])
def test_deeply_nested_dict_key_fails_alone(restricted: bool, redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 1: ``{((((None,),),)...): 1}``, 200,000 deep, crashed CPython in ``tuplehash`` (SIGSEGV)."""
    q = Queue("default", connection=sync_redis)
    naps = [q.enqueue(jobs.nap, 1.0).id for _ in range(4)]
    deep_key = b"}N" + b"\x85" * 200_000 + b"K\x01s"
    poison = _enqueue_raw(sync_redis, _data_tuple("tests.security.jobs.echo", deep_key))
    assert len(sync_redis.hget(f"rq:job:{poison}", "data") or b"") < 1024
    # job.meta is unpickled inside the worker too (here by the job itself); RQ leaves unreadable meta undecoded
    meta = q.enqueue(jobs.read_meta).id
    sync_redis.hset(f"rq:job:{meta}", "meta", b"\x80\x04" + deep_key + b".")
    after = [q.enqueue(jobs.add, i, 1).id for i in range(4)]

    _run_until_ended(redis_url, sync_redis, [*naps, poison, meta, *after], *(ALLOW if restricted else ()))

    _failed(sync_redis, poison, "DeserializationError", "nested deeper than 200 levels")
    assert [Job.fetch(j, connection=sync_redis).return_value() for j in naps + after] == [1.0] * 4 + [1, 2, 3, 4]
    # (stock RQ's own pickle.loads of that meta would crash this test process: read it through the bounds)
    assert Job.fetch(meta, connection=sync_redis, serializer=PickleSerializer()).return_value() == "['unserialized']"


def test_allowed_types_composed_into_bombs_are_refused(redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 2: safe value types composed so that building them never ends (the event loop stopped)."""
    bombs = {
        "int-of-decimal": _call("builtins", "int", _call("decimal", "Decimal", _str("1e1000000"))),
        "int-of-small-decimal": _call("builtins", "int", _call("decimal", "Decimal", _str("1e400"))),
        "deque-of-ipv6": _call("collections", "deque", _call("ipaddress", "IPv6Network", _str("::/0")), b"K\x00"),
        "list-of-ipv4": _call("builtins", "list", _call("ipaddress", "IPv4Network", _str("0.0.0.0/0"))),
        "fraction-exponent": _call("fractions", "Fraction", _str("1e-100000000")),
    }
    q = Queue("default", connection=sync_redis)
    naps = [q.enqueue(jobs.nap, 1.0).id for _ in range(2)]
    ids = {name: _enqueue_raw(sync_redis, _data_tuple("tests.security.jobs.echo", ops)) for name, ops in bombs.items()}
    after = q.enqueue(jobs.add, 20, 22).id

    _run_until_ended(redis_url, sync_redis, [*naps, *ids.values(), after], *ALLOW)

    _failed(sync_redis, ids["int-of-decimal"], "decimal.Decimal with more than 4300 digits", "Pass such numbers")
    _failed(sync_redis, ids["int-of-small-decimal"], "object made by decimal.Decimal to builtins.int", "literal")
    _failed(sync_redis, ids["deque-of-ipv6"], "object made by ipaddress.IPv6Network to collections.deque")
    _failed(sync_redis, ids["list-of-ipv4"], "object made by ipaddress.IPv4Network to builtins.list")
    _failed(sync_redis, ids["fraction-exponent"], "fractions.Fraction with more than 4300 digits")
    assert [Job.fetch(j, connection=sync_redis).return_value() for j in [*naps, after]] == [1.0, 1.0, 42]


def test_build_cannot_change_allowed_functions_or_shared_objects(redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 3: BUILD on a function, a module-level object or a class changed them for every later job."""
    kwdefaults = _str("tests.security.jobs") + _str("greet") + b"\x93" + b"N}" + _str("__kwdefaults__") + (
        b"}" + _str("greeting") + _str("attacker") + b"s") + b"s\x86b"  # BUILD (None, {"__kwdefaults__": {...}})
    shared = _str("tests.security.jobs") + _str("SETTINGS") + b"\x93" + b"}" + _str("mask") + b"\x89sb"
    klass = _str("tests.security.jobs") + _str("Settings") + b"\x93" + b"N}" + _str("mask") + b"\x89s\x86b"
    hostile = {
        name: _enqueue_raw(sync_redis, _data_tuple("tests.security.jobs.echo", ops))
        for name, ops in (("greet", kwdefaults), ("SETTINGS", shared), ("Settings", klass))
    }
    # ... each ran alone, first, with one job slot; the jobs after them see the module as it was
    q = Queue("default", connection=sync_redis)
    greet, mask = q.enqueue(jobs.greet).id, q.enqueue(jobs.settings_mask).id
    legit = q.enqueue(jobs.echo, jobs.Greeter("hey")).id  # an instance of an allowed class is still built

    with run_asyncjobs_worker(redis_url, "default", "--burst", "--concurrency", "1", *ALLOW) as proc:
        assert proc.wait(60) == 0, proc.output()

    for name, job_id in hostile.items():
        _failed(sync_redis, job_id, "DeserializationError", "which the job data did not create", f"tests.security.jobs.{name}")
    assert Job.fetch(greet, connection=sync_redis).return_value() == "hello"
    assert Job.fetch(mask, connection=sync_redis).return_value() == (True, True)
    assert Job.fetch(legit, connection=sync_redis).return_value().greeting == "hey"


def test_plain_pickle_payloads_round_trip_unchanged() -> None:
    """The bounds do not change what an ordinary payload decodes to (plain and restricted)."""
    value = ("tests.security.jobs.echo", None, ([{"k": (1, 2.5, "x")}] * 3, jobs.Greeter("hi")), {"n": 10**300})
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    for serializer in (PickleSerializer(), RestrictedPickleSerializer(["tests.security.jobs"])):
        got = serializer.loads(zlib.decompress(zlib.compress(data)))
        assert got[0] == value[0] and got[2][0] == value[2][0] and got[2][1].greeting == "hi" and got[3] == value[3]


def test_job_raising_systemexit_or_keyboardinterrupt_fails_alone(redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 9: a job's sys.exit() (sync: the worker exited 3) or KeyboardInterrupt fails only that job, as stock."""
    q = Queue("default", connection=sync_redis)
    naps = [q.enqueue(jobs.nap, 1.0).id for _ in range(3)]
    exits = {
        "SystemExit: 2": q.enqueue(jobs.exit_sync, 2).id,
        "SystemExit: 3": q.enqueue(jobs.exit_async, 3).id,
        "KeyboardInterrupt": q.enqueue(jobs.interrupt_sync).id,
        "KeyboardInterrupt ": q.enqueue(jobs.interrupt_async).id,
        "Abort: custom": q.enqueue(jobs.abort_async).id,
        "SystemExit: 4": q.enqueue(jobs.add, 1, 1, on_success=Callback(jobs.exit_callback)).id,  # a callback's
    }
    after = [q.enqueue(jobs.add, i, 1).id for i in range(3)]

    _run_until_ended(redis_url, sync_redis, [*naps, *exits.values(), *after])

    for text, job_id in exits.items():
        _failed(sync_redis, job_id, text.strip())
    assert [Job.fetch(j, connection=sync_redis).return_value() for j in naps + after] == [1.0] * 3 + [1, 2, 3]


@pytest.fixture
def hook_sink() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A real HTTP server on 127.0.0.1 recording each request's path and headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            self.send_response(204)
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["allow-module", "plain", "allowed-host"])
def test_webhooks_from_job_data_reach_only_allowed_hosts(
    mode: str, redis_url: str, sync_redis: redis.Redis, hook_sink: tuple[int, list[dict[str, str]]]
) -> None:
    """Item 4: a Redis writer's webhooks called loopback services with forged Host and auth headers."""
    port, seen = hook_sink
    q = Queue("default", connection=sync_redis)
    hooks = [{"url": f"http://127.0.0.1:{port}/admin?token=s3cret", "job_status": "finished", "method": "POST",
              "headers": {"Host": "internal.example", "Authorization": "Bearer forged"}, "timeout": 10}]
    job = q.enqueue(jobs.add, 1, 2)
    sync_redis.hset(f"rq:job:{job.id}", "webhooks", json.dumps(hooks))  # as any Redis writer can
    args = {"allow-module": ALLOW, "plain": (), "allowed-host": ("--allow-webhook-host", "127.0.0.1")}[mode]

    with run_asyncjobs_worker(redis_url, "default", "--burst", *args) as proc:
        assert proc.wait(60) == 0, proc.output()
        output = proc.output()

    assert Job.fetch(job.id, connection=sync_redis).return_value() == 3
    assert "s3cret" not in output and "/admin" not in output, output  # URLs are logged as scheme://host:port/…
    if mode == "allowed-host":
        assert [(r["path"], r["host"], r["authorization"]) for r in seen] == [
            ("/admin?token=s3cret", f"127.0.0.1:{port}", "Bearer forged")]  # the job chose no Host
    else:
        assert seen == [], output
        assert f"webhook to http://127.0.0.1:{port}/… for job {job.id} not sent" in output, output
        assert ("--allow-webhook-host 127.0.0.1" in output), output


def test_job_data_cannot_forge_log_lines_or_reach_the_terminal(redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 6: a description, or a name echoed in an unpickler error, forged log lines and carried raw escapes."""
    forged = "\n2026-01-01 00:00:00,000 INFO asyncjobs.worker: FORGED\x1b]0;pwned\x07\x1b[2J"
    q = Queue("default", connection=sync_redis)
    described = q.enqueue(jobs.add, 1, 2, description=f"add{forged}").id
    named = _enqueue_raw(sync_redis, _data_tuple("tests.security.jobs.echo", _call(f"evil{forged}", "x")))
    running = q.enqueue(jobs.until_key, "go", description=f"nap{forged}(go)").id  # in flight while `info` runs

    with run_asyncjobs_worker(redis_url, "default", *ALLOW) as proc:
        wait_for(lambda: _ended(sync_redis, described, named), 30, message=proc.output)
        wait_for(lambda: sync_redis.hget(f"rq:job:{running}", "status") == b"started", 30, message=proc.output)
        info = subprocess.run([*asyncjobs_worker_command(), "info", "-u", redis_url], capture_output=True,
                              text=True, timeout=60, check=True).stdout
        sync_redis.set("go", 1)
        wait_for(lambda: _ended(sync_redis, running), 30, message=proc.output)
        proc.stop()
        assert proc.wait(30) == 0, proc.output()
        output = proc.output()

    for text in (output, info):
        assert "\x1b" not in text and "\x07" not in text, text
        assert not [line for line in text.splitlines() if line.startswith("2026-01-01")], text
    assert "add\\n2026-01-01 00:00:00,000 INFO asyncjobs.worker: FORGED\\x1b]0;pwned\\x07" in output, output
    assert "evil\\n2026-01-01" in output, output
    assert "nap\\n2026-01-01" in info, info
    _failed(sync_redis, named, "DeserializationError")
    assert Job.fetch(described, connection=sync_redis).return_value() == 3


def test_a_huge_description_is_logged_truncated(redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 7a: a 50 MB description was written to the log three times over (150 MB)."""
    job = Queue("default", connection=sync_redis).enqueue(jobs.add, 1, 2, description="d" * 1_000_000)
    with run_asyncjobs_worker(redis_url, "default", "--burst") as proc:
        assert proc.wait(60) == 0, proc.output()
        output = proc.output()
    assert Job.fetch(job.id, connection=sync_redis).return_value() == 3
    assert len(output) < 20_000 and "... (1000000 characters)" in output, len(output)


def test_an_async_job_blocking_the_loop_is_interrupted(redis_url: str, sync_redis: redis.Redis) -> None:
    """Item 2: CPU work in an ``async def`` job stopped every job, heartbeats and SIGTERM for as long as it ran."""
    q = Queue("default", connection=sync_redis)
    spin = q.enqueue(jobs.spin_async).id
    after = [q.enqueue(jobs.add, i, 1).id for i in range(3)]

    _run_until_ended(redis_url, sync_redis, [spin, *after], "--max-loop-lag", "1")

    _failed(sync_redis, spin, "LoopBlockedError", "--max-loop-lag", "asyncio.to_thread")
    assert [Job.fetch(j, connection=sync_redis).return_value() for j in after] == [1, 2, 3]


def test_webhooks_rq_code_sends_in_maintenance_obey_the_rules(
    sync_redis: redis.Redis, hook_sink: tuple[int, list[dict[str, str]]]
) -> None:
    """Item 4: RQ 3's maintenance sends the ``failed`` webhooks of abandoned jobs with RQ's own code, which
    the worker runs under its rules too (outside its maintenance, RQ's code behaves as RQ's)."""
    from rq.webhook import Webhook

    from asyncjobs.worker import webhooks

    port, seen = hook_sink
    job = Queue("default", connection=sync_redis).enqueue(
        jobs.add, 1, 2, webhooks=[Webhook(f"http://127.0.0.1:{port}/abandoned", "failed")])
    with webhooks.policy_for_rq_code(webhooks.WebhookPolicy((), restricted=True)):
        job.send_webhooks("failed", exc_string="AbandonedJobError")
    assert seen == []
    with webhooks.policy_for_rq_code(webhooks.WebhookPolicy(("127.0.0.1",))):
        job.send_webhooks("failed", exc_string="AbandonedJobError")
    job.send_webhooks("failed", exc_string="AbandonedJobError")  # RQ's own, unchanged
    assert [r["path"] for r in seen] == ["/abandoned", "/abandoned"]
