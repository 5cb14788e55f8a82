"""Checks a worker makes before it registers: settings of the batteries whose jobs it may run.

A worker that may run the delivery or outbox jobs (``asyncjobs.tasks``, ``asyncjobs.notifications``:
no ``--allow-module``, or one that admits them) reads their settings at start-up, so ``SMTP_PORT=abc``
stops it with one line naming the variable instead of failing every email job later.  The check is
named here and imported only then (the host imports nothing of the batteries); without the
batteries' extra installed the jobs could not run anyway, and nothing is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from asyncjobs.protocol.allowlist import module_allowed

__all__ = ["BATTERY_CHECKS", "battery_settings_problem"]

#: The battery job modules, and the function that validates their settings (raises ValueError).
BATTERY_CHECKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("asyncjobs.tasks", "asyncjobs.notifications"), "asyncjobs.delivery.settings:check_settings"),
)


def battery_settings_problem(allowed_modules: Sequence[str], *, at_start: bool = True) -> str | None:
    """The one-line reason the batteries' settings are unusable, or None (fine, or not this worker's job).
    ``at_start=False``: the message without the start-up explanation (``asyncjobs-worker check --settings``)."""
    for job_modules, check in BATTERY_CHECKS:
        if allowed_modules and not any(module_allowed(m, allowed_modules) for m in job_modules):
            continue
        module_name, _, func_name = check.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # the extra is not installed: these jobs cannot run here at all
            continue
        try:
            getattr(module, func_name)()
        except ValueError as exc:
            if not at_start:
                return str(exc)
            return (f"{exc} (read at start-up because this worker may run {' and '.join(job_modules)} jobs; "
                    "fix the variable, or restrict the worker with --allow-module)")
    return None
