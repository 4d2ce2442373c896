"""Every fixture capture, made by real OpenSSL peers, gives exactly the SIP messages that were
written, with the right endpoints and capture times.  Damaged fixtures (a bit flipped in a
record, a lost segment) give every message except the damaged one, and the tampered record
is counted as failing authentication, never shown."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from captagent_tls.tls.keys import KeyStore
from tests.support.cli import payload_bytes, received, run
from tests.support.groundtruth import load_groundtruth, scenario_files
from tests.support.inprocess import key_store, read_frames, run_frames
from tests.support.oracle import packet_times
from tests.support.paths import FIXTURES

CASES = [pytest.param(cap, js, id=cap.stem) for cap, js in scenario_files(FIXTURES)]


def arguments(truth) -> list[str]:
    args: list[str] = []
    if truth.keylog is not None:
        args += ["--keylog", str(truth.keylog)]
    for key in truth.keys:
        args += ["-k", str(key)]
    return args


def run_fixture(capture: Path, truth) -> tuple[list[dict], str]:
    import json

    proc = run(["-r", str(capture), "--json", "-v", *arguments(truth)])
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.parametrize(("capture", "js"), CASES)
def test_fixture_gives_the_messages_sent(capture: Path, js: Path):
    truth = load_groundtruth(js)
    out, stderr = run_fixture(capture, truth)
    damaged = [
        payload for conn in truth.connections if conn.expect_decrypt for _, payload in conn.damaged
    ]
    assert received(o for o in out if o["kind"] == "sip") == truth.sent()
    for payload in damaged:
        assert not any(payload_bytes(o) == payload for o in out)
    tampered = sum(1 for m in truth.messages if m.damage == "tampered")
    failed = int(re.search(r"(\d+) failed authentication", stderr).group(1))
    assert failed == tampered
    if not any(not c.expect_decrypt for c in truth.connections):
        assert "undecryptable: 0" in stderr


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize(
    "name", ["tls12-aes128gcm-ems", "big-sdp", "reorder-dup", "split-writes", "keylog-tls13-suites"]
)
def test_message_time_is_the_capture_time_of_a_packet_of_its_direction(name):
    capture = FIXTURES / f"{name}.pcap"
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    out, _ = run_fixture(capture, truth)
    times = packet_times(capture)
    assert out
    for obj in out:
        stamp = f"{obj['ts']:.6f}"
        assert (stamp, obj["src_port"], obj["dst_port"]) in times, obj["call_id"]


def hide_certificates(capture: Path, out: Path) -> int:
    """Rewrite the server's Certificate handshake messages into an unknown handshake type:
    the bytes, and so the transcript, stay the same, but no certificate is visible."""
    from tests.fixtures.peers import read_pcap, write_pcap

    cap = read_pcap(capture)
    hidden = 0
    for packet in cap.packets:
        data = bytearray(packet.data)
        # Ethernet + IPv4 + TCP on lo; the server's first flight is one TLS record
        tcp_at = 14 + (data[14] & 0x0F) * 4
        payload_at = tcp_at + (data[tcp_at + 12] >> 4) * 4
        record = payload_at
        while record + 5 <= len(data) and data[record] == 22:
            length = int.from_bytes(data[record + 3 : record + 5], "big")
            message = record + 5
            while message + 4 <= record + 5 + length:
                if data[message] == 2 and data[message + 4 : message + 6] == b"\x03\x03":
                    pass  # ServerHello: leave it
                elif data[message] == 11:
                    data[message] = 0xEE
                    hidden += 1
                message += 4 + int.from_bytes(data[message + 1 : message + 4], "big")
            record += 5 + length
        packet.data = bytes(data)
    write_pcap(out, cap)
    return hidden


class UnreadableCertificates(KeyStore):
    """A key store that cannot read any certificate (as with a key type pyca does not know):
    no certificate says which key belongs to the server."""

    def certificate_modulus(self, cert_der: bytes) -> int | None:
        return None


@pytest.mark.parametrize("order", ["right key first", "right key last"])
def test_without_a_readable_certificate_the_key_whose_records_authenticate_is_kept(order):
    """Every key is tried on the first protected record; the handshake is intact, so the
    Finished messages verify the key that was kept.  (Without EMS, as RSA keys are tried after
    the ClientKeyExchange either way.)"""
    truth = load_groundtruth(FIXTURES / "tls12-aes256gcm-noems.json")
    frames = read_frames(FIXTURES / "tls12-aes256gcm-noems.pcap")
    keys = [FIXTURES.parent / "keys" / "server2-rsa2048.key", truth.keys[0]]
    if order == "right key first":
        keys.reverse()
    out, pipeline = run_frames(frames, key_store(keys, keys=UnreadableCertificates()))
    got = sorted(m.payload for m in out.messages)
    want = sorted(m for c in truth.connections for d in ("c2s", "s2c") for m in c.messages(d))
    assert got == want
    assert pipeline.tls.stats.records_failed == 0
    assert pipeline.tls.stats.finished_verified == 2 * len(truth.connections)

    wrong_only = keys[0] if order == "right key last" else keys[1]
    out, _ = run_frames(frames, key_store([wrong_only], keys=UnreadableCertificates()))
    assert out.messages == []
    assert "key mismatch for server" in out.problem_text()


def test_an_altered_handshake_whose_finished_fails_is_not_decrypted(tmp_path):
    """The Certificate messages are renamed to an unknown type: the transcript differs from
    what the peers hashed, no bytes were lost, so the failing Finished refutes the session."""
    truth = load_groundtruth(FIXTURES / "tls12-aes256gcm-noems.json")
    capture = tmp_path / "renamed-certificate.pcap"
    assert hide_certificates(FIXTURES / "tls12-aes256gcm-noems.pcap", capture) == 2
    out, pipeline = run_frames(read_frames(capture), key_store(truth.keys))
    assert out.messages == []
    assert "finished_mismatch" in out.problem_kinds()
    assert "altered or damaged" in out.problem_text()
    assert pipeline.tls.stats.undecryptable == {"finished_mismatch": len(truth.connections)}
