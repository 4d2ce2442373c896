"""The media stage (:mod:`captagent_tls.stage`): UDP datagrams that look like RTP, RTCP,
SRTCP or DTLS, placed in calls by the SDP of the SIP messages the pipeline emits.

How a datagram is chosen: the SIP datagram stage is asked first (a SIP start line); then this
stage takes what has the shape of media (RTP version 2, a DTLS record, STUN) and looks it up
by the address:port pairs that calls' SDP announced (``calls.py``).  Media whose call is not
known yet waits (``unclaimed.py``) until the pipeline says every SIP message captured before
it has been emitted (``settle``): the pipeline tells, because it knows what it still holds.

Until the first media datagram, the stage is dormant: the SIP messages that carry SDP (and the
later ones of their calls) are only kept, bounded, and replayed into the tracker when media
comes.  So a capture or a capture filter without media costs SIP a search per message, not
the parsing of every SDP; and the tracker, and with it SRTP, SDP and DTLS (and
pyca/cryptography), is imported then: a run without media pays nothing at start-up.  Awake,
a message without SDP costs a dictionary lookup unless it can end its call (BYE, CANCEL, a
failure).
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING

from captagent_tls.counters import Counters
from captagent_tls.media.reports import MediaEnded, MediaEvent
from captagent_tls.message import Message
from captagent_tls.net.packet import Datagram
from captagent_tls.stage import Outputs
from captagent_tls.tls.keys import KeyStore

if TYPE_CHECKING:
    from captagent_tls.media.calls import MediaTracker

# the tracker's counts (calls.py), as the counters they are part of: name -> (counter, label)
COUNTERS: dict[str, tuple[str, str]] = {
    **{f"rtcp_{o}": ("media_rtcp", o) for o in ("reported", "no_call", "no_keys", "malformed")},
    "rtcp_auth_failed": ("media_rtcp", "failed_authentication"),
    "rtcp_replay": ("media_rtcp", "replayed"),
    "rtcp_unknown_mki": ("media_rtcp", "unknown_mki"),
    "rtcp_held": ("media_events", "early_srtcp_held"),
    "rtcp_held_expired": ("media_rtcp", "early_expired"),
    "rtcp_held_dropped": ("media_rtcp", "early_over_cap"),
    "rtp_streams": ("media_rtp_streams", "followed"),
    "rtp_no_call": ("media_rtp_streams", "no_call"),
    "streams_capped": ("media_rtp_streams", "over_cap"),
    "calls": ("media_calls", "started"),
    "calls_evicted": ("media_calls", "evicted"),
    "calls_ended_bye": ("media_calls", "ended_bye"),
    "calls_ended_idle": ("media_calls", "ended_idle"),
    "dtls_datagrams": ("media_dtls", "datagrams"),
    "dtls_handshakes": ("media_dtls", "handshakes"),
    "dtls_no_call": ("media_dtls", "no_call"),
    "endpoints_capped": ("media_events", "endpoints_over_cap"),
    "endpoints_reassigned": ("media_events", "endpoints_reassigned"),
    "sides_capped": ("media_events", "sides_over_cap"),
    "sdes_unsupported": ("media_events", "sdes_unsupported"),
    "sdp_unexpected": ("media_events", "sdp_unexpected"),
    "stun": ("media_events", "stun"),
    "not_media": ("media_events", "not_media"),
    "rtp_not_decrypted": ("media_events", "rtp_not_decrypted"),
}


STUN_COOKIE = b"\x21\x12\xa4\x42"  # RFC 5389 §6
_SDP_BODY = re.compile(rb"application/sdp", re.IGNORECASE)
# a message that may end its call's media: a BYE or CANCEL, a response of 300 or more
_ENDS = re.compile(rb"(?:BYE|CANCEL) |SIP/2\.0 [3-6]")
DORMANT_MESSAGES = 50_000  # SIP messages kept for media before any media came
DORMANT_BYTES = 64 << 20


def has_sdp(payload: bytes) -> bool:
    """A body of type application/sdp (any case; the usual spelling found without a
    regular expression)."""
    if b"application/sdp" in payload:
        return True
    return (b"/sdp" in payload or b"/SDP" in payload or b"/Sdp" in payload) and bool(
        _SDP_BODY.search(payload)
    )


def looks_like_media(payload: bytes | memoryview) -> bool:
    """RTP or RTCP (version 2), a DTLS record (RFC 7983: first byte 20-63) or STUN (0-3)."""
    if len(payload) < 12:
        return False
    first = payload[0]
    return (
        first & 0xC0 == 0x80 or 20 <= first <= 63 or (first < 4 and payload[4:8] == b"!\x12\xa4B")
    )


class MediaStage:
    """UDP media of the calls whose SIP the pipeline decrypts."""

    observes = True  # (the pipeline shows it every SIP message it emits)

    def __init__(self, keys: KeyStore, decrypt_rtp: bool = False):
        self.keys = keys
        self.decrypt_rtp = decrypt_rtp  # --media-pcap
        self._tracker: MediaTracker | None = None
        # before any media: the messages media may need, in order, and their calls' counts
        self._dormant: deque[Message] = deque()
        self._dormant_bytes = 0
        self._dormant_calls: dict[str, int] = {}
        self.dormant_dropped = 0

    @property
    def tracker(self) -> MediaTracker:
        if self._tracker is None:
            from captagent_tls.media.calls import MediaTracker

            self._tracker = MediaTracker(self.keys, decrypt_rtp=self.decrypt_rtp)
        return self._tracker

    def datagram(self, datagram: Datagram, ts_ns: int, settled: bool) -> Outputs | None:
        payload = datagram.payload
        if not looks_like_media(payload):
            return None
        outputs = self._wake() if self._tracker is None else []
        events = self.tracker.datagram(
            ts_ns, (datagram.src, datagram.sport), (datagram.dst, datagram.dport), payload, settled
        )
        return outputs + self._outputs(events) if events else outputs

    def _wake(self) -> Outputs:
        """The first media datagram: the SIP kept so far goes to the tracker, in order."""
        tracker = self.tracker
        outputs: Outputs = []
        dormant = self._dormant
        while dormant:
            outputs += self._outputs(tracker.sip(dormant.popleft()))
        self._dormant_calls.clear()
        self._dormant_bytes = 0
        return outputs

    def _keep(self, message: Message, call_id: str) -> None:
        """Dormant: keep a message media may need (FIFO, bounded)."""
        dormant, calls = self._dormant, self._dormant_calls
        dormant.append(message)
        calls[call_id] = calls.get(call_id, 0) + 1
        self._dormant_bytes += len(message.payload)
        while len(dormant) > DORMANT_MESSAGES or self._dormant_bytes > DORMANT_BYTES:
            dropped = dormant.popleft()
            self.dormant_dropped += 1
            self._dormant_bytes -= len(dropped.payload)
            left = calls[dropped.call_id or ""] - 1
            if left:
                calls[dropped.call_id or ""] = left
            else:
                del calls[dropped.call_id or ""]

    def observe(self, message: Message) -> Outputs:
        """Only what can change a call's media is read: a message with SDP, or one that
        may end a call already known (BYE, CANCEL, a failure); another message of a known
        call only marks it active; the rest costs a search."""
        call_id = message.call_id
        if not message.is_sip or not call_id:
            return []
        tracker = self._tracker
        payload = message.payload
        if tracker is None:  # dormant: no media yet
            if has_sdp(payload) or (call_id in self._dormant_calls and _ENDS.match(payload)):
                self._keep(message, call_id)
            return []
        if not tracker.knows(call_id):
            if not has_sdp(payload):
                return []
        elif not _ENDS.match(payload) and not has_sdp(payload):
            tracker.touch(call_id, message.ts_ns)
            return []
        return self._outputs(tracker.sip(message))

    def shares(self, message: Message) -> bool:
        """What a call's media in another worker needs: its SDP, and the messages that end
        it (BYE, CANCEL, a failure of the INVITE)."""
        payload = message.payload
        return bool(
            has_sdp(payload)
            or payload.startswith((b"BYE ", b"CANCEL "))
            or (payload.startswith(b"SIP/2.0 ") and payload[8:9] in b"3456")
        )

    @staticmethod
    def _outputs(events: tuple[MediaEvent, ...]) -> Outputs:
        """What goes out: RTCP reports (decrypted RTP too, for --media-pcap), and the media
        summary of calls that had media."""
        return [e for e in events if not isinstance(e, MediaEnded) or e.streams]

    def settle(self, watermark_ns: int) -> Outputs:
        if self._tracker is not None:
            self._tracker.settle(watermark_ns)
        return []

    def oldest_waiting_ts(self) -> int | None:
        return self._tracker.oldest_waiting_ts() if self._tracker is not None else None

    def expire(self, now_ns: int) -> Outputs:
        return self._outputs(tuple(self._tracker.expire(now_ns))) if self._tracker else []

    def finish(self, now_ns: int) -> Outputs:
        return self._outputs(tuple(self._tracker.flush(now_ns))) if self._tracker else []

    def add_counters(self, counters: Counters) -> None:
        tracker = self._tracker
        if tracker is None:
            return
        for name, count in tracker.counts.items():
            counter = COUNTERS.get(name)
            if counter is not None:
                counters.set(counter[0], counters.get(*counter) + count, counter[1])
        counters.set("media_calls_active", tracker.calls)
        counters.set("media_rtp_streams_active", tracker.streams)
        counters.set("media_waiting", len(tracker.unclaimed.held))
