"""Measure the server's PostgreSQL connections while many WebSockets write.

Run by tests/test_handler.py in a subprocess (Django's DATABASES can't be
swapped inside the test process)::

    python -m tests.pg_bound --conn-max-age 60 --clients 500 --workers 4

It creates a scratch database, serves a consumer that inserts a row per
message, opens ``--clients`` WebSockets that each write once, samples
``pg_stat_activity`` for the server's connections throughout, and prints one
JSON line with the figures. It is also the urlconf it serves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from typing import Any

APPLICATION_NAME = "rawws-bound-test"
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("PGUSER", "postgres")}

urlpatterns: list[Any] = []


def configure(database: str, conn_max_age: int, workers: int) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="pg-bound-test",
        ALLOWED_HOSTS=["127.0.0.1"],
        USE_TZ=True,
        INSTALLED_APPS=["django_rawws"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": database,
                "HOST": PG["host"],
                "PORT": PG["port"],
                "USER": PG["user"],
                "CONN_MAX_AGE": conn_max_age,
                "OPTIONS": {"application_name": APPLICATION_NAME},
            }
        },
        RAWWS={"URLCONF": __name__, "WORKERS": workers, "SLOW_HANDLER_WARNING": None},
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.db import connection
    from django.urls import path

    from django_rawws.consumers import WebSocketConsumer

    class WriteConsumer(WebSocketConsumer):
        def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO hits (client) VALUES (%s)", [text])
            self.send(text="ok")

    urlpatterns.append(path("ws/write/", WriteConsumer))
    _count_client_side_connections()


class _OpenConnections:
    """Counts the PostgreSQL connections the process holds, as the driver opens and closes them."""

    lock = threading.Lock()
    open = 0
    max_open = 0
    opened = 0


def _count_client_side_connections() -> None:
    """Wrap the backend's connect and close: the exact figure, free of pg_stat_activity's lag.

    A backend whose client has just closed lingers in pg_stat_activity until
    its process exits, so with CONN_MAX_AGE=0 the view can briefly show one
    more backend than the server holds.
    """
    from django.db.backends.postgresql.base import DatabaseWrapper

    get_new_connection = DatabaseWrapper.get_new_connection
    close = DatabaseWrapper._close

    def counting_get_new_connection(self: Any, conn_params: Any) -> Any:
        connection = get_new_connection(self, conn_params)
        with _OpenConnections.lock:
            _OpenConnections.open += 1
            _OpenConnections.opened += 1
            _OpenConnections.max_open = max(_OpenConnections.max_open, _OpenConnections.open)
        return connection

    def counting_close(self: Any) -> None:
        was_open = self.connection is not None
        close(self)
        if was_open:
            with _OpenConnections.lock:
                _OpenConnections.open -= 1

    DatabaseWrapper.get_new_connection = counting_get_new_connection
    DatabaseWrapper._close = counting_close


class Sampler(threading.Thread):
    """Counts the server's backends in pg_stat_activity, as often as it can."""

    def __init__(self, database: str) -> None:
        super().__init__(name="pg-sampler", daemon=True)
        import psycopg

        self.conn = psycopg.connect(dbname=database, autocommit=True, **PG)
        self.database = database
        self.max_seen = 0
        self.samples = 0
        self.stop = threading.Event()

    def count(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (self.database, APPLICATION_NAME),
        ).fetchone()
        return int(row[0]) if row else 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.max_seen = max(self.max_seen, self.count())
            self.samples += 1

    def wait_for(self, expected: int, timeout: float = 10.0) -> int:
        """Poll until the count is ``expected`` (or the deadline); return the last count."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.count()
            if current == expected or time.monotonic() > deadline:
                return current
            self.stop.wait(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conn-max-age", type=int, default=60)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    import psycopg

    database = f"rawws_bound_{os.getpid()}"
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        with psycopg.connect(dbname=database, autocommit=True, **PG) as setup:
            setup.execute("CREATE TABLE hits (id serial PRIMARY KEY, client text NOT NULL)")
        print(json.dumps(run(database, args.conn_max_age, args.clients, args.workers)))
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **PG) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def run(database: str, conn_max_age: int, clients: int, workers: int) -> dict[str, Any]:
    configure(database, conn_max_age, workers)
    from websockets.sync.client import connect

    from django_rawws.conf import server_config
    from django_rawws.handler import DjangoApplication
    from django_rawws.server import Server

    sampler = Sampler(database)
    server = Server(
        DjangoApplication(), "127.0.0.1", 0, server_config(ping_interval=None, linger_timeout=0.2)
    )
    server.start()
    sampler.start()
    host, port = server.address
    sockets = []
    replies = 0
    stack = contextlib.ExitStack()
    try:
        for index in range(clients):
            ws = stack.enter_context(
                connect(f"ws://{host}:{port}/ws/write/", compression=None, open_timeout=10)
            )
            sockets.append(ws)
            ws.send(f"client-{index}")
        for ws in sockets:
            if ws.recv(timeout=30) == "ok":
                replies += 1
        # Every reply is sent from inside a handler; the connection hygiene
        # that follows it may still be running: poll with a deadline.
        idle_expected = 0 if conn_max_age == 0 else None
        idle_count = sampler.wait_for(idle_expected) if idle_expected is not None else sampler.count()
        opened_during_burst = _OpenConnections.opened
    finally:
        stack.close()
        clean = server.stop(grace=10)
    after_stop = sampler.wait_for(0)
    sampler.stop.set()
    sampler.join()
    rows = sampler.conn.execute("SELECT count(*) FROM hits").fetchone()[0]
    sampler.conn.close()
    return {
        "clients": clients,
        "workers": workers,
        "aliases": 1,
        "replies": replies,
        "rows": rows,
        "max_pg_stat_activity": sampler.max_seen,
        "max_open_client_side": _OpenConnections.max_open,
        "opened": opened_during_burst,
        "open_after_stop": _OpenConnections.open,
        "samples": sampler.samples,
        "idle_after_burst": idle_count,
        "after_stop": after_stop,
        "clean_stop": clean,
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
