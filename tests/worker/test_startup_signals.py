"""Bug 7 (issue 9): SIGTERM and SIGINT are honoured while Redis is unreachable at start-up.

A real ``asyncjobs-worker`` process, as ``docker stop`` or Kubernetes would signal it: Redis
refusing connections, and Redis accepting them but never answering (a blackhole, where only
timeouts end a wait).  The worker must exit promptly and cleanly, without registering.
"""

from __future__ import annotations

import signal
from urllib.parse import urlparse

import pytest

from tests.testsupport.faultproxy import FaultProxy
from tests.testsupport.redis_server import free_port
from tests.testsupport.workers import run_asyncjobs_worker, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("fault", ["refused", "blackholed"])
def test_stop_signal_while_redis_is_unreachable_at_startup(fault: str, sig: int, redis_url: str) -> None:
    parsed = urlparse(redis_url)
    with FaultProxy(parsed.hostname or "127.0.0.1", parsed.port or 6379) as proxy:
        if fault == "refused":
            url = f"redis://127.0.0.1:{free_port()}/0"
        else:
            proxy.blackhole(True)
            url = proxy.url()
        with run_asyncjobs_worker(url, "default", "--name", f"w-{fault}") as proc:
            if fault == "refused":
                wait_for(lambda: "Redis unavailable" in proc.output(), 20, message=proc.output)
            else:
                wait_for(lambda: proxy.connections() > 0, 20, message=proc.output)
            proc.signal(sig)
            assert proc.wait(15) == 0, proc.output()
            assert "exiting before registration" in proc.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_before_the_worker_has_its_handlers(sig: int, redis_url: str) -> None:
    """A stop signal while the process still imports and reads its configuration (the event loop's
    handlers are not installed yet) is not fatal: the worker exits 0 before registering, as it does
    for a signal a moment later (seen in the chaos suite: a worker restarted and stopped at once died
    with -15)."""
    with run_asyncjobs_worker(redis_url, "default", "--name", "w-early") as proc:
        wait_for(lambda: "connecting to" in proc.output(), 20, interval=0.005, message=proc.output)
        proc.signal(sig)
        # A second signal (a cold stop) once the worker has stopped, while the process exits: the
        # event loop took its handlers with it, and the default action would kill the process.
        wait_for(lambda: "exiting before registration" in proc.output() or proc.returncode is not None, 15,
                 interval=0.002, message=proc.output)
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.output()
        assert "stop requested while starting" in proc.output()


def test_stop_signals_until_the_process_is_gone_do_not_kill_a_stopped_worker(redis_url: str) -> None:
    """Signals sent without pause from the worker's stop until the process is gone (a supervisor that
    repeats SIGTERM, a user pressing Ctrl-C again and again): none finds the default action.  Closing
    the event loop puts SIGTERM/SIGINT back to their default action before the console script can
    ignore them; a signal in that gap killed the worker with -15 (seen once in CI, test_oldest)."""
    with run_asyncjobs_worker(redis_url, "default", "--name", "w-storm") as proc:
        wait_for(lambda: "connecting to" in proc.output(), 20, interval=0.005, message=proc.output)
        proc.signal(signal.SIGTERM)
        wait_for(lambda: "exiting before registration" in proc.output() or proc.returncode is not None, 15,
                 interval=0.001, message=proc.output)
        sent = 0
        while proc.returncode is None and sent < 200_000:
            proc.signal(signal.SIGTERM if sent % 2 else signal.SIGINT)
            sent += 1
        assert proc.wait(15) == 0, f"after {sent} signals: {proc.output()}"
