from __future__ import annotations

import asyncio
import json
import logging

import pytest

from asyncjobs.delivery import runtime
from asyncjobs.delivery.errors import (
    InvalidAddressError,
    InvalidPhoneNumberError,
    PermanentDeliveryError,
    RecipientRejectedError,
)
from asyncjobs.delivery.retry import RetriesExhaustedError
from asyncjobs.delivery.settings import get_settings
from asyncjobs.tasks import send_email, send_sms
from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import SmtpTestServer


async def test_send_email_delivers_once(task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer) -> None:
    result = await send_email(
        ["bob@example.com", "amy@example.com"],
        "Hi Zoë",
        "Body",
        html_body="<p>Body</p>",
        reply_to="help@example.com",
        cc="carol@example.com",
        bcc=["dave@example.com"],
        headers={"X-Campaign": "welcome"},
    )
    json.dumps(result)
    assert result["attempts"] == 1 and result["backend"] == "smtp"
    (received,) = smtp_server.messages
    assert received.rcpt_tos == [
        "bob@example.com",
        "amy@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    parsed = received.parsed()
    assert parsed["Message-ID"] == result["message_id"]
    assert str(parsed["From"]) == "Example App <noreply@example.com>"
    assert parsed["X-Campaign"] == "welcome" and parsed["Reply-To"] == "help@example.com"
    assert parsed.get_content_type() == "multipart/alternative"


async def test_transient_smtp_faults_are_retried_in_task(
    task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer
) -> None:
    smtp_server.state.data_replies[1] = "451 4.3.0 try again later"
    smtp_server.state.drop_data.add(2)
    result = await send_email("bob@example.com", "S", "B")
    assert result["attempts"] == 3
    (received,) = smtp_server.messages
    assert received.parsed()["Message-ID"] == result["message_id"]


async def test_permanent_smtp_failure_is_not_retried(
    task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer
) -> None:
    smtp_server.state.reject_rcpt["bob@x.example"] = "550 5.1.1 user unknown"
    with pytest.raises(RecipientRejectedError) as info:
        await send_email("bob@x.example", "S", "B")
    assert str(info.value) == (
        "SMTP server rejected recipient bob@x.example (550 5.1.1 user unknown): permanent, not retried; "
        "check the address"
    )
    assert smtp_server.state.mail_count == 1


async def test_invalid_input_fails_before_connecting(
    task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer, http_server: HttpTestServer
) -> None:
    with pytest.raises(InvalidAddressError):
        await send_email("not an address", "S", "B")
    with pytest.raises(InvalidPhoneNumberError):
        await send_sms("0871234567", "x")
    assert smtp_server.connections == 0 and http_server.requests == []


async def test_retries_exhausted(task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer) -> None:
    for n in range(1, 10):
        smtp_server.state.data_replies[n] = "451 4.3.0 busy"
    with pytest.raises(RetriesExhaustedError) as info:
        await send_email("bob@example.com", "S", "B")
    assert "after 4 attempt(s)" in str(info.value) and "451 4.3.0 busy" in str(info.value)
    assert smtp_server.state.data_count == 4 and smtp_server.messages == []


async def test_tasks_share_the_pool(task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer) -> None:
    results = await asyncio.gather(*(send_email(f"u{i}@example.com", "S", "B") for i in range(20)))
    assert len(smtp_server.wait_for_messages(20)) == 20
    assert len({r["message_id"] for r in results}) == 20
    assert 1 <= smtp_server.connections <= 4  # SMTP_POOL_SIZE


async def test_send_sms_retries_429_and_500(
    task_env: pytest.MonkeyPatch, http_server: HttpTestServer
) -> None:
    http_server.script((429, {"Retry-After": "0"}), (500,))
    result = await send_sms("+353871234567", "Your code is 123456")
    json.dumps(result)
    assert result["attempts"] == 3 and result["provider"] == "twilio"
    (delivered,) = http_server.delivered
    assert delivered.form["Body"] == "Your code is 123456"
    assert len(http_server.requests) == 3


async def test_send_sms_400_is_permanent(task_env: pytest.MonkeyPatch, http_server: HttpTestServer) -> None:
    http_server.fail_for["+353870000000"] = 400
    with pytest.raises(PermanentDeliveryError, match="HTTP 400"):
        await send_sms("+353870000000", "x")
    assert len(http_server.requests) == 1


async def test_sms_webhook_provider(task_env: pytest.MonkeyPatch, http_server: HttpTestServer) -> None:
    task_env.setenv("SMS_PROVIDER", "http")
    task_env.setenv("SMS_BASE_URL", http_server.webhook_url)
    task_env.setenv("SMS_API_SECRET", http_server.bearer_token)
    task_env.setenv("SMS_HTTP_TRANSPORT", "httpx")
    get_settings.cache_clear()
    result = await send_sms("+353871234567", "hook", from_number="+15005550009")
    assert result["provider"] == "http"
    assert http_server.delivered[0].json == {"to": "+353871234567", "from": "+15005550009", "body": "hook"}


async def test_dev_mode_logs_instead_of_sending(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    get_settings.cache_clear()
    caplog.set_level(logging.INFO, logger="asyncjobs.delivery")
    try:
        email = await send_email("bob@example.com", "Dev subject", "B")
        sms = await send_sms("+353871234567", "dev sms")
    finally:
        await runtime.aclose_all()
        get_settings.cache_clear()
    assert email["backend"] == "console" and sms["provider"] == "console"
    assert "Dev subject" in caplog.text and "dev sms" in caplog.text


def test_fresh_loop_per_job_like_stock_rq(task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer) -> None:
    # stock RQ: loop = asyncio.new_event_loop(); loop.run_until_complete(job) -- never closed
    loops = [asyncio.new_event_loop() for _ in range(3)]
    try:
        for i, loop in enumerate(loops):
            loop.run_until_complete(send_email(f"u{i}@example.com", "S", "B"))
        assert len(smtp_server.messages) == 3
        assert smtp_server.connections == 3  # one per loop: a dead loop's connection is never reused
        assert smtp_server.open_connections <= 1  # the previous loops' connections were closed
        loops[-1].run_until_complete(runtime.aclose_all())
        smtp_server.wait_until_no_open_connections()
    finally:
        for loop in loops:
            loop.close()


async def test_worker_shutdown_hook_closes_pools(
    task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer
) -> None:
    from asyncjobs import hooks
    from asyncjobs.worker.hookset import HookSet

    await send_email("bob@example.com", "S", "B")
    assert smtp_server.open_connections == 1
    assert runtime.aclose_all in hooks._shutdown_hooks
    await HookSet().shutdown()  # what the worker runs at shutdown
    smtp_server.wait_until_no_open_connections()


async def test_rate_limit_applied_before_each_send(
    task_env: pytest.MonkeyPatch, http_server: HttpTestServer
) -> None:
    task_env.setenv("SMS_RATE_LIMIT", "3/h")
    get_settings.cache_clear()
    for i in range(3):
        await send_sms("+353871234567", f"m{i}")
    limiter = runtime.get_rate_limiter("sms")
    assert limiter.reserve() > 60  # type: ignore[attr-defined]  # the 4th send would have to wait
    assert len(http_server.delivered) == 3


@pytest.fixture
def under_asyncjobs():  # type: ignore[no-untyped-def]
    """As inside a job the asyncjobs worker runs (its current-job context is set)."""
    from asyncjobs.worker.context import JobHandle, reset_current, set_current

    token = set_current(JobHandle("job-1", {}, lambda: None, None))
    yield
    reset_current(token)


async def test_send_sms_429_under_asyncjobs_throttles_its_queue(  # type: ignore[no-untyped-def]
    task_env: pytest.MonkeyPatch, http_server: HttpTestServer, under_asyncjobs
) -> None:
    from asyncjobs import Throttled

    http_server.script((429, {"Retry-After": "7"}))
    with pytest.raises(Throttled) as info:
        await send_sms("+353871234567", "Your code is 123456")
    assert info.value.retry_after == 7  # the provider's Retry-After: the queue's pause
    assert "123456" not in str(info.value) and "871234567" not in str(info.value)
    assert len(http_server.requests) == 1  # no retry inside the job, holding its slot


@pytest.mark.parametrize(("reply", "throttled"), [
    ("451 4.7.1 Too many messages, slow down", True),
    ("421 4.7.0 Try again later, rate limited", True),
    ("451 4.3.0 try again later", False),
])
async def test_smtp_slow_down_replies_under_asyncjobs(  # type: ignore[no-untyped-def]
    task_env: pytest.MonkeyPatch, smtp_server: SmtpTestServer, under_asyncjobs, reply: str, throttled: bool
) -> None:
    from asyncjobs import Throttled

    smtp_server.state.data_replies[1] = reply
    if throttled:
        with pytest.raises(Throttled):
            await send_email("bob@example.com", "S", "B")
        assert smtp_server.messages == []
    else:  # any other 4xx: retried inside the job, as before
        assert (await send_email("bob@example.com", "S", "B"))["attempts"] == 2
