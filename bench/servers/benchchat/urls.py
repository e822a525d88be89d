"""No HTTP pages: the chat-orm scenario speaks WebSocket only."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
