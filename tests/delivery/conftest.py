"""Fixtures for delivery tests: real SMTP / HTTP servers, TLS material from trustme."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import SmtpTestServer


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No asyncjobs-relevant variables from the outer environment, and no stray .env."""
    import os

    prefixes = ("SMTP_", "SMS_", "EMAIL_", "REDIS_URL", "RATE_LIMIT", "DELIVERY_", "DATABASE_URL", "OUTBOX_")
    for key in list(os.environ):
        name = key.upper().removeprefix("ASYNCJOBS_")
        if name.startswith(prefixes) or name == "ENV_FILE":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture
def http_server() -> Iterator[HttpTestServer]:
    with HttpTestServer() as server:
        yield server


@pytest.fixture
async def task_env(
    clean_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer, http_server: HttpTestServer
) -> AsyncIterator[pytest.MonkeyPatch]:
    """Settings pointing the tasks at the in-process SMTP and Twilio-shaped servers."""
    from asyncjobs.delivery import runtime
    from asyncjobs.delivery.settings import get_settings

    for key, value in task_env_vars(smtp_server, http_server).items():
        clean_env.setenv(key, value)
    get_settings.cache_clear()
    yield clean_env
    await runtime.aclose_all()
    get_settings.cache_clear()


def task_env_vars(smtp_server: SmtpTestServer, http_server: HttpTestServer) -> dict[str, str]:
    return {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_TLS": "none",
        "SMTP_TIMEOUT": "10",
        "SMTP_POOL_SIZE": "4",
        "SMTP_FROM_EMAIL": "noreply@example.com",
        "SMTP_FROM_NAME": "Example App",
        "SMS_PROVIDER": "twilio",
        "SMS_API_KEY": http_server.account_sid,
        "SMS_API_SECRET": http_server.auth_token,
        "SMS_FROM_NUMBER": "+15005550006",
        "SMS_BASE_URL": http_server.url,
        "DELIVERY_MAX_ATTEMPTS": "4",
        "DELIVERY_BACKOFF_BASE": "0",
        "DELIVERY_BACKOFF_MAX": "0",
    }
