"""Settings of the example project: a development setup that runs on SQLite alone.

``python manage.py migrate && python manage.py runws`` serves the whole site on
one port: the chat's pages (HTTP, through the WSGI application) and the
WebSocket routes of ``chat.wsurls``: ``/ws/rooms/<slug>/``, ``/ws/echo/`` and
``/ws/broadcast/``. See docs/chat-example.md.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Development only: never deploy with this key or with DEBUG on.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-project-only-for-local-use")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rawws",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        # Each server worker keeps its connection between handler calls, as a
        # request thread would; the health check catches one that went stale.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:room_list"
LOGOUT_REDIRECT_URL = "login"

# The demo users, created by ``migrate`` (chat/demo.py) and listed on the
# login page so the chat works at once. Set CHAT_DEMO_USERS = [] for a real site.
CHAT_DEMO_USERS = ["alice", "bob", "carol"]
CHAT_DEMO_PASSWORD = "rawws-demo"
# Messages a room page shows when it loads, and a reconnecting client catches up on.
CHAT_HISTORY = 50

RAWWS = {
    # The WebSocket routes; limits per route are consumer attributes (see
    # chat/consumers.py: the echo route takes messages up to 16 MiB).
    "URLCONF": "chat.wsurls",
}
