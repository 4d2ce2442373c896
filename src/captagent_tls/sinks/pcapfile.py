"""Decrypted SIP to a pcap file (``-w``) that Wireshark and tshark open directly.

Each message is one packet of Wireshark's "exported PDU" link type (252): a few tags say
"dissect this as SIP", and give the real addresses and ports; the capture time is kept to the
nanosecond.  No made-up TCP or IP headers: nothing to confuse a TLS dissector on port 5061.
"""

from __future__ import annotations

import logging
import struct
from typing import BinaryIO

from captagent_tls.message import Message
from captagent_tls.sinks import Sink, write_failed

LINKTYPE_WIRESHARK_UPPER_PDU = 252
PCAP_MAGIC_NS = 0xA1B23C4D
SNAPLEN = 262144  # Wireshark and tshark refuse a file holding a longer packet

log = logging.getLogger("captagent_tls")

TAG_END = 0
TAG_DISSECTOR_NAME = 12
TAG_IPV4_SRC, TAG_IPV4_DST, TAG_IPV6_SRC, TAG_IPV6_DST = 20, 21, 22, 23
TAG_PORT_TYPE, TAG_SRC_PORT, TAG_DST_PORT = 24, 25, 26
PORT_TYPE_TCP, PORT_TYPE_UDP = 2, 3

_record_header = struct.Struct("<IIII").pack


def _tag(tag: int, value: bytes) -> bytes:
    padded = value + b"\0" * (-len(value) % 4)  # values align to 32 bits; lengths count it
    return struct.pack("!HH", tag, len(padded)) + padded


def exported_pdu(message: Message) -> bytes:
    (src, sport), (dst, dport) = message.src, message.dst
    v6 = len(src) == 16
    port_type = PORT_TYPE_UDP if message.transport == "udp" else PORT_TYPE_TCP
    return b"".join(
        (
            _tag(TAG_DISSECTOR_NAME, b"sip"),
            _tag(TAG_IPV6_SRC if v6 else TAG_IPV4_SRC, src),
            _tag(TAG_IPV6_DST if v6 else TAG_IPV4_DST, dst),
            _tag(TAG_PORT_TYPE, struct.pack("!I", port_type)),
            _tag(TAG_SRC_PORT, struct.pack("!I", sport)),
            _tag(TAG_DST_PORT, struct.pack("!I", dport)),
            struct.pack("!HH", TAG_END, 0),
            message.payload,
        )
    )


class PcapFileSink(Sink):
    def __init__(self, out: BinaryIO, flush_each: bool = False, path: str | None = None):
        self.out = out
        self.path = path  # the file's name, for its closing line (None: a worker's tap)
        self.flush_each = flush_each
        self.closed = False
        self.written = 0
        self.skipped_not_sip = 0
        self.skipped_too_large = 0
        try:
            out.write(
                struct.pack(
                    "<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_WIRESHARK_UPPER_PDU
                )
            )
        except OSError as exc:
            raise write_failed(out, exc) from None

    def emit(self, message: Message) -> None:
        if not message.is_sip:
            self.skipped_not_sip += 1
            return
        packet = exported_pdu(message)
        if len(packet) > SNAPLEN:  # one such packet would make the whole file unreadable
            self.skipped_too_large += 1
            return
        seconds, nanos = divmod(message.ts_ns, 1_000_000_000)
        try:
            self.out.write(_record_header(seconds, nanos, len(packet), len(packet)) + packet)
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (-w /dev/stdout | ...): not an error
        except OSError as exc:
            raise write_failed(self.out, exc) from None
        self.written += 1

    def write_packets(self, packets: list[bytes]) -> None:
        """Records made elsewhere (by worker processes), written as they are."""
        try:
            self.out.write(b"".join(packets))
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None
        self.written += len(packets)

    def close(self) -> None:
        try:
            self.out.close()
        except OSError as exc:
            raise write_failed(self.out, exc) from None
        self.closed = True
        if self.skipped_too_large:
            log.warning(
                "-w: %d SIP messages larger than %d bytes were not written (pcap "
                "readers refuse the file otherwise)",
                self.skipped_too_large,
                SNAPLEN,
            )

    def closing_line(self) -> str | None:
        if self.path is None or not self.closed:
            return None
        return (
            f"pcap: {self.path}: {self.written} SIP messages, each one packet tagged as SIP "
            "(Wireshark's exported PDUs)"
        )
