"""Issue 10 item 1: ``--allow-module`` stops code execution from hostile job data.

Every scenario runs a real ``asyncjobs-worker --allow-module tests.security.jobs``
subprocess against a real Redis.  The hostile payloads would run code that
leaves a marker file (or a Redis key); the marker must not appear, the job must
end ``failed`` with a readable reason in RQ's own ``latest_result()``, and the
worker keeps going (a legitimate job enqueued after them finishes).
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import os
import pickle
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

from tests.security import jobs
from tests.testsupport.workers import run_asyncjobs_worker, run_rq_worker_with_asyncjobs_class

ALLOW = ("--allow-module", "tests.security.jobs")


# -- hostile payloads -------------------------------------------------------------------------------


class _System:
    """Pickles to ``os.system(command)``: unpickling it runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def _str(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 256
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _stack_global_call(module: str, qualname: str, arg: str) -> bytes:
    """Pickle opcodes for ``<module>.<qualname>(arg)``, the name resolved like pickle protocol 4 does."""
    return _str(module) + _str(qualname) + b"\x93" + b"(" + _str(arg) + b"t" + b"R"


def _data_tuple(func_name: str, arg_opcodes: bytes) -> bytes:
    """An RQ data field ``(func_name, None, (<arg>,), {})`` whose single argument is raw opcodes."""
    body = b"\x80\x04" + b"(" + _str(func_name) + b"N" + b"(" + arg_opcodes + b"t" + b"}" + b"t" + b"."
    return zlib.compress(body)


def _enqueue_raw(conn: redis.Redis, data: bytes, func_name: str = "tests.security.jobs.echo") -> str:
    """Enqueue a harmless job with stock RQ, then replace its payload (as anyone with Redis access can)."""
    job = Queue("default", connection=conn).enqueue(func_name, 0)
    conn.hset(f"rq:job:{job.id}", "data", data)
    return job.id


def _run_burst(url: str, *args: str) -> str:
    with run_asyncjobs_worker(url, "default", "--burst", *ALLOW, *args) as proc:
        rc = proc.wait(60)
        output = proc.output()
    assert rc == 0, f"worker exited {rc}:\n{output}"
    assert "maintenance pass failed" not in output and "Traceback" not in output, output
    return output


def _failed(conn: redis.Redis, job_id: str, *fragments: str, serializer: Any = None) -> str:
    job = Job.fetch(job_id, connection=conn, serializer=serializer)
    assert job.get_status() == "failed", job.get_status()
    result = job.latest_result()
    assert result is not None and result.type == Result.Type.FAILED
    text = str(result.exc_string)
    for fragment in fragments:
        assert fragment in text, text
    return text


# -- (a) pickle: nothing is unpickled from outside the allowed modules ---------------------------------


def test_pickle_payloads_cannot_run_code(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    markers = {name: tmp_path / name for name in ("reduce", "walk", "reexport", "meta")}
    reduce_job = _enqueue_raw(
        sync_redis,
        zlib.compress(pickle.dumps(("tests.security.jobs.echo", None, (_System(f"touch {markers['reduce']}"),), {}))),
    )
    # protocol 4 resolves dotted names: tests.security.jobs + "os.system" walks through the module `os`
    walk_job = _enqueue_raw(
        sync_redis,
        _data_tuple(
            "tests.security.jobs.echo",
            _stack_global_call("tests.security.jobs", "os.system", f"touch {markers['walk']}"),
        ),
    )
    # a function re-exported by an allowed module keeps its own __module__ (tests.security.outside)
    reexport_job = _enqueue_raw(
        sync_redis,
        _data_tuple(
            "tests.security.jobs.echo",
            _stack_global_call("tests.security.jobs", "imported_touch", str(markers["reexport"])),
        ),
    )
    # job.meta is pickled too, and RQ unpickles it whenever the worker builds the job for RQ's APIs
    meta_job = Queue("default", connection=sync_redis).enqueue(jobs.read_meta)
    sync_redis.hset(f"rq:job:{meta_job.id}", "meta", pickle.dumps({"x": _System(f"touch {markers['meta']}")}))
    after = Queue("default", connection=sync_redis).enqueue(jobs.add, 20, 22)

    output = _run_burst(redis_url)

    assert not [name for name, path in markers.items() if path.exists()], output
    _failed(sync_redis, reduce_job, "DeserializationError", "posix.system", "--allow-module")
    _failed(sync_redis, walk_job, "DeserializationError", "os.system", "module")
    _failed(sync_redis, reexport_job, "DeserializationError", "tests.security.outside")
    # the job itself is allowed and runs; the hostile meta is left undecoded, as RQ does for bad meta
    assert Job.fetch(meta_job.id, connection=sync_redis).get_status() == "finished"
    assert Job.fetch(after.id, connection=sync_redis).return_value() == 42


def test_legitimate_pickle_payloads_still_run(redis_url: str, sync_redis: redis.Redis) -> None:
    """Instances, callable instances and the documented safe argument types decode under the allow-list."""
    q = Queue("default", connection=sync_redis)
    values: list[Any] = [
        {"a": [1, 2.5, None, True], "b": (b"raw", bytearray(b"ba")), "c": {1, 2}, "d": frozenset({"x"})},
        datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        datetime.date(2026, 1, 2),
        datetime.time(1, 2, 3),
        datetime.timedelta(days=1, seconds=2),
        decimal.Decimal("12.50"),
        fractions.Fraction(1, 3),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        collections.OrderedDict([("k", 1)]),
        collections.defaultdict(list, {"k": [1]}),
        collections.deque([1, 2], maxlen=5),
        collections.Counter("hello"),
        complex(1, 2),
        jobs.Greeter("hey"),
    ]
    echoed = [q.enqueue(jobs.echo, v) for v in values]
    method = q.enqueue(jobs.Greeter("hello").greet, "world")
    callable_instance = q.enqueue(jobs.Adder(5), 10)
    async_job = q.enqueue(jobs.async_add, 1, 2)
    due = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    scheduled = q.enqueue_at(due, jobs.add, 3, 4)  # RQ's scheduler runs with the same serializer

    output = _run_burst(redis_url, "--with-scheduler")

    for job, value in zip(echoed, values, strict=True):
        fetched = Job.fetch(job.id, connection=sync_redis)
        assert fetched.get_status() == "finished", (value, fetched.latest_result().exc_string, output)
        got = fetched.return_value()
        if isinstance(value, jobs.Greeter):
            assert isinstance(got, jobs.Greeter) and got.greeting == "hey"
        else:
            assert got == value and type(got) is type(value)
    assert Job.fetch(method.id, connection=sync_redis).return_value() == "hello, world"
    assert Job.fetch(callable_instance.id, connection=sync_redis).return_value() == 15
    assert Job.fetch(async_job.id, connection=sync_redis).return_value() == 3
    assert Job.fetch(scheduled.id, connection=sync_redis).return_value() == 7


# -- (b) function names: the resolved object's own __module__, no walk through module objects ----------


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_function_names_cannot_walk_out_of_allowed_modules(
    serializer: str, redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    rq_serializer = JSONSerializer if serializer == "json" else None
    q = Queue("default", connection=sync_redis, serializer=rq_serializer)
    walk = q.enqueue("tests.security.jobs.os.system", f"touch {tmp_path / 'walk'}")
    reexport = q.enqueue("tests.security.jobs.imported_touch", str(tmp_path / "reexport"))
    outside = q.enqueue("tests.security.outside.touch", str(tmp_path / "outside"))
    after = q.enqueue("tests.security.jobs.add", 1, 2)

    output = _run_burst(redis_url, "--serializer", serializer)

    assert sorted(p.name for p in tmp_path.iterdir()) == [], output
    _failed(sync_redis, walk.id, "tests.security.jobs.os.system", "module", serializer=rq_serializer)
    _failed(sync_redis, reexport.id, "tests.security.outside", serializer=rq_serializer)
    _failed(sync_redis, outside.id, "not in an allowed module", serializer=rq_serializer)
    assert Job.fetch(after.id, connection=sync_redis, serializer=rq_serializer).return_value() == 3


def test_issue_example_asyncjobs_tasks_runtime_os_system(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    q = Queue("default", connection=sync_redis, serializer=JSONSerializer)
    job = q.enqueue("asyncjobs.tasks.runtime.os.system", f"touch {marker}")
    with run_asyncjobs_worker(
        redis_url, "default", "--burst", "--serializer", "json", "--allow-module", "asyncjobs.tasks"
    ) as proc:
        assert proc.wait(60) == 0, proc.output()
        output = proc.output()
    assert not marker.exists(), output
    _failed(sync_redis, job.id, "asyncjobs.tasks.runtime", serializer=JSONSerializer)


# -- (c) callbacks named in job data obey the same rule -------------------------------------------------


def test_callbacks_outside_allowed_modules_are_refused(redis_url: str, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    on_success = q.enqueue(jobs.add, 1, 2, on_success=Callback("tests.security.outside.mark_callback"))
    on_failure = q.enqueue(jobs.boom, on_failure=Callback("tests.security.outside.mark_callback"))
    walk = q.enqueue(jobs.add, 1, 2, on_success=Callback("tests.security.jobs.os.system"))
    allowed = q.enqueue(jobs.add, 2, 3, on_success=Callback(jobs.success_callback))

    output = _run_burst(redis_url)

    assert sync_redis.keys("callback:outside:*") == [], output
    _failed(sync_redis, on_success.id, "tests.security.outside.mark_callback", "not in an allowed module")
    _failed(sync_redis, on_failure.id, "tests.security.outside.mark_callback", "not in an allowed module")
    _failed(sync_redis, walk.id, "tests.security.jobs.os.system")
    assert Job.fetch(allowed.id, connection=sync_redis).return_value() == 5
    assert sync_redis.get(f"callback:allowed:{allowed.id}") == b"5"


def test_allow_modules_through_rq_worker_cli(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    """``rq worker -w asyncjobs.AsyncWorker`` has no --allow-module; ASYNCJOBS_ALLOW_MODULES sets it."""
    marker = tmp_path / "marker"
    hostile = _enqueue_raw(
        sync_redis,
        zlib.compress(pickle.dumps(("tests.security.jobs.echo", None, (_System(f"touch {marker}"),), {}))),
    )
    after = Queue("default", connection=sync_redis).enqueue(jobs.add, 1, 1)
    env = {"ASYNCJOBS_ALLOW_MODULES": "tests.security.jobs"}
    with run_rq_worker_with_asyncjobs_class(redis_url, "default", "--burst", env=env) as proc:
        assert proc.wait(60) == 0, proc.output()
        output = proc.output()
    assert not marker.exists(), output
    _failed(sync_redis, hostile, "DeserializationError", "posix.system")
    assert Job.fetch(after.id, connection=sync_redis).return_value() == 2


def test_without_allow_module_plain_pickle_is_kept(redis_url: str, sync_redis: redis.Redis) -> None:
    """No --allow-module: stock-compatible behaviour (any importable function, plain pickle)."""
    q = Queue("default", connection=sync_redis)
    outside = q.enqueue("tests.security.outside.touch", os.devnull)
    with run_asyncjobs_worker(redis_url, "default", "--burst") as proc:
        assert proc.wait(60) == 0, proc.output()
    assert Job.fetch(outside.id, connection=sync_redis).return_value() == os.devnull
