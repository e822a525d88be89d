"""Frame serialization and close payloads (RFC 6455 §5.2, §5.5.1, §7.4).

Parsing lives in :mod:`.connection`, which reads frames straight out of its
input buffer; this module builds the bytes that go out.
"""

from __future__ import annotations

import os
import struct

from ..exceptions import InvalidPayload, ProtocolError
from .codes import CloseCode, Opcode, is_valid_received_close_code
from .masking import apply_mask

__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "MAX_HEADER_SIZE",
    "encode_frame",
    "encode_close_payload",
    "parse_close_payload",
]

#: Control frames carry at most 125 bytes of payload (§5.5).
MAX_CONTROL_PAYLOAD = 125
#: 2 bytes of header, 8 of extended length, 4 of mask.
MAX_HEADER_SIZE = 14

_FIN = 0x80
_RSV1 = 0x40
_MASK_BIT = 0x80
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Return one frame on the wire.

    ``mask`` is ``None`` for the server role (frames unmasked, §5.1) or the
    4-byte masking key of the client role; ``os.urandom`` is the caller's
    business so that tests can fix it.
    """
    first = opcode | (_FIN if fin else 0) | (_RSV1 if rsv1 else 0)
    length = len(payload)
    mask_bit = _MASK_BIT if mask is not None else 0
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = _pack_16(first, mask_bit | 126, length)
    else:
        header = _pack_64(first, mask_bit | 127, length)
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)


def random_mask() -> bytes:
    """A fresh masking key from a strong source, as §5.3 requires."""
    return os.urandom(4)


def encode_close_payload(code: int | None, reason: str = "") -> bytes:
    """Return the payload of a close frame; ``None`` means no status code at all."""
    if code is None or code == CloseCode.NO_STATUS_RCVD:
        if reason:
            raise ValueError("a close reason needs a status code")
        return b""
    if not is_valid_received_close_code(code):
        # 1004-1006, 1015 and unregistered ranges never go on the wire (§7.4).
        raise ValueError(f"close code {code} may not be sent")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")
    return code.to_bytes(2, "big") + encoded


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Return ``(code, reason)`` of a received close frame, 1005 when it has no code.

    Raises ProtocolError (1002) for a one-byte payload or a code that must not
    appear on the wire, InvalidPayload (1007) for a reason that isn't UTF-8.
    """
    if not payload:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_received_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayload("close reason is not valid UTF-8") from None
    return code, reason


__all__ += ["random_mask", "Opcode"]
