"""Composition of the delivery battery: per-process senders and limiters built lazily from settings.

Senders own connections bound to an event loop, so they are kept per running
loop.  The asyncjobs worker runs every job on one long-lived loop, so its jobs
share one pool; a stock ``rq worker`` runs each coroutine job on a fresh loop,
so a sender left on a previous (no longer running) loop is closed (on that
loop, from a helper thread) and replaced.  Cleanup is registered with
:func:`asyncjobs.hooks.on_shutdown`, so the asyncjobs worker closes
the pools when it stops.

Only the email side is imported with this module: the SMS providers (httpx, aiohttp:
the ``sms`` extra) are imported on the first :func:`get_sms_provider`, so an
install with only the ``email`` extra can send email.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncjobs.delivery.email import ConsoleEmailSender, EmailSender, SmtpConfig, SmtpEmailSender
from asyncjobs.delivery.ratelimit import LocalRateLimiter, Rate, RateLimiter, UnlimitedRateLimiter
from asyncjobs.delivery.retry import RetryPolicy
from asyncjobs.delivery.settings import Settings, get_settings
from asyncjobs.perloop import PerLoop

if TYPE_CHECKING:  # the SMS side (httpx, aiohttp: the `sms` extra) is imported when first used
    from asyncjobs.delivery.sms import SmsProvider, SmsProviderConfig

__all__ = [
    "aclose_all",
    "email_config",
    "get_email_sender",
    "get_rate_limiter",
    "get_sms_provider",
    "retry_policy",
    "sms_config",
]

log = logging.getLogger(__name__)


@dataclass
class _LoopResources:
    email: EmailSender | None = None
    sms: SmsProvider | None = None
    redis: Any = None
    limiters: dict[str, RateLimiter] = field(default_factory=dict)

    async def aclose(self) -> None:
        closers: list[Awaitable[None]] = []
        if self.email is not None:
            closers.append(self.email.aclose())
        if self.sms is not None:
            closers.append(self.sms.aclose())
        if self.redis is not None:
            closers.append(self.redis.aclose())
        self.email = self.sms = self.redis = None
        self.limiters.clear()
        for result in await asyncio.gather(*closers, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("error while closing delivery resources: %r", result)


_lock = threading.Lock()
_local_limiters: dict[str, LocalRateLimiter] = {}


def email_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_user or None,
        password=settings.smtp_password.get_secret_value() or None,
        tls=settings.smtp_tls,
        allow_insecure_auth=settings.smtp_allow_insecure_auth,
        timeout=settings.smtp_timeout,
        pool_size=settings.smtp_pool_size,
        max_messages_per_connection=settings.smtp_max_messages_per_connection,
        ca_file=settings.smtp_ca_file or None,
        validate_certs=settings.smtp_validate_certs,
    )


def sms_config(settings: Settings) -> SmsProviderConfig:
    from asyncjobs.delivery.sms import SmsProviderConfig

    return SmsProviderConfig(
        api_key=settings.sms_api_key,
        api_secret=settings.sms_api_secret.get_secret_value(),
        from_number=settings.sms_from_number,
        base_url=settings.sms_base_url,
        timeout=settings.sms_timeout,
        max_connections=settings.sms_max_connections,
        transport=settings.sms_http_transport,
    )


def retry_policy(settings: Settings | None = None) -> RetryPolicy:
    s = settings or get_settings()
    return RetryPolicy(s.delivery_max_attempts, s.delivery_backoff_base, s.delivery_backoff_max)


def _discard_on_own_loop(res: _LoopResources, loop: asyncio.AbstractEventLoop) -> None:
    """Close resources of a loop that no longer runs, on that loop, from a helper thread."""
    if loop.is_closed() or loop.is_running():
        return

    def run() -> None:
        try:
            loop.run_until_complete(asyncio.wait_for(res.aclose(), timeout=5))
        except Exception as exc:
            log.debug("could not close delivery resources of a finished event loop: %r", exc)

    thread = threading.Thread(target=run, name="asyncjobs-discard-loop-resources", daemon=True)
    thread.start()
    thread.join(6)


async def _aclose(res: _LoopResources) -> None:
    await res.aclose()




def _current() -> _LoopResources:
    return _resources.get()


def get_email_sender() -> EmailSender:
    """The email sender for the running loop: SMTP pool or console (dev mode), from settings."""
    res = _current()
    if res.email is None:
        settings = get_settings()
        if settings.resolved_email_backend == "smtp":
            res.email = SmtpEmailSender(email_config(settings))
        else:
            res.email = ConsoleEmailSender()
    return res.email


def get_sms_provider() -> SmsProvider:
    """The SMS provider for the running loop (console, twilio, http or a user class), from settings."""
    res = _current()
    if res.sms is None:
        from asyncjobs.delivery.sms import build_sms_provider

        settings = get_settings()
        res.sms = build_sms_provider(settings.sms_provider, sms_config(settings))
    return res.sms


def get_rate_limiter(channel: str) -> RateLimiter:
    """Rate limiter for ``"smtp"`` or ``"sms"`` (SMTP_RATE_LIMIT / SMS_RATE_LIMIT, RATE_LIMIT_SCOPE)."""
    settings = get_settings()
    rate: Rate | None = settings.smtp_rate if channel == "smtp" else settings.sms_rate
    if rate is None:
        return UnlimitedRateLimiter()
    if settings.rate_limit_scope == "process":
        with _lock:
            limiter = _local_limiters.get(channel)
            if limiter is None or limiter.rate != rate:
                limiter = _local_limiters[channel] = LocalRateLimiter(rate)
            return limiter
    res = _current()
    existing = res.limiters.get(channel)
    if existing is None:
        from redis.asyncio import Redis

        from asyncjobs.delivery.ratelimit import RedisRateLimiter

        if res.redis is None:
            res.redis = Redis.from_url(settings.redis_url)
        from asyncjobs.protocol.keys import DEFAULT as RQ_KEYS

        # asyncjobs:ratelimit:<channel>, under RQ's key prefix when it is not rq (docs/rq-protocol.md §13.2)
        key = RQ_KEYS.own(f"ratelimit:{channel}")
        existing = res.limiters[channel] = RedisRateLimiter(res.redis, key, rate)
    return existing


async def aclose_all() -> None:
    """Close every sender/provider/pool (the worker does at shutdown; tests call it too)."""
    with _lock:
        _local_limiters.clear()
    await _resources.aclose_all()


_resources: PerLoop[_LoopResources] = PerLoop(
    _LoopResources, close=_aclose, discard=_discard_on_own_loop, cleanup=aclose_all
)
