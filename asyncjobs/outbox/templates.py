"""Message templates for outbox notifications (stdlib only).

Renders to neutral :class:`RenderedEmail` / :class:`RenderedSms` values; the
composition layer turns them into the delivery layer's message types.  Every
user-supplied value is HTML-escaped in HTML bodies, and invitation links must
be ``http(s)`` URLs (no ``javascript:`` links).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping
from dataclasses import dataclass
from string import Template
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "RenderedEmail",
    "RenderedMessage",
    "RenderedSms",
    "TemplateError",
    "check_accept_url",
    "expires_at",
    "render",
    "render_2fa_email",
    "render_2fa_sms",
    "render_user_invitation_email",
    "without_secrets",
]

#: Payload keys that are one-time secrets, per kind: gone from the row once it reaches a final state.
SECRET_PAYLOAD_KEYS: dict[str, tuple[str, ...]] = {"2fa_code": ("code",)}
#: Lifetime of a 2FA code when the payload does not say (minutes).
DEFAULT_2FA_MINUTES = 10


class TemplateError(ValueError):
    """The notification cannot be rendered (unknown kind/channel, bad or missing payload)."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str

    def __repr__(self) -> str:  # bodies may hold a one-time code
        return f"RenderedEmail(subject={self.subject!r})"


@dataclass(frozen=True)
class RenderedSms:
    body: str

    def __repr__(self) -> str:
        return f"RenderedSms(len={len(self.body)})"


RenderedMessage = RenderedEmail | RenderedSms

_HTML_PAGE = Template(
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>$title</title></head>
<body style="font-family: sans-serif; line-height: 1.5;">
$content
</body></html>
"""
)

_2FA_TEXT = Template(
    """Your verification code is: $code

It expires in $minutes minutes. If you did not try to sign in, ignore this message.
"""
)
_2FA_HTML = Template(
    """<p>Your verification code is:</p>
<p style="font-size: 24px; font-weight: bold; letter-spacing: 4px;">$code</p>
<p>It expires in $minutes minutes. If you did not try to sign in, ignore this message.</p>"""
)
_2FA_SMS = Template("Your verification code is $code. It expires in $minutes minutes.")

_INVITE_TEXT = Template(
    """$inviter has invited you ($email) to join.

Accept the invitation here:
$accept_url

If you were not expecting this invitation, you can ignore this email.
"""
)
_INVITE_HTML = Template(
    """<p><strong>$inviter</strong> has invited you ($email) to join.</p>
<p><a href="$accept_url">Accept the invitation</a></p>
<p>Or paste this link into your browser: $accept_url</p>
<p>If you were not expecting this invitation, you can ignore this email.</p>"""
)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _one_line(what: str, value: object) -> str:
    text = str(value)
    if any(c in text for c in "\r\n\x00"):
        raise TemplateError(f"{what} contains a line break or NUL ({text!r}); pass a single-line value")
    return text


def check_accept_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL, else raise :class:`TemplateError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise TemplateError(
            f"invitation accept_url {url!r} is not an absolute http(s) URL without spaces; "
            "pass something like 'https://app.example.com/invite/abc123'"
        )
    return url


def render_2fa_email(code: str, *, minutes: int = 10) -> RenderedEmail:
    code = _one_line("2FA code", code)
    return RenderedEmail(
        subject="Your verification code",
        text=_2FA_TEXT.substitute(code=code, minutes=minutes),
        html=_HTML_PAGE.substitute(
            title="Your verification code",
            content=_2FA_HTML.substitute(code=_esc(code), minutes=_esc(minutes)),
        ),
    )


def render_2fa_sms(code: str, *, minutes: int = 10) -> RenderedSms:
    return RenderedSms(body=_2FA_SMS.substitute(code=_one_line("2FA code", code), minutes=minutes))


def render_user_invitation_email(*, email: str, inviter: str, accept_url: str) -> RenderedEmail:
    inviter = _one_line("inviter", inviter)
    email = _one_line("invitee email", email)
    accept_url = check_accept_url(accept_url)
    subject = f"{inviter} invited you"
    return RenderedEmail(
        subject=subject,
        text=_INVITE_TEXT.substitute(inviter=inviter, email=email, accept_url=accept_url),
        html=_HTML_PAGE.substitute(
            title=_esc(subject),
            content=_INVITE_HTML.substitute(
                inviter=_esc(inviter), email=_esc(email), accept_url=_esc(accept_url)
            ),
        ),
    )


def _get(payload: Mapping[str, Any], key: str, kind: str) -> Any:
    try:
        return payload[key]
    except KeyError:
        raise TemplateError(
            f"{kind} notification payload has no {key!r} (keys: {sorted(payload)}); "
            "write rows with asyncjobs.notifications helpers"
        ) from None


def _minutes(payload: Mapping[str, Any]) -> int:
    value = payload.get("expires_minutes", DEFAULT_2FA_MINUTES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TemplateError(
            f"2fa_code notification payload has expires_minutes={value!r}; it must be a whole number of "
            "minutes >= 1 (write rows with asyncjobs.notifications helpers)"
        )
    return value


def expires_at(kind: str, payload: Mapping[str, Any], created_at: dt.datetime) -> dt.datetime | None:
    """When the notification's content stops being worth sending (None: never).

    A 2FA code expires ``expires_minutes`` after the row was written.
    """
    if kind == "2fa_code":
        return created_at + dt.timedelta(minutes=_minutes(payload))
    return None


def without_secrets(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` minus its one-time secrets (the 2FA code), for rows in a final state."""
    secret = SECRET_PAYLOAD_KEYS.get(kind, ())
    return {k: v for k, v in payload.items() if k not in secret}


def render(kind: str, channel: str, recipient: str, payload: Mapping[str, Any]) -> RenderedMessage:
    """Render a stored notification; raises :class:`TemplateError` for combinations we cannot render."""
    if kind == "2fa_code":
        code = str(_get(payload, "code", kind))
        minutes = _minutes(payload)
        if channel == "email":
            return render_2fa_email(code, minutes=minutes)
        if channel == "sms":
            return render_2fa_sms(code, minutes=minutes)
    elif kind == "user_invitation":
        if channel == "email":
            return render_user_invitation_email(
                email=recipient,
                inviter=str(_get(payload, "inviter", kind)),
                accept_url=str(_get(payload, "accept_url", kind)),
            )
    else:
        raise TemplateError(f"unknown notification kind {kind!r}; known kinds: 2fa_code, user_invitation")
    raise TemplateError(f"notification kind {kind!r} cannot be sent by {channel!r}")
