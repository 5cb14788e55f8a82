"""Health probes (issue 11 §2) against real worker processes and a real, private redis-server.

* Redis stops: ``/readyz`` answers 503 while ``/livez`` stays 200; both 200 once it is back.
* An ``async def`` job that blocks the loop for 5 s under ``--max-loop-lag 2``: ``/livez``
  turns 503 (answered from a thread while the loop is blocked), then 200 again.
* After SIGTERM ``/readyz`` is 503 while the job in flight finishes.
(``--processes``: the supervisor's port, see test_metrics.py.)
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.registry import StartedJobRegistry

from tests.ops import jobs
from tests.ops.test_metrics import get, scrape, value
from tests.testsupport.redis_server import RedisServer, free_port
from tests.testsupport.workers import WorkerProcess, run_asyncjobs_worker, wait_for


@pytest.fixture
def worker_box() -> Iterator[list[WorkerProcess]]:
    box: list[WorkerProcess] = []
    yield box
    for w in box:
        w.close()


def _probe(port: int, path: str) -> tuple[int, str]:
    return get(f"http://127.0.0.1:{port}{path}", timeout=10)


def test_readyz_fails_while_redis_is_down_and_livez_does_not(worker_box: list[WorkerProcess]) -> None:
    server = RedisServer()  # private: this test stops it
    server.start()
    try:
        port = free_port()
        worker = run_asyncjobs_worker(
            server.url, "hq", "--health-port", str(port), "--job-monitoring-interval", "1",
            "--name", f"health-{uuid.uuid4().hex[:8]}",
        )
        worker_box.append(worker)
        wait_for(lambda: _probe(port, "/readyz")[0] == 200, 30, message=lambda: worker.output())
        assert _probe(port, "/livez") == (200, "ok\n")

        server.stop()
        _code, text = wait_for(lambda: (r := _probe(port, "/readyz"))[0] == 503 and r, 30,
                              message=lambda: f"/readyz 503, got {_probe(port, '/readyz')}")
        assert "Redis unreachable" in text and str(server.port) not in text, text  # no address to anyone
        assert _probe(port, "/livez") == (200, "ok\n")

        server.start()
        wait_for(lambda: _probe(port, "/readyz")[0] == 200, 60,
                 message=lambda: f"/readyz 200 again, got {_probe(port, '/readyz')}\n{worker.output()}")
        assert _probe(port, "/livez") == (200, "ok\n")
        assert worker.is_running()
    finally:
        server.close()


def test_livez_fails_while_a_job_blocks_the_event_loop(
    redis_url: str, sync_redis: redis.Redis, worker_box: list[WorkerProcess]
) -> None:
    port = free_port()
    # Health and metrics on one port: one server answers both.
    worker = run_asyncjobs_worker(
        redis_url, "hq", "--health-port", str(port), "--metrics-port", str(port), "--max-loop-lag", "2",
    )
    worker_box.append(worker)
    wait_for(lambda: _probe(port, "/readyz")[0] == 200, 30, message=lambda: worker.output())
    job = Queue("hq", connection=sync_redis).enqueue(jobs.block_loop, 5)

    _code, text = wait_for(lambda: (r := _probe(port, "/livez"))[0] == 503 and r, 30,
                          message=lambda: f"/livez 503 during the block\n{worker.output()}")
    assert "event loop blocked" in text, text
    # The watchdog reports the lag while the loop cannot.
    lag = value(scrape(port), "asyncjobs_event_loop_lag_seconds")
    assert lag is not None and lag > 1, lag

    wait_for(lambda: _probe(port, "/livez")[0] == 200, 30, message=lambda: f"/livez 200 after\n{worker.output()}")
    # ... and the job that blocked it is interrupted once its blocking call returns (issue 18 item 2)
    wait_for(lambda: job.get_status(refresh=True) == "failed", 30, message=lambda: worker.output())
    assert "LoopBlockedError" in str(job.latest_result().exc_string)
    assert "event loop blocked" in worker.output() and "block_loop" in worker.output(), (
        "the warning shows where the loop is blocked"
    )


def test_readyz_fails_after_sigterm_while_the_job_in_flight_finishes(
    redis_url: str, sync_redis: redis.Redis, worker_box: list[WorkerProcess], tmp_path: Path
) -> None:
    port = free_port()
    worker = run_asyncjobs_worker(redis_url, "hq", "--health-port", str(port), "--shutdown-timeout", "60")
    worker_box.append(worker)
    wait_for(lambda: _probe(port, "/readyz")[0] == 200, 30, message=lambda: worker.output())
    release = tmp_path / "release"
    queue = Queue("hq", connection=sync_redis)
    job = queue.enqueue(jobs.wait_for_file, str(release))
    wait_for(lambda: StartedJobRegistry(queue=queue).count == 1, 30, message=lambda: worker.output())
    # Running, not only claimed: a stop that lands while the claim's reply is on its way gives the job
    # back unstarted (by design), which is not what this test is about (seen once under load, RQ 2.12).
    wait_for(lambda: f"({job.id})" in worker.output(), 30, message=lambda: worker.output())

    worker.stop()  # SIGTERM: warm shutdown, the job keeps running
    _code, text = wait_for(lambda: (r := _probe(port, "/readyz"))[0] == 503 and r, 30,
                          message=lambda: f"/readyz 503 while draining\n{worker.output()}")
    assert "draining" in text, text
    assert _probe(port, "/livez")[0] == 200
    assert job.get_status(refresh=True) == "started"

    release.touch()
    assert worker.wait(60) == 0, worker.output()
    assert job.get_status(refresh=True) == "finished"
    assert job.return_value() == "done"


def test_a_port_in_use_is_refused_with_a_readable_error(redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ((), ("--processes", "2")):
            worker = run_asyncjobs_worker(redis_url, "hq", "--burst", "--health-port", str(port),
                                          "--health-host", "127.0.0.1", *extra)
            try:
                assert worker.wait(60) == 2, worker.output()
                assert f"cannot listen on 127.0.0.1:{port} for /livez, /readyz" in worker.output()
                assert "choose a free port" in worker.output()
            finally:
                worker.close()


def test_ops_options_precedence_flag_then_settings_then_env() -> None:
    from asyncjobs.cli.worker import ops_options

    env = {"ASYNCJOBS_METRICS_PORT": "9300", "ASYNCJOBS_HEALTH_PORT": "8300", "ASYNCJOBS_MAX_LOOP_LAG": "4"}
    settings = {"ASYNCJOBS_METRICS_PORT": 9200, "ASYNCJOBS_HEALTH_HOST": "127.0.0.1"}
    got = ops_options({"metrics_port": 9100, "health_port": None}, settings, env)
    assert got == {"metrics_port": 9100, "health_port": 8300, "health_host": "127.0.0.1", "max_loop_lag": 4.0}
    assert ops_options({}, settings, env)["metrics_port"] == 9200
    with pytest.raises(ValueError, match=r"\$ASYNCJOBS_HEALTH_PORT = 'eighty' is not a number"):
        ops_options({}, None, {"ASYNCJOBS_HEALTH_PORT": "eighty"})


def test_ops_port_listens_on_loopback_and_bounds_each_request(worker_box: list[WorkerProcess], redis_url: str) -> None:
    """Issue 18 item 5: the port listened on 0.0.0.0, and 99 header lines of 64 KiB per request were read."""
    import socket

    import psutil

    port = free_port()
    worker = run_asyncjobs_worker(redis_url, "hq", "--health-port", str(port))
    worker_box.append(worker)
    wait_for(lambda: _probe(port, "/readyz")[0] == 200, 30, message=lambda: worker.output())
    listening = {c.laddr.ip for c in psutil.Process(worker.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}, listening

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            s.sendall(b"X-Pad: " + b"a" * 60_000 + b"\r\n")
        answer = s.recv(200)
    assert answer.startswith(b"HTTP/1.0 431"), answer
    assert _probe(port, "/livez") == (200, "ok\n")


def test_idle_connections_cannot_starve_the_probes(worker_box: list[WorkerProcess], redis_url: str) -> None:
    """Issue 18 item 7a: 1,000 idle connections to an ops port (at systemd's 1,024 open files) made /livez
    time out. Connections that send no request are evicted oldest first; a probe is still answered at
    once, and the worker's open files stay bounded."""
    import socket

    import psutil

    port = free_port()
    worker = run_asyncjobs_worker(redis_url, "hq", "--health-port", str(port))
    worker_box.append(worker)
    wait_for(lambda: _probe(port, "/readyz")[0] == 200, 30, message=lambda: worker.output())
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for _ in range(3):
            assert _probe(port, "/livez") == (200, "ok\n")
        assert psutil.Process(worker.pid).num_fds() < 512
    finally:
        for s in idle:
            s.close()
    assert _probe(port, "/readyz")[0] == 200
