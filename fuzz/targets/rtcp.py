"""media/rtcp.py: ``parse_compound`` and the HEP type 5 JSON.

Input: the bytes of one compound RTCP packet.

Oracle: only ``RtcpError`` escapes.  A compound that parses is exactly the input: walking the
headers here (independently of the product) covers every byte, packet after packet, and
gives the same number of packets with the same types; every count and field fits its wire
width; the JSON is valid, has heplify's fields in heplify's order, its ``type`` is the first
packet's, and ``report_count`` is the number of report blocks of the SRs and RRs.
"""

from __future__ import annotations

import json
import struct

from captagent_tls.media import rtcp
from fuzz.oracle import OracleFailure

MAX_LEN = 4096
DICTIONARY = [b"\x80\xc8", b"\x81\xc9", b"\x81\xca", b"\x81\xcb", b"\x80\xcc", b"\x80\xcf", b"\xa0"]
FIELDS = [
    "sender_information",
    "ssrc",
    "type",
    "report_count",
    "report_blocks",
    "report_blocks_xr",
]


def _walk(data: bytes) -> list[int] | None:
    """Packet types of a compound by its headers alone, or None when they do not tile it."""
    types = []
    pos = 0
    while pos + 4 <= len(data):
        types.append(data[pos + 1])
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    return types if pos == len(data) else None


def _u32(value: int) -> bool:
    return 0 <= value <= 0xFFFFFFFF


def one_input(data: bytes) -> None:
    try:
        packets = rtcp.parse_compound(data)
    except rtcp.RtcpError:
        return
    types = _walk(data)
    if types is None or types != [p.packet_type for p in packets]:
        raise OracleFailure("rtcp-tiling", f"headers give {types}, parsed {len(packets)}")
    blocks = 0
    for packet in packets:
        if isinstance(packet, rtcp.SenderReport | rtcp.ReceiverReport):
            blocks += len(packet.reports)
            if len(packet.reports) > 31 or not _u32(packet.ssrc):
                raise OracleFailure("rtcp-report", repr(packet)[:120])
            for block in packet.reports:
                if not -(1 << 23) <= block.packets_lost < (1 << 23) or block.fraction_lost > 255:
                    raise OracleFailure("rtcp-block", repr(block))
        elif isinstance(packet, rtcp.SourceDescription):
            for chunk in packet.chunks:
                if any(len(text) > 255 for _, text in chunk.items):
                    raise OracleFailure("rtcp-sdes", "an item longer than its length byte")
        elif isinstance(packet, rtcp.ExtendedReport):
            for xr in packet.blocks:
                if xr.block_type > 255:
                    raise OracleFailure("rtcp-xr", repr(xr)[:120])
    document = json.loads(rtcp.hep_json(packets))
    if list(document)[: len(FIELDS)] != FIELDS or list(document)[-1] != "sdes_ssrc":
        raise OracleFailure("rtcp-json-fields", str(list(document)))
    if document["type"] != data[1] or document["report_count"] != blocks:
        raise OracleFailure("rtcp-json-values", f"{document['type']} {document['report_count']}")
    rtcp.heplify_mos(packets)
    rtcp.sender_ssrc(packets)


def seeds() -> list[bytes]:
    def header(packet_type: int, count: int, body: bytes) -> bytes:
        return struct.pack("!BBH", 0x80 | count, packet_type, len(body) // 4) + body

    block = struct.pack("!IIIIII", 2, (5 << 24) | 7, 1000, 20, 3, 4)
    sr = header(200, 1, struct.pack("!IIIIII", 1, 2, 3, 4, 5, 6) + block)
    rr = header(201, 2, struct.pack("!I", 1) + block + block)
    sdes = header(202, 1, struct.pack("!I", 1) + b"\x01\x05alice\x00\x00\x00\x00\x00")
    bye = header(203, 1, struct.pack("!I", 1) + b"\x06hangup\x00")
    app = header(204, 0, struct.pack("!I", 1) + b"PING")
    voip = struct.pack("!I", 2) + bytes(range(28))
    xr = header(
        207,
        0,
        struct.pack("!I", 1)
        + struct.pack("!BBHII", 4, 0, 2, 1, 2)
        + struct.pack("!BBHIII", 5, 0, 3, 2, 3, 4)
        + struct.pack("!BBH", 7, 0, 8)
        + voip,
    )
    return [sr + sdes, rr + sdes + xr, sr + sdes + bye, app + sdes, xr]
