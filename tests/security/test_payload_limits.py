"""Issue 10 item 2: payload size.  A zip bomb fails its own job, readably, and nothing else.

The data field is inflated with a cap (``--max-payload-size``, 64 MiB by
default) and payloads above a small threshold are decoded off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import zlib
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job

from tests.security import jobs
from tests.testsupport.workers import run_asyncjobs_worker, wait_for
from tests.worker.conftest import start_worker  # noqa: F401 - fixture

MiB = 1 << 20


def zip_bomb(func_name: str, inflated: int) -> bytes:
    """RQ data ``(func_name, None, (bytes(inflated),), {})``, zlib-compressed without building it in memory."""
    placeholder = b"\x01" * 300
    head = pickle.dumps((func_name, None, (placeholder,), {}), protocol=3)
    opcode = b"B" + struct.pack("<I", len(placeholder))  # BINBYTES <len>
    i = head.index(opcode + placeholder)
    prefix, suffix = head[:i], head[i + len(opcode) + len(placeholder):]
    z = zlib.compressobj(9)
    parts = [z.compress(prefix + b"B" + struct.pack("<I", inflated))]
    chunk = bytes(MiB)
    for _ in range(inflated // MiB):
        parts.append(z.compress(chunk))
    parts += [z.compress(suffix), z.flush()]
    return b"".join(parts)


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _status(conn: redis.Redis, job_id: str) -> str | None:
    raw = conn.hget(f"rq:job:{job_id}", "status")
    return raw.decode() if raw else None


def test_zip_bomb_fails_its_own_job_and_nothing_else(redis_url: str, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    bomb = q.enqueue(jobs.nbytes, b"", description="zip bomb")
    data = zip_bomb("tests.security.jobs.nbytes", 512 * MiB)
    assert len(data) < 1 * MiB  # a small hash field ...
    sync_redis.hset(f"rq:job:{bomb.id}", "data", data)  # ... that inflates to 512 MiB
    neighbour = q.enqueue(jobs.async_add, 1, 2)

    with run_asyncjobs_worker(redis_url, "default", "--concurrency", "4") as proc:
        wait_for(lambda: _status(sync_redis, bomb.id) in ("failed", "finished"), 60, message=proc.output)
        after = q.enqueue(jobs.add, 20, 22)
        wait_for(lambda: _status(sync_redis, after.id) == "finished", 30, message=proc.output)
        peak = peak_rss(proc.pid)
        assert proc.is_running(), proc.output()
        proc.stop()
        assert proc.wait(30) == 0, proc.output()

    job = Job.fetch(bomb.id, connection=sync_redis)
    assert job.get_status() == "failed"
    reason = job.latest_result().exc_string
    assert "DeserializationError" in reason and "64 MiB" in reason and "--max-payload-size" in reason, reason
    assert Job.fetch(neighbour.id, connection=sync_redis).return_value() == 3
    assert Job.fetch(after.id, connection=sync_redis).return_value() == 42
    # never inflated past the cap: far below the 512 MiB the payload would take
    assert peak < 320 * MiB, f"worker peaked at {peak / MiB:.0f} MiB"


def test_max_payload_size_option(redis_url: str, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    compressed_big = q.enqueue(jobs.nbytes, bytes(2 * MiB), description="2 MiB of zeros")
    small = q.enqueue(jobs.nbytes, bytes(MiB // 2), description="512 KiB of zeros")
    raw_big = q.enqueue(jobs.nbytes, b"", description="2 MiB, stored uncompressed")
    # RQ reads data that is not zlib as raw serializer bytes; the cap applies to those too
    raw = pickle.dumps(("tests.security.jobs.nbytes", None, (os.urandom(2 * MiB),), {}))
    sync_redis.hset(f"rq:job:{raw_big.id}", "data", raw)

    with run_asyncjobs_worker(redis_url, "default", "--burst", "--max-payload-size", "1M") as proc:
        assert proc.wait(60) == 0, proc.output()

    for job_id in (compressed_big.id, raw_big.id):
        job = Job.fetch(job_id, connection=sync_redis)
        assert job.get_status() == "failed"
        assert "1 MiB" in job.latest_result().exc_string and "--max-payload-size" in job.latest_result().exc_string
    assert Job.fetch(small.id, connection=sync_redis).return_value() == MiB // 2


def test_meta_is_held_to_the_payload_cap(redis_url: str, sync_redis: redis.Redis) -> None:
    """``job.meta`` is job data too (hooks and callbacks decode it on the event loop): a meta over
    ``--max-payload-size`` fails its own job, naming the bound, before anything decodes it."""
    q = Queue("default", connection=sync_redis)
    heavy = q.enqueue(jobs.add, 1, 1, meta={"blob": os.urandom(2 * MiB)}, description="2 MiB of meta")
    light = q.enqueue(jobs.add, 2, 2, meta={"note": "fine"})
    with run_asyncjobs_worker(redis_url, "default", "--burst", "--max-payload-size", "1M") as proc:
        assert proc.wait(60) == 0, proc.output()
    job = Job.fetch(heavy.id, connection=sync_redis)
    assert job.get_status() == "failed"
    reason = job.latest_result().exc_string
    assert "meta" in reason and "1 MiB" in reason and "--max-payload-size" in reason, reason
    assert Job.fetch(light.id, connection=sync_redis).return_value() == 4


def test_invalid_max_payload_size_is_refused(redis_url: str) -> None:
    with run_asyncjobs_worker(redis_url, "default", "--burst", "--max-payload-size", "lots") as proc:
        assert proc.wait(30) == 2
        assert "--max-payload-size" in proc.output() and "'lots'" in proc.output()


async def test_large_payloads_are_decoded_off_the_event_loop(sync_redis: redis.Redis, start_worker) -> None:  # noqa: F811
    jobs.ThreadRecordingSerializer.calls.clear()
    q = Queue("default", connection=sync_redis)
    small = q.enqueue(jobs.nbytes, b"x" * 100)
    large = q.enqueue(jobs.nbytes, os.urandom(MiB), description="1 MiB")
    _worker, task = await start_worker(burst=True, serializer="tests.security.jobs.ThreadRecordingSerializer")
    await asyncio.wait_for(task, 30)
    assert Job.fetch(small.id, connection=sync_redis).return_value() == 100
    assert Job.fetch(large.id, connection=sync_redis).return_value() == MiB
    on_loop = {size > MiB: main for size, main in jobs.ThreadRecordingSerializer.calls}
    assert on_loop == {False: True, True: False}, jobs.ThreadRecordingSerializer.calls
