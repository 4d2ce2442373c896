"""Worker processes reading a capture file (``--workers N``): the same messages as one
process, merged in capture time order, the same totals, and a worker that dies fails the
run with a clear line.

Every fixture and every ../shared/corpus capture (skipped when absent) is read with
``--workers 1`` and ``--workers 2``; the multiset of JSON objects must be equal, and the
merged output's times must never go back wherever one process gives them in order.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cli import _env, run
from tests.support.groundtruth import load_groundtruth, scenario_files
from tests.support.paths import CORPUS, FIXTURES, SRC
from tests.test_conformance_corpus import ORACLE_CASES, PUBLIC, SYNTHETIC, SYNTHETIC_CASES, resolve


def truth_arguments(js: Path) -> list[str]:
    truth = load_groundtruth(js)
    args: list[str] = []
    if truth.keylog is not None:
        args += ["--keylog", str(truth.keylog)]
    for key in truth.keys:
        args += ["-k", str(key)]
    return args


def cases() -> list:
    found = [
        pytest.param(cap, truth_arguments(js), id=f"fixture:{cap.stem}")
        for cap, js in scenario_files(FIXTURES)
    ]
    if CORPUS.is_dir():
        for folder in (CORPUS / "sip", PUBLIC / "sip-synthetic"):
            found += [
                pytest.param(cap, truth_arguments(js), id=f"{folder.name}:{cap.stem}")
                for cap, js in scenario_files(folder)
            ]
        for name, args in SYNTHETIC_CASES:
            args = [a.format(name=name) for a in args]
            found.append(
                pytest.param(
                    SYNTHETIC / f"{name}.pcap",
                    resolve(args, SYNTHETIC),
                    id=f"sip-synthetic:{name}:{'+'.join(args[1::2])}",
                )
            )
        lost = "sip-tls12-rsa-aes256gcm-ems-ticketresume-seg500-lost1"
        found.append(
            pytest.param(
                SYNTHETIC / f"{lost}.pcap",
                ["-k", str(SYNTHETIC / "sip-server.key")],
                id=f"sip-synthetic:{lost}",
            )
        )
        seen = set()
        for capture, args in ORACLE_CASES:
            seen.add(capture)
            found.append(
                pytest.param(
                    PUBLIC / capture,
                    resolve(args, PUBLIC),
                    id=f"public:{capture}:{'+'.join(args[1::2])}",
                )
            )
        for capture in sorted(PUBLIC.glob("*.pcap*")):
            if capture.name not in seen:  # no keys given: the flows are still shared out
                found.append(pytest.param(capture, [], id=f"public:{capture.name}:nokeys"))
    return found


STATS_LINE = re.compile(
    r"^(packets|flows|TLS sessions|TLS records|TLS events|SIP messages|"
    r"SIP messages dropped|WebSocket|key log|HEP)\b.*$",
    re.M,
)


def read(capture: Path, args: list[str], workers: int) -> tuple[list[dict], list[str], str]:
    proc = run(["-r", str(capture), "--json", "--workers", str(workers), *args])
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    return out, [m.group(0) for m in STATS_LINE.finditer(proc.stderr)], proc.stderr


def in_order(out: list[dict]) -> bool:
    times = [o["ts"] for o in out]
    return all(a <= b for a, b in zip(times, times[1:], strict=False))


def multiset(out: list[dict]) -> Counter:
    return Counter(json.dumps(o, sort_keys=True) for o in out)


@pytest.mark.parametrize(("capture", "args"), cases())
def test_two_workers_give_what_one_gives(capture: Path, args: list[str]):
    one, one_stats, _ = read(capture, args, 1)
    two, two_stats, stderr = read(capture, args, 2)
    assert multiset(two) == multiset(one)
    if in_order(one):
        assert in_order(two)
    assert two_stats == one_stats, stderr


# -- IP fragments: UDP datagrams and TCP segments, between several hosts --------------------


def ipv4(
    payload: bytes, src: bytes, dst: bytes, protocol: int, ident: int = 0, fragment: int = 0
) -> bytes:
    return (
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, fragment, 64, protocol, 0, src, dst
        )
        + payload
    )


def fragmented(
    packet: bytes, src: bytes, dst: bytes, protocol: int, ident: int, size: int = 600
) -> list[bytes]:
    pieces = []
    for offset in range(0, len(packet), size):
        more = 0x2000 if offset + size < len(packet) else 0
        pieces.append(
            ipv4(packet[offset : offset + size], src, dst, protocol, ident, more | offset // 8)
        )
    return pieces


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def sip(method: str, call: str) -> bytes:
    body = b"v=0\r\n" + b"a=x\r\n" * 300  # larger than a fragment
    return (
        f"{method} sip:bob@example.test SIP/2.0\r\nCall-ID: {call}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def fragments_capture(path: Path) -> None:
    """Plain SIP over TCP (some segments fragmented) and over UDP (some datagrams fragmented)
    between six clients and one server, interleaved."""
    server = bytes([10, 0, 1, 1])
    frames: list[bytes] = []
    ident = 100
    for round_ in range(3):
        for client in range(6):
            src = bytes([10, 0, 0, 10 + client])
            sport = 40000 + client
            if round_ == 0:
                frames.append(ipv4(tcp(sport, 5060, 999, 0x02), src, server, 6))
                frames.append(ipv4(tcp(5060, sport, 4999, 0x12), server, src, 6))
            message = sip("INVITE" if round_ else "OPTIONS", f"tcp-{client}-{round_}")
            seq = 1000 + sum(
                len(sip("INVITE" if r else "OPTIONS", f"tcp-{client}-{r}")) for r in range(round_)
            )
            segment = tcp(sport, 5060, seq, 0x18, message)
            ident += 1
            if client % 2:
                frames += fragmented(segment, src, server, 6, ident)
            else:
                frames.append(ipv4(segment, src, server, 6))
            datagram = struct.pack("!HHHH", 5060, 5060, 8 + len(message), 0) + message
            ident += 1
            if round_ % 2:
                frames += fragmented(datagram.replace(b"tcp-", b"udp-"), src, server, 17, ident)
            else:
                frames.append(ipv4(datagram.replace(b"tcp-", b"udp-"), src, server, 17))
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for n, frame in enumerate(frames):
            out.write(
                struct.pack(
                    "<IIII", 1_700_000_000 + n // 100, (n % 100) * 10_000, len(frame), len(frame)
                )
                + frame
            )


def test_fragments_go_to_every_worker_and_each_datagram_to_one(tmp_path: Path):
    capture = tmp_path / "fragments.pcap"
    fragments_capture(capture)
    one, one_stats, _ = read(capture, [], 1)
    two, two_stats, stderr = read(capture, [], 2)
    assert multiset(two) == multiset(one)
    assert len(one) == 36  # 18 over TCP, 18 over UDP: every message once
    assert in_order(two)
    assert two_stats == one_stats, stderr
    assert "IP fragments" in one_stats[0]


def test_a_worker_that_dies_fails_the_run_with_a_clear_line(tmp_path: Path):
    """A worker killed while reading: the run says which one and how, and exits 1."""
    capture = FIXTURES / "batched-writes.pcap"
    args = truth_arguments(capture.with_suffix(".json"))
    # a worker that kills itself after its first frames (as an out-of-memory kill would)
    script = tmp_path / "die.py"
    script.write_text(
        "import os, signal, sys\n"
        "from captagent_tls.workers import worker\n"
        "original = worker.Worker.send_records\n"
        "def send_records(self, *args, **kwargs):\n"
        "    if self.spec.index == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return original(self, *args, **kwargs)\n"
        "worker.Worker.send_records = send_records\n"
        "from captagent_tls.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script), "-r", str(capture), "--json", "--workers", "2", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=SRC,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert (
        lines
        == [
            f"captagent-tls: error: worker 1 (pid {pid}) was killed by SIGKILL before "
            "it finished: its share of the flows is missing"
            for pid in re.findall(r"\(pid (\d+)\)", proc.stderr)
        ][:1]
    ), proc.stderr
    assert "Traceback" not in proc.stderr


def test_workers_option_takes_a_count_or_auto():
    proc = run(["-r", str(FIXTURES / "ipv6.pcap"), "--workers", "none"])
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("--workers: expected an integer or \"auto\", got 'none'")
    proc = run(["-r", str(FIXTURES / "ipv6.pcap"), "--workers", "0"])
    assert proc.returncode == 2 and "between 1 and 1024" in proc.stderr
    proc = run(["-r", str(FIXTURES / "ipv6.pcap"), "--workers", "auto", "-q", "--json"])
    assert proc.returncode == 0, proc.stderr


# -- a resumed session no worker has, with bytes lost while its records wait ---------------


def test_a_resumed_session_no_worker_has_with_a_loss_while_it_waits(tmp_path: Path):
    """With workers, records of a resumed session wait in case another worker has the session;
    when none has, they are handled as one process handles them at once.  A segment lost while
    they wait leaves a loss among them, which must stay a loss (it once came out as a record
    of type -1)."""
    from tests.support.inprocess import read_frames, tls_segments
    from tests.test_capture_files import pcap_bytes

    frames = read_frames(FIXTURES / "resume-session-id.pcap")
    segments = tls_segments(frames)
    first_client = segments[0].sport  # the full handshake: left out of the capture
    resumed = [s for s in segments if first_client not in (s.sport, s.dport)]
    server_data = [s.index for s in resumed if s.sport == 5061 and s.records == ("AD",)]
    lost = server_data[1]  # mid-stream, with data on both sides of it
    kept = [
        frame
        for index, frame in enumerate(frames)
        if index != lost and index >= resumed[0].index - 3  # from the resumed SYN on
    ]
    capture = tmp_path / "resumed-with-a-loss.pcap"
    capture.write_bytes(
        pcap_bytes([(f.ts_ns // 10**9, f.ts_ns % 10**9, f.data) for f in kept], nanos=True)
    )
    key = ["-k", str(FIXTURES.parent / "keys" / "server-rsa2048.key")]
    one, one_stats, one_err = read(capture, key, 1)
    two, two_stats, two_err = read(capture, key, 2)
    assert one == two == []  # no master secret for a session begun before the capture
    assert two_stats == one_stats, two_err
    assert "resumed" in two_err and "internal error" not in two_err
