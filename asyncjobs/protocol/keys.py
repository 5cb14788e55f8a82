"""Redis key names used by RQ 2.12 (see rq-protocol.md §1)."""

from __future__ import annotations

import re

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")

QUEUES = "rq:queues"
WORKERS = "rq:workers"
SUSPENDED = "rq:suspended"
GROUPS = "rq:groups"


def queue(name: str) -> str:
    return f"rq:queue:{name}"


def intermediate(name: str) -> str:
    return f"rq:queue:{name}:intermediate"


def intermediate_first_seen(name: str, job_id: str) -> str:
    return f"rq:queue:{name}:intermediate:first_seen:{job_id}"


def job(job_id: str) -> str:
    return f"rq:job:{job_id}"


def dependents(job_id: str) -> str:
    return f"rq:job:{job_id}:dependents"


def dependencies(job_id: str) -> str:
    # Note the double colon: this is RQ's real key name.
    return f"rq:job::{job_id}:dependencies"


def results(job_id: str) -> str:
    return f"rq:results:{job_id}"


def execution(job_id: str, execution_id: str) -> str:
    return f"rq:execution:{job_id}:{execution_id}"


def executions(job_id: str) -> str:
    return f"rq:executions:{job_id}"


def started(name: str) -> str:
    return f"rq:wip:{name}"


def finished(name: str) -> str:
    return f"rq:finished:{name}"


def failed(name: str) -> str:
    return f"rq:failed:{name}"


def deferred(name: str) -> str:
    return f"rq:deferred:{name}"


def scheduled(name: str) -> str:
    return f"rq:scheduled:{name}"


def canceled(name: str) -> str:
    return f"rq:canceled:{name}"


def worker(name: str) -> str:
    return f"rq:worker:{name}"


def workers_of_queue(name: str) -> str:
    return f"rq:workers:{name}"


def pubsub(worker_name: str) -> str:
    return f"rq:pubsub:{worker_name}"


def clean_registries_lock(name: str) -> str:
    return f"rq:clean_registries:{name}"


def scheduler_lock(name: str) -> str:
    return f"rq:scheduler-lock:{name}"


def scheduler(name: str) -> str:
    return f"rq:scheduler:{name}"


def wip_member(job_id: str, execution_id: str) -> str:
    return f"{job_id}:{execution_id}"


def is_valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))
