"""Application settings, read from the environment (and a file only when ``ASYNCJOBS_ENV_FILE`` names one).

Each setting is read from ``ASYNCJOBS_<NAME>`` (``ASYNCJOBS_DATABASE_URL``, ``ASYNCJOBS_SMTP_HOST``...),
else from the unprefixed ``<NAME>``, which still works but is deprecated (one warning per process
names them), except ``REDIS_URL``, rq's own variable.  The environment wins over the file.

Use :func:`get_settings` (cached).  Tests and reloading code call
:func:`reload_settings` (or ``get_settings.cache_clear()``) after changing the
environment.  Invalid values raise :class:`SettingsError` naming the variable;
secrets (``SMTP_PASSWORD``, ``SMS_API_SECRET``) are :class:`~pydantic.SecretStr`
and never printed.

Settings are read only by the batteries' composition (:mod:`asyncjobs.delivery.runtime`,
:mod:`asyncjobs.delivery.tasks`, :mod:`asyncjobs.delivery.queues`,
:mod:`asyncjobs.outbox.notifications`) and the outbox CLI, which pass plain values down;
the engine (protocol, worker) never reads them.  They live with delivery because the
outbox delivers through it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from asyncjobs._extras import missing_extra

try:
    from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
    from pydantic_settings import BaseSettings, SettingsConfigDict
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise missing_extra('email', 'asyncjobs.delivery.settings (pydantic-settings, with the email, sms or outbox extra)', _exc) from _exc

from asyncjobs.connection import DEFAULT_REDIS_URL
from asyncjobs.delivery.ratelimit import Rate, parse_rate
from asyncjobs.redact import hide_url_path, redact_url

__all__ = ["ENV_FILE_VARIABLE", "ENV_PREFIX", "Settings", "SettingsError", "check_settings", "get_settings",
           "load_settings", "read_environment", "reload_settings"]

log = logging.getLogger("asyncjobs.settings")

#: Every setting is read as ``ASYNCJOBS_<NAME>`` first (then, deprecated, as ``<NAME>``).
ENV_PREFIX = "ASYNCJOBS_"
#: A dotenv file to read settings from (the environment wins); nothing is read from ``./.env`` otherwise.
ENV_FILE_VARIABLE = "ASYNCJOBS_ENV_FILE"
#: Unprefixed names read without a deprecation warning: ``REDIS_URL`` is rq's own variable.
_SHARED_NAMES = frozenset({"redis_url"})
_warned: set[tuple[str, ...]] = set()

_SECRET_FIELDS = frozenset({"smtp_password", "sms_api_secret"})
#: URL settings that may carry secrets, and how they are shown in reprs and error messages.
_URL_FIELDS = {"redis_url": redact_url, "database_url": redact_url, "sms_base_url": hide_url_path}
_E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")
_DOTTED_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*[.:][A-Za-z_][\w]*$")


def _loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(ValueError):
    """Invalid configuration; the message names each bad variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, validate_default=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *sources: Any, **named: Any) -> Any:
        # The environment and the file are read by :func:`read_environment` (prefixed names first),
        # which :func:`load_settings` passes in; ``Settings(...)`` alone takes only its arguments.
        return (init_settings,)

    # Redis / queues
    redis_url: str = DEFAULT_REDIS_URL

    # Email
    email_backend: Literal["auto", "smtp", "console"] = "auto"
    smtp_host: str = ""
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_from_email: str = "noreply@localhost"
    smtp_from_name: str = ""
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_allow_insecure_auth: bool = False
    smtp_timeout: float = Field(30.0, gt=0)
    smtp_pool_size: int = Field(10, ge=1, le=1000)
    smtp_max_messages_per_connection: int = Field(100, ge=1)
    smtp_ca_file: str = ""
    smtp_validate_certs: bool = True
    smtp_rate_limit: str = ""

    # SMS
    sms_provider: str = "console"
    sms_api_key: str = ""
    sms_api_secret: SecretStr = SecretStr("")
    sms_from_number: str = ""
    sms_base_url: str = ""
    #: send ``SMS_API_SECRET`` over a clear-text ``http://`` ``SMS_BASE_URL`` (other than loopback)
    sms_allow_insecure: bool = False
    sms_timeout: float = Field(10.0, gt=0)
    sms_max_connections: int = Field(100, ge=1)
    sms_http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    sms_rate_limit: str = ""

    # Rate limiting / retries
    rate_limit_scope: Literal["process", "redis"] = "process"
    delivery_max_attempts: int = Field(5, ge=1, le=100)
    delivery_backoff_base: float = Field(1.0, ge=0)
    delivery_backoff_max: float = Field(60.0, ge=0)

    # Outbox (used by asyncjobs.outbox)
    database_url: str = "sqlite+aiosqlite:///./asyncjobs-outbox.db"
    outbox_max_attempts: int = Field(5, ge=1)
    outbox_visibility_timeout: float = Field(300.0, gt=0)
    outbox_poll_interval: float = Field(5.0, gt=0)
    outbox_batch_size: int = Field(100, ge=1)
    outbox_retry_backoff_base: float = Field(30.0, ge=0)

    @field_validator("smtp_rate_limit", "sms_rate_limit")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rate(value)  # raises ValueError with an example of the right form
        return value.strip()

    def __repr_args__(self) -> Any:
        # URLs may carry a password (redis://:pw@host, ?password=...) or, for webhooks, a token in the path.
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                value = _URL_FIELDS[name](value)
            yield name, value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix://, e.g. {DEFAULT_REDIS_URL}")
        return value

    @field_validator("smtp_from_email")
    @classmethod
    def _check_from_email(cls, value: str) -> str:
        from asyncjobs.delivery.email import validate_email_address

        validate_email_address(value, what="from address")
        return value

    @field_validator("smtp_from_name")
    @classmethod
    def _check_from_name(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("must be a single line (no CR/LF)")
        return value

    @field_validator("sms_from_number")
    @classmethod
    def _check_from_number(cls, value: str) -> str:
        if value and not _E164_RE.fullmatch(value):
            raise ValueError("must be an E.164 number such as +353871234567 (or empty)")
        return value

    @field_validator("smtp_ca_file")
    @classmethod
    def _check_ca_file(cls, value: str) -> str:
        if value and not os.path.isfile(value):
            raise ValueError(f"file {value!r} does not exist; point it at a PEM CA bundle or leave it empty")
        return value

    @field_validator("sms_provider")
    @classmethod
    def _check_provider(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in ("console", "twilio", "http"):
            return value.lower()
        if not _DOTTED_RE.match(value):
            raise ValueError(
                "must be console, twilio, http, or a dotted path to a provider class such as "
                "myapp.sms.MyProvider"
            )
        return value

    @field_validator("sms_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        problems: list[str] = []
        if self.email_backend == "smtp" and not self.smtp_host:
            problems.append("SMTP_HOST: must be set when EMAIL_BACKEND=smtp")
        if self.smtp_user and not self.smtp_password.get_secret_value():
            problems.append("SMTP_PASSWORD: must be set when SMTP_USER is set")
        if self.smtp_user and self.smtp_tls == "none" and not self.smtp_allow_insecure_auth:
            problems.append(
                "SMTP_TLS: is none while SMTP_USER/SMTP_PASSWORD are set, so the password would cross the "
                "network unencrypted; use SMTP_TLS=starttls or tls, or set SMTP_ALLOW_INSECURE_AUTH=true "
                "for a relay on a trusted local network"
            )
        if self.sms_provider == "twilio":
            if not self.sms_api_key:
                problems.append("SMS_API_KEY: must be set to the Twilio Account SID when SMS_PROVIDER=twilio")
            if not self.sms_api_secret.get_secret_value():
                problems.append(
                    "SMS_API_SECRET: must be set to the Twilio auth token when SMS_PROVIDER=twilio"
                )
            if not self.sms_from_number:
                problems.append("SMS_FROM_NUMBER: must be set when SMS_PROVIDER=twilio")
        if (self.sms_base_url.startswith("http://") and self.sms_api_secret.get_secret_value()
                and not self.sms_allow_insecure and not _loopback(self.sms_base_url)):
            problems.append(
                "SMS_BASE_URL: is http:// while SMS_API_SECRET is set, so the token would cross the network "
                "unencrypted; use https://, or set SMS_ALLOW_INSECURE=true for a provider on a trusted "
                "local network"
            )
        if self.sms_provider == "http" and not self.sms_base_url:
            problems.append("SMS_BASE_URL: must be set to the webhook URL when SMS_PROVIDER=http")
        if self.delivery_backoff_max < self.delivery_backoff_base:
            problems.append("DELIVERY_BACKOFF_MAX: must be >= DELIVERY_BACKOFF_BASE")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- derived values ----------------------------------------------------------

    @property
    def resolved_email_backend(self) -> Literal["smtp", "console"]:
        """``auto`` means console when SMTP_HOST is empty or ``localhost``, else smtp."""
        if self.email_backend == "auto":
            return "console" if self.smtp_host.strip().lower() in ("", "localhost") else "smtp"
        return self.email_backend

    @property
    def smtp_rate(self) -> Rate | None:
        return parse_rate(self.smtp_rate_limit)

    @property
    def sms_rate(self) -> Rate | None:
        return parse_rate(self.sms_rate_limit)


def _format_error(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if loc:
            name = (names or {}).get(loc[0], ENV_PREFIX + loc[0].upper())
            given = err.get("input")
            if loc[0] in _URL_FIELDS and isinstance(given, str):
                given = _URL_FIELDS[loc[0]](given)
            value = "" if loc[0] in _SECRET_FIELDS else f"={given!r}"
            lines.append(f"{name}{value}: {msg}")
        else:  # a check across settings: name each variable as it was set, or the prefixed name to set
            lines.append(_VARIABLE.sub(lambda m: (names or {}).get(m[0].lower(), ENV_PREFIX + m[0]), msg))
    return "invalid asyncjobs settings: " + "; ".join(lines)


#: A setting's bare upper-case name in a message (``SMTP_HOST``, not a part of ``ASYNCJOBS_SMTP_HOST``).
_VARIABLE = re.compile(
    r"(?<![A-Z0-9_])(" + "|".join(sorted((f.upper() for f in Settings.model_fields), key=len, reverse=True))
    + r")(?![A-Z0-9_])"
)


def read_environment(
    env_file: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The settings' raw values and, per field, the variable each came from: ``ASYNCJOBS_<NAME>``, else
    ``<NAME>``; the environment over ``env_file`` (default ``$ASYNCJOBS_ENV_FILE``; none if unset)."""
    env = os.environ if environ is None else environ
    path = env_file or env.get(ENV_FILE_VARIABLE) or None
    source: dict[str, str] = {}
    if path:
        if not os.path.isfile(path):
            raise SettingsError(f"{ENV_FILE_VARIABLE}={path!r}: no such file; point it at a dotenv file or unset it")
        from dotenv import dotenv_values

        source.update({k.upper(): v for k, v in dotenv_values(path).items() if v is not None})
    source.update({k.upper(): v for k, v in env.items()})
    values: dict[str, str] = {}
    names: dict[str, str] = {}
    for field in Settings.model_fields:
        for var in (ENV_PREFIX + field.upper(), field.upper()):
            if var in source:
                values[field], names[field] = source[var], var
                break
    return values, names


def _warn_unprefixed(names: Mapping[str, str]) -> None:
    old = tuple(sorted(v for f, v in names.items() if not v.startswith(ENV_PREFIX) and f not in _SHARED_NAMES))
    if old and old not in _warned:
        _warned.add(old)
        log.warning(
            "asyncjobs settings read from unprefixed variables %s: deprecated, they stop being read in the next "
            "release; rename them %s (a prefixed name wins when both are set)",
            ", ".join(old), ", ".join(ENV_PREFIX + n for n in old),
        )


def load_settings(*, env_file: str | None = None, **overrides: Any) -> Settings:
    """Read settings now (``ASYNCJOBS_*`` then unprefixed variables, over ``env_file``/``$ASYNCJOBS_ENV_FILE``,
    then ``overrides``); raise :class:`SettingsError` naming each bad variable."""
    values, names = read_environment(env_file)
    try:
        settings = Settings(**{**values, **overrides})
    except ValidationError as exc:
        raise SettingsError(_format_error(exc, names)) from None
    _warn_unprefixed(names)
    return settings


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (cached)."""
    return load_settings()


def check_settings() -> None:
    """Read the settings now, as a worker does at start-up; raise :class:`SettingsError` naming each bad one."""
    reload_settings()


def reload_settings() -> Settings:
    """Forget the cached settings and read them again."""
    get_settings.cache_clear()
    return get_settings()
