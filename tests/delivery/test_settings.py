from __future__ import annotations

import logging
from pathlib import Path

import pytest

from asyncjobs.delivery.settings import SettingsError, get_settings, load_settings, reload_settings


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.resolved_email_backend == "console"
    assert s.smtp_port == 587
    assert s.sms_provider == "console"
    assert s.sms_http_transport == "aiohttp"
    assert s.delivery_max_attempts == 5
    assert s.database_url == "sqlite+aiosqlite:///./asyncjobs-outbox.db"
    assert (s.outbox_max_attempts, s.outbox_visibility_timeout, s.outbox_batch_size) == (5, 300, 100)
    assert s.outbox_poll_interval == 5.0 and s.outbox_retry_backoff_base == 30
    assert s.smtp_rate is None


@pytest.mark.parametrize(
    ("host", "backend", "expected"),
    [
        ("", "auto", "console"),
        ("localhost", "auto", "console"),
        ("smtp.example.com", "auto", "smtp"),
        ("localhost", "smtp", "smtp"),
        ("smtp.example.com", "console", "console"),
    ],
)
def test_email_backend_resolution(
    clean_env: pytest.MonkeyPatch, host: str, backend: str, expected: str
) -> None:
    clean_env.setenv("SMTP_HOST", host)
    clean_env.setenv("EMAIL_BACKEND", backend)
    assert load_settings().resolved_email_backend == expected


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("SMTP_PORT", "notaport", "SMTP_PORT='notaport'"),
        ("SMTP_PORT", "70000", "SMTP_PORT"),
        ("SMTP_TLS", "ssl3", "SMTP_TLS"),
        ("EMAIL_BACKEND", "carrier-pigeon", "EMAIL_BACKEND"),
        ("SMTP_RATE_LIMIT", "fast", "SMTP_RATE_LIMIT='fast'"),
        ("SMS_RATE_LIMIT", "10/fortnight", "SMS_RATE_LIMIT"),
        ("SMS_FROM_NUMBER", "0871234567", "SMS_FROM_NUMBER"),
        ("SMS_PROVIDER", "not a path!", "SMS_PROVIDER"),
        ("SMS_HTTP_TRANSPORT", "curl", "SMS_HTTP_TRANSPORT"),
        ("SMTP_FROM_EMAIL", "not-an-address", "SMTP_FROM_EMAIL"),
        ("SMTP_CA_FILE", "/nonexistent/ca.pem", "SMTP_CA_FILE"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL"),
        ("DELIVERY_MAX_ATTEMPTS", "0", "DELIVERY_MAX_ATTEMPTS"),
        ("RATE_LIMIT_SCOPE", "galaxy", "RATE_LIMIT_SCOPE"),
        ("SMS_PROVIDER", "twilio", "SMS_API_KEY"),
        ("SMS_PROVIDER", "http", "SMS_BASE_URL"),
        ("EMAIL_BACKEND", "smtp", "SMTP_HOST"),
    ],
)
def test_invalid_settings_name_the_variable(
    clean_env: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert fragment in str(info.value)


def test_secrets_never_printed(clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clean_env.setenv("SMTP_USER", "mailer")
    clean_env.setenv("SMTP_PASSWORD", "hunter2-smtp")
    clean_env.setenv("SMS_API_SECRET", "hunter2-sms")
    s = load_settings()
    assert s.smtp_password.get_secret_value() == "hunter2-smtp"
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("settings: %s %r", s, s)
    text = repr(s) + str(s) + caplog.text + s.model_dump_json()
    assert "hunter2" not in text


def test_secret_absent_from_validation_errors(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SMTP_USER", "mailer")
    clean_env.setenv("SMTP_PASSWORD", "hunter2-smtp")
    clean_env.setenv("SMTP_PORT", "bad")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    assert "SMTP_PORT" in str(info.value)


def test_env_file_only_when_asked_and_cache(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 22: ``./.env`` is not read unless ``ASYNCJOBS_ENV_FILE`` names a file; the environment wins."""
    (tmp_path / ".env").write_text("SMTP_HOST=stray.example.org\n")
    assert reload_settings().smtp_host == ""  # the working directory's .env is not read
    env_file = tmp_path / "asyncjobs.env"
    env_file.write_text("ASYNCJOBS_SMTP_HOST=mail.example.org\nSMTP_RATE_LIMIT=600/m\n")
    clean_env.setenv("ASYNCJOBS_ENV_FILE", str(env_file))
    s = reload_settings()
    assert s.smtp_host == "mail.example.org"
    assert s.smtp_rate is not None and s.smtp_rate.count == 600 and s.smtp_rate.period == 60
    assert get_settings() is s
    clean_env.setenv("SMTP_HOST", "env-wins.example.org")
    assert get_settings().smtp_host == "mail.example.org"  # cached
    assert reload_settings().smtp_host == "mail.example.org"  # the prefixed name (from the file) wins
    clean_env.setenv("ASYNCJOBS_SMTP_HOST", "env-wins.example.org")
    assert reload_settings().smtp_host == "env-wins.example.org"  # the environment wins over the file
    clean_env.setenv("ASYNCJOBS_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(SettingsError, match=r"ASYNCJOBS_ENV_FILE='.*missing\.env'"):
        reload_settings()
    get_settings.cache_clear()


def test_prefixed_names_win_and_unprefixed_ones_are_deprecated(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``ASYNCJOBS_DATABASE_URL`` beats an application's own ``DATABASE_URL``; unprefixed names still work
    with a deprecation warning (``REDIS_URL``, rq's own variable, without one); errors name what was set."""
    import asyncjobs.delivery.settings as settings_module

    clean_env.setattr(settings_module, "_warned", set())  # once per process: not already said by another test
    caplog.set_level(logging.WARNING, logger="asyncjobs")
    clean_env.setenv("DATABASE_URL", "mysql://app@db/app")
    clean_env.setenv("ASYNCJOBS_DATABASE_URL", "sqlite+aiosqlite:///jobs.db")
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    s = load_settings()
    assert s.database_url == "sqlite+aiosqlite:///jobs.db" and s.redis_url == "redis://redis:6379/0"
    assert "deprecated" not in caplog.text
    clean_env.setenv("SMTP_PORT", "2525")
    assert load_settings().smtp_port == 2525
    (warning,) = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert "SMTP_PORT" in warning and "ASYNCJOBS_SMTP_PORT" in warning and "REDIS_URL" not in warning
    clean_env.setenv("ASYNCJOBS_SMTP_PORT", "abc")
    with pytest.raises(SettingsError, match="ASYNCJOBS_SMTP_PORT='abc'"):
        load_settings()


def test_sms_secret_over_clear_text_http_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    """Issue 18 item 7: an SMS token was sent over http:// without a word (SMTP refuses the equivalent)."""
    clean_env.setenv("ASYNCJOBS_SMS_PROVIDER", "http")
    clean_env.setenv("ASYNCJOBS_SMS_API_SECRET", "s3cr3t-t0k")
    clean_env.setenv("ASYNCJOBS_SMS_BASE_URL", "http://sms.example/hook")
    with pytest.raises(SettingsError, match="SMS_ALLOW_INSECURE") as info:
        load_settings()
    assert "s3cr3t" not in str(info.value)
    clean_env.setenv("ASYNCJOBS_SMS_ALLOW_INSECURE", "true")
    assert load_settings().sms_allow_insecure
    clean_env.delenv("ASYNCJOBS_SMS_ALLOW_INSECURE")
    for url in ("https://sms.example/hook", "http://127.0.0.1:8080/hook", "http://localhost/hook"):
        clean_env.setenv("ASYNCJOBS_SMS_BASE_URL", url)
        assert load_settings().sms_base_url == url  # TLS, or a loopback address the token never leaves


def test_errors_about_combinations_name_the_variables_as_set(clean_env: pytest.MonkeyPatch) -> None:
    """A check across settings names each variable as the operator set it (``ASYNCJOBS_SMS_PROVIDER``,
    or the deprecated unprefixed name) and, for one not set at all, the prefixed name to set."""
    clean_env.setenv("ASYNCJOBS_SMS_PROVIDER", "twilio")
    clean_env.setenv("ASYNCJOBS_SMS_API_KEY", "AC123")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "ASYNCJOBS_SMS_API_SECRET: must be set to the Twilio auth token when ASYNCJOBS_SMS_PROVIDER=twilio" in text
    assert "ASYNCJOBS_SMS_FROM_NUMBER: must be set when ASYNCJOBS_SMS_PROVIDER=twilio" in text
    assert "SMS_API_KEY:" not in text  # it was set
    clean_env.delenv("ASYNCJOBS_SMTP_HOST", raising=False)
    clean_env.setenv("EMAIL_BACKEND", "smtp")  # the deprecated name: the message says what was set
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "ASYNCJOBS_SMTP_HOST: must be set when EMAIL_BACKEND=smtp" in str(info.value)
