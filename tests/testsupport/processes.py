"""Stopping the processes tests start, by PID, politely first (the package's own helper)."""

from __future__ import annotations

from examples.devserver import terminate

__all__ = ["terminate"]
