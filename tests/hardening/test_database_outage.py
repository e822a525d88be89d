"""The database goes away during a ``receive()``: 1011, logged, and service resumes when it returns.

The shared PostgreSQL is never stopped: the server (a subprocess, see
pg_fault_server.py) reaches it through a TCP proxy this test controls.
Cutting the proxy drops every connection through it, so PostgreSQL ends
those backends as it would after a network failure, and refuses new ones
until it is restored. Both workers hold a persistent connection
(``CONN_MAX_AGE = 60``) when the cut happens: after the outage, one of them
starts from a connection that died unnoticed, which ``CONN_HEALTH_CHECKS``
and the ``close_old_connections()`` around each call must replace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from tests.conftest import skip_or_fail_without_service
from tests.redis_proxy import RedisProxy as TcpProxy  # a plain TCP proxy with a switch, whatever the service

ROOT = Path(__file__).resolve().parents[2]
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("PGUSER", "postgres")}
TIMEOUT = 10.0


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch database with the ``notes`` table, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=2, **PG)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable server
        skip_or_fail_without_service(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc})")
    name = f"rawws_outage_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with psycopg.connect(dbname=name, autocommit=True, **PG) as setup:
                setup.execute("CREATE TABLE notes (id serial PRIMARY KEY, text text NOT NULL)")
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def note_texts(name: str) -> list[str]:
    import psycopg

    with psycopg.connect(dbname=name, autocommit=True, **PG) as conn:
        return [row[0] for row in conn.execute("SELECT text FROM notes ORDER BY id").fetchall()]


def on_both_workers(url: str, first: str, second: str) -> None:
    """Write two rows, the second while the first worker is held: one per worker."""
    with connect(url) as one, connect(url) as two:
        one.send(f"hold {first}")
        assert one.recv(TIMEOUT).startswith("ok ")  # sent before the hold: worker 1 is busy now
        two.send(second)
        assert two.recv(TIMEOUT).startswith("ok ")


def test_database_outage_during_receive_gives_1011_logged_and_service_resumes(database: str) -> None:
    with TcpProxy(target=(PG["host"], PG["port"])) as proxy:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.hardening.pg_fault_server",
                "--database",
                database,
                "--port",
                str(proxy.port),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = int(process.stdout.readline())  # type: ignore[union-attr]
            url = f"ws://127.0.0.1:{port}/ws/notes/"
            on_both_workers(url, "a", "b")
            assert proxy.accepted == 2  # one persistent connection per worker

            proxy.cut()
            codes = []
            for text in ("c", "d"):  # every receive during the outage fails alone
                with connect(url) as ws:
                    ws.send(text)
                    with pytest.raises(ConnectionClosedError) as info:
                        ws.recv(TIMEOUT)
                    codes.append(info.value.rcvd.code if info.value.rcvd is not None else None)
            assert codes == [1011, 1011]

            proxy.restore()
            on_both_workers(url, "e", "f")
            on_both_workers(url, "g", "h")
        finally:
            try:
                _, stderr = process.communicate(input="", timeout=30)  # EOF on stdin: stop
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert note_texts(database) == ["hold a", "b", "hold e", "f", "hold g", "h"]
    assert stderr.count("NoteConsumer.receive() (/ws/notes/)") == 2, stderr
    assert "OperationalError" in stderr
