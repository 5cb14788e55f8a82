"""Stock ``rq`` for the tests, with one upstream incompatibility bounded: RQ with redis-py >= 8.2.

RQ's worker (2.12 and 3.0 alike) listens for commands in redis-py's ``PubSubWorkerThread`` with
``sleep_time=60``; at teardown it calls ``pubsub.unsubscribe()``, ``pubsub_thread.stop()`` and then
``pubsub_thread.join(timeout=1)`` (``rq/worker/base.py``, ``unsubscribe``): it expects ``stop()`` only to
clear the thread's running flag, which is all it did up to redis-py 8.1.  redis-py 8.2 made
``stop(timeout=None)`` join the thread with no bound, and a thread that has already read the
UNSUBSCRIBE reply waits in ``get_message`` for up to ``sleep_time`` for a new subscription.  So a stock
worker can take 60 s to exit after it has deregistered (measured here: one ``rq worker --burst`` exit in
four took 60.4 s; the others 0.5 s).  Its Redis state is final by then (``register_death`` runs before
``unsubscribe``), so nothing RQ's APIs report changes, but stock workers missed the tests' exit deadlines
(the five ``WaitTimeout`` failures of issue 16).

The stock ``rq`` the tests run (``python -m tests.testsupport.stock_rq ...``, see
``tests.testsupport.workers.rq_command``) gives ``stop()`` RQ's own 1 s bound; nothing else of RQ or
redis-py is changed.  ``tests/test_stock_rq.py`` checks the premise, so the shim goes once redis-py or RQ
fixes it.  asyncjobs itself is not affected: its command listener is its own (``worker/commands.py``).
"""

from __future__ import annotations

import inspect
from typing import Any

from redis.client import PubSubWorkerThread

#: RQ's own bound on the pub/sub thread's end (its ``join(timeout=1)`` after ``stop()``).
RQ_STOP_BOUND = 1.0


def stop_joins_unbounded() -> bool:
    """True for redis-py versions whose ``PubSubWorkerThread.stop()`` joins the thread (8.2 and later)."""
    return "timeout" in inspect.signature(PubSubWorkerThread.stop).parameters


def bound_pubsub_stop() -> None:
    if not stop_joins_unbounded() or getattr(PubSubWorkerThread.stop, "_bounded", False):
        return
    unbounded = PubSubWorkerThread.stop

    def stop(self: PubSubWorkerThread, timeout: float | None = None) -> None:
        unbounded(self, RQ_STOP_BOUND if timeout is None else timeout)  # type: ignore[call-arg]

    stop._bounded = True  # type: ignore[attr-defined]
    PubSubWorkerThread.stop = stop  # type: ignore[method-assign]


def main() -> Any:
    bound_pubsub_stop()
    from rq.cli import main as rq_main

    return rq_main()


if __name__ == "__main__":
    main()
