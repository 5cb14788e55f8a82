"""Issue 10 item 4: SMTP AUTH is never sent in clear text unless explicitly allowed.

With ``SMTP_TLS=none`` the AUTH exchange (base64 of the password) would cross
the network unencrypted.  It is refused, naming ``SMTP_TLS`` and
``SMTP_ALLOW_INSECURE_AUTH``; a local relay can opt in with the latter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job

from asyncjobs.delivery.email import EmailMessage, SmtpConfig, SmtpEmailSender
from asyncjobs.delivery.errors import DeliveryConfigurationError
from asyncjobs.delivery.settings import SettingsError, load_settings
from asyncjobs.tasks import send_email
from tests.testsupport.smtp_server import SmtpTestServer
from tests.testsupport.workers import run_asyncjobs_worker

PASSWORD = "s3cret-smtp-pw"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> Iterator[pytest.MonkeyPatch]:
    prefixes = ("SMTP_", "SMS_", "EMAIL_", "REDIS_URL", "RATE_LIMIT", "DELIVERY_", "DATABASE_URL", "OUTBOX_")
    for key in list(os.environ):
        if key.upper().startswith(prefixes):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


@pytest.fixture
def plain_auth_server() -> Iterator[SmtpTestServer]:
    """A server that offers AUTH without TLS (as a misconfigured or hostile relay would)."""
    with SmtpTestServer(tls="none", users={"mailer": PASSWORD}) as server:
        yield server


def _env(server: SmtpTestServer, **extra: str) -> dict[str, str]:
    return {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": server.host,
        "SMTP_PORT": str(server.port),
        "SMTP_TLS": "none",
        "SMTP_USER": "mailer",
        "SMTP_PASSWORD": PASSWORD,
        "SMTP_FROM_EMAIL": "noreply@example.com",
        "DELIVERY_MAX_ATTEMPTS": "1",
        **extra,
    }


def test_worker_refuses_clear_text_auth(
    plain_auth_server: SmtpTestServer, redis_url: str, sync_redis: redis.Redis
) -> None:
    """Refused at start-up (issue 22: a worker that may run the delivery jobs checks their settings),
    before any job is taken or any connection to the server is made."""
    q = Queue("emails", connection=sync_redis)
    job = q.enqueue(send_email, "bob@example.com", "Hello", "Body")
    with run_asyncjobs_worker(redis_url, "emails", "--burst", env=_env(plain_auth_server)) as proc:
        assert proc.wait(60) == 2, proc.output()
        log = proc.output()

    assert "SMTP_TLS" in log and "SMTP_ALLOW_INSECURE_AUTH" in log, log
    assert Job.fetch(job.id, connection=sync_redis).get_status() == "queued"
    assert plain_auth_server.connections == 0 and plain_auth_server.state.auth_logins == []
    assert plain_auth_server.messages == []
    assert PASSWORD not in log


def test_worker_allows_clear_text_auth_when_told_to(
    plain_auth_server: SmtpTestServer, redis_url: str, sync_redis: redis.Redis
) -> None:
    q = Queue("emails", connection=sync_redis)
    job = q.enqueue(send_email, "bob@example.com", "Hello", "Body")
    env = _env(plain_auth_server, SMTP_ALLOW_INSECURE_AUTH="true")
    with run_asyncjobs_worker(redis_url, "emails", "--burst", env=env) as proc:
        assert proc.wait(60) == 0, proc.output()
    assert Job.fetch(job.id, connection=sync_redis).get_status() == "finished"
    assert plain_auth_server.state.auth_logins == ["mailer"]
    assert len(plain_auth_server.messages) == 1


async def test_sender_refuses_auth_without_tls(plain_auth_server: SmtpTestServer) -> None:
    base = {"host": plain_auth_server.host, "port": plain_auth_server.port, "username": "mailer", "password": PASSWORD}
    with pytest.raises(DeliveryConfigurationError) as info:
        SmtpConfig(**base, tls="none")  # type: ignore[arg-type]
    assert "SMTP_TLS" in str(info.value) and "SMTP_ALLOW_INSECURE_AUTH" in str(info.value)
    assert PASSWORD not in str(info.value)

    sender = SmtpEmailSender(SmtpConfig(**base, tls="none", allow_insecure_auth=True))  # type: ignore[arg-type]
    try:
        await sender.send(EmailMessage(to=("bob@example.com",), subject="s", body="b", from_email="a@example.com"))
    finally:
        await sender.aclose()
    assert plain_auth_server.state.auth_logins == ["mailer"]


def test_settings_refuse_auth_without_tls(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SMTP_HOST", "relay.example")
    clean_env.setenv("SMTP_TLS", "none")
    clean_env.setenv("SMTP_USER", "mailer")
    clean_env.setenv("SMTP_PASSWORD", PASSWORD)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "SMTP_TLS" in message and "SMTP_ALLOW_INSECURE_AUTH" in message and PASSWORD not in message
    clean_env.setenv("SMTP_ALLOW_INSECURE_AUTH", "true")
    assert load_settings().smtp_allow_insecure_auth is True
    # no AUTH at all (a trusted relay on the same host): nothing to protect, no opt-in needed
    clean_env.delenv("SMTP_USER")
    clean_env.delenv("SMTP_PASSWORD")
    clean_env.delenv("SMTP_ALLOW_INSECURE_AUTH")
    assert load_settings().smtp_tls == "none"
