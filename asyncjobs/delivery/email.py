"""Email messages, MIME building and senders (SMTP pool, console).

Nothing here reads settings or knows about Redis or the worker: senders are
built from a plain :class:`SmtpConfig` by the composition layer
(:mod:`asyncjobs.delivery.runtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.policy
import email.utils
import logging
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from asyncjobs._extras import missing_extra
from asyncjobs.delivery.errors import (
    AuthenticationError,
    DeliveryConfigurationError,
    DeliveryError,
    HeaderInjectionError,
    InvalidAddressError,
    PermanentDeliveryError,
    RecipientRejectedError,
    TransientDeliveryError,
)

# Messages, validation and the console backend need nothing beyond the standard library, so the
# settings and the tasks import this module under any extra ([sms] alone included); the SMTP sender
# needs aiosmtplib (the `email` extra) and says so when it is built without it.
_AIOSMTPLIB_MISSING: ImportError | None = None
if TYPE_CHECKING:
    import aiosmtplib
else:
    try:
        import aiosmtplib
    except ImportError as _exc:  # pragma: no cover - depends on the install
        aiosmtplib = None
        _AIOSMTPLIB_MISSING = _exc

__all__ = [
    "ConsoleEmailSender",
    "EmailMessage",
    "EmailSendResult",
    "EmailSender",
    "PreparedEmail",
    "SmtpConfig",
    "SmtpEmailSender",
    "TlsMode",
    "build_mime",
    "validate_email_address",
]

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=BaseException)

TlsMode = Literal["none", "starttls", "tls"]

_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' and space
_RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Reply-To",
        "Date",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    )
)


def _check_header_value(what: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjectionError(
            f"{what} contains a line break or NUL ({value!r}); header values must be a single line. "
            "Remove CR/LF characters (possible header injection attempt); nothing was sent."
        )


def validate_email_address(address: str, *, what: str = "address") -> str:
    """Validate ``address`` (bare ``local@domain``) and return it in ASCII form.

    International domain names are converted to IDNA (punycode).  Raises
    :class:`InvalidAddressError` (or :class:`HeaderInjectionError` for CR/LF).
    """
    if not isinstance(address, str):
        raise InvalidAddressError(f"{what} must be a string, got {type(address).__name__}: {address!r}")
    _check_header_value(what, address)
    addr = address.strip()
    local, sep, domain = addr.rpartition("@")
    hint = "use the form name@example.com (no display name, spaces or angle brackets)"
    if not sep or not local or not domain:
        raise InvalidAddressError(f"invalid {what} {address!r}: {hint}; nothing was sent")
    if not _LOCAL_RE.match(local) or len(local) > 64:
        raise InvalidAddressError(
            f"invalid {what} {address!r}: the part before '@' is not a valid ASCII local part; {hint}; "
            "nothing was sent"
        )
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidAddressError(
            f"invalid {what} {address!r}: domain {domain!r} is not a valid host name; nothing was sent"
        ) from None
    labels = ascii_domain.rstrip(".").split(".")
    if not all(_LABEL_RE.match(label) for label in labels) or len(ascii_domain) > 253:
        raise InvalidAddressError(
            f"invalid {what} {address!r}: domain {domain!r} is not a valid host name; nothing was sent"
        )
    result = f"{local}@{ascii_domain}"
    if len(result) > 254:
        raise InvalidAddressError(f"invalid {what} {address!r}: longer than 254 characters; nothing was sent")
    return result


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class EmailMessage:
    """An email to send.  Lists are normalised to tuples; validation happens in :meth:`validate`."""

    to: tuple[str, ...]
    subject: str
    body: str
    from_email: str
    html_body: str | None = None
    from_name: str | None = None
    reply_to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", _as_tuple(self.to))
        object.__setattr__(self, "reply_to", _as_tuple(self.reply_to))
        object.__setattr__(self, "cc", _as_tuple(self.cc))
        object.__setattr__(self, "bcc", _as_tuple(self.bcc))
        hdrs: object = self.headers
        if isinstance(hdrs, Mapping):
            object.__setattr__(self, "headers", tuple((str(k), str(v)) for k, v in hdrs.items()))
        else:
            object.__setattr__(self, "headers", tuple((str(k), str(v)) for k, v in self.headers))

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        """Every recipient (to + cc + bcc), de-duplicated, in order."""
        return tuple(dict.fromkeys((*self.to, *self.cc, *self.bcc)))

    def validate(self) -> None:
        """Reject malformed addresses and header injection before anything is sent."""
        if not self.to:
            raise InvalidAddressError(
                "no recipient given: pass at least one address in 'to'; nothing was sent"
            )
        for name, values in (
            ("to", self.to),
            ("cc", self.cc),
            ("bcc", self.bcc),
            ("reply_to", self.reply_to),
        ):
            for value in values:
                validate_email_address(value, what=f"{name} address")
        validate_email_address(self.from_email, what="from address")
        _check_header_value("subject", self.subject)
        if self.from_name is not None:
            _check_header_value("from name", self.from_name)
        for hname, hvalue in self.headers:
            if not _HEADER_NAME_RE.match(hname):
                raise HeaderInjectionError(
                    f"invalid header name {hname!r}: use printable ASCII without ':' or spaces; "
                    "nothing was sent"
                )
            if hname.lower() in _RESERVED_HEADERS:
                raise PermanentDeliveryError(
                    f"header {hname!r} cannot be set through 'headers'; use the dedicated argument instead "
                    "(to, cc, bcc, subject, reply_to, from_email, from_name)"
                )
            _check_header_value(f"header {hname}", hvalue)


@dataclass(frozen=True)
class PreparedEmail:
    """Wire-ready message: the bytes are built once so retries resend the same Message-ID."""

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    subject: str


@dataclass(frozen=True)
class EmailSendResult:
    message_id: str
    accepted: tuple[str, ...]
    #: recipients the server refused while accepting the message for the others: address -> reply.
    refused: Mapping[str, str] = field(default_factory=dict)
    backend: str = "smtp"

    def as_dict(self) -> dict[str, object]:
        return {
            "message_id": self.message_id,
            "accepted": list(self.accepted),
            "refused": dict(self.refused),
            "backend": self.backend,
        }


def _address(addr: str, name: str | None = None) -> Address:
    local, _, domain = validate_email_address(addr).rpartition("@")
    return Address(display_name=name or "", username=local, domain=domain)


def build_mime(message: EmailMessage) -> PreparedEmail:
    """Validate ``message`` and build its MIME bytes (text, or multipart/alternative with HTML).

    Unicode subjects and display names are RFC 2047 encoded; a Message-ID and
    Date are added unless a Message-ID header was supplied.
    """
    message.validate()
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    sender = validate_email_address(message.from_email, what="from address")
    msg["From"] = _address(sender, message.from_name)
    msg["To"] = [_address(a) for a in message.to]
    if message.cc:
        msg["Cc"] = [_address(a) for a in message.cc]
    if message.reply_to:
        msg["Reply-To"] = [_address(a) for a in message.reply_to]
    msg["Subject"] = message.subject
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    message_id = next((v for k, v in message.headers if k.lower() == "message-id"), None)
    if message_id is None:
        message_id = email.utils.make_msgid(domain=sender.rpartition("@")[2])
        msg["Message-ID"] = message_id
    msg["MIME-Version"] = "1.0"
    for hname, hvalue in message.headers:
        msg[hname] = hvalue
    msg.set_content(message.body, subtype="plain", charset="utf-8")
    if message.html_body is not None:
        msg.add_alternative(message.html_body, subtype="html", charset="utf-8")
    return PreparedEmail(
        message_id=message_id,
        sender=sender,
        recipients=tuple(validate_email_address(a) for a in message.envelope_recipients),
        data=msg.as_bytes(),
        subject=message.subject,
    )


class EmailSender(Protocol):
    """What the tasks need from an email backend."""

    async def send_prepared(self, prepared: PreparedEmail) -> EmailSendResult: ...

    async def aclose(self) -> None: ...


class ConsoleEmailSender:
    """Development backend: logs the message instead of sending it."""

    backend = "console"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self.sent: int = 0

    async def send(self, message: EmailMessage) -> EmailSendResult:
        return await self.send_prepared(build_mime(message))

    async def send_prepared(self, prepared: PreparedEmail) -> EmailSendResult:
        self.sent += 1
        self._log.info(
            "console email backend (not sent): from=%s to=%s subject=%r message_id=%s\n%s",
            prepared.sender,
            ", ".join(prepared.recipients),
            prepared.subject,
            prepared.message_id,
            prepared.data.decode("utf-8", "replace"),
        )
        return EmailSendResult(prepared.message_id, prepared.recipients, {}, backend="console")

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return "ConsoleEmailSender()"


@dataclass(frozen=True)
class SmtpConfig:
    """Plain SMTP connection settings (the password is excluded from repr)."""

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsMode = "starttls"
    timeout: float = 30.0
    pool_size: int = 10
    max_messages_per_connection: int = 100
    ca_file: str | None = None
    validate_certs: bool = True
    local_hostname: str | None = None
    #: allow AUTH over an unencrypted connection (``tls="none"``), e.g. to a relay on a trusted local network
    allow_insecure_auth: bool = False

    def __post_init__(self) -> None:
        if self.tls not in ("none", "starttls", "tls"):
            raise DeliveryConfigurationError(
                f"SMTP TLS mode {self.tls!r} is invalid: use none, starttls or tls"
            )
        if self.username and self.tls == "none" and not self.allow_insecure_auth:
            raise DeliveryConfigurationError(
                f"SMTP AUTH for user {self.username!r} refused: the TLS mode is 'none' (SMTP_TLS=none), so the "
                "password would cross the network unencrypted. Use starttls or tls, or allow it explicitly "
                "(SMTP_ALLOW_INSECURE_AUTH=true) for a relay on a trusted local network; nothing was sent"
            )
        if self.pool_size < 1:
            raise DeliveryConfigurationError(f"SMTP pool size must be >= 1, got {self.pool_size}")
        if self.max_messages_per_connection < 1:
            raise DeliveryConfigurationError(
                f"SMTP max messages per connection must be >= 1, got {self.max_messages_per_connection}"
            )


class _StaleConnection(Exception):
    """A pooled connection failed before any message data was sent: safe to retry at once."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(eq=False)
class _Conn:
    smtp: aiosmtplib.SMTP
    sent: int = 0
    reused: bool = False


def _find_in_chain(exc: BaseException, kind: type[_E]) -> _E | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _slow_down(exc: aiosmtplib.SMTPResponseException) -> bool:
    """421/451 with an enhanced status 4.7.x: the server says we send too much (rate, connection or
    policy limits), e.g. ``451 4.7.1 Please try again later, rate limited``; other 4xx keep their meaning."""
    return exc.code in (421, 451) and bool(_POLICY_STATUS.match(exc.message or ""))


_POLICY_STATUS = re.compile(r"\s*4\.7\.\d{1,3}\b")


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def _classify_response(exc: aiosmtplib.SMTPResponseException, context: str) -> DeliveryError:
    if 400 <= exc.code < 500:
        return TransientDeliveryError(
            f"SMTP server temporarily refused {context} ({_reply(exc)}): transient, will be retried",
            code=exc.code, slow_down=_slow_down(exc),
        )
    return PermanentDeliveryError(
        f"SMTP server rejected {context} ({_reply(exc)}): permanent, not retried", code=exc.code
    )


class SmtpEmailSender:
    """Sends through a bounded, per-process pool of reusable aiosmtplib connections.

    * at most ``pool_size`` connections exist at once; callers beyond that wait;
    * idle connections are reused across sends and recycled after
      ``max_messages_per_connection`` messages;
    * a pooled connection found dead (drop, idle timeout, 421) before any data
      was sent is replaced at once; a drop during DATA raises a transient error
      (the server never confirmed acceptance); a message the server accepted is
      never sent again by this class.

    Bound to the event loop it is first used on; :meth:`aclose` closes the pool.
    """

    backend = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        if _AIOSMTPLIB_MISSING is not None:
            raise missing_extra("email", "asyncjobs.delivery.email (the SMTP sender)", _AIOSMTPLIB_MISSING)
        self.config = config
        self._idle: list[_Conn] = []
        self._sem = asyncio.Semaphore(config.pool_size)
        self._closed = False
        self._in_use: set[_Conn] = set()
        #: number of TCP connections opened so far (observability/tests).
        self.connections_opened = 0
        self._tls_context: ssl.SSLContext | None = None
        if config.tls != "none" and config.ca_file:
            self._tls_context = ssl.create_default_context(cafile=config.ca_file)
            if not config.validate_certs:
                self._tls_context.check_hostname = False
                self._tls_context.verify_mode = ssl.CERT_NONE

    def __repr__(self) -> str:
        return f"SmtpEmailSender({self.config!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: EmailMessage) -> EmailSendResult:
        return await self.send_prepared(build_mime(message))

    async def send_prepared(self, prepared: PreparedEmail) -> EmailSendResult:
        if self._closed:
            raise TransientDeliveryError("SMTP sender is closed (worker shutting down): will be retried")
        while True:
            conn = await self._acquire()
            reusable = False
            try:
                result = await self._transact(conn, prepared)
                reusable = True
                return result
            except _StaleConnection as stale:
                if not conn.reused:
                    raise stale.error from stale.__cause__
                log.debug("pooled SMTP connection was stale (%s); reconnecting", stale)
                continue
            except _ReusableFailure as failure:
                reusable = True
                raise failure.error from failure.__cause__
            finally:
                await self._release(conn, reusable)

    async def aclose(self) -> None:
        """Close every pooled connection (QUIT, then hard close on error)."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._close_conn(c) for c in idle), return_exceptions=True)

    # -- pool ------------------------------------------------------------------

    async def _acquire(self) -> _Conn:
        await self._sem.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if conn.smtp.is_connected:
                    conn.reused = True
                    self._in_use.add(conn)
                    return conn
                await self._close_conn(conn)
            conn = _Conn(await self._connect())
            self._in_use.add(conn)
            return conn
        except BaseException:
            self._sem.release()
            raise

    async def _release(self, conn: _Conn, reusable: bool) -> None:
        self._in_use.discard(conn)
        try:
            if (
                reusable
                and not self._closed
                and conn.smtp.is_connected
                and conn.sent < self.config.max_messages_per_connection
            ):
                self._idle.append(conn)
            else:
                await self._close_conn(conn)
        finally:
            self._sem.release()

    async def _close_conn(self, conn: _Conn) -> None:
        smtp = conn.smtp
        if smtp.is_connected:
            try:
                await asyncio.wait_for(smtp.quit(), timeout=min(self.config.timeout, 5.0))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                with contextlib.suppress(Exception):
                    smtp.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username or None,
            password=cfg.password if cfg.username else None,
            use_tls=cfg.tls == "tls",
            start_tls=cfg.tls == "starttls",
            validate_certs=cfg.validate_certs,
            tls_context=self._tls_context,
            timeout=cfg.timeout,
            local_hostname=cfg.local_hostname,
        )
        where = f"{cfg.host}:{cfg.port}"
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()
            if 400 <= exc.code < 500:
                raise TransientDeliveryError(
                    f"SMTP server {where} temporarily refused authentication ({_reply(exc)}): "
                    "will be retried",
                    code=exc.code,
                ) from None
            raise AuthenticationError(
                f"SMTP server {where} rejected the credentials for user {cfg.username!r} ({_reply(exc)}): "
                "check the SMTP user and password; permanent, not retried",
                code=exc.code,
            ) from None
        except aiosmtplib.SMTPNotSupported as exc:
            smtp.close()
            raise DeliveryConfigurationError(
                f"SMTP server {where} does not support what the configuration requires ({exc}): "
                "check the TLS mode (none/starttls/tls) and credentials; permanent, not retried"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            smtp.close()
            raise DeliveryConfigurationError(
                f"TLS certificate of SMTP server {where} could not be verified ({exc.verify_message}): "
                "trust its CA (CA file setting) or fix the host name; permanent, not retried"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise _classify_response(exc, f"the connection to {where}") from None
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
            OSError,
        ) as exc:
            smtp.close()
            cert_error = _find_in_chain(exc, ssl.SSLCertVerificationError)
            if cert_error is not None:
                raise DeliveryConfigurationError(
                    f"TLS certificate of SMTP server {where} could not be verified "
                    f"({cert_error.verify_message}): trust its CA (CA file setting) or fix the host name; "
                    "permanent, not retried"
                ) from None
            raise TransientDeliveryError(
                f"could not connect to SMTP server {where} ({type(exc).__name__}: {exc}): "
                "transient, will be retried; check that the server is reachable",
            ) from None
        except aiosmtplib.SMTPException as exc:
            # e.g. "SMTP AUTH extension not supported": a configuration mismatch
            smtp.close()
            raise DeliveryConfigurationError(
                f"SMTP server {where} cannot be used with this configuration ({exc}): "
                "check the TLS mode (none/starttls/tls), port and credentials; permanent, not retried"
            ) from None
        self.connections_opened += 1
        return smtp

    # -- one SMTP transaction --------------------------------------------------

    async def _transact(self, conn: _Conn, prepared: PreparedEmail) -> EmailSendResult:
        smtp = conn.smtp
        where = f"{self.config.host}:{self.config.port}"
        # Stage 1: envelope.  Nothing of the message has been sent yet, so a
        # connection-level failure here is safe to retry on a fresh connection.
        try:
            await smtp.mail(prepared.sender)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise _StaleConnection(_classify_response(exc, f"the sender at {where}")) from None
            await self._rset(smtp)
            raise _ReusableFailure(
                _classify_response(exc, f"sender {prepared.sender} (MAIL FROM at {where})")
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _StaleConnection(
                TransientDeliveryError(
                    f"connection to SMTP server {where} failed before sending ({type(exc).__name__}: {exc}): "
                    "transient, will be retried"
                )
            ) from None

        accepted: list[str] = []
        refused: dict[str, str] = {}
        refused_codes: list[int] = []
        for rcpt in prepared.recipients:
            try:
                await smtp.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 421:
                    raise _StaleConnection(_classify_response(exc, f"recipient {rcpt} at {where}")) from None
                refused[rcpt] = _reply(exc)
                refused_codes.append(exc.code)
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise _StaleConnection(
                    TransientDeliveryError(
                        f"connection to SMTP server {where} failed before sending ({type(exc).__name__}: "
                        f"{exc}): transient, will be retried"
                    )
                ) from None
        if not accepted:
            await self._rset(smtp)
            detail = "; ".join(f"{r} ({reply})" for r, reply in refused.items())
            if any(400 <= c < 500 for c in refused_codes):
                raise _ReusableFailure(
                    TransientDeliveryError(
                        f"SMTP server temporarily refused every recipient: {detail}: "
                        "transient, will be retried",
                        code=refused_codes[0],
                    )
                )
            raise _ReusableFailure(
                RecipientRejectedError(
                    f"SMTP server rejected recipient {detail}: permanent, not retried; check the address",
                    code=refused_codes[0],
                )
            )

        # Stage 2: DATA.  From here on a failure is ambiguous at the network
        # level; we only count the message as sent on the server's 2xx reply.
        try:
            await smtp.data(prepared.data)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or not smtp.is_connected:
                raise _classify_response(exc, f"the message at {where}") from None
            await self._rset(smtp)
            raise _ReusableFailure(_classify_response(exc, f"the message (DATA at {where})")) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(
                f"connection to SMTP server {where} dropped while sending the message data "
                f"({type(exc).__name__}: {exc}); the server never confirmed acceptance: transient, "
                "will be retried"
            ) from None
        conn.sent += 1
        if refused:
            log.warning(
                "SMTP server accepted message %s but refused some recipients: %s",
                prepared.message_id,
                refused,
            )
        return EmailSendResult(prepared.message_id, tuple(accepted), refused, backend="smtp")

    async def _rset(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            try:
                await smtp.rset()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()


class _ReusableFailure(Exception):
    """A classified failure after which the connection is still in a clean state."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(str(error))
        self.error = error
