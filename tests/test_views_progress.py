"""Progress while a file is read and the live status line: on a terminal only, never in the
way of the output, and with figures that are right."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import signal
import socket
import time

import pytest

from captagent_tls.capture.files import CaptureReader
from captagent_tls.capture.live import KernelStats
from captagent_tls.counters import Counters
from captagent_tls.pipeline import Pipeline
from captagent_tls.tls.keys import KeyStore
from captagent_tls.views.progress import FileProgress, LiveStatus, TerminalLine
from tests.support.cli import key_args, run
from tests.support.live import free_port, require_live_capture
from tests.support.paths import FIXTURE_KEYS, FIXTURES
from tests.support.terminal import run_on_terminal

CAPTURE = FIXTURES / "rsa-tls12-aes-cbc.pcap"
KEY = FIXTURE_KEYS / "server-rsa2048.key"
ARGS = ["-r", CAPTURE, *key_args([KEY])]
BAR = "%|"


def test_a_bar_on_a_terminal_and_the_output_unchanged():
    piped = run([*ARGS, "--json"], check=True)
    shown = run_on_terminal([*ARGS, "--json"])
    assert shown.returncode == 0
    assert shown.stdout == piped.stdout  # the JSON lines do not see the bar
    final = [part for part in shown.terminal.split("\r") if "100%" in part]
    assert final, shown.terminal
    size = os.path.getsize(CAPTURE)
    from tqdm import tqdm

    total = tqdm.format_sizeof(size, divisor=1024)
    assert f"{total}/{total}" in final[-1]
    assert "184 packets, 56 SIP messages" in final[-1]
    assert "--- captagent-tls stats ---" in shown.terminal


def test_no_bar_when_stderr_is_not_a_terminal():
    proc = run([*ARGS, "--json"], check=True)
    assert BAR not in proc.stderr and "\r" not in proc.stderr
    assert proc.stderr.startswith("--- captagent-tls stats ---")


@pytest.mark.parametrize("option", ["--no-progress", "--quiet"])
def test_no_bar_when_asked(option):
    shown = run_on_terminal([*ARGS, "--json", option])
    assert shown.returncode == 0
    assert BAR not in shown.terminal and "packets" not in shown.terminal.split("---")[0]


def test_standard_input_has_a_running_count_without_a_total():
    with open(CAPTURE, "rb") as stdin:
        shown = run_on_terminal(["-r", "-", *key_args([KEY]), "--json"], stdin=stdin.fileno())
    assert shown.returncode == 0
    assert BAR not in shown.terminal
    counts = [part for part in shown.terminal.split("\r") if part.startswith("stdin: ")]
    assert counts and "184 packets [" in counts[-1], shown.terminal
    assert len(shown.stdout.splitlines()) == 56


def test_gzip_counts_the_compressed_bytes(tmp_path):
    packed = tmp_path / "capture.pcap.gz"
    with open(CAPTURE, "rb") as src, gzip.open(packed, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    assert os.path.getsize(packed) < 0.8 * os.path.getsize(CAPTURE)
    shown = run_on_terminal(["-r", packed, *key_args([KEY]), "--json"])
    assert shown.returncode == 0
    from tqdm import tqdm

    total = tqdm.format_sizeof(os.path.getsize(packed), divisor=1024)
    final = [part for part in shown.terminal.split("\r") if "100%" in part]
    assert final and f"{total}/{total}" in final[-1], shown.terminal


def test_messages_on_the_same_terminal_are_never_cut_by_the_bar():
    shown = run_on_terminal([*ARGS, "--brief", "--color", "never"], stdout_on_terminal=True)
    assert shown.returncode == 0
    # what each line shows in the end: the text after its last carriage return
    lines = [line.split("\r")[-1] for line in shown.terminal.split("\r\n")]
    messages = [line for line in lines if " -> " in line]
    assert len(messages) == 56
    for line in messages:
        assert BAR not in line and re.search(r" TLSv1\.2 TLS_RSA_WITH_\w+$", line), repr(line)
    assert any(BAR in line and "100%" in line for line in lines)


# -- the figures -------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress_over(path: str) -> tuple[FileProgress, list[int]]:
    """Read ``path`` through a FileProgress; the positions it computed after each frame."""
    reader = CaptureReader(path)
    pipeline = Pipeline(KeyStore(), [])
    progress = FileProgress(TerminalLine(Terminal()), path, reader, pipeline)
    positions = []
    data = 0
    for count, frame in enumerate(progress.frames(reader), 1):
        data += len(frame.data)
        positions.append(progress._position(count, data))
    reader.close()
    return progress, positions


def test_a_pcap_file_position_is_exact():
    _, positions = _progress_over(str(CAPTURE))
    assert positions[-1] == os.path.getsize(CAPTURE)
    assert positions == sorted(positions)


def test_a_pcapng_file_position_is_close(tmp_path):
    out = tmp_path / "copy.pcapng"  # a pcapng of the same packets, made by tshark's editcap
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap (Wireshark) is not installed")
    os.system(f"{editcap} -F pcapng {CAPTURE} {out} >/dev/null 2>&1")  # noqa: S605
    progress, positions = _progress_over(str(out))
    assert abs(positions[-1] - os.path.getsize(out)) < 0.02 * os.path.getsize(out)
    assert all(p <= os.path.getsize(out) for p in positions)


def test_live_status_text():
    pipeline = Pipeline(KeyStore(), [])

    def snapshot() -> Counters:
        counters = pipeline.counters()
        KernelStats(10, 3, 4).add_counters(counters)
        counters.set("hep_queued", 1234, "tcp://127.0.0.1:9061")
        return counters

    status = LiveStatus(TerminalLine(Terminal()), snapshot)
    status._last = (100.0, 0, 0)
    pipeline.stats.frames, pipeline.stats.sip_messages = 5000, 2000
    text = status.text(102.0)
    assert text == (
        "2,500 packets/s | 1,000 SIP messages/s | kernel drops 7 | HEP queue 1,234 | "
        "flows 0 | waiting for keys 0"
    )


# -- live ----------------------------------------------------------------------------------------


def _send_sip_over_udp(port: int, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in range(count):
            sock.sendto(
                f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nCall-ID: status-{n}\r\nCSeq: 1 "
                f"OPTIONS\r\nContent-Length: 0\r\n\r\n".encode(),
                ("127.0.0.1", port),
            )
            time.sleep(0.002)


def test_live_status_line_on_a_terminal():
    require_live_capture()
    port = free_port(socket.SOCK_DGRAM)

    def drive(proc, chunks):
        deadline = time.monotonic() + 20
        while b"capturing on" not in b"".join(chunks) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        _send_sip_over_udp(port, 300)
        time.sleep(2.5)  # the line is redrawn once a second
        proc.send_signal(signal.SIGHUP)  # a warning is logged while the line is shown
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)

    shown = run_on_terminal(
        ["-i", "lo", "-f", f"udp port {port}", "-v", "--status", "--json"],
        while_running=drive,
        timeout=60,
    )
    assert shown.returncode == 0, shown.terminal
    lines = [part for part in shown.terminal.replace("\n", "\r").split("\r") if "packets/s" in part]
    assert lines, shown.terminal
    assert all(
        " | kernel drops " in line and " | flows " in line and " | waiting for keys " in line
        for line in lines
    )
    assert len(shown.stdout.splitlines()) == 300
    # the log line stands on a line of its own: the status line was cleared before it
    shown_lines = [line.split("\r")[-1] for line in shown.terminal.split("\r\n")]
    assert "captagent-tls: SIGHUP: reloading keys and key logs" in shown_lines, shown.terminal


def test_live_status_needs_a_terminal():
    require_live_capture()
    port = free_port(socket.SOCK_DGRAM)
    from tests.support.live import Agent

    with Agent("-f", f"udp port {port}", "--status", "--json") as agent:
        assert agent.stop() == 0
    assert "--status needs stderr to be a terminal" in agent.stderr
    assert "packets/s" not in agent.stderr
