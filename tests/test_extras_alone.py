"""Each extra works installed alone, as the README promises (issue 16).

One wheel is built for the module; each test installs it with ONE extra into a fresh virtual
environment (no PYTHONPATH, so the wheel itself is what runs), pinned to the versions of the
committed lock (``requirements/dev.lock``, as constraints), and runs a real job of that kind through
that environment's ``asyncjobs-worker`` against real servers: an SMTP server for ``[email]``, an HTTP
SMS provider for ``[sms]``, a SQLite outbox for ``[outbox]``, a Prometheus scrape for ``[metrics]``.
It also checks what the extra must NOT pull in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import JobStatus

from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.packaging import lock_constraints
from tests.testsupport.smtp_server import SmtpTestServer, free_port
from tests.testsupport.workers import PROJECT_ROOT, WorkerProcess, wait_for

UV = Path(sys.executable).with_name("uv")

pytestmark = pytest.mark.skipif(not UV.exists(), reason="needs uv from the dev set (make install)")


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def _clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without PYTHONPATH or any delivery/outbox setting."""
    prefixes = ("SMTP_", "SMS_", "EMAIL_", "OUTBOX_", "DATABASE_URL", "REDIS_URL", "RATE_LIMIT", "ASYNCJOBS_")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(prefixes)}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out), str(PROJECT_ROOT)])
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lock_constraints(tmp_path_factory.mktemp("constraints"))


def _venv_with(tmp_path: Path, wheel: Path, constraints: Path, extra: str) -> Path:
    env_dir = tmp_path / f"venv-{extra}"
    _run([str(UV), "venv", "--quiet", "--python", sys.executable, str(env_dir)], env=_clean_env())
    _run([str(UV), "pip", "install", "--quiet", "--python", str(env_dir / "bin" / "python"),
          f"{wheel}[{extra}]", "-c", str(constraints)], env=_clean_env())
    return env_dir


def _importable(env_dir: Path, modules: tuple[str, ...], cwd: Path) -> list[str]:
    probe = _run([str(env_dir / "bin" / "python"), "-c",
                  f"import importlib.util, json; print(json.dumps([m for m in {modules!r} if importlib.util.find_spec(m)]))"],
                 cwd=cwd, env=_clean_env())
    found: list[str] = json.loads(probe.stdout)
    return found


def _burst(env_dir: Path, redis_url: str, queue: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return _run([str(env_dir / "bin" / "asyncjobs-worker"), "-u", redis_url, "--burst", queue],
                cwd=cwd, env=_clean_env(**{"REDIS_URL": redis_url, **env}))


@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory: no checkout on sys.path, no ./.env."""
    path = tmp_path / "cwd"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_email_alone_sends_through_smtp(
    tmp_path: Path, work_dir: Path, wheel: Path, constraints: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    env_dir = _venv_with(tmp_path, wheel, constraints, "email")
    assert _importable(env_dir, ("httpx", "aiohttp", "sqlalchemy", "prometheus_client"), work_dir) == []
    job = Queue("emails", connection=sync_redis).enqueue(
        "asyncjobs.tasks.send_email", "bob@example.com", "Hello", "Sent by [email] alone"
    )
    with SmtpTestServer() as smtp:
        worker = _burst(env_dir, redis_url, "emails", work_dir, EMAIL_BACKEND="smtp", SMTP_HOST=smtp.host,
                        SMTP_PORT=str(smtp.port), SMTP_TLS="none", SMTP_FROM_EMAIL="app@example.com")
        (message,) = smtp.wait_for_messages(1)
    assert job.get_status(refresh=True) == JobStatus.FINISHED, worker.stdout + worker.stderr
    assert message.parsed()["Subject"] == "Hello" and message.rcpt_tos == ["bob@example.com"]


def test_sms_alone_sends_through_the_provider(
    tmp_path: Path, work_dir: Path, wheel: Path, constraints: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    env_dir = _venv_with(tmp_path, wheel, constraints, "sms")
    assert _importable(env_dir, ("aiosmtplib", "sqlalchemy", "prometheus_client"), work_dir) == []
    job = Queue("sms", connection=sync_redis).enqueue("asyncjobs.tasks.send_sms", "+15005550001", "code 1234")
    with HttpTestServer() as provider:
        worker = _burst(env_dir, redis_url, "sms", work_dir, SMS_PROVIDER="twilio", SMS_API_KEY=provider.account_sid,
                        SMS_API_SECRET=provider.auth_token, SMS_FROM_NUMBER="+15005550006", SMS_BASE_URL=provider.url)
        (request,) = provider.wait_for_delivered(1)
    assert job.get_status(refresh=True) == JobStatus.FINISHED, worker.stdout + worker.stderr
    assert request.form["To"] == "+15005550001"


def test_outbox_alone_delivers_a_committed_notification(
    tmp_path: Path, work_dir: Path, wheel: Path, constraints: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    env_dir = _venv_with(tmp_path, wheel, constraints, "outbox")
    assert _importable(env_dir, ("aiosmtplib", "httpx", "aiohttp", "prometheus_client"), work_dir) == []
    db = f"sqlite+aiosqlite:///{work_dir / 'app.db'}"
    settings = {"DATABASE_URL": db, "EMAIL_BACKEND": "console", "SMS_PROVIDER": "console", "REDIS_URL": redis_url}
    write = textwrap.dedent("""
        import asyncio
        from asyncjobs.notifications import enqueue_2fa_notification, get_engine, get_session_factory
        from asyncjobs.outbox import create_all

        async def main():
            await create_all(get_engine())
            async with get_session_factory()() as session, session.begin():
                await enqueue_2fa_notification(session, user_id=7, recipient="bob@example.com",
                                               code="482913", channel="email")
        asyncio.run(main())
    """)
    _run([str(env_dir / "bin" / "python"), "-c", write], cwd=work_dir, env=_clean_env(**settings))
    assert Queue("emails", connection=sync_redis).count == 1
    worker = _burst(env_dir, redis_url, "emails", work_dir, **settings)
    read = textwrap.dedent("""
        import asyncio, sqlalchemy
        from asyncjobs.notifications import get_engine

        async def main():
            async with get_engine().connect() as conn:
                rows = (await conn.execute(sqlalchemy.text("select status from outbox_notifications"))).all()
            print([r[0] for r in rows])
        asyncio.run(main())
    """)
    status = _run([str(env_dir / "bin" / "python"), "-c", read], cwd=work_dir, env=_clean_env(**settings))
    assert status.stdout.strip() == "['sent']", worker.stdout + worker.stderr


def test_metrics_alone_exports_a_finished_job(
    tmp_path: Path, work_dir: Path, wheel: Path, constraints: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    env_dir = _venv_with(tmp_path, wheel, constraints, "metrics")
    assert _importable(env_dir, ("aiosmtplib", "httpx", "sqlalchemy", "pydantic"), work_dir) == []
    port = free_port()
    Queue("default", connection=sync_redis).enqueue("operator.add", 2, 3)
    argv = [str(env_dir / "bin" / "asyncjobs-worker"), "-u", redis_url, "--metrics-port", str(port), "default"]
    with WorkerProcess(argv, env=_clean_env(), cwd=work_dir) as worker:

        def finished() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                return False
            return bool(re.search(r'^asyncjobs_jobs_total\{[^}]*status="finished"[^}]*\} 1\.0$', text, re.M))

        wait_for(finished, timeout=60, message=lambda: f"a finished job in the metrics; worker output:\n{worker.output()}")
        worker.stop()
        assert worker.wait() == 0, worker.output()
