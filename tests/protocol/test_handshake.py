"""The opening handshake (RFC 6455 §4), both roles: django_rawws.protocol.handshake."""

from __future__ import annotations

import base64

import pytest
import websockets.http11
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from django_rawws.exceptions import (
    BadRequest,
    Forbidden,
    HandshakeError,
    InvalidResponse,
    InvalidState,
    MethodNotAllowed,
    ServiceUnavailable,
    UpgradeRequired,
)
from django_rawws.protocol.deflate import DeflateOptions, DeflateParams
from django_rawws.protocol.handshake import (
    GUID,
    ClientHandshake,
    HandshakeRequest,
    ServerHandshake,
    accept_key,
    build_accept,
    build_reject,
    is_websocket_upgrade,
    negotiate_extensions,
    parse_extensions,
    select_subprotocol,
    validate_request,
)
from django_rawws.protocol.http import Request, RequestParser, Response, ResponseParser

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# RFC 6455 §1.2 and §1.3: the sample handshake.
RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 §5.7 masked "Hello"

VALID_FIELDS: list[tuple[str, str]] = [
    ("Host", "example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def make_request(
    fields: list[tuple[str, str]] | None = None,
    *,
    drop: tuple[str, ...] = (),
    add: list[tuple[str, str]] | None = None,
    request_line: str = "GET /chat HTTP/1.1",
) -> Request:
    """Parse a handshake built from VALID_FIELDS minus ``drop`` plus ``add``."""
    fields = [(n, v) for n, v in (fields if fields is not None else VALID_FIELDS) if n not in drop]
    fields += add or []
    head = request_line.encode() + b"\r\n"
    head += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in fields) + b"\r\n"
    request = RequestParser().feed(head)
    assert request is not None
    return request


def parse_response(data: bytes) -> Response:
    response = ResponseParser().feed(data)
    assert response is not None
    return response


def assert_rejected(
    request: Request,
    exc_class: type[HandshakeError],
    status: int,
    *,
    reason: str,
    headers: list[tuple[str, str]],
) -> None:
    """validate_request raises ``exc_class`` with ``status``; build_reject's bytes say the same."""
    with pytest.raises(exc_class) as info:
        validate_request(request)
    exc = info.value
    assert type(exc) is exc_class
    assert exc.status_code == status
    assert exc.reason == reason
    data = build_reject(exc)
    response = parse_response(data)
    assert response.status == status
    body = (reason + "\n").encode()
    assert response.headers.raw_items() == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *headers,
    ]
    assert data.endswith(b"\r\n\r\n" + body)


CLOSE = [("Connection", "close")]
UPGRADE_REQUIRED = [
    ("Connection", "Upgrade, close"),
    ("Sec-WebSocket-Version", "13"),
    ("Upgrade", "websocket"),
]


# -- accept key --------------------------------------------------------------------------------------------


def test_accept_key_matches_the_rfc_6455_example() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(RFC_KEY) == RFC_ACCEPT


# -- server: the RFC sample end to end --------------------------------------------------------------------


def test_server_accepts_the_rfc_sample_handshake_byte_exact() -> None:
    request = RequestParser().feed(RFC_REQUEST)
    assert request is not None
    assert is_websocket_upgrade(request)
    hs = validate_request(request)
    assert hs == HandshakeRequest(
        request=request,
        key=RFC_KEY,
        subprotocols=["chat", "superchat"],
        extensions=[],
        host="server.example.com",
        path="/chat",
        query_string="",
    )
    assert hs.headers is request.headers
    subprotocol = select_subprotocol(hs.subprotocols, ["chat"])
    assert build_accept(hs, subprotocol=subprotocol) == RFC_RESPONSE


def test_server_keeps_host_path_and_query_of_the_handshake() -> None:
    hs = validate_request(make_request(request_line="GET /ws/room/%C3%A9?token=a%20b&x= HTTP/1.1"))
    assert (hs.host, hs.path, hs.query_string) == ("example.com", "/ws/room/%C3%A9", "token=a%20b&x=")


def test_server_handshake_reads_the_request_in_any_chunking_and_keeps_trailing_bytes() -> None:
    whole = ServerHandshake().receive_data(RFC_REQUEST)
    assert whole is not None

    bytewise = ServerHandshake()
    for index in range(len(RFC_REQUEST) - 1):
        assert bytewise.receive_data(RFC_REQUEST[index : index + 1]) is None
    assert bytewise.receive_data(RFC_REQUEST[-1:]) == whole
    assert bytewise.trailing == b""

    with_frame = ServerHandshake()
    assert with_frame.receive_data(RFC_REQUEST + FRAME) == whole
    assert with_frame.trailing == FRAME
    with pytest.raises(InvalidState):
        with_frame.receive_data(FRAME)


def test_server_handshake_applies_its_limits() -> None:
    with pytest.raises(HandshakeError) as info:
        ServerHandshake(max_head=100).receive_data(RFC_REQUEST)
    assert info.value.status_code == 431


# -- is_websocket_upgrade ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upgrade", "expected"),
    [
        (["websocket"], True),
        (["WebSocket"], True),
        (["h2c, websocket"], True),
        (["h2c", "websocket"], True),
        (["h2c"], False),
        (["websocket/13"], False),
        ([], False),
    ],
)
def test_is_websocket_upgrade_looks_for_the_websocket_token(upgrade: list[str], expected: bool) -> None:
    request = make_request(drop=("Upgrade",), add=[("Upgrade", value) for value in upgrade])
    assert is_websocket_upgrade(request) is expected


# -- validate_request: one test per rejection --------------------------------------------------------------


def test_method_other_than_get_gets_405_with_allow_get() -> None:
    assert_rejected(
        make_request(request_line="POST /chat HTTP/1.1"),
        MethodNotAllowed,
        405,
        reason="Method Not Allowed: a WebSocket handshake is a GET",
        headers=[*CLOSE, ("Allow", "GET")],
    )


def test_method_compares_case_sensitively_so_lowercase_get_gets_405() -> None:
    with pytest.raises(MethodNotAllowed):
        validate_request(make_request(request_line="get /chat HTTP/1.1"))


def test_http_1_0_gets_400() -> None:
    assert_rejected(
        make_request(request_line="GET /chat HTTP/1.0"),
        BadRequest,
        400,
        reason="a WebSocket handshake needs HTTP/1.1 or later",
        headers=CLOSE,
    )


def test_missing_host_gets_400() -> None:
    assert_rejected(
        make_request(drop=("Host",)), BadRequest, 400, reason="missing Host header", headers=CLOSE
    )


def test_duplicate_host_gets_400() -> None:
    request = make_request(add=[("Host", "other.example.com")])
    assert_rejected(request, BadRequest, 400, reason="duplicate Host header", headers=CLOSE)


def test_empty_host_gets_400() -> None:
    request = make_request(drop=("Host",), add=[("Host", "")])
    assert_rejected(request, BadRequest, 400, reason="empty Host header", headers=CLOSE)


@pytest.mark.parametrize("upgrade", [None, "h2c", "websocket2", ""])
def test_upgrade_without_websocket_gets_400(upgrade: str | None) -> None:
    add = [] if upgrade is None else [("Upgrade", upgrade)]
    request = make_request(drop=("Upgrade",), add=add)
    assert_rejected(request, BadRequest, 400, reason="missing Upgrade: websocket", headers=CLOSE)


@pytest.mark.parametrize("connection", [None, "keep-alive", "upgrades", "close, keep-alive"])
def test_connection_without_upgrade_gets_400(connection: str | None) -> None:
    add = [] if connection is None else [("Connection", connection)]
    request = make_request(drop=("Connection",), add=add)
    assert_rejected(request, BadRequest, 400, reason="missing Connection: Upgrade", headers=CLOSE)


def test_missing_version_gets_426_with_sec_websocket_version_13() -> None:
    assert_rejected(
        make_request(drop=("Sec-WebSocket-Version",)),
        UpgradeRequired,
        426,
        reason="missing Sec-WebSocket-Version header; only version 13 is supported",
        headers=UPGRADE_REQUIRED,
    )


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 13", "13,8", " ", "013"])
def test_other_version_gets_426_with_sec_websocket_version_13(version: str) -> None:
    request = make_request(drop=("Sec-WebSocket-Version",), add=[("Sec-WebSocket-Version", version)])
    assert_rejected(
        request,
        UpgradeRequired,
        426,
        reason=f"unsupported Sec-WebSocket-Version {version.strip()!r}; only version 13 is supported",
        headers=UPGRADE_REQUIRED,
    )


def test_duplicate_version_lines_get_426() -> None:
    assert_rejected(
        make_request(add=[("Sec-WebSocket-Version", "13")]),
        UpgradeRequired,
        426,
        reason="duplicate Sec-WebSocket-Version header; only version 13 is supported",
        headers=UPGRADE_REQUIRED,
    )


def test_missing_key_gets_400() -> None:
    request = make_request(drop=("Sec-WebSocket-Key",))
    assert_rejected(request, BadRequest, 400, reason="missing Sec-WebSocket-Key header", headers=CLOSE)


def test_duplicate_key_gets_400() -> None:
    request = make_request(add=[("Sec-WebSocket-Key", RFC_KEY)])
    assert_rejected(request, BadRequest, 400, reason="duplicate Sec-WebSocket-Key header", headers=CLOSE)


@pytest.mark.parametrize(
    "key",
    [
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",  # padding missing
        "dGhlIHNhbXBsZSBub25jZQ=",  # padding short
        "dGhlIHNhbXBs ZSBub25jZQ==",  # inner space
        "dGhlIHNhbXBsZSBub25jZQ==\xe9",  # non-ASCII (obs-text)
    ],
)
def test_key_that_is_not_strict_base64_gets_400(key: str) -> None:
    request = make_request(drop=("Sec-WebSocket-Key",), add=[("Sec-WebSocket-Key", key)])
    assert_rejected(request, BadRequest, 400, reason="Sec-WebSocket-Key is not valid base64", headers=CLOSE)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_key_that_does_not_decode_to_16_bytes_gets_400(size: int) -> None:
    key = base64.b64encode(b"k" * size).decode()
    request = make_request(drop=("Sec-WebSocket-Key",), add=[("Sec-WebSocket-Key", key)])
    assert_rejected(
        request, BadRequest, 400, reason="Sec-WebSocket-Key does not decode to 16 bytes", headers=CLOSE
    )


@pytest.mark.parametrize(
    "body_header",
    [
        ("Content-Length", "5"),
        ("Content-Length", "00"),
        ("Transfer-Encoding", "chunked"),
        ("Transfer-Encoding", ""),
    ],
)
def test_request_with_a_body_gets_400(body_header: tuple[str, str]) -> None:
    request = make_request(add=[body_header])
    assert_rejected(request, BadRequest, 400, reason="a WebSocket handshake has no body", headers=CLOSE)


def test_content_length_zero_is_not_a_body() -> None:
    assert validate_request(make_request(add=[("Content-Length", "0")])).key == RFC_KEY


@pytest.mark.parametrize(("value", "bad"), [("chat, sup/er", "sup/er"), ('"chat"', '"chat"'), ("a b", "a b")])
def test_subprotocol_that_is_not_a_token_gets_400(value: str, bad: str) -> None:
    request = make_request(add=[("Sec-WebSocket-Protocol", value)])
    assert_rejected(request, BadRequest, 400, reason=f"invalid subprotocol name {bad!r}", headers=CLOSE)


def test_malformed_extensions_header_gets_400() -> None:
    request = make_request(add=[("Sec-WebSocket-Extensions", "permessage-deflate; =12")])
    with pytest.raises(BadRequest, match="malformed Sec-WebSocket-Extensions") as info:
        validate_request(request)
    response = parse_response(build_reject(info.value))
    assert response.status == 400
    assert response.headers.get("Connection") == "close"


def test_validation_reports_the_first_failing_rule_in_table_order() -> None:
    everything_wrong = make_request([], request_line="POST / HTTP/1.0")
    with pytest.raises(MethodNotAllowed):
        validate_request(everything_wrong)
    with pytest.raises(BadRequest, match="HTTP/1.1"):
        validate_request(make_request([], request_line="GET / HTTP/1.0"))
    with pytest.raises(BadRequest, match="Host"):
        validate_request(make_request([]))
    with pytest.raises(BadRequest, match="Upgrade: websocket"):
        validate_request(make_request([("Host", "h")]))
    with pytest.raises(BadRequest, match="Connection: Upgrade"):
        validate_request(make_request([("Host", "h"), ("Upgrade", "websocket")]))
    with pytest.raises(UpgradeRequired):
        validate_request(make_request(drop=("Sec-WebSocket-Key", "Sec-WebSocket-Version")))
    with pytest.raises(BadRequest, match="Sec-WebSocket-Key"):
        validate_request(make_request(drop=("Sec-WebSocket-Key",), add=[("Content-Length", "3")]))


# -- validate_request: what passes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        ["keep-alive, Upgrade"],
        ["keep-alive", "Upgrade"],
        ["upgrade"],
        ["UPGRADE"],
        [" keep-alive ,, upgrade ,"],
    ],
)
def test_connection_token_lists_with_upgrade_pass(connection: list[str]) -> None:
    request = make_request(drop=("Connection",), add=[("Connection", value) for value in connection])
    assert validate_request(request).key == RFC_KEY


def test_header_names_and_upgrade_value_are_case_insensitive() -> None:
    fields = [
        ("host", "example.com"),
        ("UPGRADE", "WebSocket"),
        ("connection", "upgrade"),
        ("sec-websocket-key", RFC_KEY),
        ("SEC-WEBSOCKET-VERSION", "13"),
        ("sec-websocket-protocol", "chat"),
    ]
    hs = validate_request(make_request(fields))
    assert (hs.host, hs.key, hs.subprotocols) == ("example.com", RFC_KEY, ["chat"])


def test_upgrade_list_may_name_other_protocols_too() -> None:
    request = make_request(drop=("Upgrade",), add=[("Upgrade", "h2c, WebSocket")])
    assert validate_request(request).key == RFC_KEY


def test_subprotocols_merge_across_header_lines_in_order() -> None:
    request = make_request(
        add=[("Sec-WebSocket-Protocol", "v2.chat, v1.chat"), ("Sec-WebSocket-Protocol", " ,json")]
    )
    assert validate_request(request).subprotocols == ["v2.chat", "v1.chat", "json"]


def test_extensions_merge_across_header_lines_in_order() -> None:
    request = make_request(
        add=[
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ("Sec-WebSocket-Extensions", "x-custom; a=1"),
        ]
    )
    assert validate_request(request).extensions == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("x-custom", [("a", "1")]),
    ]


# -- parse_extensions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        (["permessage-deflate"], [("permessage-deflate", [])]),
        (
            ["permessage-deflate; client_max_window_bits; server_max_window_bits=10"],
            [("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")])],
        ),
        (['foo; x="10"; y = 3 ;z'], [("foo", [("x", "10"), ("y", "3"), ("z", None)])]),
        ([r'foo; x="1\0"'], [("foo", [("x", "10")])]),
        (["a, b; p", "c"], [("a", []), ("b", [("p", None)]), ("c", [])]),
        ([" , a ,, b , "], [("a", []), ("b", [])]),
        ([""], []),
        (
            ["permessage-deflate; client_max_window_bits, permessage-deflate"],
            [("permessage-deflate", [("client_max_window_bits", None)]), ("permessage-deflate", [])],
        ),
    ],
)
def test_parse_extensions_follows_rfc_6455_section_9_1(
    values: list[str], expected: list[tuple[str, list[tuple[str, str | None]]]]
) -> None:
    assert parse_extensions(values) == expected


@pytest.mark.parametrize(
    "value",
    [
        "permessage-deflate;",
        "; x",
        "a b",
        "a; b=",
        "a; =1",
        'a; b="c d"',  # unquoted value is not a token
        'a; b=""',
        'a; b="unterminated',
        'a; b="1"2',
        'a; b=1"',
        "a; b=1=2",
        "a; b; c d",
        "a/b",
        '"a"',
    ],
)
def test_parse_extensions_rejects_what_the_grammar_does_not_allow(value: str) -> None:
    with pytest.raises(BadRequest, match="malformed Sec-WebSocket-Extensions"):
        parse_extensions([value])


# -- subprotocol selection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "supported", "expected"),
    [
        (["chat", "superchat"], ["superchat", "chat"], "superchat"),  # the server's order wins
        (["chat", "superchat"], ["chat", "superchat"], "chat"),
        (["chat"], ["superchat"], None),
        ([], ["chat"], None),
        (["chat"], [], None),
        (["Chat"], ["chat"], None),  # names compare exactly
    ],
)
def test_select_subprotocol_picks_by_server_preference_among_offered(
    offered: list[str], supported: list[str], expected: str | None
) -> None:
    assert select_subprotocol(offered, iter(supported)) == expected


# -- build_accept -----------------------------------------------------------------------------------------


def test_build_accept_writes_extensions_and_extra_headers_byte_exact() -> None:
    hs = validate_request(make_request())
    data = build_accept(
        hs,
        extensions="permessage-deflate; server_no_context_takeover",
        headers=[("Set-Cookie", "sid=1; HttpOnly"), ("X-Server", "rawws")],
    )
    assert data == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        b"Set-Cookie: sid=1; HttpOnly\r\n"
        b"X-Server: rawws\r\n"
        b"\r\n"
    )


def test_build_accept_refuses_a_subprotocol_the_client_did_not_offer() -> None:
    hs = validate_request(make_request(add=[("Sec-WebSocket-Protocol", "chat")]))
    with pytest.raises(InvalidState, match="superchat"):
        build_accept(hs, subprotocol="superchat")


@pytest.mark.parametrize(
    "header", [("X-Evil", "a\r\nSet-Cookie: x=1"), ("X-Evil", "a\nb"), ("X-Evil", "a\rb"), ("X\r\nEvil", "a")]
)
def test_build_accept_refuses_extra_headers_with_cr_or_lf(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        build_accept(validate_request(make_request()), headers=[header])


@pytest.mark.parametrize(
    "name", ["Sec-WebSocket-Protocol", "connection", "Content-Length", "Sec-WebSocket-Accept"]
)
def test_build_accept_refuses_extra_headers_it_writes_itself(name: str) -> None:
    with pytest.raises(ValueError, match="sets"):
        build_accept(validate_request(make_request()), headers=[(name, "x")])


# -- build_reject ------------------------------------------------------------------------------------------


def test_build_reject_writes_a_plain_text_response_byte_exact() -> None:
    assert build_reject(MethodNotAllowed()) == (
        b"HTTP/1.1 405 Method Not Allowed\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 51\r\n"
        b"Connection: close\r\n"
        b"Allow: GET\r\n"
        b"\r\n"
        b"Method Not Allowed: a WebSocket handshake is a GET\n"
    )


def test_build_reject_encodes_the_reason_as_utf8_and_counts_bytes() -> None:
    data = build_reject(Forbidden("origin refus\xe9e"))
    response = parse_response(data)
    assert (response.status, response.reason) == (403, "Forbidden")
    assert response.headers.get("Content-Length") == "16"
    assert data.endswith(b"\r\n\r\norigin refus\xc3\xa9e\n")


def test_build_reject_carries_the_exception_headers_but_not_its_framing() -> None:
    exc = ServiceUnavailable(retry_after=30)
    exc.headers += [("Content-Length", "999"), ("Connection", "keep-alive")]
    response = parse_response(build_reject(exc))
    assert response.status == 503
    assert response.headers.get_all("Retry-After") == ["30"]
    assert response.headers.get_all("Content-Length") == [str(len("Service Unavailable\n"))]
    assert response.headers.get_all("Connection") == ["close"]


def test_build_reject_refuses_exception_headers_with_cr_or_lf() -> None:
    with pytest.raises(ValueError):
        build_reject(Forbidden(headers=[("X-Evil", "a\r\nb")]))


# -- negotiate_extensions ---------------------------------------------------------------------------------


def hs_with_extensions(*values: str) -> HandshakeRequest:
    return validate_request(make_request(add=[("Sec-WebSocket-Extensions", value) for value in values]))


def test_negotiate_extensions_accepts_permessage_deflate() -> None:
    header, params = negotiate_extensions(hs_with_extensions("permessage-deflate"), DeflateOptions())
    assert header == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert params == DeflateParams(
        server_no_context_takeover=True,
        client_no_context_takeover=False,
        server_max_window_bits=12,
        client_max_window_bits=15,
    )


def test_negotiate_extensions_ignores_unknown_extensions() -> None:
    hs = hs_with_extensions("x-webkit-deflate-frame, x-custom; a=1", "permessage-deflate")
    header, params = negotiate_extensions(hs, DeflateOptions())
    assert header is not None and header.startswith("permessage-deflate")
    assert params is not None
    assert negotiate_extensions(hs_with_extensions("x-custom"), DeflateOptions()) == (None, None)


def test_negotiate_extensions_declines_when_compression_is_off() -> None:
    hs = hs_with_extensions("permessage-deflate")
    assert negotiate_extensions(hs, None) == (None, None)
    assert negotiate_extensions(hs, DeflateOptions(enabled=False)) == (None, None)
    assert negotiate_extensions(hs_with_extensions(), DeflateOptions()) == (None, None)


# -- client role --------------------------------------------------------------------------------------------


def test_client_request_bytes_are_exact_with_a_given_key() -> None:
    client = ClientHandshake(
        "server.example.com",
        "/chat?room=1",
        subprotocols=["chat", "superchat"],
        deflate_options=DeflateOptions(),
        headers=[("Origin", "http://example.com")],
        key=RFC_KEY,
    )
    assert client.request_bytes() == (
        b"GET /chat?room=1 HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=12;"
        b" client_max_window_bits\r\n"
        b"Origin: http://example.com\r\n"
        b"\r\n"
    )


def test_client_request_without_options_is_minimal() -> None:
    client = ClientHandshake("h", key=RFC_KEY, deflate_options=DeflateOptions(enabled=False))
    assert client.request_bytes() == (
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def test_client_generates_a_fresh_16_byte_key() -> None:
    keys = {ClientHandshake("h").key for _ in range(3)}
    assert len(keys) == 3
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 16


@pytest.mark.parametrize(
    "kwargs",
    [{"target": ""}, {"target": "/a b"}, {"subprotocols": ["a b"]}, {"headers": [("X", "a\r\nb")]}],
)
def test_client_refuses_what_cannot_go_on_the_wire(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ClientHandshake("h", **kwargs)  # type: ignore[arg-type]


def run_server_side(request_bytes: bytes, supported: list[str], options: DeflateOptions | None) -> bytes:
    """Our server functions, as the server will chain them."""
    server = ServerHandshake()
    request = server.receive_data(request_bytes)
    assert request is not None
    hs = validate_request(request)
    extensions, _ = negotiate_extensions(hs, options)
    return build_accept(hs, subprotocol=select_subprotocol(hs.subprotocols, supported), extensions=extensions)


def test_client_and_server_functions_complete_a_handshake() -> None:
    client = ClientHandshake(
        "example.com", "/chat", subprotocols=["v2", "v1"], deflate_options=DeflateOptions()
    )
    response_bytes = run_server_side(client.request_bytes(), ["v1", "v2"], DeflateOptions())
    result = client.receive_data(response_bytes + FRAME)
    assert result is not None
    assert result.response.status == 101
    assert result.subprotocol == "v1"
    assert result.deflate_params == DeflateParams(
        server_no_context_takeover=True,
        client_no_context_takeover=False,
        server_max_window_bits=12,
        client_max_window_bits=15,
    )
    assert client.trailing == FRAME


def test_client_completes_a_handshake_without_subprotocol_or_compression() -> None:
    client = ClientHandshake("example.com")
    result = client.receive_data(run_server_side(client.request_bytes(), ["chat"], DeflateOptions()))
    assert result is not None
    assert (result.subprotocol, result.deflate_params) == (None, None)


def test_client_reads_the_response_one_byte_at_a_time() -> None:
    client = ClientHandshake("example.com", key=RFC_KEY)
    response = RFC_RESPONSE.replace(b"Sec-WebSocket-Protocol: chat\r\n", b"")
    for index in range(len(response) - 1):
        assert client.receive_data(response[index : index + 1]) is None
    result = client.receive_data(response[-1:])
    assert result is not None and result.response.head == response
    assert client.trailing == b""
    with pytest.raises(InvalidState):
        client.receive_data(FRAME)


def response_101(*fields: tuple[str, str], accept: str | None = RFC_ACCEPT) -> bytes:
    base = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if accept is not None:
        base.append(("Sec-WebSocket-Accept", accept))
    lines = [*base, *fields]
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        + b"".join(f"{n}: {v}\r\n".encode() for n, v in lines)
        + b"\r\n"
    )


def assert_client_fails(client: ClientHandshake, response: bytes, match: str) -> InvalidResponse:
    with pytest.raises(InvalidResponse, match=match) as info:
        client.receive_data(response)
    exc = info.value
    assert isinstance(exc.response, Response)  # type: ignore[attr-defined]
    assert response.startswith(exc.response.head)  # type: ignore[attr-defined]
    return exc


def test_client_fails_on_a_status_other_than_101_and_keeps_the_response() -> None:
    client = ClientHandshake("h", key=RFC_KEY)
    reject = build_reject(UpgradeRequired())
    exc = assert_client_fails(client, reject, "HTTP 426 Upgrade Required")
    assert exc.response.headers.get("Sec-WebSocket-Version") == "13"  # type: ignore[attr-defined]


def test_client_fails_on_200() -> None:
    assert_client_fails(ClientHandshake("h", key=RFC_KEY), b"HTTP/1.1 200 OK\r\n\r\n", "HTTP 200")


@pytest.mark.parametrize(
    ("upgrade", "match"),
    [(None, "got nothing"), ("h2c", "got h2c"), ("websocket, h2c", "got websocket, h2c")],
)
def test_client_fails_when_upgrade_is_not_websocket(upgrade: str | None, match: str) -> None:
    replacement = b"" if upgrade is None else f"Upgrade: {upgrade}\r\n".encode()
    response = response_101().replace(b"Upgrade: websocket\r\n", replacement)
    assert_client_fails(ClientHandshake("h", key=RFC_KEY), response, match)


def test_client_accepts_upgrade_and_connection_in_any_case() -> None:
    response = response_101().replace(b"Upgrade: websocket", b"upgrade: WebSocket")
    response = response.replace(b"Connection: Upgrade", b"connection: keep-alive, UPGRADE")
    assert ClientHandshake("h", key=RFC_KEY).receive_data(response) is not None


def test_client_fails_when_connection_lacks_upgrade() -> None:
    response = response_101().replace(b"Connection: Upgrade", b"Connection: keep-alive")
    assert_client_fails(ClientHandshake("h", key=RFC_KEY), response, "missing Connection: Upgrade")


@pytest.mark.parametrize("accept", [None, accept_key("AAAAAAAAAAAAAAAAAAAAAA=="), RFC_ACCEPT.lower()])
def test_client_fails_when_the_accept_key_is_missing_or_wrong(accept: str | None) -> None:
    match = (
        "expected one Sec-WebSocket-Accept header, got 0" if accept is None else "wrong Sec-WebSocket-Accept"
    )
    assert_client_fails(ClientHandshake("h", key=RFC_KEY), response_101(accept=accept), match)


def test_client_fails_when_the_accept_key_is_repeated() -> None:
    response = response_101(("Sec-WebSocket-Accept", RFC_ACCEPT))
    assert_client_fails(ClientHandshake("h", key=RFC_KEY), response, "got 2")


def test_client_fails_on_a_subprotocol_it_did_not_offer() -> None:
    client = ClientHandshake("h", subprotocols=["chat"], key=RFC_KEY)
    assert_client_fails(client, response_101(("Sec-WebSocket-Protocol", "superchat")), "did not offer")
    unasked = ClientHandshake("h", key=RFC_KEY)
    assert_client_fails(unasked, response_101(("Sec-WebSocket-Protocol", "chat")), "did not offer")


@pytest.mark.parametrize(
    "fields",
    [[("Sec-WebSocket-Protocol", "chat, superchat")], [("Sec-WebSocket-Protocol", "chat")] * 2],
)
def test_client_fails_when_the_server_chooses_more_than_one_subprotocol(
    fields: list[tuple[str, str]],
) -> None:
    client = ClientHandshake("h", subprotocols=["chat", "superchat"], key=RFC_KEY)
    assert_client_fails(client, response_101(*fields), "more than one subprotocol")


def test_client_fails_on_an_extension_when_it_offered_none() -> None:
    response = response_101(("Sec-WebSocket-Extensions", "permessage-deflate"))
    assert_client_fails(
        ClientHandshake("h", key=RFC_KEY), response, "'permessage-deflate', which we did not offer"
    )
    disabled = ClientHandshake("h", key=RFC_KEY, deflate_options=DeflateOptions(enabled=False))
    assert_client_fails(disabled, response, "which we did not offer")


def test_client_fails_on_an_unknown_extension() -> None:
    client = ClientHandshake("h", key=RFC_KEY, deflate_options=DeflateOptions())
    response = response_101(("Sec-WebSocket-Extensions", "x-custom"))
    assert_client_fails(client, response, "'x-custom', which we did not offer")


def test_client_fails_when_permessage_deflate_is_accepted_twice() -> None:
    client = ClientHandshake("h", key=RFC_KEY, deflate_options=DeflateOptions())
    answer = "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    response = response_101(("Sec-WebSocket-Extensions", f"{answer}, {answer}"))
    assert_client_fails(client, response, "more than once")


def test_client_fails_on_a_permessage_deflate_answer_that_ignores_its_offer() -> None:
    client = ClientHandshake("h", key=RFC_KEY, deflate_options=DeflateOptions())
    response = response_101(("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=15"))
    assert_client_fails(client, response, "server_no_context_takeover|server_max_window_bits")


def test_client_fails_on_a_malformed_extensions_header() -> None:
    client = ClientHandshake("h", key=RFC_KEY, deflate_options=DeflateOptions())
    response = response_101(("Sec-WebSocket-Extensions", "permessage-deflate;"))
    assert_client_fails(client, response, "malformed Sec-WebSocket-Extensions")


def test_client_fails_on_a_malformed_response_without_a_response_attribute() -> None:
    client = ClientHandshake("h", key=RFC_KEY)
    with pytest.raises(InvalidResponse, match="malformed status line") as info:
        client.receive_data(b"HTTP/1.1 ok\r\n\r\n")
    assert info.value.response is None
    with pytest.raises(InvalidState):
        client.receive_data(b"")


# -- against a third-party peer: websockets' sans-I/O protocols ------------------------------------------


def websockets_client_request(client: ClientProtocol) -> bytes:
    client.send_request(client.connect())
    return b"".join(client.data_to_send())


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "permessage-deflate"])
def test_websockets_client_completes_a_handshake_with_our_server(compression: bool) -> None:
    extensions = [ClientPerMessageDeflateFactory()] if compression else None
    client = ClientProtocol(
        parse_uri("ws://example.com:8000/chat?room=1"),
        subprotocols=[Subprotocol("v1"), Subprotocol("v2")],
        extensions=extensions,
    )
    request_bytes = websockets_client_request(client)

    server = ServerHandshake()
    request = server.receive_data(request_bytes)
    assert request is not None and server.trailing == b""
    assert is_websocket_upgrade(request)
    hs = validate_request(request)
    assert (hs.host, hs.path, hs.query_string, hs.subprotocols) == (
        "example.com:8000",
        "/chat",
        "room=1",
        ["v1", "v2"],
    )
    header, params = negotiate_extensions(hs, DeflateOptions())
    assert (params is not None) is compression
    response_bytes = build_accept(
        hs, subprotocol=select_subprotocol(hs.subprotocols, ["v2"]), extensions=header
    )

    client.receive_data(response_bytes)
    [response] = client.events_received()
    assert isinstance(response, websockets.http11.Response)
    assert response.status_code == 101
    assert client.handshake_exc is None
    assert client.state is State.OPEN
    assert client.subprotocol == "v2"
    assert len(client.extensions) == (1 if compression else 0)


def test_websockets_client_rejects_our_reject_response() -> None:
    client = ClientProtocol(parse_uri("ws://example.com/"))
    request = RequestParser().feed(websockets_client_request(client).replace(b"Version: 13", b"Version: 8"))
    assert request is not None
    with pytest.raises(UpgradeRequired) as info:
        validate_request(request)
    client.receive_data(build_reject(info.value))
    [response] = client.events_received()
    assert isinstance(response, websockets.http11.Response)
    assert response.status_code == 426
    assert response.body == b"unsupported Sec-WebSocket-Version '8'; only version 13 is supported\n"
    assert client.handshake_exc is not None
    assert client.state is not State.OPEN


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "permessage-deflate"])
def test_our_client_completes_a_handshake_with_websockets_server(compression: bool) -> None:
    server = ServerProtocol(
        subprotocols=[Subprotocol("v2")],
        extensions=[ServerPerMessageDeflateFactory()] if compression else None,
    )
    client = ClientHandshake(
        "example.com",
        "/chat?room=1",
        subprotocols=["v1", "v2"],
        deflate_options=DeflateOptions() if compression else None,
    )
    server.receive_data(client.request_bytes())
    [request] = server.events_received()
    assert isinstance(request, websockets.http11.Request)
    assert request.path == "/chat?room=1"
    server.send_response(server.accept(request))
    assert server.state is State.OPEN
    response_bytes = b"".join(server.data_to_send())

    result = client.receive_data(response_bytes)
    assert result is not None
    assert result.subprotocol == "v2"
    if compression:
        assert result.deflate_params is not None
        assert result.deflate_params.server_no_context_takeover
        assert result.deflate_params.server_max_window_bits == 12
    else:
        assert result.deflate_params is None
    assert client.trailing == b""
