"""The media stage through the command line, on captures made by real peers
(tests/fixtures/media, made by tests/fixtures/make_media_captures.py): every RTCP report the
ground truth says was sent in a call comes out once, with its Call-ID and the values sent
(checked against tshark's dissection of the plaintext sent), as JSON lines and as HEP type 5
(decoded by the independent hep-js, and stored by a real Kamailio sipcapture when it is
installed); nothing from a stray stream; one process and two workers alike."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run
from tests.support.hep import UdpCollector, chunk_types, chunk_value, decode_with_hepjs

MEDIA = Path(__file__).parent / "fixtures" / "media"
SCENARIOS = sorted(
    p.stem for p in MEDIA.glob("*.json") if p.with_suffix(".pcap").exists() and "hep5" not in p.stem
)
pytestmark = pytest.mark.skipif(not SCENARIOS, reason="no media fixtures")


def truth(name: str) -> dict[str, Any]:
    return json.loads((MEDIA / f"{name}.json").read_text())


def key_args(name: str) -> list[str]:
    tls = truth(name)["tls"]
    args = ["-r", str(MEDIA / f"{name}.pcap")]
    if tls.get("key"):
        args += ["-k", str(MEDIA / tls["key"])]
    if tls.get("keylog"):
        args += ["--keylog", str(MEDIA / tls["keylog"])]
    return args


def sent_reports(name: str) -> list[tuple[str, str, str, str]]:
    """(src, dst, Call-ID, plaintext hex) of every RTCP compound sent in a call."""
    return sorted(
        (r["src"], r["dst"], r["call_id"], r["plaintext"])
        for r in truth(name)["rtcp"]
        if r["call_id"] is not None and r.get("authenticated", True)
    )


def endpoint(obj: dict[str, Any], side: str) -> str:
    host = obj[f"{side}_ip"]
    return f"[{host}]:{obj[f'{side}_port']}" if ":" in host else f"{host}:{obj[f'{side}_port']}"


def json_run(name: str, *extra: str) -> tuple[list[dict[str, Any]], str]:
    proc = run([*key_args(name), "--json", "-v", *extra], check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("name", SCENARIOS)
def test_every_rtcp_report_sent_comes_out_once_with_its_call(name, workers):
    out, stderr = json_run(name, "--workers", workers)
    rtcp = [o for o in out if o["kind"] == "rtcp"]
    got = sorted(
        (endpoint(o, "src"), endpoint(o, "dst"), o["call_id"], _plain_of(name, o)) for o in rtcp
    )
    assert got == sent_reports(name), stderr
    calls = {o["call_id"] for o in out if o["kind"] == "sip"}
    assert {o["call_id"] for o in rtcp} <= calls


def _plain_of(name: str, report: dict[str, Any]) -> str:
    """The plaintext the ground truth sent that this JSON report renders (by its time)."""
    for sent in truth(name)["rtcp"]:
        if abs(sent["ts"] - report["ts"]) < 1e-6 and sent["src"] == endpoint(report, "src"):
            return str(sent["plaintext"])
    return "not sent"


# -- the values: checked against tshark's dissection of what was sent ----------------------

TSHARK_FIELDS = [
    "rtcp.pt",
    "rtcp.senderssrc",
    "rtcp.sender.packetcount",
    "rtcp.sender.octetcount",
    "rtcp.timestamp.rtp",
    "rtcp.ssrc.identifier",
    "rtcp.ssrc.fraction",
    "rtcp.ssrc.cum_nr",
    "rtcp.ssrc.ext_high",
    "rtcp.ssrc.jitter",
    "rtcp.ssrc.lsr",
    "rtcp.ssrc.dlsr",
]


def tshark_rtcp(plaintexts: list[bytes]) -> list[dict[str, list[int]]]:
    """tshark's reading of plain RTCP compounds (each sent as a UDP datagram)."""
    from captagent_tls.sinks.media_pcap import MediaPcapSink

    with tempfile.NamedTemporaryFile(suffix=".pcap", delete=False) as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 101))
        for i, plain in enumerate(plaintexts):
            fh.write(MediaPcapSink.record(i, (bytes(4), 5005), (bytes(4), 5007), plain))
        name = fh.name
    try:
        proc = subprocess.run(
            ["tshark", "-n", "-r", name, "-d", "udp.port==5007,rtcp", "-T", "fields"]
            + [arg for field in TSHARK_FIELDS for arg in ("-e", field)]
            + ["-E", "separator=\t", "-E", "aggregator=,", "-E", "occurrence=a"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(name)
    rows = []
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        rows.append(
            {
                field: [int(v, 0) for v in value.split(",") if v]
                for field, value in zip(TSHARK_FIELDS, values, strict=False)
            }
        )
    return rows


def ours(report: dict[str, Any]) -> dict[str, list[int]]:
    """Our JSON report's values, as tshark names them (SR and RR blocks together)."""
    rtcp = report["rtcp"]
    info = rtcp.get("sender_information") or {}
    blocks = rtcp.get("report_blocks") or []
    sender = info.get("packets") is not None and rtcp["type"] == 200
    return {
        "rtcp.sender.packetcount": [info["packets"]] if sender else [],
        "rtcp.sender.octetcount": [info["octets"]] if sender else [],
        "rtcp.timestamp.rtp": [info["rtp_timestamp"]] if sender else [],
        "rtcp.ssrc.identifier": [b["source_ssrc"] for b in blocks],
        "rtcp.ssrc.fraction": [b["fraction_lost"] for b in blocks],
        "rtcp.ssrc.cum_nr": [b["packets_lost"] for b in blocks],
        "rtcp.ssrc.ext_high": [b["highest_seq_no"] for b in blocks],
        "rtcp.ssrc.jitter": [b["ia_jitter"] for b in blocks],
        "rtcp.ssrc.lsr": [b["lsr"] for b in blocks],
        "rtcp.ssrc.dlsr": [b["dlsr"] for b in blocks],
    }


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", ["sdes-aes128-80", "sdes-gcm256", "plain-rtcp", "baresip-sdes"])
def test_the_values_are_those_sent_as_tshark_reads_them(name):
    out, _ = json_run(name)
    rtcp = sorted((o for o in out if o["kind"] == "rtcp"), key=lambda o: o["ts"])
    plaintexts = [bytes.fromhex(_plain_of(name, o)) for o in rtcp]
    for report, theirs in zip(rtcp, tshark_rtcp(plaintexts), strict=True):
        mine = ours(report)
        assert report["rtcp"]["type"] == theirs["rtcp.pt"][0]
        if report["rtcp"]["type"] in (200, 201):  # (an APP first, from baresip: no sender)
            assert report["rtcp"]["ssrc"] == theirs["rtcp.senderssrc"][0]
        for field, values in mine.items():
            # (tshark names some fields of XR blocks as those of report blocks: they come
            # after the SR's or RR's blocks, so ours are what tshark lists first)
            assert values == theirs[field][: len(values)], field


def test_a_stray_srtcp_stream_with_no_sdp_gives_nothing():
    name = "stray-srtcp"
    stray = [r for r in truth(name)["rtcp"] if r["call_id"] is None]
    assert stray  # (the capture has them)
    out, stderr = json_run(name)
    reported = {(endpoint(o, "src"), endpoint(o, "dst")) for o in out if o["kind"] == "rtcp"}
    assert not reported & {(r["src"], r["dst"]) for r in stray}
    assert "no call" in stderr


def test_media_off_gives_no_media():
    out, stderr = json_run("sdes-aes128-80", "--no-media")
    assert {o["kind"] for o in out} == {"sip"}
    assert "media:" not in stderr


def test_the_rtp_statistics_of_each_call_come_out_when_its_media_ends():
    name = "sdes-aes128-80"
    out, _ = json_run(name)
    [media] = [o for o in out if o["kind"] == "media"]
    by_ssrc = {s["ssrc"]: s for s in media["streams"]}
    for stream in truth(name)["rtp"]:
        got = by_ssrc[stream["ssrc"]]
        assert got["packets"] == stream["packets"] and got["lost"] == 0
        assert f"{got['src_ip']}:{got['src_port']}" == stream["src"]
        assert got["clock_rate"] == 8000 and got["jitter_ms"] >= 0


# -- HEP type 5 ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sdes-aes128-80", "two-calls", "tls13-keylog"])
def test_hep_type_5_carries_the_call_id_before_the_payload(name):
    with UdpCollector() as collector:
        run([*key_args(name), "--hep", collector.address, "-q"], check=True)
        expected = len(sent_reports(name))
        sip = len([m for m in truth(name)["sip"]])
        packets = collector.wait_for(expected + sip)
    rtcp = [p for p in packets if chunk_value(p, 0x000B) == b"\x05"]
    assert len(rtcp) == expected
    calls = {r[2] for r in sent_reports(name)}
    for packet in rtcp:
        types = chunk_types(packet)
        assert types.index(0x0011) < types.index(0x000F)  # sipcapture reads it as a C string
        assert (chunk_value(packet, 0x0011) or b"").decode() in calls
        assert chunk_value(packet, 0x0002) == b"\x11"  # UDP
        payload = json.loads(chunk_value(packet, 0x000F) or b"")
        assert {"ssrc", "type", "report_count", "report_blocks", "sdes_ssrc"} <= payload.keys()
    decoded = decode_with_hepjs(rtcp)
    assert all("error" not in d for d in decoded)
    assert {d["payloadType"] for d in decoded} == {5}
    assert {d["correlation_id"] for d in decoded} == calls


def test_our_fields_are_those_of_the_reference_agents():
    """rtpengine's --homer output (recorded by tests/fixtures/media_rtpengine.py): the same
    names for the sender information and the report blocks."""
    reference = json.loads((MEDIA / "rtpengine-hep5-example.json").read_text())
    payloads = []
    for hep in reference["hep"]:
        packet = bytes.fromhex(hep["hex"])
        assert chunk_value(packet, 0x000B) == b"\x05"
        assert chunk_value(packet, 0x0011) == reference["call_id"].encode()
        payloads.append(json.loads(chunk_value(packet, 0x000F) or b""))
    payload = next(p for p in payloads if p["type"] == 200)
    out, _ = json_run("sdes-aes128-80")
    ours_sr = next(o["rtcp"] for o in out if o["kind"] == "rtcp" and o["rtcp"]["type"] == 200)
    assert set(payload["sender_information"]) == set(ours_sr["sender_information"])
    assert set(payload["report_blocks"][0]) == set(ours_sr["report_blocks"][0])
    assert {"ssrc", "type", "report_count"} <= set(payload) & set(ours_sr)


def test_a_real_sipcapture_stores_every_report_with_its_call():
    from tests.support import sipcapture

    try:
        homer = sipcapture.SipCapture()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    name = "two-calls"
    with homer:
        run([*key_args(name), "--hep", f"127.0.0.1:{homer.port}", "-q"], check=True)
        expected = sent_reports(name)
        rows = homer.wait_rows("rtcp_capture", len(expected))
    assert len(rows) == len(expected)
    assert sorted(r["correlation_id"] for r in rows) == sorted(e[2] for e in expected)
    assert all(json.loads(r["msg"])["ssrc"] for r in rows)


# -- decrypted media for Wireshark ---------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_media_pcap_holds_the_rtp_and_rtcp_decrypted_and_is_private(tmp_path, workers):
    name = "sdes-aes128-80"
    path = tmp_path / "media.pcap"
    proc = run([*key_args(name), "--media-pcap", str(path), "--workers", workers], check=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rtp_sent = sum(s["packets"] for s in truth(name)["rtp"])
    rtcp_sent = len(sent_reports(name))
    assert f"{rtp_sent} RTP and {rtcp_sent} RTCP packets, decrypted" in proc.stderr
    if shutil.which("tshark") is None:
        return
    ports = {int(s["src"].rsplit(":", 1)[1]) for s in truth(name)["rtp"]}
    decode = [arg for port in ports for arg in ("-d", f"udp.port=={port},rtp")]
    fields = subprocess.run(
        ["tshark", "-n", "-r", str(path), *decode, "-Y", "rtp", "-T", "fields"]
        + ["-e", "rtp.ssrc", "-e", "rtp.seq", "-e", "rtp.payload"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in fields if line]
    assert len(rows) == rtp_sent
    # the payloads as libsrtp (pylibsrtp) decrypts the packets on the wire
    pylibsrtp = pytest.importorskip("pylibsrtp")
    contexts = {c["id"]: c for c in truth(name)["contexts"]}
    wire = wire_rtp(MEDIA / f"{name}.pcap", ports)
    expected = {}
    for stream in truth(name)["rtp"]:
        context = contexts[stream["context"]]
        key = bytes.fromhex(context["master_key"] + context["master_salt"])
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        session = pylibsrtp.Session(policy)
        for packet in wire[stream["ssrc"]]:
            plain = session.unprotect(packet)
            expected[(stream["ssrc"], int.from_bytes(plain[2:4], "big"))] = plain[12:].hex()
    got = {(int(r[0], 16), int(r[1])): r[2].replace(":", "") for r in rows}
    assert got == expected


def wire_rtp(pcap: Path, ports: set[int]) -> dict[int, list[bytes]]:
    """The SRTP packets of a capture by SSRC, as they were on the wire."""
    from captagent_tls.net.packet import Datagram, decode
    from tests.support.inprocess import read_frames

    found: dict[int, list[bytes]] = {}
    for frame in read_frames(pcap):
        packet = decode(frame.linktype, frame.data)
        if isinstance(packet, Datagram) and packet.sport in ports:
            payload = bytes(packet.payload)
            if payload[1] & 0x7F < 64:
                found.setdefault(int.from_bytes(payload[8:12], "big"), []).append(payload)
    return found


def test_the_report_shows_each_streams_loss_and_jitter(tmp_path):
    from tests.support.browser import chromium_path, dump_dom, read_page

    try:
        chromium_path()
    except Exception as exc:  # noqa: BLE001 - no browser here
        pytest.skip(str(exc))
    name = "sdes-aes128-80"
    path = tmp_path / "calls.html"
    run([*key_args(name), "--report", str(path)], check=True)
    call_id = truth(name)["calls"][0]["call_id"]
    page = read_page(dump_dom(path, f"call={call_id}"))
    assert "media" not in page.hidden
    text = page.texts["media-rows"]
    for stream in truth(name)["rtp"]:
        assert f"{stream['ssrc']:08x}" in text and stream["src"] in text
    sent = {r["src"] for r in truth(name)["rtcp"]}
    assert len(sent) == 2 and "0.0" in text  # both sides' RTCP reported no loss
