"""MediaTracker on the media fixture captures (tests/fixtures/media, made by
tests/fixtures/make_media_captures.py): real SIP over TLS, decrypted by the pipeline, and
real UDP media protected by libsrtp2, OpenSSL's DTLS-SRTP or baresip.  The RTCP reported must
be exactly the ground truth's: every compound of a call, with its plaintext and Call-ID, and
nothing that the ground truth marks as not belonging to a call (stray keys, RTCP baresip
sends unprotected inside an SRTP call)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from captagent_tls.media.calls import MediaEnded, MediaTracker, RtcpReport
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.packet import Datagram, decode

MEDIA = Path(__file__).parent / "fixtures" / "media"
SCENARIOS = sorted(
    p for p in MEDIA.glob("*.json") if p.with_suffix(".pcap").exists() and "example" not in p.stem
)


def _endpoint(text: str) -> tuple[bytes, int]:
    host, port = text.rsplit(":", 1)
    return ipaddress.ip_address(host.strip("[]")).packed, int(port)


@pytest.mark.skipif(not SCENARIOS, reason="no media fixtures in tests/fixtures/media")
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_reports_are_the_ground_truth(path):
    inprocess = pytest.importorskip("tests.support.inprocess")
    truth = json.loads(path.read_text())
    tls = truth["tls"]
    keys = inprocess.key_store(
        rsa_keys=[MEDIA / tls["key"]] if tls.get("key") else [],
        keylog=MEDIA / tls["keylog"] if tls.get("keylog") else None,
    )
    frames = inprocess.read_frames(path.with_suffix(".pcap"))
    collected, _ = inprocess.run_frames(frames, keys)
    sip = [m for m in collected.messages if m.is_sip]
    assert sip, "the pipeline decrypted no SIP"
    events: list[tuple[int, int, object]] = [(m.ts_ns, 0, m) for m in sip]
    for frame in frames:
        packet = decode(frame.linktype, frame.data)
        if isinstance(packet, Datagram):
            events.append((frame.ts_ns, 1, packet))
    events.sort(key=lambda e: (e[0], e[1]))
    tracker = MediaTracker(keys)
    reports: list[RtcpReport] = []
    ended: list[MediaEnded] = []
    for ts_ns, kind, item in events:
        if kind == 0:
            out = tracker.sip(item)  # type: ignore[arg-type]
        else:
            assert isinstance(item, Datagram)
            out = tracker.datagram(
                ts_ns, (item.src, item.sport), (item.dst, item.dport), bytes(item.payload)
            )
        for event in out:
            (reports if isinstance(event, RtcpReport) else ended).append(event)  # type: ignore[arg-type]
    expected = sorted(
        (r["src"], r["dst"], r["call_id"], r["plaintext"])
        for r in truth["rtcp"]
        if r["call_id"] is not None and r.get("authenticated", True)
    )
    got = sorted(
        (format_endpoint(r.src), format_endpoint(r.dst), r.call_id, r.plaintext.hex())
        for r in reports
    )
    assert got == expected, tracker.counts
    # every RTP stream of the ground truth was followed, with its packets counted (the ground
    # truth lists a stream once per key: a re-keyed stream keeps its SSRC and ports)
    sent: dict[tuple[str, int, str], int] = {}
    for stream in truth.get("rtp", []):
        if stream.get("call_id") is not None:
            key = (stream["call_id"], stream["ssrc"], stream["src"])
            sent[key] = sent.get(key, 0) + stream["packets"]
    for (call_id, ssrc, src), packets in sent.items():
        found = [
            s.stats
            for s in tracker.stream_reports(call_id)
            + [s for e in ended if e.call_id == call_id for s in e.streams]
            if s.stats.ssrc == ssrc and s.src == _endpoint(src)
        ]
        assert found, f"RTP stream {ssrc:08x} from {src} not followed"
        assert max(s.packets for s in found) == packets  # every packet sent is counted
