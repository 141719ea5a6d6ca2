"""The README and docs/: links that resolve, and the facts they state that code can check.

- every relative link (and image) in README.md and docs/*.md names a file or folder of
  the repository, and an anchor names a heading of the file it points into;
- the README's test command is the one ``.ci/run`` runs;
- docs/configuration.md names every hook ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` accepts
  (and no other), and every variable ``autotrace/config.py`` reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autotrace import config, registry

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def prose(path: Path) -> str:
    """The page without its code (where brackets are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text()))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (lower-case, punctuation dropped)."""
    found = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        text = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower())
        found.add(text.replace(" ", "-"))
    return found


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    assert links(page) or page.name == "service-names.md"  # the parser reads the pages' links
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or ROOT not in (path, *path.parents):
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_anchor_rule():
    # GitHub's rule, on the kinds of heading the pages have.
    assert {"2-docker-environment-only", "1-install"} <= anchors(ROOT / "docs" / "deploy.md")
    assert "databases-and-caches" in anchors(ROOT / "docs" / "traced.md")


def test_first_screen_has_the_two_commands():
    first_block = FENCE.search(README.read_text()).group(0)
    assert "(autotrace view &) && python examples/demo.py" in first_block
    assert ".venv/bin/python -m pytest" in first_block
    assert README.read_text().index(first_block) < 1200  # before any section


def test_ci_runs_the_readmes_test_command():
    readme = re.search(r'^python3 -m venv \.venv && \.venv/bin/pip install (.+) && \.venv/bin/python -m pytest(.*)$',
                       README.read_text(), re.MULTILINE)
    assert readme, "the README's test command"
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r'^"\$venv/bin/pip" install -q (.+)$', ci, re.MULTILINE)
    pytest_line = re.search(r'^"\$venv/bin/python" -m pytest(.*)$', ci, re.MULTILINE)
    assert install and pytest_line
    assert install.group(1) == readme.group(1)  # -e ".[test]"
    assert pytest_line.group(1) == readme.group(2)  # the same arguments: -q


def configuration() -> str:
    return (ROOT / "docs" / "configuration.md").read_text()


def test_every_hook_is_listed():
    row = next(line for line in configuration().splitlines() if line.startswith("| `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`"))
    listed = set(re.findall(r"`([a-z0-9_]+)`", row.split("comma-separated:", 1)[1]))
    assert listed == registry.known_names()


def test_every_variable_is_documented():
    text = configuration()
    # `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` stands for both names.
    for bracket in re.findall(r"`([A-Z_]*\[[A-Z_]+\][A-Z_]*)`", text):
        head, optional, tail = re.match(r"(.*)\[(.*)\](.*)", bracket).groups()
        text += f" `{head}{tail}` `{head}{optional}{tail}`"
    named = {name for names in config.VARIABLES.values() for name in names} | {"AUTOTRACE_ENABLED"}
    missing = sorted(name for name in named if f"`{name}`" not in text)
    assert not missing
