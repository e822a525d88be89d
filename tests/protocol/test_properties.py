"""Properties of the connection over any traffic a well-behaved peer may send.

One ``Connection`` sends, another receives, and whatever hypothesis draws must
come through exactly: any sequence of text (non-ASCII and empty included) and
binary messages up to ~200 KB, each cut into frames of a random size, pings
slipped between messages and between the frames of one message, the wire bytes
fed in random chunks, in both directions, without compression and with
permessage-deflate with and without context takeover (both codecs built from
one ``DeflateParams``, as a negotiation would leave them). The receiver's
memory bound, ``buffered_bytes <= max_message_size + MAX_UNPARSED_INPUT``, is
checked after every chunk with ``max_message_size`` set to the largest
message, so that the bound is tight and a message of exactly the limit passes.

Large payloads are generated from a drawn seed (hypothesis' own buffer is a
few KiB), and every frame and chunk count is capped so that the "ci" profile
runs each test in a few seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from django_rawws.protocol.codes import CloseCode
from django_rawws.protocol.connection import MAX_UNPARSED_INPUT, Connection, Role, State
from django_rawws.protocol.deflate import DeflateParams, PerMessageDeflate
from django_rawws.protocol.events import (
    BinaryMessage,
    CloseReceived,
    ConnectionFailed,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from django_rawws.protocol.frames import MAX_CONTROL_PAYLOAD

#: The largest payloads drawn, in bytes (about; text varies by a few percent).
LARGE = 200_000
#: No message is cut into more frames than this, and no stream into more chunks.
MAX_FRAMES = 256
MAX_CHUNKS = 4000


# ----------------------------------------------------------------- strategies


#: Sizes where the length encoding changes (§5.2) or a fragment size often falls.
EDGE_SIZES = [0, 1, 125, 126, 127, 4095, 4096, 65535, 65536, 65537]


@st.composite
def payloads(draw: st.DrawFn) -> str | bytes:
    """A text or binary payload: mostly small, sometimes up to ~200 KB.

    Medium and large sizes come from a drawn seed so that they spread evenly
    (hypothesis favours small integers). Large text mixes 1- and 2-byte
    characters with a drawn snippet (which may hold 3- and 4-byte ones) every
    1000 characters, so fragment and chunk boundaries fall inside characters.
    Payloads are random (they don't compress) or a repeated snippet (they
    compress a thousandfold).
    """
    text = draw(st.booleans())
    size_class = draw(st.sampled_from(["small"] * 5 + ["edge", "medium", "medium", "large", "large"]))
    if size_class == "small":
        return draw(st.text(max_size=40)) if text else draw(st.binary(max_size=40))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if size_class == "edge":
        size = draw(st.sampled_from(EDGE_SIZES))
    else:
        size = rng.randint(41, 8192) if size_class == "medium" else rng.randint(8193, LARGE)
    snippet = draw(st.text(min_size=1, max_size=4))
    if draw(st.booleans()):  # repetitive
        times = size // len(snippet.encode("utf-8"))
        return snippet * times if text else snippet.encode("utf-8") * times
    if not text:
        return rng.randbytes(size)
    # Random latin-1 averages 1.5 bytes of UTF-8 per character.
    chars = rng.randbytes(size * 2 // 3).decode("latin-1")
    return snippet.join(chars[i : i + 1000] for i in range(0, len(chars), 1000))


ping_payloads = st.binary(max_size=MAX_CONTROL_PAYLOAD)


@dataclass(frozen=True)
class Message:
    payload: str | bytes
    #: Outgoing fragment size, raised when needed to stay within MAX_FRAMES.
    fragment_size: int | None
    #: Pings to slip between the frames of this message: (where, payload).
    pings_inside: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class PingStep:
    payload: bytes


messages = st.builds(
    Message,
    payload=payloads(),
    fragment_size=st.one_of(st.none(), st.integers(1, 16), st.integers(1, 70_000)),
    pings_inside=st.lists(st.tuples(st.integers(0, 1000), ping_payloads), max_size=2).map(tuple),
)
steps = st.lists(st.one_of(messages, messages, st.builds(PingStep, ping_payloads)), max_size=6)


@st.composite
def chunkings(draw: st.DrawFn) -> list[int]:
    """Chunk sizes, cycled over the stream: byte by byte, header-sized or large pieces."""
    return draw(
        st.lists(
            st.one_of(st.integers(1, 16), st.integers(1, 300), st.integers(1, 1 << 17)),
            min_size=1,
            max_size=8,
        )
    )


@st.composite
def mask_sources(draw: st.DrawFn) -> Callable[[], bytes]:
    """Reproducible masking keys for the client role, all-zero ones included."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    zero_every = draw(st.sampled_from([0, 2, 8]))

    def source() -> bytes:
        if zero_every and rng.randrange(zero_every) == 0:
            return b"\x00\x00\x00\x00"
        return rng.randbytes(4)

    return source


@st.composite
def deflate_params(draw: st.DrawFn, *, context_takeover: bool) -> tuple[DeflateParams, int, int]:
    """Negotiated parameters plus a compressor's (mem_level, compress_level)."""
    params = DeflateParams(
        server_no_context_takeover=not context_takeover,
        client_no_context_takeover=not context_takeover,
        # 8 is negotiable for the client, but zlib can't compress with it.
        server_max_window_bits=draw(st.integers(9, 15)),
        client_max_window_bits=draw(st.integers(9, 15)),
    )
    return params, draw(st.integers(1, 9)), draw(st.integers(0, 9))


# ------------------------------------------------------------------- helpers


def split_frames(wire: bytes) -> list[bytes]:
    """Cut well-formed frames apart (test-side, just enough to find the boundaries)."""
    frames = []
    pos = 0
    while pos < len(wire):
        second = wire[pos + 1]
        length = second & 0x7F
        header = 2
        if length == 126:
            length = int.from_bytes(wire[pos + 2 : pos + 4], "big")
            header = 4
        elif length == 127:
            length = int.from_bytes(wire[pos + 2 : pos + 10], "big")
            header = 10
        if second & 0x80:
            header += 4
        frames.append(wire[pos : pos + header + length])
        pos += header + length
    return frames


def chunk(stream: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``stream`` with ``sizes`` cycled, each raised to keep within MAX_CHUNKS."""
    floor = len(stream) // MAX_CHUNKS
    chunks = []
    pos = index = 0
    while pos < len(stream):
        size = max(sizes[index % len(sizes)], floor)
        chunks.append(stream[pos : pos + size])
        pos += size
        index += 1
    return chunks


def payload_size(payload: str | bytes) -> int:
    return len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)


def expected_event(payload: str | bytes) -> Event:
    return TextMessage(payload) if isinstance(payload, str) else BinaryMessage(payload)


def write(sender: Connection, steps: list[Message | PingStep]) -> tuple[bytes, list[Event], list[bytes]]:
    """Send ``steps``; return the wire bytes, the events they must produce, and the ping payloads."""
    wire: list[bytes] = []
    events: list[Event] = []
    pings: list[bytes] = []
    for step in steps:
        if isinstance(step, PingStep):
            sender.send_ping(step.payload)
            wire.append(sender.data_to_send())
            events.append(Ping(step.payload))
            pings.append(step.payload)
            continue
        size = payload_size(step.payload)
        floor = -(-size // MAX_FRAMES)
        sender.fragment_size = None if step.fragment_size is None else max(step.fragment_size, floor, 1)
        if isinstance(step.payload, str):
            sender.send_text(step.payload)
        else:
            sender.send_binary(step.payload)
        frames = split_frames(sender.data_to_send())
        # Control frames may come between the frames of a fragmented message (§5.4).
        inside: dict[int, list[bytes]] = {}
        for where, ping in step.pings_inside:
            position = 1 + where % (len(frames) - 1) if len(frames) > 1 else 1
            inside.setdefault(position, []).append(ping)
        for index, data in enumerate(frames):
            for ping in inside.get(index, ()):
                sender.send_ping(ping)
                wire.append(sender.data_to_send())
                events.append(Ping(ping))
                pings.append(ping)
            wire.append(data)
        events.append(expected_event(step.payload))
        for ping in inside.get(len(frames), ()):  # after a single-frame message
            sender.send_ping(ping)
            wire.append(sender.data_to_send())
            events.append(Ping(ping))
            pings.append(ping)
    return b"".join(wire), events, pings


def read(receiver: Connection, stream: bytes, sizes: list[int]) -> list[Event]:
    """Feed ``stream`` in chunks, checking the memory bound after each one."""
    bound = receiver.max_message_size + MAX_UNPARSED_INPUT
    events: list[Event] = []
    for piece in chunk(stream, sizes):
        events += receiver.receive_data(piece)
        assert receiver.buffered_bytes <= bound, (
            f"{receiver.buffered_bytes} bytes buffered, over max_message_size + MAX_UNPARSED_INPUT = {bound}"
        )
    return events


def exchange(
    sender: Connection,
    receiver: Connection,
    steps: list[Message | PingStep],
    sizes: list[int],
    answer_sizes: list[int],
) -> None:
    """Send ``steps`` across, check what arrives, the pongs coming back and a clean close."""
    stream, expected, pings = write(sender, steps)
    assert read(receiver, stream, sizes) == expected
    assert receiver.buffered_bytes == 0

    # Every ping is answered, in order, and nothing else comes back.
    assert read(sender, receiver.data_to_send(), answer_sizes) == [Pong(ping) for ping in pings]

    # The closing handshake still works after all that.
    sender.send_close(CloseCode.NORMAL_CLOSURE, "done")
    assert read(receiver, sender.data_to_send(), sizes) == [CloseReceived(CloseCode.NORMAL_CLOSURE, "done")]
    assert read(sender, receiver.data_to_send(), answer_sizes) == [
        CloseReceived(CloseCode.NORMAL_CLOSURE, "")
    ]
    assert receiver.state is State.CLOSED and sender.state is State.CLOSED


def connections(
    direction: str,
    steps: list[Message | PingStep],
    mask_source: Callable[[], bytes],
    deflate: tuple[DeflateParams, int, int] | None = None,
    compression_threshold: int = 0,
) -> tuple[Connection, Connection]:
    """Build (sender, receiver); the receiver's limit is the largest message exactly."""
    sender_role, receiver_role = (
        (Role.CLIENT, Role.SERVER) if direction == "client to server" else (Role.SERVER, Role.CLIENT)
    )
    largest = max((payload_size(s.payload) for s in steps if isinstance(s, Message)), default=0)
    sender_codec = receiver_codec = None
    max_frame_size = None
    if deflate is not None:
        params, mem_level, compress_level = deflate
        sender_codec = PerMessageDeflate(
            params, is_server=sender_role is Role.SERVER, mem_level=mem_level, compress_level=compress_level
        )
        receiver_codec = PerMessageDeflate(params, is_server=receiver_role is Role.SERVER)
        # An incompressible message grows by a few bytes when deflated, and the
        # frame limit (max_message_size by default) applies to the wire payload.
        max_frame_size = largest + largest // 8 + 64
    sender = Connection(
        sender_role,
        deflate=sender_codec,
        compression_threshold=compression_threshold,
        mask_source=mask_source,
    )
    receiver = Connection(
        receiver_role,
        max_message_size=largest,
        max_frame_size=max_frame_size,
        deflate=receiver_codec,
        mask_source=mask_source,
    )
    return sender, receiver


DIRECTIONS = ["client to server", "server to client"]


# --------------------------------------------------------------------- tests


@pytest.mark.parametrize("direction", DIRECTIONS)
@given(steps=steps, sizes=chunkings(), answer_sizes=chunkings(), mask_source=mask_sources())
def test_any_messages_pings_fragmentation_and_chunking_round_trip_exactly(
    direction: str,
    steps: list[Message | PingStep],
    sizes: list[int],
    answer_sizes: list[int],
    mask_source: Callable[[], bytes],
) -> None:
    sender, receiver = connections(direction, steps, mask_source)
    exchange(sender, receiver, steps, sizes, answer_sizes)


@pytest.mark.parametrize("context_takeover", [True, False], ids=["context takeover", "no context takeover"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@given(
    data=st.data(),
    steps=steps,
    sizes=chunkings(),
    answer_sizes=chunkings(),
    mask_source=mask_sources(),
    compression_threshold=st.sampled_from([0, 0, 1, 64, 4096]),
)
def test_compressed_messages_round_trip_exactly_with_any_fragmentation_and_chunking(
    direction: str,
    context_takeover: bool,
    data: st.DataObject,
    steps: list[Message | PingStep],
    sizes: list[int],
    answer_sizes: list[int],
    mask_source: Callable[[], bytes],
    compression_threshold: int,
) -> None:
    deflate = data.draw(deflate_params(context_takeover=context_takeover))
    sender, receiver = connections(direction, steps, mask_source, deflate, compression_threshold)
    exchange(sender, receiver, steps, sizes, answer_sizes)


@pytest.mark.parametrize("direction", DIRECTIONS)
@given(message=messages, sizes=chunkings(), mask_source=mask_sources(), over=st.integers(1, 3))
def test_message_over_the_limit_fails_with_1009_at_the_frame_that_crosses_it(
    direction: str,
    message: Message,
    sizes: list[int],
    mask_source: Callable[[], bytes],
    over: int,
) -> None:
    """Whole or fragmented, a message ``over`` bytes too big is refused, never buffered whole."""
    size = payload_size(message.payload)
    assume(size >= over)
    sender, receiver = connections(direction, [message], mask_source)
    receiver.max_message_size = receiver.max_frame_size = size - over
    stream, expected, _ = write(sender, [message])
    events = read(receiver, stream, sizes)  # checks the memory bound with the lowered limit
    *pings, failure = events
    assert isinstance(failure, ConnectionFailed)
    assert failure.code == CloseCode.MESSAGE_TOO_BIG
    # Pings that came before the crossing frame were delivered; nothing else was.
    assert pings == expected[: len(pings)]
    assert all(isinstance(event, Ping) for event in pings)
