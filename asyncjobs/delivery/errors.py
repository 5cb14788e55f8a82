"""Delivery error tree: every failure is classified at the boundary.

* :class:`TransientDeliveryError` -- worth retrying later (connection errors,
  timeouts, SMTP 4xx, HTTP 429/5xx).  ``retry_after`` carries a server hint
  (seconds) when one was given.
* :class:`PermanentDeliveryError` -- retrying cannot help (SMTP 5xx, invalid
  address, HTTP 4xx, header injection, bad configuration).

Messages say what happened and what to do; they never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "DeliveryConfigurationError",
    "DeliveryError",
    "HeaderInjectionError",
    "InvalidAddressError",
    "InvalidPhoneNumberError",
    "PermanentDeliveryError",
    "RecipientRejectedError",
    "TransientDeliveryError",
]


class DeliveryError(Exception):
    """Base class of every delivery failure."""

    transient: bool = False

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: SMTP reply code or HTTP status when the failure came from a server.
        self.code = code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Keep exceptions picklable (RQ may pickle exc_info objects).
        return (_rebuild, (type(self), self.message, self.code, getattr(self, "retry_after", None)))


def _rebuild(
    cls: type[DeliveryError], message: str, code: int | None, retry_after: float | None
) -> DeliveryError:
    exc = cls.__new__(cls)
    DeliveryError.__init__(exc, message, code=code)
    if issubclass(cls, TransientDeliveryError):
        exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


class TransientDeliveryError(DeliveryError):
    """A failure that may succeed if retried later."""

    transient = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: int | None = None, slow_down: bool = False
    ) -> None:
        super().__init__(message, code=code)
        #: Seconds the server asked us to wait (Retry-After), if any.
        self.retry_after = retry_after
        #: The provider asked us to send less (HTTP 429): under asyncjobs the job raises
        #: ``asyncjobs.Throttled`` and its queue is paused, instead of retrying while holding a slot.
        self.slow_down = slow_down


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying cannot fix."""


class InvalidAddressError(PermanentDeliveryError, ValueError):
    """A malformed email address, rejected before anything was sent."""


class InvalidPhoneNumberError(PermanentDeliveryError, ValueError):
    """A phone number that is not in E.164 form, rejected before anything was sent."""


class HeaderInjectionError(PermanentDeliveryError, ValueError):
    """A header value contained CR or LF, rejected before anything was sent."""


class RecipientRejectedError(PermanentDeliveryError):
    """The server refused every recipient permanently."""


class AuthenticationError(PermanentDeliveryError):
    """The provider refused our credentials."""


class DeliveryConfigurationError(PermanentDeliveryError):
    """The delivery layer is misconfigured (e.g. an unknown SMS provider)."""
