"""The installed RQ: its version, its major and the key prefix its own code uses.

asyncjobs runs with RQ 2.12 or RQ 3.x installed (docs/rq-protocol.md §13) and writes what the
installed major's readers expect.  Where the two majors differ on Redis, the difference is
decided here, once:

* ``RQ_MAJOR``: 2 or 3, from ``rq.version.VERSION``;
* :func:`installed_prefix`: the prefix of every RQ key (``rq`` unless RQ 3's ``RQ_KEY_PREFIX``
  environment variable, read by RQ itself at ``import rq``, says otherwise; RQ 2.12 has no such
  variable and always uses ``rq``);
* :func:`check_prefix`: the rule RQ 3 applies to a prefix, with an error that says what to do.

Nothing else in asyncjobs reads ``RQ_KEY_PREFIX`` or compares versions.
"""

from __future__ import annotations

import os
import re

from rq.version import VERSION as RQ_VERSION

__all__ = [
    "DEFAULT_PREFIX",
    "RQ_MAJOR",
    "RQ_VERSION",
    "SUPPORTED_MAJORS",
    "check_prefix",
    "hash_tag",
    "installed_prefix",
    "prefix_problem",
]

#: RQ's own default prefix, and the only one RQ 2.12 knows.
DEFAULT_PREFIX = "rq"
SUPPORTED_MAJORS = (2, 3)

RQ_MAJOR = int(RQ_VERSION.split(".", 1)[0])

#: RQ 3.0's rule (rq/defaults.py): the prefix is spliced into %-templates, format strings and Lua.
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:{}-]+")


def check_prefix(prefix: str) -> str:
    """``prefix`` if RQ 3 accepts it as ``RQ_KEY_PREFIX``; else a ValueError naming it and the rule."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"invalid key prefix {prefix!r}: RQ allows only letters, digits and _ . : - {{ }} "
            "(e.g. rq, myapp or {rq} for Redis Cluster)"
        )
    return prefix


def installed_prefix() -> str:
    """The prefix the installed RQ's own classes use in this process (``rq`` under RQ 2.12)."""
    import rq.defaults

    return str(getattr(rq.defaults, "RQ_KEY_PREFIX", DEFAULT_PREFIX))  # RQ 2.12 has none


def prefix_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why ``RQ_KEY_PREFIX`` in the environment cannot be honoured with the installed RQ, or None.

    RQ 2.12 ignores the variable (every 2.12 process uses ``rq:``), so a worker that followed it
    would share no key with the producers: refuse instead of running on an empty keyspace.
    """
    env = os.environ if environ is None else environ
    wanted = env.get("RQ_KEY_PREFIX")
    if wanted is None or RQ_MAJOR >= 3 or wanted == DEFAULT_PREFIX:
        return None
    return (
        f"RQ_KEY_PREFIX={wanted!r} is set, but the installed RQ {RQ_VERSION} ignores it (RQ 2.12 always "
        "uses the prefix 'rq'): unset RQ_KEY_PREFIX, or install RQ 3 (pip install 'rq>=3,<4') "
        "for producers and workers alike"
    )


def hash_tag(prefix: str) -> str | None:
    """The Redis Cluster hash tag of keys under ``prefix`` (``{rq}`` -> ``rq``), or None if it has none.

    Redis hashes only the part between the first ``{`` and the next ``}`` when that part is not
    empty, so every ``<prefix>:...`` key shares one slot exactly when the prefix has such a tag.
    """
    start = prefix.find("{")
    if start < 0:
        return None
    end = prefix.find("}", start + 1)
    if end <= start + 1:
        return None
    return prefix[start + 1:end]
