"""The committed lock as pip/uv constraints, for tests that install the built wheel into a fresh venv."""

from __future__ import annotations

import re
from pathlib import Path

from tests.testsupport.workers import PROJECT_ROOT

LOCK = PROJECT_ROOT / "requirements" / "dev.lock"


def lock_constraints(directory: Path) -> Path:
    """``requirements/dev.lock`` as ``name==version ; markers`` lines (hashes dropped), in ``directory``."""
    pins = []
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*==[^\s\\]+)(\s*;[^\\]*)?", line)
        if m:
            pins.append(m.group(1) + (m.group(2) or "").rstrip())
    path = directory / "lock-constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path
