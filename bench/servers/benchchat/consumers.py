"""The chat consumer for runws, written with django_rawws's public API only.

Each message is saved with the ORM, then sent to the room's group as an
event, so every member's consumer shapes its own copy (``chat_message``):
the same work as the Channels tutorial's consumer (``channels_consumers``),
where each member gets the event from the channel layer and sends it.
Anonymous clients are accepted: the scenario measures the ORM and the
fan-out, not authentication.
"""

from __future__ import annotations

from typing import Any

from django_rawws.consumers import JsonWebSocketConsumer
from django_rawws.groups import push

from .models import Message


class ChatConsumer(JsonWebSocketConsumer):
    def connect(self) -> None:
        self.room = self.kwargs["room"]
        self.group = f"chat.{self.room}"
        # Joined before the 101: a message sent once the client is open reaches it.
        self.join(self.group)
        self.accept()

    def receive_json(self, content: Any) -> None:
        message = content["message"]
        author = content.get("author", "")
        Message.objects.create(room=self.room, author=author, text=message)
        push(self.group, event={"type": "chat.message", "message": message, "author": author})

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send_json({"message": event["message"], "author": event["author"]})
