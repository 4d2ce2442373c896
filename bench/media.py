#!/usr/bin/env python3
"""Media benchmark: many concurrent SRTP calls and their SIP over TLS, media on and off.

    python -m bench.media [--calls 100] [--seconds 30] [--runs 3] [--bulk]

The capture is made here, in-process: one TLS 1.2 connection (AES-128-GCM, its secret as a
key-log line) carries every call's SIP (INVITE with an SDES offer, 200 OK with the answer,
ACK, then BYE and 200); each call's two sides send 50 RTP packets a second (G.711, 20 ms)
protected with AES_CM_128_HMAC_SHA1_80 by libsrtp (pylibsrtp), and an SRTCP sender report
every 5 s.  100 calls are 10,000 RTP packets a second of capture time.

Measured, alternating, best of ``--runs``, each a fresh process: ``--json`` with media on and
with ``--no-media``.  Media on must report every RTCP packet sent (checked); "keeps up" means
the run takes less than the capture lasts.  With ``--bulk``, the same comparison on the bulk
SIP capture (bench/out/bulk.pcap, no media): what following calls' SDP costs SIP throughput.
The target from the issue: SIP throughput with media on within 20 % of media off.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

from bench import revision, stats
from bench.paths import OUT
from bench.processes import loadavg, measure

RTP_PPS = 50  # per direction and call: 20 ms packets
RTCP_EVERY_S = 5.0
SIP_PORT = 5061


def _sdp(address: str, port: int, key: bytes) -> str:
    import base64

    inline = base64.b64encode(key).decode()
    return (
        f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\n"
    )


def _sip(start: str, call: int, cseq: str, body: str = "", to_tag: str = "") -> bytes:
    headers = [
        start,
        f"Via: SIP/2.0/TLS 10.0.0.1:40000;branch=z9hG4bK{call:08d}{cseq.split()[0]}",
        f"From: <sips:a{call}@example.com>;tag=a{call}",
        f"To: <sips:b{call}@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: bench-{call}@example.com",
        f"CSeq: {cseq}",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def make_capture(calls: int, seconds: float, pcap: Path, keylog: Path) -> dict[str, Any]:
    """Write the capture and its key log; what was sent (counts)."""
    import os
    import random

    import pylibsrtp

    from fuzz.capmodel import RawPacket, write_pcap
    from tests.support.tlswriter import (
        APPLICATION_DATA,
        CHANGE_CIPHER_SPEC,
        LINKTYPE_ETHERNET,
        TcpConversation,
        Tls12Session,
        record,
    )

    rng = random.Random(20)
    t0 = 1_800_000_000_000_000_000
    events: list[tuple[int, int, bytes]] = []  # (time, order, frame)
    order = 0

    def udp(ts: int, src: tuple[bytes, int], dst: tuple[bytes, int], payload: bytes) -> None:
        nonlocal order
        length = 8 + len(payload)
        head = struct.pack("!HHHH", src[1], dst[1], length, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, 17, 0, src[0], dst[0])
        events.append((ts, order, b"\x00" * 12 + b"\x08\x00" + ip + head + payload))
        order += 1

    # the SIP connection
    tls = Tls12Session()
    conversation = TcpConversation(client_port=40000, server_port=SIP_PORT).at(t0)
    conversation.open()
    conversation.send(0, tls.client_hello())
    conversation.send(1, tls.server_flight())
    client, server = tls.writers()
    conversation.send(0, tls.client_key_exchange() + record(CHANGE_CIPHER_SPEC, b"\x01"))
    conversation.send(0, tls.finished(True, client))
    conversation.send(1, record(CHANGE_CIPHER_SPEC, b"\x01") + tls.finished(False, server))
    keylog.write_text(tls.key_log_line())

    sip_at: list[tuple[int, int, bytes]] = []  # (time, direction, message)
    sessions = []
    span = int(seconds * 1e9)
    for call in range(calls):  # all of them at once for most of the capture
        start = t0 + 10_000_000 + call * (span // (20 * calls))
        end = start + span * 9 // 10 - rng.randrange(span // 20)
        a = (bytes((10, 1, call >> 8, call & 0xFF)), 20000 + 2 * (call % 1000))
        b = (bytes((10, 2, call >> 8, call & 0xFF)), 30000 + 2 * (call % 1000))
        keys = (os.urandom(30), os.urandom(30))
        offer = _sdp(f"10.1.{call >> 8}.{call & 0xFF}", a[1], keys[0])
        answer = _sdp(f"10.2.{call >> 8}.{call & 0xFF}", b[1], keys[1])
        uri = f"sips:b{call}@example.com"
        sip_at += [
            (start, 0, _sip(f"INVITE {uri} SIP/2.0", call, "1 INVITE", offer)),
            (start + 1_000_000, 1, _sip("SIP/2.0 200 OK", call, "1 INVITE", answer, "b")),
            (start + 2_000_000, 0, _sip(f"ACK {uri} SIP/2.0", call, "1 ACK", "", "b")),
            (end, 0, _sip(f"BYE {uri} SIP/2.0", call, "2 BYE", "", "b")),
            (end + 1_000_000, 1, _sip("SIP/2.0 200 OK", call, "2 BYE", "", "b")),
        ]
        sessions.append((call, start + 3_000_000, end, a, b, keys))
    sip_at.sort(key=lambda item: item[0])
    for ts, direction, message in sip_at:
        conversation.at(ts)
        writer = client if direction == 0 else server
        conversation.send(direction, writer.seal(APPLICATION_DATA, message))
    tcp_frames = [(f.ts_ns, -1, bytes(f.data)) for f in conversation.frames]

    rtp_sent = rtcp_sent = 0
    for _call, begin, end, a, b, keys in sessions:
        for side, (src, dst, key) in enumerate(((a, b, keys[0]), (b, a, keys[1]))):
            policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
            session = pylibsrtp.Session(policy)
            ssrc, seq, rtp_ts = rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32)
            ts, packets, next_rtcp = begin + side * 7_000_000, 0, begin + int(RTCP_EVERY_S * 1e9)
            while ts < end:
                payload = bytes(160)
                header = struct.pack("!BBHII", 0x80, 0, seq, rtp_ts, ssrc)
                udp(ts, src, dst, session.protect(header + payload))
                packets += 1
                rtp_sent += 1
                seq, rtp_ts = (seq + 1) & 0xFFFF, (rtp_ts + 160) & 0xFFFFFFFF
                if ts >= next_rtcp:
                    sr = struct.pack(
                        "!BBHIIIIII", 0x80, 200, 6, ssrc, 0, 0, rtp_ts, packets, packets * 160
                    )
                    rtcp_port = (src[0], src[1] + 1)
                    udp(ts, rtcp_port, (dst[0], dst[1] + 1), session.protect_rtcp(sr))
                    rtcp_sent += 1
                    next_rtcp += int(RTCP_EVERY_S * 1e9)
                ts += 1_000_000_000 // RTP_PPS
    events += tcp_frames
    events.sort(key=lambda item: (item[0], item[1]))
    pcap.write_bytes(
        write_pcap(LINKTYPE_ETHERNET, [RawPacket(ts, frame) for ts, _, frame in events])
    )
    return {
        "calls": calls,
        "seconds": seconds,
        "sip_messages": len(sip_at),
        "rtp_packets": rtp_sent,
        "rtcp_packets": rtcp_sent,
        "frames": len(events),
        "capture_seconds": (events[-1][0] - events[0][0]) / 1e9,
    }


def timed(args: list[str], runs: int, check: Any) -> dict[str, Any]:
    best = None
    for _ in range(runs):
        r = measure([*revision.agent_cmd(), *args], env=revision.AGENT_ENV)
        stats.check_ok(r, " ".join(args))
        check(r)
        if best is None or r.wall_s < best.wall_s:
            best = r
    assert best is not None
    return {"wall_s": best.wall_s, "cpu_s": best.user_s + best.sys_s, "rss_mb": best.maxrss_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk", action="store_true", help="also bench/out/bulk.pcap")
    parser.add_argument("--out", type=Path, default=OUT)
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    pcap, keylog = options.out / "media.pcap", options.out / "media.keys"
    sent = make_capture(options.calls, options.seconds, pcap, keylog)
    print(
        f"capture: {sent['calls']} calls, {sent['rtp_packets']} RTP and {sent['rtcp_packets']} "
        f"SRTCP packets, {sent['sip_messages']} SIP messages over "
        f"{sent['capture_seconds']:.1f} s ({sent['rtp_packets'] / sent['capture_seconds']:,.0f} "
        f"RTP packets/s); load {loadavg()}",
        flush=True,
    )
    reading = ["-r", str(pcap), "--keylog", str(keylog), "--json", "-v"]

    def media_checked(r: Any) -> None:
        if stats.sip_messages(r.stderr) != sent["sip_messages"]:
            raise stats.WrongOutput(f"SIP messages: {r.stderr[-2000:]}")
        reported = f"RTCP {sent['rtcp_packets']} reported"
        if reported not in r.stderr:
            raise stats.WrongOutput(f"want '{reported}':\n{r.stderr[-2000:]}")

    def sip_checked(r: Any) -> None:
        if stats.sip_messages(r.stderr) != sent["sip_messages"]:
            raise stats.WrongOutput(f"SIP messages: {r.stderr[-2000:]}")

    results: dict[str, Any] = {"capture": sent, "load": loadavg()}
    on = off = None
    for _ in range(options.runs):  # alternating, best of each
        run_on = timed(reading, 1, media_checked)
        run_off = timed([*reading, "--no-media"], 1, sip_checked)
        on = run_on if on is None or run_on["wall_s"] < on["wall_s"] else on
        off = run_off if off is None or run_off["wall_s"] < off["wall_s"] else off
    assert on is not None and off is not None
    results["media_capture"] = {"media_on": on, "media_off": off}
    packets = sent["frames"]
    print(
        f"media on : {on['wall_s']:.2f} s ({on['cpu_s']:.2f} CPU-s, {packets / on['wall_s']:,.0f} "
        f"packets/s, {on['rss_mb']:.0f} MB); keeps up: "
        f"{'yes' if on['wall_s'] < sent['capture_seconds'] else 'NO'} (capture lasts "
        f"{sent['capture_seconds']:.1f} s)"
    )
    print(f"media off: {off['wall_s']:.2f} s ({off['cpu_s']:.2f} CPU-s)")
    if options.bulk:
        bulk = options.out / "bulk.pcap"
        truth = json.loads((options.out / "bulk.json").read_text())
        want = len(truth["messages"])

        def bulk_checked(r: Any) -> None:
            if stats.sip_messages(r.stderr) != want:
                raise stats.WrongOutput(f"bulk: {r.stderr[-2000:]}")

        bulk_on = bulk_off = None
        for _ in range(options.runs):
            a = timed(
                revision.reading(bulk, "--json")[len(revision.agent_cmd()) :], 1, bulk_checked
            )
            b = timed(
                revision.reading(bulk, "--json", "--no-media")[len(revision.agent_cmd()) :],
                1,
                bulk_checked,
            )
            bulk_on = a if bulk_on is None or a["wall_s"] < bulk_on["wall_s"] else bulk_on
            bulk_off = b if bulk_off is None or b["wall_s"] < bulk_off["wall_s"] else bulk_off
        assert bulk_on is not None and bulk_off is not None
        ratio = bulk_off["wall_s"] / bulk_on["wall_s"]
        results["bulk"] = {"media_on": bulk_on, "media_off": bulk_off, "throughput_ratio": ratio}
        print(
            f"bulk SIP ({want} messages): media on {bulk_on['wall_s']:.2f} s, off "
            f"{bulk_off['wall_s']:.2f} s: SIP throughput with media on is {ratio:.0%} of off "
            f"(target >= 80 %: {'met' if ratio >= 0.8 else 'NOT met'})"
        )
    (options.out / "results-media.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
