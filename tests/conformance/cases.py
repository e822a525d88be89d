"""Autobahn-style conformance cases as data, and the driver that runs them over any transport.

A :class:`Case` says what a client does — frames built here by hand, written
whole or chopped into many writes — and what an *echo server* must visibly do
in return: the messages it echoes and the pongs it answers, in order, and how
the connection ends (the code of the server's close frame, and after which
client action) or that it stays open and responsive.

Nothing in a case depends on how the server is reached. :func:`run_case`
drives a :class:`Transport`; :class:`SansIOTransport` is the in-memory one, an
echo application on ``Connection(Role.SERVER)``. A socket transport plugs in
the same way.

Categories follow the Autobahn testsuite's (1 framing, 2 ping/pong, 3 reserved
bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close, 9 limits, 12-13
permessage-deflate); the cases themselves are written from RFC 6455 and
RFC 7692.

**Barriers.** After every action the driver sends a ping with the payload
``barrier <n>`` and reads until its pong arrives or the server closes. So
whatever the server does in answer to an action is seen before the next
action is written, however TCP cuts the segments, and ``Outcome.closed_after``
can say exactly which action made the server close (the fail-fast rules of
categories 6 and 9 depend on it). Barrier pongs are not part of the outcome.
Hence one rule for case authors: an action ends on a frame boundary (to split
a frame across writes, use ``chunk`` within one action). Once the server has
closed, the remaining actions are not sent.

**Independence.** Frames are assembled field by field and masked with a
big-integer XOR, never with ``django_rawws.protocol.frames`` or ``.masking``,
so that a bug there cannot hide in both the server and the bytes it is tested
with. The test client that parses the server's answers is our own
``Connection(Role.CLIENT)``; compressed messages are made by the client half
of ``PerMessageDeflate``, which is tested on its own in test_deflate.
"""

from __future__ import annotations

import functools
import hashlib
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from django_rawws.exceptions import ConnectionClosed
from django_rawws.protocol import deflate, handshake
from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Role
from django_rawws.protocol.deflate import DeflateOptions, DeflateParams, PerMessageDeflate
from django_rawws.protocol.events import (
    BinaryMessage,
    CloseReceived,
    ConnectionFailed,
    Ping,
    Pong,
    TextMessage,
)

__all__ = [
    "CASES",
    "CASES_BY_ID",
    "CATEGORIES",
    "RSV1",
    "RSV2",
    "RSV3",
    "Action",
    "Case",
    "Frame",
    "Msg",
    "Outcome",
    "SansIOTransport",
    "Send",
    "SendMessage",
    "Transport",
    "client_params",
    "run_case",
]

#: Values of ``Frame.rsv``: the three reserved bits as one 3-bit number, RSV1 first.
RSV1 = 0b100
RSV2 = 0b010
RSV3 = 0b001

KIB = 1024
MIB = 1024 * 1024

# What the test client accepts from the server: more than any echo here.
_CLIENT_MAX_MESSAGE_SIZE = 64 * MIB


# --------------------------------------------------------------------- frames


def _xor(payload: bytes, key: bytes) -> bytes:
    """Mask ``payload`` with ``key`` (§5.3) as one big-endian integer XOR."""
    size = len(payload)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def _short(data: str | bytes) -> str:
    """A repr that stays readable for multi-megabyte payloads."""
    if len(data) <= 40:
        return repr(data)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    unit = "chars" if isinstance(data, str) else "bytes"
    return f"{data[:12]!r}...<{len(data)} {unit}, sha256 {hashlib.sha256(raw).hexdigest()[:12]}>"


@dataclass(frozen=True, repr=False)
class Frame:
    """One frame as the client puts it on the wire (§5.2), any field settable, even wrongly.

    ``mask`` None takes the next key of the driver's seeded generator;
    ``length_bits`` (7, 16 or 64) forces the length encoding, minimal or not;
    ``declared_length`` makes the header announce a length other than the
    payload's (to send a header whose payload never comes).
    """

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    mask: bytes | None = None
    length_bits: int | None = None
    declared_length: int | None = None

    def to_bytes(self, key: bytes) -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        length = len(self.payload) if self.declared_length is None else self.declared_length
        bits = self.length_bits or (7 if length < 126 else 16 if length < 65536 else 64)
        mask_bit = 0x80 if self.masked else 0
        if bits == 7:
            header = bytes((first, mask_bit | length))
        elif bits == 16:
            header = bytes((first, mask_bit | 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((first, mask_bit | 127)) + length.to_bytes(8, "big")
        if not self.masked:
            return header + self.payload
        if self.mask is not None:
            key = self.mask
        return header + key + _xor(self.payload, key)

    def __repr__(self) -> str:
        flags = f"{'' if self.fin else ' fin=0'}{f' rsv={self.rsv:03b}' if self.rsv else ''}"
        return f"Frame(op={self.opcode}{flags} {_short(self.payload)})"


def _utf8(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def text_frame(payload: str | bytes = b"", **fields: object) -> Frame:
    return Frame(Opcode.TEXT, _utf8(payload), **fields)  # type: ignore[arg-type]


def binary_frame(payload: bytes = b"", **fields: object) -> Frame:
    return Frame(Opcode.BINARY, payload, **fields)  # type: ignore[arg-type]


def cont_frame(payload: str | bytes = b"", **fields: object) -> Frame:
    return Frame(Opcode.CONTINUATION, _utf8(payload), **fields)  # type: ignore[arg-type]


def ping_frame(payload: bytes = b"", **fields: object) -> Frame:
    return Frame(Opcode.PING, payload, **fields)  # type: ignore[arg-type]


def pong_frame(payload: bytes = b"", **fields: object) -> Frame:
    return Frame(Opcode.PONG, payload, **fields)  # type: ignore[arg-type]


def close_frame(code: int | None = 1000, reason: str | bytes = b"", **fields: object) -> Frame:
    """A close frame; ``code`` None sends an empty payload (§5.5.1)."""
    payload = b"" if code is None else code.to_bytes(2, "big") + _utf8(reason)
    return Frame(Opcode.CLOSE, payload, **fields)  # type: ignore[arg-type]


# -------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Send:
    """Write these frames (or literal bytes) back to back: in one write, or in writes of ``chunk`` bytes."""

    parts: tuple[Frame | bytes, ...]
    chunk: int | None = None

    def frames(self, codec: PerMessageDeflate | None) -> Sequence[Frame | bytes]:
        return self.parts


@dataclass(frozen=True, repr=False)
class SendMessage:
    """Send one message as a client would: split into frames of ``fragment`` bytes.

    With ``compress`` the payload goes through the client's compressor when
    permessage-deflate was agreed (RSV1 on the first frame only, unless
    ``rsv1_on_continuation`` breaks that rule); when it wasn't, the message
    goes out uncompressed, as a real client would send it.
    """

    opcode: int
    payload: bytes
    fragment: int | None = None
    chunk: int | None = None
    compress: bool = False
    rsv1_on_continuation: bool = False

    def frames(self, codec: PerMessageDeflate | None) -> Sequence[Frame | bytes]:
        data, rsv = self.payload, 0
        if self.compress and codec is not None:
            data, rsv = codec.compress(data), RSV1
        size = self.fragment or max(len(data), 1)
        pieces = [data[start : start + size] for start in range(0, len(data), size)] or [b""]
        last = len(pieces) - 1
        return [
            Frame(
                self.opcode if index == 0 else Opcode.CONTINUATION,
                piece,
                fin=index == last,
                rsv=rsv if index == 0 or self.rsv1_on_continuation else 0,
            )
            for index, piece in enumerate(pieces)
        ]

    def __repr__(self) -> str:
        options = "".join(
            f" {name}={value}"
            for name, value in (("fragment", self.fragment), ("chunk", self.chunk))
            if value is not None
        )
        flags = (" compress" if self.compress else "") + (
            " rsv1-on-continuation" if self.rsv1_on_continuation else ""
        )
        return f"SendMessage(op={self.opcode} {_short(self.payload)}{options}{flags})"


Action = Send | SendMessage


def send(*parts: Frame | bytes, chunk: int | None = None) -> Send:
    return Send(parts, chunk)


def text_message(payload: str | bytes, **options: object) -> SendMessage:
    return SendMessage(Opcode.TEXT, _utf8(payload), **options)  # type: ignore[arg-type]


def binary_message(payload: bytes, **options: object) -> SendMessage:
    return SendMessage(Opcode.BINARY, payload, **options)  # type: ignore[arg-type]


#: The client's normal closure, the last action of most cases.
CLOSE = send(close_frame(1000))


# ---------------------------------------------------------------- expectations


class Msg:
    """One thing the client received: an echoed message, a pong, or something unexpected.

    ``kind`` is "text", "binary", "pong", "ping" or "invalid" (the client
    failed to parse what the server sent; ``data`` is the reason). Compared
    by value; its repr stays short for big payloads.
    """

    __slots__ = ("data", "kind")

    def __init__(self, kind: str, data: str | bytes) -> None:
        self.kind = kind
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Msg):
            return NotImplemented
        return self.kind == other.kind and type(self.data) is type(other.data) and self.data == other.data

    def __hash__(self) -> int:
        return hash((self.kind, self.data))

    def __repr__(self) -> str:
        return f"{self.kind}({_short(self.data)})"


def got_text(text: str) -> Msg:
    return Msg("text", text)


def got_binary(data: bytes) -> Msg:
    return Msg("binary", data)


def got_pong(payload: bytes) -> Msg:
    return Msg("pong", payload)


@dataclass(frozen=True)
class Outcome:
    """What the client observed of the server.

    Attributes:
        received: messages and pongs, in the order they arrived (barrier
            pongs excluded).
        close_code: the code of the server's close frame, 1005 for one
            without a code, None when none came.
        tcp_closed: the server closed the TCP connection.
        closed_after: index of the action whose barrier saw the server's
            close frame or end of stream; None while open.
        extensions: the server's ``Sec-WebSocket-Extensions`` answer.
        stalled: the server neither answered a barrier ping nor closed.
    """

    received: tuple[Msg, ...] = ()
    close_code: int | None = None
    tcp_closed: bool = False
    closed_after: int | None = None
    extensions: str | None = None
    stalled: bool = False


def closed(code: int, *received: Msg, after: int | None = None, extensions: str | None = None) -> Outcome:
    """The server sends a close frame with ``code`` and closes TCP, after the action ``after``.

    ``after`` None means the last action of the case.
    """
    return Outcome(tuple(received), code, True, after, extensions)


def still_open(*received: Msg, extensions: str | None = None) -> Outcome:
    """The server is still open after the last action, and answered its barrier ping."""
    return Outcome(tuple(received), extensions=extensions)


@dataclass(frozen=True, repr=False)
class Case:
    """One conformance case: what the client sends, and what the echo server must be seen to do.

    ``expect`` is our exact behaviour. ``also_allowed`` lists outcomes that
    Autobahn also passes (NON-STRICT and the like): a transport whose timing
    we don't control may check ``accepts`` instead; each case that has some
    says why in a comment.
    """

    id: str
    title: str
    category: str
    actions: tuple[Action, ...]
    expect: Outcome
    also_allowed: tuple[Outcome, ...] = ()
    #: The client's Sec-WebSocket-Extensions offer; None offers nothing.
    compression: str | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    def accepts(self, outcome: Outcome) -> bool:
        return outcome == self.expect or outcome in self.also_allowed

    def __repr__(self) -> str:
        return f"Case({self.id} {self.title!r})"


CATEGORIES = {
    "1": "framing",
    "2": "ping/pong",
    "3": "reserved bits",
    "4": "opcodes",
    "5": "fragmentation",
    "6": "UTF-8",
    "7": "close",
    "9": "limits",
    "12": "compressed payloads",
    "13": "compression offers",
}


class _Table:
    """Collects cases, resolving ``closed_after=None`` to the case's last action."""

    def __init__(self) -> None:
        self.cases: list[Case] = []

    def add(
        self,
        case_id: str,
        title: str,
        actions: Sequence[Action],
        expect: Outcome,
        *,
        also_allowed: Sequence[Outcome] = (),
        compression: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        last = len(actions) - 1

        def resolve(outcome: Outcome) -> Outcome:
            if outcome.tcp_closed and outcome.closed_after is None:
                return replace(outcome, closed_after=last)
            return outcome

        self.cases.append(
            Case(
                case_id,
                title,
                CATEGORIES[case_id.split(".")[0]],
                tuple(actions),
                resolve(expect),
                tuple(resolve(outcome) for outcome in also_allowed),
                compression,
                max_message_size,
            )
        )


# ------------------------------------------------------------------- payloads

_ASCII_PATTERN = "Autobahn-style echo: 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ. "


@functools.cache
def _ascii(size: int) -> str:
    """ASCII text of ``size`` characters; the pattern's odd length moves every mask offset."""
    return (_ASCII_PATTERN * (size // len(_ASCII_PATTERN) + 1))[:size]


@functools.cache
def _ascii_bytes(size: int) -> bytes:
    """``_ascii(size)`` encoded, shared by the cases that send the same big text."""
    return _ascii(size).encode()


@functools.cache
def _octets(size: int) -> bytes:
    """All byte values in turn: binary that is not UTF-8."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "websocket", "frame", "message",
    "close", "ping", "pong", "mask", "payload", "deflate", "window", "context", "takeover", "server",
    "client", "echo", "text", "binary", "fragment", "opcode",
)  # fmt: skip


@functools.cache
def _prose(size: int, seed: int) -> str:
    """Compressible ASCII text of exactly ``size`` characters, different for each seed."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS) + rng.choice("    ,.")
        parts.append(word)
        length += len(word)
    return "".join(parts)[:size]


@functools.cache
def _noise(size: int, seed: int) -> bytes:
    """Incompressible bytes."""
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------- 1 framing


def _framing(t: _Table) -> None:
    lengths = (0, 125, 126, 127, 128, 65535, 65536, 100_000)
    for number, size in enumerate(lengths, 1):
        text = _ascii(size)
        t.add(
            f"1.1.{number}",
            f"text message of {size} bytes in one frame is echoed",
            [send(text_frame(text)), CLOSE],
            closed(1000, got_text(text)),
        )
    for number, size in enumerate(lengths, 1):
        data = _octets(size)
        t.add(
            f"1.2.{number}",
            f"binary message of {size} bytes in one frame is echoed",
            [send(binary_frame(data)), CLOSE],
            closed(1000, got_binary(data)),
        )
    # One byte per write: every header field, every length form and every
    # mask offset is split.
    for number, size in enumerate((0, 1, 125, 126, 127, 128, 65535, 65536), 1):
        text = _ascii(size)
        t.add(
            f"1.3.{number}",
            f"text message of {size} bytes written one byte at a time is echoed",
            [send(text_frame(text), chunk=1), CLOSE],
            closed(1000, got_text(text)),
        )
    for number, size in enumerate((0, 125, 126, 127, 128, 65536), 1):
        data = _octets(size)
        t.add(
            f"1.4.{number}",
            f"binary message of {size} bytes written one byte at a time is echoed",
            [send(binary_frame(data), chunk=1), CLOSE],
            closed(1000, got_binary(data)),
        )
    chops = ((100_000, 997), (65536, 3), (1000, 7), (131_072, 4096), (70_000, 65535))
    for number, (size, chunk) in enumerate(chops, 1):
        text = _ascii(size)
        t.add(
            f"1.5.{number}",
            f"text message of {size} bytes written in chunks of {chunk} is echoed",
            [send(text_frame(text), chunk=chunk), CLOSE],
            closed(1000, got_text(text)),
        )

    hello = "Hello, world!"
    t.add(
        "1.6.1",
        "unmasked text frame from a client fails with 1002",
        [send(text_frame(hello, masked=False))],
        closed(1002),
    )
    t.add(
        "1.6.2",
        "unmasked ping from a client fails with 1002 and gets no pong",
        [send(ping_frame(b"unmasked", masked=False))],
        closed(1002),
    )
    t.add(
        "1.6.3",
        "length 5 in the 16-bit form is not minimal and fails with 1002 (§5.2)",
        [send(text_frame("Hello", length_bits=16))],
        closed(1002),
    )
    t.add(
        "1.6.4",
        "length 200 in the 64-bit form is not minimal and fails with 1002",
        [send(binary_frame(_octets(200), length_bits=64))],
        closed(1002),
    )
    t.add(
        "1.6.5",
        "a 64-bit length with the most significant bit set fails with 1002 before any payload",
        [send(binary_frame(declared_length=(1 << 63) + 1))],
        closed(1002),
    )
    t.add(
        "1.6.6",
        "a zero masking key is valid",
        [send(text_frame(hello, mask=b"\x00\x00\x00\x00")), CLOSE],
        closed(1000, got_text(hello)),
    )
    three = (text_frame("one"), binary_frame(b"two"), text_frame("three"))
    echoes = (got_text("one"), got_binary(b"two"), got_text("three"))
    t.add(
        "1.6.7",
        "three messages in one write are echoed in order",
        [send(*three), CLOSE],
        closed(1000, *echoes),
    )
    t.add(
        "1.6.8",
        "three messages in one write, written one byte at a time, are echoed in order",
        [send(*three, chunk=1), CLOSE],
        closed(1000, *echoes),
    )
    t.add(
        "1.6.9",
        "three messages as three writes are echoed in order",
        [*(send(part) for part in three), CLOSE],
        closed(1000, *echoes),
    )
    t.add(
        "1.6.10",
        "empty text and empty binary messages are echoed",
        [send(text_frame(), binary_frame()), CLOSE],
        closed(1000, got_text(""), got_binary(b"")),
    )


# -------------------------------------------------------------- 2 ping/pong


def _ping_pong(t: _Table) -> None:
    t.add(
        "2.1",
        "ping without payload is answered by an empty pong",
        [send(ping_frame())],
        still_open(got_pong(b"")),
    )
    t.add(
        "2.2",
        "ping with a text payload is answered with the same payload",
        [send(ping_frame(b"Hello, world!"))],
        still_open(got_pong(b"Hello, world!")),
    )
    octets = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"
    t.add(
        "2.3",
        "ping with a binary payload is answered with the same payload",
        [send(ping_frame(octets))],
        still_open(got_pong(octets)),
    )
    t.add(
        "2.4",
        "ping with 125 bytes of payload, the control frame maximum, is answered",
        [send(ping_frame(_octets(125)))],
        still_open(got_pong(_octets(125))),
    )
    t.add(
        "2.5",
        "ping with 126 bytes of payload fails with 1002 and gets no pong",
        [send(ping_frame(_octets(126)))],
        closed(1002),
    )
    t.add(
        "2.6",
        "ping with 125 bytes written one byte at a time is answered",
        [send(ping_frame(_octets(125)), chunk=1)],
        still_open(got_pong(_octets(125))),
    )
    t.add("2.7", "unsolicited empty pong is ignored", [send(pong_frame())], still_open())
    t.add(
        "2.8", "unsolicited pong with a payload is ignored", [send(pong_frame(b"unsolicited"))], still_open()
    )
    t.add(
        "2.9",
        "unsolicited pong then ping: only the ping is answered",
        [send(pong_frame(b"unsolicited"), ping_frame(b"solicited"))],
        still_open(got_pong(b"solicited")),
    )
    pings = [b"ping %d" % number for number in range(10)]
    pongs = [got_pong(payload) for payload in pings]
    t.add(
        "2.10",
        "ten pings in one write get ten pongs in order",
        [send(*map(ping_frame, pings))],
        still_open(*pongs),
    )
    t.add(
        "2.11",
        "ten pings in one write, written one byte at a time, get ten pongs in order",
        [send(*map(ping_frame, pings), chunk=1)],
        still_open(*pongs),
    )
    t.add(
        "2.12",
        "ten pings as ten writes get ten pongs in order",
        [send(ping_frame(payload)) for payload in pings],
        still_open(*pongs),
    )
    t.add(
        "2.13",
        "pong with 126 bytes of payload fails with 1002",
        [send(pong_frame(_octets(126)))],
        closed(1002),
    )
    # The pong is queued while the bytes are parsed, the echoes only when the
    # application handles the events of that read: the pong overtakes the
    # first echo. The RFC doesn't order replies to different frames; the
    # sequential order is fine too.
    t.add(
        "2.14",
        "ping between two text messages in one write: the pong comes before both echoes",
        [send(text_frame("before"), ping_frame(b"between"), text_frame("after"))],
        still_open(got_pong(b"between"), got_text("before"), got_text("after")),
        also_allowed=[still_open(got_text("before"), got_pong(b"between"), got_text("after"))],
    )
    t.add(
        "2.15",
        "ping then close in one write: the pong, then the close echoed",
        [send(ping_frame(b"last"), close_frame(1000))],
        closed(1000, got_pong(b"last")),
    )
    t.add(
        "2.16",
        "ping whose 5-byte length is in the 16-bit form fails with 1002",
        [send(ping_frame(b"Hello", length_bits=16))],
        closed(1002),
    )


# ---------------------------------------------------------- 3 reserved bits


def _reserved_bits(t: _Table) -> None:
    hello = "Hello, world!"
    t.add(
        "3.1",
        "text frame with RSV1 and no extension fails with 1002",
        [send(text_frame(hello, rsv=RSV1))],
        closed(1002),
    )
    t.add(
        "3.2",
        "text echoed, then a text frame with RSV2 fails with 1002",
        [send(text_frame(hello)), send(text_frame(hello, rsv=RSV2)), send(ping_frame())],
        closed(1002, got_text(hello), after=1),
    )
    # One write: the bad frame is found in the same read as the valid message,
    # so the close frame is queued before the application sees the message;
    # its echo is then refused. Autobahn passes the echo too (and calls our
    # outcome NON-STRICT).
    t.add(
        "3.3",
        "valid text, text with RSV3 and a ping in one write: 1002, no echo, no pong",
        [send(text_frame(hello), text_frame(hello, rsv=RSV3), ping_frame())],
        closed(1002),
        also_allowed=[closed(1002, got_text(hello))],
    )
    # Byte by byte the valid message completes in an earlier read and is
    # echoed. Over TCP the bytes may be coalesced into one read: then 3.3.
    t.add(
        "3.4",
        "valid text, text with RSV3 and a ping written one byte at a time: echo, then 1002",
        [send(text_frame(hello), text_frame(hello, rsv=RSV3), ping_frame(), chunk=1)],
        closed(1002, got_text(hello)),
        also_allowed=[closed(1002)],
    )
    t.add(
        "3.5",
        "binary frame with RSV1 and RSV3 fails with 1002",
        [send(binary_frame(_octets(10), rsv=RSV1 | RSV3))],
        closed(1002),
    )
    t.add(
        "3.6",
        "ping with RSV2 and RSV3 fails with 1002 and gets no pong",
        [send(ping_frame(b"ping", rsv=RSV2 | RSV3))],
        closed(1002),
    )
    t.add(
        "3.7",
        "close frame with all three RSV bits fails with 1002 instead of being echoed",
        [send(close_frame(1000, rsv=RSV1 | RSV2 | RSV3))],
        closed(1002),
    )
    t.add("3.8", "pong with RSV1 fails with 1002", [send(pong_frame(b"pong", rsv=RSV1))], closed(1002))
    t.add(
        "3.9",
        "continuation frame with RSV3 inside a fragmented text fails with 1002",
        [send(text_frame("frag", fin=False)), send(cont_frame("ment", rsv=RSV3))],
        closed(1002),
    )
    t.add(
        "3.10",
        "first frame of a fragmented text with RSV1 and no extension fails with 1002",
        [send(text_frame("frag", fin=False, rsv=RSV1)), send(cont_frame("ment"))],
        closed(1002, after=0),
    )


# -------------------------------------------------------------- 4 opcodes


def _opcodes(t: _Table) -> None:
    hello = "Hello, world!"
    groups = (("4.1", "non-control", (3, 4, 5, 6, 7)), ("4.2", "control", (11, 12, 13, 14, 15)))
    for group, kind, opcodes in groups:
        for number, opcode in enumerate(opcodes, 1):
            t.add(
                f"{group}.{number}",
                f"frame with reserved {kind} opcode {opcode} and no payload fails with 1002",
                [send(Frame(opcode))],
                closed(1002),
            )
        for number, opcode in enumerate(opcodes, 6):
            t.add(
                f"{group}.{number}",
                f"text echoed, then reserved {kind} opcode {opcode} with a payload fails with 1002",
                [send(text_frame(hello)), send(Frame(opcode, b"reserved")), send(ping_frame())],
                closed(1002, got_text(hello), after=1),
            )
        opcode = opcodes[2]
        # As in 3.3: in one read the failure comes first; Autobahn also passes the echo.
        t.add(
            f"{group}.11",
            f"text, reserved {kind} opcode {opcode} and a ping in one write: 1002, no echo, no pong",
            [send(text_frame(hello), Frame(opcode, b"reserved"), ping_frame())],
            closed(1002),
            also_allowed=[closed(1002, got_text(hello))],
        )
        t.add(
            f"{group}.12",
            f"text, reserved {kind} opcode {opcode} and a ping written one byte at a time: echo, then 1002",
            [send(text_frame(hello), Frame(opcode, b"reserved"), ping_frame(), chunk=1)],
            closed(1002, got_text(hello)),
            also_allowed=[closed(1002)],
        )
    t.add(
        "4.3.1",
        "reserved opcode 3 between the fragments of a text message fails with 1002",
        [send(text_frame("frag", fin=False)), send(Frame(3, b"x")), send(cont_frame("ment"))],
        closed(1002, after=1),
    )
    t.add(
        "4.3.2",
        "reserved control opcode 11 between the fragments of a text message fails with 1002",
        [send(text_frame("frag", fin=False)), send(Frame(11, b"x")), send(cont_frame("ment"))],
        closed(1002, after=1),
    )


# -------------------------------------------------------- 5 fragmentation


def _fragmentation(t: _Table) -> None:
    hello = "Hello, world!"
    t.add(
        "5.1",
        "ping split into two fragments fails with 1002",
        [send(ping_frame(b"frag", fin=False), cont_frame(b"ment"))],
        closed(1002),
    )
    t.add(
        "5.2",
        "pong split into two fragments fails with 1002",
        [send(pong_frame(b"frag", fin=False), cont_frame(b"ment"))],
        closed(1002),
    )
    two = (text_frame("fragment", fin=False), cont_frame("ation"))
    t.add(
        "5.3",
        "text in two fragments in one write is echoed as one message",
        [send(*two), CLOSE],
        closed(1000, got_text("fragmentation")),
    )
    t.add(
        "5.4",
        "text in two fragments, one write each, is echoed as one message",
        [send(two[0]), send(two[1]), CLOSE],
        closed(1000, got_text("fragmentation")),
    )
    t.add(
        "5.5",
        "text in two fragments written one byte at a time is echoed as one message",
        [send(*two, chunk=1), CLOSE],
        closed(1000, got_text("fragmentation")),
    )
    word = "fragmentation"
    one_byte_frames = [
        (text_frame if index == 0 else cont_frame)(char, fin=index == len(word) - 1)
        for index, char in enumerate(word)
    ]
    t.add(
        "5.6",
        "text in thirteen one-byte fragments is echoed as one message",
        [send(*one_byte_frames), CLOSE],
        closed(1000, got_text(word)),
    )
    with_ping = (two[0], ping_frame(b"in between"), two[1])
    t.add(
        "5.7",
        "ping between two text fragments is answered, then the message echoed",
        [send(*with_ping), CLOSE],
        closed(1000, got_pong(b"in between"), got_text("fragmentation")),
    )
    t.add(
        "5.8",
        "ping between two text fragments, written one byte at a time",
        [send(*with_ping, chunk=1), CLOSE],
        closed(1000, got_pong(b"in between"), got_text("fragmentation")),
    )
    t.add(
        "5.9",
        "ping between two text fragments, each frame its own write",
        [*(send(part) for part in with_ping), CLOSE],
        closed(1000, got_pong(b"in between"), got_text("fragmentation")),
    )
    data = _octets(300)
    t.add(
        "5.10",
        "binary in three fragments with an empty first and middle fragment is echoed",
        [send(binary_frame(fin=False), cont_frame(fin=False), cont_frame(data)), CLOSE],
        closed(1000, got_binary(data)),
    )
    t.add(
        "5.11",
        "text of three empty fragments is echoed as an empty message",
        [send(text_frame(fin=False), cont_frame(fin=False), cont_frame()), CLOSE],
        closed(1000, got_text("")),
    )
    t.add(
        "5.12",
        "continuation frame (fin set) without a message in progress fails with 1002",
        [send(cont_frame("orphan"))],
        closed(1002),
    )
    t.add(
        "5.13",
        "continuation frame (fin clear) without a message in progress fails with 1002",
        [send(cont_frame("orphan", fin=False))],
        closed(1002),
    )
    t.add(
        "5.14",
        "text echoed, then a continuation without a message in progress fails with 1002",
        [send(text_frame(hello)), send(cont_frame("orphan")), CLOSE],
        closed(1002, got_text(hello), after=1),
    )
    t.add(
        "5.15",
        "text and an orphan continuation written one byte at a time: echo, then 1002",
        [send(text_frame(hello), cont_frame("orphan"), chunk=1)],
        closed(1002, got_text(hello)),
        also_allowed=[closed(1002)],
    )
    t.add(
        "5.16",
        "a new text frame while a fragmented text is in progress fails with 1002",
        [send(text_frame("frag", fin=False)), send(text_frame("ment")), CLOSE],
        closed(1002, after=1),
    )
    t.add(
        "5.17",
        "a binary frame while a fragmented text is in progress fails with 1002",
        [send(text_frame("frag", fin=False)), send(binary_frame(b"ment")), CLOSE],
        closed(1002, after=1),
    )
    t.add(
        "5.18",
        "text, continuation and text again, all fin clear, in one write fail with 1002",
        [send(text_frame("a", fin=False), cont_frame("b", fin=False), text_frame("c", fin=False))],
        closed(1002),
    )
    t.add(
        "5.19",
        "a close while a fragmented text is open is echoed; the message is dropped",
        [send(text_frame("never finished", fin=False)), CLOSE],
        closed(1000),
    )
    parts = ("fr", "ag", "me", "nt", "ed")
    five = [
        text_frame(parts[0], fin=False),
        cont_frame(parts[1], fin=False),
        ping_frame(b"after 2"),
        cont_frame(parts[2], fin=False),
        cont_frame(parts[3], fin=False),
        ping_frame(b"after 4"),
        cont_frame(parts[4]),
    ]
    five_echo = (got_pong(b"after 2"), got_pong(b"after 4"), got_text("fragmented"))
    t.add(
        "5.20",
        "text in five fragments with pings after the second and fourth, each its own write",
        [*(send(part) for part in five), CLOSE],
        closed(1000, *five_echo),
    )
    t.add(
        "5.21",
        "text in five fragments with two pings, all in one write, one byte at a time",
        [send(*five, chunk=1), CLOSE],
        closed(1000, *five_echo),
    )
    t.add(
        "5.22",
        "two fragmented messages back to back in one write are echoed in order",
        [
            send(
                text_frame("ab", fin=False),
                cont_frame("cd"),
                binary_frame(b"ef", fin=False),
                cont_frame(b"gh"),
            ),
            CLOSE,
        ],
        closed(1000, got_text("abcd"), got_binary(b"efgh")),
    )
    t.add(
        "5.23",
        "text start, close and its continuation in one write: only the close is echoed",
        [send(text_frame("frag", fin=False), close_frame(1000), cont_frame("ment"))],
        closed(1000),
    )


# ------------------------------------------------------------------ 6 UTF-8

VALID_TEXTS = (
    ("ASCII", "Hello, world!"),
    ("Greek", "κόσμε"),
    ("accented Latin", "Grüße aus Köln, ça va? ¿Qué tal?"),
    ("the smallest and largest 2-byte code points", "\u0080 \u07ff"),
    ("the smallest and largest 3-byte code points", "\u0800 \uffff"),
    ("the smallest and largest 4-byte code points", "\U00010000 \U0010ffff"),
    ("the code points around the surrogates", "\ud7ff \ue000"),
    ("noncharacters", "\ufdd0 \ufffe \U0010fffe"),
    ("Japanese", "日本語のテキスト"),
    ("emoji with a zero-width joiner", "👩\u200d💻 🚀"),
    ("musical symbols", "𝄞𝄢"),
    ("1-, 2-, 3- and 4-byte characters in a row", "a¢€𐍈"),
    ("NUL and control characters", "\x00\x01\x1f\x7f"),
    ("a byte order mark", "\ufeffBOM"),
)

# When a fail-fast decoder can tell a sample is invalid, if the sample ends a fragment:
_NOW = "now"  # within the sample itself
_AT_END = "at end"  # only at what follows it (the next byte or the end of the message)
# Python's incremental decoder accepts ED A0..BF as the start of a sequence and
# fails on the third byte, although those two bytes can only begin a surrogate.
_LATE = "late"

INVALID_UTF8 = (
    ("a lone continuation byte 0x80", b"\x80", _NOW),
    ("a lone continuation byte 0xbf", b"\xbf", _NOW),
    ("four continuation bytes without a lead byte", b"\x80\xbf\x80\xbf", _NOW),
    ("a 2-byte lead byte followed by a space", b"\xc3 ", _NOW),
    ("a 3-byte lead byte and one continuation followed by a space", b"\xe2\x82 ", _NOW),
    ("a 4-byte lead byte and two continuations followed by a space", b"\xf0\x9f\x98 ", _NOW),
    ("'/' as an overlong 2-byte sequence", b"\xc0\xaf", _NOW),
    ("'/' as an overlong 3-byte sequence", b"\xe0\x80\xaf", _NOW),
    ("'/' as an overlong 4-byte sequence", b"\xf0\x80\x80\xaf", _NOW),
    ("NUL as an overlong 2-byte sequence", b"\xc0\x80", _NOW),
    ("U+007F as an overlong 2-byte sequence", b"\xc1\xbf", _NOW),
    ("U+07FF as an overlong 3-byte sequence", b"\xe0\x9f\xbf", _NOW),
    ("U+FFFF as an overlong 4-byte sequence", b"\xf0\x8f\xbf\xbf", _NOW),
    ("the surrogate U+D800", b"\xed\xa0\x80", _NOW),
    ("the surrogate U+DBFF", b"\xed\xaf\xbf", _NOW),
    ("the surrogate U+DC00", b"\xed\xb0\x80", _NOW),
    ("the surrogate U+DFFF", b"\xed\xbf\xbf", _NOW),
    ("a surrogate pair encoded as CESU-8", b"\xed\xa0\x80\xed\xb0\x80", _NOW),
    ("U+110000, one past the last code point", b"\xf4\x90\x80\x80", _NOW),
    ("U+1FFFFF, the largest 4-byte form", b"\xf7\xbf\xbf\xbf", _NOW),
    ("an obsolete 5-byte sequence", b"\xf8\x88\x80\x80\x80", _NOW),
    ("an obsolete 6-byte sequence", b"\xfc\x84\x80\x80\x80\x80", _NOW),
    ("the byte 0xfe", b"\xfe", _NOW),
    ("the byte 0xff", b"\xff", _NOW),
    ("the lead byte 0xf5", b"\xf5\x80\x80\x80", _NOW),
    ("a 3-byte sequence with a bad second byte", b"\xe2\x28\xa1", _NOW),
    ("a 3-byte sequence with a bad third byte", b"\xe2\x82\x28", _NOW),
    ("a 4-byte sequence with a bad second byte", b"\xf0\x28\x8c\xbc", _NOW),
    ("a 4-byte sequence with a bad third byte", b"\xf0\x90\x28\xbc", _NOW),
    ("a 4-byte sequence with a bad fourth byte", b"\xf0\x90\x8c\x28", _NOW),
    ("Greek, a surrogate, then ASCII", "κόσμε".encode() + b"\xed\xa0\x80edited", _NOW),
    ("a 2-byte sequence cut short at the end", b"abc\xc3", _AT_END),
    ("a 3-byte sequence cut short at the end", b"abc\xe2\x82", _AT_END),
    ("a 4-byte sequence cut short at the end", b"abc\xf0\x9f\x98", _AT_END),
    ("the first two bytes of a surrogate at the end", b"abc\xed\xa0", _LATE),
)

_PREFIX = "κόσμε ".encode()
_SUFFIX = b"-edited"


def _utf8_cases(t: _Table) -> None:
    for number, (name, text) in enumerate(VALID_TEXTS, 1):
        t.add(
            f"6.1.{number}",
            f"valid UTF-8 ({name}) in one frame is echoed",
            [send(text_frame(text)), CLOSE],
            closed(1000, got_text(text)),
        )
    for number, (name, text) in enumerate(VALID_TEXTS, 1):
        encoded = text.encode()
        splits = range(1, len(encoded))
        t.add(
            f"6.2.{number}",
            f"valid UTF-8 ({name}) split in two fragments at every byte position is echoed",
            [*(send(text_frame(encoded[:at], fin=False), cont_frame(encoded[at:])) for at in splits), CLOSE],
            closed(1000, *(got_text(text) for _ in splits)),
        )
    for number, (name, text) in enumerate(VALID_TEXTS, 1):
        t.add(
            f"6.3.{number}",
            f"valid UTF-8 ({name}) with one frame per byte is echoed",
            [text_message(text, fragment=1), CLOSE],
            closed(1000, got_text(text)),
        )
    for number, (name, text) in enumerate(VALID_TEXTS, 1):
        t.add(
            f"6.4.{number}",
            f"valid UTF-8 ({name}) in one frame written one byte at a time is echoed",
            [send(text_frame(text), chunk=1), CLOSE],
            closed(1000, got_text(text)),
        )

    for number, (name, sample, _) in enumerate(INVALID_UTF8, 1):
        t.add(
            f"6.5.{number}",
            f"text with {name} fails with 1007",
            [send(text_frame(sample)), CLOSE],
            closed(1007, after=0),
        )
    for number, (name, sample, _) in enumerate(INVALID_UTF8, 1):
        t.add(
            f"6.6.{number}",
            f"text with {name}, written one byte at a time, fails with 1007",
            [send(text_frame(_PREFIX + sample + _SUFFIX), chunk=1), CLOSE],
            closed(1007, after=0),
        )
    # Three fragments, one write each: valid, then the sample, then valid.
    # Failing as soon as the sample arrives is what Autobahn calls fail-fast;
    # failing only at the end of the message it passes as NON-STRICT.
    for number, (name, sample, detect) in enumerate(INVALID_UTF8, 1):
        actions = [
            send(text_frame(_PREFIX, fin=False)),
            send(cont_frame(sample, fin=False)),
            send(cont_frame(_SUFFIX)),
            CLOSE,
        ]
        if detect == _NOW:
            expect, allowed = closed(1007, after=1), [closed(1007, after=2)]
        elif detect == _AT_END:
            expect, allowed = closed(1007, after=2), []
        else:  # _LATE: a stricter decoder would fail on the fragment itself
            expect, allowed = closed(1007, after=2), [closed(1007, after=1)]
        t.add(
            f"6.7.{number}",
            f"fragmented text with {name} in its middle fragment fails with 1007",
            actions,
            expect,
            also_allowed=allowed,
        )

    euro = "€".encode()  # E2 82 AC
    clef = "𝄞".encode()  # F0 9D 84 9E
    t.add(
        "6.8.1",
        "'€' split after its first byte across two fragments is echoed",
        [send(text_frame(b"x" + euro[:1], fin=False), cont_frame(euro[1:])), CLOSE],
        closed(1000, got_text("x€")),
    )
    t.add(
        "6.8.2",
        "'€' split after its second byte across two fragments is echoed",
        [send(text_frame(euro[:2], fin=False), cont_frame(euro[2:] + b"x")), CLOSE],
        closed(1000, got_text("€x")),
    )
    t.add(
        "6.8.3",
        "'𝄞' in four one-byte fragments in one write is echoed",
        [text_message(clef, fragment=1), CLOSE],
        closed(1000, got_text("𝄞")),
    )
    clef_frames = [
        (text_frame if index == 0 else cont_frame)(clef[index : index + 1], fin=index == 3)
        for index in range(4)
    ]
    t.add(
        "6.8.4",
        "'𝄞' in four one-byte fragments, each its own write, is echoed",
        [*(send(part) for part in clef_frames), CLOSE],
        closed(1000, got_text("𝄞")),
    )
    # The Python decoder's one blind spot (see _LATE), across writes.
    t.add(
        "6.8.5",
        "a surrogate split ED | A0 | 80 over three fragments fails with 1007 when the 80 arrives",
        [
            send(text_frame(_PREFIX + b"\xed", fin=False)),
            send(cont_frame(b"\xa0", fin=False)),
            send(cont_frame(b"\x80" + _SUFFIX)),
            CLOSE,
        ],
        closed(1007, after=2),
        also_allowed=[closed(1007, after=1)],
    )
    t.add(
        "6.8.6",
        "U+110000 split F4 | 90 80 80 fails with 1007 as soon as the 90 arrives",
        [
            send(text_frame(_PREFIX + b"\xf4", fin=False)),
            send(cont_frame(b"\x90", fin=False)),
            send(cont_frame(b"\x80\x80" + _SUFFIX)),
            CLOSE,
        ],
        closed(1007, after=1),
        also_allowed=[closed(1007, after=2)],
    )
    t.add(
        "6.8.7",
        "a text whose last fragment ends inside '€' fails with 1007",
        [send(text_frame(_PREFIX, fin=False)), send(cont_frame(euro[:2])), CLOSE],
        closed(1007, after=1),
    )
    t.add(
        "6.8.8",
        "the same invalid bytes in a binary message are echoed untouched",
        [send(binary_frame(b"\xed\xa0\x80\xff\xc0\xaf")), CLOSE],
        closed(1000, got_binary(b"\xed\xa0\x80\xff\xc0\xaf")),
    )


# ------------------------------------------------------------------ 7 close

VALID_CLOSE_CODES = (
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
)
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)


def _close(t: _Table) -> None:
    hello = "Hello, world!"
    t.add(
        "7.1.1",
        "text echoed, then the close echoed with 1000",
        [send(text_frame(hello)), CLOSE],
        closed(1000, got_text(hello)),
    )
    t.add(
        "7.1.2",
        "two closes in one write: the first is echoed, the second ignored",
        [send(close_frame(1000), close_frame(1001))],
        closed(1000),
    )
    t.add(
        "7.1.3",
        "close then ping in one write: no pong after the close",
        [send(close_frame(1000), ping_frame(b"too late"))],
        closed(1000),
    )
    t.add(
        "7.1.4",
        "close then text in one write: no echo after the close",
        [send(close_frame(1000), text_frame(hello))],
        closed(1000),
    )
    t.add(
        "7.1.5",
        "text start, close and continuation in one write: the message is dropped",
        [send(text_frame("frag", fin=False), close_frame(1000), cont_frame("ment"))],
        closed(1000),
    )
    big = _ascii(256 * KIB)
    # The close is parsed in the same read as the message, so the closing
    # handshake is done before the application can echo it. RFC 6455 §5.5.1
    # lets an endpoint send its message first; Autobahn passes both.
    t.add(
        "7.1.6",
        "256 KiB text, close and ping in one write: the close is echoed, the text is not",
        [send(text_frame(big), close_frame(1000), ping_frame(b"too late"))],
        closed(1000),
        also_allowed=[closed(1000, got_text(big))],
    )
    t.add(
        "7.1.7",
        "close then bytes that are not a frame in one write: the close is echoed",
        [send(close_frame(1000), b"\xff\xff\xff garbage")],
        closed(1000),
    )
    t.add(
        "7.1.8",
        "text start, then close as its own write: the close is echoed",
        [send(text_frame("frag", fin=False)), CLOSE],
        closed(1000),
    )

    t.add("7.2.1", "close without payload is echoed without payload", [send(close_frame(None))], closed(1005))
    t.add(
        "7.2.2",
        "close with a 1-byte payload fails with 1002",
        [send(Frame(Opcode.CLOSE, b"\x03"))],
        closed(1002),
    )
    t.add("7.2.3", "close 1000 without reason is echoed", [send(close_frame(1000))], closed(1000))
    t.add(
        "7.2.4",
        "close 1000 with a reason is echoed with 1000",
        [send(close_frame(1000, "Normal closure"))],
        closed(1000),
    )
    t.add(
        "7.2.5",
        "close 1000 with a 123-byte ASCII reason (125 bytes of payload) is echoed",
        [send(close_frame(1000, "x" * 123))],
        closed(1000),
    )
    t.add(
        "7.2.6",
        "close 1000 with a 123-byte multibyte reason is echoed",
        [send(close_frame(1000, "€" * 41))],
        closed(1000),
    )
    t.add(
        "7.2.7",
        "close with a 124-byte reason (126 bytes of payload) fails with 1002",
        [send(close_frame(1000, "x" * 124))],
        closed(1002),
    )
    t.add(
        "7.2.8",
        "close with a reason that is not UTF-8 fails with 1007",
        [send(close_frame(1000, b"bad \xff reason"))],
        closed(1007),
    )
    t.add(
        "7.2.9",
        "close with a reason cut inside a UTF-8 sequence fails with 1007",
        [send(close_frame(1000, "€".encode()[:2]))],
        closed(1007),
    )
    t.add(
        "7.2.10",
        "close with a surrogate in its reason fails with 1007",
        [send(close_frame(1000, b"\xed\xa0\x80"))],
        closed(1007),
    )
    t.add(
        "7.2.11",
        "close with fin clear (a fragmented control frame) fails with 1002",
        [send(close_frame(1000, fin=False))],
        closed(1002),
    )
    t.add(
        "7.2.12",
        "close 1000 with a reason written one byte at a time is echoed",
        [send(close_frame(1000, "one byte at a time"), chunk=1)],
        closed(1000),
    )
    t.add(
        "7.2.13",
        "close 1000 with a valid reason after an unanswered text echo",
        [send(text_frame(hello)), send(close_frame(1000, "κόσμε"))],
        closed(1000, got_text(hello)),
    )

    for number, code in enumerate(VALID_CLOSE_CODES, 1):
        t.add(
            f"7.7.{number}",
            f"close with the valid code {code} is echoed with {code}",
            [send(close_frame(code))],
            closed(code),
        )
    for number, code in enumerate(INVALID_CLOSE_CODES, 1):
        t.add(
            f"7.9.{number}",
            f"close with the invalid code {code} fails with 1002",
            [send(close_frame(code))],
            closed(1002),
        )


# ----------------------------------------------------------------- 9 limits


def _limits(t: _Table) -> None:
    for number, size in enumerate((64 * KIB, 256 * KIB, MIB, 4 * MIB), 1):
        text = _ascii(size)
        t.add(
            f"9.1.{number}",
            f"text message of {size // KIB} KiB in one frame is echoed (limit 4 MiB)",
            [text_message(_ascii_bytes(size)), CLOSE],
            closed(1000, got_text(text)),
            max_message_size=4 * MIB,
        )
    for number, size in enumerate((64 * KIB, 256 * KIB, MIB, 4 * MIB), 1):
        data = _octets(size)
        t.add(
            f"9.2.{number}",
            f"binary message of {size // KIB} KiB in one frame is echoed (limit 4 MiB)",
            [binary_message(data), CLOSE],
            closed(1000, got_binary(data)),
            max_message_size=4 * MIB,
        )
    # 1 MiB messages in frames of many sizes, at exactly the default limit.
    fragments = (64, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB)
    for number, fragment in enumerate(fragments, 1):
        t.add(
            f"9.3.{number}",
            f"text message of 1 MiB in frames of {fragment} bytes is echoed (limit 1 MiB)",
            [text_message(_ascii_bytes(MIB), fragment=fragment), CLOSE],
            closed(1000, got_text(_ascii(MIB))),
        )
    for number, fragment in enumerate(fragments, 1):
        t.add(
            f"9.4.{number}",
            f"binary message of 1 MiB in frames of {fragment} bytes is echoed (limit 1 MiB)",
            [binary_message(_octets(MIB), fragment=fragment), CLOSE],
            closed(1000, got_binary(_octets(MIB))),
        )
    chunks = (64, 128, 256, 512, KIB, 2 * KIB, 4 * KIB)
    for number, chunk in enumerate(chunks, 1):
        t.add(
            f"9.5.{number}",
            f"text message of 1 MiB in one frame written in chunks of {chunk} bytes is echoed",
            [text_message(_ascii_bytes(MIB), chunk=chunk), CLOSE],
            closed(1000, got_text(_ascii(MIB))),
        )
    for number, chunk in enumerate(chunks, 1):
        t.add(
            f"9.6.{number}",
            f"binary message of 1 MiB in one frame written in chunks of {chunk} bytes is echoed",
            [binary_message(_octets(MIB), chunk=chunk), CLOSE],
            closed(1000, got_binary(_octets(MIB))),
        )

    limit = 64 * KIB
    exact, over = _ascii(limit), _ascii(limit + 1)

    def add(case_id: str, title: str, actions: Sequence[Action], expect: Outcome) -> None:
        t.add(case_id, f"{title} (limit 64 KiB)", actions, expect, max_message_size=limit)

    add(
        "9.7.1",
        "text of exactly the limit is echoed",
        [text_message(exact), CLOSE],
        closed(1000, got_text(exact)),
    )
    add(
        "9.7.2",
        "text one byte over the limit fails with 1009",
        [text_message(over), CLOSE],
        closed(1009, after=0),
    )
    add(
        "9.7.3",
        "binary of exactly the limit in 16 fragments is echoed",
        [binary_message(_octets(limit), fragment=4 * KIB), CLOSE],
        closed(1000, got_binary(_octets(limit))),
    )
    add(
        "9.7.4",
        "binary one byte over the limit in fragments of 4 KiB fails with 1009",
        [binary_message(_octets(limit + 1), fragment=4 * KIB), CLOSE],
        closed(1009, after=0),
    )
    # Fail-fast: the header alone is enough; the payload is never sent.
    add(
        "9.7.5",
        "the header of a frame one byte over the limit fails with 1009 before any payload",
        [send(binary_frame(declared_length=limit + 1)), CLOSE],
        closed(1009, after=0),
    )
    add(
        "9.7.6",
        "the header of a 2**62-byte frame fails with 1009",
        [send(binary_frame(declared_length=1 << 62)), CLOSE],
        closed(1009, after=0),
    )
    add(
        "9.7.7",
        "a fragment of exactly the limit, then a 1-byte continuation fails with 1009",
        [send(binary_frame(_octets(limit), fin=False)), send(cont_frame(b"x")), CLOSE],
        closed(1009, after=1),
    )
    add(
        "9.7.8",
        "a fragment of exactly the limit, then an empty final continuation is echoed",
        [send(binary_frame(_octets(limit), fin=False)), send(cont_frame()), CLOSE],
        closed(1000, got_binary(_octets(limit))),
    )
    add(
        "9.7.9",
        "text one byte over the limit written in chunks of 1000 fails with 1009",
        [text_message(over, chunk=1000), CLOSE],
        closed(1009, after=0),
    )
    add(
        "9.7.10",
        "a message over the limit does not stop pings before it from being answered",
        [send(ping_frame(b"first")), text_message(over), CLOSE],
        closed(1009, got_pong(b"first"), after=1),
    )

    # Each size at exactly its own limit, then one byte over it.
    shapes: tuple[tuple[int, bool, int | None, int], ...] = (
        # size, text?, frame size, write size
        (64 * KIB, False, None, 997),
        (256 * KIB, True, 16 * KIB, 4 * KIB),
        (MIB, False, 64 * KIB, 64 * KIB),
        (4 * MIB, True, None, MIB),
    )
    for number, (size, is_text, frame_size, chunk) in enumerate(shapes, 1):
        kind = "text" if is_text else "binary"
        opcode = Opcode.TEXT if is_text else Opcode.BINARY
        payload = _ascii_bytes if is_text else _octets
        echo = got_text(_ascii(size)) if is_text else got_binary(_octets(size))
        how = f"in frames of {frame_size // KIB} KiB" if frame_size else "in one frame"
        t.add(
            f"9.8.{number}",
            f"{kind} message of exactly the {size // KIB} KiB limit, {how}, written in chunks of {chunk}, is echoed",
            [SendMessage(opcode, payload(size), fragment=frame_size, chunk=chunk), CLOSE],
            closed(1000, echo),
            max_message_size=size,
        )
        t.add(
            f"9.8.{number + 4}",
            f"{kind} message one byte over the {size // KIB} KiB limit, {how}, written in chunks of {chunk}, "
            "fails with 1009",
            [SendMessage(opcode, payload(size + 1), fragment=frame_size, chunk=chunk), CLOSE],
            closed(1009, after=0),
            max_message_size=size,
        )


# -------------------------------------------------------- 12-13 compression

DEFAULT_OFFER = "permessage-deflate"
# Our answer with the project defaults (DeflateOptions()): the server never
# keeps its compression context and compresses with a 4 KiB window.
DEFAULT_ANSWER = "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
_COMPRESSED_SIZES = (16, 64, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 128 * KIB)


def _raw_deflate(data: bytes, *, level: int = 6, final: bool = False) -> bytes:
    """A message payload compressed outside PerMessageDeflate: sync flush, or a final block."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -9)
    if final:
        return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)
    body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    return body[:-4]


def _compressed_payloads(t: _Table) -> None:
    def add(case_id: str, title: str, actions: Sequence[Action], expect: Outcome) -> None:
        t.add(case_id, title, actions, replace(expect, extensions=DEFAULT_ANSWER), compression=DEFAULT_OFFER)

    for number, size in enumerate(_COMPRESSED_SIZES, 1):
        texts = [_prose(size, seed) for seed in (1, 2, 1, 3)]
        add(
            f"12.1.{number}",
            f"four compressed text messages of {size} bytes are echoed",
            [*(text_message(text, compress=True) for text in texts), CLOSE],
            closed(1000, *map(got_text, texts)),
        )
    for number, size in enumerate(_COMPRESSED_SIZES, 1):
        blobs = [_noise(size, seed) for seed in (1, 2, 1)]
        add(
            f"12.2.{number}",
            f"three compressed random binary messages of {size} bytes are echoed",
            [*(binary_message(blob, compress=True) for blob in blobs), CLOSE],
            closed(1000, *map(got_binary, blobs)),
        )
    for number, size in enumerate(_COMPRESSED_SIZES, 1):
        blobs = [bytes(size), _octets(size), bytes(size)]
        add(
            f"12.3.{number}",
            f"three highly compressible binary messages of {size} bytes are echoed",
            [*(binary_message(blob, compress=True) for blob in blobs), CLOSE],
            closed(1000, *map(got_binary, blobs)),
        )

    text = _prose(16 * KIB, 4)
    for number, fragment in enumerate((1, 100, 1000, 4096), 1):
        add(
            f"12.4.{number}",
            f"compressed text of 16 KiB in frames of {fragment} bytes is echoed",
            [text_message(text, compress=True, fragment=fragment), CLOSE],
            closed(1000, got_text(text)),
        )
    small = _prose(600, 5)
    add(
        "12.4.5",
        "compressed text in frames of 50 bytes, written one byte at a time, is echoed",
        [text_message(small, compress=True, fragment=50, chunk=1), CLOSE],
        closed(1000, got_text(small)),
    )
    add(
        "12.4.6",
        "compressed fragmented text, compressed binary and uncompressed text in a row are echoed",
        [
            text_message(text, compress=True, fragment=999),
            binary_message(_noise(3000, 6), compress=True, fragment=700),
            text_message(small),
            CLOSE,
        ],
        closed(1000, got_text(text), got_binary(_noise(3000, 6)), got_text(small)),
    )
    compressed_hello = _raw_deflate(b"Hello, compressed world!")
    add(
        "12.4.7",
        "a ping between the fragments of a compressed text is answered first",
        [
            send(
                text_frame(compressed_hello[:5], fin=False, rsv=RSV1),
                ping_frame(b"between"),
                cont_frame(compressed_hello[5:]),
            ),
            CLOSE,
        ],
        closed(1000, got_pong(b"between"), got_text("Hello, compressed world!")),
    )

    add(
        "12.5.1",
        "RSV1 on a continuation frame fails with 1002",
        [text_message(text, compress=True, fragment=1000, rsv1_on_continuation=True), CLOSE],
        closed(1002, after=0),
    )
    add(
        "12.5.2", "RSV1 on a ping fails with 1002", [send(ping_frame(b"compressed?", rsv=RSV1))], closed(1002)
    )
    add("12.5.3", "RSV1 on a close fails with 1002", [send(close_frame(1000, rsv=RSV1))], closed(1002))
    add(
        "12.5.4",
        "RSV2 on a message is still reserved with permessage-deflate: 1002",
        [send(text_frame(compressed_hello, rsv=RSV1 | RSV2))],
        closed(1002),
    )
    add(
        "12.5.5",
        "a compressed payload that is not DEFLATE data fails with 1002",
        [send(text_frame(b"\xff\xff\xff\xff not deflate", rsv=RSV1))],
        closed(1002),
    )
    add(
        "12.5.6",
        "compressed text that is not UTF-8 fails with 1007",
        [text_message(b"valid, then \xed\xa0\x80", compress=True)],
        closed(1007),
    )
    bomb = _ascii(MIB)
    t.add(
        "12.5.7",
        "1 MiB of compressible text, a few KiB on the wire, over a 64 KiB limit fails with 1009",
        [text_message(bomb, compress=True), CLOSE],
        closed(1009, after=0, extensions=DEFAULT_ANSWER),
        compression=DEFAULT_OFFER,
        max_message_size=64 * KIB,
    )
    t.add(
        "12.5.8",
        "compressed text inflating to exactly the 64 KiB limit is echoed",
        [text_message(_ascii(64 * KIB), compress=True), CLOSE],
        closed(1000, got_text(_ascii(64 * KIB)), extensions=DEFAULT_ANSWER),
        compression=DEFAULT_OFFER,
        max_message_size=64 * KIB,
    )
    t.add(
        "12.5.9",
        "compressed text inflating to one byte over the 64 KiB limit fails with 1009",
        [text_message(_ascii(64 * KIB + 1), compress=True, fragment=100), CLOSE],
        closed(1009, after=0, extensions=DEFAULT_ANSWER),
        compression=DEFAULT_OFFER,
        max_message_size=64 * KIB,
    )
    add(
        "12.5.10",
        "an uncompressed message on a compressed connection is echoed",
        [text_message("plain"), binary_message(b"plain"), CLOSE],
        closed(1000, got_text("plain"), got_binary(b"plain")),
    )
    add(
        "12.5.11",
        "an empty compressed message is echoed",
        [text_message("", compress=True), binary_message(b"", compress=True), CLOSE],
        closed(1000, got_text(""), got_binary(b"")),
    )
    add(
        "12.5.12",
        "an empty payload with RSV1 is echoed as an empty message",
        [send(text_frame(b"", rsv=RSV1)), CLOSE],
        closed(1000, got_text("")),
    )
    final = _raw_deflate(b"Hello, final block!", final=True)
    add(
        "12.5.13",
        "a message ending with a final DEFLATE block (§7.2.3.3), then a normal one, are echoed",
        [send(text_frame(final, rsv=RSV1)), text_message(small, compress=True), CLOSE],
        closed(1000, got_text("Hello, final block!"), got_text(small)),
    )
    stored = _raw_deflate(b"Hello, stored block!", level=0)
    add(
        "12.5.14",
        "a message compressed as stored blocks is echoed",
        [send(text_frame(stored, rsv=RSV1)), CLOSE],
        closed(1000, got_text("Hello, stored block!")),
    )


# Offers in the spirit of Autobahn 13.x, and our answer with DeflateOptions().
# A value of 8 for server_max_window_bits is declined (zlib compresses with 9
# at best) and so is an unknown parameter; the client then sends plainly.
# client_max_window_bits=8 is missing: zlib can't compress with it either.
COMPRESSION_OFFERS = (
    (DEFAULT_OFFER, DEFAULT_ANSWER),
    (
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
    ),
    ("permessage-deflate; client_max_window_bits", DEFAULT_ANSWER),
    ("permessage-deflate; client_max_window_bits=9", DEFAULT_ANSWER),
    ("permessage-deflate; client_max_window_bits=15", DEFAULT_ANSWER),
    ("permessage-deflate; server_no_context_takeover", DEFAULT_ANSWER),
    *(
        (
            f"permessage-deflate; server_max_window_bits={bits}",
            f"permessage-deflate; server_no_context_takeover; server_max_window_bits={min(bits, 12)}",
        )
        for bits in range(9, 16)
    ),
    (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits=9; server_max_window_bits=9",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9",
    ),
    (
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=10"
        ),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
    ),
    (
        'permessage-deflate; server_max_window_bits="11"',
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
    ),
    (
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover, "
            "permessage-deflate"
        ),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
    ),
    ("permessage-deflate; server_max_window_bits=8", None),
    ("permessage-deflate; unknown_parameter", None),
    ("x-webkit-deflate-frame", None),
)


def _compression_offers(t: _Table) -> None:
    for group, (offer, answer) in enumerate(COMPRESSION_OFFERS, 1):
        for number, size in enumerate((16, 256, 4 * KIB, 64 * KIB), 1):
            # The same text twice: with context takeover the second is mostly
            # back-references into the first.
            messages: list[tuple[Action, Msg]] = [
                (text_message(_prose(size, 7), compress=True), got_text(_prose(size, 7))),
                (binary_message(_noise(size, 8), compress=True), got_binary(_noise(size, 8))),
                (text_message(_prose(size, 7), compress=True), got_text(_prose(size, 7))),
                (
                    text_message(_prose(size, 9), compress=True, fragment=max(size // 3, 1)),
                    got_text(_prose(size, 9)),
                ),
            ]
            t.add(
                f"13.{group}.{number}",
                f"offer {offer!r}: four messages of {size} bytes are echoed",
                [*(action for action, _ in messages), CLOSE],
                closed(1000, *(echo for _, echo in messages), extensions=answer),
                compression=offer,
            )


def _build() -> tuple[Case, ...]:
    table = _Table()
    for category in (
        _framing,
        _ping_pong,
        _reserved_bits,
        _opcodes,
        _fragmentation,
        _utf8_cases,
        _close,
        _limits,
        _compressed_payloads,
        _compression_offers,
    ):
        category(table)
    ids = [case.id for case in table.cases]
    duplicates = {case_id for case_id in ids if ids.count(case_id) > 1}
    assert not duplicates, f"duplicate case ids: {sorted(duplicates)}"
    return tuple(table.cases)


CASES: tuple[Case, ...] = _build()
CASES_BY_ID: dict[str, Case] = {case.id: case for case in CASES}


# ----------------------------------------------------------------- the driver


class Transport(Protocol):
    """How the driver reaches a fresh echo server. One instance serves one run at a time."""

    def connect(self, *, max_message_size: int, extensions: str | None) -> str | None:
        """Open a connection to an echo server with this message size limit.

        ``extensions`` is the client's ``Sec-WebSocket-Extensions`` offer;
        return the server's answer header value, or None.
        """

    def write(self, data: bytes) -> None:
        """Write ``data`` as one write. Once the server has closed, writes are dropped."""

    def read(self) -> bytes | None:
        """Return the next bytes from the server: b"" once it closed TCP, None if it went silent."""

    def close(self) -> None:
        """Drop the connection (the client's side of TCP)."""


def client_params(offer: str, answer: str) -> DeflateParams:
    """What the client must do after the server's answer, checked against its offers (RFC 7692 §7.1).

    Written here rather than taken from ``deflate.accept_answer`` because the
    Autobahn-style offers are raw strings, not a ``DeflateOptions``. Raises
    AssertionError when the answer honours none of the offers.
    """
    answered = handshake.parse_extensions([answer])
    assert len(answered) == 1 and answered[0][0] == deflate.EXTENSION_NAME, f"bad answer {answer!r}"
    accepted = dict(answered[0][1])
    for name, params in handshake.parse_extensions([offer]):
        offered = dict(params)
        if name != deflate.EXTENSION_NAME or not _honours(offered, accepted):
            continue
        client_bits = accepted.get("client_max_window_bits") or offered.get("client_max_window_bits") or "15"
        return DeflateParams(
            server_no_context_takeover="server_no_context_takeover" in accepted,
            # Having offered it, the client keeps its word even if it isn't echoed.
            client_no_context_takeover="client_no_context_takeover" in accepted
            or "client_no_context_takeover" in offered,
            server_max_window_bits=int(accepted.get("server_max_window_bits") or "15"),
            client_max_window_bits=int(client_bits),
        )
    raise AssertionError(f"the answer {answer!r} honours none of the offers {offer!r}")


def _honours(offered: dict[str, str | None], accepted: dict[str, str | None]) -> bool:
    """Whether an answer stays within one offer (§7.1.1.1, §7.1.2.1, §7.1.2.2).

    A window parameter answered without a value counts as 16: too big for anything.
    """
    if "server_no_context_takeover" in offered and "server_no_context_takeover" not in accepted:
        return False
    if "server_max_window_bits" in offered:
        answered_bits = int(accepted.get("server_max_window_bits") or "16")
        if answered_bits > int(offered["server_max_window_bits"] or "15"):
            return False
    if "client_max_window_bits" in accepted:
        if "client_max_window_bits" not in offered:
            return False
        if int(accepted["client_max_window_bits"] or "16") > int(offered["client_max_window_bits"] or "15"):
            return False
    return True


class _Run:
    """One run of a case: the test client's view, accumulated into an Outcome."""

    def __init__(self, transport: Transport, codec: PerMessageDeflate | None, seed: str) -> None:
        self.transport = transport
        self.codec = codec
        self.client = Connection(Role.CLIENT, max_message_size=_CLIENT_MAX_MESSAGE_SIZE, deflate=codec)
        self.rng = random.Random(seed)
        self.received: list[Msg] = []
        self.close_code: int | None = None
        self.closed_after: int | None = None
        self.eof = False
        self.stalled = False

    def key(self) -> bytes:
        return self.rng.randbytes(4)

    def perform(self, index: int, action: Action) -> None:
        wire = b"".join(
            part if isinstance(part, bytes) else part.to_bytes(self.key())
            for part in action.frames(self.codec)
        )
        if action.chunk is None:
            self.transport.write(wire)
        else:
            for start in range(0, len(wire), action.chunk):
                self.transport.write(wire[start : start + action.chunk])
        self.barrier(index)

    def barrier(self, index: int) -> None:
        """Read until the server has answered everything written so far: its pong, or its close."""
        token: bytes | None = None
        if self.close_code is None:
            token = b"barrier %d" % index
            self.transport.write(ping_frame(token).to_bytes(self.key()))
        while True:
            data = self.transport.read()
            if data is None:
                self.stalled = True
                break
            if not data:
                self.eof = True
                self.client.receive_eof()
                break
            if self.absorb(data, token):
                break
        if self.closed_after is None and (self.eof or self.close_code is not None):
            self.closed_after = index

    def absorb(self, data: bytes, token: bytes | None) -> bool:
        """Parse what the server sent; return whether it held the barrier pong."""
        found = False
        for event in self.client.receive_data(data):
            if isinstance(event, TextMessage):
                self.received.append(Msg("text", event.text))
            elif isinstance(event, BinaryMessage):
                self.received.append(Msg("binary", event.data))
            elif isinstance(event, Pong):
                if token is not None and event.payload == token and not found:
                    found = True
                else:
                    self.received.append(Msg("pong", event.payload))
            elif isinstance(event, Ping):
                self.received.append(Msg("ping", event.payload))
            elif isinstance(event, CloseReceived):
                self.close_code = event.code
            elif isinstance(event, ConnectionFailed):
                self.received.append(Msg("invalid", event.reason))
        # The client's own replies: the close echo, pongs to server pings.
        reply = self.client.data_to_send()
        if reply:
            self.transport.write(reply)
        return found

    @property
    def finished(self) -> bool:
        return self.eof or self.stalled

    def outcome(self, extensions: str | None) -> Outcome:
        return Outcome(
            tuple(self.received), self.close_code, self.eof, self.closed_after, extensions, self.stalled
        )


def run_case(case: Case, transport: Transport) -> Outcome:
    """Run ``case`` against the echo server behind ``transport``; return what the client saw."""
    answer = transport.connect(max_message_size=case.max_message_size, extensions=case.compression)
    codec = None
    if answer is not None:
        assert case.compression is not None, f"the server answered {answer!r} to no offer"
        codec = PerMessageDeflate(client_params(case.compression, answer), is_server=False)
    run = _Run(transport, codec, case.id)
    try:
        for index, action in enumerate(case.actions):
            run.perform(index, action)
            if run.finished:
                break
    finally:
        transport.close()
    return run.outcome(answer)


class SansIOTransport:
    """The echo server in memory: an echo application on ``Connection(Role.SERVER)``.

    Text is echoed as text and binary as binary with ``send_text`` /
    ``send_binary``; the connection answers pings and close frames itself;
    TCP "closes" as soon as ``close_expected()`` says so. The handshake is
    reduced to negotiating permessage-deflate the way the server does it:
    ``handshake.parse_extensions`` then ``deflate.negotiate``.
    """

    def __init__(self, deflate_options: DeflateOptions | None = None) -> None:
        self.deflate_options = DeflateOptions() if deflate_options is None else deflate_options
        self.server: Connection | None = None
        self._pending = bytearray()
        self._closed = False

    def connect(self, *, max_message_size: int, extensions: str | None) -> str | None:
        options = self.deflate_options
        codec = None
        answer = None
        if extensions is not None:
            agreed = deflate.negotiate(handshake.parse_extensions([extensions]), options)
            if agreed is not None:
                answer, params = agreed
                codec = PerMessageDeflate(
                    params, is_server=True, mem_level=options.mem_level, compress_level=options.compress_level
                )
        self.server = Connection(Role.SERVER, max_message_size=max_message_size, deflate=codec)
        self._pending.clear()
        self._closed = False
        return answer

    def write(self, data: bytes) -> None:
        server = self.server
        assert server is not None, "connect() first"
        if self._closed:
            return
        for event in server.receive_data(data):
            try:
                if isinstance(event, TextMessage):
                    server.send_text(event.text)
                elif isinstance(event, BinaryMessage):
                    server.send_binary(event.data)
            except ConnectionClosed:
                # The connection closed or failed later in the same read: as
                # for a real application, the echo is refused.
                pass
        self._pending += server.data_to_send()
        if server.close_expected():
            self._closed = True

    def read(self) -> bytes | None:
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            return data
        return b"" if self._closed else None

    def close(self) -> None:
        self._closed = True
