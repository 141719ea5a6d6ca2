from __future__ import annotations

import io
import sys

import pytest

from autotrace import _log
from autotrace._log import logger


@pytest.mark.parametrize(
    "name, level",
    [
        ("debug", _log.DEBUG),
        ("DEBUG", _log.DEBUG),
        ("info", _log.INFO),
        (" warn ", _log.WARNING),
        ("warning", _log.WARNING),
        ("error", _log.ERROR),
        ("critical", _log.ERROR),
        (None, _log.INFO),
        ("", _log.INFO),
        ("verbose", _log.INFO),  # unknown: the default (config warns about it)
    ],
)
def test_setup_levels(name, level):
    _log.setup(name)
    assert logger.level == level


@pytest.mark.parametrize("name, valid", [("debug", True), ("Warn", True), ("error", True), ("trace", False), ("", False)])
def test_level_is_valid(name, valid):
    assert _log.level_is_valid(name) is valid


def test_debug_hidden_at_info(capsys):
    _log.setup("info")
    logger.debug("hidden %s", 1)
    logger.info("shown %s", 2)
    logger.warning("also %s", 3)
    assert capsys.readouterr().err.splitlines() == ["autotrace INFO: shown 2", "autotrace WARNING: also 3"]
    assert _log.debug_enabled() is False


def test_debug_shown_at_debug(capsys):
    _log.setup("debug")
    logger.debug("visible %s", "now")
    assert capsys.readouterr().err == "autotrace DEBUG: visible now\n"
    assert _log.debug_enabled() is True


def test_error_level_hides_warnings(capsys):
    _log.setup("error")
    logger.warning("quiet")
    logger.info("quiet")
    logger.log(_log.ERROR, "loud")
    assert capsys.readouterr().err == "autotrace ERROR: loud\n"


def test_message_without_arguments_is_not_formatted(capsys):
    logger.info("100% literal")
    assert capsys.readouterr().err == "autotrace INFO: 100% literal\n"


def test_writes_to_the_current_stderr(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logger.warning("one")
    monkeypatch.setattr(sys, "stderr", second)
    logger.warning("two")
    assert first.getvalue() == "autotrace WARNING: one\n"
    assert second.getvalue() == "autotrace WARNING: two\n"


class BrokenStream:
    def __init__(self) -> None:
        self.attempts = 0

    def write(self, text: str) -> int:
        self.attempts += 1
        raise OSError("stderr is closed")

    def flush(self) -> None:
        raise OSError("stderr is closed")


@pytest.mark.parametrize("stream", [BrokenStream(), None])
def test_broken_stderr_does_not_raise(monkeypatch, stream):
    monkeypatch.setattr(sys, "stderr", stream)
    logger.warning("lost %s", "line")
    _log.warn_once("key", "lost")
    if stream is not None:
        assert stream.attempts == 2


def test_bad_format_arguments_do_not_raise(capsys):
    logger.warning("%d items", "not a number")
    assert capsys.readouterr().err == ""


def test_warn_once_per_key(capsys):
    _log.warn_once("A", "first %s", 1)
    _log.warn_once("A", "again %s", 2)
    _log.warn_once("B", "other")
    assert capsys.readouterr().err.splitlines() == ["autotrace WARNING: first 1", "autotrace WARNING: other"]


def test_a_forked_process_names_its_pid(capsys):
    """The main process's lines carry no pid; any other process's (a forked worker) do."""
    import os

    _log.setup("info")
    try:
        _log.set_main_process(True)
        logger.warning("from the main process")
        _log.set_main_process(False)  # a child: every line says which process it is
        logger.warning("from a worker")
    finally:
        _log.set_main_process(True)
    assert capsys.readouterr().err.splitlines() == [
        "autotrace WARNING: from the main process",
        f"autotrace[pid {os.getpid()}] WARNING: from a worker",
    ]
