"""send_email / send_sms enqueued with stock RQ and run by a stock ``rq worker`` subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job, JobStatus

from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import SmtpTestServer

from .conftest import task_env_vars


def test_stock_rq_worker_runs_delivery_tasks(
    redis_url: str,
    sync_redis: redis.Redis,
    smtp_server: SmtpTestServer,
    http_server: HttpTestServer,
    tmp_path: Path,
) -> None:
    from asyncjobs.tasks import send_email, send_sms

    emails = Queue("emails", connection=sync_redis)
    sms = Queue("sms", connection=sync_redis)
    smtp_server.state.data_replies[1] = "451 4.3.0 try again"  # first email attempt: transient
    smtp_server.state.reject_rcpt["nobody@example.com"] = "550 5.1.1 user unknown"
    http_server.script((503, {"Retry-After": "0"}))  # first SMS attempt: transient
    ok_email = emails.enqueue(send_email, "bob@example.com", "Hello", "Body", html_body="<p>Body</p>")
    ok_email2 = emails.enqueue(send_email, ["amy@example.com"], "Hello again", "Body 2")
    bad_email = emails.enqueue(send_email, "nobody@example.com", "Hello", "Body")
    ok_sms = sms.enqueue(send_sms, "+353871234567", "Your code is 123456")
    bad_sms = sms.enqueue(send_sms, "not-a-number", "x")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SMS_", "EMAIL_", "DELIVERY_"))}
    env.update(task_env_vars(smtp_server, http_server))
    env["REDIS_URL"] = redis_url
    rq_bin = Path(sys.executable).with_name("rq")
    proc = subprocess.run(
        [
            str(rq_bin),
            "worker",
            "--burst",
            "-w",
            "rq.worker.SimpleWorker",
            "--url",
            redis_url,
            "emails",
            "sms",
        ],
        cwd="/work/main",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def job(j: Job) -> Job:
        return Job.fetch(j.id, connection=sync_redis)

    assert job(ok_email).get_status() == JobStatus.FINISHED
    assert job(ok_email).return_value()["attempts"] == 2
    assert job(ok_email2).return_value()["attempts"] == 1
    assert job(ok_sms).return_value()["attempts"] == 2
    assert job(ok_sms).return_value()["provider_id"].startswith("SM")
    assert [m.rcpt_tos for m in smtp_server.messages] == [["bob@example.com"], ["amy@example.com"]]
    assert len(http_server.delivered) == 1
    assert job(bad_email).get_status() == JobStatus.FAILED
    assert "rejected recipient nobody@example.com (550 5.1.1 user unknown): permanent" in (
        job(bad_email).latest_result().exc_string
    )
    assert job(bad_sms).get_status() == JobStatus.FAILED
    reason = job(bad_sms).latest_result().exc_string
    # Invalid numbers are masked in errors too (issue 18 item 7): 'not-a-number' shows as not-*****ber.
    assert "invalid recipient number not-*****ber" in reason and "not-a-number" not in reason, reason
