"""Print the installed versions of the libraries users combine with asyncjobs (for CI logs)."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = (
    "rq", "redis", "aiosmtplib", "httpx", "aiohttp", "sqlalchemy", "pydantic", "pydantic-settings",
    "prometheus-client", "sentry-sdk", "opentelemetry-api", "opentelemetry-sdk", "uvloop", "asyncpg",
)


def main() -> None:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    print(f"Python {sys.version.split()[0]}: " + ", ".join(found))


if __name__ == "__main__":
    main()
