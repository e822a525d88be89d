"""The chat consumer for Channels, shaped as the Channels tutorial shapes it.

A synchronous ``WebsocketConsumer``: the room's group is joined and left
with ``async_to_sync`` around the channel layer, a message is sent to the
group with ``async_to_sync(self.channel_layer.group_send)``, and each
member's ``chat_message`` handler writes it to its socket. The one addition
to the tutorial is the ORM save before the group send, the same as
runws's consumer (``consumers``) does.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer

from .models import Message


class ChatConsumer(WebsocketConsumer):
    def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"chat_{self.room}"
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        self.accept()

    def disconnect(self, code: int) -> None:
        async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        content = json.loads(text_data or "{}")
        message = content["message"]
        author = content.get("author", "")
        Message.objects.create(room=self.room, author=author, text=message)
        async_to_sync(self.channel_layer.group_send)(
            self.group, {"type": "chat.message", "message": message, "author": author}
        )

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send(text_data=json.dumps({"message": event["message"], "author": event["author"]}))
