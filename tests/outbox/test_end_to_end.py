"""The whole flow as users run it: helpers -> RQ queue -> asyncjobs-worker -> SMTP sink; the CLI."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue

from asyncjobs.delivery import runtime
from asyncjobs.delivery.settings import reload_settings
from asyncjobs.outbox import notifications
from asyncjobs.outbox import repository as repo
from asyncjobs.outbox.engine import make_engine, make_session_factory
from tests.testsupport.smtp_server import SmtpTestServer
from tests.testsupport.workers import BIN_DIR, PROJECT_ROOT, WorkerProcess, run_asyncjobs_worker

OUTBOX_CLI = [str(BIN_DIR / "asyncjobs-outbox")] if (BIN_DIR / "asyncjobs-outbox").exists() else [
    sys.executable, "-m", "asyncjobs.cli.outbox"
]


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture
def env(sqlite_url: str, redis_url: str, smtp_sink: SmtpTestServer) -> dict[str, str]:
    return {
        "DATABASE_URL": sqlite_url,
        "REDIS_URL": redis_url,
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": smtp_sink.host,
        "SMTP_PORT": str(smtp_sink.port),
        "SMTP_TLS": "none",
        "SMTP_FROM_EMAIL": "noreply@example.com",
        "SMS_PROVIDER": "console",
        "OUTBOX_POLL_INTERVAL": "0.1",
    }


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[None]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reload_settings()
    yield
    monkeypatch.undo()
    reload_settings()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*OUTBOX_CLI, *args], cwd=PROJECT_ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


async def test_create_tables_cli_then_enqueue_worker_delivers_over_smtp(
    env: dict[str, str], app_env: None, sqlite_url: str, redis_url: str, smtp_sink: SmtpTestServer
) -> None:
    created = run_cli("create-tables", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    assert run_cli("create-tables", env=env).returncode == 0  # idempotent

    engine = make_engine(sqlite_url)
    try:
        sf = make_session_factory(engine)
        async with sf() as session, session.begin():
            nid = await notifications.enqueue_user_invitation(
                session, email="bob@example.com", inviter="Ann <b>", accept_url="https://app.example/i?x=1&y=2"
            )
        assert Queue("emails", connection=redis.Redis.from_url(redis_url)).count == 1
        with run_asyncjobs_worker(redis_url, "emails", "--burst", env=env) as worker:
            rc = await asyncio.to_thread(worker.wait, 60)
            assert rc == 0, worker.output()
        [msg] = smtp_sink.messages
        parsed = msg.parsed()
        assert msg.rcpt_tos == ["bob@example.com"] and parsed["Subject"] == "Ann <b> invited you"
        html = parsed.get_body(("html",))
        assert html is not None and "Ann &lt;b&gt;" in html.get_content()
        async with sf() as s:
            row = await repo.get_notification(s, nid)
        assert row is not None and row.status == "sent"
    finally:
        await engine.dispose()
        await notifications.dispose_engines()
        await runtime.aclose_all()


async def test_run_cli_delivers_directly_and_stops_on_sigterm(
    env: dict[str, str], app_env: None, sqlite_url: str, smtp_sink: SmtpTestServer
) -> None:
    assert run_cli("create-tables", env=env).returncode == 0
    engine = make_engine(sqlite_url)
    try:
        sf = make_session_factory(engine)
        async with sf() as s, s.begin():  # rows nobody enqueued (e.g. written while Redis was down)
            for i in range(3):
                await repo.insert_notification(
                    s, kind="2fa_code", channel="email", recipient=f"u{i}@example.com", payload={"code": "9"}
                )
        with WorkerProcess([*OUTBOX_CLI, "run", "--deliver-directly", "--interval", "0.1"], env=env) as proc:
            await asyncio.to_thread(smtp_sink.wait_for_messages, 3, 30)
            deadline = time.monotonic() + 30
            while "processed 3 due notification(s) directly" not in proc.output():
                assert time.monotonic() < deadline, proc.output()
                await asyncio.sleep(0.05)
            proc.signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 30)
            assert rc == 0, proc.output()
            assert "outbox processor stopped" in proc.output()
        async with sf() as s:
            assert await repo.count_by_status(s) == {"sent": 3}
        assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == [f"u{i}@example.com" for i in range(3)]
    finally:
        await engine.dispose()


async def test_run_once_enqueues_due_rows(env: dict[str, str], sqlite_url: str, redis_url: str) -> None:
    assert run_cli("create-tables", env=env).returncode == 0
    engine = make_engine(sqlite_url)
    try:
        sf = make_session_factory(engine)
        async with sf() as s, s.begin():
            for i in range(5):
                await repo.insert_notification(
                    s, kind="2fa_code", channel="sms" if i % 2 else "email",
                    recipient="+353871234567" if i % 2 else "a@example.com", payload={"code": "1"},
                )
        result = run_cli("run", "--once", "--batch-size", "2", env=env)
        assert result.returncode == 0, result.stderr
        conn = redis.Redis.from_url(redis_url)
        assert (Queue("emails", connection=conn).count, Queue("sms", connection=conn).count) == (3, 2)
        again = run_cli("run", "--once", env=env)  # already dispatched: nothing new
        assert again.returncode == 0
        assert Queue("emails", connection=conn).count == 3
    finally:
        await engine.dispose()


def test_cli_rejects_bad_arguments(env: dict[str, str]) -> None:
    bad = run_cli("run", "--batch-size", "0", env=env)
    assert bad.returncode == 2 and "positive integer" in bad.stderr
    bad_url = run_cli("create-tables", "--database-url", "sqlite:///x.db", env=env)
    assert bad_url.returncode == 1 and "sqlite+aiosqlite" in bad_url.stderr


async def test_smtp_rejection_ends_failed_with_reason_and_transient_is_retried(
    app_env: None, sqlite_url: str, smtp_sink: SmtpTestServer
) -> None:
    engine = make_engine(sqlite_url)
    await repo.create_all(engine)
    smtp_sink.state.reject_rcpt["nobody@example.com"] = "550 5.1.1 user unknown"
    smtp_sink.state.data_replies[1] = "451 4.3.0 try again later"
    try:
        sf = make_session_factory(engine)
        async with sf() as s, s.begin():
            bad = (await repo.insert_notification(
                s, kind="2fa_code", channel="email", recipient="nobody@example.com", payload={"code": "1"}
            )).id
            flaky = (await repo.insert_notification(
                s, kind="2fa_code", channel="email", recipient="ok@example.com", payload={"code": "2"}
            )).id
        assert await notifications.process_outbox_notification(bad) == "failed"
        assert await notifications.process_outbox_notification(flaky) == "retry"
        async with sf() as s:
            bad_row = await repo.get_notification(s, bad)
            flaky_row = await repo.get_notification(s, flaky)
        assert bad_row is not None and bad_row.status == "failed"
        assert bad_row.last_error is not None and "550" in bad_row.last_error
        assert flaky_row is not None and flaky_row.status == "pending" and flaky_row.attempts == 1
        assert flaky_row.last_error is not None and "451" in flaky_row.last_error
        assert smtp_sink.messages == []
    finally:
        await engine.dispose()
        await notifications.dispose_engines()
        await runtime.aclose_all()
