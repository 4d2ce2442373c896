"""RTP headers (RFC 3550 §5.1) and per-SSRC reception statistics (RFC 3550 A.1, A.3, A.8).

SRTP leaves the RTP header in the clear, so everything here works on SRTP packets as well:
sequence numbers, timestamps and arrival times give packets received, expected and lost,
gaps in the sequence, and the interarrival jitter, without any key.

The statistics are the per-packet path of the media stage: ``RtpStream.update`` does a few
integer operations and nothing else.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # RFC 3550 A.1
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2

FIXED = struct.Struct("!BBHII")  # first byte, marker+PT, sequence, timestamp, SSRC


class RtpHeader(NamedTuple):
    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    header_length: int  # fixed header, CSRCs and the header extension: where the payload starts
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None


def parse_rtp_header(data: bytes) -> RtpHeader | None:
    """The RTP header of a packet, or None when the bytes cannot be one (version not 2, or
    shorter than the header they describe)."""
    if len(data) < 12:
        return None
    first, second, seq, timestamp, ssrc = FIXED.unpack_from(data, 0)
    if first >> 6 != 2:
        return None
    csrc_count = first & 0x0F
    length = 12 + 4 * csrc_count
    if len(data) < length:
        return None
    csrcs = struct.unpack_from(f"!{csrc_count}I", data, 12) if csrc_count else ()
    profile = None
    if first & 0x10:
        if len(data) < length + 4:
            return None
        profile, words = struct.unpack_from("!HH", data, length)
        length += 4 + 4 * words
        if len(data) < length:
            return None
    return RtpHeader(
        2,
        bool(first & 0x20),
        bool(first & 0x10),
        csrc_count,
        bool(second & 0x80),
        second & 0x7F,
        seq,
        timestamp,
        ssrc,
        length,
        tuple(csrcs),
        profile,
    )


class RtpStats(NamedTuple):
    """A snapshot of one stream's reception statistics."""

    ssrc: int
    packets: int  # every packet of the stream seen (duplicates too)
    expected: int
    lost: int  # expected - received: negative when duplicates outnumber losses
    gaps: int  # forward jumps in the sequence (each a run of one or more missing packets)
    duplicates: int  # packets at or behind the highest sequence number (late or repeated)
    jitter: float  # RFC 3550 A.8, timestamp units
    jitter_ms: float  # the same in milliseconds (0 without a clock rate)
    clock_rate: int
    extended_max_seq: int
    first_ns: int
    last_ns: int


class RtpStream:
    """RFC 3550 A.1 sequence tracking and A.8 jitter for one SSRC."""

    __slots__ = (
        "ssrc",
        "max_seq",
        "cycles",
        "base_seq",
        "bad_seq",
        "probation",
        "received",
        "seen",
        "before_base",
        "gaps",
        "duplicates",
        "transit",
        "jitter",
        "clock_rate",
        "first_ns",
        "last_ns",
        "payload_type",
    )

    def __init__(self, ssrc: int, seq: int, now_ns: int, clock_rate: int = 0) -> None:
        self.ssrc = ssrc
        self.seen = 0  # every packet (A.1's ``received`` leaves out the probation packets)
        self.before_base = 0  # the run of probation packets A.1 leaves out, just before base
        self.cycles = 0
        self.received = 0
        self.gaps = 0
        self.duplicates = 0
        self.transit: int | None = None
        self.jitter = 0.0
        self.clock_rate = clock_rate
        self.first_ns = now_ns
        self.last_ns = now_ns
        self.payload_type = -1
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF  # A.1: a new source starts on probation
        self.probation = MIN_SEQUENTIAL

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.received = 0

    def update(self, seq: int, timestamp: int, now_ns: int, clock_rate: int = 0) -> bool:
        """One packet: True when it counts (RFC 3550 A.1 ``update_seq``)."""
        self.last_ns = now_ns
        self.seen += 1
        if clock_rate:
            self._jitter(timestamp, now_ns, clock_rate)
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
                self.before_base += 1
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
                self.before_base = 1
            return False
        if udelta < MAX_DROPOUT:
            if udelta == 0:
                self.duplicates += 1
            elif udelta > 1:
                self.gaps += 1
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # a very large jump: believe it only when the next packet follows it
            if seq == self.bad_seq:
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        else:
            self.duplicates += 1  # late or repeated: counted, as A.1 does
        self.received += 1
        return True

    def _jitter(self, timestamp: int, now_ns: int, clock_rate: int) -> None:
        if clock_rate != self.clock_rate:
            self.clock_rate = clock_rate
            self.transit = None
        arrival = now_ns * clock_rate // 1_000_000_000
        transit = (arrival - timestamp) & 0xFFFFFFFF
        previous = self.transit
        self.transit = transit
        if previous is not None:
            d = (transit - previous) & 0xFFFFFFFF
            if d & 0x80000000:
                d = 0x100000000 - d
            self.jitter += (d - self.jitter) / 16.0

    @property
    def extended_max_seq(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        if self.probation:
            return 0
        return self.extended_max_seq - self.base_seq + 1

    def stats(self) -> RtpStats:
        """Counted from the stream's first packet: A.1's figures, with the probation packets
        just before its base, which were in sequence, added to what was expected."""
        expected = self.expected + self.before_base if not self.probation else self.seen
        jitter_ms = self.jitter * 1000.0 / self.clock_rate if self.clock_rate else 0.0
        return RtpStats(
            self.ssrc,
            self.seen,
            expected,
            expected - self.received - self.before_base if not self.probation else 0,
            self.gaps,
            self.duplicates,
            self.jitter,
            jitter_ms,
            self.clock_rate,
            self.extended_max_seq,
            self.first_ns,
            self.last_ns,
        )
