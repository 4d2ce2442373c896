"""HEPv3 encoding rules that the collectors depend on."""

from __future__ import annotations

import socket

import pytest

from captagent_tls.message import Message
from captagent_tls.sinks.hep import (
    CollectorAddressError,
    HepOptions,
    HepSink,
    encode_hep3,
    parse_collector,
)
from tests.support.hep import CHUNK_PAYLOAD, UdpCollector, chunk_types, chunk_value, walk_hep3

SIP = b"OPTIONS sip:x@example.test SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


def message(payload=SIP, ipv6=False, is_sip=True, transport="tls") -> Message:
    size = 16 if ipv6 else 4
    return Message(
        1_700_000_000_123_456_789,
        (b"\x01" * size, 40000),
        (b"\x02" * size, 5061),
        transport,
        payload,
        "1",
        is_sip,
        True,
        "TLSv1.2",
        "X",
    )


def test_chunks_in_order_with_payload_last():
    packet = encode_hep3(message(), HepOptions(capture_id=7, password="pw", node_name="edge1"))
    types = chunk_types(packet)
    assert types[-1] == CHUNK_PAYLOAD
    assert types[:10] == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12]
    assert chunk_value(packet, 0x000E) == b"pw"
    assert chunk_value(packet, 0x0013) == b"edge1"
    assert int.from_bytes(chunk_value(packet, 0x0009), "big") == 1_700_000_000
    assert int.from_bytes(chunk_value(packet, 0x000A), "big") == 123_456
    assert chunk_value(packet, 0x0002) == bytes([22])
    assert chunk_value(packet, CHUNK_PAYLOAD) == SIP
    assert int.from_bytes(packet[4:6], "big") == len(packet)


def test_ipv6_addresses_and_optional_chunks_left_out():
    packet = encode_hep3(message(ipv6=True), HepOptions())
    types = chunk_types(packet)
    assert 5 in types and 6 in types and 3 not in types
    assert 0x000E not in types and 0x0013 not in types
    assert chunk_value(packet, 0x0001) == bytes([socket.AF_INET6])


def test_plain_messages_carry_their_real_ip_protocol():
    assert chunk_value(encode_hep3(message(transport="tcp"), HepOptions()), 2) == bytes([6])
    assert chunk_value(encode_hep3(message(transport="udp"), HepOptions()), 2) == bytes([17])


def test_correlation_id_only_when_asked():
    assert 0x0011 not in chunk_types(encode_hep3(message(), HepOptions()))
    packet = encode_hep3(message(), HepOptions(correlation_id=True))
    assert chunk_value(packet, 0x0011) == b"1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:9060", ("udp", "10.0.0.5", 9060)),
        ("udp://homer.example:9060", ("udp", "homer.example", 9060)),
        ("tcp://[2001:db8::1]:9061", ("tcp", "2001:db8::1", 9061)),
        ("TLS://h:1", ("tls", "h", 1)),
    ],
)
def test_collector_addresses(text, expected):
    assert parse_collector(text) == expected


@pytest.mark.parametrize("text", ["homer", "h:0", "h:99999", "sctp://h:1", "[::1]", ":9060"])
def test_bad_collector_addresses(text):
    with pytest.raises(CollectorAddressError):
        parse_collector(text)


def test_what_heplify_would_drop_is_counted_not_sent():
    with UdpCollector() as collector:
        sink = HepSink([collector.address], HepOptions())
        sink.emit(message())
        sink.emit(message(payload=b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n"))  # 24 bytes
        sink.emit(message(payload=b"\x00binary", is_sip=False))
        sink.emit(message(payload=b"INVITE " + b"x" * 70000))
        packets = collector.wait_for(1)
        sink.close()
    assert len(packets) == 1 and walk_hep3(packets[0])[-1].value == SIP
    stats = sink.stats
    assert sink.collectors[0].stats.sent == 1
    assert (stats.skipped_short, stats.skipped_not_sip, stats.skipped_too_large) == (1, 1, 1)


def test_json_lines_escape_and_fall_back_to_base64():
    import base64
    import io
    import json

    from captagent_tls.sinks.jsonl import JsonLinesSink

    out = io.StringIO()
    sink = JsonLinesSink(out)
    sink.emit(message(payload='INVITE "é" \u2028\\ x\r\n'.encode())._replace(call_id='a"b'))
    sink.emit(message(payload=b"\xff\x00", is_sip=False)._replace(call_id=None, tls_version=""))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["payload"] == 'INVITE "é" \u2028\\ x\r\n' and first["call_id"] == 'a"b'
    assert first["ts"] == 1700000000.123456 and first["src_ip"] == "1.1.1.1"
    assert first["direction"] == "c2s" and first["kind"] == "sip"
    assert base64.b64decode(second["payload_b64"]) == b"\xff\x00" and "payload" not in second
    assert second["call_id"] is None and second["tls_version"] is None
    assert second["kind"] == "raw"
