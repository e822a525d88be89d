"""Settings of the Channels peer: a production-mode project with nothing but Channels.

``DEBUG`` off, hosts limited to the loopback the benchmark uses, no database,
and the channel layer Channels' documentation starts with: the in-memory one
with its defaults (``capacity`` 100 messages per channel, beyond which a group
send drops the message for that channel; ``expiry`` 60 s).
"""

from __future__ import annotations

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "channels_project.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

ASGI_APPLICATION = "channels_project.asgi.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
