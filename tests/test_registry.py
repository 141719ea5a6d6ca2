from __future__ import annotations

import importlib
import sys

import importlib_metadata
import pytest

from autotrace import registry
from autotrace.registry import Hook, parse_version

HOOK_SOURCE = """
CALLS = []

def patch(module):
    CALLS.append(module)
    module.patched_by = __name__

def other(module):
    CALLS.append(module)
    module.patched_by = __name__ + ":other"

def broken(module):
    raise RuntimeError("patch failed on purpose")
"""


@pytest.fixture(autouse=True)
def _clean(clean_registry):
    yield


@pytest.fixture
def target_and_hooks(modules):
    """A library module not yet imported, and a hook module that patches it."""
    return modules.module("VALUE = 1\n"), modules.module(HOOK_SOURCE, name=modules.unique("athook"))


def calls(hook_module: str) -> list:
    return sys.modules[hook_module].CALLS if hook_module in sys.modules else []


def test_hook_applied_when_the_module_is_imported(target_and_hooks):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, hooks)])
    assert registry.status()["lib"] == f"armed (waits for {target})"
    assert hooks not in sys.modules  # the hook module waits for the library
    module = importlib.import_module(target)
    assert calls(hooks) == [module]
    assert module.patched_by == hooks
    assert registry.status()["lib"] == f"applied to {target}"


def test_hook_function_named_after_a_colon(target_and_hooks):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, f"{hooks}:other")])
    assert importlib.import_module(target).patched_by == f"{hooks}:other"


def test_module_already_imported_is_patched_at_once(target_and_hooks):
    target, hooks = target_and_hooks
    module = importlib.import_module(target)
    registry.arm([Hook("lib", target, hooks)])
    assert calls(hooks) == [module]
    assert registry.status()["lib"].startswith("applied")


def test_disabled_hook_is_skipped(target_and_hooks, clean_importer):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, hooks)], disabled=frozenset({"lib", "other"}))
    assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS" in registry.status()["lib"]
    assert registry.status()["lib"].startswith("skipped")
    assert target not in clean_importer._pending
    module = importlib.import_module(target)
    assert not hasattr(module, "patched_by")
    assert calls(hooks) == []


def test_version_below_minimum_is_skipped_with_a_line_naming_the_version(target_and_hooks, capsys):
    target, hooks = target_and_hooks
    version = importlib_metadata.version("pytest")
    registry.arm([Hook("lib", target, hooks, distribution="pytest", min_version=(999,))])
    module = importlib.import_module(target)
    assert not hasattr(module, "patched_by")
    status = registry.status()["lib"]
    assert status.startswith("skipped") and f"pytest {version}" in status and ">=999" in status
    lines = [line for line in capsys.readouterr().err.splitlines() if "hook lib" in line]
    assert len(lines) == 1 and f"pytest {version}" in lines[0]


def test_version_above_the_range_is_skipped(target_and_hooks):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, hooks, distribution="pytest", min_version=(1,), below_version=(2,))])
    assert not hasattr(importlib.import_module(target), "patched_by")
    assert "<2" in registry.status()["lib"]


def test_supported_version_is_applied_and_named(target_and_hooks):
    target, hooks = target_and_hooks
    version = importlib_metadata.version("pytest")
    registry.arm([Hook("lib", target, hooks, distribution="pytest", min_version=(1,))])
    assert importlib.import_module(target).patched_by == hooks
    assert registry.status()["lib"] == f"applied to {target} (pytest {version})"


def test_version_from_dist_info_beside_the_module_compared_padded(modules):
    # "5.1" must satisfy a minimum of (5, 1, 0) and fail a bound below (5, 1).
    (modules.directory / "fakedist-5.1.dist-info").mkdir()
    hooks = modules.module(HOOK_SOURCE, name=modules.unique("athook"))
    first, second = modules.module(""), modules.module("")
    registry.arm(
        [
            Hook("first", first, hooks, distribution="fakedist", min_version=(5, 1, 0)),
            Hook("second", second, hooks, distribution="FakeDist", min_version=(4,), below_version=(5, 1)),
        ]
    )
    assert importlib.import_module(first).patched_by == hooks
    assert registry.status()["first"] == f"applied to {first} (fakedist 5.1)"
    assert not hasattr(importlib.import_module(second), "patched_by")
    assert registry.status()["second"].startswith("skipped: FakeDist 5.1 is not supported")


def test_distribution_not_installed_is_skipped(target_and_hooks):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, hooks, distribution="no-such-distribution-at", min_version=(1,))])
    assert not hasattr(importlib.import_module(target), "patched_by")
    assert registry.status()["lib"] == "skipped: distribution no-such-distribution-at not found"


def test_a_library_from_one_of_several_distributions_is_gated_by_the_one_installed(target_and_hooks):
    # psycopg2's module comes from "psycopg2" or "psycopg2-binary".
    target, hooks = target_and_hooks
    version = importlib_metadata.version("pytest")
    registry.arm([Hook("lib", target, hooks, distribution=("no-such-distribution-at", "pytest"), min_version=(1,))])
    assert importlib.import_module(target).patched_by == hooks
    assert registry.status()["lib"] == f"applied to {target} (pytest {version})"


def test_none_of_several_distributions_installed_is_skipped(target_and_hooks):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, hooks, distribution=("no-such-distribution-at", "nor-this-one-at"), min_version=(1,))])
    assert not hasattr(importlib.import_module(target), "patched_by")
    assert registry.status()["lib"] == "skipped: distribution no-such-distribution-at or nor-this-one-at not found"


def test_failing_patch_leaves_the_module_unpatched_and_the_import_working(target_and_hooks, warnings):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, f"{hooks}:broken")])
    module = importlib.import_module(target)
    assert module.VALUE == 1
    assert not hasattr(module, "patched_by")
    status = registry.status()["lib"]
    assert status.startswith("failed") and "RuntimeError" in status and "patch failed on purpose" in status
    lines = warnings()
    assert len(lines) == 1 and "hook lib failed" in lines[0]


def test_missing_hook_module_fails_without_failing_the_import(modules, warnings):
    target = modules.module("VALUE = 1\n")
    registry.arm([Hook("lib", target, modules.unique("no_such_hook"))])
    assert importlib.import_module(target).VALUE == 1
    assert registry.status()["lib"].startswith("failed: ModuleNotFoundError")
    assert len(warnings()) == 1


def test_arming_twice_patches_once(target_and_hooks):
    target, hooks = target_and_hooks
    hook = Hook("lib", target, hooks)
    registry.arm([hook])
    registry.arm([hook])
    registry.arm([Hook("lib", target, hooks)])
    module = importlib.import_module(target)
    assert calls(hooks) == [module]


def test_arming_twice_after_import_patches_once(target_and_hooks):
    target, hooks = target_and_hooks
    module = importlib.import_module(target)
    registry.arm([Hook("lib", target, hooks)])
    registry.arm([Hook("lib", target, hooks)])
    assert calls(hooks) == [module]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2.31.0", (2, 31, 0)),
        ("1.0rc1", (1, 0)),
        ("2.31.0rc1", (2, 31, 0)),
        ("2024.1.post1", (2024, 1)),
        ("3", (3,)),
        ("1.2.3.dev4", (1, 2, 3)),
        ("", ()),
        ("dev", ()),
    ],
)
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_extra_hooks_conversion():
    hooks = registry.extra_hooks([("a.b", "my.hooks"), ("c", "other.hooks:patch_c")])
    assert [(h.name, h.module, h.hook) for h in hooks] == [
        ("my.hooks", "a.b", "my.hooks"),
        ("other.hooks", "c", "other.hooks:patch_c"),
    ]
    assert all(h.distribution is None for h in hooks)


def test_extra_hooks_sharing_a_hook_module_are_all_applied(modules):
    hooks = modules.module(HOOK_SOURCE, name=modules.unique("athook"))
    first, second = modules.module(""), modules.module("")
    converted = registry.extra_hooks([(first, hooks), (second, f"{hooks}:other")])
    assert len({h.name for h in converted}) == 2
    registry.arm(converted)
    assert importlib.import_module(first).patched_by == hooks
    assert importlib.import_module(second).patched_by == f"{hooks}:other"


def test_status_is_a_copy(target_and_hooks):
    target, hooks = target_and_hooks
    registry.arm([Hook("lib", target, hooks)])
    registry.status()["lib"] = "tampered"
    assert registry.status()["lib"].startswith("armed")


def test_held_lines_for_the_start_up_report(target_and_hooks, capsys):
    """Under --debug: armed and disabled hooks are the report's; what is applied meanwhile is held."""
    target, hooks = target_and_hooks
    module = importlib.import_module(target)
    held: list = []
    registry.arm([Hook("lib", target, hooks), Hook("off", "no_such_module_x", hooks)], frozenset({"off"}), held)
    assert capsys.readouterr().err == ""
    assert held == [(10, "hook %s %s", ("lib", f"applied to {target}"))]
    assert module.patched_by == hooks
    assert registry.status()["off"].startswith("skipped: disabled")


@pytest.mark.parametrize(
    "version, position", [("0.9", -1), ("1", 0), ("1.9.9", 0), ("2.0", 1), ("2.0.0rc1", 1)]
)
def test_version_position_against_the_range(version, position):
    hook = Hook("lib", "lib", "hooks", distribution="lib", min_version=(1, 0), below_version=(2,))
    assert registry.version_position(hook, version) == position
