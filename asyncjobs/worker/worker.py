"""The asyncio worker: fetch, admit under ``--concurrency``, execute, record, shut down.

One process is one RQ worker identity (``rq:worker:<name>``): ``rq info`` shows
it ``busy`` while any job runs, ``current_job`` names one of the running jobs,
and ``stop-job`` commands on ``rq:pubsub:<name>`` are matched against every job
in flight.  All Redis work goes through :class:`~asyncjobs.protocol.store.RedisStore`,
batched across the jobs in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio import Redis

from asyncjobs.protocol import keys, transitions
from asyncjobs.protocol.codec import (
    JobRecord,
    MalformedJobError,
    PayloadError,
    encode_return_value,
    parse_job_hash,
)
from asyncjobs.protocol.serializers import resolve_serializer, rq_serializer
from asyncjobs.protocol.store import Claimed, RedisStore, Running, WorkerInfo
from asyncjobs.protocol.timeutil import utcnow
from asyncjobs.worker.callbacks import Callbacks
from asyncjobs.worker.commands import CommandListener
from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.context import JobHandle, install_rq_job_stack
from asyncjobs.worker.executor import Executor
from asyncjobs.worker.joblog import started_message
from asyncjobs.worker.lifecycle import run_shutdown_hooks
from asyncjobs.worker.payload import decode_payload
from asyncjobs.worker.recorder import REDIS_ERRORS, Backoff, Recorder, wait_or
from asyncjobs.worker.resolver import FunctionResolver, ResolveError

log = logging.getLogger("asyncjobs.worker")

T = TypeVar("T")


@dataclass(eq=False)
class InFlight:
    claimed: Claimed
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None  # "stop" | "give_back" | "kill"
    after_recorded: Callable[[], None] | None = None  # e.g. webhooks, once the outcome is stored

    @property
    def running(self) -> Running:
        c = self.claimed
        return Running(c.queue, c.job_id, c.execution_id)


class Worker:
    def __init__(self, config: WorkerConfig, *, redis: Redis | None = None) -> None:
        self.config = config
        self.name = config.name or uuid.uuid4().hex
        self.serializer = resolve_serializer(config.serializer, config.allowed_modules)
        self.resolver = FunctionResolver(config.allowed_modules)
        self._redis = redis
        self._inflight: dict[str, InFlight] = {}
        self._reserved = 0
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._cold = asyncio.Event()
        self._waiters: set[asyncio.Task[None]] = set()
        self._rr_offset = 0
        self._started_jobs = 0
        self.successful = 0
        self.failed = 0
        self._sync_redis: Any = None
        self._rq_ser: Any = None
        self._eid_prefix = uuid.uuid4().hex[:16]
        self._eid_counter = 0
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Warm shutdown: stop fetching, let in-flight jobs finish (up to the grace period)."""
        if not self._stopping.is_set():
            log.info("warm shutdown requested: finishing %d job(s) in flight", len(self._inflight))
            self._stopping.set()
            self._slot_freed.set()

    def request_cold_stop(self) -> None:
        """Cold shutdown: cancel what is left and put those jobs back on their queues."""
        self.request_stop()
        if not self._cold.is_set():
            log.warning("cold shutdown: putting %d unfinished job(s) back on their queues", len(self._inflight))
            self._cold.set()
            for item in list(self._inflight.values()):
                self._cancel(item, "give_back")

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: warm shutdown; second: cold shutdown."""
        loop = asyncio.get_running_loop()

        def handler(signum: int) -> None:
            if self._stopping.is_set():
                self.request_cold_stop()
            else:
                log.info("received %s", signal.Signals(signum).name)
                self.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, handler, sig)

    def stop_job(self, job_id: str, reason: str = "stop") -> bool:
        found = False
        for item in list(self._inflight.values()):
            if item.claimed.job_id == job_id:
                self._cancel(item, reason)
                found = True
        return found

    def current_job_id(self) -> str | None:
        return self.worker_state()[1]

    async def run(self) -> None:
        redis_conn = self._redis or self.config.connection.async_client(
            socket_keepalive=True, health_check_interval=30
        )
        self.redis = redis_conn
        self.store = RedisStore(redis_conn, self.name, heartbeat_ttl=self.config.heartbeat_ttl)
        self.recorder = Recorder(self.store, self.worker_state)
        self.executor = Executor(self.config.threads or self.config.concurrency)
        self.callbacks = Callbacks(self.executor, self._sync_connection, self.config.exception_handlers, self.resolver)
        install_rq_job_stack()
        self._info = WorkerInfo(self.name, self.config.queues, self.config.idle_worker_key_ttl)
        await self._retrying(lambda: self.store.register_birth(self._info), "register worker")
        log.info(
            "worker %s started: queues=%s concurrency=%d burst=%s",
            self.name, ",".join(self.config.queues), self.config.concurrency, self.config.burst,
        )
        commands = CommandListener(redis_conn, self.name, self)
        background = [
            asyncio.create_task(self.recorder.run(), name="asyncjobs-recorder"),
            asyncio.create_task(self._heartbeater(), name="asyncjobs-heartbeat"),
            asyncio.create_task(commands.run(self._closed), name="asyncjobs-commands"),
        ]
        extra = await self._start_extras()
        background += extra
        try:
            await self._retrying(lambda: self.store.set_state("idle"), "set state")
            await self._work_loop()
            self.recorder.go_autonomous()  # from here on nobody claims: it stores outcomes itself
            await self._drain()
        finally:
            for task in self._waiters:
                task.cancel()
            await self.recorder.flush(max(30.0, self.config.shutdown_timeout))
            self.recorder.close()
            self._closed.set()
            for task in background[1:]:
                if task.get_name() != "asyncjobs-commands":
                    task.cancel()
            # Bounded: a task stuck in a dead connection must not keep the process alive.
            _, stuck = await asyncio.wait(background, timeout=10)
            for task in stuck:
                task.cancel()
            await run_shutdown_hooks()
            try:
                await self.store.register_death(self.config.queues)
            except REDIS_ERRORS as exc:
                log.error("could not register worker death (Redis unreachable: %s)", exc)
            self.executor.shutdown()
            if self._sync_redis is not None:
                self._sync_redis.close()
            if self._redis is None:
                await redis_conn.aclose()
            log.info("worker %s stopped: %d succeeded, %d failed", self.name, self.successful, self.failed)

    async def _start_extras(self) -> list[asyncio.Task[None]]:
        tasks: list[asyncio.Task[None]] = []
        from asyncjobs.worker.maintenance import Maintenance

        maint = Maintenance(self.config, self._rq_serializer())
        tasks.append(asyncio.create_task(maint.run(self._stopping, self.name), name="asyncjobs-maintenance"))
        if self.config.with_scheduler:
            from asyncjobs.worker.scheduler import Scheduler

            sched = Scheduler(self.config.connection, self.config.queues, self._rq_serializer())
            if self.config.burst:
                await self._retrying(lambda: asyncio.to_thread(sched.tick_once), "scheduler tick")
            tasks.append(asyncio.create_task(sched.run(self._stopping), name="asyncjobs-scheduler"))
        return tasks

    # ------------------------------------------------------------ fetch loop
    def _free(self, finishing: int = 0) -> int:
        """Slots to claim for; ``finishing`` outcomes are stored in the same call, freeing theirs."""
        free = self.config.concurrency - len(self._inflight) - self._reserved + finishing
        if self.config.max_jobs is not None:
            free = min(free, self.config.max_jobs - self._started_jobs - self._reserved)
        return max(free, 0)

    def worker_state(self) -> tuple[str, str | None]:
        """(state, current_job) from the jobs still executing (not those only awaiting their record)."""
        for item in self._inflight.values():
            if item.task is not None and not item.task.done():
                return "busy", item.claimed.job_id
        return "idle", None

    def _execution_ids(self, n: int) -> list[str]:
        """32 lowercase hex characters like RQ's uuid4().hex: a random per-process prefix + a counter."""
        start = self._eid_counter
        self._eid_counter += n
        return [f"{self._eid_prefix}{i:016x}" for i in range(start, start + n)]

    def _queue_order(self) -> list[str]:
        queues = list(self.config.queues)
        if self.config.dequeue_strategy == "round_robin":
            k = self._rr_offset % len(queues)
            self._rr_offset += 1
            queues = queues[k:] + queues[:k]
        elif self.config.dequeue_strategy == "random":
            random.shuffle(queues)
        return queues

    async def _work_loop(self) -> None:
        idle_since = time.monotonic()
        backoff = Backoff()
        suspended_logged = False
        while not self._stopping.is_set():
            if self.config.max_jobs is not None and self._started_jobs >= self.config.max_jobs:
                log.info("max jobs (%d) reached", self.config.max_jobs)
                break
            # Outcomes waiting to be stored free their slots in the same round trip that claims.
            done = self.recorder.take()
            free = self._free(len(done.outcomes))
            if free == 0 and not done.outcomes:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                # Let the other jobs finishing in this loop iteration submit too: one round trip for all.
                await asyncio.sleep(0)
                continue
            try:
                result = await self.store.exchange(
                    self.recorder.outcomes(done), self._queue_order(), free, self._execution_ids(free)
                )
            except REDIS_ERRORS as exc:
                self.recorder.restore(done)
                await backoff.wait(f"claim jobs: {exc}", self._stopping)
                continue
            except redis.exceptions.ResponseError as exc:
                # Redis refused the call (e.g. OOM): keep the worker alive, store what it can.
                log.error("Redis refused to claim/record (%s)", exc)
                await self.recorder.store_one_by_one(done)
                await backoff.wait(f"Redis error: {exc}", self._stopping)
                continue
            self.recorder.stored(done)
            backoff.reset()
            for job_id in result.dropped:
                log.warning("job %s was on a queue but its hash is gone (expired or deleted); dropped", job_id)
            if result.suspended:
                if self.config.burst:
                    log.info("workers are suspended (rq suspend); burst worker exits")
                    break
                if not suspended_logged:
                    log.info("workers are suspended (rq suspend): not fetching until `rq resume`")
                    suspended_logged = True
                    await self._safe(self.store.set_state("suspended"))
                await wait_or(self._stopping, 1.0)
                continue
            if suspended_logged:
                suspended_logged = False
                await self._safe(self.store.set_state(self.worker_state()[0]))
            if result.jobs:
                for claimed in result.jobs:
                    self._launch(claimed)
                idle_since = time.monotonic()
                continue
            if self._inflight or self._reserved or self.recorder.pending.outcomes:
                if self.config.burst:
                    # Jobs in flight may still enqueue work (retries, dependents): wait for one to end.
                    self._slot_freed.clear()
                    if not self.recorder.pending.outcomes:
                        await self._slot_freed.wait()
                    continue
            elif self.config.burst:
                break
            if (
                self.config.max_idle_time is not None
                and not self._inflight
                and time.monotonic() - idle_since >= self.config.max_idle_time
            ):
                log.info("idle for %.0fs (--max-idle-time): exiting", self.config.max_idle_time)
                break
            await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        """Block (BLMOVE) on each queue until a job arrives, a slot frees, or stop."""
        timeout = self.config.block_timeout
        if self.config.max_idle_time is not None:
            timeout = max(0.1, min(timeout, self.config.max_idle_time))
        free = self._free()
        for queue in self._queue_order()[:free]:
            if any(getattr(t, "queue", None) == queue for t in self._waiters):
                continue
            self._reserved += 1
            task = asyncio.create_task(self._waiter(queue, timeout))
            task.queue = queue  # type: ignore[attr-defined]
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
        if not self._waiters:
            await wait_or(self._stopping, 0.05)
            return
        self._slot_freed.clear()
        stop = asyncio.create_task(self._stopping.wait())
        freed = asyncio.create_task(self._slot_freed.wait())
        await asyncio.wait({stop, freed, *self._waiters}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        freed.cancel()

    async def _waiter(self, queue: str, timeout: float) -> None:
        """Hold one reserved slot while blocking on ``queue``; start the job it brings."""
        try:
            job_id = await self.store.block_move(queue, timeout)
            if job_id is not None:
                if self._stopping.is_set():
                    await self._return_moved(queue, job_id)
                else:
                    result = await self.store.claim_moved(queue, job_id, self._execution_ids(1)[0])
                    for dropped in result.dropped:
                        log.warning("job %s was on a queue but its hash is gone; dropped", dropped)
                    for claimed in result.jobs:
                        self._launch(claimed)
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            log.warning("blocking dequeue on %r failed: %s", queue, exc)
            await wait_or(self._stopping, 1.0)
        finally:
            self._reserved -= 1
            self._slot_freed.set()

    async def _return_moved(self, queue: str, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(keys.intermediate(queue), 1, job_id)
            pipe.lpush(keys.queue(queue), job_id)
            await pipe.execute()

    # ------------------------------------------------------------- executing
    def _launch(self, claimed: Claimed) -> None:
        self._started_jobs += 1
        item = InFlight(claimed)
        key = f"{claimed.job_id}:{claimed.execution_id}"
        self._inflight[key] = item
        item.task = asyncio.create_task(self._execute(key, item), name=f"job-{claimed.job_id}")
        if self._cold.is_set():
            self._cancel(item, "give_back")

    def _cancel(self, item: InFlight, reason: str) -> None:
        if item.cancel_reason is None:
            item.cancel_reason = reason
        if item.task is not None and not item.task.done():
            item.task.cancel()

    async def _execute(self, key: str, item: InFlight) -> None:
        claimed = item.claimed
        try:
            outcome, counts = await self._perform(item)
        except BaseException as exc:  # pragma: no cover - last line of defence
            log.exception("internal error while running job %s", claimed.job_id)
            record = JobRecord(id=claimed.job_id, data=b"", origin=claimed.queue)
            ex = self._execution(claimed, claimed.started_at)
            outcome = transitions.failure(record, ex, f"asyncjobs internal error: {exc!r}")
            counts = (0, 1, 0.0)
        self.successful += counts[0]
        self.failed += counts[1]
        # The slot stays taken until the outcome is stored: a parent's dependents (or a retry) are
        # on their queue before this worker fetches again, as with a stock worker.
        self.recorder.submit(outcome, counts, item.running, item.after_recorded, lambda: self._release(key))
        self._slot_freed.set()  # wake the loop: it stores this outcome with its next claim

    def _release(self, key: str) -> None:
        self._inflight.pop(key, None)
        self._slot_freed.set()

    def _execution(self, claimed: Claimed, started: Any, ended: Any = None) -> transitions.Execution:
        return transitions.Execution(
            job_id=claimed.job_id,
            execution_id=claimed.execution_id,
            queue=claimed.queue,
            worker_name=self.name,
            claimed_at=claimed.started_at,
            started_at=started,
            ended_at=ended,
        )

    async def _perform(self, item: InFlight) -> tuple[dict[str, Any], tuple[int, int, float]]:
        """Run one claimed job; return its transition and (ok, failed, working_time)."""
        claimed = item.claimed
        try:
            record = parse_job_hash(claimed.job_id, claimed.raw)
        except MalformedJobError as exc:
            log.error("job %s: %s", claimed.job_id, exc)
            record = JobRecord(id=claimed.job_id, data=b"", origin=claimed.queue)
            ex = self._execution(claimed, claimed.started_at, utcnow())
            return transitions.failure(record, ex, _reason(exc), repairs=exc.repairs), (0, 1, 0.0)
        try:
            call = await decode_payload(record.data, self.serializer, self.config.max_payload_size)
            func = self.resolver.resolve(call)
        except (PayloadError, ResolveError) as exc:
            log.error("job %s cannot run: %s", claimed.job_id, exc)
            ex = self._execution(claimed, claimed.started_at, utcnow())
            return transitions.failure(record, ex, _reason(exc)), (0, 1, 0.0)

        handle = JobHandle(claimed.job_id, claimed.raw, self._sync_connection, self._rq_serializer())
        started = utcnow()
        t0 = time.monotonic()
        log.info(*started_message(claimed.queue, record, call, func, self.config.log_job_description))
        try:
            value = await self.executor.run(
                func, call.args, call.kwargs, timeout=record.effective_timeout(), handle=handle
            )
        except asyncio.CancelledError:
            reason = item.cancel_reason
            if reason is None:
                raise
            ended = utcnow()
            if reason == "give_back":
                return transitions.give_back(self._execution(claimed, started, ended)), (0, 0, 0.0)
            if reason == "stop":
                log.info("job %s stopped by send_stop_job_command", claimed.job_id)
                await self.callbacks.stopped(record, handle)
                return transitions.stopped(record, self._execution(claimed, started)), (0, 1, 0.0)
            text = "Work-horse terminated unexpectedly; killed by kill-horse command"
            return transitions.failure(record, self._execution(claimed, started, ended), text), (0, 1, 0.0)
        except BaseException as exc:
            ended = utcnow()
            return await self._failed(item, record, handle, exc, started, ended, time.monotonic() - t0)
        ended = utcnow()
        elapsed = time.monotonic() - t0
        ex = self._execution(claimed, started, ended)
        from rq.job import Retry

        if isinstance(value, Retry):
            retry_b64 = encode_return_value(value, self.serializer)
            intervals = tuple(value.intervals) if isinstance(value.intervals, list) else (int(value.intervals),)
            return (
                transitions.value_retry(record, ex, max_retries=value.max, intervals=intervals, retry_b64=retry_b64 or ""),
                (0, 1, elapsed),
            )
        try:
            await self.callbacks.success(record, handle, value)
        except BaseException as exc:
            return await self._failed(item, record, handle, exc, started, ended, elapsed, callback_ran=True)
        rv = encode_return_value(value, self.serializer)
        log.info("%s: job OK (%s)", claimed.queue, claimed.job_id)
        item.after_recorded = _webhooks(record, handle, "finished", ended)
        return transitions.success(record, ex, rv, self.config.default_result_ttl), (1, 0, elapsed)

    async def _failed(
        self,
        item: InFlight,
        record: JobRecord,
        handle: JobHandle,
        exc: BaseException,
        started: Any,
        ended: Any,
        elapsed: float,
        callback_ran: bool = False,
    ) -> tuple[dict[str, Any], tuple[int, int, float]]:
        claimed = item.claimed
        text = "".join(traceback.format_exception(exc))
        ex = self._execution(claimed, started, ended)
        if not callback_ran:
            try:
                await self.callbacks.failure(record, handle, exc)
            except BaseException as cb_exc:
                text = "".join(traceback.format_exception(cb_exc))
        await self.callbacks.exception_handlers(record, handle, exc)
        if transitions.should_retry_on_exception(record):
            log.info("job %s raised %s: retrying (%s left)", claimed.job_id, type(exc).__name__, record.retries_left)
            return transitions.exception_retry(record, ex), (0, 1, elapsed)
        log.error("job %s failed: %s", claimed.job_id, text.strip().splitlines()[-1] if text.strip() else exc)
        item.after_recorded = _webhooks(record, handle, "failed", ended, text)
        if self.config.disable_default_exception_handler:
            # Stock: status failed, but no Result and no FailedJobRegistry entry.
            out = transitions.failure(record, ex, text)
            out.pop("result", None)
            out["no_registry"] = True
            return out, (0, 1, elapsed)
        return transitions.failure(record, ex, text), (0, 1, elapsed)

    def _rq_serializer(self) -> Any:
        """The serializer in the form RQ's own classes accept (alias or imported object)."""
        if self._rq_ser is None:
            self._rq_ser = rq_serializer(self.serializer, self.config.serializer)
        return self._rq_ser

    def _sync_connection(self) -> Any:
        if self._sync_redis is None:
            self._sync_redis = self.config.connection.sync_client()
        return self._sync_redis

    async def _drain(self) -> None:
        """After the loop: wait for in-flight jobs (grace period), then cold-stop the rest."""
        if not self._inflight and not self._waiters:
            return
        if self._stopping.is_set() and not self._cold.is_set():
            await self._safe(self.store.mark_shutdown_requested())
        deadline = time.monotonic() + self.config.shutdown_timeout
        while True:
            # Executions still running (finished ones only wait for the recorder, flushed later).
            tasks = [i.task for i in self._inflight.values() if i.task and not i.task.done()]
            tasks += list(self._waiters)
            if not tasks:
                break
            if not self._stopping.is_set():
                deadline = time.monotonic() + self.config.shutdown_timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.request_cold_stop()
                remaining = 30.0
            cold = asyncio.create_task(self._cold.wait())
            await asyncio.wait({*tasks, cold}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            cold.cancel()

    # ------------------------------------------------------------ heartbeats
    async def _heartbeater(self) -> None:
        interval = self.config.job_monitoring_interval
        backoff = Backoff()
        while True:
            await asyncio.sleep(min(interval, 15.0))
            running = [i.running for i in self._inflight.values()]
            ttl = self.config.heartbeat_ttl if running else self.config.idle_worker_key_ttl
            try:
                alive = await self.store.heartbeat(running, ttl)
                if not alive:
                    log.warning("worker key had expired (Redis restart or outage?): registering again")
                    await self.store.reregister(self._info)
                backoff.reset()
            except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
                await backoff.wait(f"heartbeat: {exc}", None)

    async def _retrying(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        backoff = Backoff()
        while True:
            try:
                return await op()
            except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
                if self._cold.is_set():
                    raise
                await backoff.wait(f"{what}: {exc}", None)

    async def _safe(self, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            log.warning("Redis unreachable: %s", exc)


def _webhooks(
    record: JobRecord, handle: JobHandle, status: str, ended: Any, exc_string: str | None = None
) -> Callable[[], None] | None:
    """RQ's own ``Webhook.send`` for the terminal status, to run once the outcome is stored."""
    if not any(w.get("job_status") == status for w in record.webhooks):
        return None

    def send() -> None:
        job = handle.job()
        job.ended_at = ended
        job.send_webhooks(status, exc_string=exc_string)

    return send


def _reason(exc: BaseException) -> str:
    name = getattr(exc, "reported_as", None) or f"{type(exc).__module__}.{type(exc).__qualname__}"
    return f"{name}: {exc}\n"
