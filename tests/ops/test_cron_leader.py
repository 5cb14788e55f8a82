"""Issue 21 §1, in one process: the cron leader, its ticks and RQ's monitoring, on a fake clock.

Two :class:`CronRunner` (two workers of a fleet) against a real Redis, with the wall clock and the
monotonic clock in the test's hands: ticks due are enqueued once each, a clock stepped back enqueues
nothing twice, a takeover enqueues the ticks missed meanwhile (late), a stale leader's enqueue of a
tick already enqueued does nothing, and RQ's own readers see the scheduler, the jobs' history and
their next and last runs.  The real processes (SIGKILLed leaders) are in test_cron.py.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.cron import CronScheduler, get_cron_job_ids
from rq.job import Job

from asyncjobs.connection import RedisTarget
from asyncjobs.protocol.keys import DEFAULT
from asyncjobs.worker.cron import CronConfigError, CronRunner, load_cron_config

CONFIG = """\
from rq import cron
from tests.ops import jobs

cron.register(jobs.ok, "cq", args=(1,), interval=10, name="every-10s")
cron.register(jobs.ok, "cq", args=(2,), cron="* * * * *", name="every-minute", meta={"mine": 1})
"""

T0 = 1_900_000_000.0 - 1_900_000_000.0 % 60 + 5  # 5 s past a minute (UTC, and local on whole-hour zones)


class Clocks:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def advance(self, seconds: float, *, wall_only: bool = False) -> None:
        self.wall += seconds
        if not wall_only:
            self.mono += seconds


def _ticks(conn: redis.Redis) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for job in Queue("cq", connection=conn).get_jobs():
        name = "every-10s" if job.args == (1,) else "every-minute"
        out.setdefault(name, []).append(job.meta["cron_scheduled_at"])
    return out


def test_one_leader_enqueues_each_tick_once_across_clock_steps_and_a_takeover(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    conf = tmp_path / "cron_config.py"
    conf.write_text(CONFIG)
    clocks = Clocks()
    target = RedisTarget(url=redis_url)

    def runner(name: str) -> CronRunner:
        return CronRunner(target, load_cron_config(str(conf)), name, config_file=str(conf), lease=3.0,
                          clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)

    a, b = runner("worker-a"), runner("worker-b")
    try:
        a.step()
        b.step()
        assert a.leading and not b.leading
        assert sync_redis.get(DEFAULT.cron_leader) == b"worker-a"
        (first,) = _ticks(sync_redis)["every-10s"]  # an interval job runs at once, as under `rq cron`
        assert datetime.fromisoformat(first).timestamp() == T0 and "every-minute" not in _ticks(sync_redis)
        # 65 s later: six interval ticks and the minute's tick.
        clocks.advance(65)
        a.step()
        b.step()
        ticks = _ticks(sync_redis)
        assert len(ticks["every-10s"]) == 7 and len(set(ticks["every-10s"])) == 7
        assert len(ticks["every-minute"]) == 1
        # The wall clock steps back 30 s: nothing is enqueued again.
        clocks.advance(-30, wall_only=True)
        a.step()
        assert _ticks(sync_redis) == ticks
        clocks.advance(30, wall_only=True)
        # The leader dies (its lease expires: deleted here); 60 s pass; b takes over and enqueues the
        # six interval ticks and the minute's tick missed meanwhile, late, each once.
        sync_redis.delete(DEFAULT.cron_leader)
        clocks.advance(60)
        b.step()
        assert b.leading
        ticks = _ticks(sync_redis)
        assert len(ticks["every-10s"]) == 13 and len(set(ticks["every-10s"])) == 13
        # The old leader, not yet aware, re-enqueues a tick b already enqueued: nothing happens.
        entry = a.entries[0]
        last_ms = int(sync_redis.hget(DEFAULT.cron_last, entry.cron_id) or 0)
        assert a._enqueue(entry, last_ms) is False
        a.step()  # its renewal fails: it stops leading
        assert not a.leading and b.leading
        assert _ticks(sync_redis) == ticks
        # Every interval tick on the 10 s grid from T0, once; the minute ticks on minute boundaries.
        assert sorted(datetime.fromisoformat(t).timestamp() for t in ticks["every-10s"]) == [T0 + 10 * i for i in range(13)]
        assert all(datetime.fromisoformat(t).second == 0 for t in ticks["every-minute"])
        assert len(ticks["every-minute"]) == len(set(ticks["every-minute"])) == 2

        # RQ's monitoring: the leader is an RQ CronScheduler with its jobs' next and last runs; the jobs
        # are in RQ's CronJob history; the jobs are ordinary RQ jobs (options and meta kept).
        (sched,) = [s for s in CronScheduler.all(sync_redis) if s.name == "worker-b"]
        by_name = {j.name: j for j in sched.get_jobs()}
        assert set(by_name) == {"every-10s", "every-minute"}
        assert by_name["every-10s"].latest_enqueue_time.timestamp() == T0 + 120
        assert by_name["every-10s"].next_enqueue_time.timestamp() == T0 + 130
        assert sched.config_file == str(conf)
        ids = get_cron_job_ids("every-10s", sync_redis)
        assert len(ids) == 13
        job = Job.fetch(get_cron_job_ids("every-minute", sync_redis)[0], connection=sync_redis)
        assert job.meta["mine"] == 1 and job.origin == "cq" and job.func_name == "tests.ops.jobs.ok"
    finally:
        b.close()
        a.close()
    assert sync_redis.get(DEFAULT.cron_leader) is None
    assert [s.name for s in CronScheduler.all(sync_redis)] == []


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ('from rq import cron\nfrom tests.ops import jobs\n\ncron.register(jobs.ok, "q", cron="61 * * * *")\n', 4, "61"),
        ('from rq import cron\nfrom tests.ops import jobs\ncron.register(jobs.ok, "q")\n', 3, "interval or cron"),
        ("from rq import cron\nimport no_such_module_here\n", 2, "no_such_module_here"),
        ("from rq import cron\ncron.register(\n", 2, "SyntaxError"),
    ],
)
def test_config_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    conf = tmp_path / "bad_cron.py"
    conf.write_text(text)
    with pytest.raises(CronConfigError) as caught:
        load_cron_config(str(conf))
    message = str(caught.value)
    assert f"{conf}:{line}" in message and what in message, message


def test_a_cron_job_that_never_ran_shows_no_last_run(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    """A cron expression starts from the fleet's first start (an anchor off its grid): until its first
    tick RQ's monitoring shows no last run, also on a worker that takes over."""
    conf = tmp_path / "cron_config.py"
    conf.write_text(CONFIG)
    clocks = Clocks()
    first = CronRunner(RedisTarget(url=redis_url), load_cron_config(str(conf)), "w1", lease=3.0,
                       clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    second = CronRunner(RedisTarget(url=redis_url), load_cron_config(str(conf)), "w2", lease=3.0,
                        clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    try:
        first.step()
        first.close()
        clocks.advance(10)
        second.step()
        assert second.leading
        job = {e.cron_id: e.job for e in second.entries}["every-minute"]
        assert job.latest_enqueue_time is None and job.next_enqueue_time.timestamp() == T0 - 5 + 60
    finally:
        second.close()


def test_a_job_that_cannot_be_enqueued_does_not_stop_the_others(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "cron_config.py"
    conf.write_text(CONFIG + 'cron.register(jobs.ok, "cq", args=(lambda: 1,), interval=10, name="unpicklable")\n')
    clocks = Clocks()
    runner = CronRunner(RedisTarget(url=redis_url), load_cron_config(str(conf)), "w", lease=3.0,
                        clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    try:
        for _ in range(3):
            runner.step()
            clocks.advance(10)
        assert len(_ticks(sync_redis)["every-10s"]) == 3
        errors = [r.getMessage() for r in caplog.records if "could not enqueue unpicklable" in r.getMessage()]
        assert len(errors) == 1 and f"{conf}:6" in errors[0], errors  # once, naming where it was registered
    finally:
        runner.close()
