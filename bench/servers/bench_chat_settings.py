"""Django settings of the chat-orm scenario for ``runws`` (the Channels side imports them).

``bench/run.py`` runs ``python -m django migrate`` and then ``runws`` with
these settings (``--pythonpath=bench/servers``). Production-like: DEBUG off,
PostgreSQL with persistent connections (``CONN_MAX_AGE = 60``), django_rawws's
defaults except the WebSocket urlconf. The database, ``rawws_bench`` by
default, is created by the harness; the ``RAWWS_BENCH_PG_*`` variables
point both servers and the harness elsewhere.
"""

from __future__ import annotations

import os

SECRET_KEY = "rawws-bench-chat-orm-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_rawws",
    "benchchat",
]
ROOT_URLCONF = "benchchat.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("RAWWS_BENCH_PG_DB", "rawws_bench"),
        "USER": os.environ.get("RAWWS_BENCH_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("RAWWS_BENCH_PG_PASSWORD", ""),
        "HOST": os.environ.get("RAWWS_BENCH_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("RAWWS_BENCH_PG_PORT", "5432"),
        # Each thread keeps its connection between handler calls, on both servers.
        "CONN_MAX_AGE": 60,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

RAWWS = {"URLCONF": "benchchat.wsurls"}
# rawws.W002 warns about the in-memory group backend with DEBUG off: one
# process serves every client here, which is what that backend is for.
SILENCED_SYSTEM_CHECKS = ["rawws.W002"]
