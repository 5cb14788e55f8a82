"""The asyncio worker: fetch, admit under ``--concurrency``, execute, record, shut down.

One process is one RQ worker identity (``rq:worker:<name>``): ``rq info`` shows
it ``busy`` while any job runs, ``current_job`` names one of the running jobs,
and ``stop-job`` commands on ``rq:pubsub:<name>`` are matched against every job
in flight.  All Redis work goes through :class:`~asyncjobs.protocol.store.RedisStore`,
batched across the jobs in flight.

Each claimed job is a :class:`~asyncjobs.worker.job.JobRun`, which owns its run (decode,
hooks, execute, timeouts and cancels, callbacks) and returns the one outcome to store; the
worker admits runs under ``--concurrency``, counts their outcomes and hands them to the
recorder, and frees their slots once stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio import Redis

from asyncjobs import metrics
from asyncjobs.backoff import Backoff, wait_or
from asyncjobs.connection import RedisRefused, RedisUnreachable, refusal_hint
from asyncjobs.hooks import StartupHookFailed
from asyncjobs.protocol.rqversion import DEFAULT_PREFIX
from asyncjobs.protocol.serializers import resolve_serializer, rq_serializer
from asyncjobs.protocol.store import Claimed, ClaimRequest, RedisStore, WorkerInfo
from asyncjobs.protocol.transitions import Kind
from asyncjobs.worker import webhooks
from asyncjobs.worker.admission import CancelReason, Gate, Slots
from asyncjobs.worker.callbacks import Callbacks
from asyncjobs.worker.commands import CommandListener
from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.context import install_rq_job_stack
from asyncjobs.worker.cron import load_cron_config
from asyncjobs.worker.executor import Executor
from asyncjobs.worker.hookset import (
    add_auto_adapters,
    load_hooks,
)
from asyncjobs.worker.job import JobRun, RunServices
from asyncjobs.worker.observer import Observer
from asyncjobs.worker.recorder import REDIS_ERRORS, Recorder, WorkerState, writes_refused
from asyncjobs.worker.recycle import MemoryLimit, current_rss
from asyncjobs.worker.resolver import FunctionResolver
from asyncjobs.worker.shutdown import Shutdown
from asyncjobs.worker.tenants import QueueSet, is_pattern

log = logging.getLogger("asyncjobs.worker")

T = TypeVar("T")

#: Longest wait before a queue held back by a limit is tried again (limits change live; a fleet
#: concurrency slot frees on another worker unannounced).
LIMIT_POLL = 1.0
#: Seconds between reads of which queues have limits (a new limit or pause applies within this).
LIMITS_REFRESH = 1.0
#: when the event loop's thread ran or waited to run for this share of the last CPU_WINDOW seconds or
#: more, claims and outcomes go without --claim-batch's default bound (see Worker._batch)
BUSY_CPU = 0.6
CPU_WINDOW = 0.5
#: the first window, from the worker's first claim: short, so a worker that started busy (see
#: Worker._busy) and is not narrows its batches soon (jobs claimed together end together, and go on
#: moving as one wave while the batch stays lifted)
FIRST_CPU_WINDOW = 0.1
#: How often an idle worker looks at the queues it does not block on: those of its queue patterns
#: (``--queues 'emails:*'``), and those past the first MAX_BLOCKING_WAITS.
TENANT_POLL = 0.25
#: An idle worker blocks (one BLMOVE, one connection each) on at most this many of its queues, the
#: first in its order; it looks at the others every TENANT_POLL seconds with a claim.
MAX_BLOCKING_WAITS = 32
#: Without --prefetch, a worker claims ahead of its free slots only as many jobs as its slots free in
#: this many seconds (its jobs' ends over the last CPU_WINDOW): a job claimed ahead waits about this long,
#: and a worker whose jobs are long claims none ahead (another worker's free slot takes them).
PREFETCH_WAIT = 0.01
#: A job claimed ahead that has waited this long for a slot (the jobs ahead of it are long after all)
#: goes back to the front of its queue for another worker, and the worker claims none ahead until
#: its next demand window (CPU_WINDOW) shows its slots freeing fast again.
PREFETCH_STALE = 0.1


class StopRequested(Exception):
    """SIGTERM/SIGINT (or a shutdown command) arrived while the worker was still starting."""


def claim_limit(config: WorkerConfig, busy: float) -> int:
    """The most outcomes to store and jobs to claim per round trip when the loop's thread is ``busy``
    (the share of the time it ran or waited for a CPU; see Worker._batch)."""
    if config.claim_batch is None and busy >= BUSY_CPU:
        return config.concurrency
    return config.claim_batch_size


def prefetch_limit(config: WorkerConfig, ends_per_s: float) -> int:
    """Jobs to claim ahead of the free slots (:class:`~asyncjobs.worker.admission.Gate`): ``--prefetch``
    when given; else as many as the worker's slots free in :data:`PREFETCH_WAIT` at the rate its jobs
    end, at most ``concurrency // 8`` (so none below ``--concurrency 8``)."""
    if config.prefetch is not None:
        return config.prefetch
    return min(config.concurrency // 8, int(ends_per_s * PREFETCH_WAIT))


def thread_demand() -> float:
    """Seconds the calling thread has run on a CPU or waited in a run queue for one (Linux's
    ``/proc/thread-self/schedstat``); elsewhere, the process's CPU time."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            ran, waited = f.read().split()[:2]
        return (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return time.process_time()


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        redis: Redis | None = None,
        hooks: Iterable[object] = (),
        observer: Observer | None = None,
    ) -> None:
        """``hooks``: hook sources added to ``config.hooks`` (see :mod:`asyncjobs.hooks`);
        ``observer``: metrics and health reporting (see :mod:`asyncjobs.host.probes`)."""
        self.config = config
        self.observer = observer or Observer()
        self.name = config.name or uuid.uuid4().hex
        self.hooks = load_hooks((*config.hooks, *hooks))
        self.serializer = resolve_serializer(config.serializer, config.allowed_modules)
        self.resolver = FunctionResolver(config.allowed_modules)
        self.webhook_policy = webhooks.WebhookPolicy(config.allow_webhook_hosts, bool(config.allowed_modules))
        self._redis = redis
        self.slots = Slots(config.concurrency, config.max_jobs)
        self.slots.prefetch = config.prefetch or 0  # (automatic: from the first demand window on)
        #: at most --concurrency of the claimed jobs execute; those claimed ahead wait here
        self.gate = Gate(config.concurrency)
        #: ``--cron``: the config's jobs, loaded (and checked) now, so a bad file fails the start
        self.cron_entries = load_cron_config(config.cron) if config.cron else []
        self.memory = MemoryLimit(config.max_memory)
        #: why the worker ended on its own: "max_jobs" or "max_memory" (a recycle), else None
        self.recycled: str | None = None
        self.shutdown = Shutdown(
            self.slots, config.shutdown_timeout, lambda run: run.cancel(CancelReason.GIVE_BACK),
            on_stop=self._stop_requested,
        )
        self._stopping = self.shutdown.stopping
        self._waiters: dict[str, asyncio.Task[bool]] = {}
        #: more queues than blocking waits: the others are polled (see _wait_for_work)
        self._many_queues = sum(not is_pattern(q) for q in config.queues) > MAX_BLOCKING_WAITS
        self._unresolved_claim: ClaimRequest | None = None
        #: since when claims have failed to reach Redis (None: the last one reached it)
        self._unreachable_since: float | None = None
        #: set when a --burst worker gives up on an unreachable Redis mid-run: run() raises it once stopped
        self._gave_up: RedisUnreachable | None = None
        self._suspended = False  # what the last claim saw
        #: queues whose jobs a queue limit held back at the last claim: ms until one may open (-1: paused)
        self._blocked: dict[str, int] = {}
        self._own_caps = dict(config.queue_limits)
        self._drain_requested = False
        #: queues that have queue limits or a pause (re-read every LIMITS_REFRESH s); None: not known yet
        self._limited: set[str] | None = None
        self._limited_next = 0.0
        self._queue_set: QueueSet | None = None  # set in run(): the queues, patterns expanded
        self._claimed_last = 0
        #: the loop thread's demand for a CPU over the last CPU_WINDOW seconds (see _batch), and where
        #: the window began (set by the first claim, on the loop's thread); a worker starts as busy (a
        #: backlog drains in full batches until a window, the first FIRST_CPU_WINDOW long, shows time
        #: to spare)
        self._busy = 1.0
        self._busy_window: tuple[float, float, int] | None = None
        self._busy_measured = False  # the first window (FIRST_CPU_WINDOW) has ended
        self._rr_offset = 0
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
        self.shutdown.request_stop()

    def _stop_requested(self) -> None:
        """A warm stop: the jobs claimed ahead and not started go back to their queues, not run."""
        self.observer.draining()
        for run in self.slots:
            if not run.began:
                run.cancel(CancelReason.GIVE_BACK)

    def request_drain(self) -> None:
        """Stop claiming, finish every job in flight (no grace period), deregister and exit 0 (the
        ``drain`` command; under ``--processes`` the supervisor starts a fresh child, as after a recycle)."""
        self._drain_requested = True
        self.slots.freed.set()  # wake the fetch loop wherever it waits

    def request_cold_stop(self) -> None:
        """Cold shutdown: cancel what is left and put those jobs back on their queues."""
        self.shutdown.request_cold_stop()

    def install_signal_handlers(self, *, process_wide: bool = False) -> None:
        """First SIGTERM/SIGINT: warm shutdown; second: cold shutdown (see :class:`Shutdown`)."""
        self.shutdown.install_signal_handlers(process_wide=process_wide)

    def stop_job(self, job_id: str, reason: str = CancelReason.STOP) -> bool:
        found = False
        for item in self.slots.executing():
            if item.claimed.job_id == job_id:
                item.cancel(CancelReason(reason))
                found = True
        return found

    def stop_execution(self, execution_id: str) -> bool:
        """RQ 3's ``send_stop_execution_command``: stop that execution (it ends ``stopped``)."""
        for item in self.slots.executing():
            if item.claimed.execution_id == execution_id:
                item.cancel(CancelReason.STOP)
                return True
        return False

    def current_job_id(self) -> str | None:
        return self.worker_state().current_job

    def worker_state(self) -> WorkerState:
        """Busy with one of the jobs still executing (not those only awaiting their record), or idle."""
        for item in self.slots.executing():
            return WorkerState("busy", item.claimed.job_id)
        return WorkerState("idle")

    async def run(self) -> None:
        redis_conn = self._redis or self._connect()
        self.redis = redis_conn
        self.store = RedisStore(redis_conn, self.name, heartbeat_ttl=self.config.heartbeat_ttl)
        self.recorder = Recorder(self.store, self.worker_state)
        self.executor = Executor(self.config.threads or self.config.concurrency)
        self.callbacks = Callbacks(self.executor, self._sync_connection, self.config.exception_handlers, self.resolver)
        self._services = RunServices(
            worker_name=self.name, config=self.config, serializer=self.serializer, resolver=self.resolver,
            hooks=self.hooks, executor=self.executor, callbacks=self.callbacks, observer=self.observer,
            store=self.store, redis=redis_conn, sync_connection=self._sync_connection,
            rq_serializer=self._rq_serializer, webhook_policy=self.webhook_policy,
            queue_paused=self._queue_paused,
        )
        install_rq_job_stack()
        self._info = WorkerInfo(
            self.name, self.config.queues, self.config.idle_worker_key_ttl, concurrency=self.config.concurrency
        )
        try:
            await self.hooks.startup()
        except StartupHookFailed:
            self.executor.shutdown()
            await self._close_connections(redis_conn)
            raise
        for adapter in add_auto_adapters(self.hooks):
            log.info("enabled %s (its library is set up for RQ)", adapter)
        try:
            await self._retrying(lambda: self.store.register_birth(self._info), "register worker")
        except (StopRequested, RedisRefused, RedisUnreachable) as exc:
            if isinstance(exc, StopRequested):
                log.info("stop requested while starting: exiting before registration")
            await self.hooks.shutdown()
            self.executor.shutdown()
            await self._close_connections(redis_conn)
            if isinstance(exc, (RedisRefused, RedisUnreachable)):
                raise
            return
        log.info(
            "worker %s started: queues=%s concurrency=%d burst=%s%s",
            self.name, ",".join(self.config.queues), self.config.concurrency, self.config.burst,
            "" if self.store.keys.prefix == DEFAULT_PREFIX else f" key prefix={self.store.keys.prefix}",
        )
        self.observer.registered(self.config.concurrency)
        commands = CommandListener(redis_conn, self.name, self)
        heartbeat = asyncio.create_task(self._heartbeater(), name="asyncjobs-heartbeat")
        # These end on their own: the recorder once closed, the listener once _closed is set,
        # maintenance and the scheduler (which releases RQ's scheduler lock) once stopping.
        background = [
            asyncio.create_task(self.recorder.run(), name="asyncjobs-recorder"),
            asyncio.create_task(commands.run(self._closed), name="asyncjobs-commands"),
        ]
        if self.observer.monitors_loop:
            background.append(asyncio.create_task(self.observer.monitor_loop(self._closed), name="asyncjobs-loop"))
        try:
            background += await self._start_extras()
            await self._retrying(lambda: self.store.set_state("idle"), "set state")
            await self._work_loop()
        except StopRequested:
            log.info("stop requested while starting")
        finally:
            await self._shut_down(redis_conn, heartbeat, background)
        if self._gave_up is not None:
            raise self._gave_up

    async def _shut_down(
        self, redis_conn: Redis, heartbeat: asyncio.Task[None], background: list[asyncio.Task[None]]
    ) -> None:
        """The shutdown sequence, in order: stop waiting for work; drain the jobs in flight; store
        every outcome; end the background tasks (bounded); shutdown hooks; deregister; close."""
        self._stop_waiters()
        self.recorder.go_autonomous()  # from here on nobody claims: it stores outcomes itself
        await self._drain()
        # A burst worker that gave up on Redis has waited --burst-redis-wait already: one more such wait.
        flush = self.config.burst_redis_wait if self._gave_up is not None else max(30.0, self.config.shutdown_timeout)
        await self.recorder.flush(flush)
        self.recorder.close()
        self._closed.set()
        self._stopping.set()
        heartbeat.cancel()
        # Bounded: a task stuck in a dead connection must not keep the process alive.
        _, stuck = await asyncio.wait([heartbeat, *background], timeout=10)
        for task in stuck:
            log.warning("%s did not end within 10 s of shutdown; cancelling it", task.get_name())
            task.cancel()
        await self.hooks.shutdown()
        self.observer.stopped()
        try:
            await asyncio.wait_for(self.store.register_death(self.config.queues), 10)
        except (*REDIS_ERRORS, TimeoutError, redis.exceptions.ResponseError) as exc:
            log.error("could not register worker death (Redis unreachable: %s)", exc)
        self.executor.shutdown()
        await self._close_connections(redis_conn)
        log.info("worker %s stopped: %d succeeded, %d failed%s", self.name, self.successful, self.failed,
                 f"; recycled ({self.recycled}, RSS {current_rss() / (1 << 20):.1f} MB)" if self.recycled else "")

    def _connect(self) -> Redis:
        """The worker's client: bounded waits, and no silent re-sends (a lost reply is the worker's
        to resolve: every script it sends is safe to repeat, but only it knows when to)."""
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        target = self.config.connection
        defaults: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_timeout": max(10.0, self.config.block_timeout + 5.0),
            "socket_keepalive": True,
            "health_check_interval": 30,
        }
        overrides = {k: v for k, v in defaults.items() if k not in target.options}
        return target.async_client(retry=Retry(NoBackoff(), 0), **overrides)

    async def _close_connections(self, redis_conn: Redis) -> None:
        if self._sync_redis is not None:
            self._sync_redis.close()
        if self._redis is None:
            await redis_conn.aclose()

    async def _repair_abandoned(self) -> None:
        """Malformed jobs a crashed worker left in rq:wip would break RQ's cleanup: repair them."""
        try:
            repaired = await self.store.repair_abandoned(self._served())
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            log.warning("could not check abandoned jobs (%s)", exc)
            return
        for job_id in repaired:
            log.warning(
                "job %s was abandoned in StartedJobRegistry with fields RQ cannot load: repaired, so RQ's "
                "maintenance fails it as abandoned", job_id,
            )

    async def _start_extras(self) -> list[asyncio.Task[None]]:
        await self._repair_abandoned()
        tasks: list[asyncio.Task[None]] = []
        from asyncjobs.worker.maintenance import Maintenance

        await self._refresh_queue_set()
        maint = Maintenance(self.config, self._rq_serializer(), self.callbacks.handlers, queues=self._served)
        if self.config.burst:
            # As a stock burst worker: clean before the first job, so what maintenance enqueues (abandoned
            # jobs retried, RQ 3's ready dependents and promoted rate-limited jobs) runs before it exits.
            await self._retrying(lambda: self._first_maintenance(maint), "maintenance")
        tasks.append(asyncio.create_task(maint.run(self._stopping, self.name, first_done=self.config.burst),
                                         name="asyncjobs-maintenance"))
        if self.cron_entries:
            from asyncjobs.worker.cron import CronRunner

            cron = CronRunner(self.config.connection, self.cron_entries, self.name, config_file=self.config.cron or "",
                              lease=self.config.cron_lease, keys=self.store.keys, serializer=self._rq_serializer())
            tasks.append(asyncio.create_task(cron.run(self._stopping), name="asyncjobs-cron"))
        if self.config.with_scheduler:
            from asyncjobs.worker.scheduler import Scheduler

            # (patterns: the queues they match, followed as they appear)
            sched = Scheduler(self.config.connection, self._served, self._rq_serializer())
            if self.config.burst:
                await self._retrying(lambda: asyncio.to_thread(sched.tick_once), "scheduler tick")
            tasks.append(asyncio.create_task(sched.run(self._stopping), name="asyncjobs-scheduler"))
        return tasks

    async def _first_maintenance(self, maint: Any) -> None:
        """A burst worker's maintenance pass before its first job (Redis errors are retried)."""
        try:
            await asyncio.to_thread(maint.run_once, self.name)
        except (*REDIS_ERRORS, redis.exceptions.ResponseError):
            raise
        except Exception as exc:
            log.warning("maintenance pass failed (%s); carrying on", exc)

    # ------------------------------------------------------------ fetch loop
    def _execution_ids(self, n: int) -> list[str]:
        """32 lowercase hex characters like RQ's uuid4().hex: a random per-process prefix + a counter."""
        start = self._eid_counter
        self._eid_counter += n
        return [f"{self._eid_prefix}{i:016x}" for i in range(start, start + n)]

    def _served(self) -> list[str]:
        """The queues served now (patterns expanded)."""
        return self._queue_set.all() if self._queue_set is not None else list(self.config.queues)

    async def _refresh_queue_set(self) -> None:
        if self._queue_set is None:
            self._queue_set = QueueSet(self.config.queues, self.store.keys)
        try:
            await self._queue_set.refresh(self.redis)
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            log.debug("could not re-read the queue set (%s); the claim will say more", exc)

    def _queue_paused(self, queue: str) -> None:
        """A job of ours paused ``queue`` (Throttled): check its limits from the next claim on."""
        if self._limited is not None:
            self._limited.add(queue)

    async def _refresh_limited(self) -> None:
        """Which queues have limits, at most every :data:`LIMITS_REFRESH` s: a claim reads the limits of
        its queues only when one of them has any (one HKEYS per second instead of one read per claim)."""
        now = time.monotonic()
        if now < self._limited_next:
            return
        try:
            fields = await self.redis.hkeys(self.store.keys.queue_limits)
        except (*REDIS_ERRORS, redis.exceptions.ResponseError):
            self._limited = None  # not known: claims check (and report the Redis error themselves)
            return
        self._limited_next = now + LIMITS_REFRESH
        self._limited = {(f.decode() if isinstance(f, bytes) else str(f)).partition(":")[2] for f in fields}

    def _queue_order(self) -> list[str]:
        queues = list(self.config.queues)
        if self.config.dequeue_strategy == "round_robin":
            k = self._rr_offset % len(queues)
            self._rr_offset += 1
            queues = queues[k:] + queues[:k]
        elif self.config.dequeue_strategy == "random":
            random.shuffle(queues)
        return self._queue_set.order(queues) if self._queue_set is not None and self._queue_set.patterns else queues

    def _batch(self) -> int:
        """The most outcomes to store and jobs to claim in the next round trip.

        ``--claim-batch`` when given; by default :attr:`WorkerConfig.claim_batch_size`, except while the
        event loop's thread has been running, or waiting for a CPU, :data:`BUSY_CPU` of the time or
        more: then the jobs wait for the CPU (this process's work, or other processes on the machine),
        not for round trips, and one exchange for all that are ready costs the fewest commands and the
        least CPU per job (smaller batches spend CPU on round trips to save the slots' waits).  Waiting
        for a CPU counts: under ``--processes`` on a machine they saturate, each process has little
        CPU but no idle time.
        """
        now = time.monotonic()
        if self._busy_window is None:
            self._busy_window = (now, thread_demand(), self.gate.left)
        began, then, ended = self._busy_window
        if now - began >= (CPU_WINDOW if self._busy_measured else FIRST_CPU_WINDOW):
            demand = thread_demand()
            self._busy = (demand - then) / (now - began)
            self.slots.prefetch = prefetch_limit(self.config, (self.gate.left - ended) / (now - began))
            self._busy_window = (now, demand, self.gate.left)
            self._busy_measured = True
        return claim_limit(self.config, self._busy)

    async def _exchange(self, request: ClaimRequest, limit: int | None = None) -> bool:
        """Store the outcomes ready (the oldest ``limit``: never fewer than the claim counted on) and
        make one claim; launch what it claimed. False on a Redis error.

        A claim whose reply is lost stays ``_unresolved_claim`` and is sent again unchanged (same
        token) until a reply arrives: it claims at most once, and whatever it did claim is run.
        """
        done = self.recorder.take(limit)
        try:
            result = await self.store.exchange(self.recorder.outcomes(done), request)
        except REDIS_ERRORS as exc:
            self.recorder.restore(done)
            self._unresolved_claim = request if request.count else None
            log.warning("Redis unavailable (claim jobs: %s)", exc)
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            return False
        except redis.exceptions.ResponseError as exc:
            # Redis refused the call (e.g. OOM): keep the worker alive, store what it can.
            log.error("Redis refused to claim/record (%s)", exc)
            self._unresolved_claim = request if request.count else None
            if writes_refused(exc) and done:
                # keep the outcomes (as for a lost connection) and claim nothing until they are stored
                self.recorder.restore(done)
                self.recorder.refused = True
                return False
            await self.recorder.store_one_by_one(done)
            return False
        self._unresolved_claim = None
        self._unreachable_since = None
        self.recorder.stored(done)
        for job_id in result.dropped:
            log.warning("job %s was on a queue but its hash is gone (expired or deleted); dropped", job_id)
        for job_id, type_ in result.poisoned:
            log.error(
                "queue entry %r dropped: rq:job:%s is a Redis %s, not an RQ job hash (written by "
                "something other than RQ?)", job_id, job_id, type_,
            )
        self._suspended = result.suspended
        self._blocked = result.blocked
        for claimed in result.jobs:
            self._launch(claimed)
        self._claimed_last = len(result.jobs)
        return True

    async def _work_loop(self) -> None:
        idle_since = time.monotonic()
        backoff = Backoff(on_wait=metrics.redis_error)
        suspended_logged = False
        while not self._stopping.is_set():
            if self._drain_requested:
                log.info("drain requested: claiming nothing more; finishing the %d job(s) in flight", len(self.slots))
                self.observer.draining()
                self._recycle("drain")
                break
            if self.slots.max_jobs_reached:
                log.info("max jobs (%d) reached", self.config.max_jobs)
                self._recycle("max_jobs")
                break
            if self.memory.exceeded():
                log.warning(
                    "memory %.1f MB is over --max-memory %.1f MB after %d jobs: recycling (no new jobs; "
                    "the %d in flight finish first)", self.memory.rss / (1 << 20),
                    (self.config.max_memory or 0) / (1 << 20), self.slots.started, len(self.slots),
                )
                self._recycle("max_memory")
                break
            request = self._unresolved_claim
            limit: int | None = None  # a claim sent again stores all that is ready (its outcomes are among them)
            if request is None:
                # Outcomes waiting to be stored free their slots in the same round trip that claims; at most
                # a batch of each per round trip (WorkerConfig.claim_batch_size: smaller trips overlap).
                limit = self._batch()
                free = min(self.slots.free(min(len(self.recorder.pending), limit)), limit)
                if self.recorder.refused:
                    free = 0  # Redis refuses writes: store the outcomes kept, claim nothing until they are in
                if free == 0 and not self.recorder.pending:
                    self.slots.freed.clear()
                    await self.slots.freed.wait()
                    # Let the other jobs finishing in this loop iteration submit too: one round trip for all.
                    await asyncio.sleep(0)
                    continue
                await self._refresh_queue_set()
                await self._refresh_limited()
                order = self._queue_order()
                if not order:
                    free = 0  # only patterns, matching no queue yet: store the outcomes, claim nothing
                check = self._limited is None or not self._limited.isdisjoint(order)
                request = self.store.claim_request(
                    order, free, self._execution_ids(free), self._caps(order, free), check_limits=check
                )
            if not await self._exchange(request, limit):
                if self._burst_gives_up():
                    break
                await backoff.wait("claim jobs", self._stopping)
                continue
            backoff.reset()
            if self._suspended:
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
                await self._safe(self.store.set_state(self.worker_state().state))
            if self._claimed_last:
                idle_since = time.monotonic()
                continue
            if len(self.slots) or self.recorder.pending:
                if self.config.burst and not self._blocked:
                    # Jobs in flight may still enqueue work (retries, dependents): wait for one to end.
                    self.slots.freed.clear()
                    if not self.recorder.pending:
                        await self.slots.freed.wait()
                    continue
            elif self.config.burst and not any(ms >= 0 for ms in self._blocked.values()):
                break  # (jobs held back only by a rate, a fleet concurrency or a timed pause: wait for them)
            if (
                self.config.max_idle_time is not None
                and not len(self.slots)
                and time.monotonic() - idle_since >= self.config.max_idle_time
            ):
                log.info("idle for %.0fs (--max-idle-time): exiting", self.config.max_idle_time)
                break
            await self._wait_for_work()

    def _burst_gives_up(self) -> bool:
        """A --burst worker whose Redis has been unreachable for --burst-redis-wait seconds stops (the
        jobs in flight finish and their outcomes get one bounded attempt to be stored), then run() raises."""
        since = self._unreachable_since
        if not self.config.burst or since is None:
            return False
        waited = time.monotonic() - since
        if waited < self.config.burst_redis_wait:
            return False
        self._gave_up = RedisUnreachable(
            f"Redis at {self.config.connection.describe()} unreachable for {waited:.0f} s while running: "
            f"a --burst worker gives up after --burst-redis-wait {self.config.burst_redis_wait:g} "
            f"({len(self.slots)} job(s) running or awaiting their record; any whose outcome cannot be stored "
            "stay in StartedJobRegistry for RQ's maintenance)"
        )
        log.error("%s", self._gave_up)
        return True

    def _recycle(self, reason: str) -> None:
        self.recycled = reason
        self.observer.recycled(reason)

    async def _wait_for_work(self) -> None:
        """Until a job arrives on a queue (a BLMOVE wait on each of the first MAX_BLOCKING_WAITS
        queues; the rest are polled), a slot frees, or stop."""
        timeout = self.config.block_timeout
        if self.config.max_idle_time is not None:
            timeout = max(0.1, min(timeout, self.config.max_idle_time))
        if self.slots.free() > 0:
            held = self._held_back()
            waited = [q for q in self.config.queues if q not in held and not is_pattern(q)][:MAX_BLOCKING_WAITS]
            for queue in waited:
                if queue not in self._waiters:
                    self._waiters[queue] = asyncio.create_task(self._waiter(queue, timeout))
        reopen = self._limit_wait()
        if not self._waiters and reopen is None:
            await wait_or(self._stopping, 0.05)
            return
        self.slots.freed.clear()
        if self.recorder.pending:  # an outcome arrived while the last claim was on its way
            return
        stop = asyncio.create_task(self._stopping.wait())
        freed = asyncio.create_task(self.slots.freed.wait())
        waits: set[asyncio.Task[Any]] = {stop, freed, *self._waiters.values()}
        if reopen is not None:
            waits.add(asyncio.create_task(asyncio.sleep(reopen)))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits - set(self._waiters.values()):
            task.cancel()

    def _caps(self, order: list[str], free: int = 0) -> list[int]:
        """The most to claim per queue in ``order`` (-1: no cap): ``--queue-limit``'s room left, and a
        pattern's queues' even share of the ``free`` slots."""
        qs = self._queue_set
        patterned = qs is not None and bool(qs.patterns)
        if not self._own_caps and not patterned:
            return []
        running: dict[str, int] = {}
        for item in self.slots:
            running[item.claimed.queue] = running.get(item.claimed.queue, 0) + 1
        caps = []
        for q in order:
            pattern = qs.pattern_of(q) if qs is not None else None
            own = self._own_caps.get(q, self._own_caps.get(pattern) if pattern else None)
            cap = -1 if own is None else max(0, own - running.get(q, 0))
            share = qs.fair_share(q, free) if qs is not None and free else None
            if share is not None:
                cap = share if cap < 0 else min(cap, share)
            caps.append(cap)
        return caps

    def _held_back(self) -> set[str]:
        """Queues not to wait on with BLMOVE: a limit holds their jobs back (they would wake us at once)."""
        held = set(self._blocked)
        literals = [q for q in self.config.queues if not is_pattern(q)]
        for queue, room in zip(literals, self._caps(literals), strict=False):  # ([] without caps)
            if room == 0:
                held.add(queue)  # woken by a slot freeing instead
        return held

    def _limit_wait(self) -> float | None:
        """Seconds until a queue a limit held back may open; at most 1 s (limits change live).
        With patterns, their queues are polled (no blocking wait per tenant queue); so are the
        queues past the first MAX_BLOCKING_WAITS."""
        polled = (self._queue_set is not None and bool(self._queue_set.patterns)) or self._many_queues
        if polled and self.slots.free() > 0:
            return min([TENANT_POLL, *(self._limit_wait_blocked() or [])])
        if not self._blocked:
            return None
        return self._limit_wait_blocked()[0]

    def _limit_wait_blocked(self) -> list[float]:
        if not self._blocked:
            return []
        waits = [ms / 1000 if ms >= 0 else LIMIT_POLL for ms in self._blocked.values()]
        return [min(max(0.005, min(waits)), LIMIT_POLL)]

    async def _waiter(self, queue: str, timeout: float) -> bool:
        """Wake the loop when ``queue`` has a job; the loop's own claim takes it (or not)."""
        try:
            return await self.store.wait_for_job(queue, timeout)
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            log.warning("blocking wait on %r failed: %s", queue, exc)
            await wait_or(self._stopping, 1.0)
            return False
        finally:
            self._waiters.pop(queue, None)

    def _stop_waiters(self) -> None:
        # A wait takes nothing from the queue, so cancelling one mid-flight strands nothing.
        for task in list(self._waiters.values()):
            task.cancel()

    # ------------------------------------------------------------- executing
    def _launch(self, claimed: Claimed) -> None:
        run = self.slots.admit(lambda seq: JobRun(claimed, self._services, seq))
        if self._stopping.is_set():
            # Claimed as the worker stops (a claim in flight, or resolved at shutdown): never started.
            run.cancel_reason = CancelReason.GIVE_BACK
        run.task = asyncio.create_task(self._run(run), name=f"job-{claimed.job_id}")

    async def _run(self, run: JobRun) -> None:
        """The run's outcome, counted, then stored (its slot freed once it is) or held to give back.
        A job claimed ahead of a free slot (--prefetch) first waits at the gate for one."""
        await self.gate.enter(run, PREFETCH_STALE, self._waited_too_long)
        run.began = run.cancel_reason is None  # (else ended while it waited: it never starts)
        self.observer.job_began()
        t0 = time.monotonic()
        try:
            outcome = await run.outcome()
        finally:
            self.gate.leave()
        self.successful += outcome.succeeded
        self.failed += outcome.failed
        self.observer.job_ended(run.claimed.queue, outcome.kind, time.monotonic() - t0)
        if outcome.kind is Kind.REQUEUE:
            if not run.began:
                self.slots.returned += 1  # claimed ahead, given back unstarted: not one of --max-jobs
            self.slots.hold_give_back(run, outcome)
            self._release_give_backs()
        else:
            # The slot stays taken until the outcome is stored: a parent's dependents (or a retry)
            # are on their queue before this worker fetches again, as with a stock worker.
            self.recorder.submit(outcome, lambda: self.slots.release(run), run.after_recorded)
        self.slots.freed.set()  # wake the loop: it stores this outcome with its next claim

    def _waited_too_long(self, stale: JobRun) -> None:
        """A job claimed ahead waited PREFETCH_STALE for a slot: give back every job still waiting (to
        the front of their queues, in order), and claim none ahead until the next demand window."""
        waiting = [run for run in self.slots if run.waiting is not None and not run.waiting.done()]
        log.debug("%d job(s) claimed ahead waited %.2f s for a slot (%s first): giving them back to their "
                  "queues; claiming none ahead for %.1f s", len(waiting), PREFETCH_STALE, stale.claimed.job_id,
                  CPU_WINDOW)
        self.slots.prefetch = 0
        self._busy_window = None  # the next window starts now: the rate its jobs end decides again
        for run in waiting:
            run.cancel(CancelReason.GIVE_BACK)

    def _release_give_backs(self, force: bool = False) -> None:
        """Submit the held give-backs together once none is still ending (see :class:`Slots`)."""
        for g in self.slots.give_backs_ready(force):
            self.recorder.submit(g.outcome, functools.partial(self.slots.release, g.item))

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
        """After the loop: resolve a claim whose reply was lost, wait for in-flight jobs (grace
        period), then cold-stop the rest; jobs to give back go back together, in claim order."""
        await self._resolve_unresolved_claim()
        if len(self.slots) and self._stopping.is_set() and not self.shutdown.cold.is_set():
            await self._safe(self.store.mark_shutdown_requested())
        await self.shutdown.wait_for_jobs()
        self._release_give_backs(force=True)

    async def _resolve_unresolved_claim(self) -> None:
        """A claim sent before the stop whose reply was lost may have claimed jobs: ask again
        (same token) so they are given back rather than left started for maintenance to fail."""
        backoff = Backoff(on_wait=metrics.redis_error)
        bound = self.config.burst_redis_wait if self._gave_up is not None else self.config.shutdown_timeout
        deadline = time.monotonic() + bound
        while self._unresolved_claim is not None and time.monotonic() < deadline:
            if await self._exchange(self._unresolved_claim):
                return
            await backoff.wait("resolve a claim whose reply was lost", self.shutdown.cold)
        if self._unresolved_claim is not None:
            log.error(
                "could not learn which jobs a claim took before exit (Redis unreachable); any it took stay "
                "in StartedJobRegistry for RQ's abandoned-job maintenance"
            )

    # ------------------------------------------------------------ heartbeats
    async def _heartbeater(self) -> None:
        interval = self.config.job_monitoring_interval
        backoff = Backoff(on_wait=metrics.redis_error)
        while True:
            await asyncio.sleep(min(interval, 15.0))
            # Only jobs still executing: one whose outcome is being stored must not be refreshed.
            running = [i.running for i in self.slots.executing()]
            ttl = self.config.heartbeat_ttl if running else self.config.idle_worker_key_ttl
            try:
                alive = await self.store.heartbeat(running, ttl)
                if not alive:
                    log.warning("worker key had expired (Redis restart or outage?): registering again")
                    await self.store.reregister(self._info)
                backoff.reset()
                await self._repair_abandoned()
            except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
                await backoff.wait(f"heartbeat: {exc}", None)

    async def _retrying(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op`` until it succeeds, backing off while Redis is unreachable; a stop request
        (SIGTERM, SIGINT) ends the wait at once with :class:`StopRequested`."""
        backoff = Backoff(on_wait=metrics.redis_error)
        down_since: float | None = None
        while True:
            if self._stopping.is_set():
                raise StopRequested(what)
            attempt = asyncio.ensure_future(op())
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not attempt.done():
                attempt.cancel()
                raise StopRequested(what)
            try:
                return attempt.result()
            except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
                hint = refusal_hint(exc)
                if hint is not None:  # a configuration error: retrying cannot cure it
                    raise RedisRefused(
                        f"Redis at {self.config.connection.describe()} refused to {what}: {exc}; {hint}"
                    ) from None
                down_since = time.monotonic() if down_since is None else down_since
                waited = time.monotonic() - down_since
                if self.config.burst and waited >= self.config.burst_redis_wait:
                    raise RedisUnreachable(
                        f"Redis at {self.config.connection.describe()} unreachable for {waited:.0f} s ({what}: {exc}): "
                        f"a --burst worker gives up after --burst-redis-wait {self.config.burst_redis_wait:g}"
                    ) from None
                await backoff.wait(f"{what}: {exc}", self._stopping)

    async def _safe(self, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            log.warning("Redis unreachable: %s", exc)
