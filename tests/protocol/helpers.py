"""Hand-built frames and a feeder that tries every chunking: the oracle of the frame tests.

Frames are assembled here with ``struct`` and a per-byte XOR, never with
``django_rawws.protocol.frames`` or ``.masking``, so that a bug there cannot
hide in both the code under test and the bytes it is compared with.

``feed_all_ways`` runs the same input through fresh connections whole, one
byte at a time, in random chunk sizes and followed by trailing bytes; after
every chunk it checks the parser's memory bound. ``receive`` asserts that all
ways agree and returns one outcome; ``assert_failed`` checks everything a
failed connection owes the peer.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from django_rawws.exceptions import ProtocolError
from django_rawws.protocol.connection import MAX_UNPARSED_INPUT, Connection, Role, State
from django_rawws.protocol.events import ConnectionFailed, Event

__all__ = [
    "FIXED_MASK",
    "RFC_MASK",
    "RSV1",
    "RSV2",
    "RSV3",
    "Outcome",
    "assert_failed",
    "close_payload",
    "comparable",
    "feed_all_ways",
    "frame",
    "masked_frame",
    "receive",
    "unmasked_frame",
    "xor_mask",
]

#: The masking key the tests use unless a vector dictates another.
FIXED_MASK = b"\x01\x02\x03\x04"
#: The masking key of the RFC 6455 §5.7 examples.
RFC_MASK = b"\x37\xfa\x21\x3d"

#: Values of ``rsv``: the three reserved bits as one 3-bit number, RSV1 first.
RSV1 = 0b100
RSV2 = 0b010
RSV3 = 0b001

# Bytes fed to a connection that is never reached, to prove later input is ignored.
_PROBE_FRAME = {
    Role.SERVER: b"\x81\x82" + FIXED_MASK + bytes(b ^ k for b, k in zip(b"hi", FIXED_MASK)),
    Role.CLIENT: b"\x81\x02hi",
}


def xor_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Per-byte reference masking (§5.3): slow and obviously right."""
    return bytes(byte ^ mask[index & 3] for index, byte in enumerate(bytes(data)))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
    length_bits: int | None = None,
) -> bytes:
    """Return a frame built field by field (§5.2).

    ``length`` overrides the declared payload length (to build headers of
    frames whose payload is never sent); ``length_bits`` (7, 16 or 64) forces
    the length encoding, minimal or not.
    """
    declared = len(payload) if length is None else length
    if length_bits is None:
        length_bits = 7 if declared < 126 else 16 if declared < 65536 else 64
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length_bits == 7:
        header = struct.pack("!BB", first, mask_bit | declared)
    elif length_bits == 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    elif length_bits == 64:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    else:
        raise ValueError(f"length_bits is 7, 16 or 64, not {length_bits}")
    if mask is None:
        return header + payload
    return header + mask + xor_mask(payload, mask)


def masked_frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    mask: bytes = FIXED_MASK,
    **kwargs: Any,
) -> bytes:
    """A frame as a client sends it."""
    return frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, **kwargs)


def unmasked_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, **kwargs: Any) -> bytes:
    """A frame as a server sends it."""
    return frame(opcode, payload, fin=fin, rsv=rsv, mask=None, **kwargs)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame (§5.5.1): a 2-byte code, then the reason."""
    return struct.pack("!H", code) + reason


def comparable(events: Sequence[Event]) -> list[object]:
    """Events in a form that compares by value.

    ``ConnectionFailed.error`` is an exception, and exceptions compare by
    identity; its type and close code stand for it.
    """
    out: list[object] = []
    for event in events:
        if isinstance(event, ConnectionFailed):
            out.append(("ConnectionFailed", event.code, event.reason, type(event.error)))
        else:
            out.append(event)
    return out


class Outcome(NamedTuple):
    """What one way of feeding produced."""

    events: list[Event]
    #: Everything ``data_to_send()`` returned, concatenated.
    sent: bytes
    close_expected: bool
    state: State
    #: The largest ``buffered_bytes`` seen after a chunk.
    max_buffered: int
    conn: Connection

    def key(self) -> tuple[object, ...]:
        return (comparable(self.events), self.sent, self.close_expected, self.state)


def _incomplete_frame(role: Role) -> bytes:
    """The first bytes of a valid frame with a 16-bit length: never a whole header."""
    return b"\x82\xfe\x01" if role is Role.SERVER else b"\x82\x7e\x01"


def _feed(conn_factory: Callable[[], Connection], chunks: list[bytes]) -> Outcome:
    conn = conn_factory()
    bound = conn.max_message_size + MAX_UNPARSED_INPUT
    events: list[Event] = []
    sent = []
    max_buffered = 0
    for chunk in chunks:
        events += conn.receive_data(chunk)
        sent.append(conn.data_to_send())
        held = conn.buffered_bytes
        assert held <= bound, (
            f"parser holds {held} bytes, over max_message_size + MAX_UNPARSED_INPUT = {bound}"
        )
        max_buffered = max(max_buffered, held)
    return Outcome(events, b"".join(sent), conn.close_expected(), conn.state, max_buffered, conn)


def _random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Split ``data`` at random: half the chunks shorter than two headers, half up to a quarter of it."""
    chunks = []
    pos = 0
    large = max(1, len(data) // 4)
    while pos < len(data):
        size = rng.randint(1, 28) if rng.random() < 0.5 else rng.randint(1, large)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def feed_all_ways(
    conn_factory: Callable[[], Connection],
    data: bytes,
    *,
    trailing: bytes | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    bytewise_limit: int = 1 << 16,
) -> dict[str, Outcome]:
    """Feed ``data`` to fresh connections in every chunking; return each way's outcome.

    Ways: whole; one byte at a time (skipped above ``bytewise_limit`` bytes,
    for speed); random chunk sizes for each seed; followed by ``trailing``
    bytes in the same chunk and in a later one. ``trailing`` defaults to the
    start of a frame header that can never complete, so it must change
    nothing; pass ``b""`` when ``data`` stops inside a frame. The memory bound
    ``buffered_bytes <= max_message_size + MAX_UNPARSED_INPUT`` is asserted
    after every chunk of every way.
    """
    role = conn_factory().role
    if trailing is None:
        trailing = _incomplete_frame(role)
    ways: dict[str, list[bytes]] = {"whole": [data]}
    if len(data) <= bytewise_limit:
        ways["one byte at a time"] = [data[i : i + 1] for i in range(len(data))]
    for seed in seeds:
        ways[f"random chunks (seed {seed})"] = _random_chunks(data, random.Random(seed))
    if trailing:
        ways["trailing bytes in the same chunk"] = [data + trailing]
        ways["trailing bytes in a later chunk"] = [data, trailing]
    return {name: _feed(conn_factory, chunks) for name, chunks in ways.items()}


def receive(conn_factory: Callable[[], Connection], data: bytes, **kwargs: Any) -> Outcome:
    """Feed ``data`` all ways, assert they agree, and return the whole-input outcome."""
    outcomes = feed_all_ways(conn_factory, data, **kwargs)
    whole = outcomes["whole"]
    for name, outcome in outcomes.items():
        assert outcome.key() == whole.key(), f"feeding {name!r} differs from feeding whole"
    return whole


def assert_failed(outcome: Outcome, code: int, *, mask: bytes | None = None) -> ConnectionFailed:
    """Check what a connection failed with ``code`` owes the peer and return the failure event.

    The last event (and only that one) is ConnectionFailed with ``code``
    and its ProtocolError; the output ends with the close frame carrying
    that code and reason (masked with ``mask`` for the client role); the
    connection is CLOSED, expects TCP to close, and ignores later input.
    """
    *before, failed = outcome.events
    assert isinstance(failed, ConnectionFailed), f"expected ConnectionFailed, got {outcome.events!r}"
    assert not any(isinstance(event, ConnectionFailed) for event in before)
    assert failed.code == code
    assert isinstance(failed.error, ProtocolError)
    assert failed.error.close_code == code
    reason = failed.reason.encode("utf-8")
    assert len(reason) <= 123
    expected_close = frame(0x8, close_payload(code, reason), mask=mask)
    assert outcome.sent.endswith(expected_close), f"{outcome.sent!r} doesn't end with {expected_close!r}"
    conn = outcome.conn
    assert conn.state is State.CLOSED
    assert conn.close_expected()
    assert conn.close_code_sent == code
    assert conn.failure is failed.error
    assert conn.receive_data(_PROBE_FRAME[conn.role]) == []
    assert conn.receive_data(b"\x89\x00\x88\x00") == []
    assert conn.data_to_send() == b""
    assert conn.buffered_bytes == 0
    return failed
