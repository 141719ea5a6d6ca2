"""The code's shape: no module uses a private name (``_x``) of another module of the project.

Read from the source (``ast``), not run: ``from autotrace.x import _y``, ``from . import _y``
(a private module is allowed only from its own package) and ``x._y`` where ``x`` names a
module of the project imported in that file. ``_log`` and ``_version`` are the agent's
shared private modules: everyone may use them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = frozenset({"_log", "_version"})

# Left out until the changes reshaping them are merged: the settings branch's modules, the
# logging hook (it reads provider's private state: provider is the settings branch's), and
# the propagation package (the prop branch's).
EXEMPT = frozenset(
    {
        "autotrace/config.py",
        "autotrace/doctor.py",
        "autotrace/sdk.py",
        "autotrace/cli.py",
        "autotrace/bootstrap.py",
        "hooks/logging.py",
        "autotrace/propagation/jaeger.py",
    }
)


def _package_of(path: Path) -> str:
    """The dotted package a source file is in, as installed (hooks/ is autotrace.hooks)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    mapping = {"autotrace": "autotrace", "hooks": "autotrace.hooks", "sitecustomize": "autotrace._sitecustomize"}
    return ".".join([mapping[parts[0]], *parts[1:-1]])


def _absolute(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in SHARED


def _sources() -> list[Path]:
    files = sorted((ROOT / "autotrace").rglob("*.py")) + sorted((ROOT / "hooks").rglob("*.py"))
    return [path for path in files if path.relative_to(ROOT).as_posix() not in EXEMPT]


def private_uses(path: Path) -> list[str]:
    """Where the file uses a private name of another module of the project."""
    package = _package_of(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    modules: set[str] = set()  # local names bound to modules of the project
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "autotrace":
                    modules.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")[1:]):
                        found.append(f"{path.name}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module, node.level, package)
            if source.split(".")[0] != "autotrace":
                continue
            for alias in node.names:
                if not _private(alias.name):
                    modules.add(alias.asname or alias.name)  # maybe a module: its attributes are checked
                    continue
                own_submodule = source == package  # a private module of the file's own package
                if not own_submodule:
                    found.append(f"{path.name}:{node.lineno} from {source} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in modules and _private(node.attr):
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_private_name_of_another_module(path):
    assert private_uses(path) == []


def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    source = ROOT / "hooks" / "example_for_the_scan.py"
    text = (
        "from autotrace import server_span, _log\n"
        "from autotrace.config import _Env\n"
        "import autotrace.api as api\n"
        "server_span._report(None)\n"
        "api.loaded\n"
        "_log.warn_once\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)
    assert private_uses(source) == [
        "example_for_the_scan.py:2 from autotrace.config import _Env",
        "example_for_the_scan.py:4 server_span._report",
    ]
