"""runws's WebSocket routes for the chat-orm scenario."""

from __future__ import annotations

from django.urls import path

from .consumers import ChatConsumer

urlpatterns = [
    path("ws/chat/<slug:room>/", ChatConsumer, name="chat"),
]
