"""Job payload serializers, byte-compatible with ``rq.serializers``.

``resolve_serializer`` accepts ``"pickle"`` (RQ's default), ``"json"``, RQ's own
class paths, or a dotted path to any object with ``dumps`` and ``loads``, like
``rq worker -S``.  Given an allow-list (``--allow-module``), pickle becomes
:class:`RestrictedPickleSerializer`: unpickling cannot reach anything outside
the allowed modules and a fixed set of safe argument types, so a hostile
payload cannot run code while it is decoded.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from asyncjobs.protocol.allowlist import (
    NotAllowedError,
    check_defined_in,
    describe_prefixes,
    module_allowed,
    own_module,
    walk_attributes,
)
from asyncjobs.protocol.picklescan import scan as scan_pickle


@runtime_checkable
class Serializer(Protocol):
    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    name = "pickle"

    def __init__(self) -> None:
        # rq.Worker records ``f"{serializer.__module__}.{serializer.__qualname__}"`` of what it is given.
        self.__qualname__ = type(self).__qualname__

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        scan_pickle(data)  # bounds first: a deep enough tuple crashes CPython itself, plain pickle too
        return pickle.loads(data)


#: Globals a restricted unpickler accepts from outside the allowed modules: plain value types whose
#: construction runs no user-controlled code and cannot allocate more than the payload describes.
#: Not included on purpose: ``getattr``/``eval``/``exec``-like builtins, ``bytes``/``bytearray``
#: (``bytes(10**12)``), ``range`` (``list(range(10**12))``), ``type``, ``os``/``subprocess``/``functools``.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("builtins", name) for name in (
        "bool", "complex", "dict", "float", "frozenset", "int", "list", "set", "slice", "str", "tuple",
    )}
    | {("datetime", name) for name in ("date", "datetime", "time", "timedelta", "timezone")}
    | {("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"), ("uuid", "SafeUUID")}
    | {("collections", name) for name in ("OrderedDict", "defaultdict", "deque", "Counter")}
    | {("zoneinfo", "ZoneInfo")}
    | {("pathlib", name) for name in ("PurePath", "PurePosixPath", "PureWindowsPath", "PosixPath", "WindowsPath")}
    | {("ipaddress", name) for name in (
        "IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network", "IPv4Interface", "IPv6Interface",
    )}
)

#: ``getattr(owner, name)`` pairs that pickles of safe types need (aware datetimes with a ZoneInfo).
_SAFE_GETATTR: frozenset[tuple[str, str, str]] = frozenset({("zoneinfo", "ZoneInfo", "_unpickle")})


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The payload names a global outside the allow-list; nothing of it was called."""


def _safe_global(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, prefixes: tuple[str, ...]) -> None:
        super().__init__(io.BytesIO(data))
        self._prefixes = prefixes

    def _refuse(self, dotted: str, why: str) -> ForbiddenGlobalError:
        return ForbiddenGlobalError(
            f"job data refers to {dotted}, {why}; it was not unpickled, because unpickling a name can run "
            f"code. Allowed: the modules given with --allow-module ({describe_prefixes(self._prefixes)}) and "
            "plain value types (builtin containers and numbers, datetime, decimal, fractions, uuid, "
            "collections, zoneinfo, pathlib, ipaddress). If the job is legitimate, allow its module "
            "with --allow-module"
        )

    def find_class(self, module: str, name: str) -> Any:
        dotted = f"{module}.{name}"
        if (module, name) in SAFE_GLOBALS:
            return _safe_global(module, name)
        if (module, name) == ("builtins", "getattr"):
            return self._getattr
        if not module_allowed(module, self._prefixes):
            raise self._refuse(dotted, f"defined in {module!r}, which is not an allowed module")
        try:
            obj = walk_attributes(importlib.import_module(module), name, dotted)
            return check_defined_in(obj, dotted, self._prefixes)
        except NotAllowedError as exc:
            raise self._refuse(dotted, f"which is refused: {exc}") from None
        except (ImportError, AttributeError) as exc:
            raise pickle.UnpicklingError(f"cannot find {dotted} for job data: {type(exc).__name__}: {exc}") from None

    def _getattr(self, owner: Any, name: Any) -> Any:
        """``getattr`` as pickles of bound methods use it, limited to what the allow-list admits."""
        owner_type = owner if isinstance(owner, type) else type(owner)
        if (own_module(owner_type), owner_type.__qualname__, name) in _SAFE_GETATTR:
            return getattr(owner, name)
        dotted = f"getattr({owner_type.__qualname__}, {name!r})"
        if not isinstance(name, str):
            raise self._refuse(dotted, "with a non-string attribute name")
        try:
            check_defined_in(owner_type, dotted, self._prefixes)
            return check_defined_in(walk_attributes(owner, name, dotted), dotted, self._prefixes)
        except NotAllowedError as exc:
            raise self._refuse(dotted, f"which is refused: {exc}") from None


class RestrictedPickleSerializer:
    """RQ's pickle format, but ``loads`` only admits the allowed modules and :data:`SAFE_GLOBALS`.

    Byte-compatible with ``rq.serializers.DefaultSerializer`` for every payload it
    accepts; ``dumps`` is plain pickle.
    """

    name = "pickle"
    restricted = True

    def __init__(self, allowed_modules: Sequence[str]) -> None:
        self.allowed_modules = tuple(allowed_modules)
        # rq.Worker records ``f"{serializer.__module__}.{serializer.__qualname__}"`` of what it is given.
        self.__qualname__ = type(self).__qualname__

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        scan_pickle(data, SAFE_GLOBALS, self._find_class)
        return _RestrictedUnpickler(data, self.allowed_modules).load()

    def _find_class(self, module: str, name: str) -> Any:
        return _RestrictedUnpickler(b"", self.allowed_modules).find_class(module, name)

    def __repr__(self) -> str:
        return f"RestrictedPickleSerializer({list(self.allowed_modules)!r})"


class JSONSerializer:
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


_ALIASES: dict[str, type[PickleSerializer] | type[JSONSerializer]] = {
    "pickle": PickleSerializer,
    "default": PickleSerializer,
    "rq.serializers.DefaultSerializer": PickleSerializer,
    "rq.serializers.PickleSerializer": PickleSerializer,
    "json": JSONSerializer,
    "rq.serializers.JSONSerializer": JSONSerializer,
}


class SerializerError(ValueError):
    pass


def resolve_serializer(
    spec: str | Serializer | type | None, allowed_modules: Sequence[str] = ()
) -> Serializer:
    """Return a serializer instance for ``spec`` (name, dotted path, class or instance).

    With ``allowed_modules``, RQ's pickle serializer is replaced by
    :class:`RestrictedPickleSerializer` (JSON needs no restriction; a custom
    serializer is returned as it is: its ``loads`` is its author's responsibility).
    """
    serializer = _resolve(spec)
    if allowed_modules and isinstance(serializer, PickleSerializer):
        return RestrictedPickleSerializer(allowed_modules)
    return serializer


def rq_serializer(serializer: Serializer, spec: str) -> Any:
    """``serializer`` in the form RQ's own classes accept (``Job``, registries, the scheduler).

    A restricted serializer is passed through, so job meta that RQ unpickles inside
    the worker obeys the same allow-list as the payload; plain pickle is passed through
    too (the same bytes as RQ's ``DefaultSerializer``), so meta is bounded like the payload.
    """
    from rq.serializers import resolve_serializer as rq_resolve

    if getattr(serializer, "restricted", False) or isinstance(serializer, PickleSerializer):
        return serializer
    name = getattr(serializer, "name", None)
    return rq_resolve(name if name in ("pickle", "json") else spec)


def _resolve(spec: str | Serializer | type | None) -> Serializer:
    if spec is None or spec == "":
        return PickleSerializer()
    if isinstance(spec, str):
        if spec in _ALIASES:
            return _ALIASES[spec]()
        module_name, _, attr = spec.rpartition(".")
        if not module_name:
            raise SerializerError(
                f"unknown serializer {spec!r}: use 'pickle', 'json' or a dotted path such as 'myapp.serializers.MySerializer'"
            )
        try:
            obj: Any = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SerializerError(f"cannot import serializer {spec!r}: {exc}") from exc
        return _resolve(obj)
    if isinstance(spec, ModuleType) and spec.__name__ in ("pickle", "json"):
        return PickleSerializer() if spec.__name__ == "pickle" else JSONSerializer()
    if isinstance(spec, type):
        # RQ's own classes have staticmethod dumps/loads; instantiate when possible.
        instance: Any = spec()
        spec = instance
    if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
        raise SerializerError(f"serializer {spec!r} must provide dumps(obj) -> bytes and loads(bytes) -> obj")
    return spec  # type: ignore[return-value]
