"""Refresh the locks in this folder from pyproject.toml (``make lock``).

* ``dev.lock``: everything ``make test`` installs (the ``dev`` extra and the build tools), for every
  Python CI uses (one universal resolution, markers where versions differ), with hashes; RQ at the
  newest version the declared range allows (RQ 3).
* ``dev-rq2.lock``: ``dev.lock`` with RQ 2.12 instead (every other version as in ``dev.lock``), for
  ``make test LOCK=requirements/dev-rq2.lock``: asyncjobs supports both RQ majors and CI tests both.
* ``demo.lock``: what ``make demo`` installs (the ``demo`` extra).
* ``sentry2.lock``: the newest sentry-sdk 2.x, which ``make test-sentry2`` installs over ``dev.lock``
  (the Sentry adapter has a 2.x and a 3.x implementation; ``dev.lock`` holds 3.x).
* ``oldest.lock``: the lowest version pyproject.toml declares for each library a user combines with
  asyncjobs (the core dependencies and the runtime extras), with the test tools at their ``dev.lock``
  versions; ``make test-oldest`` installs it.  ``oldest.in`` is written beside it, so a reviewer sees
  which floors were pinned.

Needs ``uv`` (in the dev set) and network access to the package index.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Every Python CI runs is >= this; a universal lock covers the newer ones with markers.
PYTHON = "3.11"
#: The extras whose libraries users combine with asyncjobs (the runtime side of ``all``).
RUNTIME_EXTRAS = ("email", "sms", "outbox", "postgres", "uvloop", "metrics", "sentry", "otel")
#: The extras that hold test tools (what ``make test-oldest`` needs beside the floors).
TOOL_EXTRAS = ("test", "bench", "dev")
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def uv() -> str:
    exe = Path(sys.executable).with_name("uv")
    if not exe.exists():
        sys.exit(f"uv not found beside {sys.executable}: run `make install` first (uv is in the dev set)")
    return str(exe)


def compile_lock(
    out: str, *inputs: str, extras: tuple[str, ...] = (), extra_args: tuple[str, ...] = (), universal: bool = True
) -> None:
    argv = [uv(), "pip", "compile", *inputs, "--python-version", PYTHON, "--generate-hashes", "--quiet", "-o", out]
    if universal:
        argv.append("--universal")
    for extra in extras:
        argv += ["--extra", extra]
    argv += list(extra_args)
    print("+", " ".join(argv[1:]), flush=True)
    subprocess.run(argv, cwd=ROOT, check=True)


def floor(requirement: str) -> str:
    """``name[extra]>=X,<Y`` -> ``name[extra]==X``: the lowest version the range declares."""
    m = _REQ.match(requirement.split(";")[0])
    if m is None:
        raise SystemExit(f"cannot parse requirement {requirement!r} in pyproject.toml")
    name, extra, spec = m.groups()
    low = re.search(r">=\s*([^,\s]+)", spec)
    if low is None:
        raise SystemExit(f"{requirement!r} in pyproject.toml has no lower bound (>=): declare one")
    return f"{name}{extra or ''}=={low.group(1)}"


def oldest_inputs() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        reqs += [r for r in extras[extra] if not r.startswith("asyncjobs-rq")]
    floors: dict[str, str] = {}
    for req in reqs:
        pinned = floor(req)
        name = pinned.split("==")[0].split("[")[0].lower()
        # Two extras may name the same library (pydantic); the higher floor is the one that holds.
        old = floors.get(name)
        if old is None or _version_key(pinned) > _version_key(old):
            floors[name] = pinned
    return sorted(floors.values())


def _name(requirement: str) -> str:
    m = _REQ.match(requirement)
    return m.group(1).lower().replace("_", "-") if m else requirement

def _version_key(pinned: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", pinned.split("==")[1]))


def tool_constraints() -> str:
    """``dev.lock`` without hashes and markers, as ``name==version`` lines (uv constraints)."""
    lines = []
    for line in (HERE / "dev.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            lines.append(f"{m.group(1)}=={m.group(2)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    # RQ always at the newest version the range allows (uv otherwise keeps the lock's old pin).
    compile_lock("requirements/dev.lock", "pyproject.toml", "requirements/tools.in", extras=("dev",),
                 extra_args=("--upgrade-package", "rq"))
    # Everything at its dev.lock version (uv keeps the versions of the file it writes) except RQ: 2.12.
    shutil.copyfile(HERE / "dev.lock", HERE / "dev-rq2.lock")
    compile_lock("requirements/dev-rq2.lock", "pyproject.toml", "requirements/tools.in", extras=("dev",),
                 extra_args=("-c", "requirements/rq2.in"))
    compile_lock("requirements/demo.lock", "pyproject.toml", "requirements/tools.in", extras=("demo",))
    # The newest sentry-sdk 2.x alone (its dependencies are dev.lock's), for make test-sentry2.
    compile_lock("requirements/sentry2.lock", "requirements/sentry2.in", extra_args=("--no-deps",))
    floors = oldest_inputs()
    (HERE / "oldest.in").write_text(
        "# Written by requirements/lock.py: the lowest version pyproject.toml declares for each library\n"
        "# users combine with asyncjobs.  Do not edit; change the floors in pyproject.toml.\n"
        + "\n".join(floors) + "\n"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = [r for extra in TOOL_EXTRAS for r in project["optional-dependencies"][extra]
             if not r.startswith("asyncjobs-rq")]
    with tempfile.TemporaryDirectory() as tmp:
        tools_in = Path(tmp) / "test-tools.in"
        tools_in.write_text("\n".join(tools) + "\n")
        # The test tools themselves at their dev.lock versions; what they and the floors need beyond
        # that is resolved by uv.
        constraints = Path(tmp) / "tools-constraints.txt"
        pinned_names = {f.split("==")[0].split("[")[0].lower() for f in floors}
        tool_names = {_name(t) for t in tools} - pinned_names
        constraints.write_text("".join(
            line + "\n" for line in tool_constraints().splitlines() if _name(line) in tool_names
        ))
        compile_lock(
            "requirements/oldest.lock", "requirements/oldest.in", "requirements/tools.in", str(tools_in),
            extra_args=("-c", str(constraints)), universal=False,  # make test-oldest runs on the oldest Python
        )


if __name__ == "__main__":
    main()
