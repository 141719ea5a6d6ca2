"""The agent's SIGTERM/SIGINT handlers: installed over the defaults, released where a process must die at once."""

from __future__ import annotations

import signal

import pytest

from autotrace import signals


@pytest.fixture
def clean_signals():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    installed = dict(signals._installed)
    signals._installed.clear()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    signals._installed.clear()
    signals._installed.update(installed)


def test_release_gives_back_the_previous_handlers(clean_signals):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    mine = lambda signum, frame: None  # noqa: E731 - an app's own SIGINT handler
    signal.signal(signal.SIGINT, mine)
    flushed = []
    signals.install(flushed.append)
    assert hasattr(signal.getsignal(signal.SIGTERM), "autotrace_previous")
    assert signal.getsignal(signal.SIGINT).autotrace_previous is mine

    signals.release()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is mine
    assert signals._installed == {}
    assert flushed == []


def test_release_keeps_a_handler_the_app_installed_over_ours(clean_signals):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signals.install(lambda final: None)
    later = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, later)
    signals.release()
    assert signal.getsignal(signal.SIGTERM) is later
