"""Keep secrets in URLs, and personal data, out of reprs, logs and error messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: Query parameters whose values are secrets (compared case-insensitively, ``-`` as ``_``).
SECRET_QUERY_KEYS = frozenset(
    {
        "password", "passwd", "pass", "pwd", "secret", "client_secret", "token", "access_token",
        "auth_token", "refresh_token", "api_key", "apikey", "key", "signature", "sig", "auth",
        "authorization", "credentials",
    }
)


def _redact_query(query: str) -> str:
    if not query:
        return query
    out = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        if eq and name.lower().replace("-", "_") in SECRET_QUERY_KEYS:
            part = f"{name}=***"
        out.append(part)
    return "&".join(out)


def redact_url(url: str) -> str:
    """Mask the password of ``user:password@`` and secret query parameters (``?password=``, ``?token=``...).

    ``redis://:secret@host:6379/0?password=x`` -> ``redis://:***@host:6379/0?password=***``;
    unparseable input is masked whole.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return "***"
    result = url
    if password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if port is not None:
            host = f"{host}:{port}"
        result = urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
    query = _redact_query(parts.query)
    if query != parts.query:
        result = result.replace("?" + parts.query, "?" + query, 1)
    return result


def url_origin(url: str) -> str:
    """Only ``scheme://host[:port]`` of a URL (no credentials, path, query or fragment).

    For URLs that may carry a token anywhere, e.g. an SMS webhook; unparseable input is masked whole.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def hide_url_path(url: str) -> str:
    """``https://hooks.example/T0/token?x=1`` -> ``https://hooks.example/***`` (for reprs and messages)."""
    origin = url_origin(url)
    if origin == "***":
        return origin
    rest = url.split("://", 1)[-1].partition("/")[2]
    return f"{origin}/***" if rest.strip("/") else origin


def scrub_url(text: str, url: str) -> str:
    """``text`` with ``url`` (and its path or query, if they appear on their own) replaced by :func:`hide_url_path`."""
    if not url:
        return text
    hidden = hide_url_path(url)
    text = text.replace(url, hidden)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    for piece in (parts.path + ("?" + parts.query if parts.query else ""), parts.query, parts.path):
        if len(piece.strip("/")) > 1:
            text = text.replace(piece, "/***")
    if parts.password:
        text = text.replace(parts.password, "***")
    return text


def mask_phone(number: object) -> str:
    """``+353871234567`` -> ``+353******567``: enough to tell recipients apart, not to contact them."""
    text = str(number)
    if len(text) >= 10:
        return text[:4] + "*" * (len(text) - 7) + text[-3:]
    return "*" * len(text)


def mask_email(address: object) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``."""
    text = str(address)
    local, at, domain = text.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


_CONTROL_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    named = _CONTROL_NAMES.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control characters escaped as ``repr`` does (``\\n``, ``\\x1b``, ``\\u2028``...).

    For text from Redis or job data shown in a text log or a terminal: a job id or a
    description with a newline cannot forge a log line, an ANSI/OSC escape cannot reach
    the terminal.  ``keep_newlines`` keeps ``\\n`` (tracebacks).
    """
    if text.isprintable():
        return text
    return "".join(
        _escape_char(ch) if (not ch.isprintable() and ch != " " and not (keep_newlines and ch == "\n")) else ch
        for ch in text
    )
