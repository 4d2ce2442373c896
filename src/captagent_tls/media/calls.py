"""Media correlation: which call a UDP datagram belongs to, its RTP statistics, and its RTCP,
decrypted and authenticated.  Sans-IO: ``MediaTracker`` is fed decrypted SIP messages
(``sip``) and UDP datagrams (``datagram``) with their capture times, and returns events.

From the SDP of each call (offer and answer per Call-ID, updated by re-INVITE, UPDATE, early
media and late offers) it maps media endpoints -- the ``c=`` address with the ``m=`` port and
the RTCP port (``a=rtcp`` or port + 1, or the RTP port with ``a=rtcp-mux``), and the same
ports at the address the SIP message came from, for peers behind NAT (as heplify does) -- to
(call, the side whose SDP it is, media line).  A datagram is looked up by its source (a peer
sends from where it receives: symmetric RTP), else by its destination (then the sender is the
other side of the call); once an RTP stream has been seen, by source and SSRC, which is the
whole per-packet cost: the header's first 12 bytes, one dict lookup, the statistics update.

Keys: each side's ``a=crypto`` protects what that side sends (RFC 4568 §6.1); the answer's tag
picks the offer's line, and until the answer is seen every offered line is a candidate.  Keys
from a new offer or answer (a re-INVITE that re-keys) are tried first, and replace the old
ones from the first packet they authenticate.  DTLS-SRTP keys (RFC 5764) come from the DTLS
handshake on the media 5-tuple and the key log (``dtls.py``).  Nothing that fails
authentication is emitted; every outcome is counted (``counts``).

Bounded: calls (oldest evicted), media endpoints, streams per call and in all, SRTP contexts
per media line; a call's media ends ``bye_grace`` after its BYE or CANCEL, or after
``idle_timeout`` without SIP or media.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable

from captagent_tls.media import dtls as dtls_mod
from captagent_tls.media.call_state import (
    MAX_PENDING_RTP,
    Call,
    Side,
    Stream,
    packed_address,
    tag_of,
)
from captagent_tls.media.keyring import Keyring
from captagent_tls.media.reports import (
    DecryptedRtp,
    MediaEnded,
    MediaEvent,
    RtcpReport,
    StreamReport,
)
from captagent_tls.media.rtcp import RtcpError, hep_json, parse_compound
from captagent_tls.media.rtp import RtpStream
from captagent_tls.media.sdp import Crypto, Media, SessionDescription, parse_sdp, sdp_of_sip
from captagent_tls.media.srtp import SrtpContext, SrtpError
from captagent_tls.media.unclaimed import Arrival, Provisional, Unclaimed, Waiting
from captagent_tls.message import Endpoint, Message
from captagent_tls.sip.headers import summarize
from captagent_tls.tls.keys import KeyStore

SECOND = 1_000_000_000
MAX_CALLS = 10_000
MAX_STREAMS_PER_CALL = 32
MAX_STREAMS = 100_000
MAX_ENDPOINTS = 100_000
MAX_CONTEXTS = 4  # keys in use per sender and media line (old ones kept while in flight)
MAX_HELD_RTCP = 16  # SRTCP per call waiting for the SDP of its sender (early media)
RTCP_HOLD_NS = 5 * SECOND  # how long it may wait
BYE_GRACE_NS = 5 * SECOND
IDLE_TIMEOUT_NS = 300 * SECOND
EXPIRY_EVERY_NS = SECOND

NO_EVENTS: tuple[MediaEvent, ...] = ()

_RTP = struct.Struct("!HII")  # sequence, timestamp, SSRC (after the first two bytes)

# what an RTCP datagram became: ``MediaTracker.counts["rtcp_" + outcome]``
RTCP_OUTCOMES = (
    "reported",  # decrypted (or plain), parsed and emitted
    "no_call",  # no media endpoint of any call
    "no_keys",  # SRTP media whose keys are not known (yet)
    "auth_failed",  # no key of the sender authenticates it
    "replay",  # authenticated before: a duplicate
    "unknown_mki",  # an MKI that selects no key
    "malformed",  # not a valid SRTCP packet, or not valid RTCP inside
    "held",  # to a call's endpoint from a side whose SDP is not seen yet: held, tried later
    "held_expired",  # held, and the sender's SDP did not come in time
    "held_dropped",  # no room to hold it
)


class MediaTracker:
    """Calls' media, from their SIP and their UDP datagrams.  See the module's description."""

    def __init__(
        self,
        keys: KeyStore | None = None,
        *,
        max_calls: int = MAX_CALLS,
        max_streams_per_call: int = MAX_STREAMS_PER_CALL,
        max_streams: int = MAX_STREAMS,
        max_endpoints: int = MAX_ENDPOINTS,
        bye_grace_ns: int = BYE_GRACE_NS,
        idle_timeout_ns: int = IDLE_TIMEOUT_NS,
        nat_fallback: bool = True,
        decrypt_rtp: bool = False,
    ) -> None:
        self.keys = keys
        self.decrypt_rtp = decrypt_rtp  # --media-pcap: RTP payloads decrypted (else never)
        self.max_calls = max_calls
        self.max_streams_per_call = max_streams_per_call
        self.max_streams = max_streams
        self.max_endpoints = max_endpoints
        self.bye_grace_ns = bye_grace_ns
        self.idle_timeout_ns = idle_timeout_ns
        self.nat_fallback = nat_fallback
        self._calls: OrderedDict[str, Call] = OrderedDict()
        self._endpoints: dict[Endpoint, tuple[Call, str, int]] = {}
        self._streams: dict[tuple[bytes, int, int], Stream] = {}
        self._dtls = dtls_mod.DtlsTracker()
        # DTLS-SRTP keys per association: (client, server, client random) -> (client, server)
        self._dtls_rings: dict[tuple[Endpoint, Endpoint, bytes], tuple[Keyring, Keyring]] = {}
        self._next_expiry = 0
        self.counts: dict[str, int] = {}
        self.unclaimed = Unclaimed()  # media that came before the SIP naming it

    # -- bookkeeping -------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    @property
    def calls(self) -> int:
        return len(self._calls)

    @property
    def endpoints(self) -> int:
        return len(self._endpoints)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def knows(self, call_id: str) -> bool:
        return call_id in self._calls

    def touch(self, call_id: str, ts_ns: int) -> None:
        """A SIP message of a known call that changes nothing of its media: it is active."""
        call = self._calls.get(call_id)
        if call is not None and ts_ns > call.last_ns:
            call.last_ns = ts_ns

    def call_ids(self) -> list[str]:
        return list(self._calls)

    def stream_reports(self, call_id: str) -> list[StreamReport]:
        call = self._calls.get(call_id)
        if call is None:
            return []
        return [StreamReport(s.src, s.dst, s.rtp.stats()) for s in call.streams.values()]

    # -- SIP -----------------------------------------------------------------------------

    def sip(self, message: Message) -> tuple[MediaEvent, ...]:
        """A decrypted (or plain) SIP message: its SDP, if any, updates its call's media.
        The events are those of calls that ended (an eviction, or expiry by capture time)."""
        if not message.is_sip or not message.call_id:
            return NO_EVENTS
        events = self._maybe_expire(message.ts_ns)
        self._sip(message, events)
        return tuple(events)

    def _sip(self, message: Message, events: list[MediaEvent]) -> None:
        assert message.call_id is not None
        summary = summarize(message.payload)
        if not summary.method and not summary.status:
            return
        call_id = message.call_id
        call = self._calls.get(call_id)
        if summary.method in ("BYE", "CANCEL"):
            if call is not None:
                call.ended_ns = call.ended_ns or message.ts_ns
            return
        if (
            call is not None
            and summary.status >= 300
            and summary.cseq_method == "INVITE"
            and not call.answered
        ):
            call.ended_ns = call.ended_ns or message.ts_ns  # the call never came up
        body = sdp_of_sip(message.payload)
        if body is None:
            if call is not None:
                call.last_ns = message.ts_ns
            return
        sdp = parse_sdp(body)
        if not sdp.media:
            return
        if call is None:
            call = self._new_call(call_id, message.ts_ns, events)
        else:
            self._calls.move_to_end(call_id)
        call.last_ns = message.ts_ns
        sender_value = summary.from_ if summary.method else summary.to
        tag = tag_of(sender_value) or ("c" if message.from_client else "s")
        side = call.side(tag, message.src[0])
        if side is None:
            self._count("sides_capped")
            return
        if call.offerer is not None and call.offerer != side.tag:
            self._answer(call, side, sdp)
        elif side.sdp == sdp:
            # the same description again (a 200 OK repeating the 183's answer, RFC 3264 §8):
            # nothing new is offered
            for index, media in enumerate(sdp.media):
                self._register(call, side, index, media)
        elif summary.method == "ACK":
            self._count("sdp_unexpected")  # an ACK carries an answer only (RFC 3261 §13.2.1)
        else:
            self._offer(call, side, sdp)
        if call.held:
            events.extend(self._release(call, message.ts_ns))
        if self.unclaimed:
            events.extend(self._claim(call))
        if self.decrypt_rtp:
            events.extend(self._decrypt_pending(call))

    def _release(self, call: Call, now_ns: int) -> list[MediaEvent]:
        """Try the held SRTCP of a call again, now that more of its SDP is known."""
        held, call.held = call.held, []
        out: list[MediaEvent] = []
        for ts_ns, src, dst, payload in held:
            if now_ns - ts_ns > RTCP_HOLD_NS:
                self._count("rtcp_held_expired")
                continue
            out.extend(self._rtcp(ts_ns, src, dst, payload, False))
        return out

    def _new_call(self, call_id: str, now_ns: int, events: list[MediaEvent]) -> Call:
        if len(self._calls) >= self.max_calls:
            _, oldest = self._calls.popitem(last=False)
            self._count("calls_evicted")
            events.append(self._drop_call(oldest, now_ns, "evicted"))
        call = self._calls[call_id] = Call(call_id, now_ns)
        self._count("calls")
        return call

    def _offer(self, call: Call, side: Side, sdp: SessionDescription) -> None:
        side.sdp = sdp
        call.offerer = side.tag
        for index, media in enumerate(sdp.media):
            self._register(call, side, index, media)
            contexts = self._contexts(media)
            if contexts:
                side.ring(index).offer(contexts)

    def _answer(self, call: Call, side: Side, sdp: SessionDescription) -> None:
        offerer_tag = call.offerer
        assert offerer_tag is not None
        offerer = call.sides[offerer_tag]
        side.sdp = sdp
        call.offerer = None
        call.answered = True
        call.peers[offerer.tag] = side.tag
        call.peers[side.tag] = offerer.tag
        for index, media in enumerate(sdp.media):
            self._register(call, side, index, media)
            if not media.crypto:
                continue
            chosen = media.crypto[0]
            contexts = self._contexts(media, lines=(chosen,))
            if contexts:
                side.ring(index).offer(contexts)
                side.ring(index).select(contexts[0])
            offered = offerer.media(index)
            line = offered.crypto_by_tag(chosen.tag) if offered is not None else None
            if line is not None:
                mine = self._contexts(offered, lines=(line,)) if offered is not None else []
                if mine:
                    offerer.ring(index).select(mine[0])

    def _contexts(self, media: Media, lines: Iterable[Crypto] | None = None) -> list[SrtpContext]:
        out = []
        for line in media.crypto if lines is None else lines:
            try:
                out.append(SrtpContext.from_sdes(line))
            except SrtpError:
                self._count("sdes_unsupported")
        return out

    def _register(self, call: Call, side: Side, index: int, media: Media) -> None:
        if media.port == 0:
            return  # rejected or disabled
        value = (call, side.tag, index)
        wanted: list[Endpoint] = []
        rtp_address = packed_address(media.address) if media.address else None
        rtcp_address = packed_address(media.rtcp_address) if media.rtcp_address else None
        if rtp_address is not None:
            wanted.append((rtp_address, media.port))
        if rtcp_address is not None and not media.rtcp_mux:
            wanted.append((rtcp_address, media.rtcp_port))
        if self.nat_fallback and side.sip_address not in (rtp_address, rtcp_address):
            wanted.append((side.sip_address, media.port))
            if not media.rtcp_mux:
                wanted.append((side.sip_address, media.rtcp_port))
        for endpoint in wanted:
            held = self._endpoints.get(endpoint)
            if held is None and len(self._endpoints) >= self.max_endpoints:
                self._count("endpoints_capped")
                continue
            if held is not None and held[0] is not call:
                held[0].endpoints.discard(endpoint)
                self._count("endpoints_reassigned")
            self._endpoints[endpoint] = value
            call.endpoints.add(endpoint)

    # -- datagrams -----------------------------------------------------------------------

    def datagram(
        self,
        ts_ns: int,
        src: Endpoint,
        dst: Endpoint,
        payload: bytes | memoryview,
        settled: bool = True,
    ) -> tuple[MediaEvent, ...]:
        """One UDP datagram: RTP (statistics), RTCP or SRTCP (a report), DTLS (keys).  The
        events: an RTCP report, after those of calls that ended by capture time.
        ``settled``: every SIP message captured before it has been seen; otherwise RTCP that
        no call claims, or that no key of its call opens yet, waits (unclaimed.py)."""
        if ts_ns >= self._next_expiry:
            events = self._maybe_expire(ts_ns)
            if events:
                return (*events, *self._datagram(ts_ns, src, dst, payload, settled))
        return self._datagram(ts_ns, src, dst, payload, settled)

    def _datagram(
        self,
        ts_ns: int,
        src: Endpoint,
        dst: Endpoint,
        payload: bytes | memoryview,
        settled: bool,
    ) -> tuple[MediaEvent, ...]:
        if len(payload) < 12:
            self._count("not_media")
            return NO_EVENTS
        first = payload[0]
        if first & 0xC0 == 0x80:
            second = payload[1]
            if 192 <= second <= 223:  # RFC 5761 §4: RTCP packet types 192-223
                return self._rtcp(ts_ns, src, dst, bytes(payload), settled)
            seq, timestamp, ssrc = _RTP.unpack_from(payload, 2)
            key = (src[0], src[1], ssrc)
            stream = self._streams.get(key)
            if stream is not None:
                stream.rtp.update(seq, timestamp, ts_ns, stream.rates.get(second & 0x7F, 0))
                if self.decrypt_rtp:
                    return self._decrypted_rtp(ts_ns, src, dst, stream, bytes(payload))
                return NO_EVENTS
            provisional = self.unclaimed.streams.get(key)
            if provisional is not None:  # (no clock rate yet: replayed once claimed)
                provisional.rtp.update(seq, timestamp, ts_ns)
                packet = bytes(payload) if self.decrypt_rtp else None
                arrival = Arrival(seq, timestamp, ts_ns, second & 0x7F, packet, dst)
                self.unclaimed.arrived(provisional, arrival)
                return NO_EVENTS
            return self._new_stream(ts_ns, src, dst, ssrc, seq, timestamp, payload)
        if 20 <= first <= 63:
            self._dtls_datagram(ts_ns, src, dst, bytes(payload), settled)
        elif first < 4:
            self._count("stun")
        else:
            self._count("not_media")
        return NO_EVENTS

    def _decrypted_rtp(
        self, ts_ns: int, src: Endpoint, dst: Endpoint, stream: Stream, packet: bytes
    ) -> tuple[MediaEvent, ...]:
        """--media-pcap: the packet with its payload decrypted, when its keys open it (plain
        RTP of an RTP/AVP line as it is); nothing that does not authenticate.  A packet whose
        sender's SDP is not known yet waits for it (bounded)."""
        call = stream.call
        if not stream.sender:
            found = self._lookup(stream.src, stream.dst)
            if found is not None and found[0] is call and found[1]:
                stream.sender = found[1]
        sender = call.sides.get(stream.sender) if stream.sender else None
        media = sender.media(stream.index) if sender is not None else None
        if media is None:
            if len(stream.pending) < MAX_PENDING_RTP:
                stream.pending.append((ts_ns, dst, packet))
            else:
                self._count("rtp_not_decrypted")
            return NO_EVENTS
        if not media.secure:
            return (DecryptedRtp(ts_ns, src, dst, packet, call.call_id),)
        ring = self._ring(src, dst, sender, stream.index, media)
        try:
            if not ring:
                raise SrtpError(SrtpError.AUTH)
            plain = ring.unprotect_rtp(packet)
        except SrtpError:
            self._count("rtp_not_decrypted")
            return NO_EVENTS
        return (DecryptedRtp(ts_ns, src, dst, plain, call.call_id),)

    def _decrypt_pending(self, call: Call) -> list[MediaEvent]:
        """--media-pcap: the packets of a call's streams that waited for their sender's SDP,
        now that more of it is known."""
        events: list[MediaEvent] = []
        for stream in call.streams.values():
            if stream.pending:
                pending, stream.pending = stream.pending, []
                for ts_ns, dst, packet in pending:
                    events.extend(self._decrypted_rtp(ts_ns, stream.src, dst, stream, packet))
        return events

    def _lookup(self, src: Endpoint, dst: Endpoint) -> tuple[Call, str, int, str] | None:
        """(call, the sending side's tag, media line, the receiving side's tag) of a
        datagram; a tag is "" when that side is not known."""
        entry = self._endpoints.get(src)
        if entry is not None:
            call, sender, index = entry
            return call, sender, index, call.peers.get(sender, "")
        entry = self._endpoints.get(dst)
        if entry is None:
            return None
        call, receiver, index = entry
        sender = call.peers.get(receiver, "")
        if not sender:
            # no answer yet: the sender is the other side we know, if there is exactly one
            others = [tag for tag in call.sides if tag != receiver]
            if len(others) == 1:
                sender = others[0]
        return call, sender, index, receiver

    def _new_stream(
        self,
        ts_ns: int,
        src: Endpoint,
        dst: Endpoint,
        ssrc: int,
        seq: int,
        timestamp: int,
        payload: bytes | memoryview,
    ) -> tuple[MediaEvent, ...]:
        found = self._lookup(src, dst)
        rtp = RtpStream(ssrc, seq, ts_ns)
        payload_type = payload[1] & 0x7F
        if found is None:
            rtp.update(seq, timestamp, ts_ns)
            provisional, pushed = self.unclaimed.stream((src[0], src[1], ssrc), dst, rtp)
            packet = bytes(payload) if self.decrypt_rtp else None
            self.unclaimed.arrived(
                provisional, Arrival(seq, timestamp, ts_ns, payload_type, packet, dst)
            )
            if pushed is not None:
                self._count("rtp_no_call")
            return NO_EVENTS
        stream = self._follow(found, src, dst, ssrc, rtp)
        if stream is None:
            return NO_EVENTS
        rtp.update(seq, timestamp, ts_ns, stream.rates.get(payload_type, 0))
        if self.decrypt_rtp:
            return self._decrypted_rtp(ts_ns, src, dst, stream, bytes(payload))
        return NO_EVENTS

    def _follow(
        self,
        found: tuple[Call, str, int, str],
        src: Endpoint,
        dst: Endpoint,
        ssrc: int,
        rtp: RtpStream,
    ) -> Stream | None:
        """Follow an RTP stream of a call (new, or followed provisionally so far)."""
        call, sender, index, receiver = found
        if len(call.streams) >= self.max_streams_per_call or len(self._streams) >= self.max_streams:
            self._count("streams_capped")
            return None
        rates = self._rates(call, receiver or call.peers.get(sender, ""), sender, index)
        stream = Stream(call, sender, index, rtp, rates, src, dst)
        key = (src[0], src[1], ssrc)
        self._streams[key] = stream
        call.streams[key] = stream
        self._count("rtp_streams")
        return stream

    @staticmethod
    def _rates(call: Call, receiver: str, sender: str, index: int) -> dict[int, int]:
        """Clock rates by payload type: the receiver's numbering wins (RFC 3264 §5.1: an SDP
        says what its author wants to receive)."""
        rates: dict[int, int] = {}
        for tag in (sender, receiver):
            side = call.sides.get(tag) if tag else None
            media = side.media(index) if side is not None else None
            if media is None:
                continue
            for fmt in media.formats:
                if fmt.isdigit() and len(fmt) <= 3:
                    rate = media.clock_rate(int(fmt))
                    if rate:
                        rates[int(fmt)] = rate
        return rates

    def _rtcp(
        self, ts_ns: int, src: Endpoint, dst: Endpoint, payload: bytes, settled: bool
    ) -> tuple[MediaEvent, ...]:
        found = self._lookup(src, dst)
        if found is None:
            self._undecided(Waiting(ts_ns, src, dst, payload, True, "no_call"), settled)
            return NO_EVENTS
        call, sender_tag, index, receiver_tag = found
        sender = call.sides.get(sender_tag) if sender_tag else None
        media = sender.media(index) if sender is not None else None
        if media is None:
            receiver = call.sides.get(receiver_tag) if receiver_tag else None
            media = receiver.media(index) if receiver is not None else None
        if media is None:
            self._count("rtcp_no_call")
            return NO_EVENTS
        secure = media.secure
        if secure and sender is None and not media.dtls:
            # from the side whose SDP (and keys) the capture has not shown yet: early media
            if len(call.held) < MAX_HELD_RTCP:
                call.held.append((ts_ns, src, dst, payload))
                self._count("rtcp_held")
            else:
                self._count("rtcp_held_dropped")
            return NO_EVENTS
        if secure:
            ring = self._ring(src, dst, sender, index, media)
            if not ring:
                self._undecided(Waiting(ts_ns, src, dst, payload, True, "no_keys"), settled)
                return NO_EVENTS
            try:
                plain = ring.unprotect_rtcp(payload)
            except SrtpError as error:
                if error.reason in (SrtpError.AUTH, SrtpError.UNKNOWN_MKI):
                    # the keys that open it may be in SIP not decrypted yet (a re-INVITE)
                    waiting = Waiting(ts_ns, src, dst, payload, True, error.reason)
                    self._undecided(waiting, settled)
                else:
                    self._count(f"rtcp_{error.reason}")
                return NO_EVENTS
        else:
            plain = payload
        try:
            packets = parse_compound(plain)
        except RtcpError:
            self._count("rtcp_malformed")
            return NO_EVENTS
        self._count("rtcp_reported")
        report = RtcpReport(
            ts_ns, src, dst, call.call_id, packets, plain, secure, hep_json(packets)
        )
        return (report,)

    def _ring(
        self, src: Endpoint, dst: Endpoint, sender: Side | None, index: int, media: Media
    ) -> Keyring | None:
        if media.dtls or (sender is not None and not sender.rings and not media.crypto):
            ring = self._dtls_ring(src, dst)
            if ring is not None:
                return ring
        if sender is None or index >= len(sender.rings):
            return None
        return sender.rings[index]

    # -- DTLS-SRTP -----------------------------------------------------------------------

    def _dtls_datagram(
        self, ts_ns: int, src: Endpoint, dst: Endpoint, payload: bytes, settled: bool = True
    ) -> None:
        if src not in self._endpoints and dst not in self._endpoints:
            self._undecided(Waiting(ts_ns, src, dst, payload, False, "no_call"), settled)
            return
        self._count("dtls_datagrams")
        if self._dtls.datagram(src, dst, payload, ts_ns) is not None:
            self._count("dtls_handshakes")

    def _dtls_ring(self, src: Endpoint, dst: Endpoint) -> Keyring | None:
        association = self._dtls.association(src, dst)
        if association is None or not association.complete:
            return None
        key = (association.client, association.server, association.client_random)
        rings = self._dtls_rings.get(key)
        if rings is None:
            if self.keys is None:
                return None
            materials = dtls_mod.candidate_materials(association, self.keys)
            if not materials:
                return None
            client, server = Keyring(), Keyring()
            client.offer([SrtpContext(m.suite, m.client) for m in materials])
            server.offer([SrtpContext(m.suite, m.server) for m in materials])
            if len(self._dtls_rings) >= self.max_calls:
                del self._dtls_rings[next(iter(self._dtls_rings))]
            rings = self._dtls_rings[key] = (client, server)
        return rings[0] if src == association.client else rings[1]

    # -- media that came before its SIP -----------------------------------------------

    def _undecided(self, waiting: Waiting, settled: bool) -> None:
        """A datagram no call claims, or no key of its call opens: given up when every SIP
        message captured before it has been seen, else kept until then (unclaimed.py)."""
        if settled:
            self._give_up(waiting)
            return
        for pushed in self.unclaimed.hold(waiting):
            self._give_up(pushed)

    def _give_up(self, waiting: Waiting) -> None:
        self._count(f"{'rtcp' if waiting.rtcp else 'dtls'}_{waiting.reason}")

    def _claim(self, call: Call) -> list[MediaEvent]:
        """The waiting datagrams and provisional streams at the endpoints of a call whose SDP
        just came, handled again in the order they came (still undecided: the rest of the
        SIP may also be to come)."""
        known = self._endpoints
        events: list[MediaEvent] = []
        for waiting in self.unclaimed.take(call.endpoints):
            ts_ns, src, dst, payload = waiting.ts_ns, waiting.src, waiting.dst, waiting.payload
            if waiting.rtcp:
                events.extend(self._rtcp(ts_ns, src, dst, payload, False))
            else:
                self._dtls_datagram(ts_ns, src, dst, payload, False)
        unclaimed = self.unclaimed
        for key, provisional in list(unclaimed.streams.items()):
            src, dst = (key[0], key[1]), provisional.dst
            if src not in known and dst not in known:
                continue
            unclaimed.forget(key)
            found = self._lookup(src, dst)
            if found is not None:
                events.extend(self._adopt(found, src, dst, key[2], provisional))
        return events

    def _adopt(
        self,
        found: tuple[Call, str, int, str],
        src: Endpoint,
        dst: Endpoint,
        ssrc: int,
        provisional: Provisional,
    ) -> list[MediaEvent]:
        """A stream followed before its call was known: its packets are replayed now that
        the call's SDP gives their clock rate (jitter) and keys (--media-pcap)."""
        arrivals = provisional.arrivals
        if not provisional.complete or not arrivals:
            self._follow(found, src, dst, ssrc, provisional.rtp)
            return []
        first = arrivals[0]
        rtp = RtpStream(ssrc, first.seq, first.ts_ns)
        stream = self._follow(found, src, dst, ssrc, rtp)
        if stream is None:
            return []
        events: list[MediaEvent] = []
        for arrival in arrivals:
            rate = stream.rates.get(arrival.payload_type, 0)
            rtp.update(arrival.seq, arrival.timestamp, arrival.ts_ns, rate)
            if arrival.packet is not None:
                to = arrival.dst or dst  # (where this packet went)
                events.extend(self._decrypted_rtp(arrival.ts_ns, src, to, stream, arrival.packet))
        return events

    def settle(self, watermark_ns: int) -> None:
        """Every SIP message captured before ``watermark_ns`` has been seen: the datagrams
        waiting since before it belong to no call."""
        for waiting in self.unclaimed.settle(watermark_ns):
            self._give_up(waiting)

    def oldest_waiting_ts(self) -> int | None:
        """The capture time of the oldest datagram waiting for its call (a report may
        still come with it)."""
        held = self.unclaimed.held
        return held[0].ts_ns if held else None

    # -- expiry --------------------------------------------------------------------------

    def _maybe_expire(self, now_ns: int) -> list[MediaEvent]:
        if now_ns < self._next_expiry:
            return []
        self._next_expiry = now_ns + EXPIRY_EVERY_NS
        return self.expire(now_ns)

    def expire(self, now_ns: int) -> list[MediaEvent]:
        """End the media of calls past their BYE grace or idle timeout."""
        events: list[MediaEvent] = []
        for call in list(self._calls.values()):
            if call.ended_ns is not None and now_ns - call.ended_ns >= self.bye_grace_ns:
                reason = "bye"
            elif now_ns - call.last_activity() >= self.idle_timeout_ns:
                reason = "idle"
            else:
                continue
            del self._calls[call.call_id]
            self._count(f"calls_ended_{reason}")
            events.append(self._drop_call(call, now_ns, reason))
        if events:
            self._dtls.expire(now_ns - self.idle_timeout_ns)
        return events

    def _drop_call(self, call: Call, now_ns: int, reason: str) -> MediaEnded:
        if call.held:
            self._count("rtcp_held_expired", len(call.held))
            call.held = []
        for endpoint in call.endpoints:
            held = self._endpoints.get(endpoint)
            if held is not None and held[0] is call:
                del self._endpoints[endpoint]
        reports = []
        for key, stream in call.streams.items():
            if self._streams.get(key) is stream:
                del self._streams[key]
            reports.append(StreamReport(stream.src, stream.dst, stream.rtp.stats()))
        ends = call.endpoints
        for ring_key in [k for k in self._dtls_rings if k[0] in ends or k[1] in ends]:
            del self._dtls_rings[ring_key]
        return MediaEnded(now_ns, call.call_id, reason, tuple(reports))

    def flush(self, now_ns: int) -> list[MediaEvent]:
        """End of input: what waits for a call belongs to none; every call's media ends
        (reason "idle")."""
        for waiting in self.unclaimed.settle(now_ns + 1):
            self._give_up(waiting)
        for key in list(self.unclaimed.streams):
            self.unclaimed.forget(key)
            self._count("rtp_no_call")
        events: list[MediaEvent] = []
        for call in list(self._calls.values()):
            del self._calls[call.call_id]
            events.append(self._drop_call(call, now_ns, "idle"))
        return events
