"""The database fixtures serve real queries, with real logins, on loopback (see tests/dbservers.py)."""

from __future__ import annotations

import os
import uuid

import pytest

from dbservers import DbServer


def test_url_quotes_credentials() -> None:
    server = DbServer("postgresql", "127.0.0.1", 5432, "us er", "p@ss:/", "db")
    assert server.url() == "postgresql://us%20er:p%40ss%3A%2F@127.0.0.1:5432/db"
    assert server.url("postgresql+psycopg").startswith("postgresql+psycopg://")
    assert DbServer("mariadb", "127.0.0.1", 3306, "u", "p", "d").url() == "mysql://u:p@127.0.0.1:3306/d"
    assert DbServer("redis", "127.0.0.1", 6379, None, None, "0").url() == "redis://127.0.0.1:6379/0"


def _server_user(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


def _listening_pids(port: int) -> None:
    """The server listens on 127.0.0.1 only (not on every address)."""
    # /proc/net/tcp lists local address:port in hex; 0100007F is 127.0.0.1
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
    assert listening == ["0100007F:%04X" % port], listening
    with open("/proc/net/tcp6") as table:
        rows6 = [line.split() for line in table.readlines()[1:]]
    assert not [r for r in rows6 if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]


def test_postgres_serves_queries_with_password_login(postgres_server: DbServer) -> None:
    import psycopg2

    assert postgres_server.system == "postgresql" and postgres_server.host == "127.0.0.1"
    _listening_pids(postgres_server.port)
    table = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(postgres_server.url()) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), 1 + 1")
        assert cur.fetchone() == (postgres_server.user, postgres_server.database, 2)
        cur.execute(f"CREATE TABLE {table} (id int primary key, name text)")
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "one"))
        cur.execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
        assert cur.fetchone() == ("one",)
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]
    conn.close()
    if os.geteuid() == 0:
        assert _server_user(backend) != 0, "the PostgreSQL server runs as root"
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(postgres_server.url().replace(postgres_server.password, "wrong"))


def test_mariadb_serves_queries_with_password_login(mariadb_server: DbServer) -> None:
    import pymysql

    assert mariadb_server.system == "mariadb"
    _listening_pids(mariadb_server.port)
    table = f"t_{uuid.uuid4().hex[:12]}"
    conn = pymysql.connect(
        host=mariadb_server.host,
        port=mariadb_server.port,
        user=mariadb_server.user,
        password=mariadb_server.password,
        database=mariadb_server.database,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), DATABASE()")
            version, database = cur.fetchone()
            assert "MariaDB" in version and database == mariadb_server.database
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))")
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "one"))
            cur.execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
            assert cur.fetchone() == ("one",)
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError) as denied:
        pymysql.connect(
            host=mariadb_server.host, port=mariadb_server.port, user=mariadb_server.user, password="wrong"
        )
    assert denied.value.args[0] == 1045  # access denied: the grant tables are in force


def test_redis_serves_commands(redis_server: DbServer) -> None:
    import redis

    assert redis_server.system == "redis" and redis_server.database == "0"
    _listening_pids(redis_server.port)
    key = f"k:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_server.url())
    try:
        assert client.set(key, "v") is True
        assert client.get(key) == b"v"
        if os.geteuid() == 0:
            assert _server_user(client.info("server")["process_id"]) != 0, "the Redis server runs as root"
    finally:
        client.delete(key)
        client.close()
