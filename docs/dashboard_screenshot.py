"""Render rq-dashboard under the installed RQ with one asyncjobs worker running 50 jobs at once.

    .venv/bin/python docs/dashboard_screenshot.py        # needs chromium (apt-get install chromium)

It starts a private redis-server, enqueues 50 jobs that wait until released (``compat.jobs.async_hold``)
with stock RQ, runs ``asyncjobs-worker --concurrency 50`` until all 50 run, serves rq-dashboard on
loopback and has headless Chromium (no network beyond loopback: background networking, component
updates and sync off) render its "started" jobs page and its workers page into
``docs/images/rq-dashboard-rq<major>-started.png`` and ``...-workers.png``.  It also prints what RQ's
own readers say about the worker (``Worker.get_current_executions()``), then releases the jobs and
stops everything it started, by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N = 50
QUEUE = "emails"
NAME = "asyncjobs-c50-demo"


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> int:
    import redis
    import rq
    from rq import Queue
    from rq.worker import Worker

    from examples.devserver import PrivateRedis, free_port, terminate

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    major = rq.__version__.split(".", 1)[0]
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis()
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conn = redis.Redis.from_url(server.url)
        q = Queue(QUEUE, connection=conn)
        for i in range(N):
            q.enqueue("compat.jobs.async_hold", server.url, f"shot-{i}", 300,
                      description=f"send_welcome_email(user_id={1000 + i})")
        bindir = Path(sys.executable).parent
        procs.append(subprocess.Popen([str(bindir / "asyncjobs-worker"), "-u", server.url, "--name", NAME, "-c", str(N),
                                       QUEUE], cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: conn.llen("held:started") >= N, 60, f"{N} jobs running")
        worker = next(w for w in Worker.all(connection=conn) if w.name == NAME)
        if int(major) >= 3:
            executions = worker.get_current_executions()
            print(f"Worker.get_current_executions(): {len(executions)} executions; "
                  f"current_execution_count {worker.current_execution_count}")
        print(f"Worker.get_current_job(): {worker.get_current_job()}")
        port = free_port()
        procs.append(subprocess.Popen([str(bindir / "rq-dashboard"), "-u", server.url, "-b", "127.0.0.1", "-p", str(port),
                                       "--poll-interval", "60000"], cwd=str(ROOT),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: subprocess.run(["curl", "-sf", f"{base}/0/data/queues.json"], capture_output=True,
                                     check=False).returncode == 0, 30, "rq-dashboard")
        pages = {"started": f"{base}/0/view/jobs/{QUEUE}/started/100/asc/1", "workers": f"{base}/0/view/workers"}
        sizes = {"started": "1100,3650", "workers": "1100,420"}  # all 50 rows; the one worker row
        for what, url in pages.items():
            png = out / f"rq-dashboard-rq{major}-{what}.png"
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-first-run",
                 "--disable-extensions", "--hide-scrollbars", f"--window-size={sizes[what]}",
                 "--force-device-scale-factor=0.6", "--virtual-time-budget=8000", f"--screenshot={png}", url],
                check=True, capture_output=True, timeout=120,
            )
            print(f"wrote {png.relative_to(ROOT)}")
        for i in range(N):
            conn.set(f"release:shot-{i}", "1")
        return 0
    finally:
        for p in procs:
            terminate(p)
        server.close()


if __name__ == "__main__":
    sys.exit(main())
