"""Issue 19: the import rules of the layout, read from the source (every import, also the lazy ones
inside functions).

* ``asyncjobs.worker`` is the engine: only the host (``asyncjobs.host``), the CLI and the package's
  public faces (``asyncjobs/__init__.py``, ``asyncjobs/hooks.py``) import it; the batteries
  (delivery, outbox, observability) use ``asyncjobs.hooks`` instead.
* The engine imports neither the host nor ``http.server``, and reads no environment.
* ``backoff``, ``metrics`` and ``redact`` are leaves: nothing of the package but the ``_extras`` helper.
* All Lua is in ``asyncjobs/protocol/lua/``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asyncjobs"
#: Deprecated old paths kept for one release (re-exports only; CHANGELOG.md): exempt from the rules.
SHIMS = {"asyncjobs.worker.runner"}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_only_the_host_the_cli_and_the_public_faces_import_the_engine() -> None:
    allowed = ("asyncjobs.worker", "asyncjobs.host", "asyncjobs.cli")
    faces = {"asyncjobs", "asyncjobs.hooks"}
    bad = {
        module: sorted(n for n in _imports(path) if _under(n, "asyncjobs.worker"))
        for module, path in _modules()
        if not any(_under(module, a) for a in allowed) and module not in faces
    }
    assert {m: n for m, n in bad.items() if n} == {}


def test_the_engine_imports_neither_the_host_nor_http_nor_the_environment() -> None:
    for module, path in _modules():
        if not _under(module, "asyncjobs.worker") or module in SHIMS:
            continue
        names = _imports(path)
        assert not [n for n in names if _under(n, "asyncjobs.host") or _under(n, "asyncjobs.cli")], module
        assert "http.server" not in names, module
        source = path.read_text()
        assert "os.environ" not in source and "getenv" not in source, f"{module} reads the environment"


def test_leaves_import_nothing_of_the_package() -> None:
    for leaf in ("backoff", "metrics", "redact"):
        names = _imports(PACKAGE / f"{leaf}.py")
        assert [n for n in names if _under(n, "asyncjobs") and not _under(n, "asyncjobs._extras")] == [], leaf


def test_all_lua_is_in_protocol_lua() -> None:
    inline = [module for module, path in _modules() if "redis.call(" in path.read_text()]
    assert inline == []


def test_the_public_face_names_each_public_name_once() -> None:
    import asyncjobs

    assert sorted(asyncjobs.__all__) == sorted([*asyncjobs._WHERE, "__version__"])
    for name in asyncjobs._WHERE:
        assert getattr(asyncjobs, name) is not None, name
    from asyncjobs import hooks

    assert asyncjobs.WorkerHooks is hooks.WorkerHooks and asyncjobs.on_shutdown is hooks.on_shutdown


def test_old_documented_paths_still_import_with_a_deprecation_warning() -> None:
    """The README documented these internals as user API: thin shims for one release."""
    import importlib
    import subprocess
    import sys

    for old, name in [("asyncjobs.worker.hooks", "WorkerHooks"), ("asyncjobs.worker.lifecycle", "on_shutdown"),
                      ("asyncjobs.worker.runner", "run_worker"), ("asyncjobs.worker.connection", "RedisTarget")]:
        code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
                f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('warned:', w)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert f"warned: {old} moved" in out, (old, out)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert getattr(importlib.import_module(old), name) is not None
    from asyncjobs.hooks import log_description
    from asyncjobs.worker.joblog import log_description as old_log_description

    assert old_log_description is log_description
