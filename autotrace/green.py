"""The agent's own threads keep working in a process that gevent or eventlet monkey-patched.

``gevent.monkey.patch_all()`` and ``eventlet.monkey_patch()`` replace ``_thread``'s and
``threading``'s functions with green ones: a ``threading.Thread`` started afterwards is a
greenlet that runs only when the app yields to the hub, and a lock or an event made
afterwards, waited on from a real OS thread, needs a hub in that thread (or never wakes).
A process can also be patched *after* the agent set itself up (Celery's ``-P gevent``
patches as it starts, while the agent's background set-up may be running), so what was
real at the start must stay real.

So the export thread is always a real OS thread started with the original
``_thread.start_new_thread`` (:class:`RealThread`), and everything it waits on is made of
the original ``_thread.allocate_lock`` (:func:`allocate_lock`, :class:`Flag`). The
originals are asked of gevent (``gevent.monkey.get_original``) or eventlet
(``eventlet.patcher.original``) only when the app already imported them: this module never
imports either (the agent's lazy rule); without them ``_thread``'s own functions are used.
"""

from __future__ import annotations

import _thread
import sys
import threading
from typing import Any, Callable, Tuple

Functions = Tuple[Callable[..., Any], Callable[[], Any]]  # (start_new_thread, allocate_lock)


def patched() -> bool:
    """Whether gevent or eventlet monkey-patched this process's threads."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            if monkey.is_module_patched("threading") or monkey.is_module_patched("thread"):
                return True
        except Exception:  # noqa: BLE001 - an unknown gevent: as if unpatched
            pass
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        try:
            return bool(patcher.is_monkey_patched("thread"))
        except Exception:  # noqa: BLE001
            pass
    return False


def _originals() -> Functions:
    """``_thread.start_new_thread`` and ``_thread.allocate_lock`` as they were before any patching."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            start, allocate = monkey.get_original("_thread", ["start_new_thread", "allocate_lock"])
            return start, allocate
        except Exception:  # noqa: BLE001 - try eventlet, then _thread itself
            pass
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        try:
            module = patcher.original("_thread")
            return module.start_new_thread, module.allocate_lock
        except Exception:  # noqa: BLE001
            pass
    return _thread.start_new_thread, _thread.allocate_lock


def allocate_lock() -> Any:
    """A real lock (never a green one), whatever patched the process."""
    return _originals()[1]()


class Flag:
    """An event for one waiting thread, made of a real lock: ``set`` from any thread or
    greenlet; ``wait`` and ``clear`` from the one thread that waits (the export thread).

    The lock is free exactly while the flag is set, so ``wait`` is a lock acquired with a
    timeout, which a real thread can do whether or not the process is patched.
    """

    def __init__(self) -> None:
        self._mutex = allocate_lock()  # set against clear
        self._free_when_set = allocate_lock()
        self._free_when_set.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._mutex:
            if not self._set:
                self._set = True
                self._free_when_set.release()

    def clear(self) -> None:
        with self._mutex:
            if self._set:
                self._set = False
                self._free_when_set.acquire()

    def wait(self, timeout: float | None = None) -> bool:
        """True once set, False after ``timeout`` seconds (None: no bound)."""
        if self._set:
            return True
        if self._free_when_set.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self._free_when_set.release()
            return True
        return self._set


def _original_socket_class() -> Any:
    """``socket.socket`` as it was before any patching."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original("socket", "socket")
        except Exception:  # noqa: BLE001 - try eventlet
            pass
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        try:
            return patcher.original("socket").socket
        except Exception:  # noqa: BLE001
            pass
    import socket

    return socket.socket


def create_connection(address: Tuple[str, int], timeout: Any = None, source_address: Any = None) -> Any:
    """``socket.create_connection`` with a real socket and the C resolver, whatever patched
    the process: what the export thread (a real OS thread) connects with in a patched
    process, where the patched function would start a hub of the library's in that thread."""
    import _socket

    host, port = address
    error: OSError | None = None
    socket_class = _original_socket_class()
    for family, kind, proto, _name, sockaddr in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = socket_class(family, kind, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error if error is not None else OSError(f"getaddrinfo returned nothing for {host}:{port}")


class RealThread:
    """A daemon OS thread started with the original ``_thread.start_new_thread``.

    Not a ``threading.Thread``: in a patched process that would be a greenlet, and one
    started before the patching fails at its end (gevent's ``get_ident`` then names
    another thread). ``target`` must not raise (what it raises is printed by Python).
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        start, allocate = _originals()
        self.name = name
        self._running = allocate()
        self._running.acquire()
        self._target = target
        start(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._running.release()

    def is_alive(self) -> bool:
        return self._running.locked()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread's end (at most ``timeout`` seconds); True if it ended."""
        if self._running.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self._running.release()
            return True
        return False

    def __repr__(self) -> str:
        return f"<RealThread {self.name} {'running' if self.is_alive() else 'ended'}>"


class SetUpThread(threading.Thread):
    """A ``threading.Thread`` (it keeps its name for the log) whose end may come after the
    process was patched: ``threading`` then looks it up under the green ``get_ident`` of
    the patching library, fails, and prints a traceback; the thread is removed under its
    real ident instead."""

    def _delete(self) -> None:
        try:
            super()._delete()  # type: ignore[misc]
        except KeyError:
            threading._active.pop(self.ident, None)  # type: ignore[attr-defined]  # noqa: SLF001
