"""Static checks of docker/ (no Docker engine needed).

The compose file is read with PyYAML when it is installed, else with the small
block-YAML reader below, which understands the subset docker-compose.yml uses
(block mappings and sequences, JSON-style flow lists, quoted scalars, comments,
anchors and ``<<`` merge keys) and rejects anything else.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from asyncjobs.delivery.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# The names the shipped files use: ASYNCJOBS_<NAME> (issue 22), and REDIS_URL, rq's own variable.
SETTINGS_VARS = {f"ASYNCJOBS_{name.upper()}" for name in Settings.model_fields if name != "redis_url"} | {"REDIS_URL"}
APP_SERVICES = ("outbox-migrate", "worker", "outbox", "rq-worker")


# -- a reader for the YAML subset the compose file uses ---------------------------------------------


class YamlSubsetError(ValueError):
    pass


_KEY_RE = re.compile(r"^(?P<key>[A-Za-z_<][\w.<-]*):(?:\s+(?P<rest>.*))?$")


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def load_yaml_subset(text: str) -> Any:
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"tab in indentation: {raw!r}")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
    anchors: dict[str, Any] = {}
    pos = 0

    def scalar(text: str) -> Any:
        if text.startswith("*"):
            return anchors[text[1:]]
        if text.startswith(("[", '"')):
            return json.loads(text)
        if text.startswith("'"):
            if not text.endswith("'"):
                raise YamlSubsetError(f"unterminated quote: {text!r}")
            return text[1:-1].replace("''", "'")
        if text in ("true", "false"):
            return text == "true"
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        if text.startswith(("{", "&", "!", "|", ">")):
            raise YamlSubsetError(f"unsupported YAML construct: {text!r}")
        return text

    def block(indent: int) -> Any:
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            return sequence(indent)
        return mapping(indent)

    def value_after_key(indent: int, rest: str | None, in_sequence: bool) -> Any:
        nonlocal pos
        anchor = None
        if rest and rest.startswith("&"):
            anchor, _, rest = rest[1:].partition(" ")
            rest = rest.strip() or None
        if rest is not None:
            value = scalar(rest)
        elif pos < len(lines) and lines[pos][0] > indent:
            value = block(lines[pos][0])
        elif pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- ") and not in_sequence:
            value = sequence(indent)
        else:
            value = None
        if anchor:
            anchors[anchor] = value
        return value

    def mapping(indent: int, in_sequence: bool = False) -> dict[str, Any]:
        nonlocal pos
        explicit: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent and not lines[pos][1].startswith("- "):
            m = _KEY_RE.match(lines[pos][1])
            if not m:
                raise YamlSubsetError(f"expected 'key: value', got {lines[pos][1]!r}")
            pos += 1
            key = m["key"]
            value = value_after_key(indent, m["rest"], in_sequence)
            if key == "<<":
                if not isinstance(value, dict):
                    raise YamlSubsetError("<< must merge a mapping")
                merged.update(value)
            elif key in explicit:
                raise YamlSubsetError(f"duplicate key {key!r}")
            else:
                explicit[key] = value
        if pos < len(lines) and lines[pos][0] > indent:
            raise YamlSubsetError(f"unexpected indentation at {lines[pos][1]!r}")
        return {**merged, **explicit}

    def sequence(indent: int) -> list[Any]:
        nonlocal pos
        items: list[Any] = []
        while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
            rest = lines[pos][1][2:].strip()
            if _KEY_RE.match(rest):
                lines[pos] = (indent + 2, rest)  # "- key: v" starts a mapping indented past the dash
                items.append(mapping(indent + 2, in_sequence=True))
            else:
                pos += 1
                items.append(scalar(rest))
        return items

    result = block(lines[0][0]) if lines else None
    if pos != len(lines):
        raise YamlSubsetError(f"could not read from {lines[pos][1]!r}")
    return result


def load_compose() -> dict[str, Any]:
    text = (DOCKER / "docker-compose.yml").read_text()
    ours = load_yaml_subset(text)
    try:
        import yaml
    except ImportError:
        return ours  # type: ignore[no-any-return]
    theirs = yaml.safe_load(text)
    assert ours == theirs, "the subset reader disagrees with PyYAML; fix load_yaml_subset"
    return theirs  # type: ignore[no-any-return]


def test_yaml_subset_reader() -> None:
    text = """
base: &b
  a: 1
  list: ["x", "y"]   # comment
thing:
  <<: *b
  a: 2
  items:
    - "q:1"
    - path: .env
      required: false
  url: redis://h:1/0
"""
    assert load_yaml_subset(text) == {
        "base": {"a": 1, "list": ["x", "y"]},
        "thing": {"a": 2, "list": ["x", "y"], "items": ["q:1", {"path": ".env", "required": False}],
                  "url": "redis://h:1/0"},
    }
    with pytest.raises(YamlSubsetError):
        load_yaml_subset("a: {b: 1}\n")


# -- docker-compose.yml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _cmd(value: Any) -> list[str]:
    assert isinstance(value, list), f"use the exec (list) form, got {value!r}"
    return [str(v) for v in value]


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "postgres", "mailpit", *APP_SERVICES}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes", []):
            named = volume.split(":", 1)[0]
            if not named.startswith((".", "/")):
                assert named in compose.get("volumes", {}), f"{name} uses undeclared volume {named}"
    assert "healthcheck" in services["redis"] and "healthcheck" in services["postgres"]


def test_compose_app_services_build_this_repo(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).is_file(), name
        env = service["environment"]
        extra = {"RQ_REDIS_URL"} if name == "rq-worker" else set()
        assert set(env) <= SETTINGS_VARS | extra, f"{name}: {set(env) - SETTINGS_VARS} are not settings"
        assert str(env["REDIS_URL"]).startswith("${REDIS_URL:-redis://:${REDIS_PASSWORD:?")


def test_compose_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = _cmd(services["worker"]["command"])
    assert "entrypoint" not in services["worker"]  # the image's: asyncjobs-worker
    queues = worker[worker.index("--queues") + 1].split(",")
    assert {"emails", "sms"} <= set(queues)
    assert int(worker[worker.index("--concurrency") + 1]) > 1
    assert _cmd(services["outbox"]["entrypoint"]) == ["asyncjobs-outbox"]
    assert _cmd(services["outbox"]["command"]) == ["run"]
    assert _cmd(services["outbox-migrate"]["command"]) == ["create-tables"]
    assert _cmd(services["rq-worker"]["entrypoint"]) == ["rq", "worker"]
    assert services["rq-worker"]["profiles"] == ["rq"]
    smtp = services["worker"]["environment"]
    assert "mailpit" in smtp["ASYNCJOBS_SMTP_HOST"] and "1025" in str(smtp["ASYNCJOBS_SMTP_PORT"])
    # The worker's warm shutdown (--shutdown-timeout, 30 s by default) fits in Docker's grace period.
    assert int(str(services["worker"]["stop_grace_period"]).rstrip("s")) > 30


# -- Dockerfile ------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_final_stage() -> None:
    instructions = _instructions()
    froms = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    final = instructions[froms[-1]:]
    assert final[0][1].split()[0].startswith("python:3.11.")
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoints = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    entrypoint = json.loads(entrypoints[0])  # exec form, so signals reach the worker
    assert entrypoint == ["asyncjobs-worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts and "asyncjobs-outbox" in scripts
    cmd = json.loads(next(rest for word, rest in final if word == "CMD"))
    assert "--queues" in cmd


def test_dockerfile_copies_existing_paths_and_valid_extras() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for src in sources:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), f"COPY {src}: not in the build context (repo root)"
        if word == "RUN":
            for found in re.findall(r"\[([\w,]+)\]", rest):
                assert set(found.split(",")) <= set(extras), f"unknown extra in {found!r}"


# -- .env.example ----------------------------------------------------------------------------------


def _env_example_names() -> list[str]:
    names = []
    for line in (DOCKER / ".env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if m:
            names.append(m.group(1))
    return names


def test_env_example_names_are_settings() -> None:
    names = _env_example_names()
    assert len(names) == len(set(names)), "a variable is listed twice"
    unknown = set(names) - SETTINGS_VARS - {"REDIS_PASSWORD", "POSTGRES_PASSWORD"}
    assert not unknown, f"{sorted(unknown)} in docker/.env.example are not fields of asyncjobs.delivery.settings.Settings"


def test_env_example_documents_every_setting() -> None:
    missing = SETTINGS_VARS - set(_env_example_names())
    assert not missing, f"document {sorted(missing)} in docker/.env.example"


def test_env_example_is_a_valid_configuration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncjobs.delivery.settings as settings_module

    for name in SETTINGS_VARS | {n.removeprefix("ASYNCJOBS_") for n in SETTINGS_VARS}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_module, "_warned", set())
    caplog.set_level(logging.WARNING, logger="asyncjobs")
    settings = load_settings(env_file=str(DOCKER / ".env.example"))
    assert "deprecated" not in caplog.text  # the shipped example uses the ASYNCJOBS_ names
    assert settings.redis_url == "redis://localhost:6379/0"  # docker-compose.yml builds the URLs
    assert settings.resolved_email_backend == "smtp" and settings.smtp_host == "mailpit"


# -- issue 10 item 6: secrets required, images pinned ----------------------------------------------

COMPOSE_ONLY_VARS = {"REDIS_PASSWORD", "POSTGRES_PASSWORD"}
# an exact release: major.minor at least (PostgreSQL's releases are 16.10; Redis's 7.4.6), never a
# floating "latest" or a bare major such as "7-alpine"
_PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.-]+)?(@sha256:[0-9a-f]{64})?$")


class InterpolationError(ValueError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Docker Compose's variable interpolation: ``$$``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``, ``${V?e}``.

    Defaults may nest (``${A:-x${B}y}``).  A ``?`` form whose variable is unset (``:?``: or empty)
    raises InterpolationError with the message Compose would print.
    """
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if value.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if not value.startswith("${", i):
            m = re.match(r"\$([A-Za-z_]\w*)", value[i:])
            if not m:
                raise InterpolationError(f"bad '$' in {value!r}")
            out.append(env.get(m.group(1), ""))
            i += m.end()
            continue
        depth, j = 0, i
        while j < len(value):
            if value.startswith("${", j):
                depth += 1
                j += 2
                continue
            if value[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        body = value[i + 2 : j]
        m = re.match(r"([A-Za-z_]\w*)(?:(:?[-?+])(.*))?$", body, re.S)
        if not m:
            raise InterpolationError(f"bad expression ${{{body}}}")
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            out.append(interpolate(arg, env) if unset else str(current))
        elif op in ("?", ":?"):
            if unset:
                raise InterpolationError(f"required variable {name} is missing a value: {interpolate(arg, env)}")
            out.append(str(current))
        elif op in ("+", ":+"):
            out.append("" if unset else interpolate(arg, env))
        else:
            out.append(current or "")
        i = j + 1
    return "".join(out)


def test_interpolate() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("x${A}y$$z", env) == "x" + "a" + "y$z"
    assert interpolate("${B:-d${A}}", env) == "da"
    assert interpolate("${E:-d}|${E-d}", env) == "d|"
    with pytest.raises(InterpolationError, match="B is missing a value: set B"):
        interpolate("${B:?set B}", env)
    with pytest.raises(InterpolationError, match="E"):
        interpolate("${E:?set E}", env)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _resolved(service: dict[str, Any], env: dict[str, str]) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, env)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(service)


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue  # built from this repository (docker/Dockerfile, checked below)
        image = str(service["image"])
        assert _PINNED_TAG.match(image), f"{name}: pin {image!r} to an exact version (no latest, no 7-alpine)"
    for word, rest in _instructions():
        if word == "FROM":
            image = rest.split()[0]
            assert _PINNED_TAG.match(image), f"Dockerfile: pin FROM {image!r} to an exact version"


def test_compose_requires_passwords_from_env(compose: dict[str, Any]) -> None:
    text = (DOCKER / "docker-compose.yml").read_text()
    for var in COMPOSE_ONLY_VARS:
        assert not re.search(rf"\${{{var}:?-", text), f"{var} must not fall back to a default"
    services = compose["services"]
    # Missing passwords: Compose stops with an error that says what to set and where.
    for service in ("redis", "postgres", "worker"):
        with pytest.raises(InterpolationError) as info:
            _resolved(services[service], {})
        message = str(info.value)
        assert ("REDIS_PASSWORD" in message or "POSTGRES_PASSWORD" in message) and "docker/.env" in message
    # Given in docker/.env, every service agrees on them.
    env = {"REDIS_PASSWORD": "r3dis-pw", "POSTGRES_PASSWORD": "pg-pw"}
    redis_service = _resolved(services["redis"], env)
    assert "--requirepass" in " ".join(_strings(redis_service["command"]))
    assert redis_service["environment"]["REDIS_PASSWORD"] == "r3dis-pw"
    assert "REDISCLI_AUTH" in " ".join(_strings(redis_service["healthcheck"]["test"]))  # ping authenticates
    assert _resolved(services["postgres"], env)["environment"]["POSTGRES_PASSWORD"] == "pg-pw"
    for name in APP_SERVICES:
        app_env = _resolved(services[name], env)["environment"]
        assert app_env["REDIS_URL"] == "redis://:r3dis-pw@redis:6379/0", name
        assert app_env["ASYNCJOBS_DATABASE_URL"] == "postgresql+asyncpg://asyncjobs:pg-pw@postgres:5432/asyncjobs", name
    rq_worker = _resolved(services["rq-worker"], env)
    assert rq_worker["environment"]["RQ_REDIS_URL"] == "redis://:r3dis-pw@redis:6379/0"  # rq worker's --url
    assert not [arg for arg in rq_worker["command"] + rq_worker["entrypoint"] if "r3dis-pw" in arg]


def test_compose_keeps_smtp_auth_off_clear_text(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled stack defaults to SMTP_TLS=none (Mailpit): adding SMTP credentials must not send them in clear."""
    from asyncjobs.delivery.settings import SettingsError, load_settings

    worker_env = _resolved(compose["services"]["worker"], {"REDIS_PASSWORD": "x", "POSTGRES_PASSWORD": "y"})
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    for key, value in worker_env["environment"].items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("ASYNCJOBS_SMTP_USER", "mailer")
    monkeypatch.setenv("ASYNCJOBS_SMTP_PASSWORD", "pw")
    with pytest.raises(SettingsError, match="SMTP_ALLOW_INSECURE_AUTH"):
        load_settings()


def test_compose_worker_allow_list_covers_the_bundled_jobs(compose: dict[str, Any]) -> None:
    from asyncjobs.notifications import JOB_FUNCTION
    from asyncjobs.protocol.codec import Call
    from asyncjobs.worker.resolver import FunctionResolver

    command = _cmd(compose["services"]["worker"]["command"])
    allowed = tuple(command[i + 1] for i, arg in enumerate(command) if arg == "--allow-module")
    assert allowed, "the bundled worker should run with --allow-module (Redis is a code-execution channel)"
    resolver = FunctionResolver(allowed)
    for func in (JOB_FUNCTION, "asyncjobs.tasks.send_email", "asyncjobs.tasks.send_sms"):
        assert callable(resolver.resolve(Call(func, None, (), {})))


def test_every_shipped_worker_start_command_has_an_allow_list() -> None:
    """Issue 18 item 8: without --allow-module any Redis writer runs code in the worker."""
    cmd = json.loads(next(rest for word, rest in _instructions() if word == "CMD"))
    k8s = (DOCKER / "k8s" / "worker-deployment.yaml").read_text()
    k8s_args = re.findall(r"^\s+- (\S+)", k8s.split("args:", 1)[1].split("env:", 1)[0], re.M)
    unit = (DOCKER / "systemd" / "asyncjobs-worker@.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart=")).split()
    compose = _cmd(load_yaml_subset((DOCKER / "docker-compose.yml").read_text())["services"]["worker"]["command"])
    for where, argv in (("Dockerfile CMD", cmd), ("k8s args", k8s_args), ("systemd ExecStart", exec_start),
                        ("compose worker", compose)):
        assert "--allow-module" in argv, f"{where} starts the worker without --allow-module: {argv}"


def test_env_example_asks_for_the_passwords() -> None:
    text = (DOCKER / ".env.example").read_text()
    for var in COMPOSE_ONLY_VARS:
        assert re.search(rf"^{var}=$", text, re.M), f"docker/.env.example must list {var}= (empty, to fill in)"
    # URLs with the passwords are built by docker-compose.yml; a copied example must not override them.
    assert not re.search(r"^(REDIS_URL|ASYNCJOBS_DATABASE_URL)=", text, re.M)
