"""Deprecated: the old path of the connection settings; import asyncjobs.connection instead (this module goes in the next
release, see CHANGELOG.md)."""

from __future__ import annotations

import warnings

from asyncjobs.connection import DEFAULT_REDIS_URL, RedisTarget  # noqa: F401

warnings.warn(
    "asyncjobs.worker.connection moved: import asyncjobs.connection instead", DeprecationWarning, stacklevel=2
)
