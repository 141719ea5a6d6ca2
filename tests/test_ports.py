"""tests/ports.py: a port handed out is this run's alone, on a machine other runs share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ports
from ports import free_port

# Tries to lock one port's byte in the shared lock file, as another run's free_port() would.
# (Only in another process: opening and closing the file here would drop this run's locks.)
TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]), os.SEEK_SET)
except OSError:
    print("taken")
else:
    print("free")
"""


def other_run(*code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", *code],
        cwd=Path(ports.__file__).parent,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_ports_are_distinct_and_outside_the_ephemeral_range():
    handed_out = [free_port() for _ in range(20)]
    assert len(set(handed_out)) == 20
    ephemeral = ports.ephemeral_range()
    assert all(15000 <= port < 20000 and port not in ephemeral for port in handed_out)


def test_another_run_cannot_take_a_port_this_run_holds():
    port = free_port()
    assert other_run(TRY_LOCK, ports.LOCK_FILE, str(port)) == "taken"


def test_a_port_is_released_when_the_run_that_held_it_ends():
    port = int(other_run("import ports; print(ports.free_port())"))
    assert other_run(TRY_LOCK, ports.LOCK_FILE, str(port)) == "free"
