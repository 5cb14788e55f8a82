"""RQ's worker commands over pub/sub (``rq:pubsub:<name>``, docs/rq-protocol.md §9.2).

- ``shutdown``: warm shutdown (finish jobs in flight, exit).
- ``drain`` (asyncjobs' own, ``asyncjobs-worker drain NAME``): stop claiming, finish every job in
  flight however long it takes, exit 0.  Stock workers ignore it.
- ``stop-job``: cancel that job if it runs here; it ends ``stopped``.
- ``stop-execution`` (RQ 3's ``send_stop_execution_command``): the same for the one
  execution it names (docs/rq-protocol.md §13.6).
- ``kill-horse``: there is no work-horse process; the job named in the
  worker's ``current_job`` is cancelled and failed with "Work-horse terminated
  unexpectedly", which is what a stock worker records for a killed horse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

from redis.asyncio import Redis

from asyncjobs import metrics
from asyncjobs.backoff import Backoff
from asyncjobs.protocol import keys

log = logging.getLogger("asyncjobs.worker")


class Controllable(Protocol):
    def request_stop(self) -> None: ...

    def request_drain(self) -> None: ...

    def stop_job(self, job_id: str, reason: str = ...) -> bool: ...

    def stop_execution(self, execution_id: str) -> bool: ...

    def current_job_id(self) -> str | None: ...


class CommandListener:
    def __init__(self, redis: Redis, worker_name: str, target: Controllable) -> None:
        self.redis = redis
        self.channel = keys.pubsub(worker_name)
        self.target = target

    def handle(self, payload: Any) -> None:
        try:
            data = json.loads(payload)
            command = data["command"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed worker command %r", payload)
            return
        if command == "shutdown":
            log.info("shutdown command received")
            self.target.request_stop()
        elif command == "drain":
            log.info("drain command received")
            self.target.request_drain()
        elif command == "stop-job":
            job_id = str(data.get("job_id", ""))
            if not self.target.stop_job(job_id, "stop"):
                log.info("stop-job for %s ignored: not running here", job_id)
        elif command == "stop-execution":
            execution_id = str(data.get("execution_id", ""))
            if not self.target.stop_execution(execution_id):
                log.warning("stop-execution for %s (job %s) ignored: not running here", execution_id,
                            data.get("job_id"))
        elif command == "kill-horse":
            current = self.target.current_job_id()
            if current is not None:
                self.target.stop_job(current, "kill")
        else:
            log.warning("unknown worker command %r", command)

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set (polled each second: redis-py's pub/sub may swallow a cancel)."""
        backoff = Backoff(on_wait=metrics.redis_error)
        while not stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                backoff.reset()
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and message.get("type") == "message":
                        self.handle(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop.is_set():
                    break
                await backoff.wait(f"command channel {self.channel}: {exc}", stop)
            finally:
                with contextlib.suppress(Exception):  # best effort on a dead connection
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
