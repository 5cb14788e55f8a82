"""The RQ 2.12 Redis key names the Python side of asyncjobs uses (docs/rq-protocol.md §2).

RQ fixes its ``rq:`` prefix in its own classes, so the Lua scripts in ``protocol/lua/``
spell the keys they touch themselves; this module holds only what Python code builds.
"""

from __future__ import annotations

QUEUES = "rq:queues"  # the set of every queue's key
WORKERS = "rq:workers"


def queue(name: str) -> str:
    return f"rq:queue:{name}"


def job(job_id: str) -> str:
    return f"rq:job:{job_id}"


def execution(job_id: str, execution_id: str) -> str:
    return f"rq:execution:{job_id}:{execution_id}"


def started(name: str) -> str:
    return f"rq:wip:{name}"


def failed(name: str) -> str:
    return f"rq:failed:{name}"


def deferred(name: str) -> str:
    return f"rq:deferred:{name}"


def scheduled(name: str) -> str:
    return f"rq:scheduled:{name}"


def worker(name: str) -> str:
    return f"rq:worker:{name}"


def workers_of_queue(name: str) -> str:
    return f"rq:workers:{name}"


def pubsub(worker_name: str) -> str:
    return f"rq:pubsub:{worker_name}"
