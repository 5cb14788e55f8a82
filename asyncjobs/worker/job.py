"""One claimed job's run: from claim to the one outcome the worker stores.

A :class:`JobRun` is the room of one execution.  It holds the job's state (its claim, the task
running its code, why it was asked to end, what it raised) and every step of its run: decode,
resolve, ``before_job`` hooks, execute (an ``async def`` on the loop, a sync function in the
executor's threads), the timeout, the cancels of stop-job, kill-horse and shutdown, callbacks,
``after_job`` hooks, and the :class:`~asyncjobs.protocol.transitions.Transition` that says what
to store.  The worker (:mod:`asyncjobs.worker.worker`) admits runs under ``--concurrency``,
hands their outcomes to the recorder and frees their slots; it knows nothing of these steps.

Each job runs in two tasks: the job's own code (:attr:`JobRun.work`), which timeouts, stop-job,
kill-horse and shutdown cancel, again and again until it has really ended; and around it the task
that turns what happened into one outcome (:meth:`JobRun.outcome`), which nothing cancels.  So
every claimed job ends in exactly one stored outcome, whenever a cancel lands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions
from rq.timeouts import JobTimeoutException

from asyncjobs.backoff import RetryPolicy
from asyncjobs.hooks import JobView
from asyncjobs.limits import Throttled, throttle_async
from asyncjobs.protocol import transitions
from asyncjobs.protocol.codec import (
    JobRecord,
    MalformedJobError,
    PayloadError,
    check_meta_size,
    encode_return_value,
    parse_job_hash,
    timeout_message,
)
from asyncjobs.protocol.store import Claimed, Running
from asyncjobs.protocol.timeutil import utcnow
from asyncjobs.protocol.transitions import Kind, Transition
from asyncjobs.worker import webhooks
from asyncjobs.worker.admission import CancelReason
from asyncjobs.worker.context import JobHandle
from asyncjobs.worker.executor import JobExited
from asyncjobs.worker.hookset import ThreadHooks, outcome_of_call, outcome_of_transition
from asyncjobs.worker.joblog import describe, exception_fields, exception_summary, job_extra, started_message
from asyncjobs.worker.payload import decode_payload
from asyncjobs.worker.recorder import REDIS_ERRORS
from asyncjobs.worker.resolver import ResolveError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from asyncjobs.protocol.serializers import Serializer
    from asyncjobs.protocol.store import RedisStore
    from asyncjobs.worker.callbacks import Callbacks
    from asyncjobs.worker.config import WorkerConfig
    from asyncjobs.worker.executor import Executor
    from asyncjobs.worker.hookset import HookSet
    from asyncjobs.worker.observer import Observer
    from asyncjobs.worker.resolver import FunctionResolver

__all__ = ["JobRun", "RunServices"]

log = logging.getLogger("asyncjobs.worker")

#: Re-cancels of a job still running after a cancel: 0.5 s, doubling up to 5 s.  (Not sooner: a
#: job may take a moment to clean up after the first cancel.)
RECANCEL = RetryPolicy(max_attempts=1, backoff_base=0.5, backoff_max=5.0, jitter="none")
#: Report a job that ignores cancellation every this many seconds.
IGNORED_CANCEL_REPORT = 60.0
#: Loop iterations a cancel may wait for a job to leave Python 3.11's ``wait_for`` (see below).
CANCEL_DEFER_MAX = 1000

#: Outcomes kept for the job's ``failure_ttl`` (their hash, result and FailedJobRegistry entry).
_KEPT_FOR_FAILURE_TTL = frozenset({Kind.FAILURE, Kind.STOPPED, Kind.MAX_RETRIES, Kind.RETRY})

_WAIT_FOR_311 = asyncio.tasks.wait_for.__code__ if sys.version_info < (3, 12) else None


def _cancel_would_be_lost(task: asyncio.Task[Any]) -> bool:
    """True while ``task`` is suspended inside Python 3.11's ``asyncio.wait_for``.

    There a cancel is lost whenever the awaited operation completes before the task resumes:
    ``wait_for`` then returns its result instead of raising.  redis-py wraps every send in it
    (its default socket timeout is 5 s), so a job looping on Redis calls loses most single
    cancels.  Python 3.12 rewrote ``wait_for`` on ``asyncio.timeout``, which does not.
    """
    if _WAIT_FOR_311 is None:
        return False
    obj: Any = task.get_coro()
    for _ in range(100):  # the chain of awaiting coroutines, outermost first
        code = getattr(obj, "cr_code", None)
        if code is None:
            return False
        if code is _WAIT_FOR_311:
            return True
        obj = obj.cr_await
    return False


@dataclass(frozen=True, slots=True)
class RunServices:
    """What every run of one worker shares (built once the worker has its connections)."""

    worker_name: str
    config: WorkerConfig
    serializer: Serializer
    resolver: FunctionResolver
    hooks: HookSet
    executor: Executor
    callbacks: Callbacks
    observer: Observer
    store: RedisStore
    redis: Redis
    #: a synchronous Redis client for RQ's own classes (lazily made)
    sync_connection: Callable[[], Any]
    #: the serializer in the form RQ's own classes accept
    rq_serializer: Callable[[], Any]
    #: where webhooks from job data may go (``--allow-webhook-host``)
    webhook_policy: webhooks.WebhookPolicy
    #: a job paused its queue (``Throttled``): the worker obeys it from its next claim
    queue_paused: Callable[[str], None] = lambda queue: None


class JobRun:
    """One claimed execution, from claim until its outcome is stored."""

    def __init__(self, claimed: Claimed, services: RunServices, seq: int) -> None:
        self.claimed = claimed
        self.s = services
        #: "<job id>:<execution id>", the slot's key
        self.key = f"{claimed.job_id}:{claimed.execution_id}"
        #: claim order: jobs given back go back in this order
        self.seq = seq
        #: turns the execution into an outcome; never cancelled
        self.task: asyncio.Task[Any] | None = None
        #: the job's own code: what cancels target
        self.work: asyncio.Task[Any] | None = None
        self.cancel_reason: CancelReason | None = None
        #: set while the run waits for an execution slot (``--prefetch``): a cancel wakes it
        self.waiting: asyncio.Future[bool] | None = None
        self.began = False  # past the gate to run, not cancelled while claimed ahead (then it never starts)
        self.cancels = 0  # cancels delivered to ``work``
        self.first_cancel = 0.0  # monotonic time of the first, 0 until then
        self.reports = 0  # "ignores cancellation" errors logged
        self.timer: asyncio.TimerHandle | None = None
        #: e.g. webhooks, to send once the outcome is stored
        self.after_recorded: Callable[[], Awaitable[None]] | None = None
        self.func_name = ""
        self.view: JobView | None = None  # set once before_job hooks ran: after_job hooks run too
        self.error: BaseException | None = None  # what the job raised, for after_job hooks
        self.exc_text: str | None = None
        self.duration = 0.0  # seconds the job's function ran

    def __repr__(self) -> str:
        return f"<JobRun {self.key} on {self.claimed.queue!r}>"

    @property
    def running(self) -> Running:
        c = self.claimed
        return Running(c.queue, c.job_id, c.execution_id)

    @property
    def executing(self) -> bool:
        return self.task is not None and not self.task.done()

    # ------------------------------------------------------------------ cancels
    def cancel(self, reason: CancelReason) -> None:
        """Cancel the job's code, and keep at it until it has ended.

        A job that has not started yet sees the reason when it would start, and does not start.
        A cancel is delivered when it cannot be swallowed (see :func:`_cancel_would_be_lost`),
        then repeated with backoff (:data:`RECANCEL`) for code that swallows it anyway."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(False)  # claimed ahead, not started: it ends without starting
        work = self.work
        if work is None or work.done() or self.first_cancel:
            return
        self.first_cancel = time.monotonic()
        self._deliver_cancel(0)
        asyncio.get_running_loop().call_later(RECANCEL.delay(1), self._recancel, 1)

    def _deliver_cancel(self, deferred: int) -> None:
        work = self.work
        if work is None or work.done():
            return
        if deferred < CANCEL_DEFER_MAX and _cancel_would_be_lost(work):
            asyncio.get_running_loop().call_soon(self._deliver_cancel, deferred + 1)
            return
        self.cancels += 1
        work.cancel()
        if self.cancels == 2:
            log.warning(
                "job %s is still running after a cancel (%s); cancelling it again until it ends",
                self.claimed.job_id, self.cancel_reason,
            )

    def _recancel(self, attempt: int) -> None:
        work = self.work
        if work is None or work.done():
            return
        self._deliver_cancel(0)
        elapsed = time.monotonic() - self.first_cancel
        if int(elapsed // IGNORED_CANCEL_REPORT) > self.reports:
            self.reports += 1
            log.error(
                "job %s ignores cancellation: still running %.0fs and %d cancels after %s; its slot stays "
                "taken until it ends", self.claimed.job_id, elapsed, self.cancels, self.cancel_reason,
            )
        asyncio.get_running_loop().call_later(RECANCEL.delay(attempt), self._recancel, attempt + 1)

    def interrupt(self) -> type[BaseException]:
        """What a sync job's thread gets when its task is cancelled."""
        return JobTimeoutException if self.cancel_reason is CancelReason.TIMEOUT else SystemExit

    # ------------------------------------------------------------------ the run
    async def outcome(self) -> Transition:
        """Run the job and return the one outcome to store (``after_job`` hooks have run)."""
        claimed = self.claimed
        try:
            outcome = await self._perform()
        except asyncio.CancelledError:
            raise  # only the event loop shutting down cancels this task
        except BaseException as exc:  # pragma: no cover - last line of defence
            log.exception("internal error while running job %s", claimed.job_id)
            record = JobRecord(id=claimed.job_id, data=b"", origin=claimed.queue)
            outcome = transitions.failure(record, self._execution(claimed.started_at),
                                          f"asyncjobs internal error: {exc!r}")
        if self.view is not None:  # before the outcome is stored; a failing hook is only logged
            await self.s.hooks.after(
                self.view, outcome_of_transition(outcome.kind, self.duration, self.error, self.exc_text)
            )
            self.error = None
        if claimed.rate_limit_key:  # RQ 3: finish.lua releases its slot once the outcome is stored
            outcome = dataclasses.replace(outcome, rate_limit_key=claimed.rate_limit_key)
        default_ttl = self.s.config.default_failure_ttl
        if outcome.failure_ttl is None and outcome.kind in _KEPT_FOR_FAILURE_TTL and default_ttl:
            # --failure-ttl: the worker's default where the job set none (a job's own failure_ttl wins)
            outcome = dataclasses.replace(outcome, failure_ttl=default_ttl)
        return outcome

    def _execution(self, started: Any, ended: Any = None) -> transitions.Execution:
        c = self.claimed
        return transitions.Execution(
            job_id=c.job_id, execution_id=c.execution_id, queue=c.queue, worker_name=self.s.worker_name,
            claimed_at=c.started_at, started_at=started, ended_at=ended,
        )

    async def _perform(self) -> Transition:
        s, claimed = self.s, self.claimed
        if self.cancel_reason is CancelReason.GIVE_BACK:
            return transitions.give_back(self._execution(claimed.started_at))
        try:
            record = parse_job_hash(claimed.job_id, claimed.raw)
        except MalformedJobError as exc:
            log.error("job %s: %s", claimed.job_id, exc)
            record = JobRecord(id=claimed.job_id, data=b"", origin=claimed.queue)
            return transitions.failure(record, self._execution(claimed.started_at, utcnow()), _reason(exc),
                                       repairs=exc.repairs)
        try:
            check_meta_size(record.raw_meta, s.config.max_payload_size)
            call = await decode_payload(record.data, s.serializer, s.config.max_payload_size)
            func = s.resolver.resolve(call)
        except (PayloadError, ResolveError) as exc:
            log.error("job %s cannot run: %s", claimed.job_id, exc,
                      extra=job_extra(claimed.job_id, claimed.queue, "", "failed", s.worker_name))
            return transitions.failure(record, self._execution(claimed.started_at, utcnow()), _reason(exc))

        handle = JobHandle(claimed.job_id, claimed.raw, s.sync_connection, s.rq_serializer())
        self.func_name = call.func_name
        if self.cancel_reason is not None:  # stopped or killed before it started
            return await self._interrupted(record, handle, claimed.started_at, utcnow())
        thread_hooks = None
        if s.hooks.around_jobs:
            # the description the job's function gives of itself, as logged (the delivery tasks mask
            # recipients and bodies), never RQ's, which holds the arguments
            self.view = self._job_view(record, handle, func, describe(record, call, func))
            await s.hooks.before(self.view)
            if self.cancel_reason is not None:  # stopped or killed while the hooks ran
                return await self._interrupted(record, handle, claimed.started_at, utcnow())
            thread_hooks = self._thread_hooks(record)
        started = utcnow()
        t0 = time.monotonic()
        s.observer.job_running(claimed.queue, record.enqueued_at, started)
        if log.isEnabledFor(logging.INFO):  # the description and the extra dict only when the line is kept
            log.info(*started_message(claimed.queue, record, call, func, s.config.log_job_description),
                     extra=job_extra(claimed.job_id, claimed.queue, call.func_name, "started", s.worker_name))
        work = asyncio.create_task(
            s.executor.run(func, call.args, call.kwargs, handle=handle, interrupt=self.interrupt,
                           thread_hooks=thread_hooks),
            name=f"job-{claimed.job_id}-work",
        )
        self.work = work
        timeout = record.effective_timeout()
        if timeout is not None:
            self.timer = asyncio.get_running_loop().call_later(timeout, self.cancel, CancelReason.TIMEOUT)
        try:
            await asyncio.wait((work,))
        finally:
            if self.timer is not None:
                self.timer.cancel()
        ended = utcnow()
        elapsed = self.duration = time.monotonic() - t0
        if self.cancels > 1:
            log.warning("job %s ended after %d cancels (%s)", claimed.job_id, self.cancels, self.cancel_reason)
        if work.cancelled():
            if self.cancel_reason is CancelReason.TIMEOUT:
                expired = JobTimeoutException(timeout_message(timeout or 0))
                return await self._failed(record, handle, expired, started, ended, elapsed)
            if self.cancel_reason is None:  # the job cancelled itself
                cancelled = asyncio.CancelledError("the job's own task was cancelled")
                return await self._failed(record, handle, cancelled, started, ended, elapsed)
            return await self._interrupted(record, handle, started, ended)
        failure = work.exception()
        if isinstance(failure, JobExited):  # the job's own SystemExit/KeyboardInterrupt: fails that job only
            failure = failure.original
        if isinstance(failure, Throttled):
            return await self._throttled(failure, started, ended)
        if failure is not None:
            return await self._failed(record, handle, failure, started, ended, elapsed)
        value = work.result()
        if self.cancel_reason is not None:
            log.warning(
                "job %s completed although asked to end (%s): recording its result", claimed.job_id, self.cancel_reason
            )
        ex = self._execution(started, ended)
        from rq.job import Retry

        if isinstance(value, Retry):
            retry_b64 = encode_return_value(value, s.serializer)
            intervals = tuple(value.intervals) if isinstance(value.intervals, list) else (int(value.intervals),)
            outcome = transitions.value_retry(
                record, ex, max_retries=value.max, intervals=intervals, retry_b64=retry_b64 or "",
                working_time=elapsed, at_front=bool(getattr(value, "enqueue_at_front", False)),
            )
            failed = outcome.kind is Kind.MAX_RETRIES
            log.info("job %s returned Retry: %s", claimed.job_id, "no retries left" if failed else "retrying",
                     extra=self._job_extra("failed" if failed else "retried", elapsed))
            if failed:  # a terminal failure: stock fires its `failed` webhooks
                self.after_recorded = self._webhooks(record, "failed", ended, "")
            return outcome
        try:
            await s.callbacks.success(record, handle, value)
        except Exception as exc:
            return await self._failed(record, handle, exc, started, ended, elapsed, callback_ran=True)
        rv = encode_return_value(value, s.serializer)
        if log.isEnabledFor(logging.INFO):
            log.info("%s: job OK (%s)", claimed.queue, claimed.job_id, extra=self._job_extra("finished", elapsed))
        self.after_recorded = self._webhooks(record, "finished", ended)
        return transitions.success(record, ex, rv, s.config.default_result_ttl, working_time=elapsed)

    async def _throttled(self, exc: Throttled, started: Any, ended: Any) -> Transition:
        """The job raised :class:`asyncjobs.Throttled`: pause its queue fleet-wide, and give the job
        back to the front of its queue (not failed, no retry used)."""
        claimed = self.claimed
        log.warning("job %s throttled: queue %r paused for %gs, job back at the front of its queue",
                    claimed.job_id, claimed.queue, exc.retry_after,
                    extra=self._job_extra("throttled", self.duration))
        self.s.observer.throttled(claimed.queue)
        try:
            await throttle_async(self.s.redis, self.s.store.keys, claimed.queue, exc.retry_after)
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as err:  # the job still goes back
            log.warning("Redis unreachable: %s", err)
        self.s.queue_paused(claimed.queue)
        return transitions.give_back(self._execution(started, ended))

    async def _interrupted(self, record: JobRecord, handle: JobHandle, started: Any, ended: Any) -> Transition:
        """The job's code was cancelled by stop-job, kill-horse or shutdown (timeouts fail it)."""
        claimed = self.claimed
        reason = self.cancel_reason
        if reason is CancelReason.GIVE_BACK:
            return transitions.give_back(self._execution(started, ended))
        duration = max(0.0, (ended - started).total_seconds()) if ended is not None else None
        if reason is CancelReason.STOP:
            log.info("job %s stopped by send_stop_job_command", claimed.job_id,
                     extra=self._job_extra("stopped", duration))
            await self.s.callbacks.stopped(record, handle)
            return transitions.stopped(record, self._execution(started))
        # Kill-horse: stock's handle_job_failure for a killed work-horse: retried if it has retries
        # left, else failed; no failure callback, no exception handlers.
        ex = self._execution(started, ended)
        if transitions.should_retry_on_exception(record):
            log.info("job %s killed by send_kill_horse_command: retrying (%s left)", claimed.job_id,
                     record.retries_left, extra=self._job_extra("retried", duration))
            return transitions.exception_retry(record, ex)
        log.info("job %s killed by send_kill_horse_command", claimed.job_id,
                 extra=self._job_extra("failed", duration))
        out = transitions.failure(record, ex, "Work-horse terminated unexpectedly; killed by kill-horse command")
        return out.without_failure_record() if self.s.config.disable_default_exception_handler else out

    async def _failed(
        self,
        record: JobRecord,
        handle: JobHandle,
        exc: BaseException,
        started: Any,
        ended: Any,
        elapsed: float,
        callback_ran: bool = False,
    ) -> Transition:
        claimed, s = self.claimed, self.s
        text = "".join(traceback.format_exception(exc))
        shown: BaseException = exc  # the exception whose traceback is stored (and logged)
        ex = self._execution(started, ended)
        if not callback_ran:
            try:
                await s.callbacks.failure(record, handle, exc)
            except Exception as cb_exc:
                text = "".join(traceback.format_exception(cb_exc))
                shown = cb_exc
        await s.callbacks.exception_handlers(record, handle, exc)
        self.error, self.exc_text = exc, text
        if transitions.should_retry_on_exception(record):
            log.info("job %s raised %s: retrying (%s left)", claimed.job_id, type(exc).__name__, record.retries_left,
                     extra=self._job_extra("retried", elapsed))
            return transitions.exception_retry(record, ex, working_time=elapsed)
        # As stock: the type and message on the line, the whole traceback after it at ERROR (text) or in
        # exc_info (JSON, with exc_type and exc_message).
        # asyncjobs' own refusals (a function outside --allow-module, a payload it cannot decode) say all
        # in their message: their traceback would show only the worker's frames.
        own = isinstance(shown, (ResolveError, PayloadError, MalformedJobError))
        extra = {**self._job_extra("failed", elapsed), **exception_fields(shown)}
        trace_id = extra.get("trace_id")  # set by an error tracker's before_job hook: find the event from the line
        log.error("job %s failed: %s%s", claimed.job_id, exception_summary(shown),
                  f" (trace {trace_id})" if trace_id else "", exc_info=None if own else shown, extra=extra)
        self.after_recorded = self._webhooks(record, "failed", ended, text)
        out = transitions.failure(record, ex, text, working_time=elapsed)
        if s.config.disable_default_exception_handler:
            return out.without_failure_record()  # stock: status failed, no Result, no registry entry
        return out

    # ------------------------------------------------------------------ helpers
    def _webhooks(
        self, record: JobRecord, status: str, ended: Any, exc_string: str | None = None
    ) -> Callable[[], Awaitable[None]] | None:
        """RQ's webhooks for the terminal status, to send once the outcome is stored (see webhooks.py)."""
        if not any(w.get("job_status") == status for w in record.webhooks):
            return None
        body = webhooks.payload(record.id, self.func_name, status, record.enqueued_at, ended, exc_string)
        return functools.partial(webhooks.send_all, record.webhooks, status, body, self.s.webhook_policy)

    def _job_extra(self, status: str, duration: float | None = None) -> dict[str, Any]:
        c = self.claimed
        extra = job_extra(c.job_id, c.queue, self.func_name, status, self.s.worker_name, duration)
        if self.view is not None and self.view.log_fields:  # the hooks' own fields never replace the worker's
            extra = {**self.view.log_fields, **extra}
        return extra

    def _job_view(self, record: JobRecord, handle: JobHandle, func: Any, description: str) -> JobView:
        c = self.claimed
        return JobView(
            job_id=c.job_id, queue=c.queue, func_name=self.func_name, handle=handle, worker_name=self.s.worker_name,
            execution_id=c.execution_id, description=description, enqueued_at=record.enqueued_at,
            retries_left=record.retries_left, is_async=self.s.executor.is_async(func),
        )

    def _thread_hooks(self, record: JobRecord) -> ThreadHooks | None:
        """A sync job's plain-def before/after_job hooks, for its own thread."""
        if self.view is None or self.view.is_async:
            return None

        def classify(value: Any, error: BaseException | None, duration: float) -> Any:
            return outcome_of_call(record, value, error, duration, cancel_reason=self.cancel_reason)

        return self.s.hooks.thread_hooks(self.view, classify)


def _reason(exc: BaseException) -> str:
    name = getattr(exc, "reported_as", None) or f"{type(exc).__module__}.{type(exc).__qualname__}"
    return f"{name}: {exc}\n"
