"""Job payload serializers, byte-compatible with ``rq.serializers``.

``resolve_serializer`` accepts ``"pickle"`` (RQ's default), ``"json"``, RQ's own
class paths, or a dotted path to any object with ``dumps`` and ``loads``, like
``rq worker -S``.
"""

from __future__ import annotations

import importlib
import json
import pickle
from types import ModuleType
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Serializer(Protocol):
    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


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


def resolve_serializer(spec: str | Serializer | type | None) -> Serializer:
    """Return a serializer instance for ``spec`` (name, dotted path, class or instance)."""
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
        return resolve_serializer(obj)
    if isinstance(spec, ModuleType) and spec.__name__ in ("pickle", "json"):
        return PickleSerializer() if spec.__name__ == "pickle" else JSONSerializer()
    if isinstance(spec, type):
        # RQ's own classes have staticmethod dumps/loads; instantiate when possible.
        instance: Any = spec()
        spec = instance
    if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
        raise SerializerError(f"serializer {spec!r} must provide dumps(obj) -> bytes and loads(bytes) -> obj")
    return spec  # type: ignore[return-value]
