"""``--cron CONFIG``: RQ's cron inside the worker, with exactly one enqueuer per tick (issue 21 §1).

The config file is the one ``rq cron CONFIG`` takes: a Python file (or dotted module) calling
``rq.cron.register(func, queue_name, interval=... | cron=..., ...)``.  Any number of workers may pass
it; the jobs, their history and the monitoring are RQ's own:

* **Leader lease.**  ``<prefix>:asyncjobs:cron:leader`` (``asyncjobs:cron:leader`` under the default
  prefix) holds the leading worker's name with a ``PX`` of 3/4 of ``--cron-lease``.  Every worker runs
  ``lua/cron_lease.lua`` (take if free, compare-and-renew if its own) every quarter of the lease: the
  leader renews, the others wait; when the leader dies its key expires (3/4) and another takes it at
  its next try (1/4): **within the lease**.  A leader that cannot renew stops enqueuing once 90% of its
  key's time has passed by its own clock.  A worker that stops releases the lease at once.
* **Exactly once per tick.**  Each tick has a scheduled time: ``interval`` jobs run on a fixed grid
  from their first run (RQ runs them at once on start, then every ``interval`` seconds), ``cron``
  jobs at their expression's times as the installed RQ computes them (RQ 3: local time; RQ 2.12:
  UTC).  A tick is enqueued in one ``WATCH``/``MULTI`` transaction with the per-job state
  ``<...>:cron:last`` (the last tick's scheduled time) and a per-tick marker
  ``<...>:cron:tick:<cron job>:<ms>`` (``SET NX`` with a TTL): a second enqueuer of the same tick (an
  old leader still running, a takeover, a clock step back) finds the state or the marker and enqueues
  nothing.  Only ticks after the state's are enqueued, so a clock stepped back enqueues nothing until
  it passes the last tick again.
* **Late, not dropped.**  Ticks missed while no one led (a takeover) are enqueued by the next leader
  as soon as it leads, oldest first, if they are at most :func:`catch_up` (``max(60 s, 3 x lease)``)
  old; older ones (the whole fleet was down) are skipped and logged.
* **RQ's monitoring.**  The enqueued jobs are ordinary RQ jobs (``meta["cron_scheduled_at"]`` holds
  the tick's scheduled time); the leader records each one in RQ's ``CronJob`` history and
  ``CronJobRegistry`` and registers itself as an RQ ``CronScheduler`` (named after the worker), with
  its jobs' last and next enqueue times, as ``rq cron`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis

from asyncjobs import metrics
from asyncjobs.backoff import wait_or
from asyncjobs.connection import RedisTarget
from asyncjobs.protocol.keys import DEFAULT, Keys

__all__ = ["CronConfigError", "CronEntry", "CronRunner", "catch_up", "load_cron_config"]

log = logging.getLogger("asyncjobs.cron")

#: Keys of the state hash and the markers live this long without a write (a cron job removed from the
#: config leaves its state behind for this long at most).
STATE_TTL = 30 * 86400


class CronConfigError(ValueError):
    """The ``--cron`` file cannot be loaded; the message names the file and line."""


@dataclass
class CronEntry:
    """One ``rq.cron.register(...)`` call: RQ's ``CronJob`` and where it was registered."""

    job: Any  # rq.cron.CronJob
    cron_id: str  # its name, made unique within the file (``name#2`` for a second job of that name)
    where: str  # "file:line"


def catch_up(lease: float) -> float:
    """Seconds a missed tick may be late and still be enqueued (older ones are skipped)."""
    return max(60.0, 3 * lease)


def _where_in(exc: BaseException, path: str | None) -> str:
    """``file:line`` of the deepest frame in the config file (else the deepest frame at all)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    chosen = None
    for frame in frames:
        if path is not None and os.path.abspath(frame.filename) == path:
            chosen = frame
    if chosen is None and frames:
        chosen = frames[-1]
    return f"{chosen.filename}:{chosen.lineno}" if chosen is not None else (path or "?")


def load_cron_config(config: str) -> list[CronEntry]:
    """Import the ``rq cron`` config (a file path or a dotted module) and validate every job now:
    a bad expression, a missing function or an import error raises :class:`CronConfigError`
    naming the file and line."""
    import rq.cron as rq_cron

    path: str | None = None
    if config.endswith(".py") or os.sep in config or os.path.isfile(config):
        path = os.path.abspath(config)
        if not os.path.isfile(path):
            raise CronConfigError(f"--cron {config}: no such file (give the file `rq cron` takes)")

    entries: list[CronEntry] = []
    original = rq_cron.register

    def register(*args: Any, **kwargs: Any) -> dict[str, Any]:
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        data: dict[str, Any] = original(*args, **kwargs)
        try:
            job = rq_cron.CronJob(**data)
        except Exception as exc:
            raise CronConfigError(f"{where}: {exc}") from None
        entries.append(CronEntry(job, job.name, where))
        return data

    rq_cron.register = register
    try:
        if path is not None:
            name = f"asyncjobs_cron_config_{abs(hash(path))}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise CronConfigError(f"--cron {config}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        elif config in sys.modules:
            importlib.reload(sys.modules[config])
        else:
            importlib.import_module(config)
    except CronConfigError:
        raise
    except Exception as exc:
        raise CronConfigError(f"{_where_in(exc, path)}: {type(exc).__name__}: {exc} (loading --cron {config})") from None
    finally:
        rq_cron.register = original
        rq_cron._job_data_registry.clear()
    if not entries:
        raise CronConfigError(f"--cron {config}: registers no cron job (call rq.cron.register(...) in it)")
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry.cron_id] = seen.get(entry.cron_id, 0) + 1
        if seen[entry.cron_id] > 1:
            entry.cron_id = f"{entry.cron_id}#{seen[entry.cron_id]}"
    return entries


def _lease_script() -> str:
    return resources.files("asyncjobs.protocol").joinpath("lua", "cron_lease.lua").read_text("utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class CronRunner:
    """Leads (or waits to lead) and enqueues due ticks; :meth:`step` runs in a thread (RQ's code is
    synchronous), :meth:`run` drives it from the worker's event loop."""

    def __init__(
        self,
        target: RedisTarget,
        entries: list[CronEntry],
        name: str,
        *,
        config_file: str = "",
        lease: float = 15.0,
        keys: Keys = DEFAULT,
        serializer: Any = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.entries = entries
        self.name = name
        self.config_file = config_file
        self.lease = lease
        self.keys = keys
        self.serializer = serializer
        self.clock = clock
        self.monotonic = monotonic
        self.leading = False
        self.enqueued = 0
        self._conn: Any = None
        self._script: Any = None
        self._rq_scheduler: Any = None
        self._registered = False
        self._valid_until = 0.0
        self._renew_at = 0.0
        self._failing: set[str] = set()  # cron jobs whose enqueue raised (logged once until it works)
        #: the key's PX: 3/4 of the lease, tried every 1/4, so a dead leader is replaced within the lease
        self._ttl = 0.75 * lease

    # ------------------------------------------------------------ connection and lease
    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.target.sync_client()
            self._script = self._conn.register_script(_lease_script())
        return self._conn

    def _lease(self, op: str) -> tuple[bool, str | None]:
        self._connection()
        held, holder = self._script(keys=[self.keys.cron_leader], args=[op, self.name, int(self._ttl * 1000)])
        return bool(held), (_text(holder) if holder else None)

    def _scheduler(self) -> Any:
        if self._rq_scheduler is None:
            from rq.cron import CronScheduler

            sched = CronScheduler(connection=self._connection(), name=self.name)
            sched._cron_jobs = [e.job for e in self.entries]
            sched.config_file = self.config_file
            self._rq_scheduler = sched
        return self._rq_scheduler

    def _monitor_birth(self) -> None:
        """Show this leader in RQ's CronScheduler registry, as ``rq cron`` shows itself."""
        from rq.exceptions import DuplicateSchedulerError

        sched = self._scheduler()
        try:
            sched.register_birth()
        except DuplicateSchedulerError:
            sched.heartbeat()
        self._registered = True

    def _monitor_death(self) -> None:
        if self._registered and self._rq_scheduler is not None:
            from rq.exceptions import SchedulerNotFound

            self._registered = False
            with contextlib.suppress(SchedulerNotFound):
                self._rq_scheduler.register_death()

    # ------------------------------------------------------------ one step
    def step(self) -> float:
        """Take or renew the lease when due; as leader, enqueue every due tick.  Returns the seconds to
        wait before the next step."""
        now_m = self.monotonic()
        period = self.lease / 4
        if now_m >= self._renew_at:
            held, holder = self._lease("take")
            self._renew_at = now_m + period
            if held:
                self._valid_until = now_m + 0.9 * self._ttl
                if not self.leading:
                    self.leading = True
                    metrics.set_cron_leader(True)
                    log.info("cron: %s leads (lease %gs); %d cron jobs from %s", self.name, self.lease,
                             len(self.entries), self.config_file or "the config")
                    self._monitor_birth()
                elif self._registered:
                    self._scheduler().heartbeat()
            elif self.leading:
                self.leading = False
                metrics.set_cron_leader(False)
                log.warning("cron: %s lost the lease to %s; not enqueuing", self.name, holder)
                self._monitor_death()
        if not self.leading:
            return max(0.05, self._renew_at - self.monotonic())
        if self.monotonic() >= self._valid_until:
            return 0.05  # could not renew in time: enqueue nothing until the lease is ours again
        soonest = self._enqueue_due()
        wait = min(self._renew_at - self.monotonic(), soonest - self.clock(), 1.0)
        return max(0.02, wait)

    def _enqueue_due(self) -> float:
        """Enqueue every due tick of every cron job; return the epoch time of the soonest next tick."""
        conn = self._connection()
        now = self.clock()
        last_raw = conn.hgetall(self.keys.cron_last)
        last = {_text(k): int(_text(v)) for k, v in last_raw.items()}
        soonest = now + 60.0
        changed = False
        for entry in self.entries:
            previous = last.get(entry.cron_id)
            if previous is None and entry.job.cron:
                # A cron expression starts from now (as `rq cron`): record the anchor, enqueue nothing.
                anchor = int(now * 1000)
                conn.hsetnx(self.keys.cron_last, entry.cron_id, anchor)
                previous = int(_text(conn.hget(self.keys.cron_last, entry.cron_id)))
            due, upcoming = self._due(entry, previous, now)
            for scheduled in due:
                if not self.leading or self.monotonic() >= self._valid_until:
                    return now + 0.05
                try:
                    if self._enqueue(entry, scheduled):
                        changed = True
                    self._failing.discard(entry.cron_id)
                except redis.RedisError:
                    raise
                except Exception as exc:  # this job's enqueue (its arguments, its serializer): not the others'
                    if entry.cron_id not in self._failing:
                        log.error("cron: could not enqueue %s (registered at %s): %s: %s; retrying every step",
                                  entry.cron_id, entry.where, type(exc).__name__, exc)
                        self._failing.add(entry.cron_id)
                    due = due[: due.index(scheduled)]
                    upcoming = min(upcoming, int((now + 1.0) * 1000))  # try again in a second
                    break
            if due:
                entry.job.latest_enqueue_time = _utc(due[-1])
            elif previous is not None and entry.job.latest_enqueue_time is None and (
                entry.job.interval or self._next_cron(entry, previous - 1) == previous
            ):  # a tick enqueued before this worker led (not a cron job's start anchor, which is off its grid)
                entry.job.latest_enqueue_time = _utc(previous)
            entry.job.next_enqueue_time = _utc(upcoming)
            soonest = min(soonest, upcoming / 1000)
        if changed and self._registered:
            self._scheduler().save()
        return soonest

    def _next_cron(self, entry: CronEntry, after_ms: int) -> int:
        """The next time of ``entry``'s expression after ``after_ms``, as the installed RQ computes it."""
        job = entry.job
        saved = job.latest_enqueue_time
        job.latest_enqueue_time = _utc(after_ms)
        try:
            nxt: datetime = job.get_next_enqueue_time()
        finally:
            job.latest_enqueue_time = saved
        return round(nxt.timestamp() * 1000)

    def _due(self, entry: CronEntry, previous: int | None, now: float) -> tuple[list[int], int]:
        """The scheduled times (epoch ms) due now, oldest first, and the first one not yet due."""
        now_ms = int(now * 1000)
        oldest = now_ms - int(catch_up(self.lease) * 1000)
        interval = entry.job.interval
        if interval:
            step = int(interval * 1000)
            if previous is None:
                return [now_ms], now_ms + step  # first run ever: at once, as `rq cron`
            first = previous + step
            if first < oldest:
                skipped = math.ceil((oldest - first) / step)
                log.warning("cron: %s missed %d ticks older than %gs: skipped", entry.cron_id, skipped,
                            catch_up(self.lease))
                first += skipped * step
            due = list(range(first, now_ms + 1, step))
            return due, (due[-1] + step if due else first)
        assert previous is not None
        due = []
        t = self._next_cron(entry, previous)
        if t < oldest:
            log.warning("cron: %s: ticks before %s are older than %gs: skipped", entry.cron_id,
                        _utc(oldest).isoformat(), catch_up(self.lease))
            t = self._next_cron(entry, oldest - 1)
        while t <= now_ms:
            due.append(t)
            t = self._next_cron(entry, t)
        return due, t

    def _enqueue(self, entry: CronEntry, scheduled: int) -> bool:
        """Enqueue one tick unless it already is: state and marker are watched, and written with the job
        in one transaction.  True if this call enqueued it."""
        from rq import cron_job_registry
        from rq.cron import get_cron_job_history_key
        from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
        from rq.queue import Queue

        conn = self._connection()
        job = entry.job
        marker = self.keys.cron_tick(entry.cron_id, scheduled)
        history = get_cron_job_history_key(job.name)
        queue = Queue(job.queue_name, connection=conn, serializer=self.serializer)
        options = dict(job.job_options)
        options["meta"] = {**(options.get("meta") or {}), "cron_scheduled_at": _utc(scheduled).isoformat()}
        with conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.keys.cron_last, marker)
                    current = pipe.hget(self.keys.cron_last, entry.cron_id)
                    if (current is not None and int(_text(current)) >= scheduled) or pipe.exists(marker):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(marker, self.name, nx=True, px=int(2 * catch_up(self.lease) * 1000))
                    pipe.hset(self.keys.cron_last, entry.cron_id, scheduled)
                    pipe.expire(self.keys.cron_last, STATE_TTL)
                    rq_job = queue.enqueue(job.func, args=job.args, kwargs=job.kwargs, **options, pipeline=pipe)
                    stamp = (rq_job.enqueued_at or datetime.now(UTC)).timestamp()
                    pipe.zadd(history, {rq_job.id: stamp})
                    pipe.zremrangebyrank(history, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
                    pipe.expire(history, DEFAULT_CRON_JOB_HISTORY_TTL)
                    cron_job_registry.add(job.name, pipe, enqueue_timestamp=stamp)
                    pipe.execute()
                except redis.WatchError:
                    continue  # someone wrote the state meanwhile: look again
                break
        self.enqueued += 1
        metrics.cron_tick(entry.cron_id)
        late = self.clock() - scheduled / 1000
        log.info("cron: enqueued %s (job %s) on %s for %s%s", entry.cron_id, rq_job.id, job.queue_name,
                 _utc(scheduled).isoformat(), f", {late:.1f}s late" if late >= 1 else "")
        return True

    # ------------------------------------------------------------ lifecycle
    def _drop_connection(self) -> None:
        """After a failed step: connect afresh next time (after a Redis Cluster failover, the slot's
        new owner), keeping what this worker knows of its lease."""
        conn, self._conn = self._conn, None
        if self._rq_scheduler is not None:
            self._rq_scheduler = None  # it holds the old connection; rebuilt on next use
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Release the lease (another worker leads at once) and leave RQ's registry."""
        if self._conn is None:
            return
        try:
            if self.leading:
                self.leading = False
                metrics.set_cron_leader(False)
                self._lease("release")
                log.info("cron: %s released the lease", self.name)
            self._monitor_death()
        except Exception as exc:
            log.warning("cron: could not release the lease (%s); it expires within %gs", exc, self.lease)
        finally:
            self._conn.close()
            self._conn = None

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        try:
            while not stop.is_set():
                try:
                    wait = await asyncio.to_thread(self.step)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    log.warning("cron step failed (%s); retrying", exc)
                    await asyncio.to_thread(self._drop_connection)  # a new one finds the slot's owner again
                    wait = min(self.lease / 4, 0.25 * failures)
                await wait_or(stop, wait)
        finally:
            await asyncio.to_thread(self.close)
