"""The Lua scripts, all in ``asyncjobs/protocol/lua/`` (read once per name)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["lua"]


@cache
def lua(name: str) -> str:
    """The source of ``asyncjobs/protocol/lua/<name>``."""
    return resources.files("asyncjobs.protocol").joinpath("lua", name).read_text("utf-8")
