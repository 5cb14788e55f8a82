"""RQ's on-Redis format (RQ 2.12 and 3.x): keys, serializers, a sans-IO codec and an async store.

Nothing in this package knows about the worker's event loop policy, SMTP, HTTP,
SQL or settings.  ``codec`` is pure (no I/O); ``store`` speaks redis.asyncio.
"""
