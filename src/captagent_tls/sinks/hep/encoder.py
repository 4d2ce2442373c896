"""HEPv3 (HOMER Encapsulation Protocol) encoding: one SIP message per packet, sans-IO; and
one RTCP report per packet (protocol type 5: the report as JSON, as captagent and heplify send
it, with the call's Call-ID in the correlation chunk 0x0011, before the payload: HOMER's QoS
search matches it to the Call-ID of the call's SIP, and Kamailio's sipcapture stores RTCP
only when it is there).

A packet is ``HEP3``, its 16-bit total length, then chunks of (vendor 0, type, length, value).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captagent_tls.message import Endpoint, Message
from captagent_tls.sinks.hep.addresses import HepConfigError

if TYPE_CHECKING:
    from captagent_tls.media.reports import RtcpReport

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

# the IP family chunk holds HEP's own numbers, which are Linux's AF_INET and AF_INET6
FAMILY_IPV4 = 2
FAMILY_IPV6 = 10
PROTO_TYPE_SIP = 1
PROTO_TYPE_RTCP_JSON = 5
IP_PROTO_TLS = 22  # what Kamailio's and FreeSWITCH's HEP say for SIP over TLS (and WS, WSS)
MIN_SIP_PAYLOAD = 33  # heplify-server drops SIP payloads of 32 bytes or less
MAX_HEP_PACKET = 0xFFFF
MAX_CHUNK_VALUE = 0xFFFF - 6  # a chunk's 16-bit length counts its 6-byte header

_chunk_header = struct.Struct("!HHH").pack
_time_chunks = struct.Struct("!HHHIHHHI").pack  # 0x0009 seconds, 0x000a microseconds


class HepTooLarge(ValueError):
    pass


def _chunk(chunk_type: int, value: bytes) -> bytes:
    if len(value) > MAX_CHUNK_VALUE:
        raise HepTooLarge(f"{len(value)} bytes do not fit in a HEP chunk")
    return _chunk_header(0, chunk_type, 6 + len(value)) + value


@dataclass
class HepOptions:
    capture_id: int = 2001
    password: str = ""
    ip_proto_tls: int = IP_PROTO_TLS
    node_name: str = ""  # chunk 0x0013 when not empty
    correlation_id: bool = False  # chunk 0x0011 = the message's SIP Call-ID, when it has one


class HepEncoder:
    """Builds HEPv3 packets.  The chunks that depend only on the endpoints and the options are
    built once per (source, destination, transport) and reused: per message only the time,
    the correlation id and the payload are new."""

    CACHE = 4096

    def __init__(self, options: HepOptions):
        self.options = options
        if not 0 <= options.capture_id <= 0xFFFFFFFF or not 0 <= options.ip_proto_tls <= 255:
            raise HepConfigError("HEP capture id must fit in 32 bits and the IP protocol in 8")
        try:
            static = [_chunk(CHUNK_CAPTURE_ID, options.capture_id.to_bytes(4, "big"))]
            if options.password:
                static.append(_chunk(CHUNK_AUTH_KEY, options.password.encode()))
            if options.node_name:
                static.append(_chunk(CHUNK_NODE_NAME, options.node_name.encode()))
        except (UnicodeEncodeError, HepTooLarge):
            raise HepConfigError(
                "the HEP password and node name must be UTF-8 text that fits "
                f"in a HEP chunk ({MAX_CHUNK_VALUE} bytes)"
            ) from None
        self._static = b"".join(static)
        self._sip_static = _chunk(CHUNK_PROTO_TYPE, bytes([PROTO_TYPE_SIP])) + self._static
        self._rtcp_static = _chunk(CHUNK_PROTO_TYPE, bytes([PROTO_TYPE_RTCP_JSON])) + self._static
        self._addresses: dict[tuple[tuple[bytes, int], tuple[bytes, int], str], bytes] = {}
        # Kamailio's siptrace sends SIP over TLS, WS and WSS all with IP protocol 22
        # (IPPROTO_IDP, "fake proto type"): so do we, with --hep-ip-proto for all three
        tls = options.ip_proto_tls
        self._ip_protos = {"udp": 17, "tcp": 6, "tls": tls, "ws": tls, "wss": tls}

    def _address_chunks(self, src: Endpoint, dst: Endpoint, transport: str) -> bytes:
        key = (src, dst, transport)
        chunks = self._addresses.get(key)
        if chunks is None:
            (src_addr, src_port), (dst_addr, dst_port) = src, dst
            ipv6 = len(src_addr) == 16
            ip_proto = self._ip_protos.get(transport, 6)
            chunks = b"".join(
                (
                    _chunk(CHUNK_IP_FAMILY, bytes([FAMILY_IPV6 if ipv6 else FAMILY_IPV4])),
                    _chunk(CHUNK_IP_PROTO, bytes([ip_proto])),
                    _chunk(CHUNK_IPV6_SRC if ipv6 else CHUNK_IPV4_SRC, src_addr),
                    _chunk(CHUNK_IPV6_DST if ipv6 else CHUNK_IPV4_DST, dst_addr),
                    _chunk(CHUNK_SRC_PORT, src_port.to_bytes(2, "big")),
                    _chunk(CHUNK_DST_PORT, dst_port.to_bytes(2, "big")),
                )
            )
            if len(self._addresses) >= self.CACHE:
                self._addresses.clear()
            self._addresses[key] = chunks
        return chunks

    def encode(self, message: Message) -> bytes:
        payload = message.payload
        if len(payload) > MAX_HEP_PACKET:
            raise HepTooLarge(f"payload of {len(payload)} bytes does not fit in HEPv3")
        correlation = b""
        if self.options.correlation_id and message.call_id:
            # a Call-ID from the wire: bytes that are not UTF-8 grew threefold when decoded,
            # so a chunk may not hold it (HepTooLarge: the message is counted as too large)
            correlation = _chunk(CHUNK_CORRELATION_ID, message.call_id.encode())
        return self._packet(
            self._address_chunks(message.src, message.dst, message.transport),
            message.ts_ns,
            self._sip_static,
            correlation,
            payload,
        )

    def encode_rtcp(self, report: RtcpReport) -> bytes:
        """An RTCP report of a call as HEP type 5: its JSON, the Call-ID to correlate."""
        return self._packet(
            self._address_chunks(report.src, report.dst, "udp"),
            report.ts_ns,
            self._rtcp_static,
            _chunk(CHUNK_CORRELATION_ID, report.call_id.encode()),
            report.json.encode(),
        )

    @staticmethod
    def _packet(
        addresses: bytes, ts_ns: int, static: bytes, correlation: bytes, payload: bytes
    ) -> bytes:
        seconds, micros = divmod(ts_ns // 1000, 1_000_000)
        body = b"".join(
            (
                addresses,
                _time_chunks(0, CHUNK_TS_SEC, 10, seconds, 0, CHUNK_TS_USEC, 10, micros),
                static,
                correlation,
                _chunk_header(0, CHUNK_PAYLOAD, 6 + len(payload)),
                payload,
            )
        )
        total = 6 + len(body)
        if total > MAX_HEP_PACKET:
            raise HepTooLarge(f"HEP packet of {total} bytes exceeds the 65535-byte limit")
        return HEP_MAGIC + total.to_bytes(2, "big") + body


def encode_hep3(message: Message, options: HepOptions) -> bytes:
    """One message as a HEPv3 packet (see :class:`HepEncoder`, which the sink keeps)."""
    return HepEncoder(options).encode(message)
