"""Deprecated: the old path of on_shutdown; import asyncjobs.hooks.on_shutdown instead (this module goes in the next
release, see CHANGELOG.md)."""

from __future__ import annotations

import warnings

from asyncjobs.hooks import on_shutdown, remove_shutdown_hook  # noqa: F401

warnings.warn(
    "asyncjobs.worker.lifecycle moved: import asyncjobs.hooks.on_shutdown instead", DeprecationWarning, stacklevel=2
)
