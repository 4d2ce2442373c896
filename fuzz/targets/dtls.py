"""media/dtls.py: DTLS records, hello reassembly and DTLS-SRTP keys (``DtlsTracker``).

Input: datagrams, each a direction byte (bit 0: from the second endpoint) and a two-byte
length, then that many bytes.

Oracle: no exception; the tracker holds at most its bound of associations; every record's
fragment is a piece of its datagram; a complete association has 32-byte randoms, profiles
that fit two bytes, and keying material whose halves have the lengths its suite needs (with a
key log that has a secret for every client random).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from captagent_tls.media import dtls
from captagent_tls.tls.keys import KeyStore
from fuzz.oracle import OracleFailure

MAX_LEN = 8192
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "data" / "media" / "dtls"
A = (b"\x7f\x00\x00\x01", 5000)
B = (b"\x7f\x00\x00\x02", 6000)
DICTIONARY = [b"\x16\xfe\xfd", b"\x16\xfe\xff", b"\x00\x0e", b"\x00\x2b", b"\xfe\xfc", b"\x01\x00"]


class _AnyRandom(KeyStore):
    """A key store with a master secret and an exporter secret for every client random."""

    def secrets_for(self, client_random: bytes):  # type: ignore[no-untyped-def]
        entry = self.client_random_entry(client_random)
        entry.master_secret = bytes(48)
        entry.add_tls13("EXPORTER_SECRET", bytes(32))
        return entry


def one_input(data: bytes) -> None:
    tracker = dtls.DtlsTracker(max_associations=4)
    keys = _AnyRandom()
    pos = 0
    while pos + 3 <= len(data):
        flags, length = data[pos], struct.unpack_from("!H", data, pos + 1)[0]
        datagram = data[pos + 3 : pos + 3 + length]
        pos += 3 + length
        for record in dtls.parse_records(datagram).records:
            if record.fragment not in datagram:
                raise OracleFailure("dtls-record", "a fragment that is not in its datagram")
        src, dst = (B, A) if flags & 1 else (A, B)
        done = tracker.datagram(src, dst, datagram)
        if len(tracker) > 4:
            raise OracleFailure("dtls-bound", f"{len(tracker)} associations")
        if done is None:
            continue
        if len(done.client_random) != 32 or len(done.server_random) != 32:
            raise OracleFailure("dtls-random", "a random that is not 32 bytes")
        if any(not 0 <= p <= 0xFFFF for p in done.offered_profiles):
            raise OracleFailure("dtls-profiles", str(done.offered_profiles))
        for material in dtls.candidate_materials(done, keys):
            suite = material.suite
            for half in (material.client, material.server):
                if len(half.key) != suite.key_length or len(half.salt) != suite.salt_length:
                    raise OracleFailure("dtls-material", suite.name)


def _dtls13_hellos() -> bytes:
    """A DTLS 1.3 exchange in the clear part: ClientHello (use_srtp offering two profiles,
    supported_versions) and a ServerHello that selects DTLS 1.3, each in one record."""

    def extension(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    use_srtp = b"\x00\x04\x00\x07\x00\x01\x00"
    client_ext = extension(14, use_srtp) + extension(43, b"\x02\xfe\xfc")
    client = (
        b"\xfe\xfd" + bytes(range(32)) + b"\x00\x00" + b"\x00\x02\x13\x01\x01\x00"
        + struct.pack("!H", len(client_ext)) + client_ext
    )  # fmt: skip
    server_ext = extension(43, b"\xfe\xfc")
    server = (
        b"\xfe\xfd" + bytes(range(32, 64)) + b"\x00\x13\x01\x00"
        + struct.pack("!H", len(server_ext)) + server_ext
    )  # fmt: skip
    out = b""
    for direction, msg_type, body in ((0, 1, client), (1, 2, server)):
        message = bytes([msg_type]) + len(body).to_bytes(3, "big") + bytes(2) + bytes(3)
        message += len(body).to_bytes(3, "big") + body
        record = struct.pack("!BHHHIH", 22, 0xFEFD, 0, 0, 0, len(message)) + message
        unified = b"\x2c\x00\x01\x00\x02ab"  # an encrypted DTLS 1.3 record after it
        datagram = record + unified
        out += bytes([direction]) + struct.pack("!H", len(datagram)) + datagram
    return out


def seeds() -> list[bytes]:
    out = [_dtls13_hellos()]
    for path in sorted(FIXTURES.glob("*.json")):
        fixture = json.loads(path.read_text())
        first = fixture["datagrams"][0]["src"]
        data = b""
        for datagram in fixture["datagrams"]:
            payload = bytes.fromhex(datagram["hex"])
            data += bytes([datagram["src"] != first]) + struct.pack("!H", len(payload)) + payload
        out.append(data[:MAX_LEN])
    return out
