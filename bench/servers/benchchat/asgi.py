"""Daphne's application for the chat-orm scenario, wired as the Channels tutorial wires it.

WebSockets go through ``AllowedHostsOriginValidator`` and
``AuthMiddlewareStack`` to a ``URLRouter``; HTTP to Django's ASGI handler.
The Django application is built before the consumers are imported, so the
app registry is ready when they import the model.
"""

from __future__ import annotations

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import re_path

from .channels_consumers import ChatConsumer

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room>[-\w]+)/$", ChatConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
