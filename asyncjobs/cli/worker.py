"""``asyncjobs-worker``: the command-line entry point (a drop-in for ``rq worker``).

Forms (the first argument decides; nothing else is ever a subcommand):

* ``asyncjobs-worker [options] [QUEUE ...]``: run a worker, as ``rq worker``;
* ``asyncjobs-worker info [options] [QUEUE ...]``: live workers, jobs in flight, queue sizes;
* ``asyncjobs-worker check [options] [--name NAME] [QUEUE ...]``: exit 0 if such a worker is
  registered and heart-beating, else 1 with the reason (for container health checks);
* ``asyncjobs-worker queues [limit|pause|resume] ...``: queue limits and pauses (asyncjobs.cli.queues);
* ``asyncjobs-worker drain NAME ...``: those workers stop claiming, finish their jobs and exit 0.

A queue literally named ``info``, ``check``, ``queues`` or ``drain`` is run with ``--queues info`` or
``asyncjobs-worker -- info``: only a bare first argument is taken as a subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import logging.config
import os
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from asyncjobs.cli.rqconfig import add_connection_args, read_settings_module, resolve_target
from asyncjobs.connection import DEFAULT_REDIS_URL
from asyncjobs.host.preflight import battery_settings_problem
from asyncjobs.host.runner import run_worker, setup_logging
from asyncjobs.protocol.codec import format_size
from asyncjobs.protocol.rqversion import prefix_problem
from asyncjobs.worker.config import (
    DEFAULTS,
    OPS_SETTINGS,
    WorkerConfig,
    ops_options,
    parse_memory,
    parse_queue_limit,
    parse_size,
)

log = logging.getLogger("asyncjobs")

SUBCOMMANDS = ("info", "check", "queues", "drain", "exporter")
_DIGITS = re.compile(r"^\d+$")


class _ConfigOrConcurrency(argparse.Action):
    """``-c``: a settings module like ``rq worker -c`` (``-c myapp.settings``); a bare number keeps
    its old meaning, ``--concurrency`` (``-c 50``). A module name never starts with a digit, so the
    two cannot be confused."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        text = str(values)
        if _DIGITS.match(text):
            namespace.concurrency = int(text)
        else:
            namespace.config = text


def _version_text() -> str:
    import redis
    import rq

    from asyncjobs import __version__

    return f"asyncjobs-worker {__version__} (rq {rq.__version__}, redis-py {redis.__version__})"


#: ``rq worker``'s class options: (flags) -> help.  asyncjobs reads and writes RQ's Redis format itself, so
#: only the classes stock RQ uses by default (or asyncjobs' own worker) mean anything to it.
RQ_CLASS_FLAGS: dict[tuple[str, ...], str] = {
    ("--job-class", "-j"): "rq.job.Job only (asyncjobs reads the job hash itself)",
    ("--queue-class",): "rq.Queue only",
    ("--worker-class", "-w"): "asyncjobs.AsyncWorker only (this command is that worker)",
    ("--connection-class",): "redis.Redis only (asyncjobs builds redis.asyncio clients from the URL)",
}
_ACCEPTED_CLASSES: dict[str, frozenset[str]] = {
    "job_class": frozenset({"rq.job.Job", "rq.Job"}),
    "queue_class": frozenset({"rq.queue.Queue", "rq.Queue"}),
    "worker_class": frozenset({"asyncjobs.AsyncWorker", "asyncjobs.host.rq_compat.AsyncWorker",
                               "asyncjobs.cli.rq_compat.AsyncWorker"}),
    "connection_class": frozenset({"redis.Redis", "redis.client.Redis", "redis.StrictRedis"}),
}


def class_flag_problem(args: argparse.Namespace) -> str | None:
    """Why a ``--job-class``/``--queue-class``/``--worker-class``/``--connection-class`` cannot be honoured."""
    for dest, accepted in _ACCEPTED_CLASSES.items():
        value = getattr(args, dest, None)
        if value is None or value in accepted:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest == "worker_class":
            return (f"{flag} {value!r} names RQ's own worker loop, which asyncjobs-worker replaces: run "
                    f"`rq worker -w {value}` for that class, or drop the flag")
        if dest == "connection_class":
            return (f"{flag} {value!r} cannot be honoured: asyncjobs builds its own redis.asyncio clients from "
                    "the URL (TLS, ACL, Sentinel and Cluster have flags of their own); drop the flag")
        return (f"{flag} {value!r} cannot be honoured: asyncjobs reads and writes RQ's Redis format itself, "
                f"without RQ's classes; drop the flag, or run these queues with stock `rq worker {flag} {value}`")
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncjobs-worker",
        description="Run RQ jobs concurrently on one asyncio event loop (a drop-in for `rq worker`). "
        "Also: `asyncjobs-worker info`, `check`, `queues` and `drain` "
        "(see --help of each).",
    )
    p.add_argument("queue_names", nargs="*", metavar="QUEUE", help="queues to listen on, highest priority first")
    p.add_argument("--queues", "-Q", default="", help="comma-separated queues (alternative to positional names)")
    add_connection_args(p)
    p.add_argument("-c", dest="config_or_concurrency", action=_ConfigOrConcurrency, metavar="MODULE|N",
                   help="settings module as `rq worker -c` (e.g. -c myapp.rq_settings); a number is --concurrency")
    p.add_argument("--concurrency", type=int, default=DEFAULTS["concurrency"], help="jobs in flight at once (default %(default)s)")
    p.add_argument("--queue-limit", action="append", default=[], metavar="QUEUE=N",
                   help="at most N jobs of QUEUE in flight in this process (repeatable; also QUEUE_LIMITS = "
                   "{QUEUE: N} in the -c settings module). Fleet-wide limits: `asyncjobs-worker queues`")
    p.add_argument("--threads", type=int, default=None, help="thread pool size for sync jobs (default: concurrency)")
    p.add_argument("--burst", "-b", action="store_true", help="exit when the queues are empty")
    p.add_argument("--burst-redis-wait", type=float, default=DEFAULTS["burst_redis_wait"], metavar="SECONDS",
                   help="with --burst: exit with status 1 once Redis has been unreachable this long "
                   "(default %(default)g)")
    p.add_argument("--name", "-n", default=None,
                   help="worker name (default: -c NAME, else asyncjobs-c<concurrency>-<random hex>)")
    p.add_argument("--serializer", "-S", default=DEFAULTS["serializer"], help="pickle, json, or a dotted path (like rq worker -S)")
    p.add_argument("--results-ttl", type=int, default=DEFAULTS["default_result_ttl"], help="default result TTL in seconds (default %(default)s)")
    p.add_argument("--failure-ttl", type=int, default=None, metavar="SECONDS",
                   help="keep failed and stopped jobs this long when the job sets no failure_ttl (default: "
                        "RQ's, one year)")
    p.add_argument("--worker-ttl", type=int, default=DEFAULTS["worker_ttl"], help="worker key TTL in seconds (default %(default)s)")
    p.add_argument("--job-monitoring-interval", type=float, default=DEFAULTS["job_monitoring_interval"], help="heartbeat interval (default %(default)g s)")
    p.add_argument("--max-jobs", type=int, default=None,
                   help="exit after this many jobs (under --processes: the child is replaced by a fresh one)")
    p.add_argument("--max-memory", default=None, metavar="MB",
                   help="recycle once this process's RSS passes MB megabytes (or 512M, 2G): finish the jobs in "
                        "flight and exit with status 75; under --processes the child is replaced at once")
    p.add_argument("--max-idle-time", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--claim-batch", type=int, default=None, metavar="N",
                   help="store at most N outcomes and claim at most N jobs per round trip to Redis (default: "
                        "max(8, concurrency/8), lifted while the event loop is busy 60%% of the time or more; smaller "
                        "round trips overlap, so jobs ending together restart sooner)")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="claim up to N jobs ahead of the free slots; each starts the moment a slot's job ends, "
                        "with no round trip to Redis in between (default: as many as the slots free in 10 ms, at "
                        "most concurrency/8, so none for long jobs or below --concurrency 8; 0: never)")
    p.add_argument(
        "--dequeue-strategy", "-ds", default=DEFAULTS["dequeue_strategy"], choices=["default", "round_robin", "random"],
        help="order in which queues are tried",
    )
    p.add_argument("--path", "-P", action="append", default=None, help="add a directory to sys.path (default: .)")
    p.add_argument("--logging-level", "--logging_level", "-l", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG (as rq worker -v)")
    loudness.add_argument("--quiet", "-q", action="store_true", help="log at WARNING (as rq worker -q)")
    p.add_argument("--log-format", default="text",
                   help="text (default), json (one JSON object per line), or a logging format string as rq's")
    p.add_argument("--date-format", default=None, help="strftime format of log timestamps")
    p.add_argument("--pid", default=None, metavar="FILE", help="write the process id to FILE (as `rq worker --pid`)")
    p.add_argument("--shutdown-timeout", type=float, default=DEFAULTS["shutdown_timeout"],
                   help="grace period for in-flight jobs after SIGTERM before they are put back (default %(default)g s)")
    p.add_argument("--with-scheduler", "-s", action="store_true", help="also move due scheduled jobs to their queues")
    p.add_argument("--maintenance-interval", type=float, default=DEFAULTS["maintenance_interval"], help="registry cleanup interval (default %(default)g s)")
    p.add_argument("--allow-module", action="append", default=[], metavar="PREFIX",
                   help="only run, and unpickle, code defined in modules under PREFIX (repeatable). Without "
                   "it anyone who can write to Redis can run code in the worker (as with rq worker)")
    p.add_argument("--allow-webhook-host", action="append", default=[], metavar="HOST",
                   help="the only hosts RQ job webhooks may call (repeatable). Default: none with --allow-module; "
                   "without it, any host with public addresses only (no loopback, private or link-local). "
                   "Also $ASYNCJOBS_ALLOW_WEBHOOK_HOSTS (comma-separated)")
    p.add_argument("--max-payload-size", default=format_size(DEFAULTS["max_payload_size"]).replace(" ", ""),
                   metavar="SIZE",
                   help="largest job payload to decode, once decompressed, e.g. 64M (default); "
                   "bigger jobs fail with a readable reason")
    p.add_argument("--disable-job-desc-logging", action="store_true",
                   help="log job ids instead of job descriptions (which contain the arguments), like rq worker")
    p.add_argument("--hooks", action="append", default=[], metavar="MODULE",
                   help="module defining on_startup/on_shutdown/before_job/after_job hooks (repeatable), "
                   "e.g. --hooks myapp.worker_hooks or --hooks asyncjobs.observability.sentry")
    p.add_argument("--exception-handler", action="append", default=[], help="dotted path of an exception handler")
    p.add_argument("--disable-default-exception-handler", "-d", action="store_true",
                   help="failed jobs are not kept in the FailedJobRegistry (as rq worker -d)")
    classes = p.add_argument_group(
        "RQ's class options (accepted for the classes asyncjobs works with; anything else is refused)"
    )
    for flags, what in RQ_CLASS_FLAGS.items():
        classes.add_argument(*flags, default=None, metavar="CLASS", help=what)
    p.add_argument("--cron", default=None, metavar="CONFIG",
                   help="also run RQ's cron from CONFIG (the file `rq cron` takes); any number of workers may "
                        "pass it: one leads and enqueues each tick exactly once")
    p.add_argument("--cron-lease", type=float, default=DEFAULTS["cron_lease"], metavar="SECONDS",
                   help="the cron leader's lease: a dead leader is replaced within it (default %(default)g)")
    p.add_argument("--processes", type=int, default=1, help="run N worker processes under one supervisor")
    p.add_argument("--key-prefix", action="append", default=[], metavar="PREFIX",
                   help="serve the queues under this RQ key prefix (RQ 3's RQ_KEY_PREFIX, e.g. {rq-a}); repeat "
                        "to serve several: one supervised worker process per prefix (x --processes)")
    ops = p.add_argument_group(
        "Metrics and health probes (also ASYNCJOBS_METRICS_PORT ... in the -c settings module or the environment)"
    )
    ops.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (needs the [metrics] extra); "
                     "with --processes the supervisor serves all children")
    ops.add_argument("--metrics-host", default=None, metavar="HOST", help="address for --metrics-port (127.0.0.1; 0.0.0.0 for every interface)")
    ops.add_argument("--health-port", type=int, default=None, metavar="PORT",
                     help="serve /livez and /readyz probes (may equal --metrics-port)")
    ops.add_argument("--health-host", default=None, metavar="HOST", help="address for --health-port (127.0.0.1; 0.0.0.0 for every interface)")
    ops.add_argument("--max-loop-lag", type=float, default=None, metavar="SECONDS",
                     help="/livez fails once the event loop has been blocked this long (default 10)")
    p.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    p.add_argument("--version", action="version", version=_version_text())
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any] | None:
    module = args.config or os.environ.get("RQ_CONFIG") or None
    return read_settings_module(module) if module else None


def config_from_args(args: argparse.Namespace, settings: dict[str, Any] | None = None) -> WorkerConfig:
    """Flags first, then the ``-c`` settings module (QUEUES, NAME, connection), then the environment."""
    queues: list[str] = list(args.queue_names)
    if args.queues:
        queues += [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues and settings and settings.get("QUEUES"):
        configured = settings["QUEUES"]
        queues = [configured] if isinstance(configured, str) else [str(q) for q in configured]
    if not queues:
        queues = ["default"]
    queue_limits = [parse_queue_limit(text) for text in args.queue_limit]
    if not queue_limits and settings and settings.get("QUEUE_LIMITS"):
        configured_limits = settings["QUEUE_LIMITS"]
        if not isinstance(configured_limits, dict):
            raise ValueError(f"QUEUE_LIMITS in the settings module must be a dict {{queue: N}}, got {configured_limits!r}")
        queue_limits = [(str(q), n) for q, n in configured_limits.items()]
    target = resolve_target(args, settings)
    name = args.name or (settings or {}).get("NAME") or f"asyncjobs-c{args.concurrency}-{uuid.uuid4().hex[:12]}"
    return WorkerConfig(
        queues=tuple(dict.fromkeys(queues)),
        redis_url=target.url or DEFAULT_REDIS_URL,
        redis=target,
        name=str(name),
        concurrency=args.concurrency,
        threads=args.threads,
        burst=args.burst,
        burst_redis_wait=args.burst_redis_wait,
        serializer=args.serializer,
        default_result_ttl=args.results_ttl,
        default_failure_ttl=args.failure_ttl,
        worker_ttl=args.worker_ttl,
        job_monitoring_interval=args.job_monitoring_interval,
        max_jobs=args.max_jobs,
        max_memory=parse_memory(args.max_memory),
        cron=args.cron,
        cron_lease=args.cron_lease,
        claim_batch=args.claim_batch,
        prefetch=args.prefetch,
        max_idle_time=args.max_idle_time,
        dequeue_strategy=args.dequeue_strategy,
        shutdown_timeout=args.shutdown_timeout,
        with_scheduler=args.with_scheduler,
        maintenance_interval=args.maintenance_interval,
        allowed_modules=tuple(args.allow_module),
        allow_webhook_hosts=tuple(args.allow_webhook_host) or tuple(
            h.strip() for h in os.environ.get("ASYNCJOBS_ALLOW_WEBHOOK_HOSTS", "").split(",") if h.strip()
        ),
        exception_handlers=tuple(args.exception_handler),
        hooks=tuple(args.hooks),
        disable_default_exception_handler=args.disable_default_exception_handler,
        max_payload_size=parse_size(args.max_payload_size),
        log_job_description=not args.disable_job_desc_logging,
        queue_limits=tuple(queue_limits),
        **ops_options({f: getattr(args, f) for f in OPS_SETTINGS}, settings, os.environ),
    )


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """Write our pid like ``rq worker --pid``; remove the file at exit if it still names us."""
    if not path:
        yield
        return
    full = os.path.expanduser(path)
    with open(full, "w", encoding="ascii") as fh:
        fh.write(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(full, encoding="ascii") as fh:
                mine = fh.read().strip() == str(os.getpid())
            if mine:
                os.unlink(full)


def _setup_logging(args: argparse.Namespace, settings: dict[str, Any] | None) -> None:
    dict_config = (settings or {}).get("DICT_CONFIG")
    if dict_config:
        logging.config.dictConfig(dict_config)
        # dictConfig disables every logger that exists already unless told otherwise; asyncjobs' own
        # are created when its modules are imported (which ones, before this point, depends on the
        # installed RQ), so re-enable them: the worker's lines must reach the handlers configured.
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if (name == "asyncjobs" or name.startswith("asyncjobs.")) and isinstance(logger, logging.Logger):
                logger.disabled = False
    setup_logging(args.logging_level, args.log_format, args.date_format)


def main(argv: Sequence[str] | None = None, *, early_signals: list[int] | None = None) -> int:
    """``early_signals``: SIGTERM/SIGINT the console script recorded before the worker's own handlers
    (``asyncjobs.cli.entry``); the worker stops before registering, as for a signal a moment later."""
    early: list[int] = early_signals if early_signals is not None else []
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "queues":
        from asyncjobs.cli.queues import run_queues

        return run_queues(argv[1:])
    if argv and argv[0] == "drain":
        from asyncjobs.cli.queues import run_drain

        return run_drain(argv[1:])
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    class_problem = class_flag_problem(args)
    if class_problem:
        parser.error(class_problem)
    if args.verbose:
        args.logging_level = "DEBUG"
    elif args.quiet:
        args.logging_level = "WARNING"
    for path in reversed(args.path or ["."]):
        sys.path.insert(0, os.path.abspath(path))
    try:
        problem = prefix_problem()
        if problem:
            raise ValueError(problem)
        settings = _settings(args)
        _setup_logging(args, settings)
        config = config_from_args(args, settings)
        if config.hooks:
            from asyncjobs.worker.hookset import load_hooks

            load_hooks(config.hooks)  # a bad --hooks module is an error now, not in each child
        _check_exception_handlers(config.exception_handlers)
        problem = battery_settings_problem(config.allowed_modules)
        if problem:
            raise ValueError(problem)
        if config.cron:
            from asyncjobs.worker.cron import load_cron_config

            load_cron_config(config.cron)  # a bad --cron file too: the error names its file and line
    except (ValueError, TypeError) as exc:
        print(f"asyncjobs-worker: error: {exc}", file=sys.stderr)
        return 2
    try:
        prefixes = _key_prefixes(args.key_prefix, config.connection.cluster)
    except ValueError as exc:
        print(f"asyncjobs-worker: error: {exc}", file=sys.stderr)
        return 2
    log.info("connecting to %s", config.connection.describe())
    with _pid_file(args.pid):
        if args.processes > 1 or prefixes:
            from asyncjobs.host.supervisor import run_pool

            setup = functools.partial(_child_logging, args)
            return run_pool(config, args.processes, use_uvloop=args.uvloop, prefixes=prefixes, child_setup=setup,
                            early_signals=early)
        return run_worker(config, use_uvloop=args.uvloop, early_signals=early, exits_after=early_signals is not None)


def _check_exception_handlers(handlers: Sequence[str]) -> None:
    """A bad ``--exception-handler`` is an error now (one line), not a traceback once the loop runs."""
    from asyncjobs.worker.callbacks import import_attribute

    for dotted in handlers:
        try:
            import_attribute(dotted)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(
                f"cannot import --exception-handler {dotted!r}: {exc}; give the dotted path of a function "
                "importable from the working directory or --path, e.g. myapp.errors.report"
            ) from None


def _key_prefixes(given: Sequence[str], cluster: bool) -> tuple[str, ...]:
    """``--key-prefix`` values, checked; () when the installed RQ's own prefix is the only one."""
    from asyncjobs.protocol.rqversion import RQ_MAJOR, RQ_VERSION, check_prefix, hash_tag, installed_prefix

    prefixes = tuple(dict.fromkeys(check_prefix(p) for p in given))
    if not prefixes or prefixes == (installed_prefix(),):
        return ()
    if RQ_MAJOR < 3:
        raise ValueError(f"--key-prefix needs RQ 3 (installed: RQ {RQ_VERSION}, which always uses 'rq'): "
                         "install rq>=3,<4 everywhere")
    if cluster:
        untagged = [p for p in prefixes if hash_tag(p) is None]
        if untagged:
            raise ValueError(f"--cluster: --key-prefix {untagged[0]!r} has no hash tag, so its keys spread over "
                             "many slots: use a tag such as {rq-a}")
    return prefixes


def _child_logging(args: argparse.Namespace) -> None:
    """Logging in a spawned child (``--key-prefix``), as the supervisor set it up."""
    _setup_logging(args, _settings(args))


# ------------------------------------------------------------------------------ info / check


def _sub_parser(command: str) -> argparse.ArgumentParser:
    if command == "info":
        p = argparse.ArgumentParser(
            prog="asyncjobs-worker info",
            description="Live workers (asyncjobs and stock), their jobs in flight, and queue sizes. Read-only.",
        )
        p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
        p.add_argument("--max-jobs", type=int, default=10, help="jobs in flight listed per worker (default 10)")
    elif command == "exporter":
        p = argparse.ArgumentParser(
            prog="asyncjobs-worker exporter",
            description="Serve queue sizes, the oldest job's age and the live workers (stock and asyncjobs) "
            "from Redis on /metrics, with no worker running, so backlog and no-worker alerts fire while "
            "the fleet is down. Without QUEUE: every queue RQ knows. Needs the [metrics] extra.",
        )
        p.add_argument("--port", type=int, required=True, help="port to serve /metrics on")
        p.add_argument("--host", default="127.0.0.1",
                       help="address to serve on (default %(default)s; 0.0.0.0 for every interface)")
        p.add_argument("--interval", type=float, default=10.0,
                       help="seconds between readings of Redis (default %(default)g)")
        p.add_argument("--rq-exporter-names", action="store_true",
                       help="also serve rq-exporter's rq_jobs{queue,status} and rq_workers{name,queues,state}, "
                       "for dashboards built on them")
    else:
        p = argparse.ArgumentParser(
            prog="asyncjobs-worker check",
            description="Exit 0 when a live worker with this name, or serving exactly these queues, is "
            "registered and heart-beating; else exit 1 and say why. By default only workers on this host "
            "count (a container's HEALTHCHECK checks its own worker).",
        )
        p.add_argument("--name", "-n", default=None,
                       help="worker name (also matches NAME-<i>, the children of --processes)")
        p.add_argument("--any-host", action="store_true", help="accept a worker on any host")
        p.add_argument("--settings", action="store_true",
                       help="instead: validate the delivery and outbox settings as a worker does at start-up "
                       "(exit 0, or 2 naming each bad variable); Redis is not contacted")
        p.add_argument("--max-heartbeat-age", type=float, default=60.0,
                       help="seconds since the last heartbeat (asyncjobs beats every <= 15 s; default 60)")
    p.add_argument("queue_names", nargs="*", metavar="QUEUE", help="only these queues")
    p.add_argument("--queues", "-Q", default="", help="comma-separated queues")
    add_connection_args(p, config_short=False)
    p.add_argument("--path", "-P", action="append", default=None, help="add a directory to sys.path (for -c)")
    return p


def run_subcommand(command: str, argv: Sequence[str]) -> int:
    from redis.exceptions import RedisError

    from asyncjobs.cli import info as info_mod

    args = _sub_parser(command).parse_args(argv)
    if command == "check" and args.settings:
        problem = battery_settings_problem((), at_start=False)
        if problem:
            print(f"asyncjobs-worker check: {problem}", file=sys.stderr)
            return 2
        print("asyncjobs-worker check: the delivery and outbox settings are valid (or their extras are not installed)")
        return 0
    for path in reversed(args.path or ["."]):
        sys.path.insert(0, os.path.abspath(path))
    queues = list(args.queue_names) + [q.strip() for q in args.queues.split(",") if q.strip()]
    try:
        settings = _settings(args)
        target = resolve_target(args, settings)
    except (ValueError, TypeError) as exc:
        print(f"asyncjobs-worker {command}: error: {exc}", file=sys.stderr)
        return 2
    if command == "exporter":
        return _run_exporter(args, target, queues)
    conn = target.sync_client(socket_timeout=10, socket_connect_timeout=5)
    try:
        snap = info_mod.collect(conn, queues or None)
    except (RedisError, OSError) as exc:
        print(f"asyncjobs-worker {command}: Redis unreachable at {target.describe()}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if command == "info":
        if args.json:
            print(json.dumps(snap.as_dict(), indent=2))
        else:
            print(info_mod.format_snapshot(snap, max_jobs=args.max_jobs))
        return 0
    ok, reason = info_mod.check(
        snap,
        name=args.name,
        queues=queues,
        hostname=None if args.any_host else info_mod.this_host(),
        max_heartbeat_age=args.max_heartbeat_age,
    )
    print(reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _run_exporter(args: argparse.Namespace, target: Any, queues: list[str]) -> int:
    from asyncjobs import metrics
    from asyncjobs._extras import missing_extra

    setup_logging("INFO")
    try:
        metrics.preload()
    except ImportError as exc:
        print(f"asyncjobs-worker exporter: error: {missing_extra('metrics', 'asyncjobs-worker exporter', exc)}",
              file=sys.stderr)
        return 2
    from asyncjobs.host.exporter import run_exporter

    return run_exporter(target, queues, port=args.port, host=args.host, interval=args.interval,
                        rq_exporter_names=args.rq_exporter_names)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
