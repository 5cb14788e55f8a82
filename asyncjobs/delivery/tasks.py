"""The delivery jobs users enqueue (stock RQ producers enqueue them by reference).

Their public name is :mod:`asyncjobs.tasks` (see :data:`JOB_MODULE`)::

    from asyncjobs.queues import emails_queue, sms_queue
    from asyncjobs.tasks import send_email, send_sms
    emails_queue.enqueue(send_email, "user@example.com", "Subject", "Body", html_body="<p>Body</p>")
    sms_queue.enqueue(send_sms, "+353871234567", "Your code is 123456")

Both are ``async def`` and work under ``asyncjobs-worker`` (concurrently, with
pooled connections) and under a stock ``rq worker`` (one at a time).
Transient failures are retried inside the job with exponential backoff and
full jitter (honouring Retry-After) up to ``DELIVERY_MAX_ATTEMPTS``; permanent
ones raise at once, so the job fails with a readable reason.  The return value
is a small JSON-serialisable dict.

Personal data stays out of logs: the worker logs these jobs by their own
description (recipients masked, ``+353******567``, ``j***@example.com``; no
subject, body or code), and so do their retry messages.  The description RQ
stores in the job hash at enqueue time is the producer's: pass
``description=`` to ``enqueue`` to keep the arguments out of it too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, ParamSpec

from asyncjobs import metrics
from asyncjobs.delivery import runtime
from asyncjobs.delivery.email import EmailMessage, EmailSendResult, build_mime
from asyncjobs.delivery.errors import PermanentDeliveryError
from asyncjobs.delivery.retry import RetriesExhaustedError, retry_async
from asyncjobs.delivery.settings import get_settings
from asyncjobs.hooks import log_description
from asyncjobs.redact import mask_email, mask_phone

if TYPE_CHECKING:  # the SMS side (the `sms` extra) is imported when send_sms runs
    from asyncjobs.delivery.sms import SmsResult

__all__ = ["JOB_MODULE", "send_email", "send_sms"]

#: The module these jobs are named by, in Redis and in ``--allow-module``: RQ stores a job's function as
#: ``<__module__>.<__qualname__>`` (``asyncjobs.tasks.send_email``), and workers import that path.
#: It stays the seed's public path (:mod:`asyncjobs.tasks`, a thin face over this module), so jobs
#: already in Redis, jobs enqueued by this version and run by an older worker during a rolling
#: deploy, and ``--allow-module asyncjobs.tasks`` all keep working.
JOB_MODULE = "asyncjobs.tasks"

log = logging.getLogger(__name__)


def _recipients(value: object) -> str:
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, Iterable) else [value]
    return ", ".join(mask_email(v) for v in items)


def _describe_email(to: object, subject: object = "", body: object = "", *args: object, **kwargs: object) -> str:
    extra = "".join(f", {name}=[{_recipients(kwargs[name])}]" for name in ("cc", "bcc") if kwargs.get(name))
    return f"asyncjobs.tasks.send_email(to=[{_recipients(to)}]{extra}, subject=<{len(str(subject))} chars>)"


def _describe_sms(to: object, body: object = "", *args: object, **kwargs: object) -> str:
    return f"asyncjobs.tasks.send_sms(to={mask_phone(to)}, body=<{len(str(body))} chars>)"


P = ParamSpec("P")


def _counted(
    channel: str,
) -> Callable[[Callable[P, Awaitable[dict[str, object]]]], Callable[P, Awaitable[dict[str, object]]]]:
    """``asyncjobs_delivery_total{channel,result}`` (a no-op unless the worker serves metrics): sent,
    rejected (permanent: refused recipient, invalid address or input), exhausted (transient
    failures through every attempt) or error."""

    def decorate(fn: Callable[P, Awaitable[dict[str, object]]]) -> Callable[P, Awaitable[dict[str, object]]]:
        @functools.wraps(fn)
        async def counted(*args: P.args, **kwargs: P.kwargs) -> dict[str, object]:
            try:
                result = await fn(*args, **kwargs)
            except RetriesExhaustedError:
                metrics.delivery(channel, "exhausted")
                raise
            except (PermanentDeliveryError, ValueError):
                metrics.delivery(channel, "rejected")
                raise
            except Exception:
                metrics.delivery(channel, "error")
                raise
            metrics.delivery(channel, "sent")
            return result

        return counted

    return decorate


@log_description(_describe_email)
@_counted("email")
async def send_email(
    to: str | list[str],
    subject: str,
    body: str,
    html_body: str | None = None,
    *,
    reply_to: str | list[str] | None = None,
    cc: str | list[str] | None = None,
    bcc: str | list[str] | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    from_email: str | None = None,
    from_name: str | None = None,
) -> dict[str, object]:
    """Send one email (to one or several recipients) and return a summary dict.

    ``from_email``/``from_name`` default to ``SMTP_FROM_EMAIL``/``SMTP_FROM_NAME``.
    ``headers`` adds extra headers (e.g. ``List-Unsubscribe``; a ``Message-ID``
    given here replaces the generated one).  Returns ``{"message_id",
    "accepted", "refused", "backend", "attempts"}``.
    """
    settings = get_settings()
    header_items: tuple[tuple[str, str], ...] = ()
    if headers is not None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        header_items = tuple((str(k), str(v)) for k, v in items)
    message = EmailMessage(
        to=to,  # type: ignore[arg-type]  # normalised to a tuple by EmailMessage
        subject=subject,
        body=body,
        html_body=html_body,
        from_email=from_email or settings.smtp_from_email,
        from_name=from_name if from_name is not None else (settings.smtp_from_name or None),
        reply_to=reply_to,  # type: ignore[arg-type]
        cc=cc,  # type: ignore[arg-type]
        bcc=bcc,  # type: ignore[arg-type]
        headers=header_items,
    )
    prepared = build_mime(message)  # validation: invalid input fails here, before anything is sent
    limiter = runtime.get_rate_limiter("smtp")

    async def attempt() -> EmailSendResult:
        await limiter.acquire()
        return await runtime.get_email_sender().send_prepared(prepared)

    result, attempts = await retry_async(
        attempt,
        runtime.retry_policy(settings),
        describe=f"email {prepared.message_id} to {_recipients(message.to)}",
    )
    return {**result.as_dict(), "attempts": attempts}


@log_description(_describe_sms)
@_counted("sms")
async def send_sms(to: str, body: str, *, from_number: str | None = None) -> dict[str, object]:
    """Send one SMS through ``SMS_PROVIDER``; returns ``{"provider", "provider_id", "to", "status", "attempts"}``."""
    from asyncjobs.delivery.sms import SmsMessage

    settings = get_settings()
    message = SmsMessage(to=to, body=body, from_number=from_number)
    message.validate()  # before anything is sent
    limiter = runtime.get_rate_limiter("sms")

    async def attempt() -> SmsResult:
        await limiter.acquire()
        return await runtime.get_sms_provider().send(message)

    result, attempts = await retry_async(attempt, runtime.retry_policy(settings), describe=f"SMS to {mask_phone(to)}")
    return {**result.as_dict(), "attempts": attempts}


for _job in (send_email, send_sms):
    _job.__module__ = JOB_MODULE
del _job
