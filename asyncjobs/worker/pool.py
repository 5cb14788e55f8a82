"""``asyncjobs-worker --processes N``: supervise N worker processes.

Each child is a full worker with its own RQ identity (``<name>-<i>`` when a
name is given).  A child that dies is restarted (its in-flight jobs are
recovered by RQ's abandoned-job maintenance); SIGTERM/SIGINT is forwarded so
every child drains gracefully; a second signal is forwarded too (cold stop).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace
from types import FrameType

from asyncjobs.worker.config import WorkerConfig

log = logging.getLogger("asyncjobs.pool")


def _child(config: WorkerConfig, use_uvloop: bool) -> None:
    from asyncjobs.worker.runner import run_worker

    os._exit(run_worker(config, use_uvloop=use_uvloop))


def run_pool(config: WorkerConfig, processes: int, *, use_uvloop: bool = False) -> int:
    ctx = mp.get_context("fork")
    stopping = {"count": 0}
    children: dict[int, mp.process.BaseProcess] = {}

    def child_config(i: int) -> WorkerConfig:
        return replace(config, name=f"{config.name}-{i}" if config.name else None)

    def start(i: int) -> None:
        proc = ctx.Process(target=_child, args=(child_config(i), use_uvloop), name=f"asyncjobs-worker-{i}")
        proc.start()
        children[i] = proc
        log.info("started worker process %d (pid %s)", i, proc.pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping["count"] += 1
        for proc in children.values():
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(processes):
        start(i)
    while children:
        for i, proc in list(children.items()):
            if proc.is_alive():
                continue
            proc.join()
            del children[i]
            if stopping["count"] or config.burst or proc.exitcode == 0:
                continue
            log.warning("worker process %d exited with %s; restarting", i, proc.exitcode)
            start(i)
        time.sleep(0.2)
    return 0
