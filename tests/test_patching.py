from __future__ import annotations

import types

import pytest

from autotrace.patching import ORIGINAL, unwrap_function, wrap_function


def tagging(calls: list):
    """A make_wrapper that counts how often it is used and tags results."""

    def make_wrapper(original):
        calls.append(original)

        def wrapper(*args, **kwargs):
            return ("wrapped", original(*args, **kwargs))

        return wrapper

    return make_wrapper


def make_classes():
    class Base:
        def greet(self, name):
            """Say hello."""
            return f"hello {name}"

        def other(self):
            return "other"

    class Child(Base):  # inherits greet
        pass

    class Override(Base):
        def greet(self, name):
            return f"hi {name}"

    class GrandChild(Override):  # inherits Override.greet
        pass

    return Base, Child, Override, GrandChild


def make_module():
    module = types.ModuleType("fake_lib")

    def fetch(url, timeout=1):
        """Fetch a URL."""
        return (url, timeout)

    fetch.__module__ = "fake_lib"
    module.fetch = fetch
    return module


def test_wrap_class_method():
    Base, *_ = make_classes()
    original = Base.__dict__["greet"]
    calls: list = []
    assert wrap_function(Base, "greet", tagging(calls)) is True
    assert calls == [original]
    assert Base().greet("ann") == ("wrapped", "hello ann")
    wrapper = Base.__dict__["greet"]
    assert wrapper.__wrapped__ is original
    assert getattr(wrapper, ORIGINAL) is original
    assert wrapper.__name__ == "greet"
    assert wrapper.__qualname__ == original.__qualname__
    assert wrapper.__doc__ == "Say hello."
    assert wrapper.__module__ == original.__module__
    assert Base().other() == "other"


def test_wrap_module_function():
    module = make_module()
    original = module.fetch
    calls: list = []
    assert wrap_function(module, "fetch", tagging(calls)) is True
    assert module.fetch("http://x", timeout=3) == ("wrapped", ("http://x", 3))
    assert module.fetch.__wrapped__ is original
    assert module.fetch.__name__ == "fetch" and module.fetch.__doc__ == "Fetch a URL."
    assert module.fetch.__module__ == "fake_lib"


@pytest.mark.parametrize("owner_kind", ["class", "module"])
def test_wrap_is_idempotent(owner_kind):
    if owner_kind == "class":
        owner, *_ = make_classes()
        name, call = "greet", lambda: owner().greet("bo")
        plain = "hello bo"
    else:
        owner = make_module()
        name, call = "fetch", lambda: owner.fetch("u")
        plain = ("u", 1)
    calls: list = []
    assert wrap_function(owner, name, tagging(calls)) is True
    first = getattr(owner, name) if owner_kind == "module" else owner.__dict__[name]
    assert wrap_function(owner, name, tagging(calls)) is False
    assert wrap_function(owner, name, tagging([])) is False
    second = getattr(owner, name) if owner_kind == "module" else owner.__dict__[name]
    assert second is first
    assert len(calls) == 1  # make_wrapper not even called again
    assert call() == ("wrapped", plain)  # wrapped once, not twice


@pytest.mark.parametrize("owner_kind", ["class", "module"])
def test_unwrap_restores(owner_kind):
    if owner_kind == "class":
        owner, *_ = make_classes()
        name = "greet"
        original = owner.__dict__[name]
    else:
        owner = make_module()
        name = "fetch"
        original = owner.fetch
    assert wrap_function(owner, name, tagging([])) is True
    unwrap_function(owner, name)
    restored = owner.__dict__[name] if owner_kind == "class" else getattr(owner, name)
    assert restored is original
    assert not hasattr(restored, ORIGINAL)
    unwrap_function(owner, name)  # again: nothing to do
    assert (owner.__dict__[name] if owner_kind == "class" else getattr(owner, name)) is original
    assert wrap_function(owner, name, tagging([])) is True  # can be wrapped again


def test_unwrap_of_unwrapped_or_missing_does_nothing():
    Base, *_ = make_classes()
    original = Base.__dict__["greet"]
    unwrap_function(Base, "greet")
    unwrap_function(Base, "missing")
    module = make_module()
    unwrap_function(module, "missing")
    assert Base.__dict__["greet"] is original


def test_patching_a_base_reaches_subclasses_that_inherit_only():
    Base, Child, Override, GrandChild = make_classes()
    assert wrap_function(Base, "greet", tagging([])) is True
    assert Child().greet("a") == ("wrapped", "hello a")  # inherits the wrapper
    assert Override().greet("a") == "hi a"  # defines its own: untouched
    assert GrandChild().greet("a") == "hi a"
    assert "greet" not in Child.__dict__


def test_patching_a_subclass_leaves_its_base_alone():
    Base, Child, Override, GrandChild = make_classes()
    base_greet = Base.__dict__["greet"]
    assert wrap_function(Override, "greet", tagging([])) is True
    assert Override().greet("a") == ("wrapped", "hi a")
    assert GrandChild().greet("a") == ("wrapped", "hi a")
    assert Base.__dict__["greet"] is base_greet
    assert Base().greet("a") == "hello a"
    assert Child().greet("a") == "hello a"
    assert "greet" not in GrandChild.__dict__


def test_patching_a_subclass_that_only_inherits_changes_nothing():
    Base, Child, *_ = make_classes()
    base_greet = Base.__dict__["greet"]
    calls: list = []
    assert wrap_function(Child, "greet", tagging(calls)) is False
    assert calls == []
    assert "greet" not in Child.__dict__
    assert Base.__dict__["greet"] is base_greet
    assert Child().greet("a") == "hello a"


def test_patching_base_then_inheriting_subclass_does_not_double_wrap():
    Base, Child, *_ = make_classes()
    assert wrap_function(Base, "greet", tagging([])) is True
    assert wrap_function(Child, "greet", tagging([])) is False
    assert "greet" not in Child.__dict__
    assert Child().greet("a") == ("wrapped", "hello a")
    unwrap_function(Child, "greet")  # nothing of its own to restore
    assert Child().greet("a") == ("wrapped", "hello a")
    unwrap_function(Base, "greet")
    assert Child().greet("a") == "hello a"


def test_wrapper_keeps_descriptor_behaviour_for_plain_methods():
    Base, *_ = make_classes()
    wrap_function(Base, "greet", tagging([]))
    instance = Base()
    bound = instance.greet
    assert bound.__self__ is instance
    assert Base.greet(instance, "z") == ("wrapped", "hello z")


def test_wrap_staticmethod_keeps_it_static():
    class Lib:
        @staticmethod
        def build(x):
            return x

    wrap_function(Lib, "build", tagging([]))
    assert Lib().build(1) == ("wrapped", 1)


def test_wrap_classmethod_keeps_it_a_classmethod():
    class Lib:
        @classmethod
        def create(cls, x):
            return (cls.__name__, x)

    wrap_function(Lib, "create", tagging([]))
    assert Lib.create(1) == ("wrapped", ("Lib", 1))
