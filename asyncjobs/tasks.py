"""The delivery jobs, by their public name: ``asyncjobs.tasks.send_email`` and ``asyncjobs.tasks.send_sms``.

A thin face over :mod:`asyncjobs.delivery.tasks`, where they are written.  This is
the path RQ stores for these jobs and the one ``--allow-module`` names, so it stays::

    from asyncjobs.queues import emails_queue
    from asyncjobs.tasks import send_email
    emails_queue.enqueue(send_email, "user@example.com", "Subject", "Body")
"""

from __future__ import annotations

from asyncjobs.delivery.tasks import send_email, send_sms

__all__ = ["send_email", "send_sms"]
