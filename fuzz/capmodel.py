"""A small, independent model of the fixture captures, for mutating them with structure.

Written for the fuzzer only (it shares no code with the product's readers, so a bug in
those cannot hide itself here): classic pcap in, pcap / pcapng out, and for every TCP
packet where its headers, sequence numbers and payload sit.  Only what the fixtures hold is
understood: Ethernet and Linux cooked v1/v2 (or raw IP) frames, IPv4 without options or
IPv6 without extension headers, TCP and UDP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


@dataclass(frozen=True)
class RawPacket:
    ts_ns: int
    data: bytes


def read_pcap(data: bytes) -> tuple[int, list[RawPacket]]:
    """(link type, packets) of a classic pcap file (either byte order, µs or ns)."""
    magic = struct.unpack_from("<I", data)[0]
    if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian = "<"
    else:
        endian = ">"
        magic = struct.unpack_from(">I", data)[0]
        if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            raise ValueError("not a classic pcap file")
    scale = 1 if magic == PCAP_MAGIC_NS else 1000
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    packets = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, pos)
        packets.append(
            RawPacket(sec * 1_000_000_000 + frac * scale, data[pos + 16 : pos + 16 + caplen])
        )
        pos += 16 + caplen
    return linktype, packets


def write_pcap(
    linktype: int, packets: list[RawPacket], nanos: bool = False, big_endian: bool = False
) -> bytes:
    endian = ">" if big_endian else "<"
    magic = PCAP_MAGIC_NS if nanos else PCAP_MAGIC_US
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    record = struct.Struct(endian + "IIII").pack
    for packet in packets:
        seconds, rest = divmod(packet.ts_ns, 1_000_000_000)
        frac = rest if nanos else rest // 1000
        out.append(record(seconds & 0xFFFFFFFF, frac, len(packet.data), len(packet.data)))
        out.append(packet.data)
    return b"".join(out)


def block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def write_pcapng(
    linktype: int, packets: list[RawPacket], secrets: bytes | None = None, secrets_at: int = 0
) -> bytes:
    """Section header, one interface (nanosecond timestamps), enhanced packet blocks, and a
    Decryption Secrets Block holding ``secrets`` (a TLS key log) before packet ``secrets_at``."""
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    options = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 1e-9
    idb = block(0x00000001, struct.pack("<HHI", linktype, 0, 262144) + options)
    out = [shb, idb]
    dsb = (
        block(0x0000000A, struct.pack("<II", 0x544C534B, len(secrets)) + secrets)
        if secrets is not None
        else b""
    )
    for index, packet in enumerate(packets):
        if index == secrets_at and dsb:
            out.append(dsb)
            dsb = b""
        ts = packet.ts_ns & 0xFFFFFFFFFFFFFFFF
        body = (
            struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(packet.data), len(packet.data))
            + packet.data
        )
        out.append(block(0x00000006, body))
    if dsb:
        out.append(dsb)
    return b"".join(out)


# ------------------------------------------------------------------------------ packets


@dataclass
class Layout:
    """Where the parts of one IP/TCP or IP/UDP packet are."""

    ip: int  # offset of the IP header
    version: int  # 4 or 6
    l4: int  # offset of the TCP or UDP header
    protocol: int  # 6 or 17
    payload: int  # offset of the payload
    end: int  # end of the IP datagram
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0


def ip_offset(linktype: int, data: bytes) -> int | None:
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, data[12:14]
    elif linktype == LINKTYPE_LINUX_SLL2:
        offset, ethertype = 20, data[0:2]
    elif linktype == LINKTYPE_LINUX_SLL:
        offset, ethertype = 16, data[14:16]
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4
    elif linktype == LINKTYPE_RAW:
        return 0
    else:
        return None
    return offset if ethertype in (b"\x08\x00", b"\x86\xdd") else None


def parse_layout(linktype: int, data: bytes) -> Layout | None:
    ip = ip_offset(linktype, data)
    if ip is None or len(data) < ip + 20:
        return None
    version = data[ip] >> 4
    if version == 4:
        ihl = (data[ip] & 0x0F) * 4
        total = struct.unpack_from("!H", data, ip + 2)[0]
        if struct.unpack_from("!H", data, ip + 6)[0] & 0x3FFF:
            return None  # a fragment
        protocol = data[ip + 9]
        src, dst = data[ip + 12 : ip + 16], data[ip + 16 : ip + 20]
        l4, end = ip + ihl, ip + total
    elif version == 6:
        if len(data) < ip + 40:
            return None
        protocol = data[ip + 6]
        src, dst = data[ip + 8 : ip + 24], data[ip + 24 : ip + 40]
        l4, end = ip + 40, ip + 40 + struct.unpack_from("!H", data, ip + 4)[0]
    else:
        return None
    if end > len(data):
        return None
    if protocol == 6 and end >= l4 + 20:
        sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", data, l4)
        return Layout(
            ip, version, l4, 6, l4 + (offset >> 4) * 4, end, src, dst, sport, dport, seq, ack, flags
        )
    if protocol == 17 and end >= l4 + 8:
        sport, dport = struct.unpack_from("!HH", data, l4)
        return Layout(ip, version, l4, 17, l4 + 8, end, src, dst, sport, dport)
    return None


def _ipv4_checksum(header: bytes | bytearray) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def rebuild(
    template: bytes,
    layout: Layout,
    payload: bytes,
    seq: int | None = None,
    ack: int | None = None,
    flags: int | None = None,
) -> bytes:
    """The template packet carrying ``payload`` instead, with IP lengths fixed up and
    optionally new TCP sequence / acknowledgment numbers and flags."""
    head = bytearray(template[: layout.payload])
    if layout.protocol == 6:
        if seq is not None:
            struct.pack_into("!I", head, layout.l4 + 4, seq & 0xFFFFFFFF)
        if ack is not None:
            struct.pack_into("!I", head, layout.l4 + 8, ack & 0xFFFFFFFF)
        if flags is not None:
            head[layout.l4 + 13] = flags & 0xFF
    else:
        struct.pack_into("!H", head, layout.l4 + 4, (8 + len(payload)) & 0xFFFF)
    ip = layout.ip
    if layout.version == 4:
        struct.pack_into("!H", head, ip + 2, (layout.payload - ip + len(payload)) & 0xFFFF)
        ihl = (head[ip] & 0x0F) * 4
        struct.pack_into("!H", head, ip + 10, 0)
        struct.pack_into("!H", head, ip + 10, _ipv4_checksum(head[ip : ip + ihl]))
    else:
        struct.pack_into("!H", head, ip + 4, (layout.payload - ip - 40 + len(payload)) & 0xFFFF)
    return bytes(head) + payload


def ipv4_fragments(data: bytes, layout: Layout, cut: int, ident: int) -> list[bytes] | None:
    """Split an IPv4 packet into two fragments at ``cut`` bytes (rounded down to 8) of its
    IP payload; None when it cannot be split there."""
    if layout.version != 4:
        return None
    ip = layout.ip
    ihl = (data[ip] & 0x0F) * 4
    body = data[ip + ihl : layout.end]
    cut -= cut % 8
    if not 0 < cut < len(body):
        return None
    out = []
    for offset, piece, more in ((0, body[:cut], True), (cut, body[cut:], False)):
        header = bytearray(data[ip : ip + ihl])
        struct.pack_into("!H", header, 2, ihl + len(piece))
        struct.pack_into("!H", header, 4, ident & 0xFFFF)
        struct.pack_into("!H", header, 6, (0x2000 if more else 0) | (offset // 8))
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, _ipv4_checksum(header))
        out.append(data[:ip] + bytes(header) + piece)
    return out
