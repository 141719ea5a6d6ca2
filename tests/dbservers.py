"""Real database and cache servers for the tests: PostgreSQL, MariaDB and Redis on loopback.

Session-scoped pytest fixtures (``postgres_server``, ``mariadb_server``, ``redis_server``),
imported by both ``tests/conftest.py`` and ``integration/conftest.py``. Each yields a
:class:`DbServer` and starts its server once per test session, from the Debian packages
installed on the machine (``.ci/run`` installs them when missing):

* in a fresh temporary directory (data, unix socket, log), removed at the end;
* on a free loopback port (``ports.free_port``), listening on 127.0.0.1 only;
* as the unprivileged user ``nobody`` when the tests run as root (CI does; PostgreSQL
  refuses to run as root), with the temporary directory given to that user;
* with a user that has a password and owns a database (PostgreSQL and MariaDB; Redis has
  neither and uses database 0);
* tuned to start fast and never sync to disk: the data is thrown away.

Startup is bounded (:data:`START_TIMEOUT`); a server that does not come up fails every test
that uses it with a message and the tail of its log (never a silent skip). At the end of the
session each server is asked to stop, then killed with its whole process group after
:data:`STOP_TIMEOUT`; the servers also get SIGTERM/SIGQUIT if the test process dies
(``setpriv --pdeathsig``), so no server outlives its run; the directory a killed run leaves
behind is removed by the next run.

``redis_cluster_server`` is a one-node Redis Cluster (every slot on one server in cluster
mode), for cluster clients. Tests share the servers: each uses its own table and key names
(``uuid``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import pytest

from ports import free_port

HOST = "127.0.0.1"
USER = "autotrace"
DATABASE = "autotrace"
START_TIMEOUT = 30.0  # seconds for a server to answer after it is started
STOP_TIMEOUT = 10.0  # seconds for a server to stop when asked, before SIGKILL
SETUP_TIMEOUT = 60.0  # seconds for a set-up command (initdb, mariadb-install-db, psql)
UNPRIVILEGED_USER = "nobody"

_DEFAULT_SCHEMES = {"postgresql": "postgresql", "mariadb": "mysql", "redis": "redis", "rabbitmq": "amqp"}


@dataclass(frozen=True)
class DbServer:
    """Where a test server listens and how to log in to it."""

    system: str  # "postgresql" | "mariadb" | "redis" | "rabbitmq"
    host: str
    port: int
    user: str | None
    password: str | None
    database: str | None  # postgresql/mariadb: a database ``user`` owns; redis: "0"

    def url(self, scheme: str | None = None) -> str:
        """``postgresql://user:pw@127.0.0.1:port/db``, ``mysql://...``, ``redis://127.0.0.1:port/0``.

        ``scheme`` replaces the default one (e.g. ``postgresql+psycopg``, ``mysql+pymysql``).
        """
        scheme = scheme or _DEFAULT_SCHEMES[self.system]
        credentials = ""
        if self.user is not None:
            credentials = quote(self.user, safe="")
            if self.password is not None:
                credentials += ":" + quote(self.password, safe="")
            credentials += "@"
        path = f"/{quote(self.database, safe='')}" if self.database is not None else ""
        return f"{scheme}://{credentials}{self.host}:{self.port}{path}"


# --- Processes -------------------------------------------------------------------------


class ServerStartError(RuntimeError):
    """A test server could not be set up or did not come up in time."""


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the servers as: ``nobody`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise ServerStartError(
            f"the tests run as root and the servers must not: user {UNPRIVILEGED_USER!r} does not exist"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _setpriv() -> str:
    path = shutil.which("setpriv") or next((p for p in ("/usr/bin/setpriv", "/bin/setpriv") if os.path.exists(p)), None)
    if path is None:
        raise ServerStartError("setpriv (util-linux) is missing: apt-get install util-linux")
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


_OWNER_FILE = "owner.pid"  # the test process's pid, in each server's directory


def _remove_orphaned_directories(prefix: str) -> None:
    """Directories of servers whose test process was killed (SIGKILL skips every clean-up)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")):
        try:
            owner = int(Path(path, _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(path, ignore_errors=True)


class _Server:
    """One server process in its own temporary directory; :meth:`stop` cleans up both."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.run_as = _run_as()
        prefix = f"autotrace-{system}-"
        _remove_orphaned_directories(prefix)
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        (self.directory / _OWNER_FILE).write_text(str(os.getpid()))
        if self.run_as is not None:
            os.chown(self.directory, *self.run_as)
        self.log = self.directory / "server.log"
        self.process: subprocess.Popen | None = None
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "LC_ALL": "C.UTF-8",
            "TMPDIR": str(self.directory),
        }

    def command(self, args: list[str], death_signal: str | None = None) -> list[str]:
        """``args`` run through setpriv: as the server's user, and killed with the test process.

        Not Popen's ``user=`` or a ``preexec_fn``: those make Python fork() rather than
        vfork(), and with gRPC active in the test process (an OTLP receiver) a forked child
        may abort before it execs (see integration/agent.py's Watched).
        """
        wrapper = [_setpriv()]
        if self.run_as is not None:
            uid, gid = self.run_as
            wrapper += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        if death_signal is not None:
            wrapper.append(f"--pdeathsig={death_signal}")
        return [*wrapper, "--", *args]

    def write(self, name: str, text: str) -> Path:
        """A file in the server's directory that the server's user can read (and only it)."""
        path = self.directory / name
        path.write_text(text)
        os.chmod(path, 0o600)
        if self.run_as is not None:
            os.chown(path, *self.run_as)
        return path

    def setup(self, args: list[str]) -> str:
        """Run a set-up command as the server's user (bounded); its output, or a clear failure."""
        try:
            done = subprocess.run(
                self.command(args),
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=SETUP_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerStartError(f"{self.system} test server: {args[0]} failed: {exc}") from None
        if done.returncode != 0:
            raise ServerStartError(
                f"{self.system} test server: {' '.join(args)} exited with {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        return done.stdout

    def start(self, args: list[str], death_signal: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Start the server (output to its log) and wait until ``ready()`` (at most ``timeout``
        seconds) or fail with the log's tail."""
        with open(self.log, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.command(args, death_signal),
                    cwd=self.directory,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() kills all of it
                )
            except OSError as exc:
                raise ServerStartError(f"{self.system} test server: cannot start {args[0]}: {exc}") from None
        _running.add(self)
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"{self.system} test server exited with {code} at startup ({' '.join(args)}); "
                    f"log {self.log}:\n{_tail(self.log)}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.system} test server did not answer within {timeout:.0f} s "
                    f"({' '.join(args)}); log {self.log}:\n{_tail(self.log)}"
                )
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the server to stop, SIGKILL its process group after STOP_TIMEOUT, remove its directory."""
        _running.discard(self)
        process = self.process
        if process is not None:
            if process.poll() is None:
                try:
                    process.send_signal(signum)
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            try:  # whatever is left of it (worker processes, or the server itself after the timeout)
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


_running: set[_Server] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Servers whose fixture finalizer did not run (an interrupted session)."""
    for server in list(_running):
        server.stop(signal.SIGKILL)


def _serve(system: str, launch: Callable[[_Server], DbServer], stop_signal: int) -> Iterator[DbServer]:
    server = _Server(system)
    try:
        yield launch(server)
    finally:
        server.stop(stop_signal)


def _connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=1.0)


@contextlib.contextmanager
def running(system: str) -> Iterator[DbServer]:
    """A server started for the ``with`` block, outside pytest (benchmarks):
    ``"postgresql"``, ``"mariadb"``, ``"redis"``, ``"redis-cluster"`` or ``"rabbitmq"``."""
    launchers = {
        "postgresql": (_launch_postgres, signal.SIGINT),
        "mariadb": (_launch_mariadb, signal.SIGTERM),
        "redis": (_launch_redis, signal.SIGTERM),
        "redis-cluster": (_launch_redis_cluster, signal.SIGTERM),
        "rabbitmq": (_launch_rabbitmq, signal.SIGTERM),
    }
    launch, stop_signal = launchers[system]
    yield from _serve(system, launch, stop_signal)


# --- PostgreSQL ------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<version>/bin)."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.name))

    found = [p for p in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(p, "postgres"))]
    if found:
        return Path(max(found, key=version))
    on_path = shutil.which("postgres") or shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ServerStartError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): apt-get install postgresql")


def _launch_postgres(server: _Server) -> DbServer:
    bindir = postgres_bindir()
    password = secrets.token_hex(12)
    data = server.directory / "data"
    pwfile = server.write("pwfile", password + "\n")
    server.setup(
        [
            str(bindir / "initdb"),
            "--pgdata", str(data),
            "--username", USER,
            "--pwfile", str(pwfile),
            "--auth-host", "scram-sha-256",  # TCP logins need the password
            "--auth-local", "trust",  # the fixture's own set-up, over the socket in its directory
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
            "--no-instructions",
        ]
    )
    pwfile.unlink()
    port = free_port()
    settings = {
        "listen_addresses": HOST,
        "port": str(port),
        "unix_socket_directories": str(server.directory),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "32MB",
        "logging_collector": "off",
        "log_min_messages": "warning",
    }
    args = [str(bindir / "postgres"), "-D", str(data)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]

    def ready() -> bool:
        check = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-t", "1"],
            env=server.env,
            timeout=5,
        )
        return check.returncode == 0

    # SIGQUIT (immediate shutdown) if the test process dies: its clients are gone anyway
    server.start(args, "QUIT", ready)
    server.setup(
        [
            str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(server.directory), "-p", str(port), "-U", USER, "-d", "postgres",
            "-c", f"CREATE DATABASE {DATABASE} OWNER {USER}",
        ]
    )
    return DbServer("postgresql", HOST, port, USER, password, DATABASE)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[DbServer]:
    """A PostgreSQL server for the session; ``user`` (a superuser, password login) owns ``database``."""
    # SIGINT: fast shutdown (disconnects clients a test left open, unlike SIGTERM's smart one)
    yield from _serve("postgresql", _launch_postgres, signal.SIGINT)


# --- MariaDB ---------------------------------------------------------------------------


def _mariadb_binaries() -> tuple[str, str]:
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    daemon = shutil.which("mariadbd") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if os.path.exists(p)), None
    )
    if not install or not daemon:
        raise ServerStartError("MariaDB is not installed (mariadb-install-db, mariadbd): apt-get install mariadb-server")
    return install, daemon


def _launch_mariadb(server: _Server) -> DbServer:
    install, daemon = _mariadb_binaries()
    password = secrets.token_hex(12)
    data = server.directory / "data"
    socket_path = server.directory / "mysqld.sock"
    server.setup(
        [
            install,
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
        ]
    )
    # Run at startup, before the server takes connections: the tests' user and database.
    init = server.write(
        "init.sql",
        f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4;\n"
        f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{password}';\n"
        f"CREATE USER IF NOT EXISTS '{USER}'@'localhost' IDENTIFIED BY '{password}';\n"
        f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;\n"
        f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'localhost' WITH GRANT OPTION;\n",
    )
    port = free_port()
    args = [
        daemon,
        "--no-defaults",
        f"--datadir={data}",
        f"--socket={socket_path}",
        f"--pid-file={server.directory / 'mariadbd.pid'}",
        f"--tmpdir={server.directory}",
        f"--port={port}",
        f"--bind-address={HOST}",
        f"--init-file={init}",
        "--skip-name-resolve",
        "--skip-log-bin",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
        "--innodb-buffer-pool-size=16M",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
        "--innodb-flush-method=nosync",
        "--performance-schema=OFF",
        "--max-connections=200",
        "--skip-external-locking",
    ]

    def ready() -> bool:
        with _connect(port) as sock:  # the server greets first: protocol version 10
            greeting = sock.recv(5)
        return len(greeting) == 5 and greeting[4] == 10

    server.start(args, "TERM", ready)
    return DbServer("mariadb", HOST, port, USER, password, DATABASE)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[DbServer]:
    """A MariaDB server for the session; ``user`` (all privileges, password login) and ``database``."""
    yield from _serve("mariadb", _launch_mariadb, signal.SIGTERM)


# --- Redis -----------------------------------------------------------------------------


def _redis_args(server: _Server, port: int, *extra: str) -> list[str]:
    """redis-server on loopback ``port``, in the server's directory, persisting nothing, in the foreground."""
    binary = shutil.which("redis-server")
    if not binary:
        raise ServerStartError("Redis is not installed (redis-server): apt-get install redis-server")
    return [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(server.directory),
        *extra,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", "",
    ]


def _launch_redis(server: _Server) -> DbServer:
    port = free_port()
    args = _redis_args(server, port, "--unixsocket", str(server.directory / "redis.sock"), "--unixsocketperm", "700")

    def ready() -> bool:
        with _connect(port) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    server.start(args, "TERM", ready)
    return DbServer("redis", HOST, port, None, None, "0")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[DbServer]:
    """A Redis server for the session (no password); tests use database 0 and their own keys."""
    yield from _serve("redis", _launch_redis, signal.SIGTERM)


def _command(port: int, *words: str) -> bytes:
    """One inline command's reply (the first read), for set-up without a client library."""
    with _connect(port) as sock:
        sock.sendall(" ".join(words).encode() + b"\r\n")
        return sock.recv(4096)


def _launch_redis_cluster(server: _Server) -> DbServer:
    port = free_port()
    args = _redis_args(server, port, "--cluster-enabled", "yes", "--cluster-config-file", str(server.directory / "nodes.conf"))

    def ready() -> bool:
        return _command(port, "PING").startswith(b"+PONG")

    server.start(args, "TERM", ready)
    reply = _command(port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")  # Redis 7+
    if not reply.startswith(b"+OK"):
        raise ServerStartError(f"redis cluster test server: CLUSTER ADDSLOTSRANGE answered {reply!r}")
    deadline = time.monotonic() + START_TIMEOUT
    while b"cluster_state:ok" not in _command(port, "CLUSTER", "INFO"):
        if time.monotonic() > deadline:
            raise ServerStartError(f"redis cluster test server: state not ok within {START_TIMEOUT:.0f} s")
        time.sleep(0.05)
    return DbServer("redis", HOST, port, None, None, "0")


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[DbServer]:
    """A one-node Redis Cluster (all 16384 slots on one server in cluster mode), for cluster clients."""
    yield from _serve("redis-cluster", _launch_redis_cluster, signal.SIGTERM)


# --- RabbitMQ --------------------------------------------------------------------------

RABBITMQ_START_TIMEOUT = 90.0  # the Erlang VM and the broker take 10 to 20 s on a quiet machine


def _launch_rabbitmq(server: _Server) -> DbServer:
    """A RabbitMQ node of its own: its AMQP, distribution and epmd ports free loopback ones,
    its data, logs and Erlang cookie in the server's directory, no plugins.

    Its own ``epmd`` (the Erlang port mapper) runs in the server's process group on a port
    of its own, so it is stopped with the node (the broker's would daemonize and stay).
    """
    binary = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # not /usr/sbin's wrapper, which wants root
    epmd = shutil.which("epmd") or next(iter(glob.glob("/usr/lib/erlang/erts-*/bin/epmd")), None)
    if not os.path.exists(binary) or epmd is None:
        raise ServerStartError("RabbitMQ is not installed (rabbitmq-server, erlang): apt-get install rabbitmq-server")
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    directory = server.directory
    server.write("rabbitmq.conf", f"listeners.tcp.default = {HOST}:{port}\nloopback_users = none\n")
    server.write("enabled_plugins", "[].\n")
    server.env.update(
        {
            "RABBITMQ_NODENAME": f"autotrace-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        }
    )
    shell = f'"{epmd}" -port {epmd_port} -address {HOST} & exec "{binary}"'

    def ready() -> bool:
        with _connect(port) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")  # AMQP 0-9-1: the broker answers Connection.Start
            return sock.recv(8)[:1] == b"\x01"

    server.start(["/bin/sh", "-c", shell], "TERM", ready, timeout=RABBITMQ_START_TIMEOUT)
    return DbServer("rabbitmq", HOST, port, "guest", "guest", "/")


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[DbServer]:
    """A RabbitMQ broker for the session (user guest, virtual host ``/``); tests use their own queues."""
    yield from _serve("rabbitmq", _launch_rabbitmq, signal.SIGTERM)


__all__ = [
    "DbServer", "ServerStartError", "mariadb_server", "postgres_server", "postgres_bindir", "rabbitmq_server",
    "redis_cluster_server", "redis_server", "running",
]
