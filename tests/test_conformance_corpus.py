"""Conformance against ../shared/corpus: Wireshark's, Zeek's and scapy-ssl_tls' captures must
give tshark's decrypted bytes exactly (oracle/), and the SIP captures must give exactly the
messages that were sent.  Skips cleanly when the corpus is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import payload_bytes, received, run_json
from tests.support.groundtruth import load_groundtruth
from tests.support.oracle import parse_follow_raw, split_endpoint
from tests.support.paths import CORPUS

PUBLIC = CORPUS / "public"
SYNTHETIC = PUBLIC / "sip-synthetic"
SIP = CORPUS / "sip"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")


def endpoint_of(obj: dict, side: str) -> tuple[str, int]:
    return split_endpoint(f"[{obj[side + '_ip']}]:{obj[side + '_port']}")


def our_flows(out: list[dict]) -> dict[frozenset, dict[tuple, bytes]]:
    """Our output as {flow (endpoint pair): {(src, dst): concatenated bytes}}."""
    flows: dict[frozenset, dict[tuple, bytes]] = {}
    for obj in out:
        src, dst = endpoint_of(obj, "src"), endpoint_of(obj, "dst")
        per_direction = flows.setdefault(frozenset((src, dst)), {})
        per_direction[(src, dst)] = per_direction.get((src, dst), b"") + payload_bytes(obj)
    return flows


# capture, arguments (paths relative to corpus/public)
ORACLE_CASES = [
    ("rsasnakeoil2.pcap", ["-k", "rsasnakeoil2.key"]),  # SSLv3, SSLv2 hello, reneg, resume
    ("rsa-p-lt-q.pcap", ["-k", "rsa-p-lt-q.key"]),
    ("rsa-p-lt-q.pcap", ["-k", "rsa-p-lt-q.p8"]),
    ("dmgr.pcapng", ["-k", "key.p12", "--key-password", "WebAS"]),  # TLS 1.0, SLL, 1/n-1
    ("tls-renegotiation.pcap", ["-k", "rsasnakeoil2.key"]),
    ("RSA_WITH_AES_128_CBC_SHA_w_key.pcap", ["-k", "openssl_1_0_1_f_server.pem"]),
    ("tls12-chacha20poly1305.pcap", ["--keylog", "tls12-chacha20poly1305.keys"]),
    ("tls13-20-chacha20poly1305.pcap", ["--keylog", "tls13-20-chacha20poly1305.keys"]),
    ("tls13-rfc8446.pcap", ["--keylog", "tls13-rfc8446.keys"]),
    ("tls12-dsb.pcapng", []),  # secrets embedded in the pcapng
    ("http2-data-reassembly.pcap", ["--keylog", "http2-data-reassembly.keys"]),
    ("tls-1.2-stream-keylog.pcap", ["--keylog", "tls-1.2-stream-keylog.keys.DERIVED.txt"]),
    ("tls12-decryption.pcap", ["--keylog", "tls12-decryption.keys.DERIVED.txt"]),
    ("dhe1.pcapng.gz", ["--keylog", "dhe1_keylog.dat"]),  # gzip; abbreviated handshake only
]


def resolve(args: list[str], folder: Path) -> list[str]:
    return [str(folder / a) if (folder / a).exists() else a for a in args]


@pytest.mark.parametrize(
    ("capture", "args"),
    ORACLE_CASES,
    ids=[f"{c}:{'+'.join(a[1::2]) or 'dsb'}" for c, a in ORACLE_CASES],
)
def test_public_capture_matches_tshark_byte_for_byte(capture, args):
    oracle = parse_follow_raw((PUBLIC / "oracle" / f"{capture}.tls-follow-raw.txt").read_text())
    out = run_json(["-r", str(PUBLIC / capture), *resolve(args, PUBLIC)])
    flows = our_flows(out)
    unmatched = dict(flows)
    for stream in oracle:
        if not stream.node0_bytes and not stream.node1_bytes:
            continue
        node0 = split_endpoint(stream.node0)
        # tshark names only node 0; the flow is the one whose bytes in both directions match
        match = None
        for key, per_direction in unmatched.items():
            if node0 not in key:
                continue
            (peer,) = key - {node0} or {node0}
            if (
                per_direction.get((node0, peer), b"") == stream.node0_bytes
                and per_direction.get((peer, node0), b"") == stream.node1_bytes
            ):
                match = key
                break
        assert match is not None, (
            f"stream {stream.index}: no flow of ours carries tshark's "
            f"{len(stream.node0_bytes)}+{len(stream.node1_bytes)} bytes from {stream.node0}"
        )
        del unmatched[match]
    assert not unmatched, f"we decrypted flows tshark did not: {list(unmatched)}"


def test_tls13_without_early_secret_skips_0rtt_and_keeps_the_rest():
    out = run_json(
        [
            "-r",
            str(PUBLIC / "tls13-rfc8446.pcap"),
            "--keylog",
            str(PUBLIC / "tls13-rfc8446-noearly.keys"),
        ]
    )
    requests = [payload_bytes(o).split(b"\r\n")[0] for o in out if o["direction"] == "c2s"]
    assert requests == [b"GET /first HTTP/1.1", b"GET /second HTTP/1.1"]
    responses = [o for o in out if o["direction"] == "s2c"]
    assert len(responses) == 3  # the server still answered the early request: we see that


def test_psk_captures_are_reported_not_garbled():
    from tests.support.cli import run

    proc = run(["-r", str(PUBLIC / "tls12-aes128ccm.pcap"), "--json"])
    assert proc.returncode == 0 and proc.stdout == ""
    assert "TLS_PSK_WITH_AES_128_CCM" in proc.stderr


# -- SIP captures with the exact messages sent ----------------------------------------------

SIP_CASES = sorted(p.name for p in SIP.glob("*.json")) if SIP.is_dir() else []


@pytest.mark.parametrize("scenario", SIP_CASES)
def test_sip_corpus_messages_exact(scenario):
    truth = load_groundtruth(SIP / scenario)
    args = ["-r", str(SIP / scenario.replace(".json", ".pcap"))]
    for key in truth.keys:
        args += ["-k", str(key)]
    if truth.keylog is not None:
        args += ["--keylog", str(truth.keylog)]
    out = run_json(args)
    assert received(out) == truth.sent()
    assert all(o["kind"] == "sip" for o in out)


SYNTHETIC_CASES = (
    [
        ("sip-tls10-rsa-aes256cbc", ["-k", "sip-server.key"]),
        ("sip-tls10-rsa-aes256cbc", ["-k", "sip-server.p12", "--key-password", "sippass"]),
        ("sip-tls12-rsa-aes128cbc-noems-noetm", ["-k", "sip-server.key"]),
        ("sip-tls12-rsa-aes128cbc-ems-etm-sidresume", ["-k", "sip-server.key"]),
        ("sip-tls12-rsa-aes256gcm-ems-ticketresume", ["-k", "sip-server.key"]),
        ("sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500", ["-k", "sip-server.key"]),
        ("sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500-ooo", ["-k", "sip-server.key"]),
        ("sip-tls12-ecdhe-rsa-aes128gcm-keylog", ["--keylog", "{name}.keys"]),
        ("sip-tls12-ecdhe-rsa-chacha20-keylog", ["--keylog", "{name}.keys"]),
        ("sip-tls13-aes256gcm-keylog-resume", ["--keylog", "{name}.keys"]),
    ]
    + [
        (name, ["--keylog", f"{name}.{variant}.keys"])
        for name in (
            "sip-tls12-rsa-aes128cbc-noems-noetm",
            "sip-tls12-rsa-aes128cbc-ems-etm-sidresume",
        )
        for variant in ("CLIENT_RANDOM", "PMS_CLIENT_RANDOM", "RSA_ENCPMS")
    ]
    + [
        ("sip-tls12-rsa-aes128cbc-ems-etm-sidresume", ["--keylog", "{name}.RSA_SESSION_ID.keys"]),
        ("sip-tls12-rsa-aes128cbc-noems-noetm", ["--keylog", "{name}.keys"]),
        ("sip-tls12-rsa-aes256gcm-ems-ticketresume", ["--keylog", "{name}.keys"]),
    ]
)


def synthetic_truth(name: str):
    base = name.split("-seg500")[0]
    return load_groundtruth(SYNTHETIC / f"{base}.expected.json")


@pytest.mark.parametrize(
    ("name", "args"), SYNTHETIC_CASES, ids=[f"{n}:{'+'.join(a[1::2])}" for n, a in SYNTHETIC_CASES]
)
def test_sip_synthetic_messages_exact(name, args):
    args = [a.format(name=name) for a in args]
    out = run_json(["-r", str(SYNTHETIC / f"{name}.pcap"), *resolve(args, SYNTHETIC)])
    assert received(out) == synthetic_truth(name).sent()


def test_lost_segment_loses_only_the_message_it_cut():
    """tshark loses everything after the hole in that direction; we lose one INVITE."""
    name = "sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500-lost1"
    out = run_json(["-r", str(SYNTHETIC / f"{name}.pcap"), "-k", str(SYNTHETIC / "sip-server.key")])
    expected = synthetic_truth(name).sent()
    got = received(o for o in out if o["kind"] == "sip")
    missing = expected - got
    assert not got - expected, "nothing that was not sent"
    assert len(missing) == 1
    ((client_port, direction, message),) = missing
    assert direction == "c2s" and message.startswith(b"INVITE ")
    # the fragments of the cut INVITE are handed over as raw bytes, not dropped
    raw = b"".join(payload_bytes(o) for o in out if o["kind"] == "raw")
    assert (
        raw
        and raw in message
        or all(payload_bytes(o) in message for o in out if o["kind"] == "raw")
    )
