"""What ``--allow-module`` admits, shared by the function resolver and the restricted unpickler.

The rule: a name is looked up attribute by attribute from a module whose name
is under an allowed prefix, never through another module object and never
through a dunder attribute, and the object it names must itself be defined
under an allowed prefix (its own ``__module__``).  So ``myapp.tasks.os.system``
is refused (it walks through the module ``os``), and so is
``myapp.tasks.run`` after ``from subprocess import run`` (``run.__module__`` is
``subprocess``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any


class NotAllowedError(Exception):
    """A name resolves to something outside the allowed modules."""


def module_allowed(module: str, prefixes: Sequence[str]) -> bool:
    """``module`` is one of ``prefixes`` or inside one of them (``a.b`` is inside ``a``, ``ab`` is not)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def own_module(obj: Any) -> str | None:
    """The module an object says it was defined in (``__module__``), or None."""
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def describe_prefixes(prefixes: Sequence[str]) -> str:
    return ", ".join(prefixes) if prefixes else "none"


def walk_attributes(root: Any, path: str, dotted: str) -> Any:
    """``root.<path>`` one attribute at a time, refusing module objects and dunder attributes on the way.

    Raises AttributeError if an attribute is missing, NotAllowedError for a refused step.
    """
    obj = root
    for part in path.split("."):
        if not part or (part.startswith("__") and part.endswith("__")):
            raise NotAllowedError(f"{dotted!r} names the special attribute {part!r}, which --allow-module never follows")
        obj = getattr(obj, part)
        if isinstance(obj, ModuleType):
            raise NotAllowedError(
                f"{dotted!r} goes through the module {obj.__name__!r}; --allow-module only admits objects "
                "defined in an allowed module, never a walk through another module"
            )
    return obj


def check_defined_in(obj: Any, dotted: str, prefixes: Sequence[str]) -> Any:
    """Return ``obj`` if its own ``__module__`` is under ``prefixes``; else raise NotAllowedError."""
    module = own_module(obj)
    if module is None or not module_allowed(module, prefixes):
        where = f"defined in {module!r}" if module else "not defined in any module"
        raise NotAllowedError(
            f"{dotted!r} is {where}, which is not in an allowed module ({describe_prefixes(prefixes)}); "
            "add that module with --allow-module if it is trusted"
        )
    return obj


def resolve_allowed(module_name: str, path: str, prefixes: Sequence[str]) -> Any:
    """Import ``module_name`` (only if allowed) and return ``module_name.<path>`` under the rule above."""
    dotted = f"{module_name}.{path}"
    if not module_allowed(module_name, prefixes):
        raise NotAllowedError(
            f"{dotted!r} is not in an allowed module ({describe_prefixes(prefixes)}); "
            "add its module with --allow-module if it is trusted"
        )
    module = importlib.import_module(module_name)
    return check_defined_in(walk_attributes(module, path, dotted), dotted, prefixes)


__all__ = [
    "NotAllowedError",
    "check_defined_in",
    "describe_prefixes",
    "module_allowed",
    "own_module",
    "resolve_allowed",
    "walk_attributes",
]
