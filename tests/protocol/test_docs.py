"""Citations of ``docs/rq-protocol.md §N`` point at sections that exist.

Code cites the protocol page by section number (``docs/rq-protocol.md §6.2``,
``docs/rq-protocol.md §11.2, §11.6``), the two pages in ``docs/`` cite it as
``§N``, and Markdown links to it by heading anchor.  Renumbering a section, citing
one that was never written, or citing the page by a path that is not in the
repository fails here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = "docs/rq-protocol.md"
DOC = ROOT / DOC_PATH
PAGES = ("docs/rq-protocol.md", "docs/architecture.md")
#: Searched for citations: source comments and docstrings, Lua, Markdown, configuration.
TEXT_SUFFIXES = {".py", ".lua", ".md", ".toml", ".yml", ".yaml", ".cfg", ".txt", ".sh"}
SKIP_DIRS = {".venv", ".git", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
#: Not searched: the page itself, and this file (its examples are wrong on purpose).
SKIP_FILES = {DOC_PATH, "tests/protocol/test_docs.py"}

_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?\s")
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
_MENTION = re.compile(r"[\w./-]*rq-protocol\.md")
# A citation may wrap onto the next comment line: newline, indentation and comment leader become one space.
_WRAP = re.compile(r"\s*\n[ \t]*(?:--|#|//|\*)?[ \t]*")
# The path, an optional #anchor, then an optional list: "§3", "§6.1, §7", "§11.2 (tokens) and §11.6".
_CITATION = re.compile(
    r"(?P<path>[\w./-]*rq-protocol\.md)(?P<anchor>#[\w-]*)?`{0,2}"
    r"(?P<refs>(?:\s*(?:,|and|or)?\s*§\d+(?:\.\d+)*(?:\s*\([^()]*\))?)*)"
)
_LINK = re.compile(r"\]\((?P<target>[^)\s]*rq-protocol\.md(?:#[^)\s]*)?)\)")


@dataclass(frozen=True)
class Citation:
    line: int
    path: str
    anchor: str
    sections: tuple[str, ...]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: formatting dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@dataclass(frozen=True)
class Outline:
    numbers: frozenset[str]
    anchors: frozenset[str]
    duplicates: tuple[str, ...]


def outline(markdown: str) -> Outline:
    """Section numbers ("6", "6.2") and heading anchors of a Markdown page (code blocks skipped)."""
    numbers: set[str] = set()
    anchors: set[str] = set()
    duplicates: list[str] = []
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        m = _HEADING.match(line)
        if in_fence or m is None:
            continue
        title = m.group(1)
        base = anchor = github_anchor(title)
        n = 0
        while anchor in anchors:  # GitHub suffixes repeated anchors with -1, -2, ...
            n += 1
            anchor = f"{base}-{n}"
        anchors.add(anchor)
        num = _NUMBERED.match(title)
        if num is not None:
            if num.group(1) in numbers:
                duplicates.append(num.group(1))
            numbers.add(num.group(1))
    return Outline(frozenset(numbers), frozenset(anchors), tuple(duplicates))


def citations(text: str) -> Iterator[Citation]:
    """Every mention of the page in ``text``, with the sections it cites."""
    for mention in _MENTION.finditer(text):
        window = _WRAP.sub(" ", text[mention.start() : mention.start() + 300])
        m = _CITATION.match(window)
        assert m is not None  # the window starts with the mention
        yield Citation(
            line=text.count("\n", 0, mention.start()) + 1,
            path=m.group("path"),
            anchor=(m.group("anchor") or "")[1:],
            sections=tuple(_SECTION.findall(m.group("refs"))),
        )


def check(rel: str, text: str, numbers: frozenset[str] | set[str]) -> list[str]:
    """Problems with the citations of the page in the file ``rel`` (relative to the repository)."""
    markdown = rel.endswith(".md")
    problems = []
    for c in citations(text):
        where = f"{rel}:{c.line}"
        # Markdown resolves a path from its own directory; everything else names it from the repository root.
        found = c.path == DOC_PATH or (markdown and ((ROOT / rel).parent / c.path).resolve() == DOC.resolve())
        if not found:
            problems.append(f"{where}: cites {c.path!r}, which is not {DOC_PATH}, the page in this repository")
        if not c.sections and not markdown:
            problems.append(f"{where}: cites {c.path} without a section: write '{DOC_PATH} §N'")
        problems += [f"{where}: cites {DOC_PATH} §{s}, which does not exist" for s in c.sections if s not in numbers]
    return problems


def repository_files() -> list[str]:
    """Text files of the checkout (tracked or new, not ignored), relative to the repository."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        listed = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")]
    return sorted(
        rel for rel in listed
        if (ROOT / rel).is_file()
        and (Path(rel).suffix in TEXT_SUFFIXES or Path(rel).name == "Makefile")
        and not SKIP_DIRS.intersection(Path(rel).parts)
        and rel not in SKIP_FILES
    )


def _doc() -> Outline:
    return outline(DOC.read_text("utf-8"))


def test_sections_are_numbered_once_and_nested() -> None:
    doc = _doc()
    assert not doc.duplicates, f"section numbers used twice in {DOC_PATH}: {doc.duplicates}"
    orphans = sorted(n for n in doc.numbers if "." in n and n.rsplit(".", 1)[0] not in doc.numbers)
    assert not orphans, f"subsections without their section in {DOC_PATH}: {orphans}"


def test_every_section_cited_in_the_repository_exists() -> None:
    numbers = _doc().numbers
    problems: list[str] = []
    cited = 0
    for rel in repository_files():
        text = (ROOT / rel).read_text("utf-8", errors="replace")
        if "rq-protocol.md" in text:
            cited += sum(len(c.sections) for c in citations(text))
            problems += check(rel, text, numbers)
    assert not problems, "bad citations of the protocol page:\n" + "\n".join(problems)
    # The code cites the page in about twenty places: finding almost none means this test went blind.
    assert cited >= 10, f"only {cited} section citations found: is the pattern still right?"


def test_every_section_cited_in_the_docs_exists() -> None:
    """In the two pages of docs/, a bare ``§N`` always means a section of rq-protocol.md."""
    numbers = _doc().numbers
    missing = [
        f"{page}: §{ref}"
        for page in PAGES
        for ref in _SECTION.findall((ROOT / page).read_text("utf-8"))
        if ref not in numbers
    ]
    assert not missing, f"sections cited but not in {DOC_PATH}: {missing}"


def test_links_to_the_page_use_its_anchors() -> None:
    anchors = _doc().anchors
    bad = []
    for rel in repository_files():
        if not rel.endswith(".md"):
            continue
        for m in _LINK.finditer((ROOT / rel).read_text("utf-8", errors="replace")):
            target, _, anchor = m.group("target").partition("#")
            if ((ROOT / rel).parent / target).resolve() != DOC.resolve():
                bad.append(f"{rel}: links to {target!r}, which is not {DOC_PATH}")
            elif anchor and anchor not in anchors:
                bad.append(f"{rel}: links to #{anchor}, which is no heading of {DOC_PATH}")
    assert not bad, "\n".join(bad)


# The checker itself: each kind of bad citation is caught (a checker that cannot fail proves nothing).

_NUMBERS = {"3", "3.3", "6", "6.1", "6.2", "7", "11", "11.2"}


def test_checker_reports_a_missing_section_even_when_the_citation_wraps() -> None:
    text = (
        "-- claimed atomically (docs/rq-protocol.md §6.2)\n"
        "-- and recorded under a token (docs/rq-protocol.md\n"
        "-- §11.2 and §11.9).\n"
    )
    assert check("asyncjobs/protocol/lua/claim.lua", text, _NUMBERS) == [
        "asyncjobs/protocol/lua/claim.lua:2: cites docs/rq-protocol.md §11.9, which does not exist"
    ]


def test_checker_reads_section_lists_whole() -> None:
    assert check("a.py", "# docs/rq-protocol.md §6.1, §7: heartbeat TTL", _NUMBERS) == []
    assert check("a.py", '"""See docs/rq-protocol.md §11.2 (claim tokens) and §11.6."""', _NUMBERS) == [
        "a.py:1: cites docs/rq-protocol.md §11.6, which does not exist"
    ]
    assert check("a.py", "follow ``docs/rq-protocol.md §8`` here", _NUMBERS) == [
        "a.py:1: cites docs/rq-protocol.md §8, which does not exist"
    ]


def test_checker_reports_a_path_outside_the_repository_and_a_missing_section_number() -> None:
    assert check("a.py", "(rq-protocol.md §3.3)", _NUMBERS) == [
        "a.py:1: cites 'rq-protocol.md', which is not docs/rq-protocol.md, the page in this repository"
    ]
    assert check("a.py", "see docs/rq-protocol.md for details", _NUMBERS) == [
        "a.py:1: cites docs/rq-protocol.md without a section: write 'docs/rq-protocol.md §N'"
    ]
    # Markdown resolves paths from its own directory.
    assert check("docs/architecture.md", "see [rq-protocol.md](rq-protocol.md) §3.3", _NUMBERS) == []
    assert check("tests/chaos/README.md", "(rq-protocol.md §0.6)", _NUMBERS) == [
        "tests/chaos/README.md:1: cites 'rq-protocol.md', which is not docs/rq-protocol.md, the page in this "
        "repository",
        "tests/chaos/README.md:1: cites docs/rq-protocol.md §0.6, which does not exist",
    ]


def test_github_anchors() -> None:
    assert github_anchor("3.3 What makes `Job.fetch` fail") == "33-what-makes-jobfetch-fail"
    assert github_anchor("11. What asyncjobs adds on top of RQ's format") == "11-what-asyncjobs-adds-on-top-of-rqs-format"
    assert github_anchor("6.2 What `claim.lua` writes, in one atomic step") == "62-what-claimlua-writes-in-one-atomic-step"
    assert outline("## 1. A\n```\n## 2. in a code block\n```\n## 1. A\n").duplicates == ("1",)
