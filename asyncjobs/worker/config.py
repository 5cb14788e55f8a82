"""Plain configuration values for the worker (no settings objects, no env reads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Literal

from asyncjobs.connection import DEFAULT_REDIS_URL, RedisTarget
from asyncjobs.protocol.codec import DEFAULT_MAX_PAYLOAD_SIZE
from asyncjobs.redact import redact_url

DequeueStrategy = Literal["default", "round_robin", "random"]

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
               "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str, option: str = "--max-payload-size") -> int:
    """``"64M"`` / ``"64MiB"`` / ``"512K"`` / ``"1048576"`` -> bytes (binary units)."""
    value = text.strip().upper().replace(" ", "")
    digits = value.rstrip("KMGIB")
    unit = value[len(digits):]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"{option} {text!r} is not a size: use bytes or K/M/G (binary units), e.g. 64M")
    return int(digits) * _SIZE_UNITS[unit]


def parse_memory(text: str | None) -> int | None:
    """``--max-memory``: ``"512"`` (megabytes), ``"512M"``, ``"2G"`` -> bytes; None stays None."""
    if text is None:
        return None
    value = str(text).strip()
    return parse_size(value + "M" if value.isdigit() else value, "--max-memory")


#: Options for the ops endpoints: flag, else the -c settings module, else the environment (same name).
OPS_SETTINGS: dict[str, tuple[str, Any]] = {
    "metrics_port": ("ASYNCJOBS_METRICS_PORT", int),
    "metrics_host": ("ASYNCJOBS_METRICS_HOST", str),
    "health_port": ("ASYNCJOBS_HEALTH_PORT", int),
    "health_host": ("ASYNCJOBS_HEALTH_HOST", str),
    "max_loop_lag": ("ASYNCJOBS_MAX_LOOP_LAG", float),
}


def ops_options(
    given: Mapping[str, Any], settings: Mapping[str, Any] | None, env: Mapping[str, str]
) -> dict[str, Any]:
    """WorkerConfig keyword arguments for metrics and health, with ``rq worker``'s precedence
    (``env`` is passed in: this module reads no environment itself)."""
    out: dict[str, Any] = {}
    for field, (key, kind) in OPS_SETTINGS.items():
        value = given.get(field)
        source = f"--{field.replace('_', '-')}"
        if value is None and settings and settings.get(key) is not None:
            value, source = settings[key], f"{key} in the settings module"
        if value is None and env.get(key):
            value, source = env[key], f"${key}"
        if value is None:
            continue
        try:
            out[field] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source} = {value!r} is not a {'number' if kind is not str else 'string'}") from None
    return out


@dataclass(frozen=True, slots=True, repr=False)
class WorkerConfig:
    queues: tuple[str, ...]
    redis_url: str = DEFAULT_REDIS_URL
    name: str | None = None
    concurrency: int = 10
    threads: int | None = None  # sync-job thread pool size; default = concurrency
    burst: bool = False
    #: ``--burst``: give up (exit status 1) once Redis has been unreachable this many seconds in a row
    burst_redis_wait: float = 60.0
    serializer: str = "pickle"
    default_result_ttl: int = 500
    #: ``--failure-ttl``: how long failed and stopped jobs (and their results) are kept when the job sets no
    #: ``failure_ttl`` of its own; None = RQ's default, one year
    default_failure_ttl: int | None = None
    worker_ttl: int = 420
    job_monitoring_interval: float = 30.0
    max_jobs: int | None = None
    #: ``--max-memory``: recycle (drain and exit) once the process's RSS passes this many bytes
    max_memory: int | None = None
    max_idle_time: float | None = None
    dequeue_strategy: DequeueStrategy = "default"
    shutdown_timeout: float = 30.0
    block_timeout: float = 2.0
    with_scheduler: bool = False
    maintenance_interval: float = 600.0
    allowed_modules: tuple[str, ...] = ()
    #: ``--allow-webhook-host``: the only hosts job webhooks may call (none given: no webhooks with
    #: ``allowed_modules``, else public addresses only); see asyncjobs/worker/webhooks.py
    allow_webhook_hosts: tuple[str, ...] = ()
    exception_handlers: tuple[str, ...] = ()
    disable_default_exception_handler: bool = False
    #: largest job payload decoded, in bytes once decompressed; bigger jobs fail readably
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
    #: False = ``--disable-job-desc-logging``: log job ids, not descriptions (which carry the arguments)
    log_job_description: bool = True
    #: lifecycle hook sources: module names (``"myapp.worker_hooks"``), modules, ``WorkerHooks``
    #: or any object with on_startup/on_shutdown/before_job/after_job (see asyncjobs.hooks)
    hooks: tuple[object, ...] = ()
    # Sentinel, explicit host/port, TLS or ACL options; None = plain ``redis_url``.
    redis: RedisTarget | None = None
    #: Prometheus ``/metrics`` (needs the ``[metrics]`` extra); None = off
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: ``/livez`` and ``/readyz``; None = off
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    #: ``/livez`` fails once the event loop has not run for this many seconds
    max_loop_lag: float = 10.0
    #: ``--queue-limit QUEUE=N``: at most N jobs of QUEUE in flight in this process (the fleet-wide
    #: limits are set in Redis: ``asyncjobs-worker queues limit``, :class:`asyncjobs.QueueControl`)
    queue_limits: tuple[tuple[str, int], ...] = ()
    #: ``--cron``: the config file (or dotted module) ``rq cron`` takes; one worker of the fleet enqueues
    cron: str | None = None
    #: ``--cron-lease``: seconds the cron leader's lease lasts (a dead leader is replaced within it)
    cron_lease: float = 15.0
    #: ``--claim-batch``: at most this many outcomes stored and jobs claimed per round trip to Redis;
    #: None = :attr:`claim_batch_size`'s default (see there)
    claim_batch: int | None = None
    #: ``--prefetch``: at most this many jobs claimed beyond the free slots, each started the moment a
    #: slot's job ends (no round trip to Redis in between); None = automatic (see
    #: ``asyncjobs.worker.worker.prefetch_limit``), 0 = never more than ``concurrency`` claimed
    prefetch: int | None = None

    @property
    def connection(self) -> RedisTarget:
        """How every part of the worker connects to Redis (one factory for all clients)."""
        return self.redis if self.redis is not None else RedisTarget(url=self.redis_url)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={redact_url(v) if name == 'redis_url' else v!r}"
            for name in self.__dataclass_fields__
            for v in [getattr(self, name)]
            if not (name == "redis_url" and self.redis is not None)
        )
        return f"WorkerConfig({fields})"

    def __post_init__(self) -> None:
        if not self.queues:
            raise ValueError("no queues given: name at least one queue, e.g. --queues default")
        for q in self.queues:
            if not q or any(c.isspace() for c in q):
                raise ValueError(f"invalid queue name {q!r}: queue names must be non-empty and contain no spaces")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.dequeue_strategy not in ("default", "round_robin", "random"):
            raise ValueError(
                f"--dequeue-strategy must be default, round_robin or random, got {self.dequeue_strategy!r}"
            )
        if self.max_jobs is not None and self.max_jobs < 1:
            raise ValueError(f"--max-jobs must be at least 1, got {self.max_jobs}")
        if self.max_memory is not None and self.max_memory < 1 << 20:
            raise ValueError(f"--max-memory must be at least 1 MB, got {self.max_memory} bytes")
        if self.max_payload_size < 1024:
            raise ValueError(
                f"--max-payload-size must be at least 1K (1024 bytes), got {self.max_payload_size}"
            )
        for flag, port in (("--metrics-port", self.metrics_port), ("--health-port", self.health_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{flag} must be a TCP port (0-65535, 0 = any free port), got {port}")
        if self.max_loop_lag <= 0:
            raise ValueError(f"--max-loop-lag must be a positive number of seconds, got {self.max_loop_lag}")
        if self.default_failure_ttl is not None and self.default_failure_ttl < 1:
            raise ValueError(f"--failure-ttl must be a positive number of seconds, got {self.default_failure_ttl}")
        if not 1.0 <= self.cron_lease <= 3600:
            raise ValueError(f"--cron-lease must be between 1 and 3600 seconds, got {self.cron_lease}")
        if self.job_monitoring_interval <= 0:
            raise ValueError("--job-monitoring-interval must be positive")
        if self.claim_batch is not None and (isinstance(self.claim_batch, bool) or self.claim_batch < 1):
            raise ValueError(f"--claim-batch must be at least 1, got {self.claim_batch}")
        if self.prefetch is not None and (isinstance(self.prefetch, bool) or self.prefetch < 0):
            raise ValueError(f"--prefetch must be 0 or more, got {self.prefetch}: 0 turns prefetching off")
        for queue, cap in self.queue_limits:
            if queue not in self.queues and not any(
                any(c in p for c in "*?[") and fnmatchcase(queue, p) for p in self.queues
            ):
                raise ValueError(
                    f"--queue-limit {queue}={cap}: {queue!r} is not one of --queues ({','.join(self.queues)})"
                )
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"--queue-limit {queue}={cap!r}: the limit must be a whole number >= 1")

    @property
    def claim_batch_size(self) -> int:
        """The most outcomes one exchange stores and the most jobs it claims: ``--claim-batch``, else
        ``max(8, concurrency // 8)``.

        Jobs of one length claimed together end together; one exchange for the whole wave makes every
        slot of it wait for all of the wave's outcomes to be stored, all its jobs to be claimed, then
        all of them to start, one after the other on the loop (at ``--concurrency 50`` with 50 ms jobs,
        ~10 ms of every slot's 60).  Smaller exchanges overlap: Redis stores and claims one batch while
        the loop starts the jobs of the last and finishes the next, and the waves break up.  Each
        exchange has a fixed cost (about 14 commands inside the script), so the batch grows with the
        concurrency: at most ~8 exchanges per wave (README "Benchmarks"; ``python -m benchmarks gap``).
        Without ``--claim-batch`` the worker lifts this bound while its event loop's thread is busy (the
        jobs then wait for the CPU, not for round trips; see ``asyncjobs.worker.worker.claim_limit``).
        """
        return self.claim_batch if self.claim_batch is not None else max(8, self.concurrency // 8)

    @property
    def heartbeat_ttl(self) -> int:
        # docs/rq-protocol.md §6.1, §7: stock uses min(timeout, interval) + 60; here interval + 60 (90).
        return int(self.job_monitoring_interval) + 60

    @property
    def idle_worker_key_ttl(self) -> int:
        return self.worker_ttl + 60


#: :class:`WorkerConfig`'s default values by field name: the one source of the worker's defaults
#: (``asyncjobs-worker``'s flags and ``rq worker -w asyncjobs.AsyncWorker`` take theirs from here).
def parse_queue_limit(text: str) -> tuple[str, int]:
    """``"sms=5"`` -> ``("sms", 5)`` (``--queue-limit``)."""
    queue, sep, value = text.rpartition("=")
    if not sep or not queue.strip() or not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"--queue-limit {text!r} is not QUEUE=N with N >= 1, e.g. --queue-limit sms=5")
    return queue.strip(), int(value)


DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: f.default for f in fields(WorkerConfig) if f.default is not MISSING}
)
