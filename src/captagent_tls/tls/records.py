"""TLS record framing: content types, limits, and finding the next record header in a stream
whose framing was lost (after a gap in the capture, or bytes that are not records)."""

from __future__ import annotations

from captagent_tls.tls.keyschedule import TLS12

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24
CONTENT_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT))
MAX_RECORD = (1 << 14) + 2048


def find_record_start(data: bytes | bytearray, start: int, version: int) -> int:
    """Offset of the next plausible record header of this connection, or -1.

    Plausible: a known content type, this connection's record version, a sane length,
    and another plausible header right after the record (when those bytes are here).
    """
    version = version or TLS12
    marker = bytes([version >> 8, version & 0xFF])
    end = len(data)
    search = start
    while True:
        found = data.find(marker, search + 1)
        if found < 0:
            return -1
        header = found - 1
        search = found
        if data[header] not in CONTENT_TYPES:
            continue
        if header + 5 > end:
            return header  # too few bytes to judge: wait for more
        length = (data[header + 3] << 8) | data[header + 4]
        following = header + 5 + length
        if 0 < length <= MAX_RECORD and (
            following + 3 > end
            or (data[following] in CONTENT_TYPES
                and data[following + 1 : following + 3] == marker)
        ):
            return header
