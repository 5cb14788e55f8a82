"""SMS messages and providers (console, Twilio, generic HTTP webhook, user classes).

HTTP providers share one ``httpx.AsyncClient`` (created lazily on first use, in
the running event loop) with connection limits and timeouts.  The transport is
selectable: ``"aiohttp"`` (default, via the ``httpx-aiohttp`` package; much
cheaper per request under concurrency) or ``"httpx"`` (httpx's own).
"""

from __future__ import annotations

import email.utils
import importlib
import inspect
import logging
import re
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

from asyncjobs._extras import missing_extra

try:
    import httpx
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise missing_extra('sms', 'asyncjobs.delivery.sms (SMS providers)', _exc) from _exc

from asyncjobs.delivery.errors import (
    AuthenticationError,
    DeliveryConfigurationError,
    DeliveryError,
    InvalidPhoneNumberError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from asyncjobs.redact import escape_controls, hide_url_path, mask_phone, scrub_url, url_origin

__all__ = [
    "ConsoleSmsProvider",
    "HttpSmsProvider",
    "HttpTransportName",
    "SmsMessage",
    "SmsProvider",
    "SmsProviderConfig",
    "SmsResult",
    "TwilioSmsProvider",
    "build_sms_provider",
    "load_provider_class",
    "make_http_client",
    "parse_retry_after",
    "validate_e164",
]

log = logging.getLogger(__name__)

HttpTransportName = Literal["aiohttp", "httpx"]
_E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")  # fullmatch: no trailing newline, ASCII digits only
MAX_SMS_BODY = 1600  # Twilio's limit for a (concatenated) message


def validate_e164(number: str, *, what: str = "phone number") -> str:
    """Return ``number`` if it is E.164 (``+`` country code and up to 15 digits)."""
    if not isinstance(number, str) or not _E164_RE.fullmatch(number):
        raise InvalidPhoneNumberError(
            f"invalid {what} {escape_controls(mask_phone(number))}: use E.164 form, '+' then country code and number with no "
            "spaces or punctuation, e.g. +353871234567; nothing was sent"
        )
    return number


@dataclass(frozen=True)
class SmsMessage:
    to: str
    body: str
    from_number: str | None = None

    def validate(self) -> None:
        validate_e164(self.to, what="recipient number")
        if self.from_number is not None:
            validate_e164(self.from_number, what="sender number")
        if not self.body:
            raise PermanentDeliveryError("SMS body is empty: pass the text to send; nothing was sent")
        if len(self.body) > MAX_SMS_BODY:
            raise PermanentDeliveryError(
                f"SMS body is {len(self.body)} characters, more than {MAX_SMS_BODY}: shorten it; nothing was sent"
            )


@dataclass(frozen=True)
class SmsResult:
    provider: str
    provider_id: str
    to: str
    status: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "provider_id": self.provider_id,
            "to": self.to,
            "status": self.status,
        }


@dataclass(frozen=True)
class SmsProviderConfig:
    """Plain provider settings (the secret is excluded from repr)."""

    api_key: str = ""
    api_secret: str = field(default="", repr=False)
    from_number: str = ""
    base_url: str = ""
    timeout: float = 10.0
    max_connections: int = 100
    transport: HttpTransportName = "aiohttp"
    ca_file: str | None = None

    def __repr__(self) -> str:
        # base_url may carry a token (webhook path or query): show only where it points.
        return (
            f"SmsProviderConfig(api_key={self.api_key!r}, from_number={self.from_number!r}, "
            f"base_url={hide_url_path(self.base_url) if self.base_url else ''!r}, timeout={self.timeout!r}, "
            f"max_connections={self.max_connections!r}, transport={self.transport!r}, ca_file={self.ca_file!r})"
        )


@runtime_checkable
class SmsProvider(Protocol):
    name: str

    async def send(self, message: SmsMessage) -> SmsResult: ...

    async def aclose(self) -> None: ...


class _HideUrlsFilter(logging.Filter):
    """httpx logs every request's full URL at INFO; a webhook URL may carry a token, so log only its origin."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(hide_url_path(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


def _hide_urls_in_httpx_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _HideUrlsFilter) for f in logger.filters):
        logger.addFilter(_HideUrlsFilter())


def make_http_client(config: SmsProviderConfig) -> httpx.AsyncClient:
    """A pooled ``httpx.AsyncClient`` with limits and timeouts on the chosen transport."""
    _hide_urls_in_httpx_logs()
    limits = httpx.Limits(
        max_connections=config.max_connections, max_keepalive_connections=config.max_connections
    )
    timeout = httpx.Timeout(config.timeout)
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=config.ca_file) if config.ca_file else True
    )
    if config.transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport: httpx.AsyncBaseTransport = AiohttpTransport(verify=verify, limits=limits)
        return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits)
    if config.transport == "httpx":
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(verify=verify, limits=limits), timeout=timeout, limits=limits
        )
    raise DeliveryConfigurationError(f"unknown HTTP transport {config.transport!r}: use 'aiohttp' or 'httpx'")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200]
    if isinstance(data, Mapping):
        parts = [
            str(data[k]) for k in ("code", "message", "error", "detail") if data.get(k) not in (None, "")
        ]
        if parts:
            return " ".join(parts)[:300]
    return str(data)[:200]


_NUMBER_RE = re.compile(r"\+?[0-9]{7,15}")


def _mask_numbers(text: str) -> str:
    """Provider error text with phone numbers masked (Twilio: "The 'To' number +353... is not valid")."""
    return escape_controls(_NUMBER_RE.sub(lambda m: mask_phone(m.group()), text))


def classify_response(response: httpx.Response, provider: str, to: str) -> DeliveryError | None:
    """None for 2xx; else a transient (429, 408, 5xx) or permanent (other 4xx) error."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    detail = _mask_numbers(_error_detail(response))
    what = f"{provider} SMS provider answered HTTP {status} for {mask_phone(to)}" + (f" ({detail})" if detail else "")
    if status in (408, 425, 429) or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        hint = f", server asked to wait {retry_after:g}s" if retry_after is not None else ""
        return TransientDeliveryError(
            f"{what}: transient{hint}, will be retried", retry_after=retry_after, code=status,
            slow_down=status == 429,
        )
    if status in (401, 403):
        return AuthenticationError(
            f"{what}: the provider refused our credentials; check SMS_API_KEY / SMS_API_SECRET. "
            "Permanent, not retried",
            code=status,
        )
    return PermanentDeliveryError(f"{what}: permanent, not retried", code=status)


def _transport_error(exc: httpx.HTTPError, provider: str, url: str) -> TransientDeliveryError:
    # Only the origin: the URL's path or query may carry a token (webhooks, Twilio's account SID).
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    detail = scrub_url(f"{type(exc).__name__}: {exc}", url)
    return TransientDeliveryError(
        f"request to {provider} SMS provider at {url_origin(url)} {kind} ({detail}): transient, will be retried"
    )


class _HttpProviderBase:
    name = "http"

    def __init__(self, config: SmsProviderConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client
        self._owns_client = client is None
        _hide_urls_in_httpx_logs()  # also for a client passed in

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = make_http_client(self.config)
            self._owns_client = True
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client and not self._client.is_closed:
            await self._client.aclose()

    def _from(self, message: SmsMessage) -> str:
        number = message.from_number or self.config.from_number
        if not number:
            raise DeliveryConfigurationError(
                f"no sender number for the {self.name} SMS provider: set SMS_FROM_NUMBER or pass from_number"
            )
        return validate_e164(number, what="sender number")

    async def _post(self, url: str, message: SmsMessage, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.post(url, **kwargs)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.name, url) from None
        error = classify_response(response, self.name, message.to)
        if error is not None:
            raise error
        return response

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class TwilioSmsProvider(_HttpProviderBase):
    """Twilio Programmable Messaging REST API.

    ``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`` form-encoded
    ``To``/``From``/``Body`` with HTTP basic auth (Account SID, auth token);
    Twilio answers 201 with JSON containing the message ``sid``.
    """

    name = "twilio"
    DEFAULT_BASE_URL = "https://api.twilio.com"

    def __init__(self, config: SmsProviderConfig, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(config, client)
        if not config.api_key or not config.api_secret:
            raise DeliveryConfigurationError(
                "the twilio SMS provider needs the Account SID (SMS_API_KEY) and auth token (SMS_API_SECRET)"
            )
        base = (config.base_url or self.DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{base}/2010-04-01/Accounts/{config.api_key}/Messages.json"

    async def send(self, message: SmsMessage) -> SmsResult:
        message.validate()
        response = await self._post(
            self.url,
            message,
            data={"To": message.to, "From": self._from(message), "Body": message.body},
            auth=(self.config.api_key, self.config.api_secret),
        )
        data = _json_object(response, self.name)
        sid = str(data.get("sid") or "")
        if not sid:
            raise PermanentDeliveryError(
                f"twilio answered HTTP {response.status_code} without a message sid: unexpected response, "
                "not retried (the message may have been sent)"
            )
        return SmsResult(self.name, sid, message.to, str(data.get("status") or "") or None)


class HttpSmsProvider(_HttpProviderBase):
    """Generic webhook: ``POST {base_url}`` JSON ``{"to", "from", "body"}`` with ``Authorization: Bearer``.

    The token is the API secret (or the API key when no secret is set).  Any
    2xx answer is success; the provider id is taken from the JSON fields
    ``id``, ``message_id`` or ``sid`` when present.
    """

    name = "http"

    def __init__(self, config: SmsProviderConfig, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(config, client)
        if not config.base_url:
            raise DeliveryConfigurationError("the http SMS provider needs the webhook URL (SMS_BASE_URL)")
        self.url = config.base_url

    async def send(self, message: SmsMessage) -> SmsResult:
        message.validate()
        token = self.config.api_secret or self.config.api_key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        sender = message.from_number or self.config.from_number or None
        if sender:
            validate_e164(sender, what="sender number")
        response = await self._post(
            self.url, message, json={"to": message.to, "from": sender, "body": message.body}, headers=headers
        )
        provider_id = ""
        if response.content:
            try:
                data = response.json()
            except ValueError:
                data = None
            if isinstance(data, Mapping):
                provider_id = str(data.get("id") or data.get("message_id") or data.get("sid") or "")
        return SmsResult(self.name, provider_id, message.to, "accepted")


def _json_object(response: httpx.Response, provider: str) -> Mapping[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, Mapping):
        raise PermanentDeliveryError(
            f"{provider} answered HTTP {response.status_code} with a body that is not a JSON object: "
            "unexpected response, not retried (the message may have been sent)"
        )
    return data


class ConsoleSmsProvider:
    """Development provider: logs the SMS instead of sending it."""

    name = "console"

    def __init__(self, config: SmsProviderConfig | None = None, logger: logging.Logger | None = None) -> None:
        self.config = config or SmsProviderConfig()
        self._log = logger or log
        self.sent = 0

    async def send(self, message: SmsMessage) -> SmsResult:
        message.validate()
        sender = message.from_number or self.config.from_number or "-"
        self.sent += 1
        provider_id = f"console-{uuid.uuid4().hex}"
        self._log.info(
            "console SMS provider (not sent): from=%s to=%s id=%s\n%s",
            sender,
            message.to,
            provider_id,
            message.body,
        )
        return SmsResult(self.name, provider_id, message.to, "logged")

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return "ConsoleSmsProvider()"


_BUILTIN: dict[str, type[Any]] = {
    "console": ConsoleSmsProvider,
    "twilio": TwilioSmsProvider,
    "http": HttpSmsProvider,
}


def load_provider_class(path: str) -> type[Any]:
    """Import ``package.module.ClassName`` (or ``package.module:ClassName``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise DeliveryConfigurationError(
            f"SMS provider {path!r} is not a dotted path: use console, twilio, http or package.module.ClassName"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeliveryConfigurationError(
            f"cannot import SMS provider module {module_name!r}: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls):
        raise DeliveryConfigurationError(
            f"SMS provider {path!r}: module {module_name!r} has no class {attr!r}"
        )
    if not callable(getattr(cls, "send", None)):
        raise DeliveryConfigurationError(
            f"SMS provider class {path!r} has no 'send' method: define async def send(self, message) -> SmsResult"
        )
    return cls


def build_sms_provider(name: str, config: SmsProviderConfig) -> SmsProvider:
    """Instantiate a built-in provider by name, or a user class by dotted path (called with ``config``)."""
    builtin = _BUILTIN.get(name.lower())
    if builtin is not None:
        return cast(SmsProvider, builtin(config))
    cls = load_provider_class(name)
    try:
        inner = cls(config)
    except DeliveryError:
        raise
    except Exception as exc:
        raise DeliveryConfigurationError(
            f"SMS provider class {name!r} could not be created with an SmsProviderConfig: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return _UserProviderAdapter(inner)


class _UserProviderAdapter:
    """Normalises a user provider's return value to :class:`SmsResult` and gives it ``aclose``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))

    async def send(self, message: SmsMessage) -> SmsResult:
        message.validate()
        result = await self.inner.send(message)
        if isinstance(result, SmsResult):
            return result
        if isinstance(result, Mapping):
            return SmsResult(
                self.name,
                str(result.get("provider_id") or result.get("id") or ""),
                message.to,
                str(result.get("status") or "") or None,
            )
        return SmsResult(self.name, "" if result is None else str(result), message.to)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"_UserProviderAdapter({self.inner!r})"
