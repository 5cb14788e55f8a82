"""Issue 21 §1 against real processes: three ``asyncjobs-worker --cron`` with the same config, the
leader SIGKILLed twice; every tick of a one-second interval job is enqueued exactly once (counted by
scheduled time, so a tick missed during a takeover must have been enqueued late), and each takeover
is measured.  The workers serve another queue, so the cron jobs stay queued to be counted.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import redis
from rq import Queue
from rq.cron import get_cron_job_ids

from asyncjobs.protocol.keys import DEFAULT
from tests.ops.test_metrics import scrape, value
from tests.testsupport.redis_server import free_port
from tests.testsupport.workers import asyncjobs_worker_command, run_asyncjobs_worker, wait_for

LEASE = 2.0
CONFIG = """\
from rq import cron
from tests.ops import jobs

cron.register(jobs.ok, "cronq", args=(1,), interval=1, name="every-second")
cron.register(jobs.ok, "cronq-minute", args=(2,), cron="* * * * *", name="every-minute")
"""


def _scheduled(conn: redis.Redis, queue: str = "cronq") -> list[float]:
    return sorted(datetime.fromisoformat(j.meta["cron_scheduled_at"]).timestamp()
                  for j in Queue(queue, connection=conn).get_jobs())


def _leader(conn: redis.Redis) -> str | None:
    raw = conn.get(DEFAULT.cron_leader)
    return raw.decode() if raw else None


def test_three_cron_workers_enqueue_every_tick_once_across_two_leader_kills(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    conf = tmp_path / "cron_config.py"
    conf.write_text(CONFIG)
    names = ["cron-a", "cron-b", "cron-c"]
    ports = {n: free_port() for n in names}
    procs = {n: run_asyncjobs_worker(redis_url, "other", "--name", n, "--cron", str(conf), "--cron-lease",
                                     str(LEASE), "--metrics-port", str(ports[n])) for n in names}
    try:
        def outputs() -> str:
            return "\n".join(f"--- {n}\n{p.output()}" for n, p in procs.items())

        leader = wait_for(lambda: _leader(sync_redis), 30, message=lambda: f"a cron leader\n{outputs()}")
        takeovers = []
        for _ in range(2):
            seen = len(_scheduled(sync_redis))
            wait_for(lambda seen=seen: len(_scheduled(sync_redis)) >= seen + 3, 30, message=lambda: f"ticks\n{outputs()}")
            procs[leader].kill()  # SIGKILL: no release, no death registered; its lease must expire
            killed = time.monotonic()
            new = wait_for(lambda old=leader: (n := _leader(sync_redis)) not in (None, old) and n, 30,
                           message=lambda: f"a new leader\n{outputs()}")
            takeovers.append(time.monotonic() - killed)
            assert new in names and procs[new].is_running()
            leader = new
        seen = len(_scheduled(sync_redis))
        wait_for(lambda: len(_scheduled(sync_redis)) >= seen + 3, 30, message=lambda: f"ticks\n{outputs()}")

        info = subprocess.run([*asyncjobs_worker_command(), "info", "-u", redis_url], capture_output=True, text=True,
                              timeout=60, check=True).stdout
        assert f"Cron: leader {leader}" in info and "every-second  queue=cronq  every 1s  last run 2" in info, info

        samples = scrape(ports[leader])  # the leader's metrics: it leads, and counts its ticks
        assert value(samples, "asyncjobs_cron_leader") == 1
        assert (value(samples, "asyncjobs_cron_ticks_total", cron_job="every-second") or 0) >= 3

        procs[leader].signal(signal.SIGTERM)  # the last one: a warm stop releases the lease at once
        assert procs[leader].wait(30) == 0, procs[leader].output()
        assert _leader(sync_redis) is None
    finally:
        for p in procs.values():
            p.close()

    ticks = _scheduled(sync_redis)
    # Exactly once: a one-second grid from the first tick to the last, no tick twice, none missing.
    assert ticks == [ticks[0] + i for i in range(len(ticks))], ticks
    # A dead leader's key expires after 3/4 of LEASE and the others try every LEASE/4: replaced within
    # LEASE (the margin is for a loaded machine: the kill, the tries and this poll all take time).
    print(f"takeovers after SIGKILL: {', '.join(f'{t:.2f}s' for t in takeovers)} (lease {LEASE}s)")
    assert all(t <= LEASE + 2.5 for t in takeovers), takeovers
    # The `* * * * *` job: a tick per minute boundary the run crossed (the run is shorter than two
    # minutes: at most two), each once.
    minutes = _scheduled(sync_redis, "cronq-minute")
    assert len(minutes) == len(set(minutes)) <= 2 and all(t % 60 == 0 for t in minutes), minutes
    # A tick missed during a takeover was enqueued late, but within the lease (plus the same margin).
    late = [(j.enqueued_at - datetime.fromisoformat(j.meta["cron_scheduled_at"])).total_seconds()
            for j in Queue("cronq", connection=sync_redis).get_jobs()]
    print(f"latest tick enqueued {max(late):.2f}s after its time")
    assert max(late) <= LEASE + 2.5, sorted(late)[-5:]
    # RQ's CronJob history lists every one of them.
    assert len(get_cron_job_ids("every-second", sync_redis)) == len(ticks)


def test_a_bad_cron_config_stops_the_start_naming_file_and_line(redis_url: str, tmp_path: Path) -> None:
    conf = tmp_path / "cron_config.py"
    conf.write_text('from rq import cron\nfrom tests.ops import jobs\n\ncron.register(jobs.ok, "q", cron="* * *")\n')
    proc = subprocess.run([*asyncjobs_worker_command(), "-u", redis_url, "--cron", str(conf), "q"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{conf}:4: " in proc.stderr, proc.stderr
