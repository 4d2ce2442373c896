"""Every output with worker processes reading a file: HEP from each worker (each flow's
messages in order, every message once, the summary's totals), ``-w``, the console views,
``--report``, ``--write-decryptable`` and ``--export-keylog``: the same as one process."""

from __future__ import annotations

import re
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cli import run
from tests.support.collectors import StreamServer
from tests.support.hep import chunk_value
from tests.support.oracle import tshark_fields
from tests.support.paths import FIXTURES
from tests.test_workers_files import truth_arguments

CAPTURE = FIXTURES / "rsa-tls12-aes-cbc.pcap"  # 8 connections, 56 messages
ARGS = truth_arguments(CAPTURE.with_suffix(".json"))
MESSAGES = 56


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run(["-r", str(CAPTURE), *ARGS, *args])
    assert proc.returncode == 0, proc.stderr
    return proc


def hep_flows(packets: list[bytes]) -> dict[tuple[int, int], list[bytes]]:
    """Each flow's payloads, in the order the collector received them."""
    flows: dict[tuple[int, int], list[bytes]] = {}
    for packet in packets:
        sport = int.from_bytes(chunk_value(packet, 0x0007) or b"", "big")
        dport = int.from_bytes(chunk_value(packet, 0x0008) or b"", "big")
        flows.setdefault((min(sport, dport), max(sport, dport)), []).append(
            chunk_value(packet, 0x000F) or b""
        )
    return flows


def test_hep_from_each_worker_keeps_each_flows_order():
    runs = {}
    for workers in (1, 2):
        collector = StreamServer().start()
        proc = agent("--hep", collector.address, "--workers", str(workers), "-v")
        packets = collector.wait_for_packets(MESSAGES)
        collector.stop()
        runs[workers] = (hep_flows(packets), proc.stderr)
    one, two = runs[1][0], runs[2][0]
    assert sum(len(p) for p in two.values()) == MESSAGES
    assert two == one  # the same flows, each with its messages in the same order
    assert re.search(rf"HEP tcp://127\.0\.0\.1:\d+: {MESSAGES} sent, 0 still queued", runs[2][1]), (
        runs[2][1]
    )
    assert f"HEP: {MESSAGES} packets per collector" in runs[2][1]


def pcap_records(data: bytes) -> list[tuple[int, bytes]]:
    records, offset = [], 24
    while offset < len(data):
        seconds, nanos, length, _ = struct.unpack_from("<IIII", data, offset)
        records.append((seconds * 1_000_000_000 + nanos, data[offset + 16 : offset + 16 + length]))
        offset += 16 + length
    return records


def test_write_pcap_has_every_message_in_time_order(tmp_path: Path):
    files = {}
    for workers in (1, 2):
        path = tmp_path / f"out{workers}.pcap"
        agent("-w", str(path), "--workers", str(workers))
        files[workers] = path.read_bytes()
    assert files[2][:24] == files[1][:24]  # one header
    one, two = pcap_records(files[1]), pcap_records(files[2])
    assert len(two) == MESSAGES and Counter(two) == Counter(one)
    assert [ts for ts, _ in two] == sorted(ts for ts, _ in two)


@pytest.mark.parametrize("view", [[], ["--brief"], ["--color", "always"]])
def test_console_views_give_the_same_text(view: list[str]):
    one = agent(*view, "--workers", "1").stdout
    two = agent(*view, "--workers", "2").stdout
    if view == ["--brief"]:
        assert sorted(two.splitlines()) == sorted(one.splitlines())
        assert len(two.splitlines()) == MESSAGES
    else:  # messages, each a header line and its text, separated by a blank line
        assert Counter(two.split("\n\n")) == Counter(one.split("\n\n"))


def test_report_decryptable_capture_and_key_export(tmp_path: Path):
    outputs = {}
    for workers in (1, 2):
        report = tmp_path / f"calls{workers}.html"
        decryptable = tmp_path / f"decryptable{workers}.pcapng"
        exported = tmp_path / f"keys{workers}.log"
        proc = agent(
            "--report",
            str(report),
            "--write-decryptable",
            str(decryptable),
            "--export-keylog",
            str(exported),
            "--workers",
            str(workers),
            "-q",
        )
        outputs[workers] = (proc.stdout, report.read_text(), decryptable, exported.read_text())
    stdout_1, report_1, decryptable_1, keys_1 = outputs[1]
    stdout_2, report_2, decryptable_2, keys_2 = outputs[2]
    assert sorted(keys_2.splitlines()) == sorted(keys_1.splitlines())
    assert len(keys_2.splitlines()) == 8
    assert (decryptable_2.stat().st_mode & 0o777) == 0o600
    # the report lists the same calls with the same messages
    for needle in re.findall(r'"Call-ID: ([^"\\]+)', report_1) or ["Call-ID"]:
        assert needle in report_2
    assert len(report_2) == len(report_1)
    # tshark decrypts the copy with no key: the same SIP messages from both
    sips = []
    for path in (decryptable_1, decryptable_2):
        rows = tshark_fields(
            path, ["frame.time_epoch", "sip.Call-ID"], display_filter="sip", timeout=120
        )
        sips.append(Counter("\t".join(row) for row in rows))
    assert sips[1] == sips[0] and sum(sips[1].values()) > 0


def test_progress_bar_follows_the_workers_and_leaves_the_output_unchanged():
    from tests.support.terminal import run_on_terminal

    piped = agent("--json", "--workers", "2")
    shown = run_on_terminal(["-r", CAPTURE, *ARGS, "--json", "--workers", "2"])
    assert shown.returncode == 0
    assert Counter(shown.stdout.splitlines()) == Counter(piped.stdout.splitlines())
    final = [part for part in shown.terminal.split("\r") if "100%" in part]
    assert final, shown.terminal
    assert "184 packets, 56 SIP messages" in final[-1]
    assert "--- captagent-tls stats ---" in shown.terminal
