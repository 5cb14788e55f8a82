"""Run one worker process: logging set-up, event loop choice, signal handlers, exit code."""

from __future__ import annotations

import asyncio
import logging

from asyncjobs.worker.config import WorkerConfig
from asyncjobs.worker.logs import setup_logging

__all__ = ["run_worker", "setup_logging"]

log = logging.getLogger("asyncjobs")


def run_worker(config: WorkerConfig, *, use_uvloop: bool = False) -> int:
    from asyncjobs.protocol.serializers import SerializerError
    from asyncjobs.protocol.store import WorkerNameTaken
    from asyncjobs.worker.hooks import HookError, StartupHookFailed
    from asyncjobs.worker.worker import Worker

    try:
        worker = Worker(config)
    except (SerializerError, HookError) as exc:
        log.error("%s", exc)
        return 2
    if config.allowed_modules and getattr(worker.serializer, "name", None) not in ("pickle", "json"):
        log.warning(
            "--allow-module restricts which functions run, but the custom serializer %r decodes payloads "
            "with its own loads(): make sure it cannot run code from untrusted data",
            config.serializer,
        )

    async def main() -> None:
        worker.install_signal_handlers()
        await worker.run()

    try:
        if use_uvloop:
            try:
                import uvloop
            except ImportError:
                log.warning("--uvloop given but uvloop is not installed; using asyncio's loop")
            else:
                uvloop.run(main())
                return 0
        asyncio.run(main())
    except (WorkerNameTaken, StartupHookFailed) as exc:
        log.error("%s", exc)
        return 1
    return 0
