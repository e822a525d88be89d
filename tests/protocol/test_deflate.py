"""permessage-deflate (RFC 7692): negotiation in both roles and the codec."""

from __future__ import annotations

import itertools
import random
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.extensions.permessage_deflate import PerMessageDeflate as WebsocketsPerMessageDeflate
from websockets.frames import Frame
from websockets.frames import Opcode as WsOpcode
from websockets.headers import parse_extension

from django_rawws.exceptions import InvalidResponse, MessageTooBig, ProtocolError
from django_rawws.protocol.codes import CloseCode
from django_rawws.protocol.deflate import (
    DeflateOptions,
    DeflateParams,
    PerMessageDeflate,
    accept_answer,
    client_offer,
    compress_once,
    negotiate,
)

PMD = "permessage-deflate"
BIG = 1 << 30  # a max_size that never triggers


def offer(*params: tuple[str, str | None], name: str = PMD) -> list[tuple[str, list[tuple[str, str | None]]]]:
    return [(name, list(params))]


def accepted(offers: Any, options: DeflateOptions | None = None) -> tuple[str, DeflateParams]:
    """negotiate() for an offer the test expects to be accepted."""
    result = negotiate(offers, options or DeflateOptions())
    assert result is not None
    return result


def params(snct: bool = True, cnct: bool = False, sbits: int = 12, cbits: int = 15) -> DeflateParams:
    return DeflateParams(
        server_no_context_takeover=snct,
        client_no_context_takeover=cnct,
        server_max_window_bits=sbits,
        client_max_window_bits=cbits,
    )


def pair(p: DeflateParams) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    return PerMessageDeflate(p, is_server=True), PerMessageDeflate(p, is_server=False)


def inflate_in_pieces(codec: PerMessageDeflate, payload: bytes, cuts: list[int], max_size: int = BIG) -> bytes:
    """Feed ``payload`` split at ``cuts``, the last piece with final=True."""
    bounds = [0, *sorted(cuts), len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    out = []
    for index, piece in enumerate(pieces):
        chunk = codec.decompress(piece, final=index == len(pieces) - 1, max_size=max_size)
        max_size -= len(chunk)
        out.append(chunk)
    return b"".join(out)


# --- server negotiation (RFC 7692 §7.1) -------------------------------------------------------------


def test_default_answer_to_a_bare_offer_is_byte_exact() -> None:
    assert negotiate(offer(), DeflateOptions()) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        params(snct=True, cnct=False, sbits=12, cbits=15),
    )


def test_browser_offer_with_bare_client_max_window_bits_needs_no_client_cap_by_default() -> None:
    answer, negotiated = accepted(offer(("client_max_window_bits", None)), DeflateOptions())
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert negotiated.client_max_window_bits == 15


def test_answer_with_every_parameter_is_byte_exact() -> None:
    options = DeflateOptions(server_max_window_bits=14, client_max_window_bits=10, client_no_context_takeover=True)
    result = negotiate(
        offer(("server_max_window_bits", "13"), ("client_max_window_bits", None)),
        options,
    )
    assert result == (
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=13; client_max_window_bits=10"
        ),
        params(snct=True, cnct=True, sbits=13, cbits=10),
    )


@pytest.mark.parametrize(
    "bad_params",
    [
        [("x_unknown", None)],
        [("server_no_context_takeover", None), ("mystery", "1")],
    ],
)
def test_offer_with_unknown_parameter_is_skipped(bad_params: list[tuple[str, str | None]]) -> None:
    assert negotiate(offer(*bad_params), DeflateOptions()) is None


@pytest.mark.parametrize(
    "bad_params",
    [
        [("server_no_context_takeover", None), ("server_no_context_takeover", None)],
        [("client_no_context_takeover", None), ("Client_No_Context_Takeover", None)],
        [("server_max_window_bits", "10"), ("server_max_window_bits", "10")],
        [("client_max_window_bits", None), ("client_max_window_bits", "10")],
    ],
)
def test_offer_with_duplicated_parameter_is_skipped(bad_params: list[tuple[str, str | None]]) -> None:
    assert negotiate(offer(*bad_params), DeflateOptions()) is None


@pytest.mark.parametrize(
    "bad_param",
    [
        ("server_no_context_takeover", ""),
        ("server_no_context_takeover", "true"),
        ("client_no_context_takeover", "1"),
        ("server_max_window_bits", None),
        ("server_max_window_bits", ""),
        ("server_max_window_bits", "7"),
        ("server_max_window_bits", "16"),
        ("server_max_window_bits", "010"),
        ("server_max_window_bits", "+10"),
        ("server_max_window_bits", "ten"),
        ("client_max_window_bits", "7"),
        ("client_max_window_bits", "16"),
        ("client_max_window_bits", "09"),
        ("client_max_window_bits", ""),
    ],
)
def test_offer_with_invalid_value_is_skipped(bad_param: tuple[str, str | None]) -> None:
    assert negotiate(offer(bad_param), DeflateOptions()) is None


def test_offer_asking_server_max_window_bits_8_is_declined() -> None:
    assert negotiate(offer(("server_max_window_bits", "8")), DeflateOptions()) is None


def test_offer_with_server_max_window_bits_9_is_accepted_with_9() -> None:
    answer, negotiated = accepted(offer(("server_max_window_bits", "9")), DeflateOptions())
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"
    assert negotiated.server_max_window_bits == 9


def test_offer_with_client_max_window_bits_8_is_accepted() -> None:
    answer, negotiated = accepted(offer(("client_max_window_bits", "8")), DeflateOptions())
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert negotiated.client_max_window_bits == 8
    # A zlib client asked for 8 really compresses with 9: we must still decode it.
    peer = zlib.compressobj(6, zlib.DEFLATED, -9, 8)
    message = bytes(range(256)) * 4 + bytes(range(255, -1, -1)) * 4
    payload = (peer.compress(message) + peer.flush(zlib.Z_SYNC_FLUSH))[:-4]
    server = PerMessageDeflate(negotiated, is_server=True)
    assert server.decompress(payload, final=True, max_size=BIG) == message


def test_second_offer_is_accepted_when_the_first_fails() -> None:
    offers = [
        (PMD, [("server_max_window_bits", "8")]),
        (PMD, [("client_max_window_bits", "20")]),
        (PMD, [("client_no_context_takeover", None)]),
    ]
    answer, negotiated = accepted(offers, DeflateOptions())
    assert answer == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
    )
    assert negotiated.client_no_context_takeover is True


def test_first_acceptable_offer_wins_over_later_ones() -> None:
    offers = [(PMD, [("server_max_window_bits", "10")]), (PMD, [])]
    answer, _ = accepted(offers, DeflateOptions())
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"


def test_unknown_extension_is_ignored() -> None:
    offers = [("x-webkit-deflate-frame", []), ("x-foo", [("server_max_window_bits", "8")]), (PMD, [])]
    answer, _ = accepted(offers, DeflateOptions())
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert negotiate([("x-foo", [])], DeflateOptions()) is None


def test_no_offer_gives_none() -> None:
    assert negotiate([], DeflateOptions()) is None


def test_disabled_options_return_none() -> None:
    assert negotiate(offer(), DeflateOptions(enabled=False)) is None


def test_extension_and_parameter_names_compare_case_insensitively() -> None:
    offers = [("PerMessage-Deflate", [("Server_Max_Window_Bits", "10"), ("CLIENT_NO_CONTEXT_TAKEOVER", None)])]
    answer, negotiated = accepted(offers, DeflateOptions())
    assert answer == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
    )
    assert negotiated == params(snct=True, cnct=True, sbits=10, cbits=15)


def test_server_max_window_bits_offered_below_ours_is_used() -> None:
    _, negotiated = accepted(offer(("server_max_window_bits", "10")), DeflateOptions())
    assert negotiated.server_max_window_bits == 10


def test_server_max_window_bits_offered_above_ours_is_answered_with_ours() -> None:
    answer, negotiated = accepted(offer(("server_max_window_bits", "15")), DeflateOptions())
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert negotiated.server_max_window_bits == 12


def test_server_max_window_bits_offered_is_always_echoed_even_at_15() -> None:
    options = DeflateOptions(server_max_window_bits=15)
    answer, _ = accepted(offer(("server_max_window_bits", "15")), options)
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"


def test_server_max_window_bits_15_not_offered_is_left_out_as_the_default() -> None:
    answer, negotiated = accepted(offer(), DeflateOptions(server_max_window_bits=15))
    assert answer == "permessage-deflate; server_no_context_takeover"
    assert negotiated.server_max_window_bits == 15


def test_client_max_window_bits_cap_is_answered_when_offered_without_value() -> None:
    answer, negotiated = accepted(
        offer(("client_max_window_bits", None)), DeflateOptions(client_max_window_bits=11)
    )
    assert answer == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=11"
    )
    assert negotiated.client_max_window_bits == 11


def test_client_max_window_bits_cap_cannot_be_imposed_when_not_offered() -> None:
    answer, negotiated = accepted(offer(), DeflateOptions(client_max_window_bits=11))
    assert "client_max_window_bits" not in answer
    assert negotiated.client_max_window_bits == 15


def test_client_max_window_bits_value_offered_binds_the_client_without_an_echo() -> None:
    answer, negotiated = accepted(offer(("client_max_window_bits", "10")), DeflateOptions())
    assert "client_max_window_bits" not in answer
    assert negotiated.client_max_window_bits == 10
    answer, negotiated = accepted(
        offer(("client_max_window_bits", "10")), DeflateOptions(client_max_window_bits=12)
    )
    assert "client_max_window_bits" not in answer
    assert negotiated.client_max_window_bits == 10


def test_client_max_window_bits_value_offered_above_our_cap_is_lowered() -> None:
    answer, negotiated = accepted(
        offer(("client_max_window_bits", "14")), DeflateOptions(client_max_window_bits=9)
    )
    assert answer.endswith("; client_max_window_bits=9")
    assert negotiated.client_max_window_bits == 9


def test_server_no_context_takeover_asked_by_the_client_is_always_answered() -> None:
    options = DeflateOptions(server_no_context_takeover=False)
    answer, negotiated = accepted(offer(("server_no_context_takeover", None)), options)
    assert answer == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert negotiated.server_no_context_takeover is True


def test_server_keeps_context_takeover_when_options_allow_and_client_does_not_ask() -> None:
    answer, negotiated = accepted(offer(), DeflateOptions(server_no_context_takeover=False))
    assert answer == "permessage-deflate; server_max_window_bits=12"
    assert negotiated.server_no_context_takeover is False


def test_client_no_context_takeover_offered_is_echoed() -> None:
    answer, negotiated = accepted(offer(("client_no_context_takeover", None)), DeflateOptions())
    assert "; client_no_context_takeover" in answer
    assert negotiated.client_no_context_takeover is True


def test_client_no_context_takeover_asked_by_options_is_answered_unoffered() -> None:
    answer, negotiated = accepted(offer(), DeflateOptions(client_no_context_takeover=True))
    assert "; client_no_context_takeover" in answer
    assert negotiated.client_no_context_takeover is True


def test_answer_parses_back_into_the_same_parameters() -> None:
    """Our answer is a valid header: websockets' parser reads it back."""
    answer, _ = accepted(
        offer(("client_max_window_bits", None), ("server_max_window_bits", "11")),
        DeflateOptions(client_max_window_bits=9, client_no_context_takeover=True),
    )
    assert parse_extension(answer) == [
        (
            PMD,
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "11"),
                ("client_max_window_bits", "9"),
            ],
        )
    ]


# --- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": 16},
        {"mem_level": 0},
        {"mem_level": 10},
        {"compress_level": -1},
        {"compress_level": 10},
    ],
)
def test_options_out_of_range_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DeflateOptions(**kwargs)  # type: ignore[arg-type]


def test_options_accept_client_max_window_bits_8() -> None:
    assert DeflateOptions(client_max_window_bits=8).client_max_window_bits == 8


# --- client negotiation ---------------------------------------------------------------------------


def test_client_offer_with_default_options_is_byte_exact() -> None:
    assert client_offer(DeflateOptions()) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits"
    )


def test_client_offer_with_every_knob_is_byte_exact() -> None:
    options = DeflateOptions(
        server_no_context_takeover=False,
        client_no_context_takeover=True,
        server_max_window_bits=15,
        client_max_window_bits=10,
    )
    assert client_offer(options) == "permessage-deflate; client_no_context_takeover; client_max_window_bits=10"


def test_client_offer_refuses_an_8_bit_window_it_cannot_compress_with() -> None:
    with pytest.raises(ValueError):
        client_offer(DeflateOptions(client_max_window_bits=8))


def test_client_accepts_the_default_server_answer() -> None:
    options = DeflateOptions()
    answer, server_params = accepted(parse_extension(client_offer(options)), options)
    assert accept_answer(parse_extension(answer), options) == server_params == params()


def test_client_accepts_an_answer_given_as_a_single_element() -> None:
    element = (PMD, [("server_no_context_takeover", None), ("server_max_window_bits", "10")])
    assert accept_answer(element, DeflateOptions()) == params(sbits=10)


def test_client_accepts_answer_with_smaller_server_window_and_client_cap() -> None:
    answer = offer(
        ("server_no_context_takeover", None),
        ("server_max_window_bits", "9"),
        ("client_max_window_bits", "11"),
    )
    assert accept_answer(answer, DeflateOptions()) == params(sbits=9, cbits=11)


def test_client_accepts_unrequested_context_takeover_parameters() -> None:
    """§7.1.1: the server may reset its context or ask us to, unasked."""
    options = DeflateOptions(server_no_context_takeover=False, server_max_window_bits=15)
    answer = offer(("server_no_context_takeover", None), ("client_no_context_takeover", None))
    assert accept_answer(answer, options) == params(snct=True, cnct=True, sbits=15, cbits=15)


def test_client_keeps_its_offered_no_context_takeover_without_echo() -> None:
    options = DeflateOptions(client_no_context_takeover=True, client_max_window_bits=10)
    negotiated = accept_answer(offer(("server_no_context_takeover", None), ("server_max_window_bits", "12")), options)
    assert negotiated == params(cnct=True, cbits=10)


@pytest.mark.parametrize(
    ("answer", "options"),
    [
        pytest.param([], DeflateOptions(), id="empty"),
        pytest.param([("x-foo", [])], DeflateOptions(), id="unknown-extension"),
        pytest.param(
            [(PMD, [("server_no_context_takeover", None), ("server_max_window_bits", "12")])] * 2,
            DeflateOptions(),
            id="twice",
        ),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_max_window_bits", "12"), ("foo", None)),
            DeflateOptions(),
            id="unknown-param",
        ),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_no_context_takeover", None)),
            DeflateOptions(server_max_window_bits=15),
            id="duplicate-param",
        ),
        pytest.param(offer(("server_max_window_bits", "12")), DeflateOptions(), id="ignored-no-context-takeover"),
        pytest.param(offer(("server_no_context_takeover", None)), DeflateOptions(), id="ignored-window-cap"),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_max_window_bits", "13")),
            DeflateOptions(),
            id="server-window-above-offer",
        ),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_max_window_bits", "16")),
            DeflateOptions(),
            id="server-window-invalid",
        ),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_max_window_bits", "12"), ("client_max_window_bits", None)),
            DeflateOptions(),
            id="client-window-without-value",
        ),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_max_window_bits", "12"), ("client_max_window_bits", "11")),
            DeflateOptions(client_max_window_bits=10),
            id="client-window-above-offer",
        ),
        pytest.param(
            offer(("server_no_context_takeover", None), ("server_max_window_bits", "12"), ("client_max_window_bits", "8")),
            DeflateOptions(),
            id="client-window-8-we-cannot-compress-with",
        ),
    ],
)
def test_client_rejects_an_answer_that_breaks_its_offer(answer: Any, options: DeflateOptions) -> None:
    with pytest.raises(InvalidResponse):
        accept_answer(answer, options)


# --- negotiation interop with websockets' factories -----------------------------------------------------


def test_websockets_client_offer_is_accepted_and_our_answer_satisfies_it() -> None:
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=11, client_no_context_takeover=True)
    offered = [(PMD, list(factory.get_request_params()))]
    answer, negotiated = accepted(offered, DeflateOptions())
    ((_, answer_params),) = parse_extension(answer)
    theirs = factory.process_response_params(answer_params, [])
    ours = PerMessageDeflate(negotiated, is_server=True)
    for text in (b"hello " * 50, b"hello " * 51, b""):
        frame = theirs.encode(Frame(WsOpcode.TEXT, text))
        assert frame.rsv1
        assert ours.decompress(frame.data, final=True, max_size=BIG) == text
        payload = ours.compress(text)
        assert theirs.decode(Frame(WsOpcode.TEXT, payload, rsv1=True)).data == text


def test_our_client_offer_is_accepted_by_websockets_server() -> None:
    options = DeflateOptions(client_max_window_bits=11)
    ((_, offered_params),) = parse_extension(client_offer(options))
    factory = ServerPerMessageDeflateFactory(server_max_window_bits=10, client_max_window_bits=10)
    answer_params, theirs = factory.process_request_params(offered_params, [])
    negotiated = accept_answer([(PMD, answer_params)], options)
    assert negotiated == params(snct=True, cnct=False, sbits=10, cbits=10)
    ours = PerMessageDeflate(negotiated, is_server=False)
    for text in (b"abc" * 100, b"abc" * 100, b"xyz"):
        payload = ours.compress(text)
        assert theirs.decode(Frame(WsOpcode.BINARY, payload, rsv1=True)).data == text
        frame = theirs.encode(Frame(WsOpcode.BINARY, text))
        assert ours.decompress(frame.data, final=True, max_size=BIG) == text


# --- codec ---------------------------------------------------------------------------------------------

MESSAGES = [
    b"The quick brown fox jumps over the lazy dog. " * 20,
    b"The quick brown fox jumps over the lazy dog. " * 20,
    random.Random(7).randbytes(3000),
    b"",
    b'{"type": "chat.message", "text": "hello"}' * 40,
    b"x",
]


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("no_context_takeover", [True, False], ids=["no-takeover", "takeover"])
def test_round_trip_across_window_sizes_and_context_modes(bits: int, no_context_takeover: bool) -> None:
    p = params(snct=no_context_takeover, cnct=no_context_takeover, sbits=bits, cbits=bits)
    server, client = pair(p)
    for message in MESSAGES:
        assert client.decompress(server.compress(message), final=True, max_size=BIG) == message
        assert server.decompress(client.compress(message), final=True, max_size=BIG) == message


def test_context_takeover_makes_repeated_messages_smaller() -> None:
    server, client = pair(params(snct=False))
    message = MESSAGES[0]
    first, second = server.compress(message), server.compress(message)
    assert len(second) < len(first) // 4
    assert client.decompress(first, final=True, max_size=BIG) == message
    assert client.decompress(second, final=True, max_size=BIG) == message


def test_no_context_takeover_compresses_repeated_messages_identically() -> None:
    server, client = pair(params(snct=True))
    first, second = server.compress(MESSAGES[0]), server.compress(MESSAGES[0])
    assert first == second
    assert client.decompress(second, final=True, max_size=BIG) == MESSAGES[0]


@pytest.mark.parametrize("no_context_takeover", [True, False], ids=["no-takeover", "takeover"])
def test_message_fed_one_byte_at_a_time_inflates_the_same(no_context_takeover: bool) -> None:
    server, client = pair(params(snct=no_context_takeover, sbits=10))
    for message in MESSAGES:
        payload = server.compress(message)
        assert inflate_in_pieces(client, payload, list(range(1, len(payload)))) == message


def test_message_fed_in_random_pieces_inflates_the_same() -> None:
    server, client = pair(params(snct=False))
    rng = random.Random(1234)
    for _ in range(20):
        message = rng.choice(MESSAGES) * rng.randint(1, 3)
        payload = server.compress(message)
        cuts = rng.sample(range(len(payload) + 1), k=min(len(payload) + 1, rng.randint(0, 10)))
        assert inflate_in_pieces(client, payload, cuts) == message


def test_final_piece_may_be_empty() -> None:
    server, client = pair(params())
    payload = server.compress(MESSAGES[0])
    assert client.decompress(payload, final=False, max_size=BIG) + client.decompress(
        b"", final=True, max_size=BIG
    ) == MESSAGES[0]


def test_codec_takes_bytearray_and_memoryview() -> None:
    server, client = pair(params(snct=False))
    first = server.compress(bytearray(MESSAGES[0]))
    second = server.compress(memoryview(MESSAGES[4]))
    buffer = bytearray(b"junk" + first)
    out = client.decompress(memoryview(buffer)[4:10], final=False, max_size=BIG)
    out += client.decompress(memoryview(buffer)[10:], final=True, max_size=BIG)
    assert out == MESSAGES[0]
    assert client.decompress(bytearray(second), final=True, max_size=BIG) == MESSAGES[4]


def test_rfc7692_hello_example_is_byte_exact() -> None:
    """§7.2.3.1: "Hello" compressed is f2 48 cd c9 c9 07 00."""
    hello = bytes.fromhex("f248cdc9c90700")
    assert compress_once(b"Hello", window_bits=15, mem_level=8, compress_level=6) == hello
    _, client = pair(params(sbits=15))
    assert client.decompress(hello, final=True, max_size=BIG) == b"Hello"


def test_rfc7692_shared_context_example_is_byte_exact() -> None:
    """§7.2.3.2: the second "Hello" refers back to the first: f2 00 11 00 00."""
    p = params(snct=False, sbits=15)
    server = PerMessageDeflate(p, is_server=True, mem_level=8)
    assert server.compress(b"Hello") == bytes.fromhex("f248cdc9c90700")
    assert server.compress(b"Hello") == bytes.fromhex("f200110000")
    client = PerMessageDeflate(p, is_server=False)
    assert client.decompress(bytes.fromhex("f248cdc9c90700"), final=True, max_size=BIG) == b"Hello"
    assert client.decompress(bytes.fromhex("f200110000"), final=True, max_size=BIG) == b"Hello"


def test_rfc7692_fragmented_hello_example_inflates() -> None:
    """§7.2.3.5 (first form): "Hello" compressed, then split over two frames."""
    _, client = pair(params())
    assert client.decompress(bytes.fromhex("f248cd"), final=False, max_size=BIG) + client.decompress(
        bytes.fromhex("c9c90700"), final=True, max_size=BIG
    ) == b"Hello"


def test_rfc7692_uncompressed_block_example_inflates() -> None:
    """§7.2.3.4: a stored block carrying "Hello"."""
    _, client = pair(params())
    assert client.decompress(bytes.fromhex("000500faff48656c6c6f00"), final=True, max_size=BIG) == b"Hello"


def test_rfc7692_bfinal_block_example_inflates_and_next_message_starts_afresh() -> None:
    """§7.2.3.3: a block with BFINAL set ends the stream; the next message starts a new one."""
    _, client = pair(params(snct=False))
    assert client.decompress(bytes.fromhex("f348cdc9c90700"), final=True, max_size=BIG) == b"Hello"
    assert client.decompress(bytes.fromhex("f248cdc9c90700"), final=True, max_size=BIG) == b"Hello"


def test_data_after_a_bfinal_block_is_invalid_compressed_data() -> None:
    _, client = pair(params(snct=False))
    with pytest.raises(ProtocolError, match="invalid compressed data"):
        client.decompress(bytes.fromhex("f348cdc9c90700") + b"junk", final=True, max_size=BIG)
    assert client.decompress(bytes.fromhex("f348cdc9c90700"), final=False, max_size=BIG) == b"Hello"
    with pytest.raises(ProtocolError, match="invalid compressed data"):
        client.decompress(b"more", final=False, max_size=BIG)


def test_empty_message_compresses_to_a_single_zero_byte() -> None:
    """§7.2.3.6: an empty message is the empty stored block, 0x00 once the tail is removed."""
    for p in (params(snct=True), params(snct=False)):
        server, client = pair(p)
        assert server.compress(b"") == b"\x00"
        assert client.decompress(b"\x00", final=True, max_size=0) == b""


def test_empty_payload_is_an_empty_message_and_keeps_the_context() -> None:
    server, client = pair(params(snct=False))
    assert client.decompress(server.compress(MESSAGES[0]), final=True, max_size=BIG) == MESSAGES[0]
    assert client.decompress(b"", final=True, max_size=0) == b""
    assert client.decompress(b"", final=False, max_size=0) == b""
    assert client.decompress(b"", final=True, max_size=0) == b""
    assert client.decompress(server.compress(MESSAGES[1]), final=True, max_size=BIG) == MESSAGES[1]


def test_empty_messages_between_others_keep_the_context_in_sync() -> None:
    server, client = pair(params(snct=False))
    for message in (MESSAGES[0], b"", MESSAGES[0], b"", b"", MESSAGES[4]):
        assert client.decompress(server.compress(message), final=True, max_size=BIG) == message


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """100 MiB of zeros, compressed to about 100 KB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    zeros = bytes(1 << 20)
    data = b"".join(compressor.compress(zeros) for _ in range(100)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def test_zip_bomb_is_stopped_at_max_size_without_inflating_it(zip_bomb: bytes) -> None:
    max_size = 1 << 20
    _, client = pair(params(sbits=15))
    produced = 0
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBig) as excinfo:
            for offset in range(0, len(zip_bomb), 16384):
                piece = zip_bomb[offset : offset + 16384]
                final = offset + 16384 >= len(zip_bomb)
                produced += len(client.decompress(piece, final=final, max_size=max_size - produced))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert excinfo.value.close_code == CloseCode.MESSAGE_TOO_BIG
    assert produced <= max_size
    assert peak < 4 * max_size  # never anywhere near the 100 MiB


def test_zip_bomb_in_one_piece_is_stopped_at_max_size(zip_bomb: bytes) -> None:
    _, client = pair(params(sbits=15))
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBig):
            client.decompress(zip_bomb, final=True, max_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_max_size_is_inclusive() -> None:
    message = b"a" * 1000
    server, client = pair(params())
    payload = server.compress(message)
    assert client.decompress(payload, final=True, max_size=1000) == message
    with pytest.raises(MessageTooBig) as excinfo:
        client.decompress(payload, final=True, max_size=999)
    assert excinfo.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_max_size_is_what_the_message_may_still_grow_by_across_pieces() -> None:
    message = random.Random(3).randbytes(2000)
    server, client = pair(params(snct=True))
    payload = server.compress(message)
    half = len(payload) // 2
    first = client.decompress(payload[:half], final=False, max_size=len(message))
    assert 0 < len(first) < len(message)
    rest = client.decompress(payload[half:], final=True, max_size=len(message) - len(first))
    assert first + rest == message
    first = client.decompress(payload[:half], final=False, max_size=len(message))
    with pytest.raises(MessageTooBig):
        client.decompress(payload[half:], final=True, max_size=len(message) - len(first) - 1)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(b"\xff\xff\xff\xff", id="invalid-block-type"),
        pytest.param(bytes.fromhex("000500faee48656c6c6f"), id="stored-length-mismatch"),
        pytest.param(bytes.fromhex("f348cdc9c90700") + b"\x00", id="data-after-final-block"),
    ],
)
def test_corrupt_data_fails_with_1002(corrupt: bytes) -> None:
    _, client = pair(params(sbits=9))
    with pytest.raises(ProtocolError) as excinfo:
        client.decompress(corrupt, final=True, max_size=BIG)
    assert type(excinfo.value) is ProtocolError
    assert excinfo.value.close_code == CloseCode.PROTOCOL_ERROR
    assert excinfo.value.reason == "invalid compressed data"


def test_reference_beyond_the_negotiated_window_is_invalid_compressed_data() -> None:
    """We inflate with the negotiated window (at least 9 bits), not a lenient 15.

    zlib only enforces the window on references into output of earlier calls,
    so the payload is fed one byte at a time.
    """
    message = random.Random(5).randbytes(300) + bytes(1000) + random.Random(5).randbytes(300)
    peer = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    payload = (peer.compress(message) + peer.flush(zlib.Z_SYNC_FLUSH))[:-4]
    one_byte_cuts = list(range(1, len(payload)))
    _, client = pair(params(sbits=9))
    with pytest.raises(ProtocolError, match="invalid compressed data"):
        inflate_in_pieces(client, payload, one_byte_cuts)
    _, client = pair(params(sbits=15))
    assert inflate_in_pieces(client, payload, one_byte_cuts) == message


def test_zlib_objects_are_created_on_first_use_only() -> None:
    server, client = pair(params(snct=False, cnct=False))
    for codec in (server, client):
        assert codec._compressor is None and codec._decompressor is None
    payload = server.compress(b"hello")
    assert server._compressor is not None and server._decompressor is None
    assert client.decompress(payload, final=True, max_size=BIG) == b"hello"
    assert client._decompressor is not None and client._compressor is None


def test_no_context_takeover_holds_no_zlib_object_between_messages() -> None:
    server, client = pair(params(snct=True, cnct=True))
    payload = server.compress(b"hello")
    assert server._compressor is None
    head = client.decompress(payload[:2], final=False, max_size=BIG)
    assert client._decompressor is not None
    assert head + client.decompress(payload[2:], final=True, max_size=BIG) == b"hello"
    assert client._decompressor is None


def test_failure_drops_the_inflater() -> None:
    _, client = pair(params(snct=False))
    with pytest.raises(ProtocolError):
        client.decompress(b"\xff\xff", final=True, max_size=BIG)
    assert client._decompressor is None


def test_codec_keeps_no_instance_dict() -> None:
    server, _ = pair(params())
    assert not hasattr(server, "__dict__")


def test_codec_refuses_to_compress_with_an_8_bit_window() -> None:
    with pytest.raises(ValueError):
        PerMessageDeflate(params(cbits=8), is_server=False)
    assert PerMessageDeflate(params(cbits=8), is_server=True)._inflate_bits == 9


def test_compress_once_equals_a_shareable_codec_output() -> None:
    server = PerMessageDeflate(params(snct=True, sbits=11), is_server=True, mem_level=4, compress_level=7)
    assert server.shareable is True
    assert server.encoding_key == (11, 4, 7)
    for message in MESSAGES:
        assert server.compress(message) == compress_once(message, window_bits=11, mem_level=4, compress_level=7)


def test_codec_with_context_takeover_is_not_shareable() -> None:
    server = PerMessageDeflate(params(snct=False), is_server=True)
    assert server.shareable is False
    assert server.encoding_key is None


def test_client_role_shares_by_its_own_context_takeover() -> None:
    client = PerMessageDeflate(params(snct=False, cnct=True, cbits=10), is_server=False)
    assert client.encoding_key == (10, 5, 6)


# --- codec interop with websockets' PerMessageDeflate ------------------------------------------------------


@pytest.mark.parametrize("bits", [9, 12, 15])
@pytest.mark.parametrize("no_context_takeover", [True, False], ids=["no-takeover", "takeover"])
def test_websockets_codec_inflates_ours_and_we_inflate_theirs(bits: int, no_context_takeover: bool) -> None:
    p = params(snct=no_context_takeover, cnct=no_context_takeover, sbits=bits, cbits=bits)
    ours = PerMessageDeflate(p, is_server=True)
    theirs = WebsocketsPerMessageDeflate(
        remote_no_context_takeover=p.server_no_context_takeover,
        local_no_context_takeover=p.client_no_context_takeover,
        remote_max_window_bits=p.server_max_window_bits,
        local_max_window_bits=p.client_max_window_bits,
    )
    for message in MESSAGES:
        decoded = theirs.decode(Frame(WsOpcode.BINARY, ours.compress(message), rsv1=True), max_size=BIG)
        assert decoded.data == message
        encoded = theirs.encode(Frame(WsOpcode.BINARY, message))
        assert encoded.rsv1
        assert ours.decompress(encoded.data, final=True, max_size=BIG) == message


# --- property -------------------------------------------------------------------------------------------


@given(
    messages=st.lists(st.binary(max_size=2000), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    takeover=st.booleans(),
    bits=st.integers(9, 15),
)
def test_random_messages_in_random_pieces_round_trip(
    messages: list[bytes], seed: int, takeover: bool, bits: int
) -> None:
    server, client = pair(params(snct=not takeover, sbits=bits))
    rng = random.Random(seed)
    for message in messages:
        message *= rng.randint(1, 3)
        payload = server.compress(message)
        cuts = rng.sample(range(len(payload) + 1), k=min(len(payload) + 1, rng.randint(0, 8)))
        assert inflate_in_pieces(client, payload, cuts) == message
