"""Media that came before the SIP that claims it (or that carries its keys).

The pipeline emits a SIP message when its last record is decrypted, which may be later than
the datagrams that follow it on the wire: reading a file, an RSA handshake's result is taken
up some frames after its ClientKeyExchange; a key log may come late; with worker processes,
another worker frames the SDP.  So a datagram whose endpoints no call has claimed yet is not
given up at once: RTCP and DTLS datagrams wait here (bounded), and an RTP stream is followed
provisionally, its statistics kept, until a call's SDP names its endpoints or the pipeline
says that nothing captured before them is still to be decrypted (``settle``).  SRTCP of a
known call that none of its keys opens waits the same way: a re-INVITE with new keys may be
in SIP not decrypted yet.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Container
from typing import NamedTuple

from captagent_tls.media.rtp import RtpStream
from captagent_tls.message import Endpoint

MAX_HELD = 4096  # RTCP and DTLS datagrams waiting for their call
MAX_HELD_BYTES = 4 << 20
MAX_PROVISIONAL = 4096  # RTP streams followed before their call is known
MAX_ARRIVALS = 1024  # per provisional stream: packets remembered to replay once claimed
MAX_ARRIVALS_TOTAL = 65_536  # and in all


class Waiting(NamedTuple):
    ts_ns: int
    src: Endpoint
    dst: Endpoint
    payload: bytes
    rtcp: bool  # RTCP (or SRTCP); else a DTLS record
    reason: str  # what it is if nothing changes: "no_call", "no_keys", "auth_failed"...


class Arrival(NamedTuple):
    seq: int
    timestamp: int
    ts_ns: int
    payload_type: int
    packet: bytes | None  # kept only when RTP is to be decrypted (--media-pcap)
    dst: Endpoint | None = None  # where that packet went (a stream's packets may differ)


class Provisional:
    """An RTP stream before its call: its counts so far, and its first packets, to be
    replayed once the call's SDP gives their clock rate (jitter) and keys."""

    __slots__ = ("dst", "rtp", "arrivals", "complete")

    def __init__(self, dst: Endpoint, rtp: RtpStream) -> None:
        self.dst = dst
        self.rtp = rtp  # counts every packet, without a clock rate
        self.arrivals: list[Arrival] = []
        self.complete = True  # every packet is in arrivals


class Unclaimed:
    """Datagrams and RTP streams no call has claimed yet, oldest first."""

    __slots__ = ("held", "held_bytes", "streams", "arrivals")

    def __init__(self) -> None:
        self.held: deque[Waiting] = deque()
        self.held_bytes = 0
        # (source address, source port, SSRC) -> the stream so far
        self.streams: OrderedDict[tuple[bytes, int, int], Provisional] = OrderedDict()
        self.arrivals = 0  # remembered in all the provisional streams

    def __bool__(self) -> bool:
        return bool(self.held or self.streams)

    def hold(self, waiting: Waiting) -> list[Waiting]:
        """Keep a datagram; what the bounds push out (oldest first), to be given up."""
        self.held.append(waiting)
        self.held_bytes += len(waiting.payload)
        out = []
        while len(self.held) > MAX_HELD or self.held_bytes > MAX_HELD_BYTES:
            out.append(self._pop())
        return out

    def _pop(self) -> Waiting:
        waiting = self.held.popleft()
        self.held_bytes -= len(waiting.payload)
        return waiting

    def take(self, known: Container[Endpoint]) -> list[Waiting]:
        """The datagrams to or from an endpoint now ``known``, in the order they came."""
        if not self.held:
            return []
        taken: list[Waiting] = []
        kept: deque[Waiting] = deque()
        for waiting in self.held:
            if waiting.src in known or waiting.dst in known:
                taken.append(waiting)
                self.held_bytes -= len(waiting.payload)
            else:
                kept.append(waiting)
        self.held = kept
        return taken

    def settle(self, watermark_ns: int) -> list[Waiting]:
        """The datagrams captured before ``watermark_ns``: every SIP message captured before
        them has been emitted, and none claimed them."""
        out = []
        while self.held and self.held[0].ts_ns < watermark_ns:
            out.append(self._pop())
        return out

    def stream(
        self, key: tuple[bytes, int, int], dst: Endpoint, rtp: RtpStream
    ) -> tuple[Provisional, Provisional | None]:
        """Follow a stream provisionally: it, and the one the bound pushes out, if any."""
        provisional = self.streams[key] = Provisional(dst, rtp)
        if len(self.streams) > MAX_PROVISIONAL:
            return provisional, self.forget(next(iter(self.streams)))
        return provisional, None

    def arrived(self, provisional: Provisional, arrival: Arrival) -> None:
        """A packet of a provisional stream (already counted in its RtpStream)."""
        if not provisional.complete:
            return
        if len(provisional.arrivals) >= MAX_ARRIVALS or self.arrivals >= MAX_ARRIVALS_TOTAL:
            provisional.complete = False  # (replayed from its counts: jitter from the claim)
            self.arrivals -= len(provisional.arrivals)
            provisional.arrivals = []
            return
        provisional.arrivals.append(arrival)
        self.arrivals += 1

    def forget(self, key: tuple[bytes, int, int]) -> Provisional:
        provisional = self.streams.pop(key)
        self.arrivals -= len(provisional.arrivals)
        return provisional
