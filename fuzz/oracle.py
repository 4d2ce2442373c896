"""The "nothing invented" oracle for what the pipeline emits.

For every message the pipeline hands its sinks:

* **Decrypted (transport "tls"), SIP or raw**: the payload must be a contiguous substring of
  what the fixture's peer really sent on that connection in that direction (``c2s`` when the
  message is marked as coming from the client), per the fixture's ground truth (see
  :mod:`fuzz.truth`).  The connection is the one whose client and server ports the message
  carries; when no fixture connection has those ports (a mutation rewrote them), the streams of
  every connection in that direction are allowed.  A mutated capture may lose bytes, so
  *fewer* messages are fine; a message glued together from two places of a stream, a message
  under the wrong direction, or bytes decrypted with the wrong key or IV are not.
* **Unencrypted (transport "tcp" or "udp")**: these are what was on the wire, mutations
  included, so they must be a contiguous substring of one gap-free piece of that direction's
  TCP stream as the capture itself carries it (a second, independent run of TCP reassembly
  over the same file: :func:`wire_pieces`), or of one UDP datagram (after IP reassembly).
  That TCP reassembly only ever delivers bytes of the segments, at their sequence
  positions, is checked on its own by the ``tcp`` target.

Plus, for an input that leaves the fixture unchanged: the SIP messages are exactly those
sent (the multiset of (client port, direction, payload)), as tests/test_fixtures.py checks.

For the media target, :func:`check_media` holds the media stage's events (RTCP reports,
decrypted RTP, RTP statistics) to the media fixture's ground truth and to the capture: see
its description.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from captagent_tls.capture.files import CaptureReader
from captagent_tls.message import Message
from captagent_tls.net.ip import Defragmenter
from captagent_tls.net.packet import Datagram, Fragment, Segment, decode
from captagent_tls.net.tcp import StreamData, StreamGap, TcpReassembler
from fuzz.truth import SentStreams

if TYPE_CHECKING:
    from fuzz.mediatruth import MediaTruth

Endpoint = tuple[bytes, int]
Pieces = dict[tuple[Endpoint, Endpoint], list[bytes]]


class OracleFailure(AssertionError):
    """The product did something the oracle forbids; ``check`` names which rule."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check = check


def wire_pieces(path: str) -> Pieces:
    """Per (sender, receiver): the gap-free pieces of the TCP streams and the UDP datagrams
    that the capture file carries."""
    pieces: Pieces = {}
    current: dict[tuple[object, int], bytearray] = {}
    ends: dict[tuple[object, int], tuple[Endpoint, Endpoint]] = {}

    def close(key: tuple[object, int]) -> None:
        data = current.pop(key, None)
        if data:
            pieces.setdefault(ends[key], []).append(bytes(data))

    def on_events(events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, StreamData | StreamGap):
                flow = event.flow
                key = (flow, event.direction)  # (the dicts keep the flows: no id is reused)
                ends[key] = (flow.endpoint(event.direction), flow.endpoint(1 - event.direction))
                if isinstance(event, StreamData):
                    current.setdefault(key, bytearray()).extend(event.data)
                else:
                    close(key)

    tcp = TcpReassembler()
    defrag = Defragmenter()
    try:
        with CaptureReader(path) as reader:
            for frame in reader:
                packet = decode(frame.linktype, frame.data)
                if isinstance(packet, Fragment):
                    packet = defrag.add(packet, frame.ts_ns)
                if isinstance(packet, Segment):
                    on_events(tcp.segment(packet, frame.ts_ns))
                elif isinstance(packet, Datagram):
                    pieces.setdefault(
                        ((packet.src, packet.sport), (packet.dst, packet.dport)), []
                    ).append(bytes(packet.payload))
    except Exception:  # the pipeline run itself reports what the reader cannot take
        pass
    on_events(tcp.flush())
    for key in list(current):
        close(key)
    return pieces


def check_messages(messages: list[Message], sent: SentStreams, wire: Callable[[], Pieces]) -> None:
    """Raise :class:`OracleFailure` for the first message that was never sent."""
    pieces: Pieces | None = None
    for message in messages:
        direction = "c2s" if message.from_client else "s2c"
        if message.transport == "tls":
            client, server = (
                (message.src, message.dst) if message.from_client else (message.dst, message.src)
            )
            streams = sent.candidates(client[1], server[1], direction)
            if not any(message.payload in stream for stream in streams):
                raise OracleFailure(
                    "invented-tls-bytes",
                    f"{'SIP' if message.is_sip else 'raw'} {direction} message on client port "
                    f"{client[1]} ({message.tls_version} {message.cipher_suite}) is not in what "
                    f"that peer sent: {message.payload[:80]!r}",
                )
        else:
            if pieces is None:
                pieces = wire()
            candidates = pieces.get((message.src, message.dst), [])
            if not any(message.payload in piece for piece in candidates):
                raise OracleFailure(
                    "invented-plain-bytes",
                    f"unencrypted {message.transport} message {direction} is not in one piece "
                    f"of what the capture carries: {message.payload[:80]!r}",
                )


def received(messages: list[Message]) -> Counter[tuple[int, str, bytes]]:
    """(client port, direction, payload) of the SIP messages, as support.cli.received."""
    found: Counter[tuple[int, str, bytes]] = Counter()
    for message in messages:
        if message.is_sip:
            client_port = message.src[1] if message.from_client else message.dst[1]
            found[(client_port, "c2s" if message.from_client else "s2c", message.payload)] += 1
    return found


# ------------------------------------------------------------------------------- media


def _rtp_header_length(packet: bytes) -> int | None:
    """The length of an RTP header (fixed part, CSRCs, extension), by RFC 3550 §5.1/5.3.1;
    None when the packet is shorter than its header says."""
    if len(packet) < 12:
        return None
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < length + 4:
            return None
        length += 4 + 4 * int.from_bytes(packet[length + 2 : length + 4], "big")
    return length if len(packet) >= length else None


def _is_rtp(payload: bytes) -> bool:
    return len(payload) >= 12 and payload[0] >> 6 == 2 and not 192 <= payload[1] <= 223


def plain_sdp_calls(sip: Iterable[tuple[str | None, bytes]]) -> set[str]:
    """The Call-IDs whose SIP messages ((Call-ID, message) as the capture carries them) have
    an ``m=`` line of a plain profile (no SAVP): RTP and RTCP are then taken as they come,
    and rightly so."""
    found = set()
    for call_id, text in sip:
        body = text.partition(b"\r\n\r\n")[2]
        for line in body.split(b"\n"):
            fields = line.strip().split()
            if (
                call_id
                and fields[:1]
                and fields[0].startswith(b"m=")
                and (len(fields) < 3 or b"SAVP" not in fields[2].upper())
            ):
                found.add(call_id)
    return found


def check_media(
    events: list[object],
    truth: MediaTruth,
    wire: Callable[[], Pieces],
    *,
    sip: list[tuple[str | None, bytes]] | None = None,
    forged: Iterable[tuple[str | None, bytes]] = (),
    call_ids: Iterable[str] = (),
    open_srtp: Callable[[str, bytes], bytes | None] | None = None,
) -> None:
    """The media oracle (fuzz/targets/media.py); raises :class:`OracleFailure`.

    ``truth``: the fixture's ground truth (fuzz/mediatruth.py); ``sip``: (Call-ID, message) of
    the SIP the mutated capture carries in plaintext (as emitted: :func:`check_messages`
    holds them to the wire), when a mutation replaced the TLS by it (None: the capture's SDP
    is the fixture's); ``forged``: (Call-ID, plaintext) of the SRTCP a
    mutation protected with a real key; ``call_ids``: those of the unencrypted SIP messages
    emitted (what a mutation left of the Call-ID headers); ``open_srtp``: an independent
    SRTP decryption of a wire packet from a source endpoint (text) with the fixture's keys.

    * Every report, media summary and decrypted packet names a Call-ID of the capture.
    * **Authenticated or nothing**: a report that came as SRTCP carries a plaintext that a
      peer of that call sent under its keys (the ground truth's, or one the mutation forged
      with them), never more often than it was sent (a replay is not a report).  When the
      SDP was mutated, the call may differ (keys or ports moved), the plaintext may not.
    * Plain RTCP is reported as the wire carries it, one datagram whole, and only in a call
      whose SDP has a plain profile (RTP/AVP): never the unprotected RTCP that baresip sends
      inside its SRTP calls.
    * A decrypted RTP packet (--media-pcap) has the header of a wire datagram of its
      direction and its length less the SRTP tag and MKI (the datagram itself in a plain
      call), and, when the SDP is the fixture's, is what an independent SRTP implementation
      decrypts from that datagram with the fixture's keys; no more copies of it than the
      wire has of that datagram.
    * The RTP statistics of a stream never count more packets than the capture carries from
      that source with that SSRC.
    """
    from captagent_tls.media.reports import DecryptedRtp, MediaEnded, RtcpReport
    from captagent_tls.net.addresses import format_endpoint

    allowed_ids = set(truth.call_ids) | set(call_ids)
    mutated_sdp = sip is not None
    plain_calls = (
        plain_sdp_calls(sip)
        if sip is not None
        else {c for c, secure in truth.secure.items() if not secure}
    )
    authentic = Counter(truth.authentic())
    authentic.update((c, p) for c, p in forged if c is not None)
    plaintexts = Counter(p for _, p in authentic.elements())
    overheads = {c.srtp_overhead for c in truth.contexts.values() if c.suite}
    pieces: Pieces | None = None
    srtcp_seen: Counter[bytes] = Counter()
    rtp_seen: Counter[tuple[Endpoint, Endpoint, bytes]] = Counter()
    counted: Counter[tuple[Endpoint, int]] = Counter()
    for event in events:
        call_id = getattr(event, "call_id", None)
        if call_id not in allowed_ids:
            raise OracleFailure(
                "media-call-id", f"{type(event).__name__} of Call-ID {call_id!r}: not the capture's"
            )
        assert isinstance(call_id, str)
        if isinstance(event, RtcpReport):
            where = f"{format_endpoint(event.src)} -> {format_endpoint(event.dst)}"
            if event.srtcp:
                plain = event.plaintext
                srtcp_seen[plain] += 1
                sent = authentic[(call_id, plain)] if not mutated_sdp else plaintexts[plain]
                if not sent and mutated_sdp:
                    # an SDP changed to a NULL suite (RFC 3711 §4.1.3) with the same key: what
                    # its tag proves is the datagram itself, whatever its E flag says
                    if pieces is None:
                        pieces = wire()
                    if any(d.startswith(plain) for d in pieces.get((event.src, event.dst), [])):
                        continue
                if not sent:
                    raise OracleFailure(
                        "srtcp-invented",
                        f"SRTCP report {where} in {call_id}: a plaintext its peers never "
                        f"sent under their keys: {plain[:48].hex()}",
                    )
                if srtcp_seen[plain] > plaintexts[plain]:
                    raise OracleFailure(
                        "srtcp-replayed",
                        f"SRTCP report {where} in {call_id} given {srtcp_seen[plain]} times, "
                        f"sent {plaintexts[plain]}",
                    )
                continue
            if pieces is None:
                pieces = wire()
            if event.plaintext not in pieces.get((event.src, event.dst), []):
                raise OracleFailure(
                    "rtcp-not-on-wire",
                    f"plain RTCP report {where}: not one datagram of the capture",
                )
            if call_id not in plain_calls:
                raise OracleFailure(
                    "plain-rtcp-in-srtp-call",
                    f"RTCP report {where} taken as plain in {call_id}, whose SDP is SRTP: "
                    f"{event.plaintext[:48].hex()}",
                )
        elif isinstance(event, DecryptedRtp):
            if pieces is None:
                pieces = wire()
            packet = event.packet
            key = (event.src, event.dst, packet)
            rtp_seen[key] += 1
            datagrams = pieces.get((event.src, event.dst), [])
            where = f"{format_endpoint(event.src)} -> {format_endpoint(event.dst)}"
            if call_id in plain_calls and packet in datagrams:
                if rtp_seen[key] > datagrams.count(packet):
                    raise OracleFailure("rtp-replayed", f"plain RTP {where} given too often")
                continue
            header = _rtp_header_length(packet)
            matches = [
                d
                for d in datagrams
                if header is not None
                and d[:header] == packet[:header]
                and (
                    len(d) - len(packet) in overheads
                    or (mutated_sdp and 0 <= len(d) - len(packet) <= 16 + 255)
                )
            ]
            if not matches:
                raise OracleFailure(
                    "rtp-not-on-wire",
                    f"decrypted RTP {where} in {call_id}: no datagram of the capture has its "
                    f"header and its length plus a tag: {packet[:16].hex()}",
                )
            if not mutated_sdp and open_srtp is not None:
                opened = [d for d in matches if open_srtp(format_endpoint(event.src), d) == packet]
                if not opened:
                    raise OracleFailure(
                        "rtp-not-authentic",
                        f"decrypted RTP {where} in {call_id} is not what its datagram "
                        f"decrypts to with the fixture's keys: {packet[:16].hex()}",
                    )
                matches = opened
            if rtp_seen[key] > len(matches):
                raise OracleFailure(
                    "rtp-replayed",
                    f"decrypted RTP {where} in {call_id} given {rtp_seen[key]} times, "
                    f"{len(matches)} datagrams carry it",
                )
        elif isinstance(event, MediaEnded):
            for stream in event.streams:
                counted[(stream.src, stream.stats.ssrc)] += stream.stats.packets
    if counted:
        if pieces is None:
            pieces = wire()
        on_wire: Counter[tuple[Endpoint, int]] = Counter()
        for (src, _), payloads in pieces.items():
            for payload in payloads:
                if _is_rtp(payload):
                    on_wire[(src, int.from_bytes(payload[8:12], "big"))] += 1
        for (src, ssrc), packets in counted.items():
            if packets > on_wire[(src, ssrc)]:
                raise OracleFailure(
                    "rtp-count",
                    f"RTP stream {ssrc:08x} from {format_endpoint(src)}: {packets} packets "
                    f"counted, {on_wire[(src, ssrc)]} in the capture",
                )
