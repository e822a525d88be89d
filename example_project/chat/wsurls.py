"""The WebSocket URLconf (``RAWWS["URLCONF"]``): Django's own ``path()`` with consumers."""

from django.urls import path

from .consumers import BroadcastConsumer, EchoConsumer, RoomConsumer

urlpatterns = [
    path("ws/rooms/<slug:slug>/", RoomConsumer.as_consumer(), name="room"),
    path("ws/echo/", EchoConsumer.as_consumer(), name="echo"),
    path("ws/broadcast/", BroadcastConsumer.as_consumer(), name="broadcast"),
]
