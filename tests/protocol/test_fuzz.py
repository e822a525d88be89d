"""Fuzzing the parsers with what a hostile or broken peer may send.

Streams start from valid traffic (frames, or a handshake request) and are then
mutated: bits flipped, cut short, bytes inserted, deleted or duplicated, frame
headers declaring any length up to 2**64 - 1 in any encoding, plain random
bytes. They are fed in random chunks. Whatever arrives, only documented
outcomes may happen:

* ``Connection.receive_data`` never raises and always returns, quickly: a
  peer's error becomes one final ``ConnectionFailed`` event whose ``error``
  is a ``ProtocolError`` with close code 1002, 1007 or 1009, with the matching
  close frame queued; after it (or after a close frame) input yields nothing;
  ``buffered_bytes`` stays within ``max_message_size + MAX_UNPARSED_INPUT``
  after every chunk, and no message over the limit is delivered;
* the request parser and ``validate_request`` raise nothing but
  ``HandshakeError`` subclasses with a documented status, every one of which
  ``build_reject`` turns into a response, and hold at most ``max_head`` bytes
  (+2 for one skipped empty line) while the head is incomplete.

Each example must finish in 2 s of wall-clock time: generous for the work,
whose total is bounded by the stream sizes, but it catches a parser that goes
quadratic or loops.
"""

from __future__ import annotations

import base64
import random
import struct
import time
from collections.abc import Callable

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_rawws.exceptions import HandshakeError, InvalidState, ProtocolError
from django_rawws.protocol.codes import CloseCode, Opcode
from django_rawws.protocol.connection import MAX_UNPARSED_INPUT, Connection, Role, State
from django_rawws.protocol.deflate import DeflateOptions, DeflateParams, PerMessageDeflate
from django_rawws.protocol.events import (
    BinaryMessage,
    CloseReceived,
    ConnectionFailed,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from django_rawws.protocol.frames import encode_close_payload, encode_frame
from django_rawws.protocol.handshake import (
    accept_key,
    build_accept,
    build_reject,
    negotiate_extensions,
    validate_request,
)
from django_rawws.protocol.http import RequestParser
from django_rawws.protocol.masking import apply_mask

#: The server's message limit in these tests: small, so that limits are reached.
LIMIT = 64 * 1024
BOUND = LIMIT + MAX_UNPARSED_INPUT
FAILURE_CODES = {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG}
HANDSHAKE_STATUSES = {400, 405, 414, 426, 431}
SECONDS_PER_EXAMPLE = 2.0
#: Streams are cut into at most this many chunks (about), so that work per example stays bounded.
MAX_CHUNKS = 2000

#: Declared lengths worth trying: encoding edges, the limit's edges, the 64-bit edges.
EDGE_LENGTHS = [
    0, 1, 125, 126, 127, 65535, 65536, 65537, LIMIT - 1, LIMIT, LIMIT + 1,
    2**31 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
]  # fmt: skip


# -------------------------------------------------------------- frame streams


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
    length_bits: int | None = None,
) -> bytes:
    """Any frame header, honest or not, followed by ``payload`` (masked with ``mask``)."""
    declared = len(payload) if length is None else length
    if length_bits is None:
        length_bits = 7 if declared < 126 else 16 if declared < 65536 else 64
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    mask_bit = 0x80 if mask is not None else 0
    if length_bits == 7:
        header = struct.pack("!BB", first, mask_bit | (declared & 0x7F))
    elif length_bits == 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared & 0xFFFF)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared & (2**64 - 1))
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)


masks = st.one_of(st.just(b"\x00\x00\x00\x00"), st.binary(min_size=4, max_size=4))


@st.composite
def big_payload(draw: st.DrawFn) -> bytes:
    """Kilobytes around the limit, from a seed: random, or zeros (they inflate a lot)."""
    size = draw(st.sampled_from([1000, 65535, LIMIT - 1, LIMIT, LIMIT + 1, 2 * LIMIT]))
    if draw(st.booleans()):
        return bytes(size)
    return random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(size)


payload_bytes = st.one_of(st.binary(max_size=64), st.binary(max_size=64), big_payload())
text_bytes = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=16),  # mostly invalid UTF-8
)


@st.composite
def valid_frames(draw: st.DrawFn, codec: PerMessageDeflate | None) -> bytes:
    """Frames a client may legitimately send (a whole message, or a control frame)."""
    kind = draw(st.sampled_from(["text", "binary", "fragmented", "compressed", "ping", "pong", "close"]))
    mask = draw(masks)
    if kind in ("ping", "pong"):
        payload = draw(st.binary(max_size=125))
        return raw_frame(Opcode.PING if kind == "ping" else Opcode.PONG, payload, mask=mask)
    if kind == "close":
        code = draw(st.sampled_from([None, 1000, 1001, 1003, 1011, 3000, 4999]))
        reason = draw(st.text(max_size=20)) if code is not None else ""
        return raw_frame(Opcode.CLOSE, encode_close_payload(code, reason), mask=mask)
    if kind == "text":
        opcode = Opcode.TEXT
    elif kind == "binary":
        opcode = Opcode.BINARY
    else:
        opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
    payload = draw(text_bytes if opcode == Opcode.TEXT else payload_bytes)
    if kind == "compressed" and codec is not None:
        return raw_frame(opcode, codec.compress(payload), rsv=4, mask=mask)
    if kind != "fragmented":
        return raw_frame(opcode, payload, mask=mask)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    return b"".join(
        raw_frame(opcode if i == 0 else Opcode.CONTINUATION, piece, fin=i == len(pieces) - 1, mask=mask)
        for i, piece in enumerate(pieces)
    )


@st.composite
def odd_frames(draw: st.DrawFn) -> bytes:
    """A header declaring any length in any encoding, then some payload (often less).

    Opcode, flags and mask are usually plausible, so that the length checks
    are reached; sometimes anything goes.
    """
    opcode: int
    mask: bytes | None
    if draw(st.integers(0, 3)):
        opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION, Opcode.PING]))
        fin, rsv, mask = True, 0, draw(masks)
    else:
        opcode = draw(st.integers(0, 15))
        fin, rsv = draw(st.booleans()), draw(st.integers(0, 7))
        mask = draw(st.one_of(st.none(), masks))
    length = draw(st.one_of(st.sampled_from(EDGE_LENGTHS), st.integers(0, 2**64 - 1), st.integers(0, 300)))
    return raw_frame(
        opcode,
        draw(st.binary(max_size=64)),
        fin=fin,
        rsv=rsv,
        mask=mask,
        length=length,
        length_bits=draw(st.sampled_from([None, None, 7, 16, 64])),
    )


def mutations() -> st.SearchStrategy[Callable[[bytearray], None]]:
    """Edits of a byte stream; positions are taken modulo the current length."""

    def flip(position: int, bit: int) -> Callable[[bytearray], None]:
        def edit(stream: bytearray) -> None:
            if stream:
                stream[position % len(stream)] ^= 1 << bit

        return edit

    def truncate(position: int) -> Callable[[bytearray], None]:
        def edit(stream: bytearray) -> None:
            del stream[position % (len(stream) + 1) :]

        return edit

    def insert(position: int, data: bytes) -> Callable[[bytearray], None]:
        def edit(stream: bytearray) -> None:
            stream[position % (len(stream) + 1) : position % (len(stream) + 1)] = data

        return edit

    def delete(position: int, size: int) -> Callable[[bytearray], None]:
        def edit(stream: bytearray) -> None:
            start = position % (len(stream) + 1)
            del stream[start : start + size]

        return edit

    def duplicate(position: int, size: int, target: int) -> Callable[[bytearray], None]:
        def edit(stream: bytearray) -> None:
            start = position % (len(stream) + 1)
            piece = stream[start : start + size]
            at = target % (len(stream) + 1)
            stream[at:at] = piece

        return edit

    positions = st.integers(0, 2**20)
    return st.one_of(
        st.builds(flip, positions, st.integers(0, 7)),
        st.builds(truncate, positions),
        st.builds(insert, positions, st.binary(min_size=1, max_size=16)),
        st.builds(delete, positions, st.integers(1, 32)),
        st.builds(duplicate, positions, st.integers(1, 200), positions),
    )


@st.composite
def frame_streams(draw: st.DrawFn, codec: PerMessageDeflate | None) -> bytes:
    pieces = draw(
        st.lists(
            st.one_of(
                valid_frames(codec),
                valid_frames(codec),
                odd_frames(),
                st.binary(min_size=1, max_size=32),
            ),
            min_size=1,
            max_size=8,
        )
    )
    stream = bytearray(b"".join(pieces))
    for edit in draw(st.lists(mutations(), max_size=4)):
        edit(stream)
    return bytes(stream)


def chunks_of(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``data`` with ``sizes`` cycled, each raised to keep within MAX_CHUNKS."""
    floor = len(data) // MAX_CHUNKS
    out = []
    pos = index = 0
    while pos < len(data):
        size = max(sizes[index % len(sizes)], floor)
        out.append(data[pos : pos + size])
        pos += size
        index += 1
    return out


chunk_sizes = st.lists(st.one_of(st.integers(1, 8), st.integers(1, 70_000)), min_size=1, max_size=6)


# ---------------------------------------------------------------- frame tests


def check_event(event: Event, conn: Connection) -> None:
    """One event is of a documented kind and within the limits."""
    if isinstance(event, TextMessage):
        assert len(event.text.encode("utf-8")) <= LIMIT
    elif isinstance(event, BinaryMessage):
        assert len(event.data) <= LIMIT
    elif isinstance(event, (Ping, Pong)):
        assert len(event.payload) <= 125
    elif isinstance(event, CloseReceived):
        assert event.code == CloseCode.NO_STATUS_RCVD or 1000 <= event.code <= 4999
    elif isinstance(event, ConnectionFailed):
        assert isinstance(event.error, ProtocolError), f"{event.error!r} is not a ProtocolError"
        assert event.error.close_code in FAILURE_CODES, f"undocumented close code {event.error.close_code}"
        assert event.code == event.error.close_code
        assert conn.failure is event.error
        reason = event.reason.encode("utf-8")
        assert len(reason) <= 123
    else:
        pytest.fail(f"undocumented event {event!r}")


def assert_ends_with_close_frame(sent: bytes, failure: ConnectionFailed, *, masked: bool) -> None:
    """The output ends with the close frame carrying the failure's code and reason."""
    payload = encode_close_payload(failure.code, failure.reason)
    if not masked:
        assert sent.endswith(encode_frame(Opcode.CLOSE, payload)), "the failure's close frame is not queued"
        return
    tail = sent[-(6 + len(payload)) :]
    assert tail[:2] == bytes((0x88, 0x80 | len(payload))), "the failure's close frame is not queued"
    assert apply_mask(tail[6:], tail[2:6]) == payload


def fuzz_connection(conn: Connection, stream: bytes, sizes: list[int]) -> None:
    start = time.perf_counter()
    finished: Event | None = None  # CloseReceived or ConnectionFailed: nothing may follow
    for piece in chunks_of(stream, sizes):
        events = conn.receive_data(piece)
        sent = conn.data_to_send()
        if finished is not None:
            assert events == [], f"events after {finished!r}: {events!r}"
            assert sent == b""
        for index, event in enumerate(events):
            check_event(event, conn)
            if isinstance(event, (CloseReceived, ConnectionFailed)):
                assert index == len(events) - 1, f"{event!r} is not the last event"
                finished = event
        if isinstance(finished, ConnectionFailed) and events:
            assert_ends_with_close_frame(sent, finished, masked=conn.role is Role.CLIENT)
        assert conn.buffered_bytes <= BOUND, f"{conn.buffered_bytes} bytes buffered, over {BOUND}"
    # Shown by --hypothesis-show-statistics: how the examples ended.
    if isinstance(finished, ConnectionFailed):
        hypothesis.event(f"failed with {finished.code}")
    else:
        hypothesis.event("closed by the peer" if finished is not None else "still open")
    if finished is not None:
        assert conn.state is State.CLOSED and conn.close_expected()
        assert conn.receive_data(raw_frame(Opcode.PING, b"more", mask=b"abcd")) == []
        assert conn.buffered_bytes == 0
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_EXAMPLE, f"{len(stream)} bytes took {elapsed:.2f} s"


CODECS = {
    "no extension": None,
    "deflate, context takeover": DeflateParams(False, False, 15, 15),
    "deflate, no context takeover, small windows": DeflateParams(True, True, 9, 10),
}


@pytest.mark.parametrize("params", CODECS.values(), ids=CODECS.keys())
@given(data=st.data(), sizes=chunk_sizes)
def test_server_connection_meets_any_mutated_frame_stream_with_documented_outcomes_only(
    params: DeflateParams | None, data: st.DataObject, sizes: list[int]
) -> None:
    server_codec = None if params is None else PerMessageDeflate(params, is_server=True)
    client_codec = None if params is None else PerMessageDeflate(params, is_server=False)
    stream = data.draw(frame_streams(client_codec))
    conn = Connection(Role.SERVER, max_message_size=LIMIT, deflate=server_codec)
    fuzz_connection(conn, stream, sizes)


@given(stream=st.binary(max_size=2048), sizes=chunk_sizes, role=st.sampled_from(list(Role)))
def test_connection_meets_random_bytes_with_documented_outcomes_only(
    stream: bytes, sizes: list[int], role: Role
) -> None:
    codec = PerMessageDeflate(DeflateParams(False, False, 15, 15), is_server=role is Role.SERVER)
    conn = Connection(role, max_message_size=LIMIT, deflate=codec)
    fuzz_connection(conn, stream, sizes)


@given(
    stream=st.binary(max_size=512),
    bomb=st.integers(LIMIT + 1, 64 * LIMIT),
    fragments=st.integers(1, 8),
    sizes=chunk_sizes,
)
def test_zip_bomb_fails_with_1009_without_buffering_past_the_limit(
    stream: bytes, bomb: int, fragments: int, sizes: list[int]
) -> None:
    """Deflated zeros over the limit, whole or fragmented; then any input is ignored."""
    params = DeflateParams(True, True, 15, 15)
    compressed = PerMessageDeflate(params, is_server=False).compress(bytes(bomb))
    step = -(-len(compressed) // fragments)
    frames = [
        raw_frame(
            Opcode.BINARY if i == 0 else Opcode.CONTINUATION,
            compressed[start : start + step],
            fin=start + step >= len(compressed),
            rsv=4 if i == 0 else 0,
            mask=b"\x01\x02\x03\x04",
        )
        for i, start in enumerate(range(0, len(compressed), step))
    ]
    conn = Connection(Role.SERVER, max_message_size=LIMIT, deflate=PerMessageDeflate(params, is_server=True))
    events: list[Event] = []
    for piece in chunks_of(b"".join(frames), sizes):
        events += conn.receive_data(piece)
        assert conn.buffered_bytes <= BOUND
    assert [type(event) for event in events] == [ConnectionFailed]
    assert events[0].code == CloseCode.MESSAGE_TOO_BIG  # type: ignore[attr-defined]
    conn.data_to_send()
    assert conn.receive_data(stream) == [] and conn.data_to_send() == b"" and conn.buffered_bytes == 0


# ------------------------------------------------------------ handshake tests


def _valid_key(seed: int) -> str:
    return base64.b64encode(random.Random(seed).randbytes(16)).decode("ascii")


header_names = st.sampled_from(
    [
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
        "Origin",
        "Content-Length",
        "Transfer-Encoding",
        "X-Anything",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        [
            "websocket",
            "Upgrade",
            "keep-alive, Upgrade",
            "13",
            "8",
            "0",
            "chat, superchat",
            "permessage-deflate; client_max_window_bits",
            'permessage-deflate; server_max_window_bits="10", x-webkit-deflate-frame',
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=8",
            "permessage-deflate;;",
            'x; a="b\\"c"',
            "dGhlIHNhbXBsZSBub25jZQ==",
            "",
        ]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid handshake request, with extra or replaced headers and long lines sometimes."""
    method = draw(st.sampled_from(["GET"] * 10 + ["POST", "get"]))
    target = draw(st.sampled_from(["/", "/chat?room=1", "http://example.com/ws", "*"]))
    version = draw(st.sampled_from(["1.1"] * 10 + ["1.0", "2.0"]))
    headers = [
        ("Host", "example.com:8000"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", _valid_key(draw(st.integers(0, 1000)))),
        ("Sec-WebSocket-Version", "13"),
    ]
    extra = st.lists(st.tuples(header_names, header_values), min_size=1, max_size=4)
    for name, value in draw(st.one_of(st.just([]), extra)):
        if draw(st.booleans()):
            headers = [(n, v) for n, v in headers if n != name]
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    long_line = draw(st.sampled_from([0] * 8 + [60, 8190, 8200, 16400]))
    if long_line:
        headers.append(("X-Long", "a" * long_line))
    many = draw(st.sampled_from([0] * 8 + [120, 130]))
    headers += [(f"X-{i}", "v") for i in range(many)]
    lines = [f"{method} {target} HTTP/{version}", *(f"{n}: {v}" for n, v in headers), "", ""]
    head = "\r\n".join(lines).encode("latin-1")
    if draw(st.booleans()):
        head = b"\r\n" + head  # one empty line before the request line is allowed
    return head + draw(st.binary(max_size=16))  # the first frame may follow


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    stream = bytearray(draw(st.one_of(requests(), requests(), requests(), st.binary(max_size=256))))
    for edit in draw(st.one_of(st.just([]), st.lists(mutations(), min_size=1, max_size=3))):
        edit(stream)
    return bytes(stream)


LIMITS = {
    "default limits": {},
    "small limits": {"max_line": 64, "max_headers": 8, "max_head": 512},
}


@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
@given(stream=request_streams(), sizes=chunk_sizes)
def test_request_parser_and_validation_raise_only_handshake_errors_with_bounded_buffering(
    limits: dict[str, int], stream: bytes, sizes: list[int]
) -> None:
    parser = RequestParser(**limits)
    start = time.perf_counter()
    error: HandshakeError | None = None
    outcome = "incomplete"
    for piece in chunks_of(stream, sizes):
        try:
            request = parser.feed(piece)
            if request is None:
                # The parser has no public counter; its buffer is what it holds.
                assert len(parser._buffer) <= parser.max_head + 2
                continue
            assert stream.startswith((request.head, b"\r\n" + request.head))
            hs = validate_request(request)
        except HandshakeError as exc:
            error = exc
            break
        # Accepted: the server can answer, and negotiation never raises.
        negotiate_extensions(hs, DeflateOptions())
        response = build_accept(hs)
        assert response.startswith(b"HTTP/1.1 101 ")
        assert f"Sec-WebSocket-Accept: {accept_key(hs.key)}\r\n".encode() in response
        outcome = "accepted"
        break
    hypothesis.event(f"rejected with {error.status_code}" if error is not None else outcome)
    if error is not None:
        assert error.status_code in HANDSHAKE_STATUSES, f"undocumented status {error.status_code}"
        response = build_reject(error)  # the server can always answer
        assert response.startswith(f"HTTP/1.1 {error.status_code} ".encode())
        with pytest.raises(InvalidState):
            parser.feed(b"\r\n")
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_EXAMPLE, f"{len(stream)} bytes took {elapsed:.2f} s"
