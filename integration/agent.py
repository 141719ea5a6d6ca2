"""Run real processes under the launcher, as a user would: ``autotrace run python script.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
AUTOTRACE = str(BIN / "autotrace")
PYTHON = sys.executable


# The end of a test service script whose ThreadingHTTPServer ``Handler`` serves on the port
# given as its first argument, until SIGINT.
SERVE_ON_ARGV_PORT = """
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("serving", flush=True)
try:
    server.serve_forever(poll_interval=0.05)
except KeyboardInterrupt:
    pass
"""

def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any agent or OpenTelemetry setting.

    The interpreter's own bin directory comes first on PATH, so ``python`` is the
    interpreter autotrace is installed for.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "AUTOTRACE_")) and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def run(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run a command to completion (bounded), capturing text output."""
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def autotrace_run(
    script: Path,
    env: dict[str, str],
    *script_args: str,
    options: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """``autotrace run [options] python script [args]`` in the script's directory."""
    return run(
        [AUTOTRACE, "run", *options, "python", script.name, *script_args],
        cwd=script.parent,
        env=env,
        timeout=timeout,
    )


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a long-running process; the caller stops it (see :func:`stop`)."""
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(process: subprocess.Popen, timeout: float = 15) -> tuple[str, str]:
    """Make sure a started process is gone; returns its output."""
    if process.poll() is None:
        process.terminate()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=timeout)
    return out, err


class Watched:
    """A started process whose output is read as it comes, so a test can wait for a line.

    Threads read stdout and stderr line by line and note when each line arrived. The
    process starts in a session of its own with SIGINT and SIGTERM at their defaults (as
    in a terminal, whatever the test runner inherited), so a server's workers can be
    cleaned up with the group. Use it as a context manager: the process is always stopped.
    """

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.lines: dict[str, list[tuple[float, str]]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self.exited_at: float | None = None
        self.process = subprocess.Popen(
            # Not a preexec_fn: that makes Python fork() rather than vfork(), and with gRPC
            # active in this process (the receiver's server, a test's channel) gRPC's fork
            # handler restarts its poller in the child, whose epoll descriptor the child
            # then closes before exec: now and then the child aborts before it becomes the
            # command (SIGABRT, "epoll_wait error: Bad file descriptor"; grpc/grpc#43055).
            [PYTHON, "-I", "-S", "-c", _DEFAULT_SIGNALS_THEN_EXEC, *args] if _signal_ignored() else args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, name: str, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines[name].append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def text(self, name: str = "stdout") -> str:
        with self._cond:
            return "".join(line + "\n" for _, line in self.lines[name])

    def wait_for_line(self, text: str, timeout: float = 15, name: str = "stdout") -> float:
        """Wait until a line of ``name`` contains ``text``; return when it arrived (monotonic)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self.lines[name]:
                    if text in line:
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    break
                self._cond.wait(min(remaining, 0.1))
        raise AssertionError(
            f"no line with {text!r} on {name} within {timeout}s (exit code {self.process.poll()})\n"
            f"stdout:\n{self.text('stdout')}\nstderr:\n{self.text('stderr')}"
        )

    def send(self, signum: int) -> float:
        """Send a signal to the process itself (not its group); return when (monotonic)."""
        at = time.monotonic()
        self.process.send_signal(signum)
        return at

    def finish(self, timeout: float = 20) -> int:
        """Wait for the process to exit (bounded: killed and AssertionError after ``timeout``)."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{self.args} did not exit within {timeout}s\n"
                f"stdout:\n{self.text('stdout')}\nstderr:\n{self.text('stderr')}"
            ) from None
        self.exited_at = time.monotonic()
        self._join_readers()
        return code

    def stop(self, timeout: float = 10) -> None:
        """Make sure the process and its group are gone (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the session started for it
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(5)

    def __enter__(self) -> "Watched":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_ignored() -> bool:
    """Whether SIGINT or SIGTERM is ignored here: a child would inherit that (a handler it would not)."""
    return any(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM))


# Run by a bare interpreter (-I -S: no site, so not the agent either) that then becomes the
# command, same PID: signals ignored by the test runner (a background job's SIGINT) are
# reset, since exec keeps an ignored signal ignored.
_DEFAULT_SIGNALS_THEN_EXEC = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def wait_until_answers(url: str, timeout: float = 20, process: Watched | None = None) -> None:
    """Wait until ``url`` answers an HTTP GET with any status (bounded)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    detail = ""
    if process is not None:
        detail = f"\nexit code {process.process.poll()}\nstdout:\n{process.text('stdout')}\nstderr:\n{process.text('stderr')}"
    raise AssertionError(f"{url} did not answer within {timeout}s (last error: {last}){detail}")
