"""The WebSocket URLconf (``RAWWS["URLCONF"]``): Django's own ``path()`` with consumers."""

from django.urls import path

from .consumers import BroadcastConsumer, EchoConsumer

urlpatterns = [
    path("ws/echo/", EchoConsumer.as_consumer(), name="echo"),
    path("ws/broadcast/", BroadcastConsumer.as_consumer(), name="broadcast"),
]
