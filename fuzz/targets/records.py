"""tls/record_stream.py: finding the next record header in a stream whose framing was lost.

Input: the record version (one of the real ones, or any), the start offset, and the data.

Oracle: no exception; the answer is -1 or an offset at or after ``start`` where a known
content type is followed by that version; when a whole header is there, its length is
sane (1 to 2**14 + 2048).
"""

from __future__ import annotations

from captagent_tls.tls.record_stream import CONTENT_TYPES, MAX_RECORD, find_record_start
from fuzz import mutate
from fuzz.oracle import OracleFailure

MAX_LEN = 4096
VERSIONS = (0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0)


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    version = VERSIONS[data[0] % len(VERSIONS)] if data[0] < 0x80 else data[0] << 8 | 0x03
    start = data[1] * 16 + data[2] % 16
    stream = data[3:]
    for buffer in (stream, bytearray(stream)):
        found = find_record_start(buffer, start, version)
        if found == -1:
            continue
        if found + 3 > len(stream):
            # a header cut by the end of the data: "wait for more bytes"
            if stream[found] not in CONTENT_TYPES or stream[found + 1 : found + 2] not in (
                b"",
                b"\x03",
            ):
                raise OracleFailure("record-start", f"{found} is not a record header")
            continue
        # a known version must match; an unknown one (0, or not SSLv3-TLS at all) may be
        # any of SSLv3 to TLS 1.3
        version_ok = (
            stream[found + 1 : found + 3] == bytes([version >> 8, version & 0xFF])
            if version >> 8 == 3
            else stream[found + 1 : found + 2] == b"\x03"
            and stream[found + 2 : found + 3] <= b"\x04"
        )
        if (
            not (start <= found < len(stream))
            or stream[found] not in CONTENT_TYPES
            or not version_ok
        ):
            raise OracleFailure("record-start", f"{found} is not a record header")
        if found + 5 <= len(stream):
            length = int.from_bytes(stream[found + 3 : found + 5], "big")
            if not 0 < length <= MAX_RECORD:
                raise OracleFailure("record-length", f"header at {found} has length {length}")


def seeds() -> list[bytes]:
    out = []
    for seed in mutate.seeds()[:10]:
        for conn in seed.conns[:1]:
            for d in conn.directions:
                version = int.from_bytes(d.stream[1:3], "big") if len(d.stream) > 3 else 0x0303
                selector = VERSIONS.index(version) if version in VERSIONS else 3
                out.append(bytes([selector, 0, 7]) + d.stream[100 : 100 + MAX_LEN - 3])
    return out
