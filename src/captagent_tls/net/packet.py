"""Decode a captured frame: link layer, VLAN tags, IPv4/IPv6 (fragments too), TCP or UDP."""

from __future__ import annotations

import struct
from typing import NamedTuple

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_ALT12 = 12  # DLT_RAW on some BSDs
LINKTYPE_RAW_ALT14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV6_EXTENSION_HEADERS = frozenset((0, 43, 60, 51))  # hop-by-hop, routing, dest opts, AH
IPV6_FRAGMENT = 44

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_u16 = struct.Struct("!H").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from
_udp = struct.Struct("!HHH").unpack_from
_ipv4 = struct.Struct("!BxHHHxBxx4s4s").unpack_from


class Segment(NamedTuple):
    src: bytes  # packed IPv4 or IPv6 address
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes | memoryview


class Skip(NamedTuple):
    """Why a frame carried no TCP segment we can use (counted, not fatal)."""

    reason: str


NOT_IP = Skip("not IP")
UNKNOWN_LINKTYPE = Skip("unsupported link type")
NOT_TCP = Skip("not TCP or UDP")
TRUNCATED = Skip("truncated")


def ip_offset(linktype: int, data: bytes | memoryview) -> int | Skip:
    """Offset of the IP header within a frame of the given link type."""
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype_at = 14, 12
    elif linktype == LINKTYPE_LINUX_SLL2:
        offset, ethertype_at = 20, 0
    elif linktype == LINKTYPE_LINUX_SLL:
        offset, ethertype_at = 16, 14
    elif linktype in (
        LINKTYPE_RAW,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_RAW_ALT12,
        LINKTYPE_RAW_ALT14,
    ):
        return 0
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # the address family is in host byte order for NULL, network order for LOOP;
        # the IP version nibble tells us what follows either way
        return 4
    else:
        return UNKNOWN_LINKTYPE
    if len(data) < offset:
        return TRUNCATED
    ethertype = _u16(data, ethertype_at)[0]
    while ethertype in VLAN_ETHERTYPES and linktype == LINKTYPE_ETHERNET:
        if len(data) < offset + 4:
            return TRUNCATED
        ethertype = _u16(data, offset + 2)[0]
        offset += 4
    if ethertype != ETHERTYPE_IPV4 and ethertype != ETHERTYPE_IPV6:
        return NOT_IP
    return offset


class Datagram(NamedTuple):
    src: bytes
    dst: bytes
    sport: int
    dport: int
    payload: bytes | memoryview


class Fragment(NamedTuple):
    """One piece of a fragmented IP datagram, for the defragmenter."""

    src: bytes
    dst: bytes
    protocol: int
    ident: int
    offset: int  # bytes
    more: bool
    payload: bytes | memoryview


Decoded = Segment | Datagram | Fragment | Skip


def decode(linktype: int, data: bytes | memoryview) -> Decoded:
    """Decode a frame down to its TCP segment or UDP datagram, or say why it has none."""
    if linktype == LINKTYPE_ETHERNET and len(data) > 14 and data[12] == 8 and data[13] == 0:
        offset = 14  # the common case, without the general link-layer walk
    else:
        found = ip_offset(linktype, data)
        if isinstance(found, Skip):
            return found
        offset = found
    if len(data) < offset + 20:
        return TRUNCATED
    version = data[offset] >> 4
    if version == 4:
        version_ihl, total, ident, fragment, protocol, src, dst = _ipv4(data, offset)
        end = offset + total if total else len(data)  # TSO frames may carry total length 0
        l4 = offset + (version_ihl & 0x0F) * 4
        if fragment & 0x3FFF:  # MF flag or a fragment offset
            if end > len(data):
                return TRUNCATED
            return Fragment(
                src,
                dst,
                protocol,
                ident,
                (fragment & 0x1FFF) * 8,
                bool(fragment & 0x2000),
                data[l4:end],
            )
    elif version == 6:
        if len(data) < offset + 40:
            return TRUNCATED
        protocol = data[offset + 6]
        end = offset + 40 + _u16(data, offset + 4)[0]
        src = bytes(data[offset + 8 : offset + 24])
        dst = bytes(data[offset + 24 : offset + 40])
        l4 = offset + 40
        while protocol in IPV6_EXTENSION_HEADERS:
            if len(data) < l4 + 8:
                return TRUNCATED
            ext_len = (data[l4 + 1] + 2) * 4 if protocol == 51 else (data[l4 + 1] + 1) * 8
            protocol = data[l4]
            l4 += ext_len
        if protocol == IPV6_FRAGMENT:
            if len(data) < l4 + 8 or end > len(data):
                return TRUNCATED
            field = _u16(data, l4 + 2)[0]
            ident = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
            return Fragment(
                src, dst, data[l4], ident, field & 0xFFF8, bool(field & 1), data[l4 + 8 : end]
            )
    else:
        return NOT_IP
    if end > len(data):
        # cut by the snap length: the missing bytes become a gap in the stream
        return TRUNCATED
    return transport(src, dst, protocol, data[l4:end])


def transport(
    src: bytes, dst: bytes, protocol: int, packet: bytes | memoryview
) -> Segment | Datagram | Skip:
    """The TCP segment or UDP datagram in an IP payload."""
    if protocol == IPPROTO_TCP:
        if len(packet) < 20:
            return TRUNCATED
        sport, dport, seq, ack, data_offset, flags = _tcp(packet, 0)
        return Segment(src, dst, sport, dport, seq, ack, flags, packet[(data_offset >> 4) * 4 :])
    if protocol == IPPROTO_UDP:
        if len(packet) < 8:
            return TRUNCATED
        sport, dport, length = _udp(packet, 0)
        return Datagram(src, dst, sport, dport, packet[8 : max(8, min(length, len(packet)))])
    return NOT_TCP
