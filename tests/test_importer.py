from __future__ import annotations

import importlib
import importlib.machinery
import sys
import threading

import pytest

from autotrace import importer


@pytest.fixture(autouse=True)
def _clean(clean_importer):
    yield


def test_hook_fires_once_after_module_code_and_before_import_returns(modules):
    target = modules.module("VALUE = 42\n")
    # A second module that imports the target and reads what the hook did: the hook
    # must have run by the time its `import` statement returned.
    user = modules.module(f"import {target}\nSEEN = getattr({target}, 'patched', False)\n")
    calls = []

    def hook(module):
        calls.append((module.__name__, module.VALUE))
        module.patched = True

    importer.register(target, hook)
    assert calls == []
    assert importlib.import_module(user).SEEN is True
    assert calls == [(target, 42)]
    importlib.import_module(target)  # imported again: nothing more
    assert calls == [(target, 42)]
    assert target not in importer._pending


def test_hook_for_an_already_imported_module_fires_at_once(modules):
    name = modules.module("VALUE = 7\n")
    module = importlib.import_module(name)
    calls = []
    importer.register(name, calls.append)
    assert calls == [module]
    assert name not in importer._pending


def test_several_hooks_fire_in_registration_order(modules):
    name = modules.module("")
    order = []
    for index in range(4):
        importer.register(name, lambda module, index=index: order.append(index))
    importlib.import_module(name)
    assert order == [0, 1, 2, 3]


def test_raising_hook_does_not_fail_the_import_and_logs_one_warning(modules, warnings):
    name = modules.module("VALUE = 1\n")
    later = []

    def broken(module):
        raise RuntimeError("hook is broken")

    importer.register(name, broken)
    importer.register(name, later.append)
    module = importlib.import_module(name)
    assert module.VALUE == 1
    assert later == [module]  # the hook after the broken one still ran
    lines = warnings()
    assert len(lines) == 1
    assert name in lines[0] and "RuntimeError" in lines[0] and "hook is broken" in lines[0]


def test_module_sees_the_real_loader_during_and_after_import(modules):
    name = modules.module(
        "LOADER_DURING = __loader__\n"
        "SPEC_LOADER_DURING = __spec__.loader\n"
    )
    seen_by_hook = []
    importer.register(name, lambda module: seen_by_hook.append((module.__loader__, module.__spec__.loader)))
    module = importlib.import_module(name)
    real = importlib.machinery.SourceFileLoader
    assert type(module.LOADER_DURING) is real
    assert type(module.SPEC_LOADER_DURING) is real
    assert type(module.__loader__) is real
    assert type(module.__spec__.loader) is real
    assert type(sys.modules[name].__spec__.loader) is real
    assert all(type(loader) is real for pair in seen_by_hook for loader in pair)
    assert module.__loader__.get_filename(name).endswith(f"{name}.py")


def test_submodule_of_a_package(modules):
    package = modules.package({"sub": "VALUE = 'sub'\n"}, init="VALUE = 'init'\n")
    calls = []
    importer.register(f"{package}.sub", lambda module: calls.append(("sub", module.VALUE)))
    importer.register(package, lambda module: calls.append(("pkg", module.VALUE)))
    importlib.import_module(f"{package}.sub")
    assert calls == [("pkg", "init"), ("sub", "sub")]
    assert type(sys.modules[f"{package}.sub"].__spec__.loader) is importlib.machinery.SourceFileLoader


def test_hook_may_register_and_import_from_inside_a_hook(modules):
    first = modules.module("")
    second = modules.module("")
    calls = []

    def on_first(module):
        calls.append(module.__name__)
        importer.register(second, lambda m: calls.append(m.__name__))
        importlib.import_module(second)

    importer.register(first, on_first)
    importlib.import_module(first)
    assert calls == [first, second]


def test_failed_import_keeps_the_hook_waiting(modules):
    name = modules.module("raise ValueError('module code failed')\n")
    calls = []
    importer.register(name, calls.append)
    with pytest.raises(ValueError, match="module code failed"):
        importlib.import_module(name)
    assert calls == []
    assert importer._pending.get(name) == [calls.append]


def test_hook_registered_from_another_thread(modules):
    name = modules.module("VALUE = 3\n")
    calls = []
    errors = []

    def worker():
        try:
            importer.register(name, lambda module: calls.append((threading.current_thread().name, module.VALUE)))
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    thread = threading.Thread(target=worker, name="registering-thread")
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert errors == []
    assert calls == [("registering-thread", 3)]


def test_hook_registered_in_a_thread_fires_on_import_in_the_main_thread(modules):
    name = modules.module("VALUE = 4\n")
    calls = []
    thread = threading.Thread(target=importer.register, args=(name, calls.append))
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert calls == []
    module = importlib.import_module(name)
    assert calls == [module]


def test_unwatched_modules_are_not_touched(modules):
    importer.register(modules.unique("never_imported"), lambda module: None)
    name = modules.module("")
    assert importer._finder.find_spec(name) is None
    module = importlib.import_module(name)
    assert type(module.__spec__.loader) is importlib.machinery.SourceFileLoader
