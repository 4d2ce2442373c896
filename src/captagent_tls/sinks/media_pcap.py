"""``--media-pcap FILE``: the calls' RTP and RTCP with their payloads decrypted, as UDP over
IP in a pcap file, so that Wireshark's RTP player plays what went by as SRTP.

Only what authenticated is written: RTP that its call's keys open (or plain RTP of an
RTP/AVP call), and the RTCP reports the other outputs get.  The file holds the calls' audio,
which is content: it is asked for by name only, and created with mode 0600, as a private key
would be.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import BinaryIO

from captagent_tls.errors import UserError
from captagent_tls.media.reports import DecryptedRtp, MediaEvent, RtcpReport
from captagent_tls.message import Endpoint, Message
from captagent_tls.sinks import Sink, write_failed

LINKTYPE_RAW = 101  # the packet begins with its IPv4 or IPv6 header
PCAP_MAGIC_NS = 0xA1B23C4D
_record = struct.Struct("<IIII").pack
_udp = struct.Struct("!HHHH").pack
_ipv4 = struct.Struct("!BBHHHBBH4s4s").pack
_ipv6 = struct.Struct("!IHBB16s16s").pack


def udp_packet(src: Endpoint, dst: Endpoint, payload: bytes) -> bytes:
    """``payload`` as a UDP datagram from ``src`` to ``dst`` in an IP packet (checksums 0:
    Wireshark does not check them unless asked)."""
    udp = _udp(src[1], dst[1], 8 + len(payload), 0) + payload
    if len(src[0]) == 16:
        return _ipv6(6 << 28, len(udp), 17, 64, src[0], dst[0]) + udp
    return _ipv4(0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src[0], dst[0]) + udp


class MediaPcapSink(Sink):
    def __init__(self, path: str, flush_each: bool = False, out: BinaryIO | None = None):
        """``out``: a stream to write to instead of creating ``path`` (a worker's tap)."""
        self.path = path
        self.flush_each = flush_each
        self.rtp = 0
        self.rtcp = 0
        self.closed = False
        if out is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fchmod(fd, 0o600)  # (a file that was there keeps no wider mode)
                out = open(fd, "wb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.out = out
        self._write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, 262144, LINKTYPE_RAW))

    def _write(self, data: bytes) -> None:
        try:
            self.out.write(data)
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None

    def emit(self, message: Message) -> None:
        pass  # (SIP goes to -w)

    def emit_media(self, event: MediaEvent) -> None:
        if isinstance(event, DecryptedRtp):
            payload = event.packet
            self.rtp += 1
        elif isinstance(event, RtcpReport):
            payload = event.plaintext
            self.rtcp += 1
        else:
            return
        self._write(self.record(event.ts_ns, event.src, event.dst, payload))

    @staticmethod
    def record(ts_ns: int, src: Endpoint, dst: Endpoint, payload: bytes) -> bytes:
        packet = udp_packet(src, dst, payload)
        seconds, nanos = divmod(ts_ns, 1_000_000_000)
        return _record(seconds & 0xFFFFFFFF, nanos, len(packet), len(packet)) + packet

    def write_records(self, records: list[bytes], rtp: int, rtcp: int) -> None:
        """Records made by worker processes, written as they are."""
        self._write(b"".join(records))
        self.rtp += rtp
        self.rtcp += rtcp

    def close(self) -> None:
        try:
            self.out.close()
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None
        self.closed = True

    def closing_line(self) -> str | None:
        if not self.closed:
            return None
        return (
            f"media pcap: {self.path}: {self.rtp} RTP and {self.rtcp} RTCP packets, "
            "decrypted (mode 0600: it holds the calls' audio)"
        )
