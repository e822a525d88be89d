"""The conformance table (tests/conformance/cases.py) run against the sans-I/O core.

Each case drives an echo application on ``Connection(Role.SERVER)`` through
:class:`SansIOTransport` and must produce *exactly* its expected outcome: the
in-memory transport has no timing, so the Autobahn-tolerated alternatives
(``also_allowed``) are for the socket runs only. The tests after the
parametrized one check the driver itself, so that a broken oracle cannot
make the table pass.
"""

from __future__ import annotations

from collections import Counter

import pytest

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.deflate import DeflateParams
from tests.conformance.cases import (
    CASES,
    CASES_BY_ID,
    CATEGORIES,
    RSV1,
    Case,
    Frame,
    Msg,
    Outcome,
    SansIOTransport,
    client_params,
    run_case,
    send,
)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_echo_server_shows_the_expected_behaviour(case: Case) -> None:
    expected = case.expect
    outcome = run_case(case, SansIOTransport())
    assert outcome == expected


# ------------------------------------------------------------ the table itself


def test_every_category_has_several_cases() -> None:
    counts = Counter(case.category for case in CASES)
    assert set(counts) == set(CATEGORIES.values())
    assert min(counts.values()) >= 10


def test_case_ids_are_unique_and_indexed() -> None:
    assert len(CASES_BY_ID) == len(CASES)
    assert CASES_BY_ID["5.9"].category == "fragmentation"


def test_closed_after_defaults_to_the_last_action_of_the_case() -> None:
    case = CASES_BY_ID["2.5"]  # one action: an oversized ping
    assert case.expect == Outcome((), 1002, True, 0)
    assert CASES_BY_ID["7.1.1"].expect.closed_after == 1


def test_alternatives_are_accepted_but_are_not_the_expectation() -> None:
    case = CASES_BY_ID["3.3"]
    (alternative,) = case.also_allowed
    assert alternative != case.expect
    assert case.accepts(alternative) and case.accepts(case.expect)
    assert not case.accepts(Outcome())


# ------------------------------------------------------------- the frame builder


def test_frame_builder_reproduces_the_masked_hello_of_rfc_6455_section_5_7() -> None:
    frame = Frame(Opcode.TEXT, b"Hello")
    assert frame.to_bytes(b"\x37\xfa\x21\x3d") == bytes.fromhex("818537fa213d7f9f4d5158")


def test_frame_builder_reproduces_the_unmasked_fragments_of_section_5_7() -> None:
    first = Frame(Opcode.TEXT, b"Hel", fin=False, masked=False)
    last = Frame(Opcode.CONTINUATION, b"lo", masked=False)
    assert first.to_bytes(b"????") + last.to_bytes(b"????") == bytes.fromhex("010348656c80026c6f")


def test_frame_builder_uses_the_16_and_64_bit_lengths_of_section_5_7() -> None:
    key = b"\x00\x00\x00\x00"
    assert Frame(Opcode.BINARY, bytes(256), masked=False).to_bytes(key)[:4] == bytes.fromhex("827e0100")
    assert Frame(Opcode.BINARY, bytes(65536), masked=False).to_bytes(key)[:10] == bytes.fromhex(
        "827f0000000000010000"
    )


def test_frame_builder_sets_rsv_bits_forced_lengths_and_declared_lengths() -> None:
    key = b"\x01\x02\x03\x04"
    assert Frame(Opcode.TEXT, b"", rsv=RSV1).to_bytes(key) == bytes.fromhex("c180") + key
    assert Frame(Opcode.TEXT, b"", length_bits=16).to_bytes(key) == bytes.fromhex("81fe0000") + key
    assert (
        Frame(Opcode.BINARY, declared_length=1 << 62).to_bytes(key)
        == bytes.fromhex("82ff4000000000000000") + key
    )


def test_frame_builder_masks_long_payloads_like_a_byte_by_byte_xor() -> None:
    key = b"\x9a\x00\xff\x5c"
    payload = bytes(range(256)) * 40 + b"tail"
    built = Frame(Opcode.BINARY, payload).to_bytes(key)
    assert built[4:8] == key
    assert built[8:] == bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


# ---------------------------------------------------------------- the driver


def test_a_silent_server_makes_the_outcome_stalled() -> None:
    # The header announces 100 bytes but 3 come: the barrier ping is swallowed as payload.
    cut_short = send(Frame(Opcode.BINARY, b"abc", declared_length=100))
    outcome = run_case(Case("x.1", "a frame cut short", "test", (cut_short,), Outcome()), SansIOTransport())
    assert outcome.stalled
    assert outcome.close_code is None and not outcome.tcp_closed and outcome.closed_after is None


def test_msg_reprs_stay_short_for_big_payloads() -> None:
    text = repr(Msg("text", "x" * 1_000_000))
    assert len(text) < 120 and "1000000 chars" in text
    assert repr(Msg("pong", b"hi")) == "pong(b'hi')"


def test_msgs_of_different_kinds_or_types_differ() -> None:
    assert Msg("text", "a") != Msg("binary", b"a")
    assert Msg("pong", b"a") != Msg("binary", b"a")
    assert Msg("text", "a") == Msg("text", "a")


def test_client_params_follow_the_answer_and_the_offer_it_honours() -> None:
    params = client_params(
        "permessage-deflate; client_max_window_bits=9",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
    )
    assert params == DeflateParams(
        server_no_context_takeover=True,
        client_no_context_takeover=False,
        server_max_window_bits=12,
        client_max_window_bits=9,
    )


def test_client_params_pick_the_fallback_offer_the_answer_matches() -> None:
    params = client_params(
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=12",
    )
    assert params.client_no_context_takeover and params.server_max_window_bits == 12


def test_client_params_refuse_an_answer_that_honours_no_offer() -> None:
    with pytest.raises(AssertionError):
        client_params(
            "permessage-deflate; server_max_window_bits=9", "permessage-deflate; server_max_window_bits=12"
        )


def test_client_params_refuse_a_client_window_above_the_one_offered() -> None:
    with pytest.raises(AssertionError):
        client_params(
            "permessage-deflate; client_max_window_bits=9", "permessage-deflate; client_max_window_bits=10"
        )
