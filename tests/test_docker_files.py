"""Static checks of docker/ (no Docker engine needed).

The compose file is read with PyYAML when it is installed, else with the small
block-YAML reader below, which understands the subset docker-compose.yml uses
(block mappings and sequences, JSON-style flow lists, quoted scalars, comments,
anchors and ``<<`` merge keys) and rejects anything else.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from asyncjobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SETTINGS_VARS = {name.upper() for name in Settings.model_fields}
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
        assert set(env) <= SETTINGS_VARS, f"{name}: {set(env) - SETTINGS_VARS} are not settings"
        assert str(env["REDIS_URL"]).startswith("${REDIS_URL:-redis://redis:6379/")


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
    assert "mailpit" in smtp["SMTP_HOST"] and "1025" in str(smtp["SMTP_PORT"])
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
    assert final[0][1].split()[0] == "python:3.11-slim"
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
    unknown = set(names) - SETTINGS_VARS
    assert not unknown, f"{sorted(unknown)} in docker/.env.example are not fields of asyncjobs.settings.Settings"


def test_env_example_documents_every_setting() -> None:
    missing = SETTINGS_VARS - set(_env_example_names())
    assert not missing, f"document {sorted(missing)} in docker/.env.example"


def test_env_example_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=DOCKER / ".env.example")  # type: ignore[call-arg]
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.resolved_email_backend == "smtp" and settings.smtp_host == "mailpit"
