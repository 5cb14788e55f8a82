"""Log output: ``--log-format json`` (every line parses, ``extra=`` fields become keys),
``--date-format``, ``--pid FILE``, and ``DICT_CONFIG`` from a ``-c`` settings module."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from rq import Queue

from asyncjobs.host.logs import JsonFormatter, make_formatter
from tests.ops import jobs
from tests.testsupport.workers import (
    WorkerProcess,
    asyncjobs_worker_command,
    run_asyncjobs_worker,
    run_rq_worker_with_asyncjobs_class,
    wait_for,
)

JOB_FIELDS = {"job_id": "j-1", "queue": "emails", "func": "app.tasks.send", "status": "finished",
              "duration_ms": 12.5, "worker": "w-1"}


def _record(msg: str = "job %s done", *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("asyncjobs.worker.test")
    exc_info = None
    if exc:
        try:
            raise RuntimeError("kaput\nsecond line")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args or ("j-1",), exc_info, extra=extra)


def test_json_line_carries_extra_fields_as_keys() -> None:
    line = JsonFormatter().format(_record(**JOB_FIELDS))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "job j-1 done"
    assert data["level"] == "INFO" and data["logger"] == "asyncjobs.worker.test" and data["pid"] == os.getpid()
    assert {k: data[k] for k in JOB_FIELDS} == JOB_FIELDS
    assert data["time"].endswith("Z")


def test_json_line_with_traceback_and_odd_values_is_one_parseable_line() -> None:
    line = JsonFormatter(datefmt="%Y").format(
        _record("multi\nline %s", "msg", exc=True, level="clash", payload=b"\xffbytes", obj=object())
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "multi\nline msg"
    assert "RuntimeError: kaput" in data["exc_info"]
    assert data["extra_level"] == "clash" and data["level"] == "INFO"  # an extra named like a fixed key does not overwrite it
    assert data["payload"] == "\ufffdbytes"
    assert data["obj"].startswith("<object object")
    assert data["time"].isdigit() and len(data["time"]) == 4  # --date-format applies


def test_text_and_format_string_and_bad_format() -> None:
    assert make_formatter("text").format(_record()).endswith("INFO asyncjobs.worker.test: job j-1 done")
    assert make_formatter("%(levelname)s|%(message)s").format(_record()) == "INFO|job j-1 done"
    with pytest.raises(ValueError, match="'yaml'"):
        make_formatter("yaml")
    with pytest.raises(ValueError, match="nosuchfield"):
        make_formatter("%(nosuchfield)s")


def test_worker_json_logs_every_line_parses(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    q = Queue("jsonlogs", connection=sync_redis)
    q.enqueue(jobs.ledger, str(tmp_path / "ledger"), "ok")
    q.enqueue("compat.jobs.boom", "kaboom first line\nkaboom second line")
    with run_asyncjobs_worker(redis_url, "jsonlogs", "--burst", "--log-format", "json") as worker:
        assert worker.wait(60) == 0, worker.output()
        lines = [ln for ln in worker.output().splitlines() if ln.strip()]
    assert len(lines) >= 4
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    (failed,) = [p for p in parsed if p["level"] == "ERROR"]
    # Issue 22: the exception's type and message on the line, the whole traceback in its fields.
    assert failed["message"].endswith("failed: ValueError: kaboom first line"), failed
    assert failed["exc_type"] == "ValueError" and failed["exc_message"] == "kaboom first line\nkaboom second line"
    assert failed["exc_info"].startswith("Traceback (most recent call last):"), failed
    assert 'in boom\n    raise ValueError(message)' in failed["exc_info"], failed


def test_failed_job_text_log_has_type_message_and_traceback(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """As stock ``rq worker``: the traceback follows the failed-job line at ERROR; with
    ``--disable-job-desc-logging`` the job's arguments stay out of the log all the same."""
    job = Queue("textlogs", connection=sync_redis).enqueue("compat.jobs.boom", "kaput")
    with run_asyncjobs_worker(redis_url, "textlogs", "--burst", "--disable-job-desc-logging") as worker:
        assert worker.wait(60) == 0, worker.output()
        out = worker.output()
    head = f"ERROR asyncjobs.worker: job {job.id} failed: ValueError: kaput\nTraceback (most recent call last):\n"
    assert head in out, out
    assert "in boom\n    raise ValueError(message)\nValueError: kaput\n" in out, out
    assert "boom('kaput')" not in out and "compat.jobs.boom(" not in out


def test_bad_log_format_is_a_clear_error(redis_url: str) -> None:
    with run_asyncjobs_worker(redis_url, "q", "--burst", "--log-format", "xml") as worker:
        assert worker.wait(30) == 2
        assert "invalid --log-format 'xml'" in worker.output()


def test_pid_file_written_and_removed(redis_url: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    with run_asyncjobs_worker(redis_url, "q", "--pid", str(pid_file)) as worker:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() == str(worker.pid), 30,
                 message=lambda: f"pid file with {worker.pid}; output:\n{worker.output()}")
        wait_for(lambda: " started: " in worker.output(), 30, message="worker started (signal handlers in place)")
        worker.stop()
        assert worker.wait(30) == 0, worker.output()
    assert not pid_file.exists()


def test_dict_config_from_settings_module(redis_url: str, tmp_path: Path) -> None:
    log_file = tmp_path / "worker.log"
    (tmp_path / "logsettings.py").write_text(textwrap.dedent(f"""
        REDIS_URL = {redis_url!r}
        DICT_CONFIG = {{
            "version": 1,
            "formatters": {{"f": {{"format": "DICT|%(name)s|%(message)s"}}}},
            "handlers": {{"file": {{"class": "logging.FileHandler", "filename": {str(log_file)!r},
                                   "formatter": "f"}}}},
            "root": {{"handlers": ["file"], "level": "INFO"}},
        }}
    """))
    argv = [*asyncjobs_worker_command(), "-c", "logsettings", "--burst", "dictq"]
    with WorkerProcess(argv, env={"PYTHONPATH": f"{tmp_path}:{Path.cwd()}"}) as worker:
        assert worker.wait(60) == 0, worker.output()
        assert "started" not in worker.output()  # went to the configured handler instead
    text = log_file.read_text()
    assert "DICT|asyncjobs.worker|worker " in text and "started" in text


def test_rq_worker_with_asyncjobs_class_json_logs(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    Queue("rqjson", connection=sync_redis).enqueue(jobs.ledger, str(tmp_path / "ledger"), "ok")
    with run_rq_worker_with_asyncjobs_class(redis_url, "rqjson", "--burst",
                                            env={"ASYNCJOBS_LOG_FORMAT": "json"}) as worker:
        assert worker.wait(60) == 0, worker.output()
        lines = [ln for ln in worker.output().splitlines() if ln.strip()]
    ours = [json.loads(ln) for ln in lines]  # every line parses
    assert any(p["logger"] == "asyncjobs.worker" and "started" in p["message"] for p in ours)
    assert (tmp_path / "ledger").read_text().split() == ["ok"]


def test_every_job_line_carries_the_job_fields(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    """started / OK / failed / retried / stopped lines of a real worker: job_id, queue, func, status,
    worker, and duration_ms on the lines that end a job, as keys of the JSON line."""
    from rq import Retry
    from rq.command import send_stop_job_command

    q = Queue("jobfields", connection=sync_redis)
    ok = q.enqueue(jobs.ledger, str(tmp_path / "ledger"), "ok")
    bad = q.enqueue("compat.jobs.boom", "kaput", retry=Retry(max=1))
    long = q.enqueue(jobs.sync_ledger, str(tmp_path / "ledger"), "long", 60)
    name = "json-fields-worker"
    with run_asyncjobs_worker(redis_url, "jobfields", "--log-format", "json", "--name", name) as worker:
        def ended() -> bool:
            if long.get_status(refresh=True) == "started":
                send_stop_job_command(sync_redis, long.id)  # resent until the worker has subscribed
            return all(j.get_status(refresh=True) in ("finished", "failed", "stopped") for j in (ok, bad, long))

        wait_for(ended, 60, message=lambda: f"jobs ended; output:\n{worker.output()}")
        worker.stop()
        assert worker.wait(30) == 0, worker.output()
        lines = [json.loads(ln) for ln in worker.output().splitlines() if ln.strip()]
    job_lines = [p for p in lines if "job_id" in p]
    by_job: dict[str, list[tuple[str, dict[str, object]]]] = {}
    for p in job_lines:
        assert {"job_id", "queue", "func", "status", "worker"} <= set(p), p
        assert p["queue"] == "jobfields" and p["worker"] == name, p
        if p["status"] != "started":
            assert isinstance(p["duration_ms"], (int, float)) and p["duration_ms"] >= 0, p
        by_job.setdefault(str(p["job_id"]), []).append((str(p["status"]), p))
    assert [s for s, _ in by_job[ok.id]] == ["started", "finished"]
    assert by_job[ok.id][0][1]["func"] == ok.func_name
    assert [s for s, _ in by_job[bad.id]] == ["started", "retried", "started", "failed"]
    assert by_job[bad.id][-1][1]["level"] == "ERROR" and by_job[bad.id][-1][1]["func"] == "compat.jobs.boom"
    assert [s for s, _ in by_job[long.id]] == ["started", "stopped"]
