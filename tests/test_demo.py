"""``python -m examples.demo`` end to end: on a given REDIS_URL, and on its own private Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import redis

DEMO_ENV_VARS = ("REDIS_URL", "DATABASE_URL", "EMAIL_BACKEND", "SMTP_HOST", "SMS_PROVIDER", "ASYNCJOBS_DEMO_DIR",
                 "ASYNCJOBS_REDIS_URL", "ASYNCJOBS_DATABASE_URL")


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in DEMO_ENV_VARS}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", "--dir", str(tmp_path / "demo")],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def assert_summary(proc: subprocess.CompletedProcess[str]) -> str:
    out = proc.stdout
    assert proc.returncode == 0, f"demo exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    # Every direct job finished, read back through RQ.
    assert out.count("   ok      emails  send_email(") == 3, out
    assert out.count("   ok      sms     send_sms(") == 2, out
    assert "ok      default add(2, 40) -> 42" in out
    assert "ok      default add(1000, 337) -> 1337" in out
    assert "ok      default 20/20 x fetch_profile" in out
    # The failure is reported with the exception's last traceback line.
    assert re.search(
        r"failed  default checkout\('A-1001', 4999\) \(on purpose\) -> "
        r"examples\.demo_jobs\.CheckoutDeclined: payment for order A-1001 \(49\.99 EUR\) was declined",
        out,
    ), out
    # Outbox: both committed rows sent by their jobs; the rolled-back one never written.
    assert re.search(r"#1 sms\s+2fa_code\s+\+353861112222\s+sent; its job finished -> 'sent'", out), out
    assert re.search(r"#2 email\s+user_invitation\s+dave@example\.com\s+sent; its job finished -> 'sent'", out), out
    assert "#3" not in out
    assert "rolled back: invitation to mallory@example.com: no row, no job" in out
    assert "mallory@example.com" not in out.split("5. What the console backends printed")[1]
    # The console backends printed every message (five direct, two from the outbox).
    assert "SMS    to +353861112222: 'Your verification code is 482913." in out
    assert "email  to dave@example.com:" in out
    assert out.count("email  to ") == 4 and out.count("SMS    to ") == 3, out
    assert re.search(r"default:\s+0 queued, 22 finished, 1 failed", out), out
    assert re.search(r"emails:\s+0 queued, 4 finished, 0 failed", out), out
    assert re.search(r"sms:\s+0 queued, 3 finished, 0 failed", out), out
    assert "Done in" in out
    return out


def test_demo_on_redis_url_uses_an_empty_database_and_leaves_it_empty(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    sync_redis.set("someone:else:data", "precious")  # the URL's database is in use

    proc = run_demo(tmp_path, REDIS_URL=redis_url)

    out = assert_summary(proc)
    m = re.search(r"Redis:\s+REDIS_URL, empty database (\d+):", out)
    assert m, out
    db = int(m.group(1))
    assert db != 0
    assert sync_redis.get("someone:else:data") == b"precious"
    assert sync_redis.dbsize() == 1
    other = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{db}")
    try:
        assert other.dbsize() == 0, "the demo left keys behind in the database it borrowed"
    finally:
        other.close()
    assert "The demo's keys are deleted from Redis again on exit" in out
    assert (tmp_path / "demo" / "outbox.db").is_file()
    worker_log = (tmp_path / "demo" / "worker.log").read_text()
    assert "console SMS provider (not sent)" in worker_log
    assert "deprecated" not in worker_log  # the demo sets the ASYNCJOBS_ setting names


def test_demo_starts_and_stops_its_own_redis(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, ASYNCJOBS_DEMO_PRIVATE_REDIS="1")

    out = assert_summary(proc)
    m = re.search(r"Redis:\s+private redis-server on 127\.0\.0\.1:(\d+) \(pid (\d+), stopped at the end\)", out)
    assert m, out
    pid = int(m.group(2))
    if psutil.pid_exists(pid):  # the PID may have been reused, but not by a live redis-server
        proc_info = psutil.Process(pid)
        assert "redis-server" not in proc_info.name() or proc_info.status() == psutil.STATUS_ZOMBIE
    conn = redis.Redis(port=int(m.group(1)), socket_connect_timeout=0.5)
    try:
        try:
            conn.ping()
        except redis.ConnectionError:
            pass
        else:
            raise AssertionError("the demo's private Redis still answers after the demo ended")
    finally:
        conn.close()


def test_demo_falls_back_to_a_private_redis_when_redis_url_is_dead(tmp_path: Path) -> None:
    """REDIS_URL set to a dead server falls back to a private Redis and says so."""
    from tests.testsupport.redis_server import free_port

    proc = run_demo(tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    out = assert_summary(proc)
    assert "does not answer; using a private Redis instead" in out
