"""HEPv3 (HOMER Encapsulation Protocol) encoding and delivery to collectors.

One SIP message per HEP packet.  heplify-server silently drops packets without the protocol
type chunk (0x000b) and SIP payloads of 32 bytes or less, so we never send those: what we hold
back is counted instead.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from captagent_tls.sip import Message

HEP_MAGIC = b"HEP3"
CHUNK_IP_FAMILY = 0x0001
CHUNK_IP_PROTO = 0x0002
CHUNK_IPV4_SRC = 0x0003
CHUNK_IPV4_DST = 0x0004
CHUNK_IPV6_SRC = 0x0005
CHUNK_IPV6_DST = 0x0006
CHUNK_SRC_PORT = 0x0007
CHUNK_DST_PORT = 0x0008
CHUNK_TS_SEC = 0x0009
CHUNK_TS_USEC = 0x000A
CHUNK_PROTO_TYPE = 0x000B
CHUNK_CAPTURE_ID = 0x000C
CHUNK_AUTH_KEY = 0x000E
CHUNK_PAYLOAD = 0x000F
CHUNK_CORRELATION_ID = 0x0011
CHUNK_NODE_NAME = 0x0013

PROTO_TYPE_SIP = 1
IP_PROTO_TLS = 22  # what Kamailio's and FreeSWITCH's HEP say for SIP over TLS
MIN_SIP_PAYLOAD = 33  # heplify-server drops SIP payloads of 32 bytes or less
MAX_HEP_PACKET = 0xFFFF

_chunk_header = struct.Struct("!HHH").pack


def _chunk(chunk_type: int, value: bytes) -> bytes:
    return _chunk_header(0, chunk_type, 6 + len(value)) + value


@dataclass
class HepOptions:
    capture_id: int = 2001
    password: str = ""
    ip_proto_tls: int = IP_PROTO_TLS
    node_name: str = ""


class HepTooLarge(ValueError):
    pass


def encode_hep3(message: Message, options: HepOptions) -> bytes:
    if len(message.payload) > MAX_HEP_PACKET:
        raise HepTooLarge(f"payload of {len(message.payload)} bytes does not fit in HEPv3")
    src_addr, src_port = message.src
    dst_addr, dst_port = message.dst
    ipv6 = len(src_addr) == 16
    ip_proto = options.ip_proto_tls if message.transport == "tls" else 6
    seconds, micros = divmod(message.ts_ns // 1000, 1_000_000)
    parts = [
        _chunk(CHUNK_IP_FAMILY, bytes([socket.AF_INET6 if ipv6 else socket.AF_INET])),
        _chunk(CHUNK_IP_PROTO, bytes([ip_proto])),
        _chunk(CHUNK_IPV6_SRC if ipv6 else CHUNK_IPV4_SRC, src_addr),
        _chunk(CHUNK_IPV6_DST if ipv6 else CHUNK_IPV4_DST, dst_addr),
        _chunk(CHUNK_SRC_PORT, src_port.to_bytes(2, "big")),
        _chunk(CHUNK_DST_PORT, dst_port.to_bytes(2, "big")),
        _chunk(CHUNK_TS_SEC, seconds.to_bytes(4, "big")),
        _chunk(CHUNK_TS_USEC, micros.to_bytes(4, "big")),
        _chunk(CHUNK_PROTO_TYPE, bytes([PROTO_TYPE_SIP])),
        _chunk(CHUNK_CAPTURE_ID, options.capture_id.to_bytes(4, "big")),
    ]
    if options.password:
        parts.append(_chunk(CHUNK_AUTH_KEY, options.password.encode()))
    if options.node_name:
        parts.append(_chunk(CHUNK_NODE_NAME, options.node_name.encode()))
    parts.append(_chunk(CHUNK_PAYLOAD, message.payload))
    body = b"".join(parts)
    total = 6 + len(body)
    if total > MAX_HEP_PACKET:
        raise HepTooLarge(f"HEP packet of {total} bytes exceeds the 65535-byte limit")
    return HEP_MAGIC + total.to_bytes(2, "big") + body


@dataclass
class HepStats:
    sent: int = 0
    send_errors: int = 0
    skipped_not_sip: int = 0
    skipped_short: int = 0
    skipped_too_large: int = 0


class CollectorAddressError(ValueError):
    pass


def parse_collector(text: str) -> tuple[str, str, int]:
    """``[udp://]HOST:PORT`` -> (scheme, host, port).  IPv6 hosts go in brackets."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "udp", text
    scheme = scheme.lower()
    if scheme not in ("udp", "tcp", "tls"):
        raise CollectorAddressError(f"bad HEP collector {text!r}: scheme must be udp, tcp or tls")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        port_text = port_text[1:] if port_text.startswith(":") else ""
        if not bracket:
            port_text = ""
    else:
        host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CollectorAddressError(f"bad HEP collector {text!r}: expected HOST:PORT")
    return scheme, host, int(port_text)


class HepUdpSink:
    """Sends each SIP message as one HEPv3 datagram."""

    def __init__(self, address: str, options: HepOptions):
        scheme, host, port = parse_collector(address)
        if scheme != "udp":
            raise CollectorAddressError(f"HEP over {scheme} is not supported yet: use udp://")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise CollectorAddressError(
                f"bad HEP collector {address!r}: cannot resolve {host}: {exc.strerror}"
            ) from None
        family, _, _, _, sockaddr = infos[0]
        self.address = address
        self.sockaddr = sockaddr
        self.options = options
        self.stats = HepStats()
        self.sock = socket.socket(family, socket.SOCK_DGRAM)

    def emit(self, message: Message) -> None:
        stats = self.stats
        if not message.is_sip:
            stats.skipped_not_sip += 1
            return
        if len(message.payload) < MIN_SIP_PAYLOAD:
            stats.skipped_short += 1
            return
        try:
            packet = encode_hep3(message, self.options)
        except HepTooLarge:
            stats.skipped_too_large += 1
            return
        try:
            self.sock.sendto(packet, self.sockaddr)
        except OSError:
            stats.send_errors += 1
        else:
            stats.sent += 1

    def close(self) -> None:
        self.sock.close()
