from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from asyncjobs.delivery.email import (
    ConsoleEmailSender,
    EmailMessage,
    SmtpConfig,
    SmtpEmailSender,
    build_mime,
    validate_email_address,
)
from asyncjobs.delivery.errors import (
    AuthenticationError,
    DeliveryConfigurationError,
    HeaderInjectionError,
    InvalidAddressError,
    PermanentDeliveryError,
    RecipientRejectedError,
    TransientDeliveryError,
)
from tests.testsupport.smtp_server import SmtpTestServer, free_port


def msg(to: str | list[str] = "bob@example.com", **kw: object) -> EmailMessage:
    kw.setdefault("subject", "Hello")
    kw.setdefault("body", "Plain body")
    kw.setdefault("from_email", "noreply@example.com")
    return EmailMessage(to=to, **kw)  # type: ignore[arg-type]


SenderFactory = Callable[..., SmtpEmailSender]


@pytest.fixture
async def make_sender(smtp_server: SmtpTestServer) -> AsyncIterator[SenderFactory]:
    made: list[SmtpEmailSender] = []

    def factory(**kw: object) -> SmtpEmailSender:
        kw.setdefault("host", smtp_server.host)
        kw.setdefault("port", smtp_server.port)
        kw.setdefault("tls", "none")
        kw.setdefault("timeout", 10.0)
        sender = SmtpEmailSender(SmtpConfig(**kw))  # type: ignore[arg-type]
        made.append(sender)
        return sender

    yield factory
    for s in made:
        await s.aclose()


# -- MIME and validation ---------------------------------------------------------


def test_text_only_mime() -> None:
    p = build_mime(msg(cc=["carol@example.com"], bcc="dave@example.com", reply_to="help@example.com"))
    parsed = __import__("email").message_from_bytes(p.data)
    assert parsed.get_content_type() == "text/plain"
    assert parsed["To"] == "bob@example.com"
    assert parsed["Cc"] == "carol@example.com"
    assert parsed["Bcc"] is None  # bcc is envelope-only
    assert parsed["Reply-To"] == "help@example.com"
    assert parsed["Message-ID"] == p.message_id and p.message_id.endswith("@example.com>")
    assert parsed["Date"]
    assert p.recipients == ("bob@example.com", "carol@example.com", "dave@example.com")


def test_multipart_unicode_and_extra_headers() -> None:
    p = build_mime(
        msg(
            subject="Grüße € ✓ done",
            from_name="Zoë Ünicode",
            html_body="<p>Hé</p>",
            body="Hé there",
            headers={"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"},
        )
    )
    raw = p.data
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # non-ASCII headers are RFC 2047 encoded
    assert b"=?utf-8?" in head
    import email
    import email.policy

    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert str(parsed["Subject"]) == "Grüße € ✓ done"
    assert parsed["From"].addresses[0].display_name == "Zoë Ünicode"
    assert parsed["X-Campaign"] == "spring"
    parts = [part.get_content_type() for part in parsed.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Hé</p>"  # type: ignore[union-attr]


def test_idn_domain_is_punycoded() -> None:
    assert validate_email_address("user@bücher.example") == "user@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nX: y"},
        {"from_name": "Eve\r\nBcc: x@example.com"},
        {"headers": {"X-Track": "a\r\nBcc: x@example.com"}},
        {"headers": {"X Bad:Name": "v"}},
        {"to": "bob@example.com\r\nBcc: x@example.com"},
    ],
)
async def test_header_injection_rejected_before_sending(
    kwargs: dict[str, object], smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    sender = make_sender()
    with pytest.raises(HeaderInjectionError) as info:
        await sender.send(msg(**kwargs))  # type: ignore[arg-type]
    assert "nothing was sent" in str(info.value)
    assert smtp_server.connections == 0


@pytest.mark.parametrize(
    "address",
    [
        "plainaddress",
        "@example.com",
        "bob@",
        "bob@@example.com",
        "bob smith@example.com",
        "Bob <bob@example.com>",
        "bob@-bad-.com",
        "bob..x@example.com",
        "bob@exa_mple.com",
    ],
)
async def test_invalid_addresses_rejected(
    address: str, smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    sender = make_sender()
    with pytest.raises(InvalidAddressError) as info:
        await sender.send(msg(to=["ok@example.com", address]))
    assert repr(address) in str(info.value)
    assert isinstance(info.value, PermanentDeliveryError)
    assert smtp_server.connections == 0


def test_reserved_headers_refused() -> None:
    with pytest.raises(PermanentDeliveryError, match="Bcc"):
        build_mime(msg(headers={"Bcc": "x@example.com"}))


def test_no_recipient() -> None:
    with pytest.raises(InvalidAddressError, match="no recipient"):
        build_mime(msg(to=[]))


# -- sending through a real SMTP server ----------------------------------------------


async def test_exactly_what_was_sent_arrives(smtp_server: SmtpTestServer, make_sender: SenderFactory) -> None:
    sender = make_sender()
    result = await sender.send(
        msg(
            ["bob@example.com", "amy@example.com"],
            cc="carol@example.com",
            bcc="dave@example.com",
            subject="Ünïcode",
            html_body="<b>hi</b>",
        )
    )
    (received,) = smtp_server.messages
    assert received.mail_from == "noreply@example.com"
    assert received.rcpt_tos == [
        "bob@example.com",
        "amy@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    parsed = received.parsed()
    assert parsed["Message-ID"] == result.message_id
    assert str(parsed["Subject"]) == "Ünïcode"
    assert parsed["Bcc"] is None
    assert result.accepted == tuple(received.rcpt_tos)
    assert result.refused == {}


async def test_connections_are_reused_and_bounded(
    smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    sender = make_sender(pool_size=3, max_messages_per_connection=1000)
    results = await asyncio.gather(*(sender.send(msg(f"user{i}@example.com")) for i in range(30)))
    messages = smtp_server.wait_for_messages(30)
    assert len(messages) == 30
    assert sorted(m.rcpt_tos[0] for m in messages) == sorted(f"user{i}@example.com" for i in range(30))
    assert len({r.message_id for r in results}) == 30
    assert 1 <= smtp_server.connections <= 3
    assert sender.connections_opened == smtp_server.connections
    # sequential sends keep using the pool
    for i in range(5):
        await sender.send(msg(f"again{i}@example.com"))
    assert smtp_server.connections <= 3
    assert len(smtp_server.messages) == 35


async def test_connection_recycled_after_n_messages(
    smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    sender = make_sender(pool_size=1, max_messages_per_connection=2)
    for i in range(5):
        await sender.send(msg(f"u{i}@example.com"))
    assert [m.connection for m in smtp_server.messages] == [1, 1, 2, 2, 3]


async def test_aclose_closes_pooled_connections(
    smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    sender = make_sender(pool_size=2)
    await asyncio.gather(sender.send(msg()), sender.send(msg()))
    assert smtp_server.open_connections >= 1
    await sender.aclose()
    smtp_server.wait_until_no_open_connections()
    with pytest.raises(TransientDeliveryError, match="closed"):
        await sender.send(msg())


async def test_421_on_pooled_connection_reconnects_without_duplicates(
    smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    sender = make_sender(pool_size=1)
    await sender.send(msg("first@example.com"))
    smtp_server.state.mail_replies[2] = "421 4.3.2 Service shutting down"
    await sender.send(msg("second@example.com"))
    assert [m.rcpt_tos for m in smtp_server.messages] == [["first@example.com"], ["second@example.com"]]
    assert smtp_server.connections == 2


async def test_stale_pooled_connection_after_server_restart(make_sender: SenderFactory) -> None:
    port = free_port()
    server = SmtpTestServer()
    server.port = port
    server._controller.port = port
    with server:
        sender = make_sender(host=server.host, port=port)
        await sender.send(msg())
    server2 = SmtpTestServer()
    server2.port = port
    server2._controller.port = port
    with server2:
        await sender.send(msg("after@example.com"))  # pooled connection is dead: reconnect silently
        assert [m.rcpt_tos for m in server2.messages] == [["after@example.com"]]


async def test_recipient_550_is_permanent(smtp_server: SmtpTestServer, make_sender: SenderFactory) -> None:
    smtp_server.state.reject_rcpt["bob@example.com"] = "550 5.1.1 user unknown"
    sender = make_sender()
    with pytest.raises(RecipientRejectedError) as info:
        await sender.send(msg("bob@example.com"))
    text = str(info.value)
    assert "bob@example.com" in text and "550 5.1.1 user unknown" in text and "permanent" in text
    assert info.value.code == 550
    assert smtp_server.messages == []
    # the connection stays usable after RSET
    await sender.send(msg("amy@example.com"))
    assert smtp_server.connections == 1


async def test_recipient_450_is_transient(smtp_server: SmtpTestServer, make_sender: SenderFactory) -> None:
    smtp_server.state.reject_rcpt["bob@example.com"] = "450 4.2.1 mailbox busy"
    with pytest.raises(TransientDeliveryError, match=r"450 4\.2\.1"):
        await make_sender().send(msg("bob@example.com"))


async def test_partial_refusal_delivers_to_the_rest(
    smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    smtp_server.state.reject_rcpt["bad@example.com"] = "550 5.1.1 user unknown"
    result = await make_sender().send(msg(["bad@example.com", "good@example.com"]))
    assert [m.rcpt_tos for m in smtp_server.messages] == [["good@example.com"]]
    assert result.accepted == ("good@example.com",)
    assert result.refused == {"bad@example.com": "550 5.1.1 user unknown"}


@pytest.mark.parametrize(
    ("reply", "exc_type"),
    [("451 4.3.0 try later", TransientDeliveryError), ("554 5.6.0 message refused", PermanentDeliveryError)],
)
async def test_data_reply_classification(
    reply: str, exc_type: type[Exception], smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    smtp_server.state.data_replies[1] = reply
    sender = make_sender()
    with pytest.raises(exc_type, match=reply.split()[0]):
        await sender.send(msg())
    assert smtp_server.messages == []
    await sender.send(msg())
    assert len(smtp_server.messages) == 1
    assert smtp_server.connections == 1  # connection survived the refusal


async def test_drop_mid_data_is_transient_and_resend_arrives_once(
    smtp_server: SmtpTestServer, make_sender: SenderFactory
) -> None:
    smtp_server.state.drop_data.add(1)
    sender = make_sender()
    prepared = build_mime(msg())
    with pytest.raises(TransientDeliveryError, match="never confirmed"):
        await sender.send_prepared(prepared)
    assert smtp_server.messages == []
    result = await sender.send_prepared(prepared)
    (received,) = smtp_server.messages
    assert received.parsed()["Message-ID"] == result.message_id == prepared.message_id
    assert smtp_server.connections == 2


async def test_server_unreachable_is_transient(make_sender: SenderFactory) -> None:
    sender = make_sender(port=free_port())
    with pytest.raises(TransientDeliveryError, match="could not connect"):
        await sender.send(msg())


# -- TLS and AUTH ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_and_auth(
    mode: str, server_ssl_context: ssl.SSLContext, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncjobs")
    with SmtpTestServer(
        tls=mode, server_ssl_context=server_ssl_context, users={"mailer": "s3cret-pw"}
    ) as srv:
        cfg = SmtpConfig(
            host="127.0.0.1",
            port=srv.port,
            tls=mode,
            username="mailer",  # type: ignore[arg-type]
            password="s3cret-pw",
            ca_file=ca_file,
            timeout=10,
        )
        sender = SmtpEmailSender(cfg)
        try:
            await sender.send(msg())
            await sender.send(msg())
        finally:
            await sender.aclose()
        assert len(srv.messages) == 2
        assert srv.state.auth_logins == ["mailer"]
        assert srv.connections == 1
        assert "s3cret-pw" not in repr(cfg) + repr(sender) + caplog.text


async def test_bad_password_is_permanent_and_not_leaked(
    server_ssl_context: ssl.SSLContext, ca_file: str
) -> None:
    with SmtpTestServer(
        tls="starttls", server_ssl_context=server_ssl_context, users={"mailer": "right"}
    ) as srv:
        sender = SmtpEmailSender(
            SmtpConfig(
                host="127.0.0.1",
                port=srv.port,
                tls="starttls",
                username="mailer",
                password="wrong-pw-123",
                ca_file=ca_file,
                timeout=10,
            )
        )
        with pytest.raises(AuthenticationError) as info:
            await sender.send(msg())
        assert "wrong-pw-123" not in str(info.value) and "mailer" in str(info.value)
        assert srv.messages == []


async def test_untrusted_certificate_is_a_configuration_error(server_ssl_context: ssl.SSLContext) -> None:
    with SmtpTestServer(tls="tls", server_ssl_context=server_ssl_context) as srv:
        sender = SmtpEmailSender(SmtpConfig(host="127.0.0.1", port=srv.port, tls="tls", timeout=10))
        with pytest.raises(DeliveryConfigurationError, match="could not be verified"):
            await sender.send(msg())
        assert srv.messages == []


async def test_console_sender_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asyncjobs.delivery.email")
    result = await ConsoleEmailSender().send(msg(subject="Dev mode"))
    assert result.backend == "console"
    assert "Dev mode" in caplog.text and "bob@example.com" in caplog.text
