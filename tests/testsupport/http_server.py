"""A real, in-process aiohttp server speaking Twilio's Messages API and a generic SMS webhook.

Runs its own event loop in a thread, so it serves in-process async tests and
subprocess workers alike.  Endpoints:

* ``POST /2010-04-01/Accounts/{sid}/Messages.json`` -- form ``To``/``From``/``Body``,
  basic auth ``sid:token``; answers 201 JSON ``{"sid": "SM...", "status": "queued", ...}``.
* ``POST /webhook`` -- JSON ``{"to", "from", "body"}``, ``Authorization: Bearer <token>``;
  answers 201 JSON ``{"id": "..."}``.

Fault injection: :meth:`HttpTestServer.script` queues responses for the next
requests (e.g. ``(429, {"Retry-After": "0"})``, ``(500,)``, ``(400,)``);
``fail_for[number] = status`` answers ``status`` for every message to ``number``.
Every request is recorded (``requests``); ``delivered`` lists successful sends.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None
    status: int = 0
    peer: tuple[str, int] | None = None


def _peer(request: web.Request) -> tuple[str, int] | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return (str(peer[0]), int(peer[1])) if peer else None


class HttpTestServer:
    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "twilio-token",
        bearer_token: str = "webhook-token",
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.bearer_token = bearer_token
        self.requests: list[RecordedRequest] = []
        self.delivered: list[RecordedRequest] = []
        self.fail_for: dict[str, int] = {}
        self._script: collections.deque[tuple[int, dict[str, str]]] = collections.deque()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- control -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhook"

    def script(self, *responses: tuple[int] | tuple[int, dict[str, str]]) -> None:
        with self._cond:
            for r in responses:
                self._script.append((r[0], r[1] if len(r) > 1 else {}))  # type: ignore[misc]

    def start(self) -> HttpTestServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="http-test-server")
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("HTTP test server did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> HttpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_delivered(self, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.delivered) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} delivered SMS, got {len(self.delivered)}")
                self._cond.wait(remaining)
            return list(self.delivered)

    # -- server ------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._twilio)
        app.router.add_post("/webhook", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _next_fault(self, to: str) -> tuple[int, dict[str, str]] | None:
        with self._cond:
            if self._script:
                return self._script.popleft()
            if to in self.fail_for:
                return self.fail_for[to], {}
        return None

    def _record(self, rec: RecordedRequest, delivered: bool) -> None:
        with self._cond:
            self.requests.append(rec)
            if delivered:
                self.delivered.append(rec)
            self._cond.notify_all()

    async def _twilio(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        rec = RecordedRequest(request.path, dict(request.headers), form=form, peer=_peer(request))
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.match_info["sid"] != self.account_sid or request.headers.get("Authorization") != expected:
            rec.status = 401
            self._record(rec, False)
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        missing = [k for k in ("To", "From", "Body") if not form.get(k)]
        if missing:
            rec.status = 400
            self._record(rec, False)
            return web.json_response(
                {"code": 21604, "message": f"A '{missing[0]}' parameter is required.", "status": 400},
                status=400,
            )
        fault = self._next_fault(form["To"])
        if fault is not None:
            status, headers = fault
            rec.status = status
            self._record(rec, False)
            body = {
                "code": 21211 if status == 400 else 20429 if status == 429 else 20500,
                "message": f"injected HTTP {status}",
                "status": status,
            }
            return web.json_response(body, status=status, headers=headers)
        sid = "SM" + uuid.uuid4().hex
        rec.status = 201
        self._record(rec, True)
        return web.json_response(
            {
                "sid": sid,
                "status": "queued",
                "to": form["To"],
                "from": form["From"],
                "body": form["Body"],
                "account_sid": self.account_sid,
            },
            status=201,
        )

    async def _webhook(self, request: web.Request) -> web.Response:
        data = await request.json()
        rec = RecordedRequest(request.path, dict(request.headers), json=data, peer=_peer(request))
        if request.headers.get("Authorization") != f"Bearer {self.bearer_token}":
            rec.status = 401
            self._record(rec, False)
            return web.json_response({"error": "unauthorized"}, status=401)
        fault = self._next_fault(str(data.get("to")))
        if fault is not None:
            status, headers = fault
            rec.status = status
            self._record(rec, False)
            return web.json_response({"error": f"injected HTTP {status}"}, status=status, headers=headers)
        rec.status = 201
        self._record(rec, True)
        return web.json_response({"id": uuid.uuid4().hex}, status=201)
