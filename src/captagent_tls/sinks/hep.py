"""HEPv3 (HOMER Encapsulation Protocol) encoding, and the sink that feeds HOMER collectors.

One SIP message per HEP packet.  heplify-server silently drops packets without the protocol
type chunk (0x000b) and SIP payloads of 32 bytes or less, so we never send those: what we hold
back is counted instead, once per message however many collectors there are.  Each message is
encoded once and handed to every collector; delivery (UDP, TCP, TLS, queues, reconnection) is
in :mod:`captagent_tls.sinks.hep_transport`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from captagent_tls.counters import Counters
from captagent_tls.sinks import Sink
from captagent_tls.sinks.hep_transport import (
    Collector,
    CollectorAddressError,
    CollectorStats,
    HepConfigError,
    QueueLimits,
    RetryPolicy,
    TlsOptions,
    open_collector,
    parse_collector,
)
from captagent_tls.sip import Message

__all__ = [
    "CHUNK_CORRELATION_ID",
    "CHUNK_NODE_NAME",
    "MIN_SIP_PAYLOAD",
    "Collector",
    "CollectorAddressError",
    "CollectorStats",
    "HepConfigError",
    "HepOptions",
    "HepSink",
    "HepSinkStats",
    "HepTooLarge",
    "QueueLimits",
    "RetryPolicy",
    "TlsOptions",
    "encode_hep3",
    "parse_collector",
]

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
IP_PROTO_TLS = 22  # what Kamailio's and FreeSWITCH's HEP say for SIP over TLS (and WS, WSS)
MIN_SIP_PAYLOAD = 33  # heplify-server drops SIP payloads of 32 bytes or less
MAX_HEP_PACKET = 0xFFFF

_chunk_header = struct.Struct("!HHH").pack


class HepTooLarge(ValueError):
    pass



MAX_CHUNK_VALUE = 0xFFFF - 6  # a chunk's 16-bit length counts its 6-byte header


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
            static = [_chunk(CHUNK_PROTO_TYPE, bytes([PROTO_TYPE_SIP])),
                      _chunk(CHUNK_CAPTURE_ID, options.capture_id.to_bytes(4, "big"))]
            if options.password:
                static.append(_chunk(CHUNK_AUTH_KEY, options.password.encode()))
            if options.node_name:
                static.append(_chunk(CHUNK_NODE_NAME, options.node_name.encode()))
        except (UnicodeEncodeError, HepTooLarge):
            raise HepConfigError("the HEP password and node name must be UTF-8 text that fits "
                                 f"in a HEP chunk ({MAX_CHUNK_VALUE} bytes)") from None
        self._static = b"".join(static)
        self._addresses: dict[tuple[tuple[bytes, int], tuple[bytes, int], str], bytes] = {}
        # Kamailio's siptrace sends SIP over TLS, WS and WSS all with IP protocol 22
        # (IPPROTO_IDP, "fake proto type"): so do we, with --hep-ip-proto for all three
        tls = options.ip_proto_tls
        self._ip_protos = {"udp": 17, "tcp": 6, "tls": tls, "ws": tls, "wss": tls}

    def _address_chunks(self, message: Message) -> bytes:
        key = (message.src, message.dst, message.transport)
        chunks = self._addresses.get(key)
        if chunks is None:
            (src_addr, src_port), (dst_addr, dst_port) = message.src, message.dst
            ipv6 = len(src_addr) == 16
            ip_proto = self._ip_protos.get(message.transport, 6)
            chunks = b"".join((
                _chunk(CHUNK_IP_FAMILY, bytes([socket.AF_INET6 if ipv6 else socket.AF_INET])),
                _chunk(CHUNK_IP_PROTO, bytes([ip_proto])),
                _chunk(CHUNK_IPV6_SRC if ipv6 else CHUNK_IPV4_SRC, src_addr),
                _chunk(CHUNK_IPV6_DST if ipv6 else CHUNK_IPV4_DST, dst_addr),
                _chunk(CHUNK_SRC_PORT, src_port.to_bytes(2, "big")),
                _chunk(CHUNK_DST_PORT, dst_port.to_bytes(2, "big")),
            ))
            if len(self._addresses) >= self.CACHE:
                self._addresses.clear()
            self._addresses[key] = chunks
        return chunks

    def encode(self, message: Message) -> bytes:
        payload = message.payload
        if len(payload) > MAX_HEP_PACKET:
            raise HepTooLarge(f"payload of {len(payload)} bytes does not fit in HEPv3")
        seconds, micros = divmod(message.ts_ns // 1000, 1_000_000)
        correlation = b""
        if self.options.correlation_id and message.call_id:
            # a Call-ID from the wire: bytes that are not UTF-8 grew threefold when decoded,
            # so a chunk may not hold it (HepTooLarge: the message is counted as too large)
            correlation = _chunk(CHUNK_CORRELATION_ID, message.call_id.encode())
        body = b"".join((
            self._address_chunks(message),
            _time_chunks_packed(seconds, micros),
            self._static,
            correlation,
            _chunk_header(0, CHUNK_PAYLOAD, 6 + len(payload)),
            payload,
        ))
        total = 6 + len(body)
        if total > MAX_HEP_PACKET:
            raise HepTooLarge(f"HEP packet of {total} bytes exceeds the 65535-byte limit")
        return HEP_MAGIC + total.to_bytes(2, "big") + body


_time_chunks = struct.Struct("!HHHIHHHI").pack  # 0x0009 seconds, 0x000a microseconds


def _time_chunks_packed(seconds: int, micros: int) -> bytes:
    return _time_chunks(0, CHUNK_TS_SEC, 10, seconds, 0, CHUNK_TS_USEC, 10, micros)


def encode_hep3(message: Message, options: HepOptions) -> bytes:
    """One message as a HEPv3 packet (see :class:`HepEncoder`, which the sink keeps)."""
    return HepEncoder(options).encode(message)


@dataclass
class HepSinkStats:
    """What the sink itself did, once per message whatever the number of collectors."""

    messages: int = 0  # messages given to emit()
    packets: int = 0  # encoded and handed to every collector
    skipped_not_sip: int = 0
    skipped_short: int = 0
    skipped_too_large: int = 0


class HepSink(Sink):
    """Encodes each SIP message once as HEPv3 and hands the packet to every collector.

    ``collectors`` are ``[udp://|tcp://|tls://]HOST:PORT`` strings.  Every address is checked
    and resolved before any connection starts: :class:`CollectorAddressError` (or
    :class:`HepConfigError` for a TLS file) with a one-line message otherwise.  ``emit`` never
    blocks; ``close`` delivers what the TCP/TLS queues hold within ``close_timeout`` seconds,
    all collectors in parallel.
    """

    def __init__(self, collectors: Sequence[str], options: HepOptions | None = None, *,
                 limits: QueueLimits | None = None, tls: TlsOptions | None = None,
                 retry: RetryPolicy | None = None, close_timeout: float = 5.0):
        if not collectors:
            raise HepConfigError("no HEP collector given")
        self.options = options or HepOptions()
        self.encoder = HepEncoder(self.options)
        self.close_timeout = close_timeout
        self.stats = HepSinkStats()
        built: list[Collector] = []
        try:
            for text in collectors:
                collector = open_collector(text, limits=limits, tls=tls, retry=retry,
                                           start=False)
                built.append(collector)
                if any(c.address == collector.address for c in built[:-1]):
                    raise CollectorAddressError(
                        f"bad HEP collector {text!r}: {collector.address} is given twice")
        except HepConfigError:
            for collector in built:
                collector.close(0)
            raise
        self.collectors: tuple[Collector, ...] = tuple(built)
        self._submit = tuple(c.submit for c in built)
        self._closed = False
        for collector in built:
            collector.start()

    def emit(self, message: Message) -> None:
        stats = self.stats
        stats.messages += 1
        if not message.is_sip:
            stats.skipped_not_sip += 1
            return
        if len(message.payload) < MIN_SIP_PAYLOAD:
            stats.skipped_short += 1
            return
        try:
            packet = self.encoder.encode(message)
        except HepTooLarge:
            stats.skipped_too_large += 1
            return
        stats.packets += 1
        for submit in self._submit:
            submit(packet)

    def close(self, timeout: float | None = None) -> None:
        """Flush and close every collector within ``timeout`` (default ``close_timeout``)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        for collector in self.collectors:
            collector.begin_close(deadline)
        for collector in self.collectors:
            collector.wait_closed(deadline)

    def add_counters(self, counters: Counters) -> None:
        s = self.stats
        counters.set("hep_packets", s.packets, "made")
        counters.set("hep_packets", s.skipped_not_sip, "not_sip")
        counters.set("hep_packets", s.skipped_short, "too_short")
        counters.set("hep_packets", s.skipped_too_large, "too_large")
        for collector in self.collectors:
            c = collector.stats
            label = collector.address
            counters.set("hep_sent", c.sent, label)
            counters.set("hep_dropped", getattr(c, "dropped", 0)
                         + getattr(c, "dropped_at_shutdown", 0), label)
            counters.set("hep_send_errors", c.send_errors, label)
            counters.set("hep_reconnects", getattr(c, "reconnects", 0), label)
            counters.set("hep_queued", getattr(c, "queued", 0), label)

    def summary_lines(self) -> list[str]:
        """The end-of-run summary: one line for the sink, one per collector."""
        s = self.stats
        lines = [f"HEP: {s.packets} packets per collector; not sent: {s.skipped_not_sip} not "
                 f"SIP, {s.skipped_short} too short, {s.skipped_too_large} too large"]
        for collector in self.collectors:
            c = collector.stats
            line = f"HEP {collector.address}: {c.sent} sent"
            if collector.scheme == "udp":
                line += f", {c.send_errors} send errors"
            else:
                line += (f", {c.queued} still queued, {c.dropped} dropped (queue full), "
                         f"{c.dropped_at_shutdown} dropped at shutdown, {c.resent} resent, "
                         f"{c.reconnects} reconnects, {c.connect_failures} failed connection "
                         f"attempts, {c.send_errors} broken connections")
            if c.last_error:
                line += f"; last error: {c.last_error}"
            lines.append(line)
        return lines
