"""Resolve a job's function from RQ's ``data`` tuple, like RQ does, with an optional allow-list."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from asyncjobs.protocol.codec import Call


class ResolveError(Exception):
    """The job names a function that cannot be found or is not allowed."""


class FunctionResolver:
    def __init__(self, allowed_modules: tuple[str, ...] = ()) -> None:
        self.allowed_modules = allowed_modules
        self._cache: dict[str, Callable[..., Any]] = {}

    def _check_allowed(self, dotted: str) -> None:
        if not self.allowed_modules:
            return
        for prefix in self.allowed_modules:
            if dotted == prefix or dotted.startswith(prefix + "."):
                return
        raise ResolveError(
            f"function {dotted!r} is not in an allowed module ({', '.join(self.allowed_modules)}); "
            "add its module to --allow-module or enqueue a function from an allowed module"
        )

    def resolve(self, call: Call) -> Callable[..., Any]:
        if call.instance is not None:
            func = getattr(call.instance, call.func_name, None)
            if func is None or not callable(func):
                raise ResolveError(
                    f"{type(call.instance).__name__} instance has no callable attribute {call.func_name!r}"
                )
            self._check_allowed(type(call.instance).__module__ + "." + type(call.instance).__qualname__)
            return func  # type: ignore[no-any-return]
        cached = self._cache.get(call.func_name)
        if cached is not None:
            return cached
        func = self._import(call.func_name)
        self._cache[call.func_name] = func
        return func

    def _import(self, dotted: str) -> Callable[..., Any]:
        self._check_allowed(dotted)
        module_name, _, attribute = dotted.rpartition(".")
        if not module_name:
            # RQ also accepts builtins by bare name.
            import builtins

            if hasattr(builtins, attribute):
                return getattr(builtins, attribute)  # type: ignore[no-any-return]
            raise ResolveError(f"cannot import {dotted!r}: give the full dotted path, e.g. 'myapp.tasks.send'")
        # Walk down: the path may name a class attribute (module.Class.method).
        parts = dotted.split(".")
        module: Any = None
        for i in range(len(parts) - 1, 0, -1):
            try:
                module = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError as exc:
                if exc.name and ".".join(parts[:i]).startswith(exc.name):
                    continue
                raise ResolveError(f"cannot import {dotted!r}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                raise ResolveError(f"cannot import {dotted!r}: importing its module raised {type(exc).__name__}: {exc}") from exc
            obj: Any = module
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError as exc:
                raise ResolveError(
                    f"cannot import {dotted!r}: module {'.'.join(parts[:i])!r} has no attribute path "
                    f"{'.'.join(parts[i:])!r}; check the function name and that the worker runs the same code as the producer"
                ) from exc
            if not callable(obj):
                raise ResolveError(f"{dotted!r} is not callable")
            return obj  # type: ignore[no-any-return]
        raise ResolveError(
            f"cannot import {dotted!r}: no module {parts[0]!r} on the worker's path; "
            "install it or start the worker with --path pointing at your code"
        )


def is_async_callable(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - callable instances with async __call__
    return call is not None and inspect.iscoroutinefunction(call)
