"""RTCP compound packets (RFC 3550 §6, RFC 3611 XR, RFC 4585 feedback) and the HEP type 5
JSON that HOMER reads.

``parse_compound`` takes one compound packet (a UDP payload, or an SRTCP packet's plaintext)
and returns typed packets, or raises ``RtcpError``: every packet must be version 2, its
length must fit, and only the last may be padded (RFC 3550 §6.4.1 and A.2).  RFC 5506
reduced-size RTCP (a compound that does not begin with SR or RR) is accepted.

``hep_json`` renders a compound as heplify does (protos/rtcp.go of heplify v1.67.1, whose
shape heplify 2.x's decoder/rtcp.go keeps, and which HOMER's heplify-server stores as
``hep_proto_5``): one JSON object per compound packet with the fields ``sender_information``,
``ssrc``, ``type``, ``report_count``, ``report_blocks``, ``report_blocks_xr`` and
``sdes_ssrc`` in that order, plus heplify 2.x's ``voip_metrics`` when an XR VoIP Metrics
block is present.  See ``hep_json`` for the choices where heplify and captagent differ.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import NamedTuple

SR, RR, SDES, BYE, APP, RTPFB, PSFB, XR = 200, 201, 202, 203, 204, 205, 206, 207
PACKET_NAMES = {
    SR: "SR",
    RR: "RR",
    SDES: "SDES",
    BYE: "BYE",
    APP: "APP",
    RTPFB: "RTPFB",
    PSFB: "PSFB",
    XR: "XR",
}
MAX_PACKETS = 64  # packets in one compound: far more than any sender bundles

_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IIIII")
_REPORT = struct.Struct("!IIIIII")


class RtcpError(ValueError):
    """The bytes are not a valid RTCP compound packet; the message says why."""


class ReportBlock(NamedTuple):
    """RFC 3550 §6.4.1: one reception report."""

    ssrc: int
    fraction_lost: int  # 8-bit fixed point: lost / expected * 256
    packets_lost: int  # cumulative, signed 24-bit as RFC 3550 defines it
    highest_seq: int  # extended highest sequence number received
    jitter: int  # interarrival jitter, timestamp units
    lsr: int  # last SR timestamp (middle 32 bits of its NTP time)
    dlsr: int  # delay since last SR, 1/65536 s

    @property
    def packets_lost_field(self) -> int:
        """The 24 bits as sent (what heplify shows: unsigned)."""
        return self.packets_lost & 0xFFFFFF


class SenderInfo(NamedTuple):
    ntp_sec: int  # NTP timestamp, most significant word
    ntp_frac: int  # least significant word
    rtp_timestamp: int
    packets: int
    octets: int


class SenderReport(NamedTuple):
    ssrc: int
    sender_info: SenderInfo
    reports: tuple[ReportBlock, ...]
    extension: bytes = b""  # profile-specific extension after the report blocks
    packet_type: int = SR


class ReceiverReport(NamedTuple):
    ssrc: int
    reports: tuple[ReportBlock, ...]
    extension: bytes = b""
    packet_type: int = RR


class SdesChunk(NamedTuple):
    ssrc: int
    items: tuple[tuple[int, bytes], ...]  # (item type, text): 1 CNAME, 2 NAME, ... 8 PRIV


class SourceDescription(NamedTuple):
    chunks: tuple[SdesChunk, ...]
    packet_type: int = SDES


class Goodbye(NamedTuple):
    ssrcs: tuple[int, ...]
    reason: bytes = b""
    packet_type: int = BYE


class AppPacket(NamedTuple):
    subtype: int
    ssrc: int
    name: bytes  # four ASCII characters
    data: bytes
    packet_type: int = APP


class Feedback(NamedTuple):
    """RFC 4585 transport-layer (205) or payload-specific (206) feedback."""

    packet_type: int
    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes


class UnknownPacket(NamedTuple):
    packet_type: int
    report_count: int  # the header's 5-bit count field
    body: bytes


# -- XR (RFC 3611) report blocks ----------------------------------------------------------


class RleReport(NamedTuple):
    """Block type 1 (Loss RLE) or 2 (Duplicate RLE)."""

    block_type: int
    thinning: int
    ssrc: int
    begin_seq: int
    end_seq: int
    chunks: tuple[int, ...]  # 16-bit chunks, the null chunk left out


class PacketReceiptTimes(NamedTuple):
    """Block type 3."""

    thinning: int
    ssrc: int
    begin_seq: int
    end_seq: int
    receipt_times: tuple[int, ...]
    block_type: int = 3


class ReceiverReferenceTime(NamedTuple):
    """Block type 4."""

    ntp_sec: int
    ntp_frac: int
    block_type: int = 4


class DlrrItem(NamedTuple):
    ssrc: int
    last_rr: int
    delay_since_last_rr: int


class Dlrr(NamedTuple):
    """Block type 5."""

    items: tuple[DlrrItem, ...]
    block_type: int = 5


class StatisticsSummary(NamedTuple):
    """Block type 6: the flags say which groups of fields are meaningful."""

    ssrc: int
    begin_seq: int
    end_seq: int
    loss_reported: bool
    duplicates_reported: bool
    jitter_reported: bool
    ttl_or_hop_limit: int  # 0 none, 1 IPv4 TTL, 2 IPv6 hop limit
    lost_packets: int
    dup_packets: int
    min_jitter: int
    max_jitter: int
    mean_jitter: int
    dev_jitter: int
    min_ttl: int
    max_ttl: int
    mean_ttl: int
    dev_ttl: int
    block_type: int = 6


class VoipMetrics(NamedTuple):
    """Block type 7."""

    ssrc: int
    loss_rate: int
    discard_rate: int
    burst_density: int
    gap_density: int
    burst_duration: int
    gap_duration: int
    round_trip_delay: int
    end_system_delay: int
    signal_level: int  # dBm, signed
    noise_level: int  # dBm, signed
    rerl: int
    gmin: int
    r_factor: int
    ext_r_factor: int
    mos_lq: int  # tenths: 41 is 4.1; 127 unavailable
    mos_cq: int
    rx_config: int
    jb_nominal: int
    jb_maximum: int
    jb_abs_max: int
    block_type: int = 7


class UnknownXrBlock(NamedTuple):
    block_type: int
    type_specific: int
    data: bytes


XrBlock = (
    RleReport
    | PacketReceiptTimes
    | ReceiverReferenceTime
    | Dlrr
    | StatisticsSummary
    | VoipMetrics
    | UnknownXrBlock
)


class ExtendedReport(NamedTuple):
    ssrc: int
    blocks: tuple[XrBlock, ...]
    packet_type: int = XR


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | SourceDescription
    | Goodbye
    | AppPacket
    | Feedback
    | ExtendedReport
    | UnknownPacket
)


def looks_like_rtcp(data: bytes) -> bool:
    """Version 2 and a packet type of 192-223 (RFC 5761 §4: RTCP, not RTP, on a shared
    port)."""
    return len(data) >= 8 and data[0] & 0xC0 == 0x80 and 192 <= data[1] <= 223


def parse_compound(data: bytes) -> tuple[RtcpPacket, ...]:
    """Every packet of one compound RTCP packet; ``RtcpError`` when it is not one."""
    view = memoryview(data)
    total = len(data)
    if total < 4:
        raise RtcpError("shorter than an RTCP header")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < total:
        if len(packets) >= MAX_PACKETS:
            raise RtcpError(f"more than {MAX_PACKETS} packets in one compound")
        if total - pos < 4:
            raise RtcpError(f"{total - pos} bytes after the last packet")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise RtcpError(f"version {first >> 6} at offset {pos}")
        end = pos + 4 + 4 * words
        if end > total:
            raise RtcpError(f"packet at offset {pos} claims {4 + 4 * words} bytes")
        body_end = end
        if first & 0x20:
            if end != total:
                raise RtcpError("padding before the last packet")
            pad = data[end - 1] if end - pos > 4 else 0
            if pad == 0 or pad > end - pos - 4:
                raise RtcpError(f"padding count {pad} does not fit the packet")
            body_end = end - pad
        packets.append(_packet(packet_type, first & 0x1F, bytes(view[pos + 4 : body_end])))
        pos = end
    return tuple(packets)


def _packet(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == SR:
        if len(body) < 24:
            raise RtcpError("SR shorter than its sender information")
        ssrc = _U32.unpack_from(body, 0)[0]
        info = SenderInfo(*_SENDER_INFO.unpack_from(body, 4))
        reports, rest = _reports(body, 24, count)
        return SenderReport(ssrc, info, reports, rest)
    if packet_type == RR:
        if len(body) < 4:
            raise RtcpError("RR without its SSRC")
        ssrc = _U32.unpack_from(body, 0)[0]
        reports, rest = _reports(body, 4, count)
        return ReceiverReport(ssrc, reports, rest)
    if packet_type == SDES:
        return SourceDescription(_sdes(body, count))
    if packet_type == BYE:
        if len(body) < 4 * count:
            raise RtcpError(f"BYE of {count} sources in {len(body)} bytes")
        ssrcs = struct.unpack_from(f"!{count}I", body, 0) if count else ()
        reason = b""
        at = 4 * count
        if at < len(body):
            length = body[at]
            if at + 1 + length > len(body):
                raise RtcpError("BYE reason longer than the packet")
            reason = body[at + 1 : at + 1 + length]
        return Goodbye(tuple(ssrcs), reason)
    if packet_type == APP:
        if len(body) < 8:
            raise RtcpError("APP without SSRC and name")
        return AppPacket(count, _U32.unpack_from(body, 0)[0], body[4:8], body[8:])
    if packet_type in (RTPFB, PSFB):
        if len(body) < 8:
            raise RtcpError("feedback without its SSRCs")
        sender, media = struct.unpack_from("!II", body, 0)
        return Feedback(packet_type, count, sender, media, body[8:])
    if packet_type == XR:
        if len(body) < 4:
            raise RtcpError("XR without its SSRC")
        return ExtendedReport(_U32.unpack_from(body, 0)[0], _xr_blocks(body))
    return UnknownPacket(packet_type, count, body)


def _reports(body: bytes, start: int, count: int) -> tuple[tuple[ReportBlock, ...], bytes]:
    end = start + 24 * count
    if end > len(body):
        raise RtcpError(f"{count} report blocks do not fit in {len(body)} bytes")
    blocks = []
    for at in range(start, end, 24):
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT.unpack_from(body, at)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
    return tuple(blocks), body[end:]


def _sdes(body: bytes, count: int) -> tuple[SdesChunk, ...]:
    chunks = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(body):
            raise RtcpError("SDES chunk beyond the packet")
        ssrc = _U32.unpack_from(body, pos)[0]
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= len(body):
                raise RtcpError("SDES chunk without its end item")
            item_type = body[pos]
            if item_type == 0:
                pos += 1
                pos = (pos + 3) & ~3  # the chunk ends at the next 32-bit boundary
                break
            if pos + 2 > len(body):
                raise RtcpError("SDES item header beyond the packet")
            length = body[pos + 1]
            if pos + 2 + length > len(body):
                raise RtcpError("SDES item longer than the packet")
            items.append((item_type, body[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    if pos > len(body):
        raise RtcpError("SDES chunk padding beyond the packet")
    return tuple(chunks)


def _xr_blocks(body: bytes) -> tuple[XrBlock, ...]:
    blocks: list[XrBlock] = []
    pos = 4
    while pos < len(body):
        if pos + 4 > len(body):
            raise RtcpError("XR block header beyond the packet")
        block_type, specific, words = _HEADER.unpack_from(body, pos)
        end = pos + 4 + 4 * words
        if end > len(body):
            raise RtcpError(f"XR block of type {block_type} longer than the packet")
        blocks.append(_xr_block(block_type, specific, body[pos + 4 : end]))
        pos = end
    return tuple(blocks)


def _xr_block(block_type: int, specific: int, data: bytes) -> XrBlock:
    thinning = specific & 0x0F
    if block_type in (1, 2, 3):
        if len(data) < 8:
            raise RtcpError(f"XR block of type {block_type} too short")
        ssrc, begin, end = struct.unpack_from("!IHH", data, 0)
        if block_type == 3:
            times = struct.unpack_from(f"!{(len(data) - 8) // 4}I", data, 8)
            return PacketReceiptTimes(thinning, ssrc, begin, end, tuple(times))
        chunks = struct.unpack_from(f"!{(len(data) - 8) // 2}H", data, 8)
        return RleReport(block_type, thinning, ssrc, begin, end, tuple(c for c in chunks if c))
    if block_type == 4:
        if len(data) != 8:
            raise RtcpError("XR receiver reference time is not 8 bytes")
        return ReceiverReferenceTime(*struct.unpack_from("!II", data, 0))
    if block_type == 5:
        if len(data) % 12:
            raise RtcpError("XR DLRR is not a whole number of sub-blocks")
        items = tuple(
            DlrrItem(*struct.unpack_from("!III", data, at)) for at in range(0, len(data), 12)
        )
        return Dlrr(items)
    if block_type == 6:
        if len(data) != 36:
            raise RtcpError("XR statistics summary is not 36 bytes")
        ssrc, begin, end, lost, dup = struct.unpack_from("!IHHII", data, 0)
        jitter = struct.unpack_from("!IIII", data, 16)
        ttl = struct.unpack_from("!BBBB", data, 32)
        return StatisticsSummary(
            ssrc,
            begin,
            end,
            bool(specific & 0x80),
            bool(specific & 0x40),
            bool(specific & 0x20),
            (specific >> 3) & 0x03,
            lost,
            dup,
            *jitter,
            *ttl,
        )
    if block_type == 7:
        if len(data) != 32:
            raise RtcpError("XR VoIP metrics is not 32 bytes")
        (ssrc,) = _U32.unpack_from(data, 0)
        loss, discard, burst_d, gap_d = data[4:8]
        burst_dur, gap_dur, rtd, esd = struct.unpack_from("!HHHH", data, 8)
        signal, noise = struct.unpack_from("!bb", data, 16)
        rerl, gmin, r_factor, ext_r, mos_lq, mos_cq, rx_config = data[18:25]
        jb_nominal, jb_max, jb_abs = struct.unpack_from("!HHH", data, 26)
        return VoipMetrics(
            ssrc,
            loss,
            discard,
            burst_d,
            gap_d,
            burst_dur,
            gap_dur,
            rtd,
            esd,
            signal,
            noise,
            rerl,
            gmin,
            r_factor,
            ext_r,
            mos_lq,
            mos_cq,
            rx_config,
            jb_nominal,
            jb_max,
            jb_abs,
        )
    return UnknownXrBlock(block_type, specific, data)


def sender_ssrc(packets: Sequence[RtcpPacket]) -> int | None:
    """The SSRC of whoever sent the compound: the first SR/RR/XR sender, else the first
    SDES chunk or BYE source."""
    for packet in packets:
        if isinstance(packet, SenderReport | ReceiverReport | ExtendedReport):
            return packet.ssrc
    for packet in packets:
        if isinstance(packet, SourceDescription) and packet.chunks:
            return packet.chunks[0].ssrc
        if isinstance(packet, Goodbye) and packet.ssrcs:
            return packet.ssrcs[0]
    return None


# -- HEP type 5 ------------------------------------------------------------------------------


def _go_float(value: float) -> float | int:
    """Go's encoding/json writes a float64 without a fractional part as an integer."""
    return int(value) if value == int(value) else value


def hep_json(packets: Sequence[RtcpPacket]) -> str:
    """The HEP type 5 payload of one compound packet, in heplify's field names and order.

    * ``sender_information``: the first SR's (zeros without one).
    * ``ssrc``: the sender SSRC of the first SR or RR, else of the first XR.
    * ``type``: the packet type of the first packet (200 for an SR-led compound).  heplify
      1.x wrote the type of the *last* packet it looked at (202 for SR+SDES), heplify 2.x the
      first packet's, captagent the SR's or RR's: this follows 2.x and captagent.
    * ``report_count`` and ``report_blocks``: every report block of every SR and RR of the
      compound, in order (heplify 1.x did the same; 2.x and captagent read one packet);
      ``null`` when there is none, as Go writes an empty slice.  ``packets_lost`` is the
      24-bit field unsigned, as heplify writes it (captagent sign-extends it).
    * ``report_blocks_xr``: the first XR VoIP Metrics block (RFC 3611 §4.7) in heplify's
      flat form, zeros without one; ``voip_metrics``: the same block in full, only when
      there is one (heplify 2.x).  Other XR blocks are not rendered (neither agent does).
    * ``sdes_ssrc``: the first SDES chunk's SSRC, 0 without one.
    """
    info: SenderInfo | None = None
    ssrc: int | None = None
    xr_ssrc: int | None = None
    blocks: list[ReportBlock] = []
    voip: VoipMetrics | None = None
    sdes_ssrc = 0
    for packet in packets:
        if isinstance(packet, SenderReport):
            if info is None:
                info = packet.sender_info
            if ssrc is None:
                ssrc = packet.ssrc
            blocks.extend(packet.reports)
        elif isinstance(packet, ReceiverReport):
            if ssrc is None:
                ssrc = packet.ssrc
            blocks.extend(packet.reports)
        elif isinstance(packet, SourceDescription):
            if not sdes_ssrc and packet.chunks:
                sdes_ssrc = packet.chunks[0].ssrc
        elif isinstance(packet, ExtendedReport):
            if xr_ssrc is None:
                xr_ssrc = packet.ssrc
            if voip is None:
                voip = next((b for b in packet.blocks if isinstance(b, VoipMetrics)), None)
    sender = info or SenderInfo(0, 0, 0, 0, 0)
    out: dict[str, object] = {
        "sender_information": {
            "ntp_timestamp_sec": sender.ntp_sec,
            "ntp_timestamp_usec": sender.ntp_frac,
            "rtp_timestamp": sender.rtp_timestamp,
            "packets": sender.packets,
            "octets": sender.octets,
        },
        "ssrc": ssrc if ssrc is not None else (xr_ssrc or 0),
        "type": packets[0].packet_type if packets else 0,
        "report_count": len(blocks),
        "report_blocks": [
            {
                "source_ssrc": b.ssrc,
                "fraction_lost": b.fraction_lost,
                "packets_lost": b.packets_lost_field,
                "highest_seq_no": b.highest_seq,
                "ia_jitter": b.jitter,
                "lsr": b.lsr,
                "dlsr": b.dlsr,
            }
            for b in blocks
        ]
        or None,
        "report_blocks_xr": {
            "type": 7 if voip else 0,
            "id": voip.ssrc if voip else 0,
            "fraction_lost": voip.loss_rate if voip else 0,
            "fraction_discard": voip.discard_rate if voip else 0,
            "burst_density": voip.burst_density if voip else 0,
            "gap_density": voip.gap_density if voip else 0,
            "burst_duration": voip.burst_duration if voip else 0,
            "gap_duration": voip.gap_duration if voip else 0,
            "round_trip_delay": voip.round_trip_delay if voip else 0,
            "end_system_delay": voip.end_system_delay if voip else 0,
        },
    }
    if voip is not None:
        metrics: dict[str, object] = {
            "ssrc": voip.ssrc,
            "loss_rate": voip.loss_rate,
            "discard_rate": voip.discard_rate,
            "burst_density": voip.burst_density,
            "gap_density": voip.gap_density,
            "burst_duration": voip.burst_duration,
            "gap_duration": voip.gap_duration,
            "round_trip_delay": voip.round_trip_delay,
            "end_system_delay": voip.end_system_delay,
            "signal_level": voip.signal_level,
            "noise_level": voip.noise_level,
            "rerl": voip.rerl,
            "gmin": voip.gmin,
            "r_factor": voip.r_factor,
            "ext_r_factor": voip.ext_r_factor,
            "mos_cq": _go_float(voip.mos_cq / 10.0),
            "mos_lq": _go_float(voip.mos_lq / 10.0),
        }
        # heplify marks these omitempty: a zero is left out
        for name, value in (
            ("rx_config", voip.rx_config),
            ("jb_nominal", voip.jb_nominal),
            ("jb_maximum", voip.jb_maximum),
            ("jb_abs_max", voip.jb_abs_max),
        ):
            if value:
                metrics[name] = value
        out["voip_metrics"] = metrics
    out["sdes_ssrc"] = sdes_ssrc
    return json.dumps(out, separators=(",", ":"))


def heplify_mos(packets: Sequence[RtcpPacket]) -> int:
    """heplify 2.x's HEP chunk 0x0020 (MOS x 100): an XR VoIP Metrics MOS-CQ when there is
    one, else a step function of the first report block's fraction lost; 0 for none (heplify
    then sends no chunk).  Here so that a sink that wants to send the chunk sends what
    heplify sends; it is an estimate, not a measurement.

    Two differences, both on purpose: heplify 2.x reads the byte RFC 3611 §4.7 calls MOS-LQ
    as its MOS-CQ (it takes the two in swapped order), and it passes 127 ("unavailable") on
    as 12.7; this reads MOS-CQ where the RFC puts it and ignores 127.  The arithmetic is
    heplify's (float64 x 100, truncated: MOS 4.1 gives 409)."""
    blocks: list[ReportBlock] = []
    for packet in packets:
        if isinstance(packet, ExtendedReport):
            for block in packet.blocks:
                if isinstance(block, VoipMetrics) and 0 < block.mos_cq < 127:
                    return int(block.mos_cq / 10.0 * 100)
        elif isinstance(packet, SenderReport | ReceiverReport):
            blocks.extend(packet.reports)
    if not blocks:
        return 0
    lost = blocks[0].fraction_lost
    for limit, mos in ((10, 450), (25, 400), (50, 350), (100, 300)):
        if lost < limit:
            return mos
    return 250
