"""Tests of django_rawws.protocol.frames: frame serialization and close payloads."""

from __future__ import annotations

import pytest

from django_rawws.exceptions import InvalidPayload, ProtocolError
from django_rawws.protocol.codes import CloseCode, Opcode, is_valid_received_close_code
from django_rawws.protocol.frames import (
    MAX_CONTROL_PAYLOAD,
    MAX_HEADER_SIZE,
    encode_close_payload,
    encode_frame,
    parse_close_payload,
    random_mask,
)

from .helpers import FIXED_MASK, RFC_MASK, RSV1, close_payload, frame

TEXT = Opcode.TEXT
BINARY = Opcode.BINARY
CONTINUATION = Opcode.CONTINUATION
CLOSE = Opcode.CLOSE
PING = Opcode.PING
PONG = Opcode.PONG

# Written out from §7.4.1 and the IANA registry, independently of codes.py.
VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3001, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 5001, 65535]


def payload_of(size: int) -> bytes:
    return bytes(index % 251 for index in range(size))


class TestRFCExamples:
    """5.7 Examples"""

    def test_single_frame_unmasked_text_hello(self) -> None:
        assert encode_frame(TEXT, b"Hello") == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])

    def test_single_frame_masked_text_hello(self) -> None:
        expected = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
        assert encode_frame(TEXT, b"Hello", mask=RFC_MASK) == expected

    def test_fragmented_unmasked_text_hel_lo(self) -> None:
        assert encode_frame(TEXT, b"Hel", fin=False) == bytes([0x01, 0x03, 0x48, 0x65, 0x6C])
        assert encode_frame(CONTINUATION, b"lo") == bytes([0x80, 0x02, 0x6C, 0x6F])

    def test_unmasked_ping_hello(self) -> None:
        assert encode_frame(PING, b"Hello") == bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])

    def test_masked_pong_hello(self) -> None:
        expected = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
        assert encode_frame(PONG, b"Hello", mask=RFC_MASK) == expected

    def test_256_bytes_binary_in_a_single_unmasked_frame_uses_a_16_bit_length(self) -> None:
        payload = payload_of(256)
        assert encode_frame(BINARY, payload) == bytes([0x82, 0x7E, 0x01, 0x00]) + payload

    def test_64_kib_binary_in_a_single_unmasked_frame_uses_a_64_bit_length(self) -> None:
        payload = payload_of(65536)
        header = bytes([0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00])
        assert encode_frame(BINARY, payload) == header + payload


class TestPayloadLength:
    """5.2 Base Framing Protocol: payload length in 7, 7+16 or 7+64 bits, minimal"""

    @pytest.mark.parametrize(
        ("size", "length_field"),
        [
            (0, b"\x00"),
            (1, b"\x01"),
            (125, b"\x7d"),
            (126, b"\x7e\x00\x7e"),
            (127, b"\x7e\x00\x7f"),
            (65535, b"\x7e\xff\xff"),
            (65536, b"\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
            (65537, b"\x7f\x00\x00\x00\x00\x00\x01\x00\x01"),
        ],
    )
    def test_unmasked_frame_uses_the_shortest_length_encoding(self, size: int, length_field: bytes) -> None:
        payload = payload_of(size)
        assert encode_frame(BINARY, payload) == b"\x82" + length_field + payload

    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
    def test_masked_frame_sets_the_mask_bit_and_follows_the_length_with_the_key(self, size: int) -> None:
        payload = payload_of(size)
        encoded = encode_frame(BINARY, payload, mask=FIXED_MASK)
        assert encoded == frame(BINARY, payload, mask=FIXED_MASK)
        assert encoded[1] & 0x80

    def test_largest_header_is_14_bytes(self) -> None:
        header = encode_frame(BINARY, payload_of(65536), mask=FIXED_MASK)[:MAX_HEADER_SIZE]
        assert MAX_HEADER_SIZE == 14
        assert header == b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00" + FIXED_MASK


class TestHeaderBits:
    """5.2 Base Framing Protocol: FIN, RSV1 and opcode"""

    @pytest.mark.parametrize(
        ("fin", "rsv1", "first_byte"),
        [(True, False, 0x81), (False, False, 0x01), (True, True, 0xC1), (False, True, 0x41)],
    )
    def test_fin_and_rsv1_set_the_two_high_bits_of_the_first_byte(
        self, fin: bool, rsv1: bool, first_byte: int
    ) -> None:
        assert encode_frame(TEXT, b"x", fin=fin, rsv1=rsv1)[0] == first_byte

    @pytest.mark.parametrize("opcode", list(Opcode))
    def test_opcode_fills_the_low_nibble_of_the_first_byte(self, opcode: Opcode) -> None:
        assert encode_frame(opcode, b"")[:2] == bytes([0x80 | opcode, 0x00])

    @pytest.mark.parametrize("fin", [True, False])
    @pytest.mark.parametrize("rsv1", [True, False])
    @pytest.mark.parametrize("mask", [None, FIXED_MASK, RFC_MASK], ids=["unmasked", "fixed", "rfc"])
    @pytest.mark.parametrize("size", [0, 3, 126, 70000])
    def test_encode_frame_matches_the_hand_built_frame(
        self, fin: bool, rsv1: bool, mask: bytes | None, size: int
    ) -> None:
        payload = payload_of(size)
        expected = frame(TEXT, payload, fin=fin, rsv=RSV1 if rsv1 else 0, mask=mask)
        assert encode_frame(TEXT, payload, fin=fin, rsv1=rsv1, mask=mask) == expected

    def test_random_mask_is_four_fresh_bytes(self) -> None:
        masks = {random_mask() for _ in range(8)}
        assert all(len(mask) == 4 and type(mask) is bytes for mask in masks)
        assert len(masks) > 1


class TestEncodeClosePayload:
    """5.5.1 Close: a 2-byte status code, then a UTF-8 reason"""

    def test_code_is_two_bytes_in_network_order(self) -> None:
        assert encode_close_payload(CloseCode.NORMAL_CLOSURE) == b"\x03\xe8"
        assert encode_close_payload(4999) == b"\x13\x87"

    def test_reason_follows_the_code_in_utf8(self) -> None:
        assert encode_close_payload(1001, "bientôt") == close_payload(1001, "bientôt".encode())

    @pytest.mark.parametrize("code", [None, CloseCode.NO_STATUS_RCVD])
    def test_no_status_code_gives_an_empty_payload(self, code: int | None) -> None:
        assert encode_close_payload(code) == b""

    @pytest.mark.parametrize("code", [0, 999, 1004, 1006, 1015, 1016, 2999, 5000])
    def test_codes_that_never_go_on_the_wire_raise_value_error(self, code: int) -> None:
        with pytest.raises(ValueError, match="may not be sent"):
            encode_close_payload(code)

    @pytest.mark.parametrize("code", [None, CloseCode.NO_STATUS_RCVD])
    def test_reason_without_a_status_code_raises_value_error(self, code: int | None) -> None:
        with pytest.raises(ValueError):
            encode_close_payload(code, "why")

    @pytest.mark.parametrize("reason", ["r" * 123, "€" * 41, "é" * 61 + "x"])
    def test_reason_of_123_bytes_fills_a_125_byte_control_payload(self, reason: str) -> None:
        payload = encode_close_payload(1000, reason)
        assert len(payload) == MAX_CONTROL_PAYLOAD == 125
        assert parse_close_payload(payload) == (1000, reason)

    @pytest.mark.parametrize("reason", ["r" * 124, "€" * 42, "é" * 62])
    def test_reason_over_123_bytes_raises_value_error_on_encode(self, reason: str) -> None:
        with pytest.raises(ValueError):
            encode_close_payload(1000, reason)


class TestParseClosePayload:
    """7.4 Status Codes and 5.5.1 Close: what a received close frame may carry"""

    def test_empty_payload_means_no_status_code_1005(self) -> None:
        assert parse_close_payload(b"") == (CloseCode.NO_STATUS_RCVD, "")

    @pytest.mark.parametrize("payload", [b"\x03", b"\x00", b"\xff"])
    def test_one_byte_payload_raises_protocol_error_1002(self, payload: bytes) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_close_payload(payload)
        assert caught.value.close_code == 1002

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_reserved_or_unassigned_code_raises_protocol_error_1002(self, code: int) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_close_payload(close_payload(code, b"reason"))
        assert type(caught.value) is ProtocolError
        assert caught.value.close_code == 1002

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_sendable_code_is_accepted(self, code: int) -> None:
        assert parse_close_payload(close_payload(code)) == (code, "")

    def test_exactly_1000_to_1003_1007_to_1014_and_3000_to_4999_are_accepted(self) -> None:
        expected = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}
        accepted = set()
        for code in range(1 << 16):
            try:
                parse_close_payload(close_payload(code))
            except ProtocolError as exc:
                assert exc.close_code == 1002
            else:
                accepted.add(code)
        assert accepted == expected
        assert {code for code in range(1 << 16) if is_valid_received_close_code(code)} == expected

    def test_reason_is_decoded_from_utf8(self) -> None:
        assert parse_close_payload(close_payload(1000, "κόσμε".encode())) == (1000, "κόσμε")

    @pytest.mark.parametrize(
        "reason",
        [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82", b"\x80"],
        ids=["ff", "overlong", "surrogate", "above-10ffff", "truncated", "lone-continuation"],
    )
    def test_invalid_utf8_reason_raises_invalid_payload_1007(self, reason: bytes) -> None:
        with pytest.raises(InvalidPayload) as caught:
            parse_close_payload(close_payload(1000, reason))
        assert caught.value.close_code == 1007

    def test_invalid_code_is_reported_before_an_invalid_reason(self) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_close_payload(close_payload(1005, b"\xff"))
        assert caught.value.close_code == 1002

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_encoded_payload_parses_back_to_code_and_reason(self, code: int) -> None:
        assert parse_close_payload(encode_close_payload(code, "au revoir ✓")) == (code, "au revoir ✓")
