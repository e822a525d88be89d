"""What the connection reports after reading bytes: immutable event values."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Event", "TextMessage", "BinaryMessage", "Ping", "Pong", "CloseReceived", "ConnectionFailed"]


class Event:
    """Base class of the events returned by ``Connection.receive_data``. Don't subclass these."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class TextMessage(Event):
    """A complete text message, its UTF-8 already checked and decoded."""

    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage(Event):
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping(Event):
    """A ping; the pong answering it is already queued in ``data_to_send()``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong(Event):
    """A pong, for keepalive bookkeeping."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived(Event):
    """The peer's close frame: ``code`` is 1005 when it carried none.

    When the peer started the closing handshake, the answering close frame is
    already queued; the connection is then closed and ``close_expected()``
    tells who shuts TCP down.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """The peer broke the protocol: a close frame with ``code`` is queued.

    Always the last event of a connection; later input is discarded.
    ``error`` is the :class:`~django_rawws.exceptions.ProtocolError` behind it.
    """

    code: int
    reason: str
    error: Exception = field(compare=False)
