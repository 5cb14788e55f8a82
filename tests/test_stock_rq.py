"""The premise of tests/testsupport/stock_rq.py, checked against the installed redis-py.

RQ stops its command thread with ``stop()`` and then bounds the wait itself (``join(timeout=1)``).
From redis-py 8.2, ``stop()`` joins the thread with no bound, and a thread that has read the
UNSUBSCRIBE reply sits in ``get_message`` for ``sleep_time`` (RQ: 60 s) waiting for a new subscription.
When this test fails, redis-py (or RQ) changed: re-read the shim and remove it if it is not needed.
"""

from __future__ import annotations

import threading

import pytest
import redis

from tests.testsupport.stock_rq import RQ_STOP_BOUND, bound_pubsub_stop, stop_joins_unbounded
from tests.testsupport.workers import wait_for


def _unsubscribed_thread(conn: redis.Redis, sleep_time: float) -> tuple[redis.client.PubSub, threading.Thread]:
    """RQ's teardown up to its ``stop()``: subscribed thread, UNSUBSCRIBE read by the thread."""
    pubsub = conn.pubsub()
    pubsub.subscribe(**{"rq:pubsub:premise": lambda message: None})
    thread = pubsub.run_in_thread(sleep_time=sleep_time, daemon=True)
    wait_for(lambda: conn.pubsub_numsub("rq:pubsub:premise")[0][1] == 1, message="the thread's subscription")
    pubsub.unsubscribe()
    wait_for(lambda: not pubsub.subscribed, message="the thread to read the UNSUBSCRIBE reply")
    return pubsub, thread


def test_stop_of_an_unsubscribed_thread_waits_out_sleep_time(sync_redis: redis.Redis) -> None:
    if not stop_joins_unbounded():
        pytest.skip("this redis-py's PubSubWorkerThread.stop() does not join: the shim does nothing")
    _, thread = _unsubscribed_thread(sync_redis, sleep_time=3)
    thread.stop()  # unbounded: returns only once the thread has waited out sleep_time and ended
    assert not thread.is_alive()


def test_the_shim_gives_stop_rqs_own_bound(sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    if not stop_joins_unbounded():
        pytest.skip("this redis-py's PubSubWorkerThread.stop() does not join: the shim does nothing")
    monkeypatch.setattr(redis.client.PubSubWorkerThread, "stop", redis.client.PubSubWorkerThread.stop)
    bound_pubsub_stop()
    pubsub, thread = _unsubscribed_thread(sync_redis, sleep_time=30 + RQ_STOP_BOUND)
    thread.stop()  # bounded: back while the thread still waits for a subscription that never comes
    assert thread.is_alive()
    pubsub.subscribe("rq:pubsub:premise-end")  # wake it: it sees the cleared flag and ends
    wait_for(lambda: not thread.is_alive(), message="the thread to end once woken")
