"""Self-tests of tests/support/hep.py: hep-js decodes a HEPv3 packet built here by hand."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.support.hep import (
    CHUNK_AUTH_KEY,
    CHUNK_PAYLOAD,
    CHUNK_PROTO_TYPE,
    UdpCollector,
    chunk_types,
    chunk_value,
    decode_with_hepjs,
    walk_hep3,
)

SIP = (
    b"OPTIONS sip:bob@example.test SIP/2.0\r\n"
    b"Call-ID: hand-built-1@example.test\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _chunk(ctype: int, value: bytes) -> bytes:
    # vendor 0, type, length including the 6-byte chunk header, value
    return struct.pack(">HHH", 0, ctype, 6 + len(value)) + value


def build_by_hand(
    payload: bytes = SIP, *, password: bytes | None = b"s3cret", proto: int = 22
) -> bytes:
    body = b"".join(
        [
            _chunk(0x0001, bytes([2])),  # IP family: AF_INET
            _chunk(0x0002, bytes([proto])),  # IP protocol
            _chunk(0x0003, bytes([192, 0, 2, 10])),  # source IPv4
            _chunk(0x0004, bytes([198, 51, 100, 20])),  # destination IPv4
            _chunk(0x0007, struct.pack(">H", 50123)),  # source port
            _chunk(0x0008, struct.pack(">H", 5061)),  # destination port
            _chunk(0x0009, struct.pack(">I", 1_700_000_123)),  # seconds
            _chunk(0x000A, struct.pack(">I", 654_321)),  # microseconds
            _chunk(0x000B, bytes([1])),  # protocol type: SIP
            _chunk(0x000C, struct.pack(">I", 2001)),  # capture agent id
            _chunk(0x000E, password) if password is not None else b"",  # auth key
            _chunk(0x000F, payload),  # payload, last
        ]
    )
    return b"HEP3" + struct.pack(">H", 6 + len(body)) + body


def test_hepjs_decodes_every_field() -> None:
    packet = build_by_hand()
    (got,) = decode_with_hepjs([packet])
    assert "error" not in got, got
    assert got["protocolFamily"] == 2
    assert got["protocol"] == 22
    assert got["srcIp"] == "192.0.2.10"
    assert got["dstIp"] == "198.51.100.20"
    assert got["srcPort"] == 50123
    assert got["dstPort"] == 5061
    assert got["timeSeconds"] == 1_700_000_123
    assert got["timeUseconds"] == 654_321
    assert got["payloadType"] == 1
    assert got["captureId"] == 2001
    assert got["capturePass"] == "s3cret"
    assert got["payload"] == SIP.decode()


def test_hepjs_several_packets_and_errors() -> None:
    good = build_by_hand(password=None, proto=6)
    bad_magic = b"HEP2" + good[4:]
    zero_len_chunk = b"HEP3" + struct.pack(">H", 12) + struct.pack(">HHH", 0, 1, 0)
    out = decode_with_hepjs([good, bad_magic, zero_len_chunk, good])
    assert [r["index"] for r in out] == [0, 1, 2, 3]
    assert out[0]["protocol"] == 6
    assert "capturePass" not in out[0]
    assert "error" in out[1]
    assert "error" in out[2]
    assert out[3]["payload"] == SIP.decode()
    assert decode_with_hepjs([]) == []


def test_walker() -> None:
    packet = build_by_hand()
    types = chunk_types(packet)
    assert types == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 14, 15]
    assert types[-1] == CHUNK_PAYLOAD
    assert chunk_value(packet, CHUNK_AUTH_KEY) == b"s3cret"
    assert chunk_value(packet, CHUNK_PROTO_TYPE) == b"\x01"
    assert CHUNK_AUTH_KEY not in chunk_types(build_by_hand(password=None))
    assert walk_hep3(packet)[-1].value == SIP
    with pytest.raises(ValueError):
        walk_hep3(packet[:-1])  # total length no longer matches
    with pytest.raises(ValueError):
        walk_hep3(b"HEP2" + packet[4:])
    broken = bytearray(packet)
    broken[6 + 4 : 6 + 6] = struct.pack(">H", 3)  # first chunk claims 3 bytes
    with pytest.raises(ValueError):
        walk_hep3(bytes(broken))


def test_udp_collector() -> None:
    with UdpCollector() as col:
        assert col.port > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(50):
                tx.sendto(b"x%d" % i, ("127.0.0.1", col.port))
        got = col.wait_for(50, timeout=5)
        assert got == [b"x%d" % i for i in range(50)]
        assert col.settle(quiet=0.1) == got
    # not reached in time: returns what it has
    with UdpCollector() as col:
        assert col.wait_for(1, timeout=0.1) == []
