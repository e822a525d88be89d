"""The example's consumers, written with the public API only.

* ``RoomConsumer`` (``/ws/rooms/<slug>/``): the chat. JSON both ways, the ORM
  in every hook, an event send to the room that each member's consumer shapes
  for its reader, a catch-up from the database for a page back from a lost
  connection, and a presence list of who is online.
* ``EchoConsumer`` (``/ws/echo/``) and ``BroadcastConsumer`` (``/ws/broadcast/``):
  the smallest consumers there are, also used by the tests and benchmarks.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.shortcuts import get_object_or_404

from django_rawws.consumers import JsonWebSocketConsumer, WebSocketConsumer
from django_rawws.groups import push
from django_rawws.protocol.codes import CloseCode

from .models import Message, Room
from .text import clean_message_text

BROADCAST_GROUP = "broadcast"


class RoomConsumer(JsonWebSocketConsumer):
    """One member's connection to a chat room.

    The client sends ``{"type": "message", "text": "..."}``, and
    ``{"type": "history", "after": <id>}`` to reload what came after a
    message. It receives:

    * ``{"type": "history", "messages": [...], "truncated": bool}`` at
      connect and when asked: the messages after ``?after=<id>`` (what a
      reconnecting page missed, read from the database, so it survives a
      server restart), or the last ``CHAT_HISTORY`` without it, each as a
      live one below. ``truncated`` says more were missed than fit, so the
      page should reload;
    * ``{"type": "message", "id", "room", "author", "author_id", "text",
      "created", "mine"}`` for every message posted in the room, its own
      included. ``mine`` is this reader's own: the message reaches the room
      as an event, and each member's consumer shapes it for its reader;
    * ``{"type": "join" | "leave", "user": "..."}`` when another connection
      opens or closes on the room;
    * ``{"type": "rawws.presence", "group", "members" | "joined" | "left": [...]}``
      from the group backend: who is online, each entry ``{"conn", "user", "name"}``
      (one per connection: a user with two tabs is there twice);
    * ``{"type": "error", "error": "..."}`` for a message it refused.
    """

    # Anonymous handshakes are refused with 403 before connect() runs. The user
    # is loaded then, so every later self.user costs no query.
    login_required = True
    # A chat message is small: anything bigger closes the connection with 1009.
    max_message_size = 16 << 10

    room: Room | None = None

    def connect(self) -> None:
        self.room = get_object_or_404(Room, slug=self.kwargs["slug"])  # Http404: the handshake gets 404
        # Join before the 101, as `groups` would be joined: a message posted
        # from now on is delivered live. One posted before is in the history
        # read below; one in both is sent twice, and the page keeps it once (by id).
        # Announced in the room's presence list: once open, this connection gets
        # the list ("rawws.presence", members) and every change (joined / left).
        self.join(self.room.group, presence={"user": self.user.pk, "name": self.user.get_username()})
        self.accept()
        # The notice first: once this client reads its history, the others have been told.
        push(self.room.group, event={"type": "chat.join", "user": self.user.get_username()}, exclude=self)
        self.send_history(after=_parse_id(self.request.GET.get("after")))

    def disconnect(self, code: int) -> None:
        # The connection has already left its groups: the others get the notice.
        if self.room is not None and self.accepted:
            push(self.room.group, event={"type": "chat.leave", "user": self.user.get_username()})

    def receive_json(self, content: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "history":
            # The page lost live messages (a gap): what came after its last one, from the database.
            after = content.get("after")
            valid = isinstance(after, int) and not isinstance(after, bool) and 0 <= after < 1 << 63
            self.send_history(after=after if valid else None)
            return
        if not isinstance(content, dict) or content.get("type") != "message":
            self.send_json({"type": "error", "error": 'expected {"type": "message", "text": "..."}'})
            return
        try:
            text = clean_message_text(content.get("text"))
        except (TypeError, ValueError) as error:
            self.send_json({"type": "error", "error": str(error)})
            return
        assert self.room is not None
        message = Message.objects.create(room=self.room, author=self.user, text=text)
        # An event send: every member's consumer (chat_message below) shapes
        # what its reader sees. Inside a transaction (ATOMIC_REQUESTS) it
        # would wait for the commit, so nobody hears of a message that was
        # rolled back.
        push(self.room.group, event={"type": "chat.message", "message": message.as_json()})

    # ----------------------------------------------------------- group events

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send_json(self.shaped(event["message"]))

    def chat_join(self, event: dict[str, Any]) -> None:
        self.send_json({"type": "join", "user": event["user"]})

    def chat_leave(self, event: dict[str, Any]) -> None:
        self.send_json({"type": "leave", "user": event["user"]})

    # ---------------------------------------------------------------- helpers

    def send_history(self, after: int | None) -> None:
        assert self.room is not None
        limit = settings.CHAT_HISTORY
        messages = self.room.messages.select_related("author").order_by("-id")
        if after is not None:
            messages = messages.filter(id__gt=after)
        latest = list(messages[: limit + 1])
        truncated = after is not None and len(latest) > limit
        self.send_json(
            {
                "type": "history",
                "messages": [self.shaped(message.as_json()) for message in reversed(latest[:limit])],
                "truncated": truncated,
            }
        )

    def shaped(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as this member receives it, live or in history: marked when it is the reader's own."""
        return {"type": "message", **message, "mine": message["author_id"] == self.user.pk}


def _parse_id(value: str | None) -> int | None:
    """``?after=`` as a message id; anything else means "no resume point"."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


class EchoConsumer(WebSocketConsumer):
    """Send every message back as it came: text as text, binary as binary."""

    # Over the RAWWS["MAX_MESSAGE_SIZE"] default (1 MiB) for this route only;
    # a bigger message closes the connection with 1009.
    max_message_size = 16 << 20

    def receive(self, text=None, bytes=None):
        self.send(text=text, bytes=bytes)


class BroadcastConsumer(WebSocketConsumer):
    """Every text message goes to every client connected here, the sender included."""

    def connect(self):
        # Join before accepting: once the client reads the 101, it is a member
        # and receives whatever anyone sends next.
        self.join(BROADCAST_GROUP)
        self.accept()

    def receive(self, text=None, bytes=None):
        if text is None:
            self.close(CloseCode.UNSUPPORTED_DATA, "text messages only")
            return
        # A raw send: framed once, queued on every member, no consumer code runs.
        push(BROADCAST_GROUP, text)
