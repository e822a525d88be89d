"""The chat's data: rooms, and the messages posted in them."""

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

#: Longest message a member may post, in characters (after stripping).
MAX_MESSAGE_LENGTH = 2000


class Room(models.Model):
    """A chat room; its WebSocket members form the group ``room.<slug>``."""

    # ASCII only (allow_unicode=False): the slug is part of a group name,
    # whose alphabet is ASCII letters, digits, "-", "_", "." and ":".
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100, unique=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("chat:room", kwargs={"slug": self.slug})

    @property
    def group(self) -> str:
        """The group every WebSocket open on this room is in."""
        return f"room.{self.slug}"

    def latest_messages(self, count: int) -> list["Message"]:
        """The last ``count`` messages, oldest first, with their authors (one query)."""
        latest = self.messages.select_related("author").order_by("-id")[:count]
        return list(reversed(latest))


class Message(models.Model):
    """One message; ids only grow, so "the messages after id N" is a resume point."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages"
    )
    text = models.TextField(max_length=MAX_MESSAGE_LENGTH)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("id",)
        indexes = (models.Index(fields=["room", "id"], name="chat_message_room_id"),)

    def __str__(self) -> str:
        return f"{self.author} in {self.room}: {self.text[:40]}"

    def as_json(self) -> dict:
        """What a client receives about this message, live and in history.

        The same for every member; the consumer adds what depends on the
        reader (``mine``).
        """
        return {
            "id": self.id,
            "room": self.room.slug,
            "author": self.author.get_username(),
            "author_id": self.author_id,
            "text": self.text,
            "created": self.created.isoformat(),
        }
