"""Where the TLS fields of one direction's TCP stream are, so mutations can aim at them.

An independent, deliberately simple walk over the records of a fixture stream (written for
the fuzzer, sharing nothing with the product's parsers): record headers, ciphertext, and in
the plaintext handshake the fields whose handling matters most (versions, randoms, session
IDs, cipher suites, extensions, certificates).  It stops at the first record that does not
parse: for a fixture that is the end of the stream, or a hole the capture lost on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24

# field kinds
RECORD = "record"  # a whole record, header included
REC_TYPE, REC_VERSION, REC_LENGTH = "rec_type", "rec_version", "rec_length"
CIPHERTEXT = "ciphertext"
CCS_BODY, ALERT_BODY = "ccs_body", "alert_body"
HS_TYPE, HS_LENGTH, HS_BODY = "hs_type", "hs_length", "hs_body"
HELLO_VERSION, RANDOM, SESSION_ID_LENGTH, SESSION_ID = (
    "hello_version",
    "random",
    "session_id_length",
    "session_id",
)
SUITES_LENGTH, SUITE, COMPRESSION = "suites_length", "suite", "compression"
EXTENSIONS_LENGTH, EXT_TYPE, EXT_LENGTH, EXT_DATA = (
    "extensions_length",
    "ext_type",
    "ext_length",
    "ext_data",
)
CERTS_LENGTH, CERT_LENGTH, CERT = "certs_length", "cert_length", "cert"


@dataclass(frozen=True)
class Field:
    offset: int  # in the direction's stream
    length: int
    kind: str
    record_type: int = 0


def _extensions(stream: bytes, pos: int, end: int, out: list[Field]) -> None:
    if pos + 2 > end:
        return
    out.append(Field(pos, 2, EXTENSIONS_LENGTH))
    pos += 2
    while pos + 4 <= end:
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        out.append(Field(pos, 2, EXT_TYPE))
        out.append(Field(pos + 2, 2, EXT_LENGTH))
        if length:
            out.append(Field(pos + 4, min(length, end - pos - 4), EXT_DATA))
        pos += 4 + length


def _hello(stream: bytes, pos: int, end: int, server: bool, out: list[Field]) -> None:
    out.append(Field(pos, 2, HELLO_VERSION))
    out.append(Field(pos + 2, 32, RANDOM))
    pos += 34
    if pos >= end:
        return
    sid = stream[pos]
    out.append(Field(pos, 1, SESSION_ID_LENGTH))
    if sid:
        out.append(Field(pos + 1, sid, SESSION_ID))
    pos += 1 + sid
    if server:
        out.append(Field(pos, 2, SUITE))
        out.append(Field(pos + 2, 1, COMPRESSION))
        _extensions(stream, pos + 3, end, out)
        return
    if pos + 2 > end:
        return
    suites = int.from_bytes(stream[pos : pos + 2], "big")
    out.append(Field(pos, 2, SUITES_LENGTH))
    for at in range(pos + 2, min(pos + 2 + suites, end) - 1, 2):
        out.append(Field(at, 2, SUITE))
    pos += 2 + suites
    if pos >= end:
        return
    compression = stream[pos]
    out.append(Field(pos, 1 + compression, COMPRESSION))
    _extensions(stream, pos + 1 + compression, end, out)


def _certificates(stream: bytes, pos: int, end: int, out: list[Field]) -> None:
    out.append(Field(pos, 3, CERTS_LENGTH))
    pos += 3
    while pos + 3 <= end:
        length = int.from_bytes(stream[pos : pos + 3], "big")
        out.append(Field(pos, 3, CERT_LENGTH))
        out.append(Field(pos + 3, min(length, end - pos - 3), CERT))
        pos += 3 + length


def _handshake(stream: bytes, pos: int, end: int, out: list[Field]) -> None:
    """Handshake messages wholly inside one record (the common case in the fixtures)."""
    while pos + 4 <= end:
        msg_type = stream[pos]
        length = int.from_bytes(stream[pos + 1 : pos + 4], "big")
        body, body_end = pos + 4, min(pos + 4 + length, end)
        out.append(Field(pos, 1, HS_TYPE))
        out.append(Field(pos + 1, 3, HS_LENGTH))
        if length:
            out.append(Field(body, body_end - body, HS_BODY))
        if msg_type in (1, 2) and body_end - body >= 34:
            _hello(stream, body, body_end, msg_type == 2, out)
        elif msg_type == 11 and body_end - body >= 3:
            _certificates(stream, body, body_end, out)
        pos += 4 + length


def record_fields(stream: bytes) -> list[Field]:
    """The fields of every record of a stream, in stream order."""
    out: list[Field] = []
    pos = 0
    protected = False
    while pos + 5 <= len(stream):
        rtype, major = stream[pos], stream[pos + 1]
        if rtype not in (20, 21, 22, 23, 24) or major != 3:
            break
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(stream):
            break
        body = pos + 5
        out.append(Field(pos, 5 + length, RECORD, rtype))
        out.append(Field(pos, 1, REC_TYPE, rtype))
        out.append(Field(pos + 1, 2, REC_VERSION, rtype))
        out.append(Field(pos + 3, 2, REC_LENGTH, rtype))
        if length:
            if rtype == APPLICATION_DATA or (protected and rtype != CHANGE_CIPHER_SPEC):
                out.append(Field(body, length, CIPHERTEXT, rtype))
            elif rtype == HANDSHAKE:
                _handshake(stream, body, body + length, out)
            elif rtype == CHANGE_CIPHER_SPEC:
                out.append(Field(body, length, CCS_BODY, rtype))
            elif rtype == ALERT:
                out.append(Field(body, length, ALERT_BODY, rtype))
        if rtype == CHANGE_CIPHER_SPEC:
            protected = True
        pos += 5 + length
    return out
