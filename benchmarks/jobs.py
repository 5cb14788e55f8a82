"""Job functions run by every contender (RQ workers, asyncjobs, SAQ, the no-queue ceiling).

Each job takes a ``token`` (``bjt-<run>-<index>``, also the RQ job id) and, once
its work succeeded, appends ``token\\n`` to the ledger file named by
``BENCH_LEDGER`` with one ``O_APPEND`` write.  The ledger is the per-job
execution counter: it is shared by forked horses, parallel worker processes and
threads, costs one syscall per job and sends nothing to Redis, so it does not
distort the Redis-commands-per-job figure.  A job that ran twice appears twice.

The SMTP and SMS jobs call the project's own ``asyncjobs.tasks.send_email`` /
``send_sms`` (configured by environment variables that the harness sets).  If
that module is not importable, they fall back to a plain aiosmtplib / httpx
call and :func:`delivery_impl` says so, so results never silently mix the two.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from typing import Any

_ledger_fd: int | None = None
_ledger_pid: int | None = None

SLEEP_SECONDS = float(os.environ.get("BENCH_SLEEP_SECONDS", "0.05"))


def _record(token: str) -> None:
    global _ledger_fd, _ledger_pid
    pid = os.getpid()
    if _ledger_fd is None or _ledger_pid != pid:
        path = os.environ.get("BENCH_LEDGER")
        if not path:
            return
        _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _ledger_pid = pid
    os.write(_ledger_fd, (token + "\n").encode())


# --------------------------------------------------------------------------- trivial workloads


def noop(token: str) -> None:
    _record(token)


async def noop_async(token: str) -> None:
    _record(token)


def sleep_sync(token: str, seconds: float = SLEEP_SECONDS) -> None:
    time.sleep(seconds)
    _record(token)


async def sleep_async(token: str, seconds: float = SLEEP_SECONDS) -> None:
    await asyncio.sleep(seconds)
    _record(token)


async def timed_sleep_async(token: str, seconds: float = SLEEP_SECONDS) -> None:
    """``sleep_async`` that records ``token start end`` (CLOCK_MONOTONIC, comparable across processes):
    ``python -m benchmarks gap`` reads where each slot's time went."""
    start = time.monotonic()
    await asyncio.sleep(seconds)
    _record(f"{token} {start:.6f} {time.monotonic():.6f}")


def timed_sleep_sync(token: str, seconds: float = SLEEP_SECONDS) -> None:
    start = time.monotonic()
    time.sleep(seconds)
    _record(f"{token} {start:.6f} {time.monotonic():.6f}")


# --------------------------------------------------------------------------- delivery workloads


def delivery_impl() -> str:
    """``"asyncjobs.tasks"`` when the project's tasks are importable, else ``"fallback"``."""
    try:
        import asyncjobs.tasks as tasks

        if hasattr(tasks, "send_email") and hasattr(tasks, "send_sms"):
            return "asyncjobs.tasks"
    except ImportError:
        pass
    return "fallback"


_impl: str | None = None


def _delivery() -> str:
    # Decided on first use, not at import: the no-op jobs must not pay for importing the delivery stack
    # (a forking worker would pay it again in every work horse).
    global _impl
    if _impl is None:
        _impl = os.environ.get("BENCH_DELIVERY_IMPL") or delivery_impl()
    return _impl

EMAIL_TO = "bench@example.com"
SMS_TO = "+15005550006"


async def smtp(token: str) -> None:
    subject = f"Benchmark {token}"
    body = f"Hello, this is benchmark message {token}.\n"
    if _delivery() == "asyncjobs.tasks":
        from asyncjobs.tasks import send_email

        await send_email(EMAIL_TO, subject, body)
    else:
        await _fallback_email(subject, body)
    _record(token)


async def sms(token: str) -> None:
    body = f"Benchmark {token}"
    if _delivery() == "asyncjobs.tasks":
        from asyncjobs.tasks import send_sms

        await send_sms(SMS_TO, body)
    else:
        await _fallback_sms(body)
    _record(token)


async def _fallback_email(subject: str, body: str) -> None:
    from email.message import EmailMessage

    import aiosmtplib

    msg = EmailMessage()
    msg["From"] = os.environ.get("SMTP_FROM_EMAIL", "bench@localhost")
    msg["To"] = EMAIL_TO
    msg["Subject"] = subject
    msg.set_content(body)
    await aiosmtplib.send(
        msg,
        hostname=os.environ.get("SMTP_HOST", "127.0.0.1"),
        port=int(os.environ.get("SMTP_PORT", "25")),
        use_tls=False,
        start_tls=False,
    )


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


async def _fallback_sms(body: str) -> None:
    import httpx

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(base_url=os.environ.get("SMS_BASE_URL", "http://127.0.0.1"))
        _clients[loop] = client
    r = await client.post(
        "/2010-04-01/Accounts/ACbench/Messages.json",
        data={"To": SMS_TO, "From": os.environ.get("SMS_FROM_NUMBER", "+15005550001"), "Body": body},
    )
    r.raise_for_status()


# --------------------------------------------------------------------------- SAQ flavours (ctx first, kwargs)


async def saq_noop(ctx: Any, *, token: str) -> None:
    _record(token)


async def saq_noop_async(ctx: Any, *, token: str) -> None:
    _record(token)


async def saq_sleep_async(ctx: Any, *, token: str) -> None:
    await sleep_async(token)


async def saq_sleep_sync(ctx: Any, *, token: str) -> None:
    await asyncio.to_thread(sleep_sync, token)


async def saq_smtp(ctx: Any, *, token: str) -> None:
    await smtp(token)


async def saq_sms(ctx: Any, *, token: str) -> None:
    await sms(token)


SAQ_FUNCTIONS = [saq_noop, saq_noop_async, saq_sleep_async, saq_sleep_sync, saq_smtp, saq_sms]

ASYNC_FUNCTIONS = {"noop": noop_async, "noop_async": noop_async, "sleep_async": sleep_async,
                   "timed_sleep_async": timed_sleep_async, "smtp": smtp, "sms": sms}
