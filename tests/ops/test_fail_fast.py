"""Issue 22, the operator's first hour: bad configuration stops start-up with one line that names the
value and the fix, never a traceback, never "Redis unavailable ... retrying" for a refusal that
retrying cannot cure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.testsupport.workers import (
    PROJECT_ROOT,
    run_asyncjobs_worker,
    run_rq_worker_with_asyncjobs_class,
)


def _one_line_error(output: str, *needles: str) -> None:
    assert "Traceback" not in output, output
    assert "retrying" not in output, output
    assert any(all(n in ln for n in needles) for ln in output.splitlines()), output


@pytest.mark.parametrize(
    ("path", "needles"),
    [
        ("/99", ("DB index is out of range", "/99")),  # Redis has 16 databases by default
        ("nobody:wrong-secret@", ("invalid username-password pair",)),  # an ACL user this Redis does not have
    ],
    ids=["db-out-of-range", "auth-refused"],
)
def test_redis_refusing_the_configuration_stops_start_up(redis_url: str, path: str, needles: tuple[str, ...]) -> None:
    url = redis_url.replace("://", "://" + path) if path.endswith("@") else redis_url.rsplit("/", 1)[0] + path
    with run_asyncjobs_worker(url, "q", "--burst") as worker:
        assert worker.wait(60) == 2, worker.output()
        out = worker.output()
    _one_line_error(out, *needles)
    assert "wrong-secret" not in out


def test_malformed_values_are_one_line_errors(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    bad_url = redis_url.replace(f":{port}/", ":notaport/")
    with run_asyncjobs_worker(bad_url, "q", "--burst") as worker:
        assert worker.wait(60) == 2, worker.output()
        _one_line_error(worker.output(), "notaport", "redis://")
    with run_asyncjobs_worker(redis_url, "q", "--burst", "--exception-handler", "nosuch.handler") as worker:
        assert worker.wait(60) == 2, worker.output()
        _one_line_error(worker.output(), "--exception-handler 'nosuch.handler'")
    with run_rq_worker_with_asyncjobs_class(redis_url, "q", "--burst", env={"ASYNCJOBS_CONCURRENCY": "abc"}) as worker:
        assert worker.wait(60) == 2, worker.output()
        _one_line_error(worker.output(), "ASYNCJOBS_CONCURRENCY", "'abc'")


def test_bad_delivery_settings_stop_a_worker_that_would_run_delivery_jobs(redis_url: str) -> None:
    env = {"SMTP_PORT": "abc", "SMS_FROM_NUMBER": "+15550001234"}
    with run_asyncjobs_worker(redis_url, "emails", "--burst", env=env) as worker:
        assert worker.wait(60) == 2, worker.output()
        _one_line_error(worker.output(), "SMTP_PORT='abc'")
    # A worker that cannot run the delivery jobs (--allow-module without asyncjobs) does not read them.
    with run_asyncjobs_worker(redis_url, "emails", "--burst", "--allow-module", "myapp", env=env) as worker:
        assert worker.wait(60) == 0, worker.output()


def test_heroku_style_postgres_url_is_accepted(pg_url: str) -> None:
    """``DATABASE_URL=postgres://...`` (Heroku, Django) reaches PostgreSQL through the async driver."""
    plain = "postgres://" + pg_url.split("://", 1)[1]
    env = {**os.environ, "DATABASE_URL": plain}
    result = subprocess.run(
        [sys.executable, "-m", "asyncjobs.cli.outbox", "create-tables"], cwd=str(PROJECT_ROOT), env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_configuration_error_in_a_child_stops_the_pool(redis_url: str) -> None:
    """Under --processes a child refused by Redis exits 2; the supervisor stops the pool with status 2
    instead of restarting children that can never start."""
    url = redis_url.rsplit("/", 1)[0] + "/99"
    with run_asyncjobs_worker(url, "q", "--processes", "2") as worker:
        assert worker.wait(60) == 2, worker.output()
        out = worker.output()
    _one_line_error(out, "DB index is out of range")
    assert "restarting" not in out, out


def test_a_burst_worker_gives_up_on_an_unreachable_redis() -> None:
    from tests.testsupport.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with run_asyncjobs_worker(url, "q", "--burst", "--burst-redis-wait", "1") as worker:
        assert worker.wait(60) == 1, worker.output()
        out = worker.output()
    assert "Traceback" not in out, out
    assert any("unreachable" in ln and "--burst-redis-wait 1" in ln for ln in out.splitlines()), out


def test_check_settings_runs_the_start_up_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """``asyncjobs-worker check --settings``: the check a worker makes at start-up, without Redis."""
    from asyncjobs.cli.worker import main

    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("SMTP_PORT", "abc")
    assert main(["check", "--settings"]) == 2
    assert "SMTP_PORT='abc'" in capsys.readouterr().err
    monkeypatch.setenv("SMTP_PORT", "2525")
    assert main(["check", "--settings"]) == 0
    assert "settings are valid" in capsys.readouterr().out
