"""autotrace.distributions: the one way the agent reads package metadata."""

import sys

import pytest

from autotrace import distributions


def test_version_of_an_installed_distribution_and_of_a_missing_one():
    assert distributions.version("pytest") == pytest.__version__
    assert distributions.version("no-such-distribution-autotrace") is None


def test_entry_points_by_group_and_name():
    (found,) = distributions.entry_points("opentelemetry_propagator", "autotrace_b3")
    assert found.value == "autotrace.propagation.b3:B3SinglePropagator"
    assert distributions.entry_points("opentelemetry_propagator", "no-such-name") == []


def test_names_lists_installed_distributions_and_normalize_compares_them():
    names = {distributions.normalize(name) for name in distributions.names()}
    assert {"autotrace-agent", "pytest", "opentelemetry-sdk"} <= names
    assert distributions.normalize("Foo_Bar.baz--Qux") == "foo-bar-baz-qux"


def test_console_script_owner_reads_entry_points_in_path_order(tmp_path, monkeypatch):
    from autotrace.distributions import console_script_owner

    first, second = tmp_path / "first", tmp_path / "second"
    (first / "orders_backend-1.2.dist-info").mkdir(parents=True)
    (first / "orders_backend-1.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: orders-backend\nVersion: 1.2\n\nName: not a header\n"
    )
    (first / "orders_backend-1.2.dist-info" / "entry_points.txt").write_text(
        "[gui_scripts]\nwindowed = orders.gui:main\n\n[console_scripts]\nserve-orders = orders.cli:main\n"
    )
    (second / "Legacy.egg-info").mkdir(parents=True)
    (second / "Legacy.egg-info" / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: Legacy\n")
    (second / "Legacy.egg-info" / "entry_points.txt").write_text("[console_scripts]\nserve-orders=legacy:main\nold = legacy:old\n")
    (second / "nameless-0.1.dist-info").mkdir()
    (second / "nameless-0.1.dist-info" / "entry_points.txt").write_text("[console_scripts]\nanon = x:y\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(first), str(second)])

    assert console_script_owner("serve-orders") == "orders-backend"  # the first on the path
    assert console_script_owner("old") == "Legacy"
    assert console_script_owner("anon") == "nameless"  # no METADATA: the folder's name
    assert console_script_owner("windowed") is None  # a GUI script, not a console one
    assert console_script_owner("nothing") is None
