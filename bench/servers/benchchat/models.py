"""The one table the chat-orm scenario writes to."""

from __future__ import annotations

from django.db import models


class Message(models.Model):
    """A chat message: a row per message sent, whatever the server."""

    room = models.CharField(max_length=50, db_index=True)
    author = models.CharField(max_length=50)
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.author} in {self.room}: {self.text[:20]}"
