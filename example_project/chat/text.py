"""Checking what a member posts, shared by the WebSocket consumer and anything else that posts."""

from __future__ import annotations

import re

from .models import MAX_MESSAGE_LENGTH

# C0 controls other than tab and newline, DEL, and C1 controls: invisible,
# and some (NUL) refused by databases other than SQLite.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_message_text(value: object) -> str:
    """The text to store: a string, stripped, control characters removed, newlines as ``\\n``.

    Raises:
        TypeError: not a string.
        ValueError: empty once stripped, or longer than ``MAX_MESSAGE_LENGTH``
            characters; the message says which.
    """
    if not isinstance(value, str):
        raise TypeError("a message needs a text")
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise ValueError("a message can't be empty")
    if len(text) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"a message is at most {MAX_MESSAGE_LENGTH} characters (this one has {len(text)})")
    return text
