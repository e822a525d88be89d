"""HTTP/1.1 head parsing with limits (RFC 9110, RFC 9112): django_rawws.protocol.http."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_rawws.exceptions import (
    BadRequest,
    HeadersTooLarge,
    InvalidResponse,
    InvalidState,
    RawWSError,
    RequestLineTooLong,
)
from django_rawws.protocol.http import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_request,
    build_response,
)

SIMPLE_REQUEST = (
    b"GET /chat?room=1 HTTP/1.1\r\n"
    b"Host: example.com:8000\r\n"
    b"X-Custom:  spaced value \t\r\n"
    b"x-custom: second\r\n"
    b"\r\n"
)
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 §5.7 masked "Hello"


def parse_request_three_ways(data: bytes, **limits: int) -> Request:
    """Parse ``data`` whole, one byte at a time, and followed by trailing bytes; all must agree."""
    whole = RequestParser(**limits).feed(data)
    assert whole is not None

    parser = RequestParser(**limits)
    for index in range(len(data) - 1):
        assert parser.feed(data[index : index + 1]) is None
    bytewise = parser.feed(data[-1:])
    assert bytewise == whole
    assert parser.trailing == b""

    parser = RequestParser(**limits)
    with_trailing = parser.feed(data + FRAME)
    assert with_trailing == whole
    assert parser.trailing == FRAME
    return whole


def parse_response_three_ways(data: bytes, **limits: int) -> Response:
    whole = ResponseParser(**limits).feed(data)
    assert whole is not None

    parser = ResponseParser(**limits)
    for index in range(len(data) - 1):
        assert parser.feed(data[index : index + 1]) is None
    assert parser.feed(data[-1:]) == whole

    parser = ResponseParser(**limits)
    assert parser.feed(data + FRAME) == whole
    assert parser.trailing == FRAME
    return whole


def feed_bytewise_until_error(parser: RequestParser | ResponseParser, data: bytes) -> int:
    """Feed one byte at a time; return how many bytes were fed when it raised."""
    for index in range(len(data)):
        try:
            parser.feed(data[index : index + 1])
        except RawWSError:
            return index + 1
    raise AssertionError("the parser never raised")


def padded_head(size: int, *, count: int | None = None) -> bytes:
    """Return a valid request head of exactly ``size`` bytes, lines under 4 KiB."""
    start = b"GET / HTTP/1.1\r\nHost: example.com\r\n"
    remaining = size - len(start) - 2
    lines = count if count is not None else -(-remaining // 4000)
    base, extra = divmod(remaining, lines)
    pads = []
    for index in range(lines):
        length = base + (1 if index < extra else 0)
        prefix = f"X-Pad-{index}: ".encode()
        pads.append(prefix + b"a" * (length - len(prefix) - 2) + b"\r\n")
    head = start + b"".join(pads) + b"\r\n"
    assert len(head) == size
    return head


# -- Headers -------------------------------------------------------------------------------------------


def test_headers_look_up_names_case_insensitively_and_keep_spelling_and_order() -> None:
    headers = Headers([("Host", "a"), ("X-Thing", "1"), ("x-thing", "2"), ("Accept", "*/*")])
    assert headers.get("HOST") == "a"
    assert headers.get("x-THING") == "1"
    assert headers.get("missing") is None
    assert headers.get("missing", "default") == "default"
    assert headers.get_all("X-THING") == ["1", "2"]
    assert headers.get_all("missing") == []
    assert "host" in headers and "Missing" not in headers
    assert 42 not in headers
    assert len(headers) == 4
    assert list(headers) == [("Host", "a"), ("X-Thing", "1"), ("x-thing", "2"), ("Accept", "*/*")]
    assert list(headers.items()) == list(headers)
    assert headers.raw_items() == list(headers)


def test_headers_are_equal_when_their_fields_are_equal() -> None:
    assert Headers([("A", "1")]) == Headers([("A", "1")])
    assert hash(Headers([("A", "1")])) == hash(Headers([("A", "1")]))
    assert Headers([("A", "1")]) != Headers([("A", "2")])
    assert Headers() != [("A", "1")]


def test_headers_get_all_returns_a_copy() -> None:
    headers = Headers([("A", "1")])
    headers.get_all("a").append("2")
    assert headers.get_all("a") == ["1"]


def test_headers_get_one_refuses_a_duplicated_field() -> None:
    headers = Headers([("Sec-WebSocket-Key", "a"), ("sec-websocket-key", "b"), ("Host", "h")])
    assert headers.get_one("host") == "h"
    assert headers.get_one("missing") is None
    with pytest.raises(BadRequest, match="^duplicate Sec-WebSocket-Key header$") as info:
        headers.get_one("Sec-WebSocket-Key")
    assert info.value.status_code == 400


def test_headers_get_list_merges_lines_strips_ows_and_drops_empty_elements() -> None:
    headers = Headers(
        [("Connection", " keep-alive ,\tUpgrade"), ("connection", ",, close ,"), ("Other", "x")]
    )
    assert headers.get_list("CONNECTION") == ["keep-alive", "Upgrade", "close"]
    assert headers.get_list("missing") == []
    assert Headers([("Connection", "")]).get_list("Connection") == []


def test_headers_get_list_does_not_split_inside_quoted_strings() -> None:
    headers = Headers([("X", 'a; p="1,2", b, "unterminated, c')])
    assert headers.get_list("x") == ['a; p="1,2"', "b", '"unterminated, c']
    assert Headers([("X", r'"say \"a, b\"", c')]).get_list("x") == [r'"say \"a, b\""', "c"]


# -- RequestParser: what it returns --------------------------------------------------------------------


def test_request_parser_parses_a_request_in_any_chunking() -> None:
    request = parse_request_three_ways(SIMPLE_REQUEST)
    assert request.method == "GET"
    assert request.target == "/chat?room=1"
    assert request.version == (1, 1)
    assert request.headers.raw_items() == [
        ("Host", "example.com:8000"),
        ("X-Custom", "spaced value"),
        ("x-custom", "second"),
    ]
    assert request.head == SIMPLE_REQUEST


def test_request_parser_returns_the_bytes_after_the_head_as_trailing() -> None:
    parser = RequestParser()
    assert parser.trailing == b""
    assert parser.feed(SIMPLE_REQUEST[:-1]) is None
    request = parser.feed(SIMPLE_REQUEST[-1:] + FRAME + FRAME)
    assert request is not None
    assert request.head == SIMPLE_REQUEST
    assert parser.trailing == FRAME + FRAME


def test_request_parser_refuses_to_be_fed_after_the_request() -> None:
    parser = RequestParser()
    assert parser.feed(SIMPLE_REQUEST) is not None
    with pytest.raises(InvalidState):
        parser.feed(FRAME)


def test_request_parser_refuses_to_be_fed_after_an_error() -> None:
    parser = RequestParser()
    with pytest.raises(BadRequest):
        parser.feed(b"GET / HTTP/1.1\n")
    with pytest.raises(InvalidState):
        parser.feed(b"\r\n")


@pytest.mark.parametrize(
    ("target", "path", "query_string"),
    [
        ("/", "/", ""),
        ("/chat/room?x=1&y=%20", "/chat/room", "x=1&y=%20"),
        ("/a%2Fb%20c", "/a%2Fb%20c", ""),
        ("/p?", "/p", ""),
        ("/p?a?b", "/p", "a?b"),
        ("http://example.com/chat?x=1", "/chat", "x=1"),
        ("https://example.com", "/", ""),
        ("*", "*", ""),
    ],
)
def test_request_path_is_the_target_without_query_and_not_decoded(
    target: str, path: str, query_string: str
) -> None:
    request = RequestParser().feed(f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert request is not None
    assert request.target == target
    assert request.path == path
    assert request.query_string == query_string


def test_request_parser_keeps_obs_text_in_values_as_latin1() -> None:
    request = RequestParser().feed(b"GET / HTTP/1.1\r\nX-Name: caf\xe9 \x80\xff\r\n\r\n")
    assert request is not None
    assert request.headers.get("x-name") == "caf\xe9 \x80\xff"


def test_request_parser_keeps_tabs_inside_values_and_allows_empty_values() -> None:
    request = parse_request_three_ways(b"GET / HTTP/1.1\r\nX-A: a\tb\r\nX-Empty:\r\nX-Blank: \t \r\n\r\n")
    assert request.headers.raw_items() == [("X-A", "a\tb"), ("X-Empty", ""), ("X-Blank", "")]


def test_request_parser_keeps_colons_in_values() -> None:
    request = parse_request_three_ways(b"GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n")
    assert request.headers.get("Host") == "[::1]:8000"


def test_request_parser_reads_the_version_digits() -> None:
    request = parse_request_three_ways(b"OPTIONS * HTTP/1.0\r\n\r\n")
    assert (request.method, request.target, request.version) == ("OPTIONS", "*", (1, 0))
    assert len(request.headers) == 0


def test_request_parser_ignores_one_empty_line_before_the_request_line() -> None:
    """RFC 9112 §2.2: SHOULD ignore at least one; it is not part of the head."""
    request = parse_request_three_ways(b"\r\n" + SIMPLE_REQUEST)
    assert request.head == SIMPLE_REQUEST


def test_request_parser_rejects_two_empty_lines_before_the_request_line_with_400() -> None:
    with pytest.raises(BadRequest, match="empty lines before the request line"):
        RequestParser().feed(b"\r\n\r\n" + SIMPLE_REQUEST)


# -- RequestParser: malformed input gets 400 -----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\nHost: h\r\n\r\n", id="bare-LF-after-request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\n\r\n", id="bare-LF-after-header"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n\n", id="bare-LF-as-empty-line"),
        pytest.param(b"\nGET / HTTP/1.1\r\n\r\n", id="bare-LF-first"),
    ],
)
def test_line_ending_in_a_bare_lf_gets_400(data: bytes) -> None:
    with pytest.raises(BadRequest, match="bare LF") as info:
        RequestParser().feed(data)
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    "request_line",
    [
        pytest.param(b"GET  / HTTP/1.1", id="two-spaces"),
        pytest.param(b"GET\t/ HTTP/1.1", id="tab-separator"),
        pytest.param(b"GET / HTTP/1.1 ", id="trailing-space"),
        pytest.param(b" GET / HTTP/1.1", id="leading-space"),
        pytest.param(b"GET /", id="no-version"),
        pytest.param(b"GET HTTP/1.1", id="no-target"),
        pytest.param(b"GET / http/1.1", id="lowercase-http"),
        pytest.param(b"GET / HTTP/1", id="no-minor"),
        pytest.param(b"GET / HTTP/1.10", id="two-digit-minor"),
        pytest.param(b"GET / HTTP/x.1", id="non-digit-version"),
        pytest.param(b"G(T / HTTP/1.1", id="method-not-a-token"),
        pytest.param(b"GET /caf\xe9 HTTP/1.1", id="non-ascii-target"),
        pytest.param(b"GET /a\x7fb HTTP/1.1", id="DEL-in-target"),
        pytest.param(b"GET /a\rb HTTP/1.1", id="CR-in-target"),
        pytest.param(b"GET /a\x00b HTTP/1.1", id="NUL-in-target"),
    ],
)
def test_malformed_request_line_gets_400(request_line: bytes) -> None:
    with pytest.raises(BadRequest, match="malformed request line"):
        RequestParser().feed(request_line + b"\r\nHost: h\r\n\r\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param(b" folded", "obsolete line folding", id="obs-fold-SP"),
        pytest.param(b"\tfolded", "obsolete line folding", id="obs-fold-HTAB"),
        pytest.param(b"Host : h", "whitespace between header name and colon", id="space-before-colon"),
        pytest.param(b"Host\t: h", "whitespace between header name and colon", id="tab-before-colon"),
        pytest.param(b"Ho st: h", "invalid header name", id="space-in-name"),
        pytest.param(b": h", "invalid header name", id="empty-name"),
        pytest.param(b"X(y): h", "invalid header name", id="separator-in-name"),
        pytest.param(b"Caf\xe9: h", "invalid header name", id="non-ascii-name"),
        pytest.param(b"NoColonHere", "without a colon", id="no-colon"),
    ],
)
def test_malformed_header_line_gets_400(line: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + line + b"\r\n\r\n")


def test_obs_fold_on_the_first_header_line_gets_400() -> None:
    with pytest.raises(BadRequest, match="obsolete line folding"):
        RequestParser().feed(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n")


@pytest.mark.parametrize(
    "char", [0x00, 0x01, 0x08, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x7F], ids=lambda c: f"{c:#04x}"
)
def test_control_character_in_header_value_gets_400(char: int) -> None:
    with pytest.raises(BadRequest, match="invalid character in X-Value header value"):
        RequestParser().feed(b"GET / HTTP/1.1\r\nX-Value: a" + bytes([char]) + b"b\r\n\r\n")


# -- RequestParser: limits -----------------------------------------------------------------------------


def request_line_of(length: int) -> bytes:
    prefix, suffix = b"GET /", b" HTTP/1.1"
    return prefix + b"a" * (length - len(prefix) - len(suffix)) + suffix


def test_request_line_of_exactly_max_line_bytes_passes() -> None:
    line = request_line_of(MAX_LINE)
    assert len(line) == 8192
    request = RequestParser().feed(line + b"\r\nHost: h\r\n\r\n")
    assert request is not None
    assert len(request.target) == MAX_LINE - len(b"GET  HTTP/1.1")


def test_request_line_over_limit_gets_414() -> None:
    with pytest.raises(RequestLineTooLong, match="request line longer than 8192 bytes") as info:
        RequestParser().feed(request_line_of(MAX_LINE + 1) + b"\r\nHost: h\r\n\r\n")
    assert info.value.status_code == 414


def test_request_line_over_limit_gets_414_before_its_crlf_arrives() -> None:
    parser = RequestParser()
    assert parser.feed(b"GET /" + b"a" * (MAX_LINE - 5)) is None  # exactly max_line, unterminated
    assert parser.feed(b"\r") is None  # could still be the end of the line
    with pytest.raises(RequestLineTooLong):
        parser.feed(b"a")


def test_request_line_over_limit_gets_414_at_the_first_byte_over_when_fed_bytewise() -> None:
    fed = feed_bytewise_until_error(RequestParser(max_line=100), b"GET /" + b"a" * 1000)
    assert fed == 101


def test_header_line_of_exactly_max_line_bytes_passes() -> None:
    line = b"X-Long: " + b"v" * (MAX_LINE - len(b"X-Long: "))
    assert len(line) == 8192
    request = RequestParser().feed(b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n")
    assert request is not None
    assert len(request.headers.get_all("X-Long")[0]) == MAX_LINE - 8


def test_header_line_over_limit_gets_431() -> None:
    line = b"X-Long: " + b"v" * (MAX_LINE + 1 - len(b"X-Long: "))
    with pytest.raises(HeadersTooLarge, match="header line longer than 8192 bytes") as info:
        RequestParser().feed(b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n")
    assert info.value.status_code == 431


def test_header_line_over_limit_gets_431_before_its_crlf_arrives() -> None:
    data = b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 1000
    fed = feed_bytewise_until_error(RequestParser(max_line=100), data)
    assert fed == len(b"GET / HTTP/1.1\r\n") + 101


def headers_block(count: int) -> bytes:
    return b"".join(f"X-H{index}: {index}\r\n".encode() for index in range(count))


def test_exactly_max_headers_fields_pass() -> None:
    request = RequestParser().feed(b"GET / HTTP/1.1\r\n" + headers_block(MAX_HEADERS) + b"\r\n")
    assert request is not None
    assert len(request.headers) == 128


def test_more_than_max_headers_fields_get_431() -> None:
    with pytest.raises(HeadersTooLarge, match="more than 128 header fields") as info:
        RequestParser().feed(b"GET / HTTP/1.1\r\n" + headers_block(MAX_HEADERS + 1) + b"\r\n")
    assert info.value.status_code == 431


def test_head_of_exactly_max_head_bytes_passes() -> None:
    head = padded_head(MAX_HEAD)
    assert len(head) == 16384
    request = parse_request_three_ways(head)
    assert request.head == head


def test_head_over_max_head_bytes_gets_431() -> None:
    with pytest.raises(HeadersTooLarge, match="request head larger than 16384 bytes") as info:
        RequestParser().feed(padded_head(MAX_HEAD + 1))
    assert info.value.status_code == 431


def test_head_over_max_head_bytes_gets_431_while_still_incomplete() -> None:
    """Short lines that never end the head: caught at the first byte over the limit."""
    unfinished = padded_head(MAX_HEAD - 100)[:-2] + b"X-More: " + b"m" * 1000
    fed = feed_bytewise_until_error(RequestParser(), unfinished)
    assert fed == MAX_HEAD + 1


def test_head_limit_counts_from_the_request_line_when_an_empty_line_was_ignored() -> None:
    request = RequestParser().feed(b"\r\n" + padded_head(MAX_HEAD))
    assert request is not None
    assert len(request.head) == MAX_HEAD


def test_request_parser_uses_the_limits_it_is_given() -> None:
    parser = RequestParser(max_line=30, max_headers=2, max_head=80)
    assert parser.feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n") is not None
    with pytest.raises(HeadersTooLarge):
        RequestParser(max_headers=2).feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    with pytest.raises(HeadersTooLarge):
        RequestParser(max_head=30).feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")


# -- ResponseParser --------------------------------------------------------------------------------------

SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)


def test_response_parser_parses_a_response_in_any_chunking() -> None:
    response = parse_response_three_ways(SWITCHING)
    assert (response.status, response.reason, response.version) == (101, "Switching Protocols", (1, 1))
    assert response.headers.raw_items() == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    assert response.head == SWITCHING


@pytest.mark.parametrize(
    ("status_line", "reason"),
    [(b"HTTP/1.1 404 ", ""), (b"HTTP/1.1 404", ""), (b"HTTP/1.0 404 Not\tFound \xe9", "Not\tFound \xe9")],
)
def test_response_parser_accepts_an_empty_or_unusual_reason(status_line: bytes, reason: str) -> None:
    response = ResponseParser().feed(status_line + b"\r\n\r\n")
    assert response is not None
    assert (response.status, response.reason) == (404, reason)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 1010 X\r\n\r\n", id="four-digit-status"),
        pytest.param(b"HTTP/1.1  101 X\r\n\r\n", id="two-spaces"),
        pytest.param(b"HTTP/1.1 101 X\x00\r\n\r\n", id="NUL-in-reason"),
        pytest.param(b"ICY 200 OK\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 101 X\n\r\n", id="bare-LF"),
        pytest.param(b"HTTP/1.1 101 X\r\nUpgrade : websocket\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 101 X\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"HTTP/1.1 101 X\r\nX: a\x0bb\r\n\r\n", id="VT-in-value"),
        pytest.param(b"\r\n\r\nHTTP/1.1 101 X\r\n\r\n", id="two-leading-empty-lines"),
    ],
)
def test_malformed_response_raises_invalid_response(data: bytes) -> None:
    with pytest.raises(InvalidResponse):
        ResponseParser().feed(data)


def test_response_parser_limits_raise_invalid_response() -> None:
    with pytest.raises(InvalidResponse, match="status line longer than 20 bytes"):
        ResponseParser(max_line=20).feed(b"HTTP/1.1 101 Switching Protocols\r\n")
    with pytest.raises(InvalidResponse, match="header line longer than 40 bytes"):
        ResponseParser(max_line=40).feed(b"HTTP/1.1 101 OK\r\nX: " + b"a" * 40 + b"\r\n")
    with pytest.raises(InvalidResponse, match="more than 1 header fields"):
        ResponseParser(max_headers=1).feed(b"HTTP/1.1 101 OK\r\nA: 1\r\nB: 2\r\n\r\n")
    with pytest.raises(InvalidResponse, match="response head larger than 25 bytes"):
        ResponseParser(max_head=25).feed(b"HTTP/1.1 101 OK\r\nA: 1\r\nB: 2\r\n")


def test_response_parser_refuses_to_be_fed_after_the_response() -> None:
    parser = ResponseParser()
    assert parser.feed(SWITCHING + FRAME) is not None
    assert parser.trailing == FRAME
    with pytest.raises(InvalidState):
        parser.feed(FRAME)


# -- build_response, build_request -----------------------------------------------------------------------


def test_build_response_writes_status_line_headers_and_body_byte_exact() -> None:
    data = build_response(404, [("Content-Type", "text/plain"), ("Content-Length", "3")], b"no\n")
    assert data == b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nno\n"


def test_build_response_uses_the_standard_reason_phrase() -> None:
    assert build_response(101, []) == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    assert build_response(431, []) == b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"
    assert build_response(599, []) == b"HTTP/1.1 599 \r\n\r\n"


@pytest.mark.parametrize(
    "header",
    [
        ("X-Evil", "a\r\nSet-Cookie: x=1"),
        ("X-Evil", "a\nb"),
        ("X-Evil", "a\rb"),
        ("X-Evil", "a\x00b"),
        ("X-Evil", " padded"),
        ("X-Evil", "snow \u2603"),
        ("X Evil", "a"),
        ("X-Evil\r\n", "a"),
        ("", "a"),
    ],
)
def test_build_response_refuses_headers_that_could_split_the_response(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        build_response(200, [header])


def test_build_response_refuses_an_impossible_status() -> None:
    with pytest.raises(ValueError):
        build_response(42, [])


def test_build_request_writes_a_request_head_byte_exact() -> None:
    data = build_request("GET", "/chat?x=1", [("Host", "example.com")])
    assert data == b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert RequestParser().feed(data) == Request(
        "GET", "/chat?x=1", (1, 1), Headers([("Host", "example.com")]), data
    )


@pytest.mark.parametrize(
    ("method", "target"), [("GET", ""), ("GET", "/a b"), ("GET", "/caf\xe9"), ("G T", "/")]
)
def test_build_request_refuses_what_cannot_go_on_the_request_line(method: str, target: str) -> None:
    with pytest.raises(ValueError):
        build_request(method, target, [])


# -- property: any valid head round-trips through any chunking ------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_CHARS = (
    "".join(chr(c) for c in range(0x21, 0x7F)) + " \t" + "".join(chr(c) for c in range(0x80, 0x100))
)

names = st.text(alphabet=_TCHAR, min_size=1, max_size=12)
values = st.text(alphabet=_VALUE_CHARS, max_size=30).map(lambda value: value.strip(" \t"))
targets = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F)), min_size=1, max_size=30)


@given(
    method=names,
    target=targets,
    fields=st.lists(st.tuples(names, values), max_size=12),
    ows=st.sampled_from(["", " ", "\t", " \t "]),
    trailing=st.binary(max_size=16),
    data=st.data(),
)
def test_any_valid_head_round_trips_through_any_chunking(
    method: str, target: str, fields: list[tuple[str, str]], ows: str, trailing: bytes, data: st.DataObject
) -> None:
    head = (
        f"{method} {target} HTTP/1.1\r\n".encode("ascii")
        + b"".join(f"{name}:{ows}{value}{ows}\r\n".encode("latin-1") for name, value in fields)
        + b"\r\n"
    )
    stream = head + trailing
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)])]
    parser = RequestParser()
    for index, chunk in enumerate(chunks):
        request = parser.feed(chunk)
        if request is not None:
            break
    assert request is not None
    assert (request.method, request.target, request.version) == (method, target, (1, 1))
    assert request.headers.raw_items() == fields
    assert request.head == head
    # Whatever came with the chunk that ended the head is trailing; the caller reads the rest.
    assert parser.trailing + b"".join(chunks[index + 1 :]) == trailing
