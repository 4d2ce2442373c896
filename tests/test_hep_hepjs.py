"""HEPv3 output checked with a second decoder, the npm package hep-js.

The product reads a capture, decrypts it with the server's RSA key and sends each SIP
message to a UDP collector as HEPv3 (``--hep 127.0.0.1:PORT``). hep-js decodes what
arrived, and every field is compared with the capture's ground truth (the plaintext
that was sent). tests/support/hep.py's chunk walker adds what hep-js cannot see: chunk
order and presence.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cli import key_args, run
from tests.support.groundtruth import GroundTruth, load_groundtruth, pcap_time_range, scenario_files
from tests.support.hep import (
    CHUNK_AUTH_KEY,
    CHUNK_CAPTURE_ID,
    CHUNK_DST_IP4,
    CHUNK_DST_IP6,
    CHUNK_PAYLOAD,
    CHUNK_PROTO_TYPE,
    CHUNK_SRC_IP4,
    CHUNK_SRC_IP6,
    UdpCollector,
    chunk_types,
    chunk_value,
    decode_with_hepjs,
)
from tests.support.paths import CORPUS, FIXTURE_KEYS, FIXTURES

HEP_ID = 2001
HEP_PASSWORD = "secret"
FALLBACK = ("gcm256-ems.pcap", "gcm256-ems.json")


def _is_ipv4(ip: str | None) -> bool:
    return ip is not None and ipaddress.ip_address(ip).version == 4


# Plain scenarios first: this file tests the HEP fields, not SIP framing corners.
PREFERRED = ("tls12-aes128gcm-ems", "tls12-aes256gcm-ems", "tls12-aes128gcm-noems")


def _usable(gt: GroundTruth) -> bool:
    return (
        bool(gt.keys)
        and all(k.exists() for k in gt.keys)
        and not gt.needs_keylog
        and bool(gt.messages)
        and all(c.expect_decrypt for c in gt.connections)
        and all(_is_ipv4(c.client_ip) and _is_ipv4(c.server_ip) for c in gt.connections)
    )


def pick_capture() -> tuple[Path, GroundTruth]:
    """A fixture capture with RSA keys and IPv4 addresses, else the corpus fallback."""
    found: dict[str, tuple[Path, GroundTruth]] = {}
    for cap, js in scenario_files(FIXTURES):
        try:
            gt = load_groundtruth(js)
        except (ValueError, KeyError):
            continue
        if _usable(gt):
            found[cap.stem] = (cap, gt)
    for name in PREFERRED:
        if name in found:
            return found[name]
    if found:
        return found[min(found)]
    cap, js = (CORPUS / "sip" / FALLBACK[0]), (CORPUS / "sip" / FALLBACK[1])
    if not cap.exists() or not js.exists():
        pytest.skip("no fixture capture with an RSA key yet, and the shared corpus is absent")
    return cap, load_groundtruth(js)


def expected_packets(gt: GroundTruth) -> Counter:
    """Multiset of (srcIp, srcPort, dstIp, dstPort, payload) that must arrive."""
    out: Counter = Counter()
    conns = {c.index: c for c in gt.connections}
    for m in gt.messages:
        (sip, sport), (dip, dport) = conns[m.conn].src_dst(m.direction)
        out[(sip, sport, dip, dport, m.payload.decode("utf-8", "replace"))] += 1
    return out


def _describe(items: Counter, limit: int = 4) -> list[str]:
    out = []
    for key in list(items)[:limit]:
        *addr, payload = key
        text = payload if isinstance(payload, str) else repr(payload)
        out.append(f"{addr} {len(text)} chars {text[:30]!r}...{text[-30:]!r}")
    return out


def send_hep(cap: Path, gt: GroundTruth, *extra: str) -> tuple[list[bytes], list[dict]]:
    """Run the product on ``cap`` with a HEP sink; return (raw packets, hep-js records)."""
    with UdpCollector() as col:
        proc = run(
            ["-r", cap, *key_args(gt.keys), "--hep", col.address, "--hep-id", str(HEP_ID), *extra],
            timeout=300,
        )
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
        col.wait_for(len(gt.messages), timeout=10)
        packets = col.settle(quiet=0.3)  # and catch any extra packet
    return packets, decode_with_hepjs(packets)


def check_common(cap: Path, gt: GroundTruth, packets: list[bytes], decoded: list[dict]) -> None:
    assert len(packets) == len(gt.messages), (
        f"{len(packets)} HEP packets for {len(gt.messages)} SIP messages"
    )
    errors = [d for d in decoded if "error" in d]
    assert not errors, f"hep-js rejected packets: {errors[:3]}"

    got = Counter(
        (d.get("srcIp"), d.get("srcPort"), d.get("dstIp"), d.get("dstPort"), d.get("payload"))
        for d in decoded
    )
    want = expected_packets(gt)
    assert got == want, f"unexpected: {_describe(got - want)}; missing: {_describe(want - got)}"

    first, last = pcap_time_range(cap)
    for d in decoded:
        assert d["protocolFamily"] == 2
        assert d["payloadType"] == 1
        assert d["captureId"] == HEP_ID
        assert 0 <= d["timeUseconds"] < 1_000_000
        t = d["timeSeconds"] + d["timeUseconds"] / 1e6
        assert first - 1e-6 <= t <= last + 1e-6, (
            f"HEP time {t} outside the capture [{first}, {last}]"
        )

    # Raw bytes: the payload chunk is the exact message, it comes last, and the
    # protocol type, capture id and IPv4 address chunks are there.
    truth = Counter(m.payload for m in gt.messages)
    assert Counter(chunk_value(p, CHUNK_PAYLOAD) for p in packets) == truth
    for p in packets:
        types = chunk_types(p)
        assert types[-1] == CHUNK_PAYLOAD, f"payload chunk is not last: {types}"
        assert types.count(CHUNK_PAYLOAD) == 1
        for needed in (CHUNK_PROTO_TYPE, CHUNK_CAPTURE_ID, CHUNK_SRC_IP4, CHUNK_DST_IP4):
            assert needed in types, f"chunk 0x{needed:04x} missing: {types}"


def test_hep_to_hepjs_with_password() -> None:
    cap, gt = pick_capture()
    packets, decoded = send_hep(cap, gt, "--hep-password", HEP_PASSWORD)
    check_common(cap, gt, packets, decoded)
    for d in decoded:
        assert d["protocol"] == 22, "decrypted TLS goes out with IP protocol 22 by default"
        assert d["capturePass"] == HEP_PASSWORD
    for p in packets:
        assert chunk_value(p, CHUNK_AUTH_KEY) == HEP_PASSWORD.encode()


def test_hep_ip_proto_6_without_password() -> None:
    cap, gt = pick_capture()
    packets, decoded = send_hep(cap, gt, "--hep-ip-proto", "6")
    check_common(cap, gt, packets, decoded)
    for d in decoded:
        assert d["protocol"] == 6
        assert "capturePass" not in d
    for p in packets:
        assert CHUNK_AUTH_KEY not in chunk_types(p), "auth key chunk sent without a password"


def pick_ipv6_capture() -> tuple[Path, GroundTruth]:
    candidates = [
        (FIXTURES / "ipv6.pcap", FIXTURES / "ipv6.json"),
        (CORPUS / "sip" / "ipv6-gcm.pcap", CORPUS / "sip" / "ipv6-gcm.json"),
    ]
    for cap, js in candidates:
        if cap.exists() and js.exists():
            return cap, load_groundtruth(js)
    pytest.skip("no IPv6 capture (fixture ipv6 or corpus ipv6-gcm)")


def test_hep_ipv6_addresses() -> None:
    """hep-js skips IPv6 address chunks; check them with the walker, the rest with hep-js."""
    cap, gt = pick_ipv6_capture()
    packets, decoded = send_hep(cap, gt)
    assert len(packets) == len(gt.messages)
    conns = {c.index: c for c in gt.connections}
    want: Counter = Counter()
    for m in gt.messages:
        (sip, sport), (dip, dport) = conns[m.conn].src_dst(m.direction)
        src, dst = ipaddress.IPv6Address(sip), ipaddress.IPv6Address(dip)
        want[(src, sport, dst, dport, m.payload)] += 1
    got: Counter = Counter()
    for p, d in zip(packets, decoded, strict=True):
        assert "error" not in d, d
        assert d["protocolFamily"] == 10
        assert d["captureId"] == HEP_ID
        types = chunk_types(p)
        assert CHUNK_SRC_IP6 in types and CHUNK_DST_IP6 in types, types
        assert CHUNK_SRC_IP4 not in types and CHUNK_DST_IP4 not in types, types
        assert types[-1] == CHUNK_PAYLOAD
        src = ipaddress.IPv6Address(chunk_value(p, CHUNK_SRC_IP6))
        dst = ipaddress.IPv6Address(chunk_value(p, CHUNK_DST_IP6))
        got[(src, d["srcPort"], dst, d["dstPort"], chunk_value(p, CHUNK_PAYLOAD))] += 1
    assert got == want


def test_reading_a_file_waits_for_a_slow_collector_instead_of_dropping():
    """A queue of 2 is far too small for a file read at full speed; offline, the reader waits
    for room, so the TCP collector still gets every message, in order."""
    from captagent_tls.sinks.hep import CHUNK_PAYLOAD as PAYLOAD
    from tests.support.collectors import StreamServer

    truth_file = FIXTURES / "tls12-aes128gcm-ems.json"
    server = StreamServer().start()
    try:
        proc = run(
            [
                "-r",
                str(FIXTURES / "tls12-aes128gcm-ems.pcap"),
                "-k",
                str(FIXTURE_KEYS / "server-rsa2048.key"),
                "--hep",
                server.address,
                "--hep-queue",
                "2",
                "-v",
            ]
        )
        assert proc.returncode == 0, proc.stderr
        assert "0 dropped (queue full)" in proc.stderr
        packets = server.wait_for_packets(16, timeout=5)
    finally:
        server.stop()
    truth = load_groundtruth(truth_file)
    sent = sorted(m for c in truth.connections for d in ("c2s", "s2c") for m in c.messages(d))
    assert sorted(chunk_value(p, PAYLOAD) for p in packets) == sent


@pytest.mark.parametrize("name", ["ws-plain", "wss-no-context-takeover"])
def test_hep_sip_over_websocket(name) -> None:
    """SIP over WebSocket goes out with the IP protocol of SIP over TLS (22), as Kamailio's
    siptrace sends WS and WSS; hep-js reads every message back as it was sent."""
    folder = FIXTURES.parent / "websocket"
    gt = load_groundtruth(folder / f"{name}.json")
    extra = ["--keylog", str(gt.keylog)] if gt.keylog is not None else []
    packets, decoded = send_hep(folder / f"{name}.pcap", gt, *extra)
    check_common(folder / f"{name}.pcap", gt, packets, decoded)
    assert {d["protocol"] for d in decoded} == {22}
    assert {
        d["protocol"]
        for d in send_hep(folder / f"{name}.pcap", gt, *extra, "--hep-ip-proto", "50")[1]
    } == {50}
