"""Bad frames over real sockets: each gets its close code, and the server keeps serving everyone else.

Every case runs with a bystander connected before the offender and checked
after it: one client's protocol error never reaches another. The offender's
``disconnect()`` runs exactly once with the code it was sent, and the server
ends its TCP connection with a FIN (a lingering close), not a reset.
The byte-level rules themselves are unit-tested in tests/protocol and, in
their Autobahn shapes, over TCP in tests/server/test_conformance_sockets.py;
here each class of abuse is checked end to end against a running server.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from websockets.sync.client import connect

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.deflate import DeflateOptions
from django_rawws.protocol.masking import apply_mask
from tests.server.helpers import TIMEOUT, RawClient, RecordingApp, running_server, wait_closed, ws_url

LIMIT = 4096


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length_bytes: int | None = None,
    declared: int | None = None,
) -> bytes:
    """Any frame, valid or not: ``rsv`` is the 3-bit RSV field, ``length_bytes`` forces 0, 2 or 8
    extended length bytes (non-minimal encodings), ``declared`` a length other than the payload's."""
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if length_bytes is None:
        length_bytes = 0 if length < 126 else 2 if length < 65536 else 8
    mask_bit = 0x80 if masked else 0
    if length_bytes == 0:
        header = bytes([first, mask_bit | length])
    elif length_bytes == 2:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + apply_mask(payload, mask)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def _send(data: bytes) -> Callable[[RawClient], None]:
    return lambda client: client.send_raw(data)


def _compressed_bomb(client: RawClient) -> None:
    """1 MiB of zeros, deflated to about a kilobyte: over the limit only once inflated."""
    client.send_binary(bytes(1 << 20))


CASES: list[tuple[str, Callable[[RawClient], None], int]] = [
    ("unmasked frame", _send(frame(Opcode.TEXT, b"hello", masked=False)), 1002),
    ("RSV1 without an extension", _send(frame(Opcode.TEXT, b"x", rsv=4)), 1002),
    ("RSV2", _send(frame(Opcode.TEXT, b"x", rsv=2)), 1002),
    ("RSV3", _send(frame(Opcode.BINARY, b"x", rsv=1)), 1002),
    ("reserved data opcode 3", _send(frame(3, b"x")), 1002),
    ("reserved control opcode 11", _send(frame(11)), 1002),
    ("ping of 126 bytes", _send(frame(Opcode.PING, b"p" * 126)), 1002),
    ("fragmented ping", _send(frame(Opcode.PING, b"p", fin=False)), 1002),
    ("non-minimal 16-bit length", _send(frame(Opcode.TEXT, b"short", length_bytes=2)), 1002),
    ("non-minimal 64-bit length", _send(frame(Opcode.TEXT, b"short", length_bytes=8)), 1002),
    ("continuation without a message", _send(frame(Opcode.CONTINUATION, b"x")), 1002),
    (
        "new message inside a fragmented one",
        _send(frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.TEXT, b"b")),
        1002,
    ),
    ("invalid UTF-8", _send(frame(Opcode.TEXT, b"caf\xc3")), 1007),
    (
        "invalid UTF-8 across fragments",
        _send(frame(Opcode.TEXT, b"caf\xc3", fin=False) + frame(Opcode.CONTINUATION, b"\x28")),
        1007,
    ),
    ("close code 999", _send(frame(Opcode.CLOSE, close_payload(999))), 1002),
    ("close code 1005", _send(frame(Opcode.CLOSE, close_payload(1005))), 1002),
    ("close code 1016", _send(frame(Opcode.CLOSE, close_payload(1016))), 1002),
    ("close code 5000", _send(frame(Opcode.CLOSE, close_payload(5000))), 1002),
    ("close with a one-byte payload", _send(frame(Opcode.CLOSE, b"\x03")), 1002),
    ("close reason not UTF-8", _send(frame(Opcode.CLOSE, close_payload(1000, b"\xff"))), 1007),
    ("message one byte over the limit", _send(frame(Opcode.BINARY, b"x" * (LIMIT + 1))), 1009),
    (
        "fragments adding up to one byte over the limit",
        _send(frame(Opcode.BINARY, b"x" * LIMIT, fin=False) + frame(Opcode.CONTINUATION, b"x")),
        1009,
    ),
    ("frame header declaring 2**62 bytes", _send(frame(Opcode.BINARY, declared=1 << 62)), 1009),
    ("compressed message over the limit once inflated", _compressed_bomb, 1009),
]


@pytest.mark.parametrize(
    ("offence", "code"), [pytest.param(send, code, id=name) for name, send, code in CASES]
)
def test_each_bad_frame_gets_its_close_code_and_the_others_are_still_served(
    offence: Callable[[RawClient], None], code: int
) -> None:
    app = RecordingApp()
    with running_server(app, max_message_size=LIMIT) as server, connect(ws_url(server)) as bystander:
        bystander.send("before")
        assert bystander.recv(TIMEOUT) == "before"
        # permessage-deflate only where the case needs it (RSV1 is then legal).
        client = RawClient.connect(server, deflate=DeflateOptions() if offence is _compressed_bomb else None)
        with client.sock:
            offence(client)
            events, received = client.events_until_close()
            assert (events, received) == ([], code)
            assert wait_closed(client.sock, TIMEOUT) is not None  # FIN after the close frame
        offender: Any = app.handshakes[1]
        assert app.wait_until(lambda: any(conn is offender for conn, _ in app.disconnects))
        bystander.send("after")
        assert bystander.recv(TIMEOUT) == "after"
    assert [got for conn, got in app.disconnects if conn is offender] == [code]
    assert [message for conn, message in app.messages if conn is offender] == []
