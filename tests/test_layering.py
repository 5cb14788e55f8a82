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
        if not _under(module, "asyncjobs.worker"):
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
