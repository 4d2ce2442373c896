"""Media for people: one line for an RTCP compound and one for an RTP stream's statistics, as
the console and ``--brief`` views show them (the JSON and HEP outputs carry the fields)."""

from __future__ import annotations

from captagent_tls.media.rtcp import (
    AppPacket,
    ExtendedReport,
    Feedback,
    Goodbye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SenderReport,
    SourceDescription,
)
from captagent_tls.media.rtp import RtpStats
from captagent_tls.net.addresses import format_endpoint


def _block(block: ReportBlock) -> str:
    return (
        f"of {block.ssrc:08x}: lost {block.fraction_lost * 100 // 256} % "
        f"({block.packets_lost} in all), jitter {block.jitter}, highest seq {block.highest_seq}"
    )


def _packet(packet: RtcpPacket) -> str:
    if isinstance(packet, SenderReport):
        info = packet.sender_info
        text = f"SR {packet.ssrc:08x}: {info.packets} packets, {info.octets} octets"
        return "; ".join([text, *(_block(b) for b in packet.reports)])
    if isinstance(packet, ReceiverReport):
        return "; ".join([f"RR {packet.ssrc:08x}", *(_block(b) for b in packet.reports)])
    if isinstance(packet, SourceDescription):
        names = [
            value.decode("utf-8", "replace")
            for chunk in packet.chunks
            for kind, value in chunk.items
            if kind == 1  # CNAME
        ]
        return "SDES" + (f" {', '.join(names)}" if names else "")
    if isinstance(packet, Goodbye):
        return "BYE " + " ".join(f"{ssrc:08x}" for ssrc in packet.ssrcs)
    if isinstance(packet, AppPacket):
        return f"APP {packet.name.decode('ascii', 'replace')}"
    if isinstance(packet, ExtendedReport):
        return f"XR {packet.ssrc:08x}: {len(packet.blocks)} blocks"
    if isinstance(packet, Feedback):
        return f"feedback {packet.packet_type}/{packet.fmt}"
    return f"RTCP type {packet.packet_type}"


def rtcp_line(packets: tuple[RtcpPacket, ...]) -> str:
    """A compound RTCP packet in one line: each packet's type and figures."""
    return " | ".join(_packet(packet) for packet in packets)


def rtcp_label(packets: tuple[RtcpPacket, ...]) -> str:
    """Its packet types, for --brief: "SR+SDES"."""
    names = {200: "SR", 201: "RR", 202: "SDES", 203: "BYE", 204: "APP", 207: "XR"}
    return "+".join(names.get(packet.packet_type, str(packet.packet_type)) for packet in packets)


def stream_line(src: tuple[bytes, int], dst: tuple[bytes, int], stats: RtpStats) -> str:
    """An RTP stream's reception statistics in one line."""
    jitter = f"{stats.jitter_ms:.1f} ms" if stats.clock_rate else f"{stats.jitter:.0f}"
    return (
        f"RTP {stats.ssrc:08x} {format_endpoint(src)} -> {format_endpoint(dst)}: "
        f"{stats.packets} packets, {stats.lost} lost ({stats.gaps} gaps), jitter {jitter}"
    )
