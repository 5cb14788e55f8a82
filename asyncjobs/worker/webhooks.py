"""RQ's job webhooks (``Webhook(url, 'finished'|'failed', ...)``), sent with bounds.

A webhook's URL, headers and timeout come from job data, i.e. from whoever can
write to Redis.  Stock RQ sends them from a work-horse with ``urllib`` (a timeout
per socket read, any host); here they are sent on the event loop, never in an
executor, under these rules:

* **Which hosts**: only those given with ``--allow-webhook-host`` when any are
  given; none at all when ``--allow-module`` is set and none are given (job data is
  then untrusted); otherwise any host whose addresses are all public: loopback,
  private, link-local (``169.254.169.254``, cloud metadata) and other special
  addresses are refused unless their host is allowed by name.  The connection goes
  to the address that was checked (no second lookup).
* **One deadline per call** (the webhook's ``timeout``, at most
  :data:`MAX_WEBHOOK_SECONDS`): resolving, connecting, sending and reading the
  status line all count, so a target that never answers costs that much once.
* **No job-chosen** ``Host``, ``Content-Length``, ``Connection`` or
  ``Transfer-Encoding``; a header with a line break refuses the webhook.
* **Logs name** ``scheme://host:port/…`` only: paths and query strings often
  carry tokens.

The request is RQ's: a ``GET``, or a ``POST`` of RQ's JSON payload
(``job_id``, ``func_name``, ``status``, ``enqueued_at``, ``ended_at`` and, for
``failed``, ``exc_info``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("asyncjobs.worker")

#: No webhook call, however long its job says it may take, lasts longer than this.
MAX_WEBHOOK_SECONDS = 30.0
_DROPPED_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def mask_url(url: Any) -> str:
    """``scheme://host:port/…``: what a log may show of a webhook URL (no path, query or credentials)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}/…"


class WebhookPolicy:
    def __init__(self, allowed_hosts: Sequence[str] = (), restricted: bool = False) -> None:
        self.allowed_hosts = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip())
        self.restricted = restricted

    def refusal(self, host: str, addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str | None:
        """Why a webhook to ``host`` (resolved to ``addresses``) is not sent, or None to send it."""
        name = host.lower().rstrip(".")
        if name in self.allowed_hosts:
            return None
        if self.allowed_hosts:
            return f"{name!r} is not a host given with --allow-webhook-host"
        if self.restricted:
            return ("with --allow-module, webhooks go only to hosts given with --allow-webhook-host "
                    f"(add --allow-webhook-host {name} if the job's producer is trusted to call it)")
        special = [str(a) for a in addresses if not a.is_global]
        if special:
            return (f"{name!r} resolves to {', '.join(special)}, a loopback, private, link-local or other "
                    f"non-public address; allow it by name with --allow-webhook-host {name}")
        return None


def payload(
    job_id: str, func_name: str, status: str, enqueued_at: Any, ended_at: Any, exc_string: str | None
) -> dict[str, Any]:
    """RQ's ``Webhook.get_payload``."""
    body: dict[str, Any] = {
        "job_id": job_id,
        "func_name": func_name,
        "status": status,
        "enqueued_at": enqueued_at.isoformat() if enqueued_at else None,
        "ended_at": ended_at.isoformat() if ended_at else None,
    }
    if status == "failed":
        body["exc_info"] = exc_string
    return body


async def send_all(
    hooks: Sequence[Mapping[str, Any]], status: str, body: dict[str, Any], policy: WebhookPolicy
) -> None:
    """Send every webhook of ``hooks`` registered for ``status``; failures are logged, never raised."""
    for hook in hooks:
        if hook.get("job_status") == status:
            await send(hook, body, policy)


async def send(hook: Mapping[str, Any], body: dict[str, Any], policy: WebhookPolicy) -> None:
    url = hook.get("url")
    shown = mask_url(url)
    job_id = body.get("job_id")
    try:
        timeout = float(hook.get("timeout") or 10)
    except (TypeError, ValueError):
        timeout = 10.0
    try:
        async with asyncio.timeout(min(max(timeout, 0.1), MAX_WEBHOOK_SECONDS)):
            refused = await _send(url, hook, body, policy)
    except TimeoutError:
        log.warning("webhook to %s for job %s: no answer within %gs; given up", shown, job_id,
                    min(timeout, MAX_WEBHOOK_SECONDS))
        return
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.warning("failed to send webhook to %s for job %s: %s", shown, job_id, type(exc).__name__)
        return
    if refused:
        log.warning("webhook to %s for job %s not sent: %s", shown, job_id, refused)


async def _send(url: Any, hook: Mapping[str, Any], body: dict[str, Any], policy: WebhookPolicy) -> str | None:
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the URL is not http:// or https://"
    host, https = parts.hostname, parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    method = str(hook.get("method") or "GET").upper()
    if method not in ("GET", "POST"):
        return f"method {method!r} is not GET or POST"
    headers: dict[str, str] = {}
    for k, v in dict(hook.get("headers") or {}).items():
        name, value = str(k), str(v)
        if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
            return "a header name or value holds a line break or is malformed"
        if name.lower() not in _DROPPED_HEADERS:
            headers[name] = value
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    refused = policy.refusal(host, addresses)
    if refused or not addresses:
        return refused or f"{host!r} has no address"
    data = b""
    if method == "POST":
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", **headers}
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if ":" not in host else f"[{host}]"
    if parts.port:
        host_header += f":{parts.port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Connection: close",
             "User-Agent: asyncjobs-webhook", *(f"{k}: {v}" for k, v in headers.items())]
    if method == "POST":
        lines.append(f"Content-Length: {len(data)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + data
    context = ssl.create_default_context() if https else None
    reader, writer = await asyncio.open_connection(
        str(addresses[0]), port, ssl=context, server_hostname=host if https else None
    )
    try:
        writer.write(request)
        await writer.drain()
        await reader.readline()  # the status line: the request was received (RQ ignores the answer too)
    finally:
        writer.close()
    return None


_thread = threading.local()
_rq_send_webhooks: Any = None


@contextlib.contextmanager
def policy_for_rq_code(policy: WebhookPolicy) -> Iterator[None]:
    """While RQ's own code runs in this thread (maintenance: RQ 3 sends the ``failed`` webhooks of
    abandoned jobs), its ``Job.send_webhooks`` goes through :func:`send_all` under ``policy``."""
    _install_rq_hook()
    _thread.policy = policy
    try:
        yield
    finally:
        _thread.policy = None


def _install_rq_hook() -> None:
    global _rq_send_webhooks
    from rq.job import Job

    if _rq_send_webhooks is not None or not hasattr(Job, "send_webhooks"):
        return
    _rq_send_webhooks = Job.send_webhooks

    def send_webhooks(job: Any, status: Any, *, exc_string: str | None = None) -> None:
        policy = getattr(_thread, "policy", None)
        if policy is None:  # RQ code outside asyncjobs' maintenance (another library, a test): as RQ
            _rq_send_webhooks(job, status, exc_string=exc_string)
            return
        name = str(getattr(status, "value", status))
        hooks = [w.to_dict() if hasattr(w, "to_dict") else dict(w) for w in (job.webhooks or [])]
        try:
            func_name = str(job.func_name)
        except Exception:  # undecodable data: the payload says so rather than failing the maintenance pass
            func_name = ""
        body = payload(job.id, func_name, name, job.enqueued_at, job.ended_at, exc_string)
        asyncio.run(send_all(hooks, name, body, policy))  # this thread has no loop; one deadline per call

    setattr(Job, "send_webhooks", send_webhooks)  # noqa: B010 - RQ's method, replaced on purpose


__all__ = ["MAX_WEBHOOK_SECONDS", "WebhookPolicy", "mask_url", "payload", "policy_for_rq_code", "send", "send_all"]
