"""SIP over WebSocket captures made by real peers (the websockets library's client and
server, tests/fixtures/make_ws_captures.py) give exactly the SIP messages that were sent, to
every output, and tshark agrees where it can read them.  Damaged copies of the captures (the
handshake cut off, a segment lost in the middle of a message) give only messages that were
sent."""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures import make_ws_captures, peers
from tests.support.cli import payload_bytes, received, run
from tests.support.groundtruth import GroundTruth, load_groundtruth
from tests.support.oracle import packet_times, tshark_fields
from tests.support.paths import FIXTURE_KEYS, FIXTURES

WS_FIXTURES = FIXTURES.parent / "websocket"

NAMES = [
    "wss-deflate",
    "wss-uncompressed",
    "wss-no-context-takeover",
    "wss-tls13-keylog",
    "ws-plain",
]
# Kamailio's websocket module as the server (tests/fixtures/make_kamailio_capture.py)
INTEROP = ["kamailio"]
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def truth_of(name: str) -> GroundTruth:
    return load_groundtruth(WS_FIXTURES / f"{name}.json")


def key_arguments(truth: GroundTruth) -> list[str]:
    args = ["-k", str(FIXTURE_KEYS / "server-rsa2048.key")]
    if truth.keylog is not None:
        args += ["--keylog", str(truth.keylog)]
    return args


def run_json(capture: Path, truth: GroundTruth, *extra: str) -> tuple[list[dict], str]:
    proc = run(["-r", str(capture), "--json", "-v", *key_arguments(truth), *extra])
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.parametrize("name", NAMES + INTEROP)
def test_websocket_capture_gives_the_messages_sent(name):
    truth = truth_of(name)
    doc = json.loads(truth.path.read_text())
    out, stderr = run_json(WS_FIXTURES / f"{name}.pcap", truth)
    assert received(out) == truth.sent()
    conns = {c["client_port"]: c for c in doc["connections"]}
    for obj in out:
        conn = conns[obj["src_port"] if obj["direction"] == "c2s" else obj["dst_port"]]
        assert obj["kind"] == "sip"
        assert obj["transport"] == conn["transport"]
        assert obj["tls_version"] == (conn["version"] or None)
        assert obj["call_id"] and f"Call-ID: {obj['call_id']}\r\n" in obj["payload"]
    assert "captagent-tls: WebSocket" not in stderr  # no problem to report
    assert f"SIP messages: {len(truth.messages)} " in stderr


def test_the_fixtures_cover_what_the_issue_lists():
    """Compression on and off, no context takeover with window bits, fragments with pings,
    binary messages, a message over one TLS record and one TCP segment, 64-bit lengths,
    TLS 1.2 (RSA and key log) and 1.3, and ws://."""
    docs = {name: json.loads((WS_FIXTURES / f"{name}.json").read_text()) for name in NAMES}
    conns = [c for d in docs.values() for c in d["connections"]]
    messages = [m for d in docs.values() for m in d["messages"]]
    extensions = {c["extensions"] for c in conns}
    assert "" in extensions
    assert any(
        "client_no_context_takeover" in e
        and "server_max_window_bits=11" in e
        and "client_max_window_bits=10" in e
        for e in extensions
    )
    assert any(e.startswith("permessage-deflate") and "no_context" not in e for e in extensions)
    assert any(m.get("pings") for m in messages) and any(len(m["text"]) > 65535 for m in messages)
    assert any(m["opcode"] == "binary" for m in messages)
    assert {c["version"] for c in conns} == {"TLSv1.2", "TLSv1.3", ""}
    assert {c["transport"] for c in conns} == {"ws", "wss"}
    assert all(c["subprotocol"] == "sip" for c in conns)


@needs_tshark
@pytest.mark.parametrize("name", NAMES + INTEROP)
def test_tshark_shows_the_same_messages(name):
    """tshark 4.0 decrypts, unmasks, inflates and dissects SIP over WebSocket: each message it
    shows is one we emit, from the same side; it shows every message sent except those it
    cannot reassemble (make_ws_captures.tshark_misses)."""
    truth = truth_of(name)
    doc = json.loads(truth.path.read_text())
    shown = make_ws_captures.tshark_sip(WS_FIXTURES / f"{name}.pcap", doc, truth.keylog)
    out, _ = run_json(WS_FIXTURES / f"{name}.pcap", truth)
    server_ports = {c["server_port"] for c in doc["connections"]}
    ours = Counter(
        (o["src_port"], o["direction"], *make_ws_captures.message_key(payload_bytes(o).decode()))
        for o in out
    )
    assert Counter(shown) - ours == Counter()  # nothing tshark shows is missing from ours
    missed = make_ws_captures.tshark_misses(doc)
    assert len(shown) == len(doc["messages"]) - len(missed) > 0
    assert all(port in server_ports for port, direction, *_ in shown if direction == "s2c")


@needs_tshark
@pytest.mark.parametrize("name", ["wss-deflate", "ws-plain"])
def test_message_time_is_the_capture_time_of_a_packet_of_its_direction(name):
    out, _ = run_json(WS_FIXTURES / f"{name}.pcap", truth_of(name))
    times = packet_times(WS_FIXTURES / f"{name}.pcap")
    assert out and all((f"{o['ts']:.6f}", o["src_port"], o["dst_port"]) in times for o in out)


def test_console_names_the_transport():
    for name, label in (
        ("wss-deflate", "WSS TLSv1.2 TLS_RSA_WITH_AES_128_GCM_SHA256"),
        ("ws-plain", "WS"),
    ):
        truth = truth_of(name)
        proc = run(["-r", str(WS_FIXTURES / f"{name}.pcap"), *key_arguments(truth)])
        assert proc.returncode == 0, proc.stderr
        headers = [line for line in proc.stdout.splitlines() if " UTC " in line]
        assert len(headers) == len(truth.messages)
        assert all(line.endswith(f" {label}") for line in headers), headers[:2]


@needs_tshark
def test_write_gives_a_pcap_that_tshark_reads_as_the_sip_sent(tmp_path):
    truth = truth_of("wss-tls13-keylog")
    out = tmp_path / "decrypted.pcap"
    proc = run(
        ["-r", str(WS_FIXTURES / "wss-tls13-keylog.pcap"), *key_arguments(truth), "-w", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    shown = [
        "\t".join(row)
        for row in tshark_fields(out, ["sip.Call-ID", "sip.CSeq"], display_filter="sip")
    ]
    want = sorted(
        "\t".join(make_ws_captures.message_key(m.payload.decode())[1:]) for m in truth.messages
    )
    assert sorted(shown) == want


# --------------------------------------------------------------------------- damaged copies


def flows_of(cap: peers.Pcap) -> dict[tuple, list[int]]:
    """Packet indexes per connection (keyed by its client port and server port)."""
    flows: dict[tuple, list[int]] = {}
    for i, packet in enumerate(cap.packets):
        seg = peers.parse_tcp(cap.linktype, packet.data)
        if seg is not None:
            flows.setdefault(tuple(sorted((seg.sport, seg.dport))), []).append(i)
    return flows


def drop_handshakes(capture: Path, out: Path, *, also_first_client_packet: bool = False) -> None:
    """Every connection loses its packets up to and including the server's 101 (and, with
    ``also_first_client_packet``, the client's first one after it)."""
    cap = peers.read_pcap(capture)
    dropped: set[int] = set()
    for indexes in flows_of(cap).values():
        upgraded = False
        client = None
        for i in indexes:
            seg = peers.parse_tcp(cap.linktype, cap.packets[i].data)
            assert seg is not None
            payload = cap.packets[i].data[seg.payload :]
            if not upgraded:
                dropped.add(i)
                if payload.startswith(b"GET "):
                    client = seg.sport
                upgraded = payload.startswith(b"HTTP/1.1 101")
            elif also_first_client_packet and payload and seg.sport == client:
                dropped.add(i)
                break
    cap.packets = [p for i, p in enumerate(cap.packets) if i not in dropped]
    peers.write_pcap(out, cap)


def test_picked_up_mid_stream_from_the_server_side(tmp_path):
    """ws:// without the handshake, and without the client's first message: the server's
    first frame is seen first, recognised, and the uncompressed connection gives every
    later message, from both sides."""
    truth = truth_of("ws-plain")
    capture = tmp_path / "no-handshake.pcap"
    drop_handshakes(WS_FIXTURES / "ws-plain.pcap", capture, also_first_client_packet=True)
    out, stderr = run_json(capture, truth)
    got = received(out)
    plain = truth.connections[1]
    want = Counter({k: v for k, v in truth.sent().items() if k[0] == plain.client_port})
    want[(plain.client_port, "c2s", plain.messages("c2s")[0])] -= 1
    assert got - truth.sent() == Counter()  # nothing that was not sent
    assert Counter({k: v for k, v in got.items() if k[0] == plain.client_port}) == +want
    assert "picked up mid-stream" in stderr
    assert all(o["transport"] == "ws" for o in out)


def test_picked_up_mid_stream_without_the_upgrade(tmp_path):
    """ws:// captures without the handshake: both connections are recognised from their
    frames and give every message, the compressed one too (its deflate history starts with
    its first message, which the capture has; losing history is tested in
    test_websocket.py)."""
    truth = truth_of("ws-plain")
    capture = tmp_path / "no-handshake.pcap"
    drop_handshakes(WS_FIXTURES / "ws-plain.pcap", capture)
    out, stderr = run_json(capture, truth)
    assert received(out) == truth.sent()
    assert "picked up mid-stream" in stderr


def test_a_segment_lost_inside_a_message(tmp_path):
    """A TCP segment in the middle of the 70 KB INVITE is lost: its TLS record cannot be
    decrypted, the WebSocket decoder finds its feet at the next message, and everything but
    the INVITE comes out."""
    truth = truth_of("wss-uncompressed")
    big = next(m for m in truth.messages if len(m.payload) > 65535)
    conn = truth.connections[big.conn]
    cap = peers.read_pcap(WS_FIXTURES / "wss-uncompressed.pcap")
    indexes = flows_of(cap)[tuple(sorted((conn.client_port, conn.server_port)))]
    carrying = [
        i
        for i in indexes
        if (seg := peers.parse_tcp(cap.linktype, cap.packets[i].data)) is not None
        and seg.sport == conn.client_port
        and len(cap.packets[i].data) > seg.payload + 1000
    ]
    lost = carrying[len(carrying) // 2]
    cap.packets = [p for i, p in enumerate(cap.packets) if i != lost]
    capture = tmp_path / "lost.pcap"
    peers.write_pcap(capture, cap)
    out, _ = run_json(capture, truth)
    want = truth.sent()
    del want[(conn.client_port, "c2s", big.payload)]
    assert received(o for o in out if o["kind"] == "sip") == want
    assert all(o["kind"] == "sip" for o in out)


def test_a_bad_frame_in_a_real_capture_stops_only_its_direction(tmp_path):
    """ws:// conn 1's ACK frame gets an RSV2 bit: the server would fail the connection there.
    Every message before it comes out, nothing of or after it in that direction, the other
    direction goes on, and the protocol error is reported."""
    truth = truth_of("ws-plain")
    conn = truth.connections[1]
    cap = peers.read_pcap(WS_FIXTURES / "ws-plain.pcap")
    ack = next(m.payload for m in truth.messages if m.conn == 1 and m.payload.startswith(b"ACK"))
    for packet in cap.packets:
        seg = peers.parse_tcp(cap.linktype, packet.data)
        if seg is None or seg.sport != conn.client_port:
            continue
        body = packet.data[seg.payload :]
        if len(body) > 6 and body[0] == 0x81 and struct.unpack("!B", body[1:2])[0] & 0x7F == 126:
            length = int.from_bytes(body[2:4], "big")
            if length == len(ack):
                packet.data = packet.data[: seg.payload] + bytes([0xA1]) + body[1:]
                break
    else:
        raise AssertionError("the ACK frame was not found")
    capture = tmp_path / "bad-frame.pcap"
    peers.write_pcap(capture, cap)
    out, stderr = run_json(capture, truth)
    sent_c2s = conn.messages("c2s")
    cut = sent_c2s.index(ack)
    got = received(out)
    assert got - truth.sent() == Counter()
    mine = [k[2] for k in got if k[0] == conn.client_port and k[1] == "c2s"]
    assert sorted(mine) == sorted(sent_c2s[:cut])
    assert {k[2] for k in got if k[0] == conn.client_port and k[1] == "s2c"} == set(
        conn.messages("s2c")
    )
    assert "RSV2/RSV3 set" in stderr
