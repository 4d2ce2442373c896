"""The state of one call's media: its SIP parties (sides) with their SDP and keys, its RTP
streams, and the helpers that read SDP addresses and SIP tags.  ``MediaTracker``
(:mod:`.calls`) holds these and decides with them."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from captagent_tls.media.keyring import Keyring
from captagent_tls.media.rtp import RtpStream
from captagent_tls.media.sdp import Media, SessionDescription
from captagent_tls.message import Endpoint

MAX_SIDES = 8  # SIP parties (tags) per call: both ends and a few forks


@lru_cache(maxsize=4096)
def packed_address(text: str) -> bytes | None:
    """An SDP address as the capture has it (4 or 16 bytes); None for a name, an invalid or
    an unspecified address (0.0.0.0 is an old-style hold, RFC 3264 §8.4)."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if address.is_unspecified:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


def tag_of(name_addr: str) -> str:
    """The ``tag`` parameter of a From or To value (RFC 3261 §19.3), "" without one."""
    end = name_addr.rfind(">")
    for param in name_addr[end + 1 :].split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "tag":
            return value.strip()
    return ""


class Side:
    """One SIP party of a call (one tag): its latest SDP and the keys it sends with."""

    __slots__ = ("tag", "sip_address", "sdp", "rings")

    def __init__(self, tag: str, sip_address: bytes) -> None:
        self.tag = tag
        self.sip_address = sip_address
        self.sdp: SessionDescription | None = None
        self.rings: list[Keyring] = []

    def media(self, index: int) -> Media | None:
        if self.sdp is None or index >= len(self.sdp.media):
            return None
        return self.sdp.media[index]

    def ring(self, index: int) -> Keyring:
        while len(self.rings) <= index:
            self.rings.append(Keyring())
        return self.rings[index]


MAX_PENDING_RTP = 512  # --media-pcap: packets of a stream kept until its sender is known


class Stream:
    __slots__ = ("call", "sender", "index", "rtp", "rates", "src", "dst", "pending")

    def __init__(
        self,
        call: Call,
        sender: str,
        index: int,
        rtp: RtpStream,
        rates: dict[int, int],
        src: Endpoint,
        dst: Endpoint,
    ) -> None:
        self.call = call
        self.sender = sender
        self.index = index
        self.rtp = rtp
        self.rates = rates
        self.src = src
        self.dst = dst
        # --media-pcap: packets that came before the sender's SDP (its keys): (time, where
        # each went, bytes); a stream is its source's and SSRC's, its packets may go elsewhere
        self.pending: list[tuple[int, Endpoint, bytes]] = []


class Call:
    __slots__ = (
        "call_id",
        "sides",
        "offerer",
        "peers",
        "endpoints",
        "streams",
        "ended_ns",
        "last_ns",
        "answered",
        "held",
    )

    def __init__(self, call_id: str, now_ns: int) -> None:
        self.call_id = call_id
        self.sides: dict[str, Side] = {}
        self.offerer: str | None = None  # the side whose offer waits for its answer
        self.peers: dict[str, str] = {}
        self.endpoints: set[Endpoint] = set()
        self.streams: dict[tuple[bytes, int, int], Stream] = {}
        self.ended_ns: int | None = None
        self.last_ns = now_ns
        self.answered = False
        # SRTCP that came before its sender's SDP: (capture time, source, destination, bytes)
        self.held: list[tuple[int, Endpoint, Endpoint, bytes]] = []

    def side(self, tag: str, sip_address: bytes) -> Side | None:
        """The side of a tag, made if new; None past MAX_SIDES (forks beyond a few)."""
        side = self.sides.get(tag)
        if side is None:
            if len(self.sides) >= MAX_SIDES:
                return None
            side = self.sides[tag] = Side(tag, sip_address)
        side.sip_address = sip_address
        return side

    def last_activity(self) -> int:
        latest = self.last_ns
        for stream in self.streams.values():
            if stream.rtp.last_ns > latest:
                latest = stream.rtp.last_ns
        return latest
