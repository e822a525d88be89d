"""Tests of django_rawws.protocol.connection: bytes in, events and bytes out.

Input is built by hand in ``helpers`` and fed every way (whole, byte by byte,
random chunks, with trailing bytes), so each test also proves that chunking
changes nothing and that the parser's memory stays under its bound.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_rawws.exceptions import ConnectionClosed
from django_rawws.protocol.codes import CloseCode, Opcode
from django_rawws.protocol.connection import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_UNPARSED_INPUT,
    Connection,
    Role,
    State,
)
from django_rawws.protocol.deflate import DeflateParams, PerMessageDeflate
from django_rawws.protocol.events import (
    BinaryMessage,
    CloseReceived,
    ConnectionFailed,
    Ping,
    Pong,
    TextMessage,
)
from django_rawws.protocol.frames import MAX_CONTROL_PAYLOAD, MAX_HEADER_SIZE

from .helpers import (
    FIXED_MASK,
    RFC_MASK,
    RSV1,
    RSV2,
    RSV3,
    Outcome,
    assert_failed,
    close_payload,
    feed_all_ways,
    frame,
    masked_frame,
    receive,
    unmasked_frame,
    xor_mask,
)

CONTINUATION = Opcode.CONTINUATION
TEXT = Opcode.TEXT
BINARY = Opcode.BINARY
CLOSE = Opcode.CLOSE
PING = Opcode.PING
PONG = Opcode.PONG

RESERVED_OPCODES = [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
INVALID_UTF8 = {
    "ff": b"\xff",
    "lone-continuation": b"\x80",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above-10ffff": b"\xf4\x90\x80\x80",
}

RFC_MASKED_HELLO = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
RFC_UNMASKED_HELLO = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def server(**kwargs: Any) -> Callable[[], Connection]:
    return lambda: Connection(Role.SERVER, **kwargs)


def client(mask: bytes = FIXED_MASK, **kwargs: Any) -> Callable[[], Connection]:
    return lambda: Connection(Role.CLIENT, mask_source=lambda: mask, **kwargs)


def payload_of(size: int) -> bytes:
    return bytes(index % 251 for index in range(size))


def fragments(opcode: int, pieces: list[bytes], **kwargs: Any) -> bytes:
    """A message as masked frames, one per piece: the opcode, continuations, FIN on the last."""
    last = len(pieces) - 1
    return b"".join(
        masked_frame(opcode if index == 0 else CONTINUATION, piece, fin=index == last, **kwargs)
        for index, piece in enumerate(pieces)
    )


def fails(conn_factory: Callable[[], Connection], data: bytes, code: int, **kwargs: Any) -> ConnectionFailed:
    """Feed ``data`` all ways and assert the connection failed with ``code``."""
    return assert_failed(receive(conn_factory, data, **kwargs), code)


def split_at_every_position(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    for cut in range(len(data) + 1):
        yield data[:cut], data[cut:]


class TestPayloadLength:
    """5.2 Base Framing Protocol: payload length in 7, 7+16 or 7+64 bits"""

    def test_server_receives_rfc_masked_hello_as_a_text_message(self) -> None:
        outcome = receive(server(), RFC_MASKED_HELLO)
        assert outcome.events == [TextMessage("Hello")]
        assert outcome.sent == b""
        assert not outcome.close_expected
        assert outcome.state is State.OPEN

    @pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 65537])
    def test_server_receives_binary_message_of_every_length_class(self, size: int) -> None:
        payload = payload_of(size)
        outcome = receive(server(), masked_frame(BINARY, payload))
        assert outcome.events == [BinaryMessage(payload)]
        assert outcome.sent == b""

    def test_server_receives_rfc_256_byte_binary_with_a_16_bit_length(self) -> None:
        payload = payload_of(256)
        data = masked_frame(BINARY, payload)
        assert data[:4] == b"\x82\xfe\x01\x00"
        assert receive(server(), data).events == [BinaryMessage(payload)]

    def test_server_receives_rfc_64_kib_binary_with_a_64_bit_length(self) -> None:
        payload = payload_of(65536)
        data = masked_frame(BINARY, payload)
        assert data[:10] == b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00"
        assert receive(server(), data, bytewise_limit=1 << 17).events == [BinaryMessage(payload)]

    @pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, (1 << 63) | 5])
    def test_64_bit_length_with_the_top_bit_set_fails_with_1002(self, length: int) -> None:
        header = frame(BINARY, mask=FIXED_MASK, length=length, length_bits=64)
        fails(server(max_message_size=1 << 70), header, 1002)

    def test_64_bit_length_with_the_top_bit_set_fails_before_the_masking_key_arrives(self) -> None:
        header = frame(BINARY, mask=FIXED_MASK, length=1 << 63, length_bits=64)
        fails(server(), header[:10], 1002)

    @pytest.mark.parametrize(
        ("length", "length_bits"),
        [(0, 16), (5, 16), (125, 16), (0, 64), (125, 64), (126, 64), (65535, 64)],
    )
    def test_non_minimal_length_encoding_fails_with_1002(self, length: int, length_bits: int) -> None:
        data = masked_frame(BINARY, payload_of(length), length_bits=length_bits)
        fails(server(), data, 1002)

    def test_several_frames_in_one_chunk_yield_every_event_in_order(self) -> None:
        data = (
            masked_frame(TEXT, b"one")
            + masked_frame(PING, b"p")
            + masked_frame(BINARY, b"\x00two")
            + masked_frame(PONG, b"q")
            + masked_frame(TEXT, b"trois" * 30)
        )
        outcome = receive(server(), data)
        assert outcome.events == [
            TextMessage("one"),
            Ping(b"p"),
            BinaryMessage(b"\x00two"),
            Pong(b"q"),
            TextMessage("trois" * 30),
        ]
        assert outcome.sent == b"\x8a\x01p"

    def test_frame_split_in_two_at_every_position_yields_the_same_message(self) -> None:
        data = masked_frame(TEXT, "κόσμε".encode() * 30) + masked_frame(PING, b"hi")
        for head, tail in split_at_every_position(data):
            conn = Connection()
            events = conn.receive_data(head) + conn.receive_data(tail)
            assert events == [TextMessage("κόσμε" * 30), Ping(b"hi")], f"split at {len(head)}"
            assert conn.data_to_send() == b"\x8a\x02hi"

    def test_frame_split_over_many_chunks_is_reassembled(self) -> None:
        payload = payload_of(1000)
        outcomes = feed_all_ways(server(), masked_frame(BINARY, payload), seeds=range(10))
        for outcome in outcomes.values():
            assert outcome.events == [BinaryMessage(payload)]


class TestReservedBitsAndOpcodes:
    """5.2 Base Framing Protocol: RSV1-3 and opcodes"""

    @pytest.mark.parametrize("rsv", range(1, 8))
    @pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
    def test_rsv_bits_without_a_negotiated_extension_fail_with_1002(self, opcode: int, rsv: int) -> None:
        fails(server(), masked_frame(opcode, b"hi", rsv=rsv), 1002)

    def test_rsv1_on_a_continuation_frame_fails_with_1002(self) -> None:
        data = masked_frame(TEXT, b"He", fin=False) + masked_frame(CONTINUATION, b"llo", rsv=RSV1)
        fails(server(), data, 1002)

    @pytest.mark.parametrize("opcode", RESERVED_OPCODES)
    def test_reserved_opcode_fails_with_1002(self, opcode: int) -> None:
        fails(server(), masked_frame(opcode, b"hi"), 1002)

    @pytest.mark.parametrize("opcode", RESERVED_OPCODES)
    def test_reserved_opcode_fails_as_soon_as_the_first_two_bytes_arrive(self, opcode: int) -> None:
        fails(server(), masked_frame(opcode, b"hi")[:2], 1002)

    def test_reserved_opcode_inside_a_fragmented_message_fails_with_1002(self) -> None:
        data = masked_frame(TEXT, b"He", fin=False) + masked_frame(3, b"x")
        fails(server(), data, 1002)


class TestMasking:
    """5.3 Client-to-Server Masking"""

    @pytest.mark.parametrize("opcode", [TEXT, BINARY, CONTINUATION, PING, PONG, CLOSE])
    def test_server_receives_unmasked_frame_fails_with_1002(self, opcode: int) -> None:
        fails(server(), unmasked_frame(opcode, b""), 1002)

    def test_server_receives_unmasked_rfc_hello_fails_with_1002(self) -> None:
        failed = fails(server(), RFC_UNMASKED_HELLO, 1002)
        assert failed.reason

    def test_server_receives_unmasked_fragment_inside_a_message_fails_with_1002(self) -> None:
        data = masked_frame(TEXT, b"Hel", fin=False) + unmasked_frame(CONTINUATION, b"lo")
        fails(server(), data, 1002)

    @pytest.mark.parametrize("mask", [b"\x00\x00\x00\x00", FIXED_MASK, RFC_MASK, b"\xff\xff\xff\xff"])
    def test_server_unmasks_payload_with_any_key_including_zero(self, mask: bytes) -> None:
        payload = "κόσμε 😀".encode() * 9
        assert receive(server(), masked_frame(TEXT, payload, mask=mask)).events == [
            TextMessage(payload.decode())
        ]

    def test_server_sends_its_frames_unmasked(self) -> None:
        conn = Connection()
        conn.send_text("Hello")
        assert conn.data_to_send() == RFC_UNMASKED_HELLO

    def test_client_masks_what_it_sends_with_the_key_of_mask_source(self) -> None:
        conn = client(RFC_MASK)()
        conn.send_text("Hello")
        assert conn.data_to_send() == RFC_MASKED_HELLO

    def test_client_draws_a_fresh_key_for_every_frame(self) -> None:
        keys = iter([b"\x11\x11\x11\x11", b"\x22\x22\x22\x22", b"\x33\x33\x33\x33"])
        conn = Connection(Role.CLIENT, mask_source=lambda: next(keys))
        conn.send_text("a")
        conn.send_ping(b"b")
        conn.send_close(1000)
        assert conn.data_to_send() == (
            masked_frame(TEXT, b"a", mask=b"\x11\x11\x11\x11")
            + masked_frame(PING, b"b", mask=b"\x22\x22\x22\x22")
            + masked_frame(CLOSE, close_payload(1000), mask=b"\x33\x33\x33\x33")
        )

    def test_client_with_the_default_mask_source_sends_frames_a_server_reads(self) -> None:
        conn = Connection(Role.CLIENT)
        conn.send_text("Hello")
        conn.send_text("Hello")
        data = conn.data_to_send()
        assert data[1] == 0x85 and data[12] == 0x85
        assert receive(server(), data).events == [TextMessage("Hello"), TextMessage("Hello")]

    def test_client_receives_rfc_unmasked_hello(self) -> None:
        assert receive(client(), RFC_UNMASKED_HELLO).events == [TextMessage("Hello")]

    @pytest.mark.parametrize("opcode", [TEXT, PING, CLOSE])
    def test_client_receives_masked_frame_fails_with_1002_and_sends_a_masked_close(self, opcode: int) -> None:
        data = masked_frame(opcode, b"")
        assert_failed(receive(client(RFC_MASK), data), 1002, mask=RFC_MASK)


class TestFragmentation:
    """5.4 Fragmentation"""

    def test_server_reassembles_rfc_fragmented_hel_lo(self) -> None:
        data = masked_frame(TEXT, b"Hel", fin=False) + masked_frame(CONTINUATION, b"lo")
        outcome = receive(server(), data)
        assert outcome.events == [TextMessage("Hello")]
        assert outcome.sent == b""

    def test_client_reassembles_rfc_unmasked_fragmented_hel_lo(self) -> None:
        data = bytes([0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F])
        assert receive(client(), data).events == [TextMessage("Hello")]

    def test_binary_message_in_many_fragments_including_empty_ones_is_reassembled(self) -> None:
        pieces = [b"", b"a", b"", payload_of(200), b"bc", payload_of(70000), b""]
        outcome = receive(server(), fragments(BINARY, pieces))
        assert outcome.events == [BinaryMessage(b"".join(pieces))]

    def test_message_of_only_empty_fragments_is_an_empty_message(self) -> None:
        assert receive(server(), fragments(TEXT, [b"", b"", b""])).events == [TextMessage("")]

    def test_ping_between_fragments_is_answered_and_the_message_reassembled(self) -> None:
        data = (
            masked_frame(TEXT, b"Hel", fin=False)
            + masked_frame(PING, b"Hello")
            + masked_frame(CONTINUATION, b"l", fin=False)
            + masked_frame(PING, b"")
            + masked_frame(CONTINUATION, b"o")
        )
        outcome = receive(server(), data)
        assert outcome.events == [Ping(b"Hello"), Ping(b""), TextMessage("Hello")]
        assert outcome.sent == b"\x8a\x05Hello" + b"\x8a\x00"

    def test_pong_between_fragments_is_surfaced_and_the_message_reassembled(self) -> None:
        data = (
            masked_frame(BINARY, b"\x01", fin=False)
            + masked_frame(PONG, b"k")
            + masked_frame(CONTINUATION, b"\x02")
        )
        outcome = receive(server(), data)
        assert outcome.events == [Pong(b"k"), BinaryMessage(b"\x01\x02")]
        assert outcome.sent == b""

    def test_messages_after_a_fragmented_one_start_fresh(self) -> None:
        data = fragments(TEXT, [b"a", b"b"]) + masked_frame(BINARY, b"c") + fragments(BINARY, [b"d", b"e"])
        events = receive(server(), data).events
        assert events == [TextMessage("ab"), BinaryMessage(b"c"), BinaryMessage(b"de")]

    @pytest.mark.parametrize("payload", [b"", b"orphan"])
    def test_continuation_with_no_message_open_fails_with_1002(self, payload: bytes) -> None:
        fails(server(), masked_frame(CONTINUATION, payload), 1002)

    def test_continuation_after_the_final_fragment_fails_with_1002(self) -> None:
        data = fragments(TEXT, [b"He", b"llo"]) + masked_frame(CONTINUATION, b"!")
        outcome = receive(server(), data)
        assert outcome.events[0] == TextMessage("Hello")
        assert_failed(outcome, 1002)

    @pytest.mark.parametrize("opcode", [TEXT, BINARY])
    @pytest.mark.parametrize("fin", [True, False])
    def test_new_data_frame_while_a_message_is_open_fails_with_1002(self, opcode: int, fin: bool) -> None:
        data = masked_frame(TEXT, b"He", fin=False) + masked_frame(opcode, b"llo", fin=fin)
        fails(server(), data, 1002)

    def test_no_fragment_count_limit_below_4_mib_in_64_byte_fragments(self) -> None:
        size = 4 << 20
        piece = payload_of(64)
        body = FIXED_MASK + xor_mask(piece, FIXED_MASK)
        count = size // 64
        data = b"".join([b"\x02\xc0" + body, (b"\x00\xc0" + body) * (count - 2), b"\x80\xc0" + body])
        outcomes = feed_all_ways(server(max_message_size=size), data, seeds=(0,), trailing=b"")
        for outcome in outcomes.values():
            assert outcome.events == [BinaryMessage(piece * count)]


class TestControlFrames:
    """5.5 Control Frames"""

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_control_frame_over_125_bytes_fails_with_1002(self, opcode: int) -> None:
        payload = close_payload(1000, b"r" * 124)
        fails(server(), masked_frame(opcode, payload), 1002)

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_control_frame_over_125_bytes_fails_on_its_first_two_bytes(self, opcode: int) -> None:
        fails(server(), masked_frame(opcode, b"x" * 126)[:2], 1002)

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_fragmented_control_frame_fails_with_1002(self, opcode: int) -> None:
        fails(server(), masked_frame(opcode, b"", fin=False), 1002)

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_rsv1_on_a_control_frame_fails_with_1002(self, opcode: int) -> None:
        fails(server(), masked_frame(opcode, b"", rsv=RSV1), 1002)

    def test_control_frame_of_exactly_125_bytes_is_accepted(self) -> None:
        payload = payload_of(MAX_CONTROL_PAYLOAD)
        outcome = receive(server(), masked_frame(PING, payload))
        assert outcome.events == [Ping(payload)]
        assert outcome.sent == b"\x8a\x7d" + payload


class TestPingPong:
    """5.5.2 Ping and 5.5.3 Pong"""

    def test_ping_is_answered_with_a_pong_carrying_the_same_payload(self) -> None:
        outcome = receive(server(), masked_frame(PING, b"Hello", mask=RFC_MASK))
        assert outcome.events == [Ping(b"Hello")]
        assert outcome.sent == bytes([0x8A, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])

    def test_empty_ping_is_answered_with_an_empty_pong(self) -> None:
        outcome = receive(server(), masked_frame(PING, b""))
        assert outcome.events == [Ping(b"")]
        assert outcome.sent == b"\x8a\x00"

    def test_every_ping_is_answered_in_order(self) -> None:
        data = b"".join(masked_frame(PING, bytes([n])) for n in range(5))
        outcome = receive(server(), data)
        assert outcome.events == [Ping(bytes([n])) for n in range(5)]
        assert outcome.sent == b"".join(b"\x8a\x01" + bytes([n]) for n in range(5))

    def test_pong_is_surfaced_for_keepalive_and_not_answered(self) -> None:
        outcome = receive(server(), masked_frame(PONG, b"keepalive-7"))
        assert outcome.events == [Pong(b"keepalive-7")]
        assert outcome.sent == b""

    def test_ping_after_we_sent_a_close_is_reported_but_not_answered(self) -> None:
        conn = Connection()
        conn.send_close(1000)
        conn.data_to_send()
        assert conn.receive_data(masked_frame(PING, b"late")) == [Ping(b"late")]
        assert conn.data_to_send() == b""

    def test_client_answers_a_ping_with_a_masked_pong(self) -> None:
        outcome = receive(client(RFC_MASK), unmasked_frame(PING, b"Hello"))
        assert outcome.events == [Ping(b"Hello")]
        assert outcome.sent == bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])

    def test_send_ping_and_send_pong_queue_unmasked_frames(self) -> None:
        conn = Connection()
        conn.send_ping(b"Hello")
        conn.send_pong(b"Hello")
        assert conn.data_to_send() == b"\x89\x05Hello\x8a\x05Hello"

    @pytest.mark.parametrize("method", ["send_ping", "send_pong"])
    def test_sending_a_control_payload_over_125_bytes_raises_value_error(self, method: str) -> None:
        conn = Connection()
        getattr(conn, method)(b"x" * 125)
        with pytest.raises(ValueError):
            getattr(conn, method)(b"x" * 126)
        assert conn.data_to_send() == (b"\x89" if method == "send_ping" else b"\x8a") + b"\x7d" + b"x" * 125


class TestClose:
    """5.5.1 Close and 7.1 Closing the Connection"""

    @pytest.mark.parametrize("code", VALID_CLOSE_CODES)
    def test_valid_close_is_answered_with_a_close_echoing_the_code(self, code: int) -> None:
        outcome = receive(server(), masked_frame(CLOSE, close_payload(code, b"bye")))
        assert outcome.events == [CloseReceived(code, "bye")]
        assert outcome.sent == b"\x88\x02" + code.to_bytes(2, "big")
        assert outcome.close_expected
        assert outcome.state is State.CLOSED
        assert outcome.conn.close_code_received == code
        assert outcome.conn.close_reason_received == "bye"
        assert outcome.conn.close_code_sent == code

    def test_close_without_payload_is_reported_as_1005_and_answered_without_code(self) -> None:
        outcome = receive(server(), masked_frame(CLOSE, b""))
        assert outcome.events == [CloseReceived(CloseCode.NO_STATUS_RCVD, "")]
        assert outcome.sent == b"\x88\x00"
        assert outcome.close_expected

    def test_close_with_123_byte_reason_is_accepted(self) -> None:
        reason = "€" * 41
        outcome = receive(server(), masked_frame(CLOSE, close_payload(1001, reason.encode())))
        assert outcome.events == [CloseReceived(1001, reason)]
        assert outcome.sent == b"\x88\x02\x03\xe9"

    def test_close_with_a_one_byte_payload_fails_with_1002(self) -> None:
        fails(server(), masked_frame(CLOSE, b"\x03"), 1002)

    @pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
    def test_close_with_a_reserved_or_unassigned_code_fails_with_1002(self, code: int) -> None:
        fails(server(), masked_frame(CLOSE, close_payload(code)), 1002)

    def test_close_with_an_invalid_utf8_reason_fails_with_1007(self) -> None:
        fails(server(), masked_frame(CLOSE, close_payload(1000, b"\xce\xba\xff")), 1007)

    def test_data_after_a_close_is_ignored(self) -> None:
        data = (
            masked_frame(CLOSE, close_payload(1000))
            + masked_frame(TEXT, b"late")
            + masked_frame(PING, b"late")
            + b"\xff\xff garbage"
        )
        outcome = receive(server(), data)
        assert outcome.events == [CloseReceived(1000, "")]
        assert outcome.sent == b"\x88\x02\x03\xe8"
        assert outcome.conn.receive_data(masked_frame(TEXT, b"later")) == []
        assert outcome.conn.data_to_send() == b""
        assert outcome.conn.buffered_bytes == 0

    def test_close_in_the_middle_of_a_fragmented_message_drops_the_message(self) -> None:
        data = masked_frame(TEXT, b"Hel", fin=False) + masked_frame(CLOSE, close_payload(1001))
        outcome = receive(server(), data)
        assert outcome.events == [CloseReceived(1001, "")]
        assert outcome.sent == b"\x88\x02\x03\xe9"
        assert outcome.conn.buffered_bytes == 0

    def test_send_close_queues_a_close_and_moves_to_closing(self) -> None:
        conn = Connection()
        conn.send_close(1000, "bye")
        assert conn.data_to_send() == b"\x88\x05\x03\xe8bye"
        assert conn.state is State.CLOSING
        assert not conn.close_expected()
        assert conn.close_code_sent == 1000

    def test_send_close_without_a_code_sends_an_empty_close(self) -> None:
        conn = Connection()
        conn.send_close(None)
        assert conn.data_to_send() == b"\x88\x00"
        assert conn.state is State.CLOSING

    def test_peer_reply_to_our_close_moves_to_closed_without_another_close(self) -> None:
        conn = Connection()
        conn.send_close(1000)
        conn.data_to_send()
        assert conn.receive_data(masked_frame(CLOSE, close_payload(1000))) == [CloseReceived(1000, "")]
        assert conn.data_to_send() == b""
        assert conn.state is State.CLOSED
        assert conn.close_expected()

    def test_messages_received_while_closing_are_still_delivered(self) -> None:
        conn = Connection()
        conn.send_close(1001)
        data = masked_frame(TEXT, b"in flight") + masked_frame(CLOSE, close_payload(1001))
        assert conn.receive_data(data) == [TextMessage("in flight"), CloseReceived(1001, "")]
        assert conn.data_to_send() == b"\x88\x02\x03\xe9"

    def test_protocol_error_while_closing_fails_without_a_second_close(self) -> None:
        conn = Connection()
        conn.send_close(1000)
        conn.data_to_send()
        [failed] = conn.receive_data(unmasked_frame(TEXT, b"x"))
        assert isinstance(failed, ConnectionFailed) and failed.code == 1002
        assert conn.data_to_send() == b""
        assert conn.close_expected()
        assert conn.close_code_sent == 1000

    def test_send_close_with_a_reason_over_123_bytes_raises_value_error_and_stays_open(self) -> None:
        conn = Connection()
        with pytest.raises(ValueError):
            conn.send_close(1000, "r" * 124)
        assert conn.state is State.OPEN
        assert conn.data_to_send() == b""

    @pytest.mark.parametrize(
        ("close", "code"),
        [
            (lambda conn: conn.send_close(1000, "bye"), 1000),
            (lambda conn: conn.fail(1011), 1011),
            (lambda conn: conn.receive_data(masked_frame(CLOSE, close_payload(4001))), 4001),
            (lambda conn: conn.receive_data(unmasked_frame(TEXT, b"")), 1002),
            (lambda conn: conn.receive_eof(), 1006),
        ],
        ids=["send_close", "fail", "close_received", "failed", "eof"],
    )
    @pytest.mark.parametrize(
        "send",
        [
            lambda conn: conn.send_text("x"),
            lambda conn: conn.send_binary(b"x"),
            lambda conn: conn.send_ping(b""),
            lambda conn: conn.send_pong(b""),
            lambda conn: conn.send_close(1000),
            lambda conn: conn.queue_encoded(b"\x81\x01x"),
        ],
        ids=["send_text", "send_binary", "send_ping", "send_pong", "send_close", "queue_encoded"],
    )
    def test_send_after_close_raises_connection_closed_with_the_code(
        self, close: Callable[[Connection], object], code: int, send: Callable[[Connection], object]
    ) -> None:
        conn = Connection()
        close(conn)
        conn.data_to_send()
        with pytest.raises(ConnectionClosed) as caught:
            send(conn)
        assert caught.value.code == code
        assert conn.data_to_send() == b""

    def test_fail_sends_a_close_with_the_code_and_closes_at_once(self) -> None:
        conn = Connection()
        conn.fail(1011, "oops")
        assert conn.data_to_send() == b"\x88\x06\x03\xf3oops"
        assert conn.state is State.CLOSED
        assert conn.close_expected()
        assert conn.close_code_sent == 1011
        assert conn.receive_data(masked_frame(TEXT, b"ignored")) == []
        conn.fail(1001)
        assert conn.data_to_send() == b""

    def test_fail_truncates_a_long_reason_on_a_character_boundary(self) -> None:
        conn = Connection()
        conn.fail(1011, "é" * 100)
        assert conn.data_to_send() == b"\x88\x7c\x03\xf3" + "é".encode() * 61

    def test_fail_while_closing_sends_nothing_more(self) -> None:
        conn = Connection()
        conn.send_close(1000)
        conn.data_to_send()
        conn.fail(1011)
        assert conn.data_to_send() == b""
        assert conn.close_expected()

    def test_fail_drops_a_partial_message_and_buffered_input(self) -> None:
        conn = Connection()
        conn.receive_data(masked_frame(TEXT, b"Hel", fin=False) + masked_frame(CONTINUATION, b"lo")[:3])
        assert conn.buffered_bytes == 6
        conn.fail(1001)
        assert conn.buffered_bytes == 0

    def test_receive_eof_closes_drops_buffers_and_ignores_later_input(self) -> None:
        conn = Connection()
        conn.receive_data(masked_frame(BINARY, b"partial", fin=False) + b"\x80")
        assert conn.receive_eof() == []
        assert conn.state is State.CLOSED
        assert conn.close_expected()
        assert conn.buffered_bytes == 0
        assert conn.receive_data(masked_frame(TEXT, b"late")) == []
        assert conn.data_to_send() == b""


class TestUTF8:
    """8.1 Handling Errors in UTF-8-Encoded Data"""

    @pytest.mark.parametrize("text", ["", "Hello", "κόσμε", "€", "𝄞", "\U0010ffff", "\x00"])
    def test_valid_utf8_text_is_decoded(self, text: str) -> None:
        assert receive(server(), masked_frame(TEXT, text.encode())).events == [TextMessage(text)]

    @pytest.mark.parametrize("invalid", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
    def test_invalid_utf8_in_a_text_message_fails_with_1007(self, invalid: bytes) -> None:
        fails(server(), masked_frame(TEXT, b"ok " + invalid + b" ok"), 1007)

    @pytest.mark.parametrize("invalid", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
    def test_invalid_utf8_fails_no_later_than_the_end_of_the_fragment_completing_it(
        self, invalid: bytes
    ) -> None:
        # No final fragment ever arrives: the failure can't wait for the end of the message.
        data = masked_frame(TEXT, "κό".encode(), fin=False) + masked_frame(CONTINUATION, invalid, fin=False)
        outcome = receive(server(), data)
        assert_failed(outcome, 1007)

    def test_invalid_sequence_split_across_fragments_fails_on_the_fragment_completing_it(self) -> None:
        data = masked_frame(TEXT, b"ok\xed", fin=False) + masked_frame(CONTINUATION, b"\xa0", fin=False)
        conn = Connection()
        assert conn.receive_data(data) == []
        [failed] = conn.receive_data(masked_frame(CONTINUATION, b"\x80", fin=False))
        assert isinstance(failed, ConnectionFailed) and failed.code == 1007

    def test_invalid_utf8_in_the_first_unfinished_frame_fails_before_the_frame_ends(self) -> None:
        conn = Connection()
        data = masked_frame(TEXT, b"ok\xff" + b"x" * 500)
        [failed] = conn.receive_data(data[:20])
        assert isinstance(failed, ConnectionFailed) and failed.code == 1007

    def test_code_point_split_across_fragments_is_accepted(self) -> None:
        text = "a€𝄞κ"
        encoded = text.encode()
        for head, tail in split_at_every_position(encoded):
            events = receive(server(), fragments(TEXT, [head, tail])).events
            assert events == [TextMessage(text)], f"split at {len(head)}"

    def test_every_byte_in_its_own_fragment_is_accepted(self) -> None:
        text = "𝄞€κ!"
        data = fragments(TEXT, [bytes([byte]) for byte in text.encode()])
        assert receive(server(), data).events == [TextMessage(text)]

    @pytest.mark.parametrize("pieces", [[b"ok\xe2\x82"], [b"ok\xe2", b"\x82"], [b"ok\xf0\x9d", b"", b"\x84"]])
    def test_message_ending_inside_a_code_point_fails_with_1007(self, pieces: list[bytes]) -> None:
        fails(server(), fragments(TEXT, pieces), 1007)

    def test_binary_messages_are_not_checked_for_utf8(self) -> None:
        assert receive(server(), masked_frame(BINARY, b"\xff\xed\xa0\x80")).events == [
            BinaryMessage(b"\xff\xed\xa0\x80")
        ]

    def test_close_reason_is_checked_for_utf8(self) -> None:
        fails(server(), masked_frame(CLOSE, close_payload(1000, b"\xed\xa0\x80")), 1007)


class TestLimits:
    """10.4 Implementation-Specific Limits"""

    def test_default_maximum_message_size_is_1_mib_and_bounds_frames_too(self) -> None:
        conn = Connection()
        assert DEFAULT_MAX_MESSAGE_SIZE == 1 << 20
        assert conn.max_message_size == 1 << 20
        assert conn.max_frame_size == 1 << 20

    def test_message_of_exactly_the_default_limit_passes(self) -> None:
        pattern = b"\x00\x01\x02\x03"
        data = frame(BINARY, mask=FIXED_MASK, length=1 << 20) + xor_mask(pattern, FIXED_MASK) * (1 << 18)
        assert receive(server(), data, seeds=(0,)).events == [BinaryMessage(pattern * (1 << 18))]

    def test_message_one_byte_over_the_default_limit_fails_with_1009(self) -> None:
        fails(server(), frame(BINARY, mask=FIXED_MASK, length=(1 << 20) + 1), 1009)

    @pytest.mark.parametrize("opcode", [TEXT, BINARY])
    def test_message_of_exactly_the_limit_passes_in_one_frame_or_many(self, opcode: int) -> None:
        payload = b"x" * 1000
        event = TextMessage(payload.decode()) if opcode == TEXT else BinaryMessage(payload)
        assert receive(server(max_message_size=1000), masked_frame(opcode, payload)).events == [event]
        data = fragments(opcode, [payload[:300], payload[300:600], b"", payload[600:]])
        assert receive(server(max_message_size=1000), data).events == [event]

    def test_message_one_byte_over_the_limit_fails_with_1009(self) -> None:
        fails(server(max_message_size=1000), masked_frame(BINARY, b"x" * 1001), 1009)

    def test_fragmented_message_over_the_limit_fails_at_the_header_of_the_fragment_crossing_it(self) -> None:
        data = masked_frame(TEXT, b"x" * 600, fin=False) + frame(CONTINUATION, mask=FIXED_MASK, length=401)
        fails(server(max_message_size=1000), data, 1009)

    def test_text_limit_counts_utf8_bytes_not_characters(self) -> None:
        assert receive(server(max_message_size=6), masked_frame(TEXT, "€€".encode())).events == [
            TextMessage("€€")
        ]
        fails(server(max_message_size=6), masked_frame(TEXT, "€€a".encode()), 1009)

    def test_frame_of_exactly_the_frame_limit_passes_and_one_byte_more_fails_with_1009(self) -> None:
        factory = server(max_message_size=1000, max_frame_size=100)
        assert receive(factory, masked_frame(BINARY, b"x" * 100)).events == [BinaryMessage(b"x" * 100)]
        fails(factory, masked_frame(BINARY, b"x" * 101), 1009)

    def test_message_under_the_limit_in_frames_under_the_frame_limit_passes(self) -> None:
        factory = server(max_message_size=1000, max_frame_size=100)
        data = fragments(BINARY, [b"y" * 100] * 10)
        assert receive(factory, data).events == [BinaryMessage(b"y" * 1000)]
        fails(factory, fragments(BINARY, [b"y" * 100] * 10 + [b"z"]), 1009)

    @pytest.mark.parametrize("length", [1001, 65535, 65536, 1 << 40, (1 << 63) - 1])
    @pytest.mark.parametrize("opcode", [TEXT, BINARY])
    def test_1009_is_raised_when_only_the_header_of_an_oversized_frame_has_been_fed(
        self, opcode: int, length: int
    ) -> None:
        header = frame(opcode, mask=FIXED_MASK, length=length)
        fails(server(max_message_size=1000), header, 1009)

    def test_oversized_frame_fed_byte_by_byte_fails_on_the_last_header_byte(self) -> None:
        header = frame(BINARY, mask=FIXED_MASK, length=1 << 40)
        conn = Connection()
        for byte in header[:-1]:
            assert conn.receive_data(bytes([byte])) == []
            assert conn.buffered_bytes < MAX_HEADER_SIZE
        [failed] = conn.receive_data(header[-1:])
        assert isinstance(failed, ConnectionFailed) and failed.code == 1009
        assert conn.buffered_bytes == 0

    def test_bytes_held_never_exceed_the_limit_plus_one_frame_header(self) -> None:
        # Messages filling the limit, interleaved with the largest control
        # frames: feed_all_ways asserts the bound after every chunk.
        limit = 300
        ping = masked_frame(PING, b"p" * MAX_CONTROL_PAYLOAD)
        pieces = [b"a" * 100, b"b" * 100, b"c" * 99, b"d"]
        message = b"".join(
            masked_frame(TEXT if index == 0 else CONTINUATION, piece, fin=index == len(pieces) - 1) + ping
            for index, piece in enumerate(pieces)
        )
        data = message * 3 + masked_frame(BINARY, b"e" * limit)
        outcomes = feed_all_ways(server(max_message_size=limit), data, seeds=range(20))
        for outcome in outcomes.values():
            assert outcome.events[-1] == BinaryMessage(b"e" * limit)
            assert outcome.max_buffered <= limit + MAX_UNPARSED_INPUT
        # Byte by byte, the full message plus most of a ping is held at some point.
        assert outcomes["one byte at a time"].max_buffered >= limit - 1 + len(ping) - 1

    def test_documented_bound_is_one_full_header_plus_one_control_payload(self) -> None:
        assert MAX_UNPARSED_INPUT == MAX_HEADER_SIZE + MAX_CONTROL_PAYLOAD


class TestBufferedBytes:
    """10.4 Implementation-Specific Limits: what the parser holds"""

    def test_buffered_bytes_counts_an_incomplete_header(self) -> None:
        conn = Connection()
        conn.receive_data(masked_frame(TEXT, b"x" * 200)[:5])
        assert conn.buffered_bytes == 5

    def test_buffered_bytes_counts_the_unmasked_part_of_a_message(self) -> None:
        conn = Connection()
        data = masked_frame(BINARY, b"x" * 10, fin=False) + masked_frame(CONTINUATION, b"y" * 10)
        conn.receive_data(data[: 16 + 6 + 4])
        assert conn.buffered_bytes == 14
        assert conn.receive_data(data[26:]) == [BinaryMessage(b"x" * 10 + b"y" * 10)]
        assert conn.buffered_bytes == 0

    def test_buffered_bytes_counts_an_incomplete_control_frame(self) -> None:
        conn = Connection()
        conn.receive_data(masked_frame(PING, b"p" * 125)[:100])
        assert conn.buffered_bytes == 100


class TestSending:
    """5.4 Fragmentation and 5.6 Data Frames: what we send"""

    def test_send_text_and_send_binary_queue_one_frame_per_message(self) -> None:
        conn = Connection()
        conn.send_text("Hello")
        conn.send_binary(bytearray(b"\x00\x01"))
        conn.send_binary(memoryview(b"\x02"))
        assert conn.data_to_send() == RFC_UNMASKED_HELLO + b"\x82\x02\x00\x01" + b"\x82\x01\x02"
        assert conn.data_to_send() == b""

    def test_fragment_size_splits_outgoing_messages(self) -> None:
        conn = Connection(fragment_size=2)
        conn.send_text("Hello")
        assert conn.data_to_send() == b"\x01\x02He" + b"\x00\x02ll" + b"\x80\x01o"

    @pytest.mark.parametrize(
        ("size", "expected"),
        [
            (5, b"\x82\x05abcde"),
            (6, b"\x82\x05abcde"),
            (1, b"\x02\x01a\x00\x01b\x00\x01c\x00\x01d\x80\x01e"),
            (4, b"\x02\x04abcd\x80\x01e"),
        ],
    )
    def test_fragment_size_never_sends_an_empty_last_fragment(self, size: int, expected: bytes) -> None:
        conn = Connection(fragment_size=size)
        conn.send_binary(b"abcde")
        assert conn.data_to_send() == expected

    def test_fragment_size_leaves_control_frames_whole(self) -> None:
        conn = Connection(fragment_size=1)
        conn.send_ping(b"abc")
        conn.send_close(1000, "bye")
        assert conn.data_to_send() == b"\x89\x03abc\x88\x05\x03\xe8bye"

    @pytest.mark.parametrize("size", [0, -1])
    def test_fragment_size_below_one_raises_value_error(self, size: int) -> None:
        with pytest.raises(ValueError):
            Connection(fragment_size=size)

    @pytest.mark.parametrize("fragment_size", [1, 2, 3, 7, 64])
    def test_server_reassembles_what_a_fragmenting_client_sends(self, fragment_size: int) -> None:
        sender = Connection(Role.CLIENT, fragment_size=fragment_size, mask_source=lambda: RFC_MASK)
        text = "κόσμε €𝄞 " * 5
        sender.send_text(text)
        sender.send_binary(payload_of(150))
        sender.send_ping(b"between")
        data = sender.data_to_send()
        outcome = receive(server(), data)
        assert outcome.events == [TextMessage(text), BinaryMessage(payload_of(150)), Ping(b"between")]

    def test_encode_message_returns_the_frames_without_queuing_them(self) -> None:
        conn = Connection(fragment_size=3)
        assert conn.encode_message("Hello") == b"\x01\x03Hel\x80\x02lo"
        assert conn.encode_message(b"\x01\x02") == b"\x82\x02\x01\x02"
        assert conn.data_to_send() == b""

    def test_queue_encoded_queues_the_same_bytes_on_many_connections(self) -> None:
        connections = [Connection(), Connection()]
        frames = connections[0].encode_message("Hello")
        for conn in connections:
            conn.queue_encoded(frames)
            conn.send_text("!")
        assert [conn.data_to_send() for conn in connections] == [RFC_UNMASKED_HELLO + b"\x81\x01!"] * 2

    def test_client_encode_message_masks_with_mask_source(self) -> None:
        conn = client(RFC_MASK)()
        assert conn.encode_message("Hello") == RFC_MASKED_HELLO


def deflate_codec(*, is_server: bool, context_takeover: bool = True) -> PerMessageDeflate:
    no_takeover = not context_takeover
    return PerMessageDeflate(DeflateParams(no_takeover, no_takeover, 15, 15), is_server=is_server)


def deflating_server(**kwargs: Any) -> Callable[[], Connection]:
    return lambda: Connection(Role.SERVER, deflate=deflate_codec(is_server=True), **kwargs)


def deflated(data: bytes) -> bytes:
    """Compress with zlib directly, without the trailing 00 00 ff ff (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# RFC 7692 §7.2.3.1: "Hello" compressed.
RFC7692_HELLO = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])


class TestCompressedFrames:
    """RFC 7692 §6 Framing: RSV1 marks a compressed message once permessage-deflate is negotiated"""

    def test_server_receives_rfc7692_compressed_hello(self) -> None:
        outcome = receive(deflating_server(), masked_frame(TEXT, RFC7692_HELLO, rsv=RSV1))
        assert outcome.events == [TextMessage("Hello")]

    def test_server_receives_rfc7692_compressed_hello_in_two_fragments(self) -> None:
        data = masked_frame(TEXT, RFC7692_HELLO[:3], fin=False, rsv=RSV1) + masked_frame(
            CONTINUATION, RFC7692_HELLO[3:]
        )
        assert receive(deflating_server(), data).events == [TextMessage("Hello")]

    def test_server_receives_uncompressed_messages_when_deflate_is_negotiated(self) -> None:
        data = masked_frame(TEXT, b"plain") + fragments(BINARY, [b"a", b"b"])
        assert receive(deflating_server(), data).events == [TextMessage("plain"), BinaryMessage(b"ab")]

    def test_server_sends_rfc7692_compressed_hello_with_rsv1(self) -> None:
        conn = deflating_server()()
        conn.send_text("Hello")
        assert conn.data_to_send() == b"\xc1\x07" + RFC7692_HELLO

    def test_server_sends_short_messages_uncompressed_below_the_threshold(self) -> None:
        conn = deflating_server(compression_threshold=6)()
        conn.send_text("Hello")
        assert conn.data_to_send() == RFC_UNMASKED_HELLO

    def test_encode_message_compress_false_sends_without_rsv1(self) -> None:
        conn = deflating_server()()
        assert conn.encode_message("Hello", compress=False) == RFC_UNMASKED_HELLO
        assert conn.encode_message("Hello", compress=True) == b"\xc1\x07" + RFC7692_HELLO

    def test_fragmented_compressed_message_sets_rsv1_on_the_first_frame_only(self) -> None:
        conn = deflating_server(fragment_size=3)()
        conn.send_text("Hello")
        assert conn.data_to_send() == b"\x41\x03\xf2\x48\xcd" + b"\x00\x03\xc9\xc9\x07" + b"\x80\x01\x00"

    def test_server_reassembles_a_compressing_fragmenting_client(self) -> None:
        sender = Connection(
            Role.CLIENT,
            deflate=deflate_codec(is_server=False),
            fragment_size=5,
            mask_source=lambda: FIXED_MASK,
        )
        texts = ["Hello", "Hello", "κόσμε " * 40, ""]
        for text in texts:
            sender.send_text(text)
        assert receive(deflating_server(), sender.data_to_send()).events == [TextMessage(t) for t in texts]

    def test_rsv1_on_a_continuation_frame_fails_with_1002_even_with_deflate(self) -> None:
        data = masked_frame(TEXT, RFC7692_HELLO[:3], fin=False, rsv=RSV1) + masked_frame(
            CONTINUATION, RFC7692_HELLO[3:], rsv=RSV1
        )
        fails(deflating_server(), data, 1002)

    @pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
    def test_rsv1_on_a_control_frame_fails_with_1002_even_with_deflate(self, opcode: int) -> None:
        fails(deflating_server(), masked_frame(opcode, b"", rsv=RSV1), 1002)

    @pytest.mark.parametrize("rsv", [RSV2, RSV3, RSV1 | RSV2, RSV1 | RSV3])
    def test_rsv2_or_rsv3_fails_with_1002_even_with_deflate(self, rsv: int) -> None:
        fails(deflating_server(), masked_frame(TEXT, RFC7692_HELLO, rsv=rsv), 1002)

    def test_compressed_message_decompressing_to_exactly_the_limit_passes(self) -> None:
        payload = b"z" * 5000
        data = masked_frame(BINARY, deflated(payload), rsv=RSV1)
        assert receive(deflating_server(max_message_size=5000), data).events == [BinaryMessage(payload)]
        compressed = deflated(payload)
        data = (
            masked_frame(BINARY, compressed[:2], fin=False, rsv=RSV1)
            + masked_frame(CONTINUATION, compressed[2:5], fin=False)
            + masked_frame(CONTINUATION, compressed[5:])
        )
        assert receive(deflating_server(max_message_size=5000), data).events == [BinaryMessage(payload)]

    @pytest.mark.parametrize("fragmented", [False, True])
    def test_compressed_message_decompressing_past_the_limit_fails_with_1009(self, fragmented: bool) -> None:
        compressed = deflated(b"z" * 5001)
        assert len(compressed) < 100
        if fragmented:
            data = masked_frame(BINARY, compressed[:4], fin=False, rsv=RSV1) + masked_frame(
                CONTINUATION, compressed[4:]
            )
        else:
            data = masked_frame(BINARY, compressed, rsv=RSV1)
        fails(deflating_server(max_message_size=5000), data, 1009)

    def test_context_takeover_lets_the_second_hello_refer_to_the_first(self) -> None:
        # RFC 7692 §7.2.3.2: the same message again, compressed with the shared window.
        data = masked_frame(TEXT, RFC7692_HELLO, rsv=RSV1) + masked_frame(
            TEXT, b"\xf2\x00\x11\x00\x00", rsv=RSV1
        )
        assert receive(deflating_server(), data).events == [TextMessage("Hello"), TextMessage("Hello")]


class TestOracle:
    """The feeder the tests above rely on"""

    def test_outcomes_of_every_way_are_compared_by_value(self) -> None:
        # A guard on the helper itself: a failure compares equal across ways
        # although each way's ConnectionFailed carries its own exception object.
        outcomes = feed_all_ways(server(), unmasked_frame(TEXT, b"x"))
        keys = {repr(outcome.key()) for outcome in outcomes.values()}
        assert len(keys) == 1
        assert len(outcomes) == 7
        assert isinstance(next(iter(outcomes.values())), Outcome)
        assert list(itertools.islice(outcomes, 2)) == ["whole", "one byte at a time"]



def test_incompressible_message_of_exactly_the_limit_passes_compressed() -> None:
    """Deflate grows random data a little; the frame limit leaves room for that."""
    params = DeflateParams(True, True, 15, 15)
    payload = os.urandom(1000)
    client = Connection(Role.CLIENT, deflate=PerMessageDeflate(params, is_server=False))
    client.send_binary(payload)
    wire = client.data_to_send()
    server = Connection(Role.SERVER, max_message_size=1000, deflate=PerMessageDeflate(params, is_server=True))
    assert server.receive_data(wire) == [BinaryMessage(payload)]


def test_client_role_accepts_a_memoryview_of_a_whole_text_frame() -> None:
    client = Connection(Role.CLIENT)
    assert client.receive_data(memoryview(b"\x81\x02hi")) == [TextMessage("hi")]
