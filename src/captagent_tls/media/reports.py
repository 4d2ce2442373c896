"""What the media stage hands out: RTCP reports of calls and, when a call's media ends, the
RTP statistics of its streams.  Light on purpose: the outputs import these records."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from captagent_tls.message import Endpoint

if TYPE_CHECKING:
    from captagent_tls.media.rtcp import RtcpPacket
    from captagent_tls.media.rtp import RtpStats


class RtcpReport(NamedTuple):
    """One compound RTCP packet of a call: authenticated when it came as SRTCP."""

    ts_ns: int
    src: Endpoint
    dst: Endpoint
    call_id: str
    packets: tuple[RtcpPacket, ...]
    plaintext: bytes  # the RTCP compound (decrypted)
    srtcp: bool  # came protected (SRTCP) rather than as plain RTCP
    json: str  # as HEP type 5 carries it (rtcp.hep_json): made once for every output


class StreamReport(NamedTuple):
    src: Endpoint
    dst: Endpoint
    stats: RtpStats


class MediaEnded(NamedTuple):
    """A call's media state was dropped: the RTP statistics of its streams."""

    ts_ns: int
    call_id: str
    reason: str  # "bye", "idle" or "evicted"
    streams: tuple[StreamReport, ...]


class DecryptedRtp(NamedTuple):
    """An RTP packet of a call with its payload decrypted (and authenticated): made only for
    --media-pcap (audio is content: nothing else sees it)."""

    ts_ns: int
    src: Endpoint
    dst: Endpoint
    packet: bytes  # the RTP header and the decrypted payload
    call_id: str


MediaEvent = RtcpReport | MediaEnded | DecryptedRtp
