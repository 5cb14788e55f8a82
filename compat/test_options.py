"""Issue 2/3: worker options and producer options not covered elsewhere."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.group import Group
from rq.registry import FailedJobRegistry
from rq.webhook import Webhook

from compat import jobs
from compat.support import Launcher, WorkerKind, fetch, records, unique_name
from tests.testsupport.workers import WorkerProcess, asyncjobs_worker_command, wait_for


def test_max_idle_time(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    proc = launcher.start(kind, ["default"], "--max-idle-time", "1")
    assert proc.wait(30) == 0, proc.output()


def test_import_path_option(
    kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    module = f"cjobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("def triple(x):\n    return 3 * x\n")
    job = Queue("default", connection=sync_redis).enqueue(f"{module}.triple", 7)
    launcher.burst(kind, ["default"], "--path", str(tmp_path))
    assert fetch(sync_redis, job.id).return_value() == 21


def test_exception_handler_options(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    url = launcher.url
    q = Queue("default", connection=sync_redis)
    handled = q.enqueue(jobs.record_then_boom, url, "eh", "a")
    launcher.burst(kind, ["default"], "--exception-handler", "compat.jobs.recording_exception_handler")
    assert records(sync_redis, f"handled:{handled.id}") == ["ValueError:boom after a"]
    assert fetch(sync_redis, handled.id).get_status() == "failed"
    assert handled.id in FailedJobRegistry(queue=q).get_job_ids()

    silent = q.enqueue(jobs.record_then_boom, url, "eh", "b")
    launcher.burst(kind, ["default"], "--disable-default-exception-handler")
    job = fetch(sync_redis, silent.id)
    assert job.get_status() == "failed"
    # the default handler is what records the failure: no Result, no failed-registry entry
    assert job.latest_result() is None
    assert silent.id not in FailedJobRegistry(queue=q).get_job_ids()


def test_group_enqueue_many(kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    group = Group(connection=sync_redis, name="g1")
    created = group.enqueue_many(
        q, [Queue.prepare_data(jobs.add, (i, i), description=f"pair {i}") for i in range(4)]
    )
    launcher.burst(kind, ["default"])
    for i, job in enumerate(created):
        got = fetch(sync_redis, job.id)
        assert got.return_value() == 2 * i
        assert got.group_id == "g1"
        assert got.description == f"pair {i}"
    assert sorted(j.id for j in Group.fetch("g1", sync_redis).get_jobs()) == sorted(j.id for j in created)


class _Hooks:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []


@pytest.fixture
def hook_server() -> Iterator[tuple[str, _Hooks]]:
    hooks = _Hooks()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            hooks.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            self.send_response(200)
            self.end_headers()

        do_GET = _record
        do_POST = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hooks
    finally:
        server.shutdown()
        server.server_close()


def test_webhooks(
    kind: WorkerKind,
    launcher: Launcher,
    sync_redis: redis.Redis,
    hook_server: tuple[str, _Hooks],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, hooks = hook_server
    # asyncjobs calls loopback webhook targets only when allowed by name (stock ignores the variable)
    monkeypatch.setenv("ASYNCJOBS_ALLOW_WEBHOOK_HOSTS", "127.0.0.1")
    q = Queue("default", connection=sync_redis)
    ok = q.enqueue(
        jobs.add,
        1,
        2,
        webhooks=[
            Webhook(f"{base}/done", "finished", method="POST", headers={"X-Token": "t1"}),
            Webhook(f"{base}/never", "failed"),
        ],
    )
    bad = q.enqueue(jobs.boom, "hooked", webhooks=[Webhook(f"{base}/failed", "failed")])
    launcher.burst(kind, ["default"])
    wait_for(lambda: len(hooks.requests) >= 2, 10, message=lambda: f"2 webhooks, got {hooks.requests}")
    by_path = {r["path"]: r for r in hooks.requests}
    assert set(by_path) == {"/done", "/failed"}
    done = by_path["/done"]
    assert done["method"] == "POST" and done["headers"].get("X-Token") == "t1"
    payload = json.loads(done["body"])
    assert payload["job_id"] == ok.id and payload["status"] == "finished"
    assert by_path["/failed"]["method"] == "GET"
    assert fetch(sync_redis, bad.id).get_status() == "failed"


def test_asyncjobs_redis_url_env_and_queues_option(
    asyncjobs_kind: WorkerKind, redis_url: str, sync_redis: redis.Redis
) -> None:
    a = Queue("a", connection=sync_redis).enqueue(jobs.add, 1, 1)
    b = Queue("b", connection=sync_redis).enqueue(jobs.add, 2, 2)
    name = unique_name("env")
    argv = [*asyncjobs_worker_command(), "--burst", "--queues", "a,b", "--name", name]
    with WorkerProcess(argv, env={"REDIS_URL": redis_url}) as proc:
        assert proc.wait(60) == 0, proc.output()
    assert fetch(sync_redis, a.id).return_value() == 2
    assert fetch(sync_redis, b.id).return_value() == 4
    assert fetch(sync_redis, a.id).worker_name == name


def test_python_dash_m_asyncjobs(asyncjobs_kind: WorkerKind, redis_url: str, sync_redis: redis.Redis) -> None:
    import sys

    job = Queue("default", connection=sync_redis).enqueue(jobs.add, 3, 3)
    with WorkerProcess([sys.executable, "-m", "asyncjobs", "-u", redis_url, "--burst", "default"]) as proc:
        assert proc.wait(60) == 0, proc.output()
    assert fetch(sync_redis, job.id).return_value() == 6


def test_processes_supervises_restarts_and_drains(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """--processes 2: two RQ identities; a child that dies is restarted; SIGTERM drains all of them."""
    import os
    import signal

    from rq import Worker

    name = unique_name("pool")
    proc = launcher.start(asyncjobs_kind, ["default"], "--name", name, "--processes", "2", concurrency=5)

    def children() -> dict[str, int]:
        return {w.name: w.pid for w in Worker.all(connection=sync_redis) if w.name.startswith(name)}

    first = wait_for(lambda: len(children()) == 2 and children(), 30, message=lambda: f"2 children\n{proc.output()}")
    assert set(first) == {f"{name}-0", f"{name}-1"}
    assert all(pid != proc.pid for pid in first.values())

    # Every child serves the queue: 40 jobs all finish, each exactly once.
    q = Queue("default", connection=sync_redis)
    ids = [q.enqueue(jobs.record, launcher.url, "pool", str(i)).id for i in range(40)]
    wait_for(lambda: all(fetch(sync_redis, i).get_status() == "finished" for i in ids), 30, message="40 jobs")
    assert sorted(records(sync_redis, "pool"), key=int) == [str(i) for i in range(40)]

    # A child killed outright is replaced by a new process under the same identity.
    victim = first[f"{name}-0"]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (pid := children().get(f"{name}-0")) is not None and pid != victim,
        60,
        message=lambda: f"restarted child\n{proc.output()}",
    )

    proc.stop()  # SIGTERM to the supervisor: forwarded, children drain and deregister
    assert proc.wait(60) == 0, proc.output()
    assert children() == {}


def test_processes_children_exit_when_the_supervisor_is_killed(
    asyncjobs_kind: WorkerKind, launcher: Launcher, sync_redis: redis.Redis
) -> None:
    """SIGKILL of the supervisor leaves no orphan: each child notices, drains and deregisters."""
    import psutil
    from rq import Worker

    name = unique_name("orphan")
    proc = launcher.start(asyncjobs_kind, ["default"], "--name", name, "--processes", "2", concurrency=2)

    def children() -> dict[str, int]:
        return {w.name: w.pid for w in Worker.all(connection=sync_redis) if w.name.startswith(name)}

    pids = wait_for(lambda: len(children()) == 2 and children(), 30, message=lambda: f"2 children\n{proc.output()}")
    proc.signal(signal.SIGKILL)  # the supervisor alone (kill() would take its children with it)
    proc.wait(30)
    wait_for(lambda: children() == {}, 30, message="children deregistered")
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in pids.values()), 30, message="children exited")
