"""Issue 4's "done when", end to end, through the real ``asyncjobs-worker``.

Emails and SMS are enqueued with stock RQ (``Queue.enqueue_many``) and run by
ONE ``asyncjobs-worker --burst --concurrency 50 --queues emails,sms``
subprocess against real local servers: an aiosmtpd SMTP server and an aiohttp
server speaking Twilio's Messages API (both in threads of this process, so the
worker reaches them over TCP).  Faults are injected per recipient (the
connection-level ones by order of arrival):

* transient (SMTP DATA 451 / RCPT 450 on the first attempt(s), connection
  dropped mid-DATA, 421 at MAIL; HTTP 500, 503): retried inside the job until it
  succeeds, still delivered exactly once;
* HTTP 429 with ``Retry-After: 0`` (the provider asks to slow down): the job raises
  ``asyncjobs.Throttled``, goes back to its queue (the queue paused for the Retry-After)
  and is delivered exactly once when it runs again;
* permanent (SMTP RCPT 550, DATA 554; HTTP 400): the job ends ``failed`` with
  a readable reason, was tried once and never delivered.

It also checks that SMTP connections were pooled (far fewer connections than
messages, never more than ``SMTP_POOL_SIZE`` open at once) and closed with
QUIT when the worker stopped.

It runs at the issue's full size (1,000 + 1,000); run it alone with
``pytest tests/e2e -q -s`` to see a one-line summary (worker wall time,
connections, retries).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from asyncjobs.redact import mask_phone
from asyncjobs.tasks import send_email, send_sms
from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import SmtpTestServer, _Handler, _State
from tests.testsupport.workers import run_asyncjobs_worker

POOL_SIZE = 10
MAX_MESSAGES_PER_CONNECTION = 100
MAX_ATTEMPTS = 6
CONCURRENCY = 50

# -- servers with per-recipient fault injection --------------------------------


class _E2EHandler(_Handler):
    """The test server's handler plus per-recipient faults and observations."""

    def __init__(self, state: _State, faults: _SmtpFaults) -> None:
        super().__init__(state)
        self.faults = faults

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        with self.state.cond:
            self.faults.peak_open = max(self.faults.peak_open, self.state.open_connections)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        with self.state.cond:
            self.faults.rcpt_attempts[address] += 1
            queued = self.faults.rcpt_replies.get(address)
            if queued:
                return queued.popleft()
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        first = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        with self.state.cond:
            queued = self.faults.data_replies.get(first)
            if queued:
                return queued.popleft()
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.state.cond:
            self.faults.quits += 1
        return "221 Bye"


@dataclass
class _SmtpFaults:
    #: replies to RCPT TO for an address, consumed one per attempt (then normal handling)
    rcpt_replies: dict[str, collections.deque[str]] = field(default_factory=dict)
    #: replies to DATA for a message whose first recipient is the key, one per attempt
    data_replies: dict[str, collections.deque[str]] = field(default_factory=dict)
    rcpt_attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    quits: int = 0
    peak_open: int = 0


class FaultySmtpServer(SmtpTestServer):
    def __init__(self) -> None:
        super().__init__()
        self.faults = _SmtpFaults()
        # aiosmtpd builds one SMTP protocol per connection from controller.handler
        self._controller.handler = _E2EHandler(self.state, self.faults)


class FaultyHttpServer(HttpTestServer):
    """Twilio-shaped server with per-number scripted responses (consumed one per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.per_number: dict[str, collections.deque[tuple[int, dict[str, str]]]] = {}
        self.attempts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _next_fault(self, to: str) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            self.attempts[to] += 1
            queued = self.per_number.get(to)
            if queued:
                return queued.popleft()
        return super()._next_fault(to)


# -- the plan: which message gets which fault ------------------------------------


@dataclass
class Plan:
    n: int
    #: index -> expected attempts for deliveries that must succeed (per-recipient faults only)
    email_ok: dict[int, int] = field(default_factory=dict)
    email_permanent: dict[int, str] = field(default_factory=dict)  # index -> reason fragment
    sms_ok: dict[int, int] = field(default_factory=dict)
    #: index -> attempts in the run that delivered it, where a 429 (Throttled) ended an earlier run
    sms_last_run: dict[int, int] = field(default_factory=dict)
    sms_permanent: dict[int, str] = field(default_factory=dict)
    #: connection-level faults hitting whichever message is the k-th DATA / MAIL
    drops: set[int] = field(default_factory=set)
    mail_421: set[int] = field(default_factory=set)


def email_to(i: int) -> str:
    return f"user{i:05d}@example.com"


def sms_to(i: int) -> str:
    return f"+1555{i:07d}"


def make_plan(n: int, smtp: FaultySmtpServer, http: FaultyHttpServer) -> Plan:
    plan = Plan(n)
    for i in range(n):
        r = i % 50
        addr = email_to(i)
        if r in (3, 13, 23, 33):  # DATA 451 on the first attempt
            smtp.faults.data_replies[addr] = collections.deque(["451 4.3.0 Temporary local problem"])
            plan.email_ok[i] = 2
        elif r == 7:  # RCPT 450 on the first attempt (the only recipient: temporarily refused)
            smtp.faults.rcpt_replies[addr] = collections.deque(["450 4.2.1 Mailbox busy, try later"])
            plan.email_ok[i] = 2
        elif r == 11:  # DATA 451 twice
            smtp.faults.data_replies[addr] = collections.deque(["451 4.3.0 Busy", "452 4.3.1 Out of space"])
            plan.email_ok[i] = 3
        elif r == 41:  # permanent: unknown user
            smtp.state.reject_rcpt[addr] = "550 5.1.1 User unknown"
            plan.email_permanent[i] = f"rejected recipient {addr} (550 5.1.1 User unknown): permanent"
        elif r == 45:  # permanent: message rejected after DATA
            smtp.faults.data_replies[addr] = collections.deque(["554 5.7.1 Message rejected as spam"])
            plan.email_permanent[i] = "554 5.7.1 Message rejected as spam"
        else:
            plan.email_ok[i] = 1

        num = sms_to(i)
        if r in (5, 15):
            http.per_number[num] = collections.deque([(429, {"Retry-After": "0"})])
            plan.sms_ok[i] = 2
            plan.sms_last_run[i] = 1
        elif r == 25:
            http.per_number[num] = collections.deque([(500, {})])
            plan.sms_ok[i] = 2
        elif r == 35:
            http.per_number[num] = collections.deque([(503, {}), (429, {"Retry-After": "0"})])
            plan.sms_ok[i] = 3
            plan.sms_last_run[i] = 1
        elif r == 45:
            http.fail_for[num] = 400
            plan.sms_permanent[i] = f"HTTP 400 for {mask_phone(num)}"  # the number is masked (issue 10)
        else:
            plan.sms_ok[i] = 1
    # connection-level faults, by order of arrival at the server (DATA / MAIL counts
    # only include transactions that reached the base handler)
    plan.drops = {n // 4, n // 2}
    plan.mail_421 = {n // 3}
    smtp.state.drop_data.update(plan.drops)
    smtp.state.mail_replies.update({k: "421 4.3.2 Service shutting down, try later" for k in plan.mail_421})
    return plan


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[FaultySmtpServer]:
    server = FaultySmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server() -> Iterator[FaultyHttpServer]:
    server = FaultyHttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def worker_env(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    smtp_server: FaultySmtpServer,
    http_server: FaultyHttpServer,
) -> dict[str, str]:
    prefixes = ("SMTP_", "SMS_", "EMAIL_", "RATE_LIMIT", "DELIVERY_")
    for key in list(os.environ):
        if key.upper().startswith(prefixes):
            monkeypatch.delenv(key)
    return {
        "REDIS_URL": redis_url,
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_TLS": "none",
        "SMTP_TIMEOUT": "20",
        "SMTP_POOL_SIZE": str(POOL_SIZE),
        "SMTP_MAX_MESSAGES_PER_CONNECTION": str(MAX_MESSAGES_PER_CONNECTION),
        "SMTP_FROM_EMAIL": "noreply@example.com",
        "SMTP_FROM_NAME": "Example App",
        "SMS_PROVIDER": "twilio",
        "SMS_API_KEY": http_server.account_sid,
        "SMS_API_SECRET": http_server.auth_token,
        "SMS_FROM_NUMBER": "+15005550006",
        "SMS_BASE_URL": http_server.url,
        "DELIVERY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "DELIVERY_BACKOFF_BASE": "0.001",
        "DELIVERY_BACKOFF_MAX": "0.01",
    }


# -- the scenario ---------------------------------------------------------------


def enqueue(conn: redis.Redis, n: int) -> tuple[list[str], list[str]]:
    emails = Queue("emails", connection=conn)
    sms = Queue("sms", connection=conn)
    email_jobs = emails.enqueue_many(
        [
            Queue.prepare_data(
                send_email,
                args=(email_to(i), f"Subject {i} — ünïcode", f"Body {i}"),
                kwargs={"html_body": f"<p>Body {i}</p>"},
                job_id=f"email-{i}",
            )
            for i in range(n)
        ]
    )
    sms_jobs = sms.enqueue_many(
        [
            Queue.prepare_data(send_sms, args=(sms_to(i), f"Your code is {i:06d}"), job_id=f"sms-{i}")
            for i in range(n)
        ]
    )
    return [j.id for j in email_jobs], [j.id for j in sms_jobs]


def run_scenario(
    n: int,
    redis_url: str,
    conn: redis.Redis,
    smtp: FaultySmtpServer,
    http: FaultyHttpServer,
    env: dict[str, str],
    timeout: float,
) -> None:
    plan = make_plan(n, smtp, http)
    email_ids, sms_ids = enqueue(conn, n)
    assert Queue("emails", connection=conn).count == n
    assert Queue("sms", connection=conn).count == n

    started = time.monotonic()
    with run_asyncjobs_worker(
        redis_url,
        [],
        "--burst",
        "--concurrency",
        str(CONCURRENCY),
        "--queues",
        "emails,sms",
        env=env,
    ) as worker:
        rc = worker.wait(timeout)
        elapsed = time.monotonic() - started
        log = worker.output()
    assert rc == 0, f"worker exited with {rc}:\n{log[-5000:]}"
    diag = f"\nworker log tail:\n{log[-3000:]}"

    # ---- RQ's view: every job finished or failed as planned -------------------
    email_jobs = Job.fetch_many(email_ids, connection=conn)
    sms_jobs = Job.fetch_many(sms_ids, connection=conn)
    assert all(j is not None for j in email_jobs + sms_jobs)
    email_status = {j.id: j.get_status(refresh=False) for j in email_jobs if j is not None}
    sms_status = {j.id: j.get_status(refresh=False) for j in sms_jobs if j is not None}

    want_email_ok = {f"email-{i}" for i in plan.email_ok}
    want_email_failed = {f"email-{i}" for i in plan.email_permanent}
    want_sms_ok = {f"sms-{i}" for i in plan.sms_ok}
    want_sms_failed = {f"sms-{i}" for i in plan.sms_permanent}

    bad = {k: v for k, v in email_status.items() if (v == JobStatus.FINISHED) != (k in want_email_ok)}
    assert not bad, f"unexpected email job statuses: {dict(list(bad.items())[:10])}{diag}"
    bad = {k: v for k, v in sms_status.items() if (v == JobStatus.FINISHED) != (k in want_sms_ok)}
    assert not bad, f"unexpected SMS job statuses: {dict(list(bad.items())[:10])}{diag}"
    assert {k for k, v in email_status.items() if v == JobStatus.FAILED} == want_email_failed
    assert {k for k, v in sms_status.items() if v == JobStatus.FAILED} == want_sms_failed

    for name, ok, failed in (
        ("emails", want_email_ok, want_email_failed),
        ("sms", want_sms_ok, want_sms_failed),
    ):
        assert Queue(name, connection=conn).count == 0
        assert set(FinishedJobRegistry(name, connection=conn).get_job_ids()) == ok
        assert set(FailedJobRegistry(name, connection=conn).get_job_ids()) == failed
        assert StartedJobRegistry(name, connection=conn).get_job_ids() == []

    # ---- SMS: delivered exactly once each, retries exactly as injected --------
    delivered = collections.Counter(r.form["To"] for r in http.delivered)
    want_delivered = {sms_to(i) for i in plan.sms_ok}
    assert set(delivered) == want_delivered
    dupes = {k: c for k, c in delivered.items() if c != 1}
    assert not dupes, f"SMS delivered more than once: {dupes}"
    bodies = {r.form["To"]: r.form["Body"] for r in http.delivered}
    assert all(bodies[sms_to(i)] == f"Your code is {i:06d}" for i in plan.sms_ok)
    assert all(r.form["From"] == "+15005550006" for r in http.delivered)
    for job in sms_jobs:
        assert job is not None
        i = int(job.id.split("-")[1])
        if i in plan.sms_ok:
            result = job.return_value(refresh=False)
            assert result is not None
            assert result["attempts"] == plan.sms_last_run.get(i, plan.sms_ok[i]), (job.id, result)
            assert str(result["provider_id"]).startswith("SM")
            assert http.attempts[sms_to(i)] == plan.sms_ok[i]
        else:
            latest = job.latest_result()
            assert latest is not None
            exc = latest.exc_string or ""
            assert plan.sms_permanent[i] in exc, exc
            assert "permanent, not retried" in exc, exc
            assert http.attempts[sms_to(i)] == 1, "a permanent SMS failure was retried"

    # The 429s paused the sms queue (asyncjobs.Throttled), for their Retry-After of 0 s.
    from asyncjobs.protocol.keys import DEFAULT

    assert conn.hexists(DEFAULT.queue_limits, "p:sms")

    # ---- email: delivered exactly once each ------------------------------------
    messages = smtp.messages
    received = collections.Counter(tuple(m.rcpt_tos) for m in messages)
    want_received = {(email_to(i),) for i in plan.email_ok}
    assert set(received) == want_received
    dupes_e = {k: c for k, c in received.items() if c != 1}
    assert not dupes_e, f"emails delivered more than once: {dupes_e}"
    for m in messages:
        parsed = m.parsed()
        i = int(m.rcpt_tos[0][4:9])
        assert parsed["Subject"] == f"Subject {i} — ünïcode"
        assert parsed["To"] == email_to(i)
        assert parsed["From"] == "Example App <noreply@example.com>"
        assert parsed["Message-ID"]
        assert parsed.get_body(("plain",)).get_content().strip() == f"Body {i}"  # type: ignore[union-attr]
        assert parsed.get_body(("html",)).get_content().strip() == f"<p>Body {i}</p>"  # type: ignore[union-attr]

    extra = 0
    for job in email_jobs:
        assert job is not None
        i = int(job.id.split("-")[1])
        if i in plan.email_ok:
            result = job.return_value(refresh=False)
            assert result is not None
            assert result["accepted"] == [email_to(i)]
            assert result["attempts"] >= plan.email_ok[i], (job.id, result)
            extra += int(result["attempts"]) - plan.email_ok[i]
        else:
            latest = job.latest_result()
            assert latest is not None
            exc = latest.exc_string or ""
            assert plan.email_permanent[i] in exc, exc
            assert "permanent" in exc, exc
            assert smtp.faults.rcpt_attempts[email_to(i)] == 1, "a permanent email failure was retried"
    # Each dropped DATA costs its job exactly one more attempt; a 421 at MAIL costs
    # one more attempt on a fresh connection, none on a pooled one (reconnected at once).
    assert len(plan.drops) <= extra <= len(plan.drops) + len(plan.mail_421), extra

    # ---- SMTP connections were pooled, bounded, and closed cleanly -------------
    connections = smtp.connections
    recycled_max = len(messages) // MAX_MESSAGES_PER_CONNECTION
    lost_max = len(plan.drops) + len(plan.mail_421)
    assert 1 <= connections <= POOL_SIZE + recycled_max + lost_max, (connections, len(messages))
    assert smtp.faults.peak_open <= POOL_SIZE, smtp.faults.peak_open
    smtp.wait_until_no_open_connections(timeout=10)
    # the injected connection faults all fired, and every other connection ended
    # with QUIT: recycled ones, and the pool the worker closed when it stopped
    assert smtp.state.data_count >= max(plan.drops) and smtp.state.mail_count >= max(plan.mail_421)
    assert smtp.faults.quits == connections - lost_max, (smtp.faults.quits, connections)
    print(
        f"\n{n} emails + {n} SMS through one asyncjobs-worker (concurrency {CONCURRENCY}): "
        f"{elapsed:.2f}s; {len(messages)} emails over {connections} SMTP connections "
        f"(peak {smtp.faults.peak_open} open, {smtp.faults.quits} QUIT); {len(http.delivered)} SMS "
        f"delivered from {len(http.requests)} HTTP requests"
    )


def test_delivery_through_asyncjobs_worker(
    redis_url: str,
    sync_redis: redis.Redis,
    smtp_server: FaultySmtpServer,
    http_server: FaultyHttpServer,
    worker_env: dict[str, str],
) -> None:
    """Issue 4's exact size: 1,000 emails and 1,000 SMS, one worker, concurrency 50."""
    run_scenario(1000, redis_url, sync_redis, smtp_server, http_server, worker_env, timeout=240)
