"""Bounds on a pickle, checked on its opcode stream before anything of it is built.

Unpickling runs in this long-lived process, beside every other job: what a
stock RQ work-horse would lose alone (a crash in C, a loop that never ends)
takes down or changes all jobs here.  :func:`scan` walks the opcodes with
:func:`pickletools.genops` and simulates the unpickler's stack (what each item
is, how deeply it nests), so a payload over a bound is refused before it is
hashed, iterated or built:

* nesting depth (:data:`MAX_DEPTH`): a tuple nested 200,000 deep as a dict key
  crashes CPython (``tuplehash`` recurses in C without a check), plain pickle too;
* total opcodes (:data:`MAX_OPCODES`) and integer size (:data:`MAX_INT_BYTES`);

and, for the restricted (``--allow-module``) unpickler only:

* calls of the safe value types take literal arguments: never an object made by
  another call (``list(IPv4Network(...))``, ``int(Decimal(...))``), except the
  time zones an aware ``datetime`` needs; ``Decimal``/``Fraction`` strings are
  bounded (:data:`MAX_DECIMAL_DIGITS`);
* ``BUILD`` (attribute setting), ``APPEND``/``SETITEM`` and the like only target
  objects this payload created, never a function, class, module-level object or
  attribute that a name resolved to, so no job changes what later jobs see.

The scan is pure Python (about a microsecond per opcode); payloads large enough
for that to matter are decoded off the event loop.
"""

from __future__ import annotations

import decimal
import enum
import pickle
import pickletools
from collections.abc import Callable, Collection
from typing import Any

#: Deepest nesting of containers and objects inside one another that job data may have.
MAX_DEPTH = 200
#: Most pickle opcodes (roughly: values) one job's data may hold.
MAX_OPCODES = 5_000_000
#: Largest integer in job data, in bytes (16,384 bits: more than 4,900 decimal digits).
MAX_INT_BYTES = 2048
#: Most digits (plus exponent) of a ``Decimal`` or ``Fraction`` given as a string; matches Python's
#: limit on int/str conversions, so ``int(Decimal(...))`` of job data costs at most that.
MAX_DECIMAL_DIGITS = 4300

#: Calls of safe types whose arguments may be objects made by other calls: an aware time's zone.
_TZ_TAKERS = frozenset({("datetime", "datetime"), ("datetime", "time"), ("datetime", "timezone")})
_TZ_MAKERS = frozenset({("datetime", "timezone"), ("datetime", "timedelta"), ("zoneinfo", "ZoneInfo")})
_NUMBER_PARSERS = frozenset({("decimal", "Decimal"), ("fractions", "Fraction")})


class PickleBoundsError(pickle.UnpicklingError):
    """Job data exceeds a bound or does something the restricted unpickler never allows; nothing was built."""


class _Item:
    """What the simulated stack holds: the kind of object, its nesting depth, and for names their origin."""

    __slots__ = ("depth", "elems", "kind", "name", "value")

    def __init__(self, kind: str, depth: int = 0, name: Any = None, value: Any = None) -> None:
        self.kind = kind  # leaf, str, container, tuple, global, attr, call, new
        self.depth = depth
        self.name = name  # global: (module, qualname); call/new: the callee's item
        self.value = value  # str: the text (restricted scans); tuple: its elements
        self.elems: list[_Item] | None = None


_LEAF = _Item("leaf")
_LEAVES = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "NONE", "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "NEXT_BUFFER", "PERSID",
})
_LONGS = frozenset({"LONG", "LONG1", "LONG4"})
_TEXT = frozenset({"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})
_NO_STACK = frozenset({"PROTO", "FRAME", "READONLY_BUFFER", "STOP"})
_MUTATORS = {"APPEND": "APPEND (append)", "APPENDS": "APPENDS (extend)", "SETITEM": "SETITEM (item assignment)",
             "SETITEMS": "SETITEMS (item assignment)", "ADDITEMS": "ADDITEMS (add)",
             "BUILD": "BUILD (setting attributes or state)"}
_FRESH = frozenset({"container", "tuple", "new", "call"})


def _where(what: str, pos: int | None) -> str:
    return f"{what} at byte {pos}" if pos is not None else what


def _refuse(reason: str, advice: str = "") -> PickleBoundsError:
    return PickleBoundsError(f"job data {reason}; it was not unpickled and the job did not run" + (
        f". {advice}" if advice else ""))


def _invalid(what: str) -> pickle.UnpicklingError:
    """Not a pickle at all (the unpickler would fail there too): reported like the unpickler's own errors."""
    return pickle.UnpicklingError(f"not a valid pickle ({what})")


class _Scan:
    def __init__(
        self,
        safe_globals: Collection[tuple[str, str]] | None,
        find_class: Callable[[str, str], Any] | None,
    ) -> None:
        self.restricted = safe_globals is not None
        self.safe = safe_globals or frozenset()
        self.find_class = find_class
        self.stack: list[_Item] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Item] = {}

    # -- stack ------------------------------------------------------------------------------------
    def pop(self) -> _Item:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) <= fence:
            raise _invalid("it takes from an empty stack")
        return self.stack.pop()

    def top(self) -> _Item:
        fence = self.marks[-1] if self.marks else 0
        if len(self.stack) <= fence:
            raise _invalid("it takes from an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list[_Item]:
        if not self.marks:
            raise _invalid("a MARK is missing")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def nest(self, kind: str, items: list[_Item], pos: int) -> _Item:
        depth = 1 + max((i.depth for i in items), default=0)
        self.check_depth(depth, pos)
        item = _Item(kind, depth)
        if kind == "tuple":
            item.elems = items
        return item

    @staticmethod
    def check_depth(depth: int, pos: int) -> None:
        if depth > MAX_DEPTH:
            raise _refuse(
                f"is nested deeper than {MAX_DEPTH} levels ({_where('containers or objects inside one another', pos)})"
                ", deeper than hashing and building it is safe for the worker process and every job in it",
                "Flatten the job's arguments, or pass deep structures by reference (a URL, a file path or a "
                "database id)",
            )

    # -- the rules for the restricted unpickler -------------------------------------------------------
    def callee_name(self, item: _Item) -> tuple[str, str] | None:
        return item.name if item.kind == "global" and isinstance(item.name, tuple) else None

    def check_call(self, callee: _Item, args: _Item | None, pos: int) -> None:
        if not self.restricted:
            return
        name = self.callee_name(callee)
        if name is None or name not in self.safe:
            return  # an allowed module's own callable: its arguments are its business
        dotted = ".".join(name)
        if args is None or args.elems is None:
            raise _refuse(f"calls {dotted} with arguments that are not written out (at byte {pos})")
        for arg in args.elems:
            if arg.kind in ("call", "new", "attr"):
                maker = self.callee_name(arg.name) if isinstance(arg.name, _Item) else None
                if name in _TZ_TAKERS and (maker in _TZ_MAKERS or (arg.kind == "call" and maker is None)):
                    continue  # an aware datetime/time and its zone (ZoneInfo pickles through getattr)
                made = ".".join(maker) if maker else "another call"
                raise _refuse(
                    f"passes an object made by {made} to {dotted} (at byte {pos}); the safe value "
                    "types only take literal arguments, because such compositions (int(Decimal('1e1000000')), "
                    "list(IPv4Network('0.0.0.0/0'))) can run for hours"
                )
            if name in _NUMBER_PARSERS:
                if arg.kind == "tuple":
                    raise _refuse(f"builds a {dotted} from a tuple (at byte {pos}); pickle stores "
                                  "them as strings, and the tuple form has no bound on its exponent")
                if arg.kind == "str":
                    self.check_number_text(dotted, arg.value, pos)

    @staticmethod
    def check_number_text(dotted: str, text: Any, pos: int) -> None:
        parts = str(text).split("/") if dotted == "fractions.Fraction" else [str(text)]
        for part in parts:
            try:
                d = decimal.Decimal(part.strip().replace("_", ""))
            except (decimal.InvalidOperation, ValueError):
                continue  # the real constructor raises its own error for this
            if not d.is_finite():
                continue
            size = len(d.as_tuple().digits) + abs(int(d.as_tuple().exponent))
            if size > MAX_DECIMAL_DIGITS:
                raise _refuse(
                    f"holds a {dotted} with more than {MAX_DECIMAL_DIGITS} digits and exponent together "
                    f"(at byte {pos}), which could take hours to convert",
                    "Pass such numbers as text the job parses itself"
                )

    def check_target(self, op: str, target: _Item, pos: int) -> None:
        if not self.restricted:
            return
        what = _MUTATORS[op]
        if target.kind in ("container", "tuple"):
            return
        if target.kind in ("new", "call") and isinstance(target.name, _Item):
            name = self.callee_name(target.name)
            if name is not None and self.find_class is not None:
                if name in self.safe and name != ("uuid", "UUID"):
                    if op == "BUILD":
                        raise _refuse(f"applies {what} to a {'.'.join(name)} (at byte {pos}), "
                                      "which its pickles never do")
                    return
                made_by = self.find_class(*name)
                if isinstance(made_by, type) and not issubclass(made_by, enum.Enum):
                    return  # a fresh instance of an allowed class
                made = "a function call" if not isinstance(made_by, type) else "an Enum lookup (a shared member)"
                raise _refuse(
                    f"applies {what} to the result of {made} to {'.'.join(name)} (at byte {pos}); "
                    "only objects the job data itself creates may be changed while unpickling, so that no "
                    "job changes what later jobs see"
                )
            return
        origin = ".".join(target.name) if target.kind == "global" and isinstance(target.name, tuple) else (
            "an attribute fetched with getattr" if target.kind == "attr" else f"a {target.kind}")
        raise _refuse(
            f"applies {what} to {origin} (at byte {pos}), which the job data did not create; it "
            "would change that object for every later job in the worker. Only objects the job data itself "
            "creates may be changed while unpickling"
        )

    # -- the walk ------------------------------------------------------------------------------------
    def run(self, data: bytes) -> None:
        push = self.stack.append
        for count, (op, raw_arg, at) in enumerate(pickletools.genops(data), 1):
            arg: Any = raw_arg
            pos = at or 0
            if count > MAX_OPCODES:
                raise _refuse(
                    f"holds more than {MAX_OPCODES:,} pickle opcodes (values)",
                    "Pass large data by reference (a URL, a file path or a database id) instead of in the "
                    "job's arguments"
                )
            name = op.name
            if name in _LEAVES:
                push(_LEAF)
            elif name in _TEXT:
                push(_Item("str", value=arg) if self.restricted and len(arg) <= 2 * MAX_DECIMAL_DIGITS else _LEAF)
            elif name in _LONGS:
                if isinstance(arg, int) and arg.bit_length() > MAX_INT_BYTES * 8:
                    raise _refuse(
                        f"holds an integer of more than {MAX_INT_BYTES * 8} bits (at byte {pos})",
                        "Pass such numbers as text or bytes the job converts itself"
                    )
                push(_LEAF)
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
                push(_Item("container", 1))
            elif name == "EMPTY_TUPLE":
                item = _Item("tuple", 1)
                item.elems = []
                push(item)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [self.pop() for _ in range(n)][::-1]
                push(self.nest("tuple", items, pos))
            elif name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
                push(self.nest("tuple" if name == "TUPLE" else "container", self.pop_mark(), pos))
            elif name in ("APPEND", "SETITEM"):
                items = [self.pop()] if name == "APPEND" else [self.pop(), self.pop()]
                self.grow(name, self.top(), items, pos)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = self.pop_mark()
                self.grow(name, self.top(), items, pos)
            elif name == "MARK":
                self.marks.append(len(self.stack))
            elif name == "POP":
                if self.stack and len(self.stack) > (self.marks[-1] if self.marks else 0):
                    self.stack.pop()
                else:
                    self.pop_mark()
            elif name == "POP_MARK":
                self.pop_mark()
            elif name == "DUP":
                push(self.top())
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                self.memo[arg] = self.top()
            elif name == "MEMOIZE":
                self.memo[len(self.memo)] = self.top()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in self.memo:
                    raise _invalid(f"memo {arg} is read before it is written")
                push(self.memo[arg])
            elif name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                push(_Item("global", name=(module, qualname)))
            elif name == "STACK_GLOBAL":
                qual, mod = self.pop(), self.pop()
                ok = mod.kind == "str" and qual.kind == "str"
                push(_Item("global", name=(mod.value, qual.value) if ok else None))
            elif name in ("EXT1", "EXT2", "EXT4"):
                push(_Item("global"))
            elif name == "REDUCE":
                args, callee = self.pop(), self.pop()
                self.check_call(callee, args, pos)
                kind = "attr" if self.callee_name(callee) == ("builtins", "getattr") else "call"
                push(_Item(kind, max(args.depth, 1), name=callee))
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                kwargs = self.pop() if name == "NEWOBJ_EX" else None
                args, cls = self.pop(), self.pop()
                if kwargs is not None and kwargs.depth > 1:
                    self.check_call(cls, None, pos)
                self.check_call(cls, args, pos)
                push(_Item("new", max(args.depth, kwargs.depth if kwargs else 0, 1), name=cls))
            elif name in ("OBJ", "INST"):
                items = self.pop_mark()
                if name == "INST":
                    module, _, qualname = str(arg).partition(" ")
                    cls = _Item("global", name=(module, qualname))
                else:
                    if not items:
                        raise _invalid("OBJ without a class")
                    cls, items = items[0], items[1:]
                args = self.nest("tuple", items, pos)
                self.check_call(cls, args, pos)
                push(_Item("new", args.depth, name=cls))
            elif name == "BUILD":
                state = self.pop()
                self.grow(name, self.top(), [state], pos)
            elif name == "BINPERSID":
                self.pop()
                push(_LEAF)
            elif name in _NO_STACK:
                pass
            else:  # pragma: no cover - every opcode of protocols 0-5 is handled above
                raise _refuse(f"uses the pickle opcode {name}, which this worker does not know")

    def grow(self, op: str, target: _Item, items: list[_Item], pos: int) -> None:
        self.check_target(op, target, pos)
        depth = 1 + max((i.depth for i in items), default=0)
        if depth > target.depth:
            self.check_depth(depth, pos)
            if target.kind in _FRESH:
                target.depth = depth
            # Depths are tracked per object as it is built; a list appended to after it was put in
            # another list can nest deeper than counted, but only through mutable containers, whose
            # recursive operations CPython checks (RecursionError): the unchecked one is hashing, and
            # only immutable tuples and frozensets hash their items, counted when they are built.


def scan(
    data: bytes,
    safe_globals: Collection[tuple[str, str]] | None = None,
    find_class: Callable[[str, str], Any] | None = None,
) -> None:
    """Raise :class:`PickleBoundsError` if ``data`` exceeds a bound; build nothing.

    With ``safe_globals`` (the restricted unpickler's safe value types) the rules on
    calls and on changing objects apply too; ``find_class`` resolves a name whose
    result a payload wants to change (to tell a class from a function).
    """
    if safe_globals is None and len(data) <= MAX_DEPTH:
        # Each bound counts something that one opcode byte adds at most one of (a nesting level, an
        # opcode, a byte of an integer): a pickle this short cannot exceed any, and without the
        # restricted rules there is nothing else to check (the unpickler reports a malformed one).
        # Most job payloads are this short; the walk costs ~2 us per opcode.
        return
    try:
        _Scan(safe_globals, find_class).run(data)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _invalid(str(exc)) from None


__all__ = ["MAX_DECIMAL_DIGITS", "MAX_DEPTH", "MAX_INT_BYTES", "MAX_OPCODES", "PickleBoundsError", "scan"]
