"""The code's structure: no module of the project uses another module's private names.

A name starting with one underscore is private to its module: other modules reach it only
through a public name, so a module can change its insides without breaking the rest.
Allowed: the package-wide ``_log`` and ``_version`` modules, and a package's private
submodule imported from inside that package (``autotrace._sitecustomize`` from
``autotrace.cli``). Dunder names (``__version__``, ``__file__``) are not private.

Checked by reading the source: ``from m import _x``, ``import m._x``, ``m._x`` where ``m``
names a project module, and ``getattr(sys.modules.get("autotrace..."), "_x")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it is installed as (see pyproject.toml's package-dir).
PACKAGES = {"autotrace": "autotrace", "hooks": "autotrace.hooks", "sitecustomize": "autotrace._sitecustomize"}
ALLOWED = frozenset({"autotrace._log", "autotrace._version"})


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_use(module: str, target: str, importer_package: str) -> bool:
    """Whether using ``target`` (a dotted project name) from ``module`` reaches a private name."""
    if target in ALLOWED:
        return False
    parts = target.split(".")
    for index, part in enumerate(parts):
        if not _is_private(part):
            continue
        owner = ".".join(parts[:index])
        full = ".".join(parts[: index + 1])
        if full in MODULES and (importer_package == owner or importer_package.startswith(owner + ".")):
            continue  # a private submodule used inside its own package
        if full == module or owner == module:
            continue  # the module's own names
        return True
    return False


def _violations(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _package_of(module, path)
    project_names: dict[str, str] = {}  # local name -> project module it is bound to
    found: list[str] = []

    def where(node: ast.AST) -> str:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        return f"{shown}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, path, node)
            if not source.startswith("autotrace"):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if _private_use(module, target, package):
                    found.append(f"{where(node)} imports {target}")
                if target in MODULES:
                    project_names[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("autotrace"):
                    continue
                if _private_use(module, alias.name, package):
                    found.append(f"{where(node)} imports {alias.name}")
                if alias.asname and alias.name in MODULES:
                    project_names[alias.asname] = alias.name
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            source = _sys_modules_entry(node.value)
            if source in MODULES:
                project_names[node.targets[0].id] = source
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in project_names:
            target = f"{project_names[node.value.id]}.{node.attr}"
            if _private_use(module, target, package):
                found.append(f"{where(node)} uses {target}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
            owner, name = node.args[0], node.args[1]
            owner_module = project_names.get(owner.id) if isinstance(owner, ast.Name) else _sys_modules_entry(owner)
            if owner_module and isinstance(name, ast.Constant) and isinstance(name.value, str):
                target = f"{owner_module}.{name.value}"
                if _private_use(module, target, package):
                    found.append(f"{where(node)} reads {target}")
    return found


def _sys_modules_entry(node: ast.AST) -> str | None:
    """``"autotrace.x"`` for ``sys.modules.get("autotrace.x")`` or ``sys.modules["autotrace.x"]``."""
    key = None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        holder, key = node.func.value, node.args[0]
    elif isinstance(node, ast.Subscript):
        holder, key = node.value, node.slice
    else:
        return None
    is_sys_modules = isinstance(holder, ast.Attribute) and holder.attr == "modules" and isinstance(holder.value, ast.Name) and holder.value.id == "sys"
    if is_sys_modules and isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("autotrace"):
        return key.value
    return None


def test_the_scan_sees_the_project():
    assert {"autotrace.cli", "autotrace.server_span", "autotrace.hooks.requests", "autotrace._sitecustomize"} <= set(MODULES)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from . import server_span\nserver_span._loaded\n", ["uses autotrace.server_span._loaded"]),
        ("from .server_span import _load_api\n", ["imports autotrace.server_span._load_api"]),
        ("from autotrace import _log, _version\nfrom . import _sitecustomize\n", []),
        ("import sys\ngetattr(sys.modules.get('autotrace.sdk'), '_app_provider', None)\n", ["reads autotrace.sdk._app_provider"]),
        ("import sys\nsdk = sys.modules.get('autotrace.sdk')\ngetattr(sdk, '_app_provider', None)\n", ["reads autotrace.sdk._app_provider"]),
        ("import autotrace.sdk as sdk\nsdk._flush()\n", ["uses autotrace.sdk._flush"]),
        ("from . import config\nconfig.__name__\nconfig.load()\n", []),
    ],
)
def test_the_scan_finds_private_uses(tmp_path, source, expected):
    fake = tmp_path / "cli.py"
    fake.write_text(source)
    found = _violations("autotrace.cli", fake)  # scanned as if it were autotrace/cli.py
    assert [line.split(" ", 1)[1] for line in found] == expected


def test_no_module_uses_another_modules_private_names():
    found = [line for module, path in MODULES.items() for line in _violations(module, path)]
    assert found == []
