"""A PostgreSQL-backed WebSocket server for the database-outage test, run in a subprocess.

Django's DATABASES can't be swapped inside the test process, so
tests/hardening/test_database_outage.py runs this module::

    python -m tests.hardening.pg_fault_server --database NAME --port PROXY_PORT

It serves ``/ws/notes/`` (each text message becomes a row; the reply is
``ok <id>``; ``hold <text>`` also keeps the worker for half a second after
its insert, so that the next message goes to the other worker) with two
workers, prints its port, and stops when its stdin closes. The database is
reached through the test's TCP proxy at ``PROXY_PORT``, with persistent
connections and health checks as a production site would have them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

urlpatterns: list[Any] = []


def configure(database: str, port: int) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="pg-fault-test",
        ALLOWED_HOSTS=["127.0.0.1"],
        USE_TZ=True,
        INSTALLED_APPS=["django_rawws"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": database,
                "HOST": "127.0.0.1",
                "PORT": port,
                "USER": os.environ.get("PGUSER", "postgres"),
                "CONN_MAX_AGE": 60,
                "CONN_HEALTH_CHECKS": True,
                "OPTIONS": {"connect_timeout": 2},
            }
        },
        RAWWS={"URLCONF": __name__, "WORKERS": 2, "SLOW_HANDLER_WARNING": None, "ACCESS_LOG": False},
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.db import connection
    from django.urls import path

    from django_rawws.consumers import WebSocketConsumer

    class NoteConsumer(WebSocketConsumer):
        def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO notes (text) VALUES (%s) RETURNING id", [text])
                (ident,) = cursor.fetchone()
            self.send(text=f"ok {ident}")
            if text is not None and text.startswith("hold"):
                time.sleep(0.5)  # keep this worker: the next message goes to the other one

    urlpatterns.append(path("ws/notes/", NoteConsumer))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    configure(args.database, args.port)

    from django_rawws.conf import server_config
    from django_rawws.handler import DjangoApplication
    from django_rawws.server import Server

    server = Server(
        DjangoApplication(), "127.0.0.1", 0, server_config(ping_interval=None, linger_timeout=0.2)
    )
    server.start()
    print(server.address[1], flush=True)
    sys.stdin.read()  # until the test closes our stdin
    clean = server.stop(grace=5)
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
