"""Resolve a job's function from RQ's ``data`` tuple, like RQ does, with an optional allow-list.

Without an allow-list this is RQ's ``import_attribute``: any importable dotted
path.  With one (``--allow-module``), the rule of :mod:`asyncjobs.protocol.allowlist`
applies to job functions, methods of job instances and callbacks named in job
data: only modules under an allowed prefix are imported, the path is never
followed through another module object, and the object it names must itself be
defined in an allowed module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from asyncjobs.protocol.allowlist import (
    NotAllowedError,
    check_defined_in,
    describe_prefixes,
    module_allowed,
    walk_attributes,
)
from asyncjobs.protocol.codec import Call


class ResolveError(Exception):
    """The job names a function that cannot be found or is not allowed."""


def _not_allowed(what: str, dotted: str, prefixes: tuple[str, ...], detail: str = "") -> ResolveError:
    return ResolveError(
        f"{what} {dotted!r} is not in an allowed module ({describe_prefixes(prefixes)})"
        + (f": {detail}" if detail else "")
        + "; add its module to --allow-module or enqueue a function from an allowed module"
    )


class FunctionResolver:
    def __init__(self, allowed_modules: tuple[str, ...] = ()) -> None:
        self.allowed_modules = tuple(allowed_modules)
        self._cache: dict[str, Callable[..., Any]] = {}

    def resolve(self, call: Call) -> Callable[..., Any]:
        if call.instance is not None:
            return self._method(call)
        cached = self._cache.get(call.func_name)
        if cached is not None:
            return cached
        func = self._import(call.func_name, "function")
        self._cache[call.func_name] = func
        return func

    def resolve_name(self, dotted: str, what: str = "callback") -> Callable[..., Any]:
        """A callable named by dotted path in job data (e.g. ``on_success``), under the same rule."""
        return self._import(dotted, what)

    def _method(self, call: Call) -> Callable[..., Any]:
        instance = call.instance
        cls = type(instance)
        func = None
        if not self.allowed_modules:
            func = getattr(instance, call.func_name, None)
        else:
            dotted = f"{cls.__module__}.{cls.__qualname__}.{call.func_name}"
            try:
                check_defined_in(cls, dotted, self.allowed_modules)
                if call.func_name == "__call__":  # RQ's form for a callable instance
                    func = getattr(instance, "__call__", None)  # noqa: B004
                else:
                    func = walk_attributes(instance, call.func_name, dotted)
                if func is not None:
                    check_defined_in(func, dotted, self.allowed_modules)
            except NotAllowedError as exc:
                raise _not_allowed("method", dotted, self.allowed_modules, str(exc)) from None
            except AttributeError:
                func = None
        if func is None or not callable(func):
            raise ResolveError(f"{cls.__name__} instance has no callable attribute {call.func_name!r}")
        return func  # type: ignore[no-any-return]

    def _import(self, dotted: str, what: str) -> Callable[..., Any]:
        restricted = bool(self.allowed_modules)
        module_name, _, attribute = dotted.rpartition(".")
        if not module_name:
            if restricted and not module_allowed("builtins", self.allowed_modules):
                raise _not_allowed(what, dotted, self.allowed_modules)
            # RQ also accepts builtins by bare name.
            import builtins

            if hasattr(builtins, attribute):
                return getattr(builtins, attribute)  # type: ignore[no-any-return]
            raise ResolveError(f"cannot import {dotted!r}: give the full dotted path, e.g. 'myapp.tasks.send'")
        # Walk down: the path may name a class attribute (module.Class.method).
        parts = dotted.split(".")
        module: Any = None
        for i in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:i])
            if restricted and not module_allowed(name, self.allowed_modules):
                continue  # never import a module outside the allow-list, not even to look
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name and name.startswith(exc.name):
                    continue
                raise ResolveError(f"cannot import {dotted!r}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                raise ResolveError(
                    f"cannot import {dotted!r}: importing its module raised {type(exc).__name__}: {exc}"
                ) from exc
            path = ".".join(parts[i:])
            try:
                if restricted:
                    obj = check_defined_in(walk_attributes(module, path, dotted), dotted, self.allowed_modules)
                else:
                    obj = module
                    for attr in parts[i:]:
                        obj = getattr(obj, attr)
            except NotAllowedError as exc:
                raise _not_allowed(what, dotted, self.allowed_modules, str(exc)) from None
            except AttributeError as exc:
                raise ResolveError(
                    f"cannot import {dotted!r}: module {name!r} has no attribute path "
                    f"{path!r}; check the function name and that the worker runs the same code as the producer"
                ) from exc
            if not callable(obj):
                raise ResolveError(f"{dotted!r} is not callable")
            return obj  # type: ignore[no-any-return]
        if restricted:
            raise _not_allowed(what, dotted, self.allowed_modules)
        raise ResolveError(
            f"cannot import {dotted!r}: no module {parts[0]!r} on the worker's path; "
            "install it or start the worker with --path pointing at your code"
        )
