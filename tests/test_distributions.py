"""autotrace.distributions: the one way the agent reads package metadata."""

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
