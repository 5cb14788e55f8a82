"""The outbox promises in the README and docstrings are the ones the code and tests keep."""

from __future__ import annotations

import re

from asyncjobs.outbox import notifications
from asyncjobs.outbox import processor as processor_module
from asyncjobs.outbox import repository as repo
from tests.testsupport.workers import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
OVERCLAIMS = re.compile(r"never (be )?sent twice|(?<!not )exactly[- ]once", re.IGNORECASE)


def outbox_section() -> str:
    text = README.read_text()
    start = text.index("## Transactional outbox")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_nothing_promises_exactly_once_delivery() -> None:
    readme = README.read_text()
    intro = readme[: readme.index("\n## ")]
    for where, text in (
        ("README intro", intro),
        ("README outbox section", outbox_section()),
        ("asyncjobs.outbox docstring", repo.__doc__ or ""),
        ("asyncjobs.outbox package docstring", (PROJECT_ROOT / "asyncjobs/outbox/__init__.py").read_text()),
        ("asyncjobs.outbox.notifications docstring", notifications.__doc__ or ""),
        ("asyncjobs.outbox.processor docstring", processor_module.__doc__ or ""),
    ):
        assert not OVERCLAIMS.search(text), f"{where} claims more than at-least-once: {OVERCLAIMS.search(text)}"


def test_outbox_section_states_the_exact_guarantees() -> None:
    section = outbox_section()
    guarantees = section[section.index("### Guarantees"):]
    assert "at least once" in guarantees.lower()
    # the crash windows, each with what happens
    windows = re.findall(r"^  \d\. .+?(?=^  \d\. |^- )", guarantees, re.MULTILINE | re.DOTALL)
    assert len(windows) == 3, windows
    assert "before the row is marked `sent`" in windows[0]
    assert "answer is lost" in windows[1]
    assert "stalls" in windows[2] and "clocks" in windows[2]
    # what the stable Message-ID enables, in the format the code produces
    claimed = repo.ClaimedNotification(
        id=42, kind="2fa_code", channel="email", recipient="a@example.com", payload={}, attempts=1,
        claim_token="t", idempotency_key="k",
    )
    assert re.fullmatch(r"<outbox\.42\.[0-9a-f]{16}@example\.com>", claimed.message_id("example.com"))
    assert "`Message-ID: <outbox.<row id>.<hash>@<SMTP_FROM_EMAIL domain>>`" in guarantees
    assert "de-duplicate on Message-ID" in guarantees
    assert "SMS has no such header" in guarantees
    # the numbers quoted are the code's defaults
    assert f"{notifications.DEFAULT_MISSING_JOB_GRACE:g} s old" in section
    assert f"at most {notifications.ENQUEUE_TIMEOUT:g} s in total" in section
