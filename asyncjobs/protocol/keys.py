"""RQ's Redis key names under one key prefix (docs/rq-protocol.md §2, §13.2).

RQ 3 reads ``RQ_KEY_PREFIX`` once, at ``import rq``, and derives every key from it (``rq`` by
default, the only prefix RQ 2.12 knows).  :class:`Keys` builds the names the Python side of
asyncjobs uses for one prefix; the Lua scripts in ``protocol/lua/`` build theirs from the same
prefix, passed to them as ``KEYS[1]`` (so Redis Cluster routes each call to the node that owns
the prefix's slot).  ``DEFAULT`` is the installed RQ's prefix; the module-level functions are
``DEFAULT``'s.

asyncjobs' own keys live under the prefix too (:meth:`Keys.own`), so with a hash-tag prefix such
as ``{rq}`` every key asyncjobs touches is in the one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncjobs.protocol.rqversion import DEFAULT_PREFIX, check_prefix, installed_prefix

__all__ = [
    "DEFAULT",
    "QUEUES",
    "WORKERS",
    "Keys",
    "deferred",
    "execution",
    "failed",
    "job",
    "pubsub",
    "queue",
    "scheduled",
    "started",
    "worker",
    "workers_of_queue",
]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under ``prefix`` (e.g. ``rq``, ``myapp``, ``{rq}``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def queues(self) -> str:
        return f"{self.prefix}:queues"  # the set of every queue's key

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def suspended(self) -> str:
        return f"{self.prefix}:suspended"

    @property
    def queue_prefix(self) -> str:
        return f"{self.prefix}:queue:"

    @property
    def worker_prefix(self) -> str:
        return f"{self.prefix}:worker:"

    def queue(self, name: str) -> str:
        return f"{self.prefix}:queue:{name}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def execution(self, job_id: str, execution_id: str) -> str:
        return f"{self.prefix}:execution:{job_id}:{execution_id}"

    def executions(self, job_id: str) -> str:
        return f"{self.prefix}:executions:{job_id}"

    def results(self, job_id: str) -> str:
        return f"{self.prefix}:results:{job_id}"

    def started(self, name: str) -> str:
        return f"{self.prefix}:wip:{name}"

    def finished(self, name: str) -> str:
        return f"{self.prefix}:finished:{name}"

    def failed(self, name: str) -> str:
        return f"{self.prefix}:failed:{name}"

    def deferred(self, name: str) -> str:
        return f"{self.prefix}:deferred:{name}"

    def scheduled(self, name: str) -> str:
        return f"{self.prefix}:scheduled:{name}"

    def ready(self, name: str) -> str:
        return f"{self.prefix}:ready:{name}"  # RQ 3's ReadyJobRegistry

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def worker_executions(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}:executions"  # RQ 3: the worker's live <jid>:<eid>

    def workers_of_queue(self, name: str) -> str:
        return f"{self.prefix}:workers:{name}"

    def pubsub(self, worker_name: str) -> str:
        return f"{self.prefix}:pubsub:{worker_name}"

    def rate_limit(self, key: str) -> str:
        return f"{self.prefix}:rl:{key}"  # RQ 3: <prefix>:rl:<key>, :allowed, :rate_limited

    @property
    def rate_limit_keys(self) -> str:
        return f"{self.prefix}:rl-keys"

    @property
    def queue_limits(self) -> str:
        """asyncjobs' queue limits hash (asyncjobs/limits.py); its rate logs are ``<this>:rate:<queue>``."""
        return self.own("queue-limits")

    # -- cron (issue 21): RQ's own monitoring keys (rq/cron.py, cron_*_registry.py) and asyncjobs' lease
    @property
    def cron_schedulers(self) -> str:
        return f"{self.prefix}:cron_schedulers"  # RQ's CronScheduler registry (zset: name -> heartbeat)

    def cron_scheduler(self, name: str) -> str:
        return f"{self.prefix}:cron_scheduler:{name}"  # RQ's CronScheduler hash (cron_jobs JSON)

    @property
    def cron_jobs(self) -> str:
        return f"{self.prefix}:cron_jobs"  # RQ's CronJobRegistry (zset: cron job name -> last enqueue)

    def cron_job_history(self, name: str) -> str:
        return f"{self.prefix}:cron_job:{name}:jobs"  # RQ's CronJob history (zset: job id -> enqueued_at)

    @property
    def cron_leader(self) -> str:
        """The cron leader lease (string: the leading worker's name, PX = the lease)."""
        return self.own("cron:leader")

    @property
    def cron_last(self) -> str:
        """Hash: cron job id -> the scheduled time (epoch ms) of its last tick enqueued."""
        return self.own("cron:last")

    def cron_tick(self, cron_id: str, scheduled_ms: int) -> str:
        """The per-tick marker (SET NX with a TTL): this tick of this cron job is enqueued."""
        return self.own(f"cron:tick:{cron_id}:{scheduled_ms}")

    def own(self, name: str) -> str:
        """A key of asyncjobs' own (not RQ's): ``<prefix>:asyncjobs:<name>``.

        Under the default prefix the names asyncjobs 0.2 used are kept (``asyncjobs:<name>``), so a
        rolling upgrade shares its locks and limiters with the workers not yet upgraded.
        """
        if self.prefix == DEFAULT_PREFIX:
            return f"asyncjobs:{name}"
        return f"{self.prefix}:asyncjobs:{name}"


#: The installed RQ's prefix (``RQ_KEY_PREFIX`` under RQ 3, else ``rq``).
DEFAULT = Keys(installed_prefix())

QUEUES = DEFAULT.queues
WORKERS = DEFAULT.workers
queue = DEFAULT.queue
job = DEFAULT.job
execution = DEFAULT.execution
started = DEFAULT.started
failed = DEFAULT.failed
deferred = DEFAULT.deferred
scheduled = DEFAULT.scheduled
worker = DEFAULT.worker
workers_of_queue = DEFAULT.workers_of_queue
pubsub = DEFAULT.pubsub
