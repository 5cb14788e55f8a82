"""Issue 10 item 3: secrets never reach logs, exceptions, reprs or stored job results.

URLs may carry secrets in three places: the password in ``user:password@``, a
query parameter (``?password=``, ``?token=``) and, for webhooks, the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job

from asyncjobs.delivery.settings import Settings, SettingsError, load_settings
from asyncjobs.delivery.sms import HttpSmsProvider, SmsProviderConfig
from asyncjobs.redact import redact_url
from asyncjobs.tasks import send_sms
from asyncjobs.worker.config import WorkerConfig
from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import free_port
from tests.testsupport.workers import run_asyncjobs_worker

SECRETS = ("s3cret-q", "s3cret-p", "s3cret-u")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> Iterator[pytest.MonkeyPatch]:
    prefixes = ("SMTP_", "SMS_", "EMAIL_", "REDIS_URL", "RATE_LIMIT", "DELIVERY_", "DATABASE_URL", "OUTBOX_")
    for key in list(os.environ):
        if key.upper().startswith(prefixes):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0?password=s3cret-q", "redis://localhost:6379/0?password=***"),
        ("redis://h:6379/0?db=1&password=s3cret-q&ssl=false", "redis://h:6379/0?db=1&password=***&ssl=false"),
        ("unix:///run/redis.sock?db=0&password=s3cret-q", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://:s3cret-u@h/0?username=app&password=s3cret-q", "redis://:***@h/0?username=app&password=***"),
        ("https://hooks.example/send?token=s3cret-q&to=x", "https://hooks.example/send?token=***&to=x"),
        ("https://hooks.example/send?api_key=s3cret-q&access_token=s3cret-p",
         "https://hooks.example/send?api_key=***&access_token=***"),
        ("postgresql://app@db/app?sslmode=require&PASSWORD=s3cret-q", "postgresql://app@db/app?sslmode=require&PASSWORD=***"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_redact_url_query_strings(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_origin_drops_everything_that_may_carry_a_token() -> None:
    from asyncjobs.redact import url_origin

    url = "https://bot:s3cret-u@hooks.example:8443/T0/s3cret-p/send?token=s3cret-q#frag"
    assert url_origin(url) == "https://hooks.example:8443"
    assert url_origin("not a url") == "***"


def test_reprs_hide_query_passwords() -> None:
    config = WorkerConfig(queues=("default",), redis_url="redis://h:6379/0?password=s3cret-q")
    s = Settings(
        redis_url="redis://h/0?password=s3cret-q",
        database_url="postgresql+asyncpg://u@h/db?password=s3cret-q",
        sms_base_url="https://hooks.example/T0/s3cret-p?token=s3cret-q",
    )
    provider = HttpSmsProvider(SmsProviderConfig(base_url="https://u:s3cret-u@hooks.example/T0/s3cret-p?token=s3cret-q"))
    text = repr(config) + repr(s) + str(s) + repr(provider) + repr(provider.config)
    assert not [secret for secret in SECRETS if secret in text], text


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("REDIS_URL", "http://:s3cret-u@cache.internal:6379/0"),
        ("REDIS_URL", "http://cache.internal:6379/0?password=s3cret-q"),
        ("DATABASE_URL", ""),  # placeholder row replaced below
        ("SMS_BASE_URL", "ftp://hooks.example/T0/s3cret-p?token=s3cret-q"),
    ],
)
def test_settings_errors_do_not_echo_url_secrets(clean_env: pytest.MonkeyPatch, var: str, value: str) -> None:
    if var == "DATABASE_URL":
        # an unrelated error while a secret-bearing URL is set: only the bad variable is echoed
        clean_env.setenv("DATABASE_URL", "postgresql+asyncpg://app:s3cret-u@db/app")
        clean_env.setenv("SMTP_PORT", "not-a-port")
    else:
        clean_env.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert not [secret for secret in SECRETS if secret in message], message
    assert (var if var != "DATABASE_URL" else "SMTP_PORT") in message


def _worker_env(base_url: str) -> dict[str, str]:
    return {
        "SMS_PROVIDER": "http",
        "SMS_BASE_URL": base_url,
        "SMS_API_SECRET": HttpTestServer().bearer_token,
        "SMS_HTTP_TRANSPORT": "aiohttp",
        "DELIVERY_MAX_ATTEMPTS": "2",
        "DELIVERY_BACKOFF_BASE": "0",
        "DELIVERY_BACKOFF_MAX": "0",
        "EMAIL_BACKEND": "console",
    }


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_sms_webhook_url_token_stays_out_of_logs_and_results(
    transport: str, redis_url: str, sync_redis: redis.Redis
) -> None:
    q = Queue("sms", connection=sync_redis)
    with HttpTestServer() as server:
        delivered = q.enqueue(send_sms, "+353871234567", "hello")
        env = _worker_env(f"{server.webhook_url}?token=s3cret-q") | {"SMS_HTTP_TRANSPORT": transport}
        with run_asyncjobs_worker(redis_url, "sms", "--burst", env=env) as proc:
            assert proc.wait(60) == 0, proc.output()
            ok_log = proc.output()
        assert len(server.delivered) == 1

    # the provider is unreachable: the transport error must not carry the URL's token
    dead = f"http://127.0.0.1:{free_port()}/hooks/s3cret-p?token=s3cret-q"
    failed = q.enqueue(send_sms, "+353871234567", "hello")
    env = _worker_env(dead) | {"SMS_HTTP_TRANSPORT": transport}
    with run_asyncjobs_worker(redis_url, "sms", "--burst", env=env) as proc:
        assert proc.wait(60) == 0, proc.output()
        failed_log = proc.output()

    assert Job.fetch(delivered.id, connection=sync_redis).get_status() == "finished"
    job = Job.fetch(failed.id, connection=sync_redis)
    assert job.get_status() == "failed"
    stored = job.latest_result().exc_string + repr(Job.fetch(delivered.id, connection=sync_redis).return_value())
    assert "127.0.0.1" in stored  # the failure still says where it tried to connect
    everything = ok_log + failed_log + stored
    assert not [secret for secret in SECRETS if secret in everything], everything
