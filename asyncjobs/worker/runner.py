"""Deprecated: the old path of run_worker; import asyncjobs.run_worker instead (this module goes in the next
release, see CHANGELOG.md)."""

from __future__ import annotations

import warnings

from asyncjobs.host.runner import run_worker  # noqa: F401

warnings.warn(
    "asyncjobs.worker.runner moved: import asyncjobs.run_worker instead", DeprecationWarning, stacklevel=2
)
