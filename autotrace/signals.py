"""Flush spans when SIGTERM or SIGINT ends the process.

A container runtime stops the app with SIGTERM, whose default action kills the process
without running ``atexit``. For each signal we take over only where the process would
otherwise die without flushing, and keep what a plain run would do afterwards:

- default action (SIG_DFL): flush, restore SIG_DFL, re-send the signal, so the process
  ends with the same status as a plain run;
- a Python handler installed before us (by a ``sitecustomize`` of the user's): flush,
  then call it;
- ignored (SIG_IGN) or Python's default SIGINT handler (KeyboardInterrupt, after which
  ``atexit`` flushes): left alone.

A handler the app installs later replaces ours; such handlers usually end the process
with ``sys.exit``, and ``atexit`` flushes then. Handlers are installed from the main
thread only.
"""

from __future__ import annotations

import os
import signal
import threading

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from typing import Callable

from . import _log

logger = _log.logger

_installed: dict[int, object] = {}
_flush: Callable[[bool], object] | None = None


def install(flush: Callable[[bool], object]) -> None:
    global _flush
    if threading.current_thread() is not threading.main_thread():
        return
    _flush = flush
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous = signal.getsignal(signum)
            if previous in (signal.SIG_IGN, signal.default_int_handler, None):
                continue
            if signum in _installed:
                continue
            signal.signal(signum, _handler(signum, previous, flush))
            _installed[signum] = previous
        except (ValueError, OSError, RuntimeError) as exc:
            logger.debug("cannot watch signal %s: %s", signum, exc)


def release() -> None:
    """Give SIGTERM and SIGINT back their previous handlers, where ours is still in place.

    For processes that must die at once of the signal: a ``multiprocessing`` pool
    worker is stopped by ``Pool.terminate()`` with SIGTERM, and a Python-level handler
    can miss a signal that arrives just before the worker blocks on the pool's lock,
    which then waits for it forever.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_installed.items()):
        try:
            if hasattr(signal.getsignal(signum), "autotrace_previous"):
                signal.signal(signum, previous)
            del _installed[signum]
        except (ValueError, OSError, RuntimeError) as exc:
            logger.debug("cannot restore signal %s: %s", signum, exc)


def rearm() -> None:
    """Flush again where a server has put SIGTERM or SIGINT back to the default action.

    For a server that resets its worker's signals to SIG_DFL after the agent started
    (uvicorn's gunicorn worker does, so that the worker dies of the signal): without
    this, the worker would die of it without flushing.
    """
    if _flush is None or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _handler(signum, signal.SIG_DFL, _flush))
                _installed[signum] = signal.SIG_DFL
        except (ValueError, OSError, RuntimeError) as exc:
            logger.debug("cannot watch signal %s: %s", signum, exc)


def _handler(signum: int, previous: object, flush: Callable[[bool], object]):
    def on_signal(received: int, frame) -> None:
        try:
            # Final only when the process is about to die of the signal.
            flush(not callable(previous))
        except Exception as exc:  # noqa: BLE001
            logger.warning("flush on signal %s failed: %s", received, exc)
        if callable(previous):
            previous(received, frame)
            return
        # Default action: die of the same signal, as a plain run would.
        signal.signal(received, signal.SIG_DFL)
        os.kill(os.getpid(), received)

    on_signal.autotrace_previous = previous  # type: ignore[attr-defined]
    return on_signal
