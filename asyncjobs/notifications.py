"""Transactional notifications, by their public name (``from asyncjobs.notifications import ...``).

A thin face over :mod:`asyncjobs.outbox.notifications`, the outbox battery's
composition.  ``asyncjobs.notifications.process_outbox_notification`` is the path RQ
stores for outbox jobs (:data:`JOB_FUNCTION`) and the one ``--allow-module`` names, so it stays.
"""

from __future__ import annotations

from asyncjobs.outbox.notifications import (
    DEFAULT_MISSING_JOB_GRACE,
    ENQUEUE_TIMEOUT,
    JOB_FUNCTION,
    JOB_MODULE,
    QUEUE_FOR_CHANNEL,
    build_processor,
    dispose_engines,
    enqueue_2fa_notification,
    enqueue_notification_job,
    enqueue_notification_jobs,
    enqueue_user_invitation,
    get_engine,
    get_session_factory,
    missing_notification_jobs,
    process_outbox_notification,
    retry_policy_from_settings,
    use_delivery,
)

__all__ = [
    "DEFAULT_MISSING_JOB_GRACE",
    "ENQUEUE_TIMEOUT",
    "JOB_FUNCTION",
    "JOB_MODULE",
    "QUEUE_FOR_CHANNEL",
    "build_processor",
    "dispose_engines",
    "enqueue_2fa_notification",
    "enqueue_notification_job",
    "enqueue_notification_jobs",
    "enqueue_user_invitation",
    "get_engine",
    "get_session_factory",
    "missing_notification_jobs",
    "process_outbox_notification",
    "retry_policy_from_settings",
    "use_delivery",
]
