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


def assert_listens_on_loopback_only_unprivileged(port: int) -> None:
    """The server listens on 127.0.0.1 only (not on every address, not on IPv6), and not as root
    when the tests run as root (the listening socket's owner, from /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:  # local address:port in hex (0100007F is 127.0.0.1), state 0A listening
        rows = [line.split() for line in table.readlines()[1:]]
    listening = [r for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
    assert [r[1] for r in listening] == ["0100007F:%04X" % port], listening
    with open("/proc/net/tcp6") as table:
        rows6 = [line.split() for line in table.readlines()[1:]]
    assert not [r for r in rows6 if r[3] == "0A" and int(r[1].split(":")[1], 16) == port]
    if os.geteuid() == 0:
        assert int(listening[0][7]) != 0, "the server runs as root"


def test_postgres_serves_queries_with_password_login(postgres_server: DbServer) -> None:
    import psycopg2

    assert postgres_server.system == "postgresql" and postgres_server.host == "127.0.0.1"
    assert_listens_on_loopback_only_unprivileged(postgres_server.port)
    table = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(postgres_server.url()) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), 1 + 1")
        assert cur.fetchone() == (postgres_server.user, postgres_server.database, 2)
        cur.execute(f"CREATE TABLE {table} (id int primary key, name text)")
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "one"))
        cur.execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
        assert cur.fetchone() == ("one",)
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(postgres_server.url().replace(postgres_server.password, "wrong"))


def test_mariadb_serves_queries_with_password_login(mariadb_server: DbServer) -> None:
    import pymysql

    assert mariadb_server.system == "mariadb"
    assert_listens_on_loopback_only_unprivileged(mariadb_server.port)
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
    assert_listens_on_loopback_only_unprivileged(redis_server.port)
    key = f"k:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_server.url())
    try:
        assert client.set(key, "v") is True
        assert client.get(key) == b"v"
    finally:
        client.delete(key)
        client.close()


def test_redis_cluster_serves_a_cluster_client(redis_cluster_server: DbServer) -> None:
    from redis.cluster import RedisCluster

    assert_listens_on_loopback_only_unprivileged(redis_cluster_server.port)
    key = f"k:{uuid.uuid4().hex}"
    client = RedisCluster(host=redis_cluster_server.host, port=redis_cluster_server.port)
    try:
        assert client.set(key, "v") is True
        assert client.get(key) == b"v"
        assert client.cluster_info()["cluster_state"] == "ok"
    finally:
        client.delete(key)
        client.close()
