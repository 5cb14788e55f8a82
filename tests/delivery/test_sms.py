from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from asyncjobs.delivery.errors import (
    AuthenticationError,
    DeliveryConfigurationError,
    InvalidPhoneNumberError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from asyncjobs.delivery.sms import (
    ConsoleSmsProvider,
    HttpSmsProvider,
    SmsMessage,
    SmsProvider,
    SmsProviderConfig,
    SmsResult,
    TwilioSmsProvider,
    build_sms_provider,
    classify_response,
    parse_retry_after,
    validate_e164,
)
from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import free_port


class MyProvider:
    """A user provider loaded by dotted path in the tests below."""

    sent: list[SmsMessage] = []

    def __init__(self, config: SmsProviderConfig) -> None:
        self.config = config

    async def send(self, message: SmsMessage) -> dict[str, str]:
        MyProvider.sent.append(message)
        return {"id": "mine-1", "status": "ok"}


@pytest.mark.parametrize("number", ["+353871234567", "+14155550100", "+12"])
def test_e164_valid(number: str) -> None:
    assert validate_e164(number) == number


@pytest.mark.parametrize(
    "number",
    [
        "0871234567",
        "+0871234567",
        "+353 87 123 4567",
        "353871234567",
        "+1234567890123456",
        "+1-415-555-0100",
        "",
        "+",
        "+353871234567\n",  # re.match with $ accepted a trailing newline (issue 18 item 7)
        "+\u0663\u0665\u0663871234567",  # and non-ASCII digits (\\d)
    ],
)
def test_e164_invalid(number: str) -> None:
    from asyncjobs.redact import escape_controls, mask_phone

    with pytest.raises(InvalidPhoneNumberError) as info:
        validate_e164(number)
    assert escape_controls(mask_phone(number)) in str(info.value) and "E.164" in str(info.value)
    if len(number) >= 10:
        assert number.strip() not in str(info.value).split(":")[0]  # masked: the full number is personal data


ProviderFactory = Callable[..., Any]


@pytest.fixture
async def make_provider(http_server: HttpTestServer) -> AsyncIterator[ProviderFactory]:
    made: list[SmsProvider] = []

    def factory(kind: str = "twilio", **kw: Any) -> Any:
        if kind == "twilio":
            kw.setdefault("api_key", http_server.account_sid)
            kw.setdefault("api_secret", http_server.auth_token)
            kw.setdefault("base_url", http_server.url)
        else:
            kw.setdefault("api_secret", http_server.bearer_token)
            kw.setdefault("base_url", http_server.webhook_url)
        kw.setdefault("from_number", "+15005550006")
        kw.setdefault("timeout", 10.0)
        provider = build_sms_provider(kind, SmsProviderConfig(**kw))
        made.append(provider)
        return provider

    yield factory
    for p in made:
        await p.aclose()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_twilio_wire_format(
    transport: str, http_server: HttpTestServer, make_provider: ProviderFactory
) -> None:
    provider = make_provider("twilio", transport=transport)
    assert isinstance(provider, TwilioSmsProvider)
    result = await provider.send(SmsMessage("+353871234567", "Your code is 123456 — ✓"))
    (req,) = http_server.requests
    assert req.path == f"/2010-04-01/Accounts/{http_server.account_sid}/Messages.json"
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    auth = base64.b64decode(req.headers["Authorization"].removeprefix("Basic ")).decode()
    assert auth == f"{http_server.account_sid}:{http_server.auth_token}"
    assert req.form == {"To": "+353871234567", "From": "+15005550006", "Body": "Your code is 123456 — ✓"}
    assert result.provider == "twilio" and result.provider_id.startswith("SM") and result.status == "queued"
    assert result.to == "+353871234567"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_http_client_reuses_connections(
    transport: str, http_server: HttpTestServer, make_provider: ProviderFactory
) -> None:
    provider = make_provider("twilio", transport=transport)
    for i in range(10):
        await provider.send(SmsMessage("+353871234567", f"msg {i}"))
    assert len(http_server.delivered) == 10
    assert len({r.peer for r in http_server.requests}) == 1


async def test_webhook_wire_format(http_server: HttpTestServer, make_provider: ProviderFactory) -> None:
    provider = make_provider("http")
    assert isinstance(provider, HttpSmsProvider)
    result = await provider.send(SmsMessage("+353871234567", "hello", from_number="+15005550009"))
    (req,) = http_server.requests
    assert req.json == {"to": "+353871234567", "from": "+15005550009", "body": "hello"}
    assert req.headers["Authorization"] == f"Bearer {http_server.bearer_token}"
    assert req.headers["Content-Type"] == "application/json"
    assert result.provider == "http" and len(result.provider_id) == 32


@pytest.mark.parametrize("kind", ["twilio", "http"])
async def test_status_classification(
    kind: str, http_server: HttpTestServer, make_provider: ProviderFactory
) -> None:
    provider = make_provider(kind)
    http_server.script((429, {"Retry-After": "7"}), (500,), (503, {"Retry-After": "2"}), (400,))
    msg = SmsMessage("+353871234567", "x")
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(msg)
    assert info.value.retry_after == 7 and info.value.code == 429 and "429" in str(info.value)
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(msg)
    assert info.value.retry_after is None and info.value.code == 500
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(msg)
    assert info.value.retry_after == 2
    with pytest.raises(PermanentDeliveryError) as perm:
        await provider.send(msg)
    assert perm.value.code == 400 and "permanent, not retried" in str(perm.value)
    assert http_server.delivered == []
    await provider.send(msg)
    assert len(http_server.delivered) == 1


@pytest.mark.parametrize("kind", ["twilio", "http"])
async def test_bad_credentials_are_permanent_and_secret_free(
    kind: str, http_server: HttpTestServer, make_provider: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncjobs")
    provider = make_provider(kind, api_secret="wrong-secret-xyz")
    with pytest.raises(AuthenticationError) as info:
        await provider.send(SmsMessage("+353871234567", "x"))
    assert "wrong-secret-xyz" not in str(info.value) + repr(provider) + caplog.text


async def test_invalid_number_rejected_before_sending(
    http_server: HttpTestServer, make_provider: ProviderFactory
) -> None:
    provider = make_provider("twilio")
    with pytest.raises(InvalidPhoneNumberError):
        await provider.send(SmsMessage("087 123 4567", "x"))
    assert http_server.requests == []


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_unreachable_is_transient(transport: str) -> None:
    provider = TwilioSmsProvider(
        SmsProviderConfig(
            api_key="AC1",
            api_secret="t",
            from_number="+15005550006",
            base_url=f"http://127.0.0.1:{free_port()}",
            transport=transport,
        )
    )
    try:
        with pytest.raises(TransientDeliveryError, match="failed"):
            await provider.send(SmsMessage("+353871234567", "x"))
    finally:
        await provider.aclose()


async def test_timeout_is_transient_unit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    provider = HttpSmsProvider(SmsProviderConfig(base_url="http://sms.invalid/hook"), client=client)
    with pytest.raises(TransientDeliveryError, match="timed out"):
        await provider.send(SmsMessage("+353871234567", "x"))
    await client.aclose()


def test_retry_after_parsing() -> None:
    assert parse_retry_after("12") == 12
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    resp = httpx.Response(404, json={"message": "nope"}, request=httpx.Request("POST", "http://x"))
    err = classify_response(resp, "http", "+1")
    assert isinstance(err, PermanentDeliveryError) and "nope" in str(err)


async def test_user_provider_by_dotted_path() -> None:
    MyProvider.sent.clear()
    provider = build_sms_provider("tests.delivery.test_sms.MyProvider", SmsProviderConfig())
    result = await provider.send(SmsMessage("+353871234567", "hi"))
    assert result == SmsResult("MyProvider", "mine-1", "+353871234567", "ok")
    assert [m.body for m in MyProvider.sent] == ["hi"]
    await provider.aclose()


@pytest.mark.parametrize(
    "path", ["no_such_module_xyz.Provider", "tests.delivery.test_sms.Nope", "json.dumps"]
)
def test_bad_provider_paths(path: str) -> None:
    with pytest.raises(DeliveryConfigurationError):
        build_sms_provider(path, SmsProviderConfig())


async def test_console_provider_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asyncjobs.delivery.sms")
    result = await ConsoleSmsProvider().send(SmsMessage("+353871234567", "dev code 42"))
    assert result.provider == "console" and "dev code 42" in caplog.text


def test_config_repr_hides_secret() -> None:
    cfg = SmsProviderConfig(api_key="AC1", api_secret="very-secret-token")
    assert "very-secret-token" not in repr(cfg) + repr(TwilioSmsProvider(cfg))


def test_provider_error_text_never_carries_the_full_number() -> None:
    """Issue 18 item 7: provider error text echoed full numbers into exc_info, the log and span messages."""
    import httpx

    from asyncjobs.delivery.sms import classify_response

    body = {"code": 21211, "message": "The 'To' number +353861112223 is not a valid phone number."}
    error = classify_response(httpx.Response(400, json=body), "twilio", "+353861112223")
    assert error is not None and "21211" in str(error) and "is not a valid phone number" in str(error)
    assert "861112223" not in str(error), str(error)
