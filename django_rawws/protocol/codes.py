"""Opcodes and close codes of RFC 6455, named as in the RFC.

No other module writes these numbers literally.
"""

from __future__ import annotations

import enum

__all__ = ["Opcode", "CloseCode", "DATA_OPCODES", "CONTROL_OPCODES", "is_valid_received_close_code"]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2); 3-7 and 11-15 are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    # 1004 is reserved.
    NO_STATUS_RCVD = 1005  # never on the wire: a close frame without a code
    ABNORMAL_CLOSURE = 1006  # never on the wire: TCP closed without a close frame
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


# Codes a peer may put in a close frame: 1000-1003, 1007-1014 and 3000-4999.
# 1004-1006, 1015 and 1016-2999 are reserved or must never be sent (§7.4.2).
_SENDABLE_BELOW_3000 = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def is_valid_received_close_code(code: int) -> bool:
    """Return whether a close frame may carry ``code`` on the wire."""
    return code in _SENDABLE_BELOW_3000 or 3000 <= code <= 4999
