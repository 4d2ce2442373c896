"""media/calls.py: MediaTracker, from SIP messages and UDP datagrams to RTCP reports and RTP
statistics.  SRTCP is protected here by pylibsrtp (libsrtp) where its suites reach, so the
tracker's decryption is checked against an independent implementation."""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import struct
from pathlib import Path

import pytest

from captagent_tls.media import calls as calls_mod
from captagent_tls.media import keyring as keyring_mod
from captagent_tls.media.calls import MediaEnded, MediaTracker, RtcpReport, packed_address, tag_of
from captagent_tls.media.rtcp import ReceiverReport, SenderReport, parse_compound
from captagent_tls.media.srtp import SUITES, MasterKey, SrtpContext
from captagent_tls.message import Message
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore

S = 1_000_000_000
CALLER_SIP = (b"\xc6\x33\x64\x01", 5061)  # 198.51.100.1
CALLEE_SIP = (b"\xcb\x00\x71\x02", 5061)  # 203.0.113.2
A = "198.51.100.1"
B = "203.0.113.2"


def ep(host: str, port: int) -> tuple[bytes, int]:
    return ipaddress.ip_address(host).packed, port


def key_b64(seed: int, length: int = 30) -> str:
    return base64.b64encode(bytes((seed + i) & 0xFF for i in range(length))).decode()


def sdp(
    address: str,
    port: int,
    crypto: list[str] = (),  # type: ignore[assignment]
    proto: str = "RTP/SAVP",
    extra: str = "",
) -> str:
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {proto} 0 96",
        "a=rtpmap:96 opus/48000/2",
        *crypto,
        *([extra] if extra else []),
    ]
    return "\r\n".join(lines) + "\r\n"


def sip(
    ts: float,
    first_line: str,
    call_id: str,
    *,
    from_client: bool,
    body: str = "",
    cseq: str = "1 INVITE",
    from_tag: str = "caller",
    to_tag: str = "callee",
    src: tuple[bytes, int] | None = None,
) -> Message:
    headers = [
        first_line,
        f"From: <sip:alice@example.com>;tag={from_tag}",
        f"To: <sip:bob@example.com>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(body)}")
    payload = ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
    if src is None:
        src = CALLER_SIP if from_client else CALLEE_SIP
    dst = CALLEE_SIP if src == CALLER_SIP else CALLER_SIP
    return Message(int(ts * S), src, dst, "tls", payload, call_id, True, from_client, "", "")


def invite(ts, call_id, body, **kw):
    kw.setdefault("to_tag", "")
    return sip(ts, "INVITE sip:bob@example.com SIP/2.0", call_id, from_client=True, body=body,
               **kw)  # fmt: skip


def ok(ts, call_id, body, cseq="1 INVITE", **kw):
    return sip(ts, "SIP/2.0 200 OK", call_id, from_client=False, body=body, cseq=cseq, **kw)


def sdes_context(line: str) -> SrtpContext:
    from captagent_tls.media.sdp import parse_crypto

    crypto = parse_crypto(line.split(":", 1)[1])
    assert crypto is not None
    return SrtpContext.from_sdes(crypto)


def libsrtp(name: str, b64: str):
    pylibsrtp = pytest.importorskip("pylibsrtp")
    profile = {
        "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
        "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
        "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    }[name]
    policy = pylibsrtp.Policy(
        key=base64.b64decode(b64),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=profile,
    )
    return pylibsrtp.Session(policy)


def sr(ssrc: int, reports: int = 1) -> bytes:
    blocks = b"".join(
        struct.pack("!IIIIII", 0x1000 + i, (5 << 24) | 3, 900, 7, 1, 2) for i in range(reports)
    )
    body = struct.pack("!I", ssrc) + struct.pack("!IIIII", 1, 2, 3, 4, 5) + blocks
    return struct.pack("!BBH", 0x80 | reports, 200, len(body) // 4) + body


def rtp(seq: int, ts: int, ssrc: int, pt: int = 0, payload: bytes = b"\xd5" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


A_LINES = [
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(1)}",
    f"a=crypto:2 AEAD_AES_128_GCM inline:{key_b64(2, 28)}",
]
B_LINE = f"a=crypto:2 AEAD_AES_128_GCM inline:{key_b64(3, 28)}"


def sdes_call(tracker: MediaTracker, call_id: str = "call-1", a_port=4000, b_port=5000):
    assert tracker.sip(invite(0.0, call_id, sdp(A, a_port, A_LINES))) == ()
    assert tracker.sip(ok(0.1, call_id, sdp(B, b_port, [B_LINE]))) == ()


def test_each_side_sends_with_its_own_key_and_the_answer_picks_the_offer_line():
    tracker = MediaTracker()
    sdes_call(tracker)
    a_send = libsrtp("AEAD_AES_128_GCM", key_b64(2, 28))  # the offer's tag-2 line
    b_send = libsrtp("AEAD_AES_128_GCM", key_b64(3, 28))
    from_a = tracker.datagram(int(1 * S), ep(A, 4001), ep(B, 5001), a_send.protect_rtcp(sr(0xA)))
    from_b = tracker.datagram(int(1 * S), ep(B, 5001), ep(A, 4001), b_send.protect_rtcp(sr(0xB)))
    (report_a,) = from_a
    (report_b,) = from_b
    assert isinstance(report_a, RtcpReport) and report_a.call_id == "call-1" and report_a.srtcp
    assert report_a.plaintext == sr(0xA) and report_b.plaintext == sr(0xB)
    assert isinstance(report_a.packets[0], SenderReport) and report_a.packets[0].ssrc == 0xA
    assert (report_a.src, report_a.dst) == (ep(A, 4001), ep(B, 5001))
    # A's tag-1 key is no longer a candidate, and B's key never was A's
    wrong = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(1))
    assert tracker.datagram(2 * S, ep(A, 4001), ep(B, 5001), wrong.protect_rtcp(sr(0xA))) == ()
    mixed = b_send.protect_rtcp(sr(0xC))
    assert tracker.datagram(2 * S, ep(A, 4001), ep(B, 5001), mixed) == ()
    assert tracker.counts["rtcp_reported"] == 2 and tracker.counts["rtcp_auth_failed"] == 2


def test_before_the_answer_every_offered_line_is_a_candidate():
    tracker = MediaTracker()
    tracker.sip(invite(0.0, "early", sdp(A, 4000, A_LINES)))
    sender = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(1))
    (report,) = tracker.datagram(S, ep(A, 4001), ep(B, 5001), sender.protect_rtcp(sr(1)))
    assert report.call_id == "early"


def test_replays_and_forgeries_are_counted_and_never_reported():
    tracker = MediaTracker()
    sdes_call(tracker)
    sender = libsrtp("AEAD_AES_128_GCM", key_b64(2, 28))
    packet = sender.protect_rtcp(sr(0xA))
    assert len(tracker.datagram(S, ep(A, 4001), ep(B, 5001), packet)) == 1
    assert tracker.datagram(S, ep(A, 4001), ep(B, 5001), packet) == ()
    forged = packet[:-5] + bytes([packet[-5] ^ 1]) + packet[-4:]
    assert tracker.datagram(S, ep(A, 4001), ep(B, 5001), forged) == ()
    assert tracker.datagram(S, ep(A, 4001), ep(B, 5001), packet[:20]) == ()
    assert tracker.counts["rtcp_replay"] == 1
    assert tracker.counts["rtcp_auth_failed"] == 1
    assert tracker.counts["rtcp_malformed"] == 1


def test_rtcp_of_no_call_and_srtp_without_keys():
    tracker = MediaTracker()
    assert tracker.datagram(S, ep("192.0.2.9", 1), ep("192.0.2.8", 2), sr(1)) == ()
    tracker.sip(invite(0.0, "nokeys", sdp(A, 4000)))  # RTP/SAVP, keys by other means
    assert tracker.datagram(S, ep(A, 4001), ep(B, 1), sr(1)) == ()
    assert tracker.counts["rtcp_no_call"] == 1 and tracker.counts["rtcp_no_keys"] == 1
    # SIP captured before them may still be undecrypted: the same wait instead
    assert tracker.datagram(S, ep("192.0.2.9", 1), ep("192.0.2.8", 2), sr(1), False) == ()
    assert tracker.datagram(S + 1, ep(A, 4001), ep(B, 1), sr(1), False) == ()
    assert tracker.counts["rtcp_no_call"] == 1 and tracker.counts["rtcp_no_keys"] == 1
    assert tracker.oldest_waiting_ts() == S
    tracker.settle(S + 2)  # every SIP message captured before them has been seen
    assert tracker.counts["rtcp_no_call"] == 2 and tracker.counts["rtcp_no_keys"] == 2
    assert tracker.oldest_waiting_ts() is None


def test_plain_rtcp_of_an_avp_call_is_reported_unauthenticated():
    tracker = MediaTracker()
    tracker.sip(invite(0.0, "plain", sdp(A, 4000, proto="RTP/AVP")))
    tracker.sip(ok(0.1, "plain", sdp(B, 5000, proto="RTP/AVP")))
    (report,) = tracker.datagram(S, ep(B, 5001), ep(A, 4001), sr(7))
    assert report.call_id == "plain" and not report.srtcp
    assert tracker.datagram(S, ep(B, 5001), ep(A, 4001), sr(7)[:-3]) == ()
    assert tracker.counts["rtcp_malformed"] == 1


def test_rtcp_mux_and_a_rtcp_attribute():
    tracker = MediaTracker()
    key = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(9)}"
    tracker.sip(invite(0.0, "mux", sdp(A, 4000, [key], extra="a=rtcp-mux")))
    tracker.sip(ok(0.1, "mux", sdp(B, 5000, [key], extra=f"a=rtcp:6000 IN IP4 {A}")))
    sender = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(9))
    (on_rtp_port,) = tracker.datagram(S, ep(A, 4000), ep(B, 5000), sender.protect_rtcp(sr(1)))
    assert on_rtp_port.call_id == "mux"
    # the callee's RTCP lives at A:6000 (a=rtcp with an address), sent from there
    (attr,) = tracker.datagram(S, ep(A, 6000), ep(A, 4000), sender.protect_rtcp(sr(2)))
    assert attr.call_id == "mux"
    # RTP on the muxed port counts as RTP, not RTCP
    tracker.datagram(S, ep(A, 4000), ep(B, 5000), rtp(1, 0, 0xAA))
    tracker.datagram(S + 20_000_000, ep(A, 4000), ep(B, 5000), rtp(2, 160, 0xAA))
    assert tracker.counts["rtp_streams"] == 1


def test_nat_fallback_and_lookup_by_destination():
    tracker = MediaTracker()
    line = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(4)}"
    # the caller is behind NAT: its SDP says 10.0.0.5, its SIP comes from 198.51.100.1
    tracker.sip(invite(0.0, "nat", sdp("10.0.0.5", 4000, [line])))
    tracker.sip(ok(0.1, "nat", sdp(B, 5000, [line.replace(key_b64(4), key_b64(5))])))
    caller = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(4))
    callee = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(5))
    (nat,) = tracker.datagram(S, ep(A, 4001), ep(B, 5001), caller.protect_rtcp(sr(1)))
    assert nat.call_id == "nat"
    # the callee sends from a port in no SDP: found by destination, its peer's keys used
    (by_dst,) = tracker.datagram(S, ep(B, 40000), ep("10.0.0.5", 4001), callee.protect_rtcp(sr(2)))
    assert by_dst.call_id == "nat"
    without = MediaTracker(nat_fallback=False)
    without.sip(invite(0.0, "nat", sdp("10.0.0.5", 4000, [line])))
    assert without.datagram(S, ep(A, 4001), ep(B, 5001), caller.protect_rtcp(sr(3))) == ()


def test_a_reinvite_that_rekeys_takes_over_from_the_first_packet_it_authenticates():
    tracker = MediaTracker()
    old_line = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(20)}"
    new_line = f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key_b64(21, 46)}"
    tracker.sip(invite(0.0, "rekey", sdp(A, 4000, [old_line])))
    tracker.sip(ok(0.1, "rekey", sdp(B, 5000, [old_line.replace(key_b64(20), key_b64(22))])))
    old = sdes_context(old_line)
    new = sdes_context(new_line)
    send = lambda ctx, index: tracker.datagram(  # noqa: E731
        3 * S, ep(A, 4001), ep(B, 5001), ctx.protect_rtcp(sr(1), index)
    )
    assert len(send(old, 1)) == 1
    tracker.sip(invite(2.0, "rekey", sdp(A, 4000, [new_line]), cseq="2 INVITE", to_tag="callee"))
    assert len(send(old, 2)) == 1  # the old key is still good while the answer is on its way
    tracker.sip(ok(2.1, "rekey", sdp(B, 5000, [old_line]), cseq="2 INVITE"))
    assert len(send(old, 3)) == 1  # ... and until a packet proves the new one
    assert len(send(new, 1)) == 1  # the new key's SRTCP index starts again
    assert send(old, 4) == ()  # the old key is gone
    assert len(send(new, 2)) == 1
    assert tracker.counts["rtcp_reported"] == 5 and tracker.counts["rtcp_auth_failed"] == 1


def test_a_reinvite_with_the_same_keys_keeps_the_replay_state():
    tracker = MediaTracker()
    sdes_call(tracker)
    sender = libsrtp("AEAD_AES_128_GCM", key_b64(2, 28))
    packet = sender.protect_rtcp(sr(0xA))
    assert len(tracker.datagram(S, ep(A, 4001), ep(B, 5001), packet)) == 1
    tracker.sip(invite(2.0, "call-1", sdp(A, 4000, A_LINES), cseq="2 INVITE", to_tag="callee"))
    tracker.sip(ok(2.1, "call-1", sdp(B, 5000, [B_LINE]), cseq="2 INVITE"))
    assert tracker.datagram(3 * S, ep(A, 4001), ep(B, 5001), packet) == ()
    assert tracker.counts["rtcp_replay"] == 1


def test_mki_and_unencrypted_srtcp_from_sdes():
    tracker = MediaTracker()
    a_line = f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key_b64(30)}|2^31|1:4"
    b_line = f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key_b64(31)}|2^31|7:4 UNENCRYPTED_SRTCP"
    tracker.sip(invite(0.0, "opts", sdp(A, 4000, [a_line])))
    tracker.sip(ok(0.1, "opts", sdp(B, 5000, [b_line])))
    a_packet = sdes_context(a_line).protect_rtcp(sr(1), 1, mki=1)
    b_packet = sdes_context(b_line).protect_rtcp(sr(2), 1, mki=7)
    assert sr(2) in b_packet  # in clear
    (a_report,) = tracker.datagram(S, ep(A, 4001), ep(B, 5001), a_packet)
    (b_report,) = tracker.datagram(S, ep(B, 5001), ep(A, 4001), b_packet)
    assert a_report.plaintext == sr(1) and b_report.plaintext == sr(2)
    bad_mki = a_packet[:-14] + b"\x00\x00\x00\x02" + a_packet[-10:]
    assert tracker.datagram(S, ep(A, 4001), ep(B, 5001), bad_mki) == ()
    assert tracker.counts["rtcp_unknown_mki"] == 1


def test_two_calls_at_once_are_told_apart():
    tracker = MediaTracker()
    sdes_call(tracker, "one", 4000, 5000)
    sdes_call(tracker, "two", 4100, 5100)
    # same keys in both calls (the SDP is the same but for the ports): ports tell them apart
    sender = libsrtp("AEAD_AES_128_GCM", key_b64(3, 28))
    (first,) = tracker.datagram(S, ep(B, 5101), ep(A, 4101), sender.protect_rtcp(sr(1)))
    (second,) = tracker.datagram(S, ep(B, 5001), ep(A, 4001), sender.protect_rtcp(sr(2)))
    assert (first.call_id, second.call_id) == ("two", "one")
    assert sorted(tracker.call_ids()) == ["one", "two"]


def test_late_offer_in_the_200_and_answer_in_the_ack():
    tracker = MediaTracker()
    key = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(40)}"
    answer = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(41)}"
    tracker.sip(invite(0.0, "late", ""))
    tracker.sip(ok(0.1, "late", sdp(B, 5000, [key])))
    tracker.sip(
        sip(0.2, "ACK sip:bob@b SIP/2.0", "late", from_client=True, body=sdp(A, 4000, [answer]),
            cseq="1 ACK")
    )  # fmt: skip
    sender = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(41))
    (report,) = tracker.datagram(S, ep(A, 4001), ep(B, 5001), sender.protect_rtcp(sr(1)))
    assert report.call_id == "late"


def test_update_and_early_media_carry_offers_and_answers():
    tracker = MediaTracker()
    tracker.sip(invite(0.0, "upd", sdp(A, 4000, A_LINES)))
    early = sip(0.1, "SIP/2.0 183 Session Progress", "upd", from_client=False,
                body=sdp(B, 5000, [B_LINE]))  # fmt: skip
    tracker.sip(early)
    new_b = f"a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(50)}"
    update = sip(1.0, "UPDATE sip:alice@a SIP/2.0", "upd", from_client=False,
                 body=sdp(B, 5200, [new_b]), cseq="1 UPDATE", from_tag="callee",
                 to_tag="caller")  # fmt: skip
    tracker.sip(update)
    answer = sip(1.1, "SIP/2.0 200 OK", "upd", from_client=True,
                 body=sdp(A, 4000, [A_LINES[0].replace("crypto:1", "crypto:5")]),
                 cseq="1 UPDATE", from_tag="callee", to_tag="caller")  # fmt: skip
    tracker.sip(answer)
    sender = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(50))
    (report,) = tracker.datagram(2 * S, ep(B, 5201), ep(A, 4001), sender.protect_rtcp(sr(1)))
    assert report.call_id == "upd"


def test_rtp_statistics_from_headers_alone():
    tracker = MediaTracker()
    sdes_call(tracker)
    ssrc = 0xBEEF
    # 20 ms packets at 8 kHz; 3 and 7 lost; packet 10 arrives 5 ms late
    for seq in [1, 2, 4, 5, 6, 8, 9, 10, 11, 12]:
        arrival = int(10 * S + seq * 20_000_000 + (5_000_000 if seq == 10 else 0))
        assert tracker.datagram(arrival, ep(A, 4000), ep(B, 5000), rtp(seq, seq * 160, ssrc)) == ()
    (report,) = tracker.stream_reports("call-1")
    stats = report.stats
    # counted from the first packet (RFC 3550 A.1's probation packet included)
    assert (stats.packets, stats.expected, stats.lost, stats.gaps) == (10, 12, 2, 2)
    assert stats.clock_rate == 8000
    # A.8 by hand: transit changes by +40 units at 10 and -40 at 11, zero elsewhere
    jitter = 0.0
    for d in [0, 0, 0, 0, 0, 0, 0, 40, 40, 0]:
        jitter += (d - jitter) / 16
    assert stats.jitter == pytest.approx(jitter)
    assert stats.jitter_ms == pytest.approx(jitter / 8)
    # opus (PT 96) runs on a 48 kHz clock, from the rtpmap
    tracker.datagram(11 * S, ep(B, 5000), ep(A, 4000), rtp(1, 0, 0xF00D, pt=96))
    tracker.datagram(11 * S + 20_000_000, ep(B, 5000), ep(A, 4000), rtp(2, 960, 0xF00D, pt=96))
    rates = {r.stats.ssrc: r.stats.clock_rate for r in tracker.stream_reports("call-1")}
    assert rates == {ssrc: 8000, 0xF00D: 48000}


def test_after_the_first_packet_rtp_costs_one_lookup(monkeypatch):
    tracker = MediaTracker()
    sdes_call(tracker)
    tracker.datagram(S, ep(A, 4000), ep(B, 5000), rtp(1, 0, 5))

    def no_lookup(*args: object) -> None:
        raise AssertionError("the endpoint tables were read again")

    monkeypatch.setattr(tracker, "_lookup", no_lookup)
    monkeypatch.setattr(tracker, "_new_stream", no_lookup)
    for seq in range(2, 500):
        tracker.datagram(S + seq * 20_000_000, ep(A, 4000), ep(B, 5000), rtp(seq, seq * 160, 5))
    assert tracker.stream_reports("call-1")[0].stats.packets == 499


def test_bye_ends_the_media_after_the_grace_with_the_rtp_statistics():
    tracker = MediaTracker(bye_grace_ns=2 * S)
    sdes_call(tracker)
    for seq in range(1, 6):
        tracker.datagram(S + seq * 20_000_000, ep(A, 4000), ep(B, 5000), rtp(seq, seq * 160, 9))
    bye = sip(5.0, "BYE sip:bob@b SIP/2.0", "call-1", from_client=True, cseq="2 BYE")
    assert tracker.sip(bye) == ()
    sender = libsrtp("AEAD_AES_128_GCM", key_b64(2, 28))
    (late,) = tracker.datagram(6 * S, ep(A, 4001), ep(B, 5001), sender.protect_rtcp(sr(1)))
    assert late.call_id == "call-1"  # within the grace: the last RTCP still counts
    events = tracker.datagram(7 * S + 1, ep(A, 4001), ep(B, 5001), sender.protect_rtcp(sr(1)))
    assert isinstance(events[0], MediaEnded) and events[0].reason == "bye"
    assert events[0].call_id == "call-1" and events[0].streams[0].stats.packets == 5
    assert len(events) == 1 and tracker.calls == 0 and tracker.endpoints == 0
    assert tracker.streams == 0 and tracker.counts["rtcp_no_call"] == 1


def test_idle_calls_end_and_a_failed_invite_ends_its_call():
    tracker = MediaTracker(idle_timeout_ns=60 * S)
    sdes_call(tracker, "idle")
    tracker.sip(invite(1.0, "rejected", sdp(A, 4100, A_LINES)))
    tracker.sip(sip(1.5, "SIP/2.0 486 Busy Here", "rejected", from_client=False))
    events = tracker.expire(int(1.5 * S) + calls_mod.BYE_GRACE_NS)
    assert [(e.call_id, e.reason) for e in events if isinstance(e, MediaEnded)] == [
        ("rejected", "bye")
    ]
    tracker.datagram(30 * S, ep(A, 4000), ep(B, 5000), rtp(1, 0, 1))  # media keeps it alive
    assert tracker.expire(80 * S) == []
    (ended,) = tracker.expire(91 * S)
    assert (ended.call_id, ended.reason) == ("idle", "idle")


def test_calls_endpoints_and_streams_are_bounded():
    tracker = MediaTracker(max_calls=2, max_streams_per_call=2, max_endpoints=6)
    sdes_call(tracker, "c1", 4000, 5000)
    sdes_call(tracker, "c2", 4100, 5100)
    events = tracker.sip(invite(1.0, "c3", sdp(A, 4200, A_LINES)))
    assert [(e.call_id, e.reason) for e in events] == [("c1", "evicted")]
    assert sorted(tracker.call_ids()) == ["c2", "c3"] and tracker.counts["calls_evicted"] == 1
    assert tracker.endpoints == 4 and tracker.counts["endpoints_capped"] == 2
    for ssrc in range(5):
        tracker.datagram(2 * S, ep(A, 4100), ep(B, 5100), rtp(1, 0, ssrc))
    assert len(tracker.stream_reports("c2")) == 2 and tracker.counts["streams_capped"] == 3


def test_dtls_srtp_keys_from_the_handshake_and_the_key_log():
    """An OpenSSL DTLS 1.2 handshake (tests/data/media/dtls) on the media 5-tuple, the SRTCP
    protected by pylibsrtp with the keys OpenSSL exported: the tracker finds the same keys
    from the hellos and the key log."""
    fixture = json.loads(
        (Path(__file__).parent / "data/media/dtls/dtls12-gcm128-sha384.json").read_text()
    )
    keys = KeyStore()
    load_key_log(fixture["keylog"], keys)
    first = fixture["datagrams"][0]
    client_host, client_port = first["src"].rsplit(":", 1)
    server_host, server_port = first["dst"].rsplit(":", 1)
    client, server = ep(client_host, int(client_port)), ep(server_host, int(server_port))
    tracker = MediaTracker(keys)
    proto = "UDP/TLS/RTP/SAVPF"
    offer = sdp(client_host, int(client_port), proto=proto, extra="a=rtcp-mux\r\na=setup:actpass")
    answer = sdp(server_host, int(server_port), proto=proto, extra="a=rtcp-mux\r\na=setup:passive")
    tracker.sip(invite(0.0, "webrtc", offer))
    tracker.sip(ok(0.1, "webrtc", answer))
    # no handshake yet: no keys
    material = bytes.fromhex(fixture["keying_material"])
    suite = SUITES["AEAD_AES_128_GCM"]
    k, s = suite.key_length, suite.salt_length
    client_master = material[:k] + material[2 * k : 2 * k + s]
    server_master = material[k : 2 * k] + material[2 * k + s :]
    from_client = libsrtp("AEAD_AES_128_GCM", base64.b64encode(client_master).decode())
    from_server = libsrtp("AEAD_AES_128_GCM", base64.b64encode(server_master).decode())
    assert tracker.datagram(S, client, server, from_client.protect_rtcp(sr(1))) == ()
    assert tracker.counts["rtcp_no_keys"] == 1
    for datagram in fixture["datagrams"]:
        host, port = datagram["src"].rsplit(":", 1)
        dst_host, dst_port = datagram["dst"].rsplit(":", 1)
        tracker.datagram(
            S, ep(host, int(port)), ep(dst_host, int(dst_port)), bytes.fromhex(datagram["hex"])
        )
    assert tracker.counts["dtls_handshakes"] == 1
    (report,) = tracker.datagram(2 * S, client, server, from_client.protect_rtcp(sr(2)))
    assert report.call_id == "webrtc" and report.plaintext == sr(2)
    (report,) = tracker.datagram(2 * S, server, client, from_server.protect_rtcp(sr(3)))
    assert report.plaintext == sr(3)
    # the server's key does not pass for the client's
    assert tracker.datagram(2 * S, client, server, from_server.protect_rtcp(sr(4))) == ()


def test_hostile_sip_and_datagrams_never_raise():
    rng = random.Random(3)
    tracker = MediaTracker(max_calls=50)
    sdes_call(tracker)
    sender = libsrtp("AEAD_AES_128_GCM", key_b64(2, 28))
    good = [sender.protect_rtcp(sr(5)), rtp(1, 0, 1), sr(1), b"\x16\xfe\xfd" + bytes(20)]
    bodies = [sdp(A, 4000, A_LINES), sdp(B, 5000, [B_LINE], extra="a=rtcp-mux")]
    for n in range(3000):
        data = bytearray(rng.choice(good))
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        ports = rng.choice([(4000, 5000), (4001, 5001), (9, 9)])
        tracker.datagram(S + n, ep(A, ports[0]), ep(B, ports[1]), bytes(data))
        if n % 10 == 0:
            body = bytearray(rng.choice(bodies).encode())
            for _ in range(rng.randrange(6)):
                body[rng.randrange(len(body))] = rng.randrange(32, 127)
            first = rng.choice(["INVITE sip:x SIP/2.0", "SIP/2.0 200 OK", "BYE sip:x SIP/2.0"])
            message = sip(1 + n / 1000, first, f"h{n % 7}", from_client=bool(n % 2),
                          body=body.decode())  # fmt: skip
            tracker.sip(message)
    assert tracker.calls <= 50


def test_helpers():
    assert tag_of('"Bob" <sip:bob@b;tag=inside>;tag=abc;x=1') == "abc"
    assert tag_of("sip:bob@b;TAG=z") == "z" and tag_of("<sip:bob@b>") == ""
    assert packed_address("192.0.2.1") == b"\xc0\x00\x02\x01"
    assert packed_address("::ffff:192.0.2.1") == b"\xc0\x00\x02\x01"
    assert packed_address("0.0.0.0") is None and packed_address("host.example") is None
    assert len(packed_address("2001:db8::1") or b"") == 16


def test_keyring_prefers_proven_keys_and_bounds_candidates():
    ring = keyring_mod.Keyring()
    contexts = [
        SrtpContext(SUITES["AES_CM_128_HMAC_SHA1_80"], MasterKey(bytes([i]) * 16, bytes(14)))
        for i in range(20)
    ]
    ring.offer(contexts)
    assert len(ring.pending) == keyring_mod.MAX_PENDING and not ring.current
    packet = contexts[3].protect_rtcp(sr(1), 1)
    assert parse_compound(ring.unprotect_rtcp(packet))[0].ssrc == 1  # type: ignore[union-attr]
    assert ring.current == [contexts[3]] and ring.pending == []
    ring.offer([contexts[3]])  # offered again: the same context stays, nothing pending
    assert ring.current == [contexts[3]] and ring.pending == []
    assert isinstance(parse_compound(sr(1))[0], SenderReport)
    assert not isinstance(parse_compound(sr(1))[0], ReceiverReport)


def test_early_srtcp_waits_for_the_answer_that_carries_its_key():
    """A callee that sends before the capture shows its 200 OK (baresip does): its SRTCP is
    held, then decrypted with the answer's key, with its own capture time."""
    tracker = MediaTracker()
    tracker.sip(invite(0.0, "early-media", sdp(A, 4000, A_LINES)))
    callee = libsrtp("AEAD_AES_128_GCM", key_b64(3, 28))
    early = callee.protect_rtcp(sr(0xB))
    assert tracker.datagram(int(0.5 * S), ep(B, 5001), ep(A, 4001), early) == ()
    assert tracker.counts["rtcp_held"] == 1
    # its RTP is followed already, with the clock rates of the offer (what A receives)
    tracker.datagram(int(0.5 * S), ep(B, 5000), ep(A, 4000), rtp(1, 0, 0xB, pt=96))
    (events,) = [tracker.sip(ok(0.6, "early-media", sdp(B, 5000, [B_LINE])))]
    (report,) = events
    assert isinstance(report, RtcpReport) and report.plaintext == sr(0xB)
    assert report.ts_ns == int(0.5 * S) and report.call_id == "early-media"
    assert tracker.stream_reports("early-media")[0].stats.clock_rate == 48000
    # held too long: dropped and counted, never reported
    tracker.sip(invite(1.0, "slow", sdp(A, 4100, A_LINES)))
    tracker.datagram(int(1.1 * S), ep(B, 5101), ep(A, 4101), callee.protect_rtcp(sr(0xC)))
    assert tracker.sip(ok(9.0, "slow", sdp(B, 5100, [B_LINE]))) == ()
    assert tracker.counts["rtcp_held_expired"] == 1


def test_a_repeated_answer_is_no_offer_and_a_later_reinvite_is_one():
    tracker = MediaTracker()
    tracker.sip(invite(0.0, "repeat", sdp(A, 4000, A_LINES)))
    answer = sdp(B, 5000, [B_LINE])
    tracker.sip(sip(0.1, "SIP/2.0 183 Session Progress", "repeat", from_client=False, body=answer))
    tracker.sip(ok(0.2, "repeat", answer))  # the same o= line: not an offer
    new_a = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(60)}"
    tracker.sip(invite(1.0, "repeat", sdp(A, 4000, [new_a]).replace("o=- 1 1", "o=- 1 2"),
                       cseq="2 INVITE", to_tag="callee"))  # fmt: skip
    new_b = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64(61)}"
    tracker.sip(ok(1.1, "repeat", sdp(B, 5000, [new_b]).replace("o=- 1 1", "o=- 1 2"),
                   cseq="2 INVITE"))  # fmt: skip
    call = tracker._calls["repeat"]
    assert call.offerer is None and call.peers == {"caller": "callee", "callee": "caller"}
    # each side's new key is the one candidate left (the answer chose tag 1 of the offer)
    assert [len(call.sides[t].rings[0].pending) for t in ("caller", "callee")] == [1, 1]
    caller = libsrtp("AES_CM_128_HMAC_SHA1_80", key_b64(60))
    (report,) = tracker.datagram(2 * S, ep(A, 4001), ep(B, 5001), caller.protect_rtcp(sr(1)))
    assert report.call_id == "repeat"


def test_decrypted_rtp_that_waited_keeps_the_destination_of_each_packet():
    """--media-pcap: RTP that came before its call's SDP (a provisional stream) or before its
    sender's (pending keys) is written once they come, each packet with the destination it
    was sent to, not that of its stream's first packet (found by the media fuzz target: one
    datagram's port moved, every packet of its stream was written to that port)."""
    from captagent_tls.media.reports import DecryptedRtp

    tracker = MediaTracker(decrypt_rtp=True)
    # before any SDP: the first packet goes to 5002, the rest to 5000
    sent = [(ep(B, 5002 if seq == 1 else 5000), rtp(seq, seq * 160, 0xA)) for seq in (1, 2, 3)]
    for seq, (dst, packet) in enumerate(sent):
        assert tracker.datagram(S + seq, ep(A, 4000), dst, packet) == ()
    events = tracker.sip(invite(2.0, "plain", sdp(A, 4000, proto="RTP/AVP")))
    events += tracker.sip(ok(2.1, "plain", sdp(B, 5000, proto="RTP/AVP")))
    assert [(e.dst, e.packet) for e in events if isinstance(e, DecryptedRtp)] == sent
    # the offer is known, not the answer: the callee's packets wait for its SDP
    tracker.sip(invite(3.0, "late", sdp(A, 4100, proto="RTP/AVP")))
    sent = [(ep(A, 4102 if seq == 1 else 4100), rtp(seq, seq * 160, 0xB)) for seq in (1, 2)]
    for seq, (dst, packet) in enumerate(sent):
        assert tracker.datagram(4 * S + seq, ep(B, 5100), dst, packet) == ()
    events = tracker.sip(ok(4.5, "late", sdp(B, 5100, proto="RTP/AVP")))
    assert [(e.dst, e.packet) for e in events if isinstance(e, DecryptedRtp)] == sent
