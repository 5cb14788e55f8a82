"""Issue 22: every flag of stock ``rq worker --help`` (the installed RQ, either major) is answered by
``asyncjobs-worker``: accepted with RQ's meaning, or refused with one line saying why and what to use;
and the README's table lists each one, so a flag a new RQ adds cannot go unnoticed."""

from __future__ import annotations

import re

import pytest

from asyncjobs.cli.worker import build_parser, main
from tests.testsupport.workers import PROJECT_ROOT, run_rq_cli

_OPTION = re.compile(r"(?:^|[\s,])(--?[A-Za-z][\w-]*)")


def _rq_worker_options() -> set[str]:
    result = run_rq_cli("worker", "--help")
    assert result.returncode == 0, result.stderr
    options: set[str] = set()
    for line in result.stdout.split("Options:", 1)[1].splitlines():
        head = line.strip().split("  ")[0]  # the option column, before the help text
        if head.startswith("-"):
            options.update(m for m in _OPTION.findall(" " + head) if m != "--help")
    assert {"--burst", "-w", "--worker-class", "-u"} <= options, options  # the parse found the table
    return options


def test_every_rq_worker_flag_is_accepted_and_in_the_readme_table() -> None:
    options = _rq_worker_options()
    ours = set(build_parser()._option_string_actions)
    assert sorted(options - ours) == []
    table = (PROJECT_ROOT / "README.md").read_text().split("### Every `rq worker` flag", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"`(--?[A-Za-z][\w-]*)", table))
    assert sorted(options - listed) == []


def test_rq_meanings_of_the_short_and_logging_flags() -> None:
    p = build_parser()
    args = p.parse_args(["-s", "-d", "-ds", "round_robin", "-v", "q"])
    assert args.with_scheduler and args.disable_default_exception_handler and args.dequeue_strategy == "round_robin"
    assert args.verbose and not args.quiet
    assert p.parse_args(["-q"]).quiet
    # The classes stock RQ uses anyway are accepted as no-ops.
    args = p.parse_args(["-j", "rq.job.Job", "--queue-class", "rq.Queue", "--connection-class", "redis.Redis",
                         "-w", "asyncjobs.AsyncWorker"])
    assert args.job_class == "rq.job.Job"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--job-class", "myapp.jobs.AuditedJob"], "--job-class 'myapp.jobs.AuditedJob'"),
        (["--queue-class", "myapp.queues.MyQueue"], "--queue-class 'myapp.queues.MyQueue'"),
        (["--worker-class", "rq.worker.SimpleWorker"], "rq worker -w rq.worker.SimpleWorker"),
        (["--connection-class", "myapp.redis.TracedRedis"], "--connection-class 'myapp.redis.TracedRedis'"),
        (["-v", "-q"], "not allowed with argument"),
    ],
    ids=["job", "queue", "worker", "connection", "verbose-quiet"],
)
def test_classes_asyncjobs_cannot_honour_are_refused_in_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--burst", "q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1], err


def test_rq_worker_class_says_it_ignores_a_custom_job_class(redis_url: str) -> None:
    """``rq worker -w asyncjobs.AsyncWorker --job-class X``: RQ's CLI built the worker; asyncjobs says
    once, at start, that X's overrides will not run (django-rq passes its classes this way)."""
    from tests.testsupport.workers import run_rq_worker_with_asyncjobs_class

    with run_rq_worker_with_asyncjobs_class(redis_url, "q", "--burst", "--job-class", "tests.ops.jobs.AuditedJob") as w:
        assert w.wait(60) == 0, w.output()
        out = w.output()
    lines = [ln for ln in out.splitlines() if "tests.ops.jobs.AuditedJob" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0] and "not used" in lines[0], out


def test_queue_limits_under_rq_worker_w(redis_url: str, sync_redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``ASYNCJOBS_QUEUE_LIMITS`` (or ``QUEUE_LIMITS`` in the ``-c`` module) is ``--queue-limit`` under
    ``rq worker -w asyncjobs.AsyncWorker``: at most 2 ``sms`` jobs at once out of 10 slots; a bad value
    stops start-up in one line naming the variable."""
    from rq import Queue

    from tests.testsupport.workers import run_rq_worker_with_asyncjobs_class

    ledger = tmp_path / "spans"
    sms, emails = Queue("sms", connection=sync_redis), Queue("emails", connection=sync_redis)
    for i in range(6):
        sms.enqueue("tests.ops.jobs.span", str(ledger), f"s{i}", 0.3)
        emails.enqueue("tests.ops.jobs.span", str(ledger), f"e{i}", 0.3)
    env = {"ASYNCJOBS_CONCURRENCY": "10", "ASYNCJOBS_QUEUE_LIMITS": "sms=2"}
    with run_rq_worker_with_asyncjobs_class(redis_url, ["sms", "emails"], "--burst", env=env) as worker:
        assert worker.wait(60) == 0, worker.output()
    running: set[str] = set()
    most = {"s": 0, "e": 0}
    for line in ledger.read_text().split():
        (running.add if line[0] == "+" else running.discard)(line[1:])
        for kind in most:
            most[kind] = max(most[kind], sum(1 for t in running if t.startswith(kind)))
    assert most == {"s": 2, "e": 6}, most
    for bad in ("sms", "sms=0", "fax=2"):
        env = {"ASYNCJOBS_QUEUE_LIMITS": bad}
        with run_rq_worker_with_asyncjobs_class(redis_url, ["sms"], "--burst", env=env) as worker:
            assert worker.wait(60) == 2, worker.output()
            out = worker.output()
        assert "ASYNCJOBS_QUEUE_LIMITS" in out and repr(bad) in out and "Traceback" not in out, out


def test_cron_and_max_memory_under_rq_worker_w(redis_url: str, sync_redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``ASYNCJOBS_CRON`` is ``--cron`` under ``rq worker -w asyncjobs.AsyncWorker`` (the worker leads and
    enqueues each tick); a bad cron file or ``ASYNCJOBS_MAX_MEMORY`` stops start-up in one line."""
    from rq import Queue

    from tests.testsupport.workers import run_rq_worker_with_asyncjobs_class, wait_for

    conf = tmp_path / "cron_config.py"
    conf.write_text('from rq import cron\nfrom tests.ops import jobs\n\n'
                    'cron.register(jobs.ok, "cronq", args=(1,), interval=1, name="every-second")\n')
    env = {"ASYNCJOBS_CRON": str(conf), "ASYNCJOBS_CRON_LEASE": "2", "ASYNCJOBS_MAX_MEMORY": "2G",
           "ASYNCJOBS_CLAIM_BATCH": "4", "ASYNCJOBS_PREFETCH": "0"}
    with run_rq_worker_with_asyncjobs_class(redis_url, ["other"], env=env) as worker:
        wait_for(lambda: Queue("cronq", connection=sync_redis).count >= 2, 30, message=worker.output)
        worker.stop()
        assert worker.wait(30) == 0, worker.output()
    assert all("cron_scheduled_at" in j.meta for j in Queue("cronq", connection=sync_redis).get_jobs())
    # over ASYNCJOBS_MAX_MEMORY: it recycles with asyncjobs-worker's status, 75, for the supervisor
    Queue("other", connection=sync_redis).enqueue("tests.ops.jobs.ok", 1)
    with run_rq_worker_with_asyncjobs_class(redis_url, ["other"], env={"ASYNCJOBS_MAX_MEMORY": "1M"}) as worker:
        assert worker.wait(60) == 75, worker.output()
    (tmp_path / "broken.py").write_text("from rq import cron\ncron.register(print, 'q', cron='not a cron')\n")
    for env, named in (({"ASYNCJOBS_CRON": str(tmp_path / "broken.py")}, "broken.py"),
                       ({"ASYNCJOBS_MAX_MEMORY": "lots"}, "ASYNCJOBS_MAX_MEMORY='lots'"),
                       ({"ASYNCJOBS_CRON_LEASE": "0", "ASYNCJOBS_CRON": str(conf)}, "--cron-lease"),
                       ({"ASYNCJOBS_CLAIM_BATCH": "0"}, "ASYNCJOBS_CLAIM_BATCH='0' is not a positive whole number"),
                       ({"ASYNCJOBS_PREFETCH": "-1"}, "ASYNCJOBS_PREFETCH='-1' is not a whole number")):
        with run_rq_worker_with_asyncjobs_class(redis_url, ["other"], "--burst", env=env) as worker:
            assert worker.wait(60) == 2, worker.output()
            out = worker.output()
        assert named in out and "Traceback" not in out, out
