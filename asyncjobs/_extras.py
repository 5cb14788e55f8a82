"""Clear errors for the optional batteries: the core needs only rq and redis."""

from __future__ import annotations

DISTRIBUTION = "asyncjobs-rq"


class MissingExtraError(ImportError):
    """An optional package a battery needs is not installed; the message names the extra."""


def missing_extra(extra: str, feature: str, error: ImportError) -> MissingExtraError:
    """``raise missing_extra("email", "asyncjobs.delivery.email", exc) from exc`` at a guarded import."""
    package = error.name or str(error)
    return MissingExtraError(
        f"{feature} needs the optional package {package!r}, which is not installed: "
        f"pip install '{DISTRIBUTION}[{extra}]' (or '{DISTRIBUTION}[all]')",
        name=error.name,
    )


class UnsupportedVersionError(ImportError):
    """An optional package is installed in a version a battery cannot work with; the message names the
    installed version, the supported range and the fix.  A built-in adapter raising it is reported once
    at worker start-up and left out (see ``asyncjobs.worker.hookset.add_auto_adapters``)."""
