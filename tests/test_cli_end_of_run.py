"""What a script reads at the end of a run: the exit status, the last line, the summary and
the closing line of every file written; and the usage errors of the command line."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest

from tests.support.cli import run
from tests.support.paths import FIXTURES

CAPTURE = FIXTURES / "tls12-aes128gcm-ems.pcap"  # 2 connections, 16 messages
KEY = FIXTURES.parent / "keys" / "server-rsa2048.key"
ARGS = ["-r", str(CAPTURE), "-k", str(KEY)]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


@pytest.mark.parametrize(
    "argv, text",
    [
        ([], "give a capture file (-r FILE) or an interface (-i IFACE)"),
        (
            ["-r", "x.pcap", "-i", "lo"],
            "give a capture file (-r FILE) or an interface (-i IFACE), not both",
        ),
    ],
)
def test_neither_or_both_of_read_and_interface_is_a_usage_error(argv, text):
    proc = run(argv)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"captagent-tls: error: {text}"


@pytest.mark.parametrize(
    "address, text",
    [
        ("notahost:99999", "port 99999 is out of range (1 to 65535)"),
        ("127.0.0.1:0", "port 0 is out of range (1 to 65535)"),
        ("tcp://127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1", "expected HOST:PORT"),
    ],
)
def test_a_collector_port_out_of_range_is_named_as_such(address, text):
    proc = run([*ARGS, "--hep", address])
    assert proc.returncode == 2
    assert text in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_every_output_took_everything_exit_0_and_the_last_line_says_so():
    proc = run([*ARGS, "--json"])
    assert proc.returncode == 0
    assert last_line(proc.stderr) == (
        "captagent-tls: done: 16 SIP messages; every output took everything"
    )


def test_hep_packets_not_delivered_make_a_file_run_fail_and_the_last_line_names_them():
    port = closed_port()
    for workers in ("1", "2"):
        proc = run([*ARGS, "--hep", f"tcp://127.0.0.1:{port}", "--workers", workers])
        assert proc.returncode == 1, proc.stderr
        assert re.fullmatch(
            rf"captagent-tls: error: HEP collector tcp://127\.0\.0\.1:{port} did not get 16 "
            r"of 16 packets: .*refused",
            last_line(proc.stderr),
        ), proc.stderr
        quiet = run([*ARGS, "--hep", f"tcp://127.0.0.1:{port}", "--workers", workers, "-q"])
        assert quiet.returncode == 1 and "did not get 16 of 16" in last_line(quiet.stderr)


def test_a_write_error_fails_the_run_with_one_line():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    proc = run([*ARGS, "-w", "/dev/full"])
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("captagent-tls: error: cannot write /dev/full")
    assert "Traceback" not in proc.stderr


def test_every_file_output_names_its_file_and_what_it_holds(tmp_path):
    outputs = {
        "-w": tmp_path / "out.pcap",
        "--report": tmp_path / "calls.html",
        "--write-decryptable": tmp_path / "open-me.pcapng",
        "--export-keylog": tmp_path / "wireshark.keys",
    }
    for workers in ("1", "2"):
        argv = [*ARGS, "--workers", workers]
        for option, path in outputs.items():
            path.unlink(missing_ok=True)
            argv += [option, str(path)]
        proc = run(argv)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        assert f"captagent-tls: pcap: {outputs['-w']}: 16 SIP messages, " in proc.stderr
        assert (
            f"captagent-tls: report: {outputs['--report']}: 3 calls, 16 messages, " in proc.stderr
        )
        assert (
            f"captagent-tls: decryptable capture: {outputs['--write-decryptable']}: 50 packets, "
            "secrets of 2 TLS sessions (mode 0600: it holds secrets)" in lines
        )
        assert (
            f"captagent-tls: exported key log: {outputs['--export-keylog']}: 2 CLIENT_RANDOM "
            "lines added (mode 0600: it holds secrets)" in lines
        )
        assert stat.S_IMODE(os.stat(outputs["--export-keylog"]).st_mode) == 0o600
        assert proc.stdout == ""  # every one of them replaced the console but the key log
        assert lines[-1].startswith("captagent-tls: done: 16 SIP messages")


@pytest.mark.parametrize(
    "extra, console",
    [
        ([], True),
        (["--export-keylog", "{tmp}/keys"], True),  # secrets, not messages: the console stays
        (["-w", "{tmp}/out.pcap"], False),
        (["--report", "{tmp}/r.html"], False),
        (["--write-decryptable", "{tmp}/d.pcapng"], False),
        (["--write-decryptable", "{tmp}/d.pcapng", "--console"], True),
        (["-w", "{tmp}/out.pcap", "--console"], True),
    ],
)
def test_an_output_of_the_messages_replaces_the_console_unless_console(tmp_path, extra, console):
    proc = run([*ARGS, *(part.format(tmp=tmp_path) for part in extra)])
    assert proc.returncode == 0, proc.stderr
    assert ("INVITE sips:" in proc.stdout) is console


def test_the_summary_folds_zero_counters_and_v_shows_every_one():
    folded = run(ARGS).stderr
    full = run([*ARGS, "-v"]).stderr
    summary = folded[folded.index("--- captagent-tls stats ---") :]
    assert not re.search(r"\b0 [a-z]|: 0\b|, 0\b", summary.replace(": 16 SIP", "")), summary
    assert "TLS sessions: 2 full\n" in summary and "SIP messages: 16\n" in summary
    assert "TLS sessions: 2 full, 0 resumed, 0 ended before any protected record" in full
    assert "0 without keys, 0 dropped waiting for keys" in full
    assert len(summary.splitlines()) < len(full[full.index("--- captagent") :].splitlines())
