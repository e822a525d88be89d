"""Start a chat-orm server: create its database if missing, migrate, then become the server.

``python chat_orm_launch.py SETTINGS PROGRAM [ARG...]``: with Django set up
on ``SETTINGS`` (a module of this directory), create the PostgreSQL database
``DATABASES["default"]`` names when it does not exist, apply the migrations,
close every connection, and ``exec`` ``PROGRAM``. The server keeps this
process's id, so the harness reads the server's ``/proc`` and stops it with
one signal, and the migration's memory and connections are gone before the
first client arrives.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_database(settings_dict: dict[str, str]) -> None:
    """``CREATE DATABASE`` the bench database unless it exists (from the maintenance database)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        dbname="postgres",
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        password=settings_dict["PASSWORD"],
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        name = settings_dict["NAME"]
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: chat_orm_launch.py SETTINGS PROGRAM [ARG...]")
    settings_module, *program = sys.argv[1:]
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    # For the server after exec (Daphne has no --pythonpath) as for this process.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(HERE))

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    ensure_database(settings.DATABASES["default"])
    call_command("migrate", interactive=False, verbosity=0)
    connections.close_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program[0], program)


if __name__ == "__main__":
    main()
