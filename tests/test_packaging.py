"""The package as users get it: a wheel whose core needs only rq and redis, and one-way layers.

``test_wheel_without_extras`` builds the sdist and wheel (checked by ``twine check``),
installs the wheel with no extras into a fresh virtual environment, and runs a job
through that environment's ``asyncjobs-worker --burst`` against the test Redis.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import redis
from rq import Queue

from asyncjobs import __version__
from tests.testsupport.packaging import lock_constraints
from tests.testsupport.workers import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "asyncjobs"
OPTIONAL = ("sqlalchemy", "aiohttp", "aiosmtplib", "httpx", "pydantic", "pydantic_settings", "aiosqlite",
            "prometheus_client", "sentry_sdk", "opentelemetry")


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def test_wheel_without_extras(tmp_path: Path, redis_url: str, sync_redis: redis.Redis) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: the build tools come from the lock (requirements/dev.lock), not from the index today.
    _run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(dist), str(PROJECT_ROOT)])
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.startswith(f"asyncjobs_rq-{__version__}-")
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    # Nothing for the demo or the tests in the wheel.
    names = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheels[0])], capture_output=True, text=True, check=True
    ).stdout
    for module in ("demo", "demo_jobs", "devserver", "testsupport"):
        assert f"/{module}.py" not in names and f"{module}/" not in names, f"{module} is in the wheel"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    # Only the wheel: a PYTHONPATH pointing at a checkout (with its .egg-info) would make pip skip the
    # install and the probes import the source tree instead.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # rq and redis at the lock's versions (as constraints), so the test gives the same result any day.
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheels[0]),
          "-c", str(lock_constraints(tmp_path))], env=clean)

    probe = _run(
        [python, "-c", (
            "import importlib.util, asyncjobs\n"
            "from asyncjobs import AsyncWorker\n"
            f"print(asyncjobs.__version__, [m for m in {OPTIONAL!r} if importlib.util.find_spec(m)])\n"
            "for battery, extra in (('asyncjobs.tasks', 'email'), ('asyncjobs.outbox', 'outbox'),\n"
            "                       ('asyncjobs.observability.sentry', 'sentry'),\n"
            "                       ('asyncjobs.observability.otel', 'otel')):\n"
            "    try:\n"
            "        __import__(battery)\n"
            "    except ImportError as exc:\n"
            "        assert f'asyncjobs-rq[{extra}]' in str(exc), str(exc)\n"
            "    else:\n"
            "        raise AssertionError(battery + ' imported without its extra')\n"
        )],
        cwd=tmp_path,
        env=clean,
    )
    assert probe.stdout.split(maxsplit=1) == [__version__, "[]\n"]

    job = Queue("default", connection=sync_redis).enqueue("operator.add", 2, 3)
    worker = _run([str(env_dir / "bin" / "asyncjobs-worker"), "-u", redis_url, "--burst", "default"],
                  cwd=tmp_path, env=clean)
    assert job.latest_result() is not None, worker.stderr
    assert job.return_value() == 5
    version = _run([str(env_dir / "bin" / "asyncjobs-worker"), "--version"], cwd=tmp_path, env=clean)
    assert version.stdout.startswith(f"asyncjobs-worker {__version__} ")
    # --metrics-port without the [metrics] extra: exit 2 with an error naming the extra.
    no_extra = subprocess.run(
        [str(env_dir / "bin" / "asyncjobs-worker"), "-u", redis_url, "--burst", "--metrics-port", "0", "default"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert no_extra.returncode == 2, no_extra.stderr
    assert "asyncjobs-rq[metrics]" in no_extra.stderr and "prometheus_client" in no_extra.stderr, no_extra.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_protocol_and_worker_import_no_battery() -> None:
    """One-way layers: the engine knows nothing of delivery, the outbox or their composition."""
    batteries = ("asyncjobs.delivery", "asyncjobs.outbox", "asyncjobs.tasks", "asyncjobs.notifications",
                 "asyncjobs.queues", "asyncjobs.cli", "asyncjobs.observability")
    offenders = []
    for layer in ("protocol", "worker"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in _imports(path):
                if name.startswith(batteries) or name.split(".")[0] in OPTIONAL:
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)} imports {name}")
    for path in sorted((PACKAGE / "protocol").rglob("*.py")):
        offenders += [f"{path.relative_to(PROJECT_ROOT)} imports {n}" for n in _imports(path)
                      if n.startswith("asyncjobs.worker")]
    assert offenders == []
