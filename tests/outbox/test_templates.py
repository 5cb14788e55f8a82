"""Templates render every supported combination and escape user values."""

from __future__ import annotations

import pytest

from asyncjobs.outbox.templates import (
    RenderedEmail,
    RenderedSms,
    TemplateError,
    render,
    render_user_invitation_email,
)


def test_2fa_email_and_sms() -> None:
    email = render("2fa_code", "email", "a@example.com", {"code": "482913"})
    assert isinstance(email, RenderedEmail)
    assert "482913" in email.text and "482913" in email.html
    assert "482913" not in repr(email)
    sms = render("2fa_code", "sms", "+353871234567", {"code": "482913", "expires_minutes": 5})
    assert isinstance(sms, RenderedSms)
    assert sms.body == "Your verification code is 482913. It expires in 5 minutes."
    assert "482913" not in repr(sms)


def test_invitation_escapes_user_values_in_html_only() -> None:
    msg = render_user_invitation_email(
        email="bob@example.com",
        inviter='<script>alert("x")</script> & Co',
        accept_url='https://app.example.com/invite?a=1&b="2"',
    )
    assert "<script>" not in msg.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in msg.html
    assert 'href="https://app.example.com/invite?a=1&amp;b=&quot;2&quot;"' in msg.html
    # the plain-text part is not HTML: it keeps the values verbatim
    assert '<script>alert("x")</script> & Co has invited you' in msg.text
    assert 'https://app.example.com/invite?a=1&b="2"' in msg.text
    assert msg.subject == '<script>alert("x")</script> & Co invited you'


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/relative", "https://x.example/a b", "ftp://x.example/"])
def test_invitation_rejects_non_http_urls(url: str) -> None:
    with pytest.raises(TemplateError, match="accept_url"):
        render("user_invitation", "email", "bob@example.com", {"inviter": "Ann", "accept_url": url})


def test_header_injection_in_subject_values_is_rejected() -> None:
    with pytest.raises(TemplateError, match="line break"):
        render_user_invitation_email(email="b@example.com", inviter="Ann\r\nBcc: x@evil", accept_url="https://a.b/")


@pytest.mark.parametrize(
    ("kind", "channel", "payload", "match"),
    [
        ("newsletter", "email", {}, "unknown notification kind 'newsletter'"),
        ("user_invitation", "sms", {"inviter": "A", "accept_url": "https://a.b/"}, "cannot be sent by 'sms'"),
        ("2fa_code", "email", {}, "no 'code'"),
    ],
)
def test_unrenderable(kind: str, channel: str, payload: dict[str, str], match: str) -> None:
    with pytest.raises(TemplateError, match=match):
        render(kind, channel, "x@example.com", payload)
