"""The Sentry adapter's one contact surface with sentry-sdk (``asyncjobs/observability/_sentry_compat.py``).

Everything the adapter uses from Sentry, internals included (``_start_check_in``,
``Scope.set_custom_sampling_context``, ``event_from_exception``'s keywords, ...), is listed by
``required_api()`` and checked here against the installed SDK: a sentry-sdk release that moves or
renames one of them fails this test, loudly and by name, rather than failing jobs.  CI runs it on
2.x and 3.x.

An SDK the adapter cannot work with (a version outside the supported range, or an API gone) is
said once at worker start-up, with the version and the fix; shown here with a real worker process
and a copy of the installed SDK that calls itself 4.0.0 (an unknown future major).
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import redis
import sentry_sdk
from rq import Queue

from asyncjobs.observability import _sentry_compat as compat
from tests.testsupport.sentry_server import SentryIngest
from tests.testsupport.workers import PROJECT_ROOT, WorkerProcess, asyncjobs_worker_command

J = "tests.observability.jobs"


def test_the_installed_sdk_has_everything_the_adapter_uses() -> None:
    assert compat.INSTALLED == sentry_sdk.VERSION
    assert compat.SDK.major == compat.parse_version(sentry_sdk.VERSION)[0]
    required = compat.required_api()
    # The internals it relies on are in the list (so they are checked below).
    assert "sentry_sdk.utils.event_from_exception" in required
    assert "sentry_sdk.isolation_scope" in required
    if compat.SDK.major >= 3:
        assert required["sentry_sdk.traces.start_span"] == ("name", "attributes", "parent_span")
        assert "sentry_sdk.scope.Scope.set_custom_sampling_context" in required
    else:
        assert required["sentry_sdk.continue_trace"] == ("op", "name", "source", "origin")
        assert required["sentry_sdk.utils.event_from_exception"] == ("client_options", "mechanism")
    assert compat.missing_api() == []
    assert compat.PROBLEM is None


def test_a_missing_or_changed_api_is_named() -> None:
    """The check itself, against the real SDK: a name it lacks and a keyword a function does not take."""

    class Tomorrow(type(compat.SDK)):  # type: ignore[misc]
        def required_api(self) -> dict[str, tuple[str, ...]]:
            return {**super().required_api(),
                    "sentry_sdk.no_such_function": (),
                    "sentry_sdk.utils.event_from_exception": ("mechanism", "no_such_keyword")}

    missing = compat.missing_api(Tomorrow())
    assert sorted(missing) == ["sentry_sdk.no_such_function",
                               "sentry_sdk.utils.event_from_exception(no_such_keyword=...)"]
    problem = compat.api_problem(Tomorrow())
    assert problem is not None
    assert f"sentry-sdk {sentry_sdk.VERSION} lacks" in problem and "sentry_sdk.no_such_function" in problem
    assert f"pip install '{compat.SUPPORTED}'" in problem


@pytest.mark.parametrize(("version", "ok"), [
    ("1.45.1", False), ("2.0.0", False), ("2.6.0", False), ("2.7.0", True), ("2.76.0", True),
    ("3.0.0", True), ("3.0.0rc1", True), ("3.12.4", True), ("4.0.0", False), ("garbage", False),
])
def test_supported_versions(version: str, ok: bool) -> None:
    assert compat.SUPPORTED == "sentry-sdk>=2.7,<4"
    problem = compat.version_problem(version)
    if ok:
        assert problem is None
    else:
        assert problem == (f"sentry-sdk {version} is installed; asyncjobs' Sentry adapter needs sentry-sdk>=2.7,<4: "
                           "install a supported one: pip install 'sentry-sdk>=2.7,<4' "
                           "(or an asyncjobs-rq release that supports this one, if there is one)")


# ------------------------------------------------------------------ an SDK it cannot work with
@pytest.fixture
def future_sdk(tmp_path: Path) -> Path:
    """A directory holding a copy of the installed sentry_sdk whose VERSION says 4.0.0."""
    target = tmp_path / "future" / "sentry_sdk"
    shutil.copytree(Path(sentry_sdk.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    consts = target / "consts.py"
    text, n = re.subn(r'^VERSION = "[^"]+"$', 'VERSION = "4.0.0"', consts.read_text(), flags=re.M)
    assert n == 1
    consts.write_text(text)
    return target.parent


def _settings(tmp_path: Path, redis_url: str, dsn: str) -> None:
    (tmp_path / "sentry_rq_settings.py").write_text(textwrap.dedent(f"""
        import sentry_sdk
        from sentry_sdk.integrations.rq import RqIntegration

        assert sentry_sdk.VERSION == "4.0.0"
        REDIS_URL = {redis_url!r}
        sentry_sdk.init(dsn={dsn!r}, integrations=[RqIntegration()], traces_sample_rate=1.0)
    """))


def test_an_unsupported_sdk_is_said_once_at_start_up(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path, future_sdk: Path
) -> None:
    """Sentry set up for RQ in the worker process, but with a sentry-sdk the adapter does not support:
    the worker runs its jobs and says so once, with the version and the fix (not a hook failure per job)."""
    q = Queue("sentryq", connection=sync_redis)
    jobs = [q.enqueue(f"{J}.boom", f"kaput {i}") for i in range(3)] + [q.enqueue(f"{J}.ok", 7)]
    with SentryIngest() as ingest:
        _settings(tmp_path, redis_url, ingest.dsn)
        env = {"PYTHONPATH": f"{future_sdk}:{tmp_path}:{PROJECT_ROOT}"}
        argv = [*asyncjobs_worker_command(), "-c", "sentry_rq_settings", "--burst", "sentryq"]
        with WorkerProcess(argv, env=env) as worker:
            assert worker.wait(60) == 0, worker.output()
            output = worker.output()
    assert [j.get_status() for j in jobs] == ["failed"] * 3 + ["finished"]
    said = [line for line in output.splitlines() if "sentry-sdk 4.0.0" in line]
    assert len(said) == 1, output
    assert said[0].endswith(
        "WARNING asyncjobs.worker.hooks: asyncjobs.observability.sentry is not enabled: sentry-sdk 4.0.0 is "
        "installed; asyncjobs' Sentry adapter needs sentry-sdk>=2.7,<4: install a supported one: "
        "pip install 'sentry-sdk>=2.7,<4' (or an asyncjobs-rq release that supports this one, if there is one)"
    ), output
    assert "hook" not in output.replace(said[0], ""), output  # no hook failure, per job or otherwise
    # The only tracebacks are the failed jobs' own, each after its "failed" line (as stock logs them).
    assert output.count("Traceback") == output.count(" failed: ValueError: kaput ") == 3, output
    lines = output.splitlines()
    assert all(" failed: ValueError: kaput " in lines[i - 1] for i, ln in enumerate(lines) if "Traceback" in ln), output


def test_an_unsupported_sdk_named_in_hooks_stops_start_up(
    redis_url: str, tmp_path: Path, future_sdk: Path
) -> None:
    """``--hooks asyncjobs.observability.sentry`` asks for the adapter: bad configuration, one line, exit 2."""
    env = {"PYTHONPATH": f"{future_sdk}:{PROJECT_ROOT}"}
    argv = [*asyncjobs_worker_command(), "-u", redis_url, "--hooks", "asyncjobs.observability.sentry",
            "--burst", "sentryq"]
    with WorkerProcess(argv, env=env) as worker:
        assert worker.wait(60) == 2, worker.output()
        output = worker.output()
    assert output.strip().splitlines() == [
        "asyncjobs-worker: error: cannot import hooks module 'asyncjobs.observability.sentry': sentry-sdk 4.0.0 "
        "is installed; asyncjobs' Sentry adapter needs sentry-sdk>=2.7,<4: install a supported one: "
        "pip install 'sentry-sdk>=2.7,<4' (or an asyncjobs-rq release that supports this one, if there is one)"
    ], output
