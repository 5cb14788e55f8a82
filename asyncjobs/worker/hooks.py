"""Deprecated: the old path of the hooks' public names; import asyncjobs.hooks (or asyncjobs) instead (this module goes in the next
release, see CHANGELOG.md)."""

from __future__ import annotations

import warnings

from asyncjobs.hooks import (  # noqa: F401
    HOOK_NAMES,
    HookError,
    JobOutcome,
    JobStatus,
    JobView,
    StartupHookFailed,
    WorkerHooks,
)
from asyncjobs.worker.hookset import HookSet, load_hooks  # noqa: F401

warnings.warn(
    "asyncjobs.worker.hooks moved: import asyncjobs.hooks (or asyncjobs) instead", DeprecationWarning, stacklevel=2
)
