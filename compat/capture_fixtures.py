"""Capture real RQ 2.12 Redis data as JSON fixtures (``compat/fixtures/*.json``).

Run from the project root::

    python -m compat.capture_fixtures            # all cases
    python -m compat.capture_fixtures finished_int failed_exception

Each case starts from an empty database on a private redis-server, uses stock
RQ producers (and, where the case needs one, a stock ``rq worker`` subprocess)
to put a job in some state, then dumps *every* key in the database: job hash,
results stream, registries, queue lists, execution keys, worker hash.  Raw
bytes are base64, so the fixtures carry exactly what RQ wrote.

Fixture layout::

    {
      "name": "...", "about": "...", "rq_version": "2.12.0", "redis_version": "7.0.15",
      "python_version": "3.11.x", "serializer": "pickle" | "json",
      "job_id": "<main job id>", "worker_name": "<stock worker name or null>",
      "expect": {...},            # what RQ's own APIs say about the main job
      "keys": {
        "<key>": {"type": "hash",   "ttl": <int, -1 = none>, "value": {"<field>": "<b64>"}},
        "<key>": {"type": "stream", "ttl": ..., "value": [{"id": "<ms-seq>", "fields": {"<f>": "<b64>"}}]},
        "<key>": {"type": "zset",   "ttl": ..., "value": [["<b64 member>", "<raw score text>"]]},
        "<key>": {"type": "list" | "set", "ttl": ..., "value": ["<b64>", ...]},
        "<key>": {"type": "string", "ttl": ..., "value": "<b64>"}
      }
    }
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import rq
from rq import Callback, Queue, Repeat, Retry
from rq.command import send_shutdown_command, send_stop_job_command
from rq.group import Group
from rq.job import Dependency, Job
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from compat import jobs
from tests.testsupport.redis_server import RedisServer
from tests.testsupport.workers import run_rq_worker, wait_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SIMPLE = "rq.worker.SimpleWorker"
FORKING = "rq.worker.Worker"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def dump_database(conn: redis.Redis) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key in sorted(conn.scan_iter(count=1000)):
        key = raw_key.decode()
        kind = conn.type(raw_key).decode()
        ttl = int(conn.ttl(raw_key))
        value: Any
        if kind == "hash":
            value = {f.decode(): b64(v) for f, v in sorted(conn.hgetall(raw_key).items())}
        elif kind == "stream":
            value = [
                {"id": eid.decode(), "fields": {f.decode(): b64(v) for f, v in fields.items()}}
                for eid, fields in conn.xrange(raw_key)
            ]
        elif kind == "zset":
            value = [
                [b64(m), s.decode()]
                for m, s in conn.zrange(raw_key, 0, -1, withscores=True, score_cast_func=bytes)
            ]
        elif kind == "list":
            value = [b64(v) for v in conn.lrange(raw_key, 0, -1)]
        elif kind == "set":
            value = sorted(b64(v) for v in conn.smembers(raw_key))
        elif kind == "string":
            value = b64(conn.get(raw_key) or b"")
        else:  # pragma: no cover - RQ writes no other types
            value = None
        out[key] = {"type": kind, "ttl": ttl, "value": value}
    return out


def describe_job(conn: redis.Redis, job_id: str, serializer: Any = None) -> dict[str, Any]:
    """What RQ's own APIs report; stored as ``expect`` for the codec tests."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=serializer)
    except Exception as exc:
        return {"fetch_error": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {
        "status": job.get_status(refresh=False),
        "origin": job.origin,
        "description": job.description,
        "timeout": job.timeout,
        "result_ttl": job.result_ttl,
        "failure_ttl": job.failure_ttl,
        "ttl": job.ttl,
        "worker_name": job.worker_name,
        "group_id": job.group_id,
        "dependency_ids": sorted(job._dependency_ids),
        "retries_left": job.retries_left,
        "retry_intervals": job.retry_intervals,
        "repeats_left": job.repeats_left,
        "repeat_intervals": job.repeat_intervals,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
    }
    try:
        info["func_name"] = job.func_name
        info["args"] = repr(job.args)
        info["kwargs"] = repr(job.kwargs)
        info["meta"] = repr(job.meta)
    except Exception as exc:
        info["data_error"] = f"{type(exc).__name__}: {exc}"
    results = []
    for res in job.results():
        results.append(
            {
                "type": int(res.type.value),
                "type_name": res.type.name,
                "return_value": repr(res.return_value),
                "exc_string_tail": (res.exc_string or "").strip().splitlines()[-1:] or None,
                "worker_name": res.worker_name,
            }
        )
    info["results_newest_first"] = results
    return info


class Capture:
    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url
        self.conn = redis.Redis.from_url(self.url)
        self.redis_version = str(self.conn.info("server")["redis_version"])

    def reset(self) -> None:
        self.conn.flushdb()

    def burst(self, queues: list[str], name: str, *extra: str, worker_class: str = SIMPLE) -> None:
        with run_rq_worker(self.url, queues, "--burst", "-n", name, *extra, worker_class=worker_class) as w:
            rc = w.wait(120)
            if rc != 0:
                raise RuntimeError(f"stock worker exited {rc}:\n{w.output()}")

    def save(
        self,
        name: str,
        about: str,
        job_id: str,
        *,
        serializer: str = "pickle",
        worker_name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        ser = JSONSerializer if serializer == "json" else None
        data = {
            "name": name,
            "about": about,
            "rq_version": rq.__version__,
            "redis_version": self.redis_version,
            "python_version": sys.version.split()[0],
            "serializer": serializer,
            "job_id": job_id,
            "worker_name": worker_name,
            "captured_at": datetime.now(UTC).isoformat(),
            "expect": describe_job(self.conn, job_id, ser),
            "keys": dump_database(self.conn),
        }
        if extra:
            data.update(extra)
        FIXTURES.mkdir(exist_ok=True)
        (FIXTURES / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"  wrote {name}.json ({len(data['keys'])} keys)")


# ----------------------------------------------------------------------------- cases

CASES: dict[str, Callable[[Capture], None]] = {}


def case(fn: Callable[[Capture], None]) -> Callable[[Capture], None]:
    CASES[fn.__name__] = fn
    return fn


@case
def queued_pickle(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(jobs.add, 2, 3, job_id="fx-queued-pickle")
    c.save(
        "queued_pickle",
        "q.enqueue(compat.jobs.add, 2, 3): plain function, pickle, defaults",
        "fx-queued-pickle",
    )


@case
def queued_json(c: Capture) -> None:
    q = Queue("default", connection=c.conn, serializer=JSONSerializer)
    q.enqueue(jobs.add, 3, 4, job_id="fx-queued-json", meta={"source": "json"})
    c.save(
        "queued_json",
        "JSONSerializer producer: data is zlib(JSON), meta is JSON bytes",
        "fx-queued-json",
        serializer="json",
    )


@case
def queued_kwargs_description(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.kwargs_job, 1, b=2, label="x" * 100, job_id="fx-kwargs")
    q.enqueue(jobs.kwargs_job, 5, job_id="fx-description", description="a custom description")
    c.save(
        "queued_kwargs_description",
        "kwargs (sorted k=v, reprs capped at 75 chars in the default description) and an explicit"
        " description (second job fx-description)",
        "fx-kwargs",
    )


@case
def queued_meta(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(
        jobs.add, 1, 1, job_id="fx-meta", meta={"tenant": "acme", "n": 1, "nested": {"a": [1, 2]}}
    )
    c.save("queued_meta", "meta dict (pickled raw bytes in field meta)", "fx-meta")


@case
def queued_ttls(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(
        jobs.add, 1, 2, job_id="fx-ttls", ttl=600, result_ttl=100, failure_ttl=200
    )
    c.save("queued_ttls", "ttl=600 (key EXPIRE at enqueue), result_ttl=100, failure_ttl=200", "fx-ttls")


@case
def queued_timeouts(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.add, 1, 2, job_id="fx-timeout-none", job_timeout=-1)
    q.enqueue(jobs.add, 1, 2, job_id="fx-timeout-30", job_timeout=30)
    q.enqueue(jobs.add, 1, 2, job_id="fx-timeout-5m", job_timeout="5m")
    c.save(
        "queued_timeouts",
        "job_timeout=-1 (main job), plus fx-timeout-30 (30) and fx-timeout-5m ('5m' stored as 300)",
        "fx-timeout-none",
    )


@case
def queued_retry(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.boom, "x", job_id="fx-retry", retry=Retry(max=3, interval=[1, 2, 3]))
    q.enqueue(jobs.boom, "y", job_id="fx-retry-front", retry=Retry(max=1, enqueue_at_front=True))
    c.save(
        "queued_retry",
        "retry=Retry(max=3, interval=[1,2,3]); fx-retry-front has Retry(max=1, enqueue_at_front=True)",
        "fx-retry",
    )


@case
def queued_repeat(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(
        jobs.add, 1, 2, job_id="fx-repeat", repeat=Repeat(times=2, interval=[5, 10])
    )
    c.save("queued_repeat", "repeat=Repeat(times=2, interval=[5, 10])", "fx-repeat")


@case
def deferred_child(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    parent = q.enqueue(jobs.add, 1, 2, job_id="fx-parent")
    other = Queue("other", connection=c.conn).enqueue(jobs.add, 3, 4, job_id="fx-parent-2")
    q.enqueue(jobs.add, 5, 6, job_id="fx-child", depends_on=parent)
    Queue("other", connection=c.conn).enqueue(
        jobs.add,
        7,
        8,
        job_id="fx-child-multi",
        depends_on=Dependency(jobs=[parent, other], allow_failure=True, enqueue_at_front=True),
    )
    c.save(
        "deferred_child",
        "fx-child depends_on fx-parent (deferred); fx-child-multi (queue other) has"
        " Dependency([fx-parent, fx-parent-2], allow_failure=True, enqueue_at_front=True)",
        "fx-child",
    )


@case
def queued_callbacks(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(
        jobs.add,
        1,
        2,
        job_id="fx-callbacks",
        on_success=Callback(jobs.on_success_cb, timeout=10),
        on_failure=Callback(jobs.on_failure_cb),
        on_stopped=Callback("compat.jobs.on_stopped_cb", timeout=5),
    )
    c.save(
        "queued_callbacks",
        "on_success=Callback(f, timeout=10), on_failure=Callback(f) (timeout stored as 60),"
        " on_stopped=Callback('dotted.path', timeout=5)",
        "fx-callbacks",
    )


@case
def queued_webhooks(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(
        jobs.add,
        1,
        2,
        job_id="fx-webhooks",
        webhooks=[
            Webhook(
                "http://127.0.0.1:9/done", "finished", method="POST", headers={"X-Token": "t"}, timeout=5
            ),
            Webhook("http://127.0.0.1:9/failed", "failed"),
        ],
    )
    c.save("queued_webhooks", "two Webhook entries (POST finished with headers, GET failed)", "fx-webhooks")


@case
def queued_at_front(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.add, 1, 1, job_id="fx-back")
    q.enqueue(jobs.add, 2, 2, job_id="fx-front", at_front=True)
    c.save(
        "queued_at_front",
        "fx-back then fx-front at_front=True: queue list is [fx-front, fx-back]",
        "fx-front",
    )


@case
def queued_group(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    group = Group(connection=c.conn, name="fxgroup")
    group.enqueue_many(
        q,
        [
            Queue.prepare_data(jobs.add, (1, 2), job_id="fx-group-1"),
            Queue.prepare_data(jobs.add, (3, 4), job_id="fx-group-2", at_front=True),
        ],
    )
    c.save("queued_group", "Group('fxgroup').enqueue_many with two jobs (second at_front)", "fx-group-1")


@case
def queued_callables(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.Greeter("hello").greet, "ann", job_id="fx-bound-method")
    q.enqueue(jobs.Adder(10), 5, job_id="fx-callable-instance")
    q.enqueue("compat.jobs.add", 1, 2, job_id="fx-string-func")
    q.enqueue(jobs.async_add, 1, 2, job_id="fx-async-func")
    c.save(
        "queued_callables",
        "bound method (func_name 'greet' + pickled instance); fx-callable-instance ('__call__');"
        " fx-string-func ('compat.jobs.add' given as a string); fx-async-func (an async def)",
        "fx-bound-method",
    )


@case
def scheduled(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue_at(datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC), jobs.add, 1, 2, job_id="fx-scheduled")
    q.enqueue_in(timedelta(hours=1), jobs.add, 3, 4, job_id="fx-scheduled-in")
    c.save(
        "scheduled",
        "enqueue_at(2099-01-02T03:04:05Z) (score 4071006245 in rq:scheduled:default, no enqueued_at);"
        " fx-scheduled-in via enqueue_in(1h)",
        "fx-scheduled",
    )


@case
def finished_int(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(jobs.add, 2, 3, job_id="fx-finished")
    c.burst(["default"], "fx-w-finished")
    c.save(
        "finished_int",
        "add(2, 3) run by stock `rq worker --burst -w SimpleWorker`: finished, result 5 (result_ttl 500)."
        " The dead worker hash is included (death field, TTL 60).",
        "fx-finished",
        worker_name="fx-w-finished",
    )


@case
def finished_forever(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(jobs.echo, {"k": [1, 2]}, job_id="fx-forever", result_ttl=-1)
    c.burst(["default"], "fx-w-forever")
    c.save(
        "finished_forever",
        "result_ttl=-1: no TTL on job or results stream, finished score '+inf'",
        "fx-forever",
        worker_name="fx-w-forever",
    )


@case
def finished_none_and_unserializable(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.noop, job_id="fx-none")
    q.enqueue(jobs.unserializable, job_id="fx-unserializable")
    c.burst(["default"], "fx-w-none")
    c.save(
        "finished_none_and_unserializable",
        "fx-none returns None (stream entry without return_value); fx-unserializable returns a"
        " threading.Lock (stored as 'Unserializable return value')",
        "fx-none",
        worker_name="fx-w-none",
    )


@case
def finished_json(c: Capture) -> None:
    q = Queue("default", connection=c.conn, serializer=JSONSerializer)
    q.enqueue(jobs.echo, {"a": 1, "b": [True, None]}, job_id="fx-finished-json")
    c.burst(["default"], "fx-w-json", "-S", "json")
    c.save(
        "finished_json",
        "JSON-serialized job run by `rq worker -S json`; return_value is base64(JSON)",
        "fx-finished-json",
        serializer="json",
        worker_name="fx-w-json",
    )


@case
def finished_async_and_methods(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.async_add, 20, 22, job_id="fx-async-finished")
    q.enqueue(jobs.Greeter("hi").greet, "bob", job_id="fx-method-finished")
    c.burst(["default"], "fx-w-methods")
    c.save(
        "finished_async_and_methods",
        "an async def job (stock runs it with asyncio) -> 42; fx-method-finished bound method -> 'hi bob'",
        "fx-async-finished",
        worker_name="fx-w-methods",
    )


@case
def finished_two_queues(c: Capture) -> None:
    Queue("high", connection=c.conn).enqueue(jobs.add, 1, 1, job_id="fx-high")
    Queue("low", connection=c.conn).enqueue(jobs.add, 2, 2, job_id="fx-low")
    c.burst(["high", "low"], "fx-w-two")
    c.save(
        "finished_two_queues",
        "worker on two queues (LPOP, no intermediate list); worker hash queues='high,low'",
        "fx-high",
        worker_name="fx-w-two",
    )


@case
def failed_exception(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(jobs.boom, "boom 7", job_id="fx-failed")
    c.burst(["default"], "fx-w-failed")
    c.save(
        "failed_exception",
        "boom('boom 7') raises ValueError: failed, type-2 result with full traceback, no stream TTL"
        " (failure_ttl unset), failed score now+31536000",
        "fx-failed",
        worker_name="fx-w-failed",
    )


@case
def failed_with_failure_ttl(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.boom, "ttl", job_id="fx-failed-ttl", failure_ttl=300)
    q.enqueue(jobs.boom, "forever", job_id="fx-failed-forever", failure_ttl=-1)
    c.burst(["default"], "fx-w-failed-ttl")
    c.save(
        "failed_with_failure_ttl",
        "failure_ttl=300 (stream EXPIRE 300); fx-failed-forever failure_ttl=-1 (failed score '-1')",
        "fx-failed-ttl",
        worker_name="fx-w-failed-ttl",
    )


@case
def failed_timeout(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(jobs.sleep_sync, 10, job_id="fx-timeout", job_timeout=1)
    c.burst(["default"], "fx-w-timeout")
    c.save(
        "failed_timeout",
        "sync job past job_timeout=1: JobTimeoutException 'Task exceeded maximum timeout value (1 seconds)'",
        "fx-timeout",
        worker_name="fx-w-timeout",
    )


@case
def failed_after_retries(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.boom, "again", job_id="fx-retried-out", retry=Retry(max=2))
    c.burst(["default"], "fx-w-retries")
    c.save(
        "failed_after_retries",
        "Retry(max=2) with an always-failing job: 3 runs, retries_left 0, one FAILED result,"
        " worker failed_job_count 3",
        "fx-retried-out",
        worker_name="fx-w-retries",
    )


@case
def retry_scheduled(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.boom, "later", job_id="fx-retry-scheduled", retry=Retry(max=2, interval=[600, 900]))
    c.burst(["default"], "fx-w-retry-sched")
    c.save(
        "retry_scheduled",
        "Retry(max=2, interval=[600,900]) after one failure: status scheduled, in rq:scheduled:default"
        " at now+600, retries_left 1, no Result",
        "fx-retry-scheduled",
        worker_name="fx-w-retry-sched",
    )


@case
def retry_returned(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.retry_returner, c.url, "fx-runs", 2, job_id="fx-retry-returned")
    c.burst(["default"], "fx-w-retry-ret")
    c.save(
        "retry_returned",
        "job returns Retry(max=2): results RETRIED, RETRIED, MAX_RETRIES_EXCEEDED; number_of_retries;"
        " legacy result field = pickle(Retry)",
        "fx-retry-returned",
        worker_name="fx-w-retry-ret",
    )


@case
def repeat_scheduled(c: Capture) -> None:
    Queue("default", connection=c.conn).enqueue(
        jobs.add, 2, 2, job_id="fx-repeated", repeat=Repeat(times=1, interval=600)
    )
    c.burst(["default"], "fx-w-repeat")
    c.save(
        "repeat_scheduled",
        "Repeat(times=1, interval=600) after its first run: finished result kept, repeats_left 0,"
        " rescheduled (status scheduled), legacy result field written",
        "fx-repeated",
        worker_name="fx-w-repeat",
    )


@case
def dependents_enqueued(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    parent = q.enqueue(jobs.boom, "parent fails", job_id="fx-dep-parent")
    q.enqueue(jobs.add, 1, 1, job_id="fx-dep-strict", depends_on=parent)
    Queue("other", connection=c.conn).enqueue(
        jobs.add, 2, 2, job_id="fx-dep-allowed", depends_on=Dependency(jobs=[parent], allow_failure=True)
    )
    c.burst(["default"], "fx-w-deps")
    c.save(
        "dependents_enqueued",
        "failed parent: fx-dep-allowed (allow_failure, queue other) moved to rq:queue:other;"
        " fx-dep-strict stays deferred",
        "fx-dep-parent",
        worker_name="fx-w-deps",
    )


@case
def callbacks_run(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.add, 1, 2, job_id="fx-cb-ok", on_success=Callback(jobs.on_success_cb))
    q.enqueue(jobs.boom, "cb", job_id="fx-cb-fail", on_failure=Callback(jobs.on_failure_cb, timeout=5))
    c.burst(["default"], "fx-w-callbacks")
    c.save(
        "callbacks_run",
        "success and failure callbacks after a stock run; they RPUSH to callbacks:<job id>",
        "fx-cb-ok",
        worker_name="fx-w-callbacks",
    )


@case
def canceled(c: Capture) -> None:
    job = Queue("default", connection=c.conn).enqueue(jobs.add, 1, 2, job_id="fx-canceled")
    job.cancel()
    c.save(
        "canceled",
        "queued job then Job.cancel(): status canceled, rq:canceled:default, not in queue",
        "fx-canceled",
    )


@case
def started_and_stopped(c: Capture) -> None:
    """Non-burst forking stock worker: snapshot while running, then send_stop_job_command."""
    Queue("default", connection=c.conn).enqueue(
        jobs.hold, c.url, "fx", job_id="fx-stopped", on_stopped=Callback(jobs.on_stopped_cb)
    )
    name = "fx-w-stopped"
    with run_rq_worker(c.url, ["default"], "-n", name, worker_class=FORKING) as w:
        wait_for(lambda: c.conn.lrange("held:started", 0, -1) == [b"fx"], 60, message="job start")
        wait_for(
            lambda: c.conn.hget(f"rq:worker:{name}", "current_job") == b"fx-stopped",
            30,
            message="current_job",
        )
        c.save(
            "started",
            "job running under a stock forking `rq worker` (non-burst): status started, wip member"
            " '<jid>:<eid>', rq:execution/rq:executions keys, worker busy with current_job",
            "fx-stopped",
            worker_name=name,
        )
        send_stop_job_command(c.conn, "fx-stopped")
        wait_for(lambda: c.conn.hget("rq:job:fx-stopped", "status") == b"stopped", 60, message="stopped")
        wait_for(lambda: c.conn.hget(f"rq:worker:{name}", "state") == b"idle", 30, message="worker idle")
        c.save(
            "stopped",
            "send_stop_job_command on the running job: status stopped, type-2 result 'Job stopped by"
            " user, work-horse terminated.', ended_at empty, in rq:failed:default; stopped callback ran",
            "fx-stopped",
            worker_name=name,
        )
        send_shutdown_command(c.conn, name)
        w.wait(60)


@case
def malformed(c: Capture) -> None:
    q = Queue("default", connection=c.conn)
    q.enqueue(jobs.add, 1, 2, job_id="fx-bad-date")
    c.conn.hset("rq:job:fx-bad-date", "created_at", "2026-01-01 00:00:00+00:00")
    q.enqueue(jobs.add, 1, 2, job_id="fx-bad-cb-timeout")
    c.conn.hset("rq:job:fx-bad-cb-timeout", "success_callback_timeout", "")
    c.conn.hset("rq:job:fx-no-data", "last_heartbeat", "2026-01-01T00:00:00.000000Z")
    c.conn.rpush("rq:queue:default", "fx-no-data")
    q.enqueue(jobs.add, 1, 2, job_id="fx-garbage-data")
    c.conn.hset("rq:job:fx-garbage-data", "data", b"\x00not zlib, not pickle\xff")
    q.enqueue(jobs.add, 1, 2, job_id="fx-bad-status")
    c.conn.hset("rq:job:fx-bad-status", "status", "exploded")
    c.save(
        "malformed",
        "Hand-corrupted hashes after normal enqueues (see README): fx-bad-date (created_at with"
        " '+00:00' and a space: Job.fetch ValueError), fx-bad-cb-timeout (success_callback_timeout ''"
        ": ValueError), fx-no-data (hash with only last_heartbeat, id pushed on the queue:"
        " NoSuchJobError 'Unexpected job format'), fx-garbage-data (fetch OK, DeserializationError"
        " on func_name), fx-bad-status (status 'exploded': ValueError)",
        "fx-bad-date",
        extra={
            "fetch_outcomes": {
                jid: describe_job(c.conn, jid)
                for jid in ["fx-bad-cb-timeout", "fx-no-data", "fx-garbage-data", "fx-bad-status"]
            }
        },
    )


def main(argv: list[str]) -> int:
    wanted = argv or list(CASES)
    unknown = [n for n in wanted if n not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    server = RedisServer()
    server.start()
    try:
        cap = Capture(server)
        for name in wanted:
            print(f"case {name}")
            cap.reset()
            CASES[name](cap)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
