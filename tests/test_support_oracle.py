"""Self-tests of the tshark oracle helpers and the ground-truth loader (tests/support)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.groundtruth import (
    Connection,
    load_groundtruth,
    pcap_time_range,
    scenario_files,
    split_sip_stream,
    split_sip_stream_with_gaps,
)
from tests.support.oracle import (
    Stream,
    endpoint,
    parse_follow_raw,
    split_endpoint,
    tshark_decrypt,
)
from tests.support.paths import CORPUS, FIXTURES

ORACLE = CORPUS / "public" / "oracle"
SYNTH = CORPUS / "public" / "sip-synthetic"
SIPDIR = CORPUS / "sip"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus absent ({CORPUS})")

SAMPLE = (
    "\n"
    "===================================================================\n"
    "Follow: tls,raw\n"
    "Filter: tcp.stream eq 3\n"
    "Node 0: [2001:db8::1]:5061\n"
    "Node 1: :0\n"
    "\t68690a\n"
    "6f6b\n"
    "\t\n"
    "21\n"
    "===================================================================\n"
    "\n"
    "===================================================================\n"
    "Follow: tls,raw\n"
    "Filter: tcp.stream eq 1\n"
    "Node 0: :0\n"
    "Node 1: :0\n"
    "===================================================================\n"
)


# --------------------------------------------------------------------------- unit


def test_parse_follow_raw_sample() -> None:
    streams = parse_follow_raw(SAMPLE)
    assert [s.index for s in streams] == [3, 1]
    s = streams[0]
    assert s.node0 == "[2001:db8::1]:5061"
    assert s.node1 == ":0"
    assert s.chunks == [(1, b"hi\n"), (0, b"ok"), (0, b"!")]
    assert s.data(0) == b"ok!"
    assert s.data(1) == b"hi\n"
    assert streams[1].chunks == []


def test_parse_follow_raw_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_follow_raw(SAMPLE.replace("6f6b", "6f6bzz"))
    with pytest.raises(ValueError):
        parse_follow_raw(SAMPLE.replace("6f6b", "6f6"))
    with pytest.raises(ValueError):
        parse_follow_raw(SAMPLE.rstrip("=\n") + "\n")


def test_endpoints() -> None:
    assert split_endpoint("[::1]:5061") == ("::1", 5061)
    assert split_endpoint("127.0.0.1:80") == ("127.0.0.1", 80)
    assert endpoint("0:0:0:0:0:0:0:1", 7) == "[::1]:7"
    s = Stream(
        index=0,
        node0="[::1]:5061",
        node1="[::1]:4000",
        chunks=[(0, b"a"), (1, b"b")],
        client="[::1]:4000",
    )
    assert s.c2s == b"b" and s.s2c == b"a"
    assert s.server == "[::1]:5061"
    assert s.by_direction() == {
        ("[::1]:5061", "[::1]:4000"): b"a",
        ("[::1]:4000", "[::1]:5061"): b"b",
    }


def test_split_sip_stream() -> None:
    a = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"
    b = b"MESSAGE sip:x SIP/2.0\r\nl: 5\r\n\r\nhello"
    c = b"SIP/2.0 200 OK\r\nCall-ID: 1\r\n\r\n"
    assert split_sip_stream(a + b"\r\n\r\n" + b + c) == [a, b, c]
    with pytest.raises(ValueError):
        split_sip_stream(b[:-1])


def test_keepalives_are_kept_in_the_stream() -> None:
    a = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    data = b"\r\n" + a + b"\r\n\r\n" + a + b"\r\n"
    messages, gaps = split_sip_stream_with_gaps(data)
    assert messages == [a, a]
    assert gaps == [(0, b"\r\n"), (len(a) + 2, b"\r\n\r\n"), (2 * len(a) + 6, b"\r\n")]
    conn = Connection(index=0, client_ip=None, client_port=1, server_ip=None, server_port=2)
    conn.c2s.extend(messages)
    conn.extras["c2s"].extend(gaps)
    assert conn.stream("c2s") == data


# --------------------------------------------------------------------------- corpus


@needs_corpus
@pytest.mark.parametrize(
    "path",
    sorted(ORACLE.glob("*.tls-follow-raw.txt")) if ORACLE.is_dir() else [],
    ids=lambda p: p.name,
)
def test_parse_all_oracle_files(path: Path) -> None:
    text = path.read_text()
    streams = parse_follow_raw(text)
    assert streams, "no stream parsed"
    assert all(s.index is not None for s in streams)
    assert len({s.index for s in streams}) == len(streams)
    total_hex = sum(
        len(line.strip())
        for line in text.splitlines()
        if line.strip() and set(line.strip()) <= set("0123456789abcdef")
    )
    assert sum(len(c) for s in streams for _, c in s.chunks) * 2 == total_hex
    # Any stream with data names node 0.
    for s in streams:
        if s.chunks:
            split_endpoint(s.node0)


def test_oracle_files_are_present_when_corpus_is() -> None:
    if not CORPUS.is_dir():
        pytest.skip("shared corpus absent")
    assert len(list(ORACLE.glob("*.tls-follow-raw.txt"))) >= 20


# sip-synthetic: capture -> (ground truth, extra tshark options).
# The seg500 captures carry the same plaintext as the unsegmented one. In -ooo the INVITE's
# first two TCP segments are swapped: tshark 4.0 only reassembles that with
# tcp.reassemble_out_of_order, and loses the rest of the C->S direction without it.
_SYNTH_CASES = {
    "sip-tls10-rsa-aes256cbc.pcap": ("sip-tls10-rsa-aes256cbc", ()),
    "sip-tls12-ecdhe-rsa-aes128gcm-keylog.pcap": ("sip-tls12-ecdhe-rsa-aes128gcm-keylog", ()),
    "sip-tls12-ecdhe-rsa-chacha20-keylog.pcap": ("sip-tls12-ecdhe-rsa-chacha20-keylog", ()),
    "sip-tls12-rsa-aes128cbc-ems-etm-sidresume.pcap": (
        "sip-tls12-rsa-aes128cbc-ems-etm-sidresume",
        (),
    ),
    "sip-tls12-rsa-aes128cbc-noems-noetm.pcap": ("sip-tls12-rsa-aes128cbc-noems-noetm", ()),
    "sip-tls12-rsa-aes256gcm-ems-ticketresume.pcap": (
        "sip-tls12-rsa-aes256gcm-ems-ticketresume",
        (),
    ),
    "sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500.pcap": (
        "sip-tls12-rsa-aes256gcm-ems-ticketresume",
        (),
    ),
    "sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500-ooo.pcap": (
        "sip-tls12-rsa-aes256gcm-ems-ticketresume",
        ("-o", "tcp.reassemble_out_of_order:TRUE"),
    ),
    "sip-tls13-aes256gcm-keylog-resume.pcap": ("sip-tls13-aes256gcm-keylog-resume", ()),
}


def _synth_keys(gt_name: str) -> dict:
    gt = load_groundtruth(SYNTH / f"{gt_name}.expected.json")
    if gt.needs_keylog:
        assert gt.keylog is not None
        return {"keylog": gt.keylog}
    return {"rsa_keys": [SYNTH / "sip-server.key"]}


@needs_corpus
@pytest.mark.parametrize("capture", sorted(_SYNTH_CASES))
def test_tshark_decrypt_matches_expected(capture: str, tshark: str) -> None:
    gt_name, extra = _SYNTH_CASES[capture]
    expected = json.loads((SYNTH / f"{gt_name}.expected.json").read_text())
    streams = tshark_decrypt(
        SYNTH / capture, tls_ports=[5061], extra_opts=extra, **_synth_keys(gt_name)
    )
    by_client_port = {split_endpoint(s.client)[1]: s for s in streams if s.client}
    for conn in expected:
        s = by_client_port[conn["client_port"]]
        assert split_endpoint(s.server)[1] == 5061
        assert s.c2s == conn["c2s"].encode("latin-1"), f"c2s of conn {conn['conn']}"
        assert s.s2c == conn["s2c"].encode("latin-1"), f"s2c of conn {conn['conn']}"
    # Streams that are not in the ground truth carry nothing.
    known = {c["client_port"] for c in expected}
    assert all(not s.chunks for p, s in by_client_port.items() if p not in known)


@needs_corpus
@pytest.mark.parametrize(
    "capture", sorted(p.name for p in SYNTH.glob("*.pcap")) if SYNTH.is_dir() else []
)
def test_tshark_decrypt_matches_stored_oracle(capture: str, tshark: str) -> None:
    """Same bytes and chunking as the stored follow output (which used default prefs)."""
    gt_name = _SYNTH_CASES.get(capture, ("sip-tls12-rsa-aes256gcm-ems-ticketresume", ()))[0]
    streams = tshark_decrypt(SYNTH / capture, tls_ports=[5061], **_synth_keys(gt_name))
    stored = parse_follow_raw((ORACLE / f"{capture}.tls-follow-raw.txt").read_text())
    ours = {s.index: s for s in streams}
    for st in stored:
        if not st.chunks and st.index not in ours:
            continue  # the stored file also follows stream numbers the capture lacks
        assert ours[st.index].chunks == st.chunks, f"stream {st.index}"
        if st.chunks:
            assert ours[st.index].node0 == st.node0


@needs_corpus
def test_ooo_needs_out_of_order_reassembly(tshark: str) -> None:
    cap = SYNTH / "sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500-ooo.pcap"
    expected = load_groundtruth(SYNTH / "sip-tls12-rsa-aes256gcm-ems-ticketresume.expected.json")
    streams = tshark_decrypt(cap, rsa_keys=[SYNTH / "sip-server.key"])
    conn0 = expected.connections[0]
    s = next(s for s in streams if s.client and split_endpoint(s.client)[1] == conn0.client_port)
    assert s.c2s != conn0.stream("c2s")  # default prefs lose data after the swap


@needs_corpus
@pytest.mark.parametrize("name", ["gcm256-ems", "ipv6-gcm", "resume-ticket", "many-calls"])
def test_tshark_decrypt_matches_sip_corpus(name: str, tshark: str) -> None:
    gt = load_groundtruth(SIPDIR / f"{name}.json")
    streams = tshark_decrypt(SIPDIR / f"{name}.pcap", rsa_keys=[gt.key], tls_ports=gt.server_ports)
    by_client_port = {split_endpoint(s.client)[1]: s for s in streams if s.client}
    for conn in gt.connections:
        s = by_client_port[conn.client_port]
        assert split_endpoint(s.server) == (conn.server_ip, conn.server_port)
        assert s.c2s == conn.stream("c2s")
        assert s.s2c == conn.stream("s2c")


@needs_corpus
def test_groundtruth_formats_agree_with_raw_json() -> None:
    for path in sorted(SYNTH.glob("*.expected.json")):
        gt = load_groundtruth(path)
        raw = json.loads(path.read_text())
        assert gt.format == "expected"
        for conn, rc in zip(gt.connections, raw, strict=True):
            assert conn.client_port == rc["client_port"]
            assert conn.stream("c2s") == rc["c2s"].encode()
            assert conn.stream("s2c") == rc["s2c"].encode()
            assert all(
                m.startswith((b"SIP/2.0 ", b"REGISTER ", b"INVITE ", b"ACK ", b"BYE "))
                for m in conn.c2s + conn.s2c
            )
    for path in sorted(SIPDIR.glob("*.json")):
        gt = load_groundtruth(path)
        raw = json.loads(path.read_text())
        assert gt.format == "scenario"
        assert len(gt.messages) == len(raw["messages"])
        assert gt.key is not None and gt.key.exists()
        assert (gt.keylog is not None) == bool(raw["keylog"])
        for conn in gt.connections:
            # Each scenario message is exactly one SIP message for the splitter too.
            for direction in ("c2s", "s2c"):
                assert split_sip_stream(conn.stream(direction)) == conn.messages(direction)


@needs_corpus
def test_pcap_time_range() -> None:
    first, last = pcap_time_range(SIPDIR / "gcm256-ems.pcap")
    assert first == pytest.approx(1795749702.836508, abs=1e-6)
    assert last == pytest.approx(1795749702.925808, abs=1e-6)


# --------------------------------------------------------------------------- project fixtures


def _fixture_scenarios() -> list:
    return [pytest.param(cap, js, id=cap.stem) for cap, js in scenario_files(FIXTURES)]


@pytest.mark.parametrize(("capture", "js"), _fixture_scenarios())
def test_tshark_decrypts_fixture_to_groundtruth(capture: Path, js: Path, tshark: str) -> None:
    """The fixture's ground truth (messages + keep-alives) is what tshark decrypts.

    This checks the fixtures, the loader and the oracle together, so that a product
    failure in test_tshark_crosscheck points at the product and not at the harness.
    """
    gt = load_groundtruth(js)
    if gt.damaged:
        pytest.skip("damaged on purpose: make_captures.py verify models tshark's behaviour here")
    keys = {"keylog": gt.keylog} if gt.needs_keylog else {"rsa_keys": gt.keys}
    # Reordered / duplicated segments (reorder-dup) need out-of-order reassembly in tshark
    # 4.0; it changes nothing for in-order captures.
    streams = tshark_decrypt(
        capture,
        tls_ports=gt.server_ports,
        extra_opts=("-o", "tcp.reassemble_out_of_order:TRUE"),
        **keys,
    )
    by_client = {s.client: s for s in streams}
    for conn in gt.connections:
        s = by_client[endpoint(conn.client_ip, conn.client_port)]
        assert s.server == endpoint(conn.server_ip, conn.server_port)
        if not conn.expect_decrypt:
            assert s.chunks == [], f"conn {conn.index} should stay encrypted"
            continue
        assert s.c2s == conn.stream("c2s"), f"c2s of conn {conn.index}"
        assert s.s2c == conn.stream("s2c"), f"s2c of conn {conn.index}"
