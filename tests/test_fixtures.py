"""Every fixture capture, made by real OpenSSL peers, gives exactly the SIP messages that were
written, with the right endpoints and capture times.  Damaged fixtures (a bit flipped in a
record, a lost segment) give every message except the damaged one, and the tampered record
is counted as failing authentication, never shown."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support.cli import payload_bytes, run
from support.groundtruth import load_groundtruth, scenario_files
from support.paths import FIXTURES

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

    proc = run(["-r", str(capture), "--json", *arguments(truth)])
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.parametrize(("capture", "js"), CASES)
def test_fixture_gives_the_messages_sent(capture: Path, js: Path):
    truth = load_groundtruth(js)
    out, stderr = run_fixture(capture, truth)
    expected: Counter = Counter()
    damaged: list[bytes] = []
    for conn in truth.connections:
        if not conn.expect_decrypt:
            continue
        for direction in ("c2s", "s2c"):
            for message in conn.messages(direction):
                expected[(conn.client_port, direction, message)] += 1
        damaged += [payload for _, payload in conn.damaged]
    got: Counter = Counter()
    for obj in out:
        if obj["kind"] != "sip":
            continue
        client_port = obj["src_port"] if obj["direction"] == "c2s" else obj["dst_port"]
        got[(client_port, obj["direction"], payload_bytes(obj))] += 1
    assert got == expected
    for payload in damaged:
        assert not any(payload_bytes(o) == payload for o in out)
    tampered = sum(1 for m in truth.messages if m.damage == "tampered")
    failed = int(re.search(r"(\d+) failed authentication", stderr).group(1))
    assert failed == tampered
    if not any(not c.expect_decrypt for c in truth.connections):
        assert "undecryptable: 0" in stderr


def packet_times(capture: Path) -> set[tuple[str, int, str]]:
    """(time in µs, source port, destination port) of every TCP packet with payload, by
    tshark: an independent reading of the capture."""
    proc = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-Y", "tcp.len > 0", "-T", "fields",
         "-e", "frame.time_epoch", "-e", "tcp.srcport", "-e", "tcp.dstport"],
        capture_output=True, text=True, check=True)
    times = set()
    for line in proc.stdout.splitlines():
        stamp, sport, dport = line.split("\t")
        seconds, _, fraction = stamp.partition(".")
        times.add((f"{seconds}.{(fraction + '000000')[:6]}", int(sport), int(dport)))
    return times


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", ["tls12-aes128gcm-ems", "big-sdp", "reorder-dup",
                                  "split-writes", "keylog-tls13-suites"])
def test_message_time_is_the_capture_time_of_a_packet_of_its_direction(name):
    capture = FIXTURES / f"{name}.pcap"
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    out, _ = run_fixture(capture, truth)
    times = packet_times(capture)
    assert out
    for obj in out:
        stamp = f"{obj['ts']:.6f}"
        assert (stamp, obj["src_port"], obj["dst_port"]) in times, obj["call_id"]
