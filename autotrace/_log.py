"""The agent's own log: one line per event on stderr, never a traceback storm.

Deliberately not the ``logging`` module: it is not needed to write a line, and
importing it would cost every traced process start-up time. The level comes from
``OTEL_LOG_LEVEL``.

A line of the main process reads ``autotrace WARNING: ...``; any other process (a forked
worker of a prefork server, a child process) names itself: ``autotrace[pid 123] WARNING:
...``, so that the workers' lines can be told apart.
"""

from __future__ import annotations

import os
import sys

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_LEVELS = {
    "debug": DEBUG,
    "info": INFO,
    "warn": WARNING,
    "warning": WARNING,
    "error": ERROR,
    "critical": ERROR,
}
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}

_warned: set = set()
_main_pid: int | None = os.getpid()  # the process whose lines carry no pid (None: every line has one)


class Logger:
    level = INFO

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the logging API's name
        return level >= self.level

    def log(self, level: int, message: str, *args: object) -> None:
        if level < self.level:
            return
        try:
            text = message % args if args else message
            pid = os.getpid()
            who = "autotrace" if pid == _main_pid else "autotrace[pid %d]" % pid
            sys.stderr.write("%s %s: %s\n" % (who, _NAMES.get(level, level), text))
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed or odd stderr must not break the app
            pass

    def debug(self, message: str, *args: object) -> None:
        self.log(DEBUG, message, *args)

    def info(self, message: str, *args: object) -> None:
        self.log(INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(WARNING, message, *args)


logger = Logger()


def setup(level_name: str | None) -> None:
    """Set the agent's level from an OTEL_LOG_LEVEL value."""
    logger.level = _LEVELS.get((level_name or "info").strip().lower(), INFO)


def set_main_process(main: bool) -> None:
    """Whether this process is the main one (its lines carry no pid); its forks are not."""
    global _main_pid
    _main_pid = os.getpid() if main else None


def level_is_valid(level_name: str) -> bool:
    return level_name.strip().lower() in _LEVELS


def warn_once(key: str, message: str, *args: object) -> None:
    """Log a warning once per process for ``key`` (usually the variable's name)."""
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(message, *args)


def debug_enabled() -> bool:
    return logger.isEnabledFor(DEBUG)
