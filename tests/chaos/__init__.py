"""The chaos suite of issue 9: thousands of jobs under injected faults, checked against RQ's semantics.

Run ``python -m tests.chaos`` (``make chaos``) for the bounded run or
``CHAOS_MINUTES=N make chaos`` for a soak.  See ``tests/chaos/README.md``.

This package is imported by the worker processes under test (``tests.chaos.jobs``),
so it must stay free of side effects at import time.
"""
