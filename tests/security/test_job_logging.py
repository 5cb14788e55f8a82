"""Issue 10 item 5: personal data stays out of the worker's logs.

* ``--disable-job-desc-logging`` (stock ``rq worker``'s flag, also honoured through
  ``rq worker -w asyncjobs.AsyncWorker``) logs job ids instead of descriptions;
* the delivery tasks describe themselves without the message body, subject or
  code and with the recipient masked (``+353******567``), by default.
"""

from __future__ import annotations

import collections

import redis
from rq import Queue
from rq.job import Job

from asyncjobs.tasks import send_email, send_sms
from tests.security import jobs
from tests.testsupport.http_server import HttpTestServer
from tests.testsupport.smtp_server import SmtpTestServer
from tests.testsupport.workers import run_asyncjobs_worker, run_rq_worker_with_asyncjobs_class

NUMBER = "+353871234567"
CODE = "482913"


def test_job_descriptions_are_logged_unless_disabled(redis_url: str, sync_redis: redis.Redis) -> None:
    q = Queue("default", connection=sync_redis)
    shown = q.enqueue(jobs.echo, "private-arg-5521")
    with run_asyncjobs_worker(redis_url, "default", "--burst") as proc:
        assert proc.wait(60) == 0
        assert "private-arg-5521" in proc.output()  # stock behaviour: the description is logged

    hidden = q.enqueue(jobs.echo, "private-arg-5521")
    with run_asyncjobs_worker(redis_url, "default", "--burst", "--disable-job-desc-logging") as proc:
        assert proc.wait(60) == 0, proc.output()
        output = proc.output()
    assert "private-arg-5521" not in output and hidden.id in output, output

    through_rq = q.enqueue(jobs.echo, "private-arg-5521")
    with run_rq_worker_with_asyncjobs_class(redis_url, "default", "--burst", "--disable-job-desc-logging") as proc:
        assert proc.wait(60) == 0, proc.output()
        output = proc.output()
    assert "private-arg-5521" not in output and through_rq.id in output, output
    for job in (shown, hidden, through_rq):
        assert Job.fetch(job.id, connection=sync_redis).return_value() == "private-arg-5521"


def test_delivery_tasks_log_no_body_code_or_full_recipient(redis_url: str, sync_redis: redis.Redis) -> None:
    smtp = SmtpTestServer()
    smtp.state.data_replies[1] = "451 4.3.0 try again later"  # one transient failure: a retry is logged
    with smtp, HttpTestServer() as http:
        http.script((500,))  # the first SMS attempt fails transiently
        sms = Queue("sms", connection=sync_redis).enqueue(send_sms, NUMBER, f"Your code is {CODE}")
        email = Queue("emails", connection=sync_redis).enqueue(
            send_email, "jane.doe@example.com", f"Login code {CODE}", f"Your code is {CODE}"
        )
        env = {
            "EMAIL_BACKEND": "smtp",
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
            "SMTP_FROM_EMAIL": "noreply@example.com",
            "SMS_PROVIDER": "http",
            "SMS_BASE_URL": http.webhook_url,
            "SMS_API_SECRET": http.bearer_token,
            "DELIVERY_MAX_ATTEMPTS": "3",
            "DELIVERY_BACKOFF_BASE": "0",
            "DELIVERY_BACKOFF_MAX": "0",
        }
        with run_asyncjobs_worker(redis_url, ["sms", "emails"], "--burst", env=env) as proc:
            assert proc.wait(60) == 0, proc.output()
            output = proc.output()
        assert [r.json["body"] for r in http.delivered] == [f"Your code is {CODE}"]
        assert len(smtp.messages) == 1

    assert Job.fetch(sms.id, connection=sync_redis).get_status() == "finished"
    assert Job.fetch(email.id, connection=sync_redis).get_status() == "finished"
    lines = collections.Counter(line for line in output.splitlines() if "+353******567" in line)
    assert lines, output  # the worker still says which task ran, for whom (masked) ...
    assert "attempt 1/3 failed" in output  # ... and that it retried
    assert "j***@example.com" in output
    for private in (CODE, NUMBER, "jane.doe"):
        assert private not in output, (private, output)
