"""autotrace.green: real threads and locks whatever patched the process; gevent and eventlet never imported by it."""

from __future__ import annotations

import subprocess
import sys
import time

from autotrace import green


def test_a_flag_wakes_its_waiter_and_times_out_when_unset():
    flag = green.Flag()
    started = time.monotonic()
    assert flag.wait(0.05) is False and time.monotonic() - started >= 0.04
    woken: list[bool] = []
    thread = green.RealThread(lambda: woken.append(flag.wait(10)), "waiter")
    flag.set()
    assert thread.join(10) and woken == [True]
    assert flag.is_set() and flag.wait(0) is True  # stays set until cleared
    flag.set()  # twice: no error
    flag.clear()
    assert not flag.is_set() and flag.wait(0.01) is False
    flag.clear()  # twice: no error


def test_a_real_thread_runs_its_target_and_is_joined():
    ran: list[int] = []
    thread = green.RealThread(lambda: (time.sleep(0.05), ran.append(1)), "worker")
    assert thread.is_alive() or ran
    assert thread.join(10) is True and ran == [1] and not thread.is_alive()
    assert "worker" in repr(thread)


def test_unpatched_without_gevent_or_eventlet_imported_and_neither_is_imported():
    code = (
        "import sys; from autotrace import green; "
        "assert not green.patched(); green.Flag(); green.RealThread(lambda: None, 'x').join(5); "
        "print(sorted(m for m in ('gevent', 'eventlet', 'greenlet') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_patched_by_gevent_or_eventlet_and_the_originals_are_real():
    for library, patch in (("gevent", "from gevent import monkey; monkey.patch_all()"), ("eventlet", "import eventlet; eventlet.monkey_patch()")):
        code = (
            f"{patch}\n"
            "import _thread, threading\n"
            "from autotrace import green\n"
            "assert green.patched()\n"
            "start, allocate = green._originals()\n"
            "assert allocate is not _thread.allocate_lock, 'a green lock'\n"
            "assert type(green.allocate_lock()).__module__ == '_thread'\n"
            "flag = green.Flag()\n"
            "thread = green.RealThread(lambda: flag.wait(0.05) or flag.set(), 'export')\n"
            "assert thread.join(10) and flag.is_set()\n"
            "print('ok')\n"
        )
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "ok", (library, done.stderr)


def test_in_a_patched_process_a_real_thread_connects_with_a_real_socket():
    """What the OTLP/HTTP exporter connects with in a patched process: a socket of the
    original class, connected from a real OS thread, with no hub started there."""
    for library, patch in (("gevent", "from gevent import monkey; monkey.patch_all()"), ("eventlet", "import eventlet; eventlet.monkey_patch()")):
        code = (
            f"{patch}\n"
            "import socket\n"
            "from autotrace import green\n"
            "server = green._original_socket_class()()\n"
            "server.bind(('127.0.0.1', 0)); server.listen(1)\n"
            "found = []\n"
            "def connect():\n"
            "    sock = green.create_connection(server.getsockname(), timeout=5)\n"
            "    found.append(type(sock)); sock.sendall(b'hi'); sock.close()\n"
            "thread = green.RealThread(connect, 'export')\n"
            "peer, _ = server.accept()\n"
            "assert thread.join(10) and peer.recv(2) == b'hi', found\n"
            "assert found[0] is not socket.socket and found[0] is green._original_socket_class(), found\n"
            "print('ok')\n"
        )
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "ok", (library, done.stdout, done.stderr)
