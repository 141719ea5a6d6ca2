"""Loopback ports for the servers tests start, safe when several test runs share a machine.

A test that starts a server (a service under the launcher, a plain one beside it, a
collector that comes up late) needs a port number before the server binds it, and a test
that expects "connection refused" needs a port that stays closed. :func:`free_port` hands
out ports that

* nothing is bound to when they are handed out;
* the kernel never picks for a socket bound to port 0 or for an outgoing connection,
  because they lie below its ephemeral range (a receiver or client of this run or of
  another can not take them by chance);
* no other test run on the machine hands out while this run lives: each port is a one-byte
  record lock in a lock file shared by all runs (``fcntl.lockf``), held until this process
  exits, when the kernel releases it, even after a crash or SIGKILL;
* are never handed out twice in one run (record locks do not conflict within a process).

The range, 15000-19999, is clear of every port the tests name (OTLP's 4317 and 4318, the
Jaeger and Zipkin ports the doctor recognises, 14250 and 14268 among them) and of
20000-32767, which this project's earlier test helpers handed out without the lock: a run
of an older checkout on the same machine does not collide with this one either.
"""

from __future__ import annotations

import os
import random
import socket
import threading

_HOST = "127.0.0.1"
_CANDIDATES = range(15000, 20000)
LOCK_FILE = os.path.join("/tmp" if os.path.isdir("/tmp") else os.path.expanduser("~"), "autotrace-test-ports.lock")

_lock = threading.Lock()
_handed_out: set[int] = set()
_lock_fd: int | None = None


def ephemeral_range() -> range:
    """The kernel's range for port 0 and outgoing connections (Linux; BSD and macOS use 49152-65535)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low, high = map(int, file.read().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(49152, 65536)


def _lock_file() -> int:
    """The shared lock file, opened once for the process (closing it would drop every lock held)."""
    global _lock_fd
    if _lock_fd is None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.fchmod(fd, 0o666)  # another user's run locks it too
        except OSError:
            pass
        _lock_fd = fd
    return _lock_fd


def _claim(port: int) -> bool:
    """Lock ``port`` for this process; False if another process holds it."""
    import fcntl

    try:
        fcntl.lockf(_lock_file(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port, os.SEEK_SET)
    except OSError:
        return False
    return True


def _unbound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port for a server a test starts (or one that must stay closed); see above."""
    ephemeral = ephemeral_range()
    with _lock:
        for _ in range(500):
            port = random.choice(_CANDIDATES)
            if port in _handed_out or port in ephemeral or not _claim(port):
                continue
            _handed_out.add(port)  # held for the run whether or not it was free
            if _unbound(port):
                return port
    raise RuntimeError(f"no free loopback port in {_CANDIDATES} after 500 tries (lock file {LOCK_FILE})")
