"""Django settings of the chat-orm scenario for Channels on Daphne.

Those of ``bench_chat_settings`` (same model, database, ``CONN_MAX_AGE``),
with Channels in place of django_rawws: Daphne serves
``benchchat.asgi:application`` and groups live in the in-memory channel
layer, as in the Channels tutorial (one process, so nothing crosses it).
"""

from __future__ import annotations

from bench_chat_settings import *

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "benchchat",
]
ASGI_APPLICATION = "benchchat.asgi.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
