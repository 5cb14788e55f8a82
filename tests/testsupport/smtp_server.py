"""A real, in-process aiosmtpd SMTP server for tests.

Runs in its own thread (aiosmtpd's threaded Controller), so it serves both
in-process async tests and subprocess workers.  Supports plain, STARTTLS and
implicit TLS (certificate from a ``trustme`` CA made by the test), AUTH, and
fault injection:

* ``reject_rcpt[address] = "550 5.1.1 user unknown"`` -- reply to RCPT TO;
* ``mail_replies[n] = "421 ..."`` -- reply to the n-th MAIL FROM (1-based);
* ``data_replies[n] = "451 ..."`` -- reply to the n-th DATA (message not recorded);
* ``drop_data = {n}`` -- drop the connection after receiving the n-th DATA,
  before replying (message not recorded);
* ``accept_then_drop = {n}`` -- record the n-th DATA's message, then drop the
  connection before replying (the server has the message; the client cannot know).

It counts connections and records every accepted message.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int

    def parsed(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


@dataclass
class _State:
    messages: list[ReceivedMessage] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    mail_count: int = 0
    data_count: int = 0
    reject_rcpt: dict[str, str] = field(default_factory=dict)
    mail_replies: dict[int, str] = field(default_factory=dict)
    data_replies: dict[int, str] = field(default_factory=dict)
    drop_data: set[int] = field(default_factory=set)
    accept_then_drop: set[int] = field(default_factory=set)
    auth_logins: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Handler:
    def __init__(self, state: _State) -> None:
        self.state = state

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        with self.state.cond:
            self.state.mail_count += 1
            reply = self.state.mail_replies.get(self.state.mail_count)
        if reply:
            if reply.startswith("421"):
                # like a real server: reply, then close the connection
                assert server.transport is not None
                asyncio.get_running_loop().call_soon(server.transport.close)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.state.reject_rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.state.cond:
            self.state.data_count += 1
            n = self.state.data_count
            drop = n in self.state.drop_data
            accept_then_drop = n in self.state.accept_then_drop
            reply = self.state.data_replies.get(n)
        if drop:
            assert server.transport is not None
            server.transport.abort()
            await asyncio.Event().wait()  # cancelled by connection_lost
        if reply:
            return reply
        with self.state.cond:
            self.state.messages.append(
                ReceivedMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or b""),
                    connection=getattr(server, "connection_number", 0),
                )
            )
            self.state.cond.notify_all()
        if accept_then_drop:
            assert server.transport is not None
            server.transport.abort()
            await asyncio.Event().wait()  # cancelled by connection_lost
        return "250 Message accepted for delivery"


class _CountingSMTP(SMTP):  # type: ignore[misc]
    def __init__(self, handler: Any, state: _State, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._state = state
        self.connection_number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the STARTTLS upgrade of an existing connection
            with self._state.cond:
                self._state.connections += 1
                self.connection_number = self._state.connections
                self._state.open_connections += 1
                self._open = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if getattr(self, "_open", False):
            self._open = False
            with self._state.cond:
                self._state.open_connections -= 1
                self._state.cond.notify_all()
        super().connection_lost(error)


class _Controller(Controller):  # type: ignore[misc]
    def __init__(self, handler: _Handler, state: _State, **kwargs: Any) -> None:
        self._state = state
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            # implicit TLS: AUTH is encrypted, but aiosmtpd cannot tell and warns
            warnings.simplefilter("ignore", UserWarning)
            return _CountingSMTP(self.handler, self._state, **self.SMTP_kwargs)


class SmtpTestServer:
    """aiosmtpd server on 127.0.0.1.

    ``tls``: "none", "starttls" (requires STARTTLS) or "tls" (implicit TLS); TLS
    modes need ``server_ssl_context``.  ``users`` enables AUTH (LOGIN/PLAIN).
    """

    def __init__(
        self,
        *,
        tls: str = "none",
        server_ssl_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.state = _State()
        self.port = free_port()
        self.host = "127.0.0.1"
        self.tls = tls
        self.users = users
        kwargs: dict[str, Any] = {"hostname": self.host, "port": self.port, "ready_timeout": 10}
        if tls == "starttls":
            kwargs.update(tls_context=server_ssl_context, require_starttls=True)
        elif tls == "tls":
            kwargs.update(ssl_context=server_ssl_context)
        if users is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=tls == "starttls",  # implicit TLS is already encrypted
            )
        self._controller = _Controller(_Handler(self.state), self.state, **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.users is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = self.users.get(login) == auth_data.password.decode()
        if ok:
            self.state.auth_logins.append(login)
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpTestServer:
        self._controller.start()
        with self.state.cond:
            # the controller's readiness probe opened one connection
            self.state.connections = 0
            deadline = time.monotonic() + 10
            while self.state.open_connections > 0 and time.monotonic() < deadline:
                self.state.cond.wait(0.1)
            self.state.open_connections = 0
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observations ----------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self.state.cond:
            return list(self.state.messages)

    @property
    def connections(self) -> int:
        with self.state.cond:
            return self.state.connections

    @property
    def open_connections(self) -> int:
        with self.state.cond:
            return self.state.open_connections

    def wait_until_no_open_connections(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.state.cond:
            while self.state.open_connections > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.state.open_connections} connections still open")
                self.state.cond.wait(remaining)

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        deadline = time.monotonic() + timeout
        with self.state.cond:
            while len(self.state.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} messages, got {len(self.state.messages)}")
                self.state.cond.wait(remaining)
            return list(self.state.messages)
