"""Transactional notifications, by their public name (``from asyncjobs.notifications import ...``).

A thin face over :mod:`asyncjobs.outbox.notifications`, the outbox battery's
composition: every name in its ``__all__`` is here.  ``asyncjobs.notifications.process_outbox_notification``
is the path RQ stores for outbox jobs (``JOB_FUNCTION``) and the one ``--allow-module`` names, so it stays.
"""

from __future__ import annotations

from asyncjobs.outbox import notifications as _impl
from asyncjobs.outbox.notifications import *  # noqa: F403  (the public names, as its __all__ lists them)

__all__ = _impl.__all__
