"""Tests of django_rawws.protocol.masking against a per-byte reference."""

from __future__ import annotations

import itertools

import pytest

from django_rawws.protocol import masking
from django_rawws.protocol.masking import ZERO_MASK, apply_mask, rotate_mask

from .helpers import FIXED_MASK, RFC_MASK, xor_mask

MASKS = [FIXED_MASK, RFC_MASK, b"\xff\xff\xff\xff", b"\x00\x00\x00\x01", b"\x80\x00\x00\x00"]

# Both code paths: the integer form below the crossover, translate from it on.
CROSSOVER = masking._TRANSLATE_FROM
SIZES = [*range(41), *range(CROSSOVER - 5, CROSSOVER + 6), 3 * CROSSOVER + 3]


def payload_of(size: int) -> bytes:
    # Every byte value appears, including 0x00 and 0xff at both ends.
    return bytes((index * 37 + 255) & 0xFF for index in range(size))


class TestMasking:
    """5.3 Client-to-Server Masking"""

    def test_rfc_example_masks_hello_with_37fa213d(self) -> None:
        assert apply_mask(b"Hello", RFC_MASK) == b"\x7f\x9f\x4d\x51\x58"

    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("mask", MASKS, ids=lambda mask: mask.hex())
    def test_apply_mask_matches_per_byte_reference_at_every_size(self, size: int, mask: bytes) -> None:
        data = payload_of(size)
        result = apply_mask(data, mask)
        assert type(result) is bytes
        assert result == xor_mask(data, mask)

    @pytest.mark.parametrize("size", [0, 1, 7, 40, CROSSOVER - 1, CROSSOVER, CROSSOVER + 1])
    @pytest.mark.parametrize("kind", [bytearray, memoryview])
    def test_apply_mask_accepts_bytearray_and_memoryview_on_both_paths(self, kind: type, size: int) -> None:
        data = payload_of(size)
        result = apply_mask(kind(data), RFC_MASK)
        assert type(result) is bytes
        assert result == xor_mask(data, RFC_MASK)

    def test_apply_mask_reads_a_memoryview_slice_without_its_surroundings(self) -> None:
        data = payload_of(CROSSOVER + 20)
        for start, stop in [(3, 17), (5, CROSSOVER + 9)]:
            view = memoryview(data)[start:stop]
            assert apply_mask(view, FIXED_MASK) == xor_mask(data[start:stop], FIXED_MASK)

    @pytest.mark.parametrize("size", [0, 1, 5, CROSSOVER + 1])
    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_zero_mask_returns_the_data_unchanged_as_bytes(self, kind: type, size: int) -> None:
        data = payload_of(size)
        result = apply_mask(kind(data), ZERO_MASK)
        assert type(result) is bytes
        assert result == data

    @pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 41, CROSSOVER, CROSSOVER + 3])
    @pytest.mark.parametrize("mask", MASKS, ids=lambda mask: mask.hex())
    def test_masking_twice_is_the_identity(self, size: int, mask: bytes) -> None:
        data = payload_of(size)
        assert apply_mask(apply_mask(data, mask), mask) == data

    def test_apply_mask_leaves_its_input_untouched(self) -> None:
        for size in (13, CROSSOVER + 13):
            data = bytearray(payload_of(size))
            apply_mask(data, RFC_MASK)
            assert data == payload_of(size)


class TestRotateMask:
    """5.3 Client-to-Server Masking: octet i of the payload uses mask octet i MOD 4"""

    def test_rotate_mask_by_one_starts_at_the_second_octet(self) -> None:
        assert rotate_mask(b"\x01\x02\x03\x04", 1) == b"\x02\x03\x04\x01"

    @pytest.mark.parametrize("offset", [0, 4, 8, 1 << 40])
    def test_rotate_mask_by_a_multiple_of_four_returns_the_mask(self, offset: int) -> None:
        assert rotate_mask(RFC_MASK, offset) == RFC_MASK

    @pytest.mark.parametrize("offset", range(8))
    def test_rotate_mask_is_the_mask_seen_from_offset(self, offset: int) -> None:
        expected = bytes(RFC_MASK[(offset + index) % 4] for index in range(4))
        assert rotate_mask(RFC_MASK, offset) == expected

    @pytest.mark.parametrize("offset", range(8))
    @pytest.mark.parametrize("size", [0, 1, 9, 40, CROSSOVER + 7])
    def test_unmasking_a_slice_at_offset_with_the_rotated_mask_matches_the_whole(
        self, offset: int, size: int
    ) -> None:
        data = payload_of(offset + size)
        whole = xor_mask(data, RFC_MASK)
        assert apply_mask(data[offset:], rotate_mask(RFC_MASK, offset)) == whole[offset:]

    def test_unmasking_in_arbitrary_pieces_matches_unmasking_at_once(self) -> None:
        data = payload_of(CROSSOVER * 2 + 11)
        cuts = [0, 1, 2, 5, 13, 100, CROSSOVER - 3, CROSSOVER + 6, 2 * CROSSOVER + 10, len(data)]
        pieces = [
            apply_mask(data[start:stop], rotate_mask(FIXED_MASK, start))
            for start, stop in itertools.pairwise(cuts)
        ]
        assert b"".join(pieces) == xor_mask(data, FIXED_MASK)
