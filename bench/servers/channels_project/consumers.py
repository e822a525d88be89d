"""Synchronous consumers, as Channels' tutorial writes them: echo, and a group for the broadcast."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer

BROADCAST_GROUP = "broadcast"


class EchoConsumer(WebsocketConsumer):
    """Each message back as it came, text or binary."""

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.send(text_data=text_data, bytes_data=bytes_data)


class BroadcastConsumer(WebsocketConsumer):
    """Each text message to every connection in the group, the sender's included."""

    def connect(self) -> None:
        async_to_sync(self.channel_layer.group_add)(BROADCAST_GROUP, self.channel_name)
        self.accept()

    def disconnect(self, code: int) -> None:
        async_to_sync(self.channel_layer.group_discard)(BROADCAST_GROUP, self.channel_name)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            async_to_sync(self.channel_layer.group_send)(
                BROADCAST_GROUP, {"type": "chat.message", "text": text_data}
            )

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send(text_data=event["text"])
