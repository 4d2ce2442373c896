"""The command line as a user meets it: outputs, filters, and one clear line for every mistake."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from captagent_tls.config.options import OPTIONS
from tests.support.cli import run, run_json
from tests.support.groundtruth import load_groundtruth
from tests.support.oracle import tshark_fields
from tests.support.paths import FIXTURES, REPO

KEYS = FIXTURES.parent / "keys"
CAPTURE = FIXTURES / "tls12-aes128gcm-ems.pcap"
KEY = KEYS / "server-rsa2048.key"
OTHER_KEY = KEYS / "server2-rsa2048.key"


def expected_messages(name: str) -> list[bytes]:
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    return sorted(m for c in truth.connections for d in ("c2s", "s2c") for m in c.messages(d))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("captagent-tls: error:")
    for needle in needles:
        assert needle in lines[0]


def test_json_output_is_the_ground_truth():
    out = run_json(["-r", str(CAPTURE), "-k", str(KEY)])
    assert sorted(o["payload"].encode() for o in out) == expected_messages("tls12-aes128gcm-ems")
    assert {o["cipher_suite"] for o in out} == {"TLS_RSA_WITH_AES_128_GCM_SHA256"}
    assert {o["tls_version"] for o in out} == {"TLSv1.2"}
    assert all(o["kind"] == "sip" and o["call_id"] for o in out)
    assert [o["ts"] for o in out] == sorted(o["ts"] for o in out)  # capture order


def test_console_output_and_stats():
    proc = run(["-r", str(CAPTURE), "-k", str(KEY), "-v"])
    assert proc.returncode == 0
    headers = [line for line in proc.stdout.splitlines() if " UTC " in line]
    assert len(headers) == len(expected_messages("tls12-aes128gcm-ems"))
    assert "TLSv1.2 TLS_RSA_WITH_AES_128_GCM_SHA256" in headers[0]
    assert "\nREGISTER sip" in proc.stdout
    assert "TLS sessions: 2 full, 0 resumed" in proc.stderr
    assert "Finished verified 4, failed 0" in proc.stderr


def test_stats_count_key_updates_and_alerts():
    # the fixture's client requests a KeyUpdate (the server answers) and the server sends one
    name = "keylog-tls13-keyupdate"
    proc = run(
        ["-r", FIXTURES / f"{name}.pcap", "--keylog", FIXTURES / f"{name}.keylog", "--json", "-v"]
    )
    assert proc.returncode == 0
    assert "TLS events: 2 alerts, 3 key updates," in proc.stderr


def test_wrong_key_names_the_server_and_prints_nothing_decrypted():
    proc = run(["-r", str(CAPTURE), "-k", str(OTHER_KEY), "--json"])
    assert proc.returncode == 0
    assert proc.stdout == ""
    problems = [line for line in proc.stderr.splitlines() if "no key for server" in line]
    assert problems == [
        "captagent-tls: no key for server 127.0.0.1:5061: none of the given keys "
        "matches its certificate"
    ]


def test_bpf_filter_applies_to_files():
    assert run_json(["-r", str(CAPTURE), "-k", str(KEY), "-f", "tcp port 5061"])
    assert run_json(["-r", str(CAPTURE), "-k", str(KEY), "-f", "tcp port 5999"]) == []


def test_reads_standard_input():
    proc = subprocess.run(
        [sys.executable, "-m", "captagent_tls", "-r", "-", "-k", str(KEY), "--json", "-q"],
        input=CAPTURE.read_bytes(),
        capture_output=True,
        env=_env(),
        check=True,
    )
    assert len(proc.stdout.splitlines()) == len(expected_messages("tls12-aes128gcm-ems"))


def test_standard_input_is_a_stream_each_message_comes_out_as_its_packets_come(tmp_path):
    """``tcpdump -w - | captagent-tls -r -`` pauses between packets: what the packets so far
    carry comes out while standard input stays open, even with PYTHONUNBUFFERED unset."""
    import os
    import select

    data = CAPTURE.read_bytes()
    env = {k: v for k, v in _env().items() if k != "PYTHONUNBUFFERED"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "captagent_tls", "-r", "-", "-k", str(KEY), "--json", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert agent.stdin is not None and agent.stdout is not None
    try:
        agent.stdin.write(data[: len(data) - 200])  # all but the last frames: the pipe stays open
        agent.stdin.flush()
        ready, _, _ = select.select([agent.stdout], [], [], 20)
        assert ready, "nothing came out while standard input was open"
        first = json.loads(os.read(agent.stdout.fileno(), 1 << 20).splitlines()[0])
        assert first["kind"] == "sip"
    finally:
        agent.kill()
        agent.wait()


def _env():
    from tests.support.cli import _env as env

    return env()


def test_truncated_capture_keeps_everything_before_the_cut(tmp_path):
    data = CAPTURE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    proc = run(["-r", str(cut), "-k", str(KEY), "--json"])
    assert proc.returncode == 0
    assert "truncated" in proc.stderr
    got = [json.loads(line)["payload"].encode() for line in proc.stdout.splitlines()]
    assert 0 < len(got) < len(expected_messages("tls12-aes128gcm-ems"))
    assert set(got) <= set(expected_messages("tls12-aes128gcm-ems"))


def test_export_keylog_lets_another_run_decrypt_without_the_key(tmp_path):
    keylog = tmp_path / "exported.keys"
    with_key = run_json(
        ["-r", str(FIXTURES / "resume-ticket.pcap"), "-k", str(KEY), "--export-keylog", str(keylog)]
    )
    lines = keylog.read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("CLIENT_RANDOM ") for line in lines)
    with_log = run_json(["-r", str(FIXTURES / "resume-ticket.pcap"), "--keylog", str(keylog)])
    assert [o["payload"] for o in with_log] == [o["payload"] for o in with_key]


# -- mistakes ------------------------------------------------------------------------------


def test_missing_capture(tmp_path):
    assert_one_line_error(run(["-r", str(tmp_path / "nope.pcap")]), "nope.pcap")


def test_not_a_capture(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a capture at all\n")
    assert_one_line_error(run(["-r", str(path)]), "not a pcap or pcapng file")


def test_missing_key_file(tmp_path):
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-k", str(tmp_path / "k.pem")]), "cannot read key file"
    )


def test_garbage_key_file(tmp_path):
    path = tmp_path / "garbage.key"
    path.write_bytes(b"\x30\x82 this is not a key")
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "garbage.key")


def test_pem_with_only_a_certificate():
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-k", str(KEYS / "server-rsa2048.crt")]), "no private key"
    )


def test_non_rsa_key_says_a_key_log_is_the_way(tmp_path):
    path = tmp_path / "ec.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "EC private key", "--keylog")


def test_encrypted_key_without_password(tmp_path):
    key = serialization.load_pem_private_key(KEY.read_bytes(), None)
    path = tmp_path / "enc.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "--key-password")
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-k", str(path), "--key-password", "no"]), "wrong password"
    )
    ok = run(["-r", str(CAPTURE), "-k", str(path), "--key-password", "s3cret", "--json", "-q"])
    assert ok.returncode == 0 and ok.stdout.count("\n") == len(
        expected_messages("tls12-aes128gcm-ems")
    )


@pytest.mark.parametrize(
    "address", ["nowhere", "10.0.0.1:70000", "ftp://h:1", "no-such-host.invalid:9060"]
)
def test_bad_collector_address(address):
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(KEY), "--hep", address]), "collector")


def test_bad_filter():
    assert_one_line_error(run(["-r", str(CAPTURE), "-f", "tcp portt 5061"]), "bad filter")


def test_malformed_key_log_lines_are_reported_by_number(tmp_path):
    keylog = tmp_path / "k.log"
    keylog.write_text("# comment\n\nCLIENT_RANDOM zz 00\nNOT_A_LABEL 00 00\n")
    proc = run(["-r", str(CAPTURE), "--keylog", str(keylog), "-q"])
    assert proc.returncode == 0
    assert "2 malformed key log line(s) ignored (line 3, 4)" in proc.stderr


def _key_in_format(tmp_path, fmt: str):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12

    key = serialization.load_pem_private_key(KEY.read_bytes(), None)
    cert = x509.load_pem_x509_certificate((KEYS / "server-rsa2048.crt").read_bytes())
    enc, fmt_ = serialization.Encoding, serialization.PrivateFormat
    none = serialization.NoEncryption()
    data = {
        "pkcs1-pem": lambda: key.private_bytes(enc.PEM, fmt_.TraditionalOpenSSL, none),
        "pkcs8-pem": lambda: key.private_bytes(enc.PEM, fmt_.PKCS8, none),
        "pkcs1-der": lambda: key.private_bytes(enc.DER, fmt_.TraditionalOpenSSL, none),
        "pkcs8-der": lambda: key.private_bytes(enc.DER, fmt_.PKCS8, none),
        "cert-then-key-bundle": lambda: (
            cert.public_bytes(enc.PEM) + key.private_bytes(enc.PEM, fmt_.PKCS8, none)
        ),
        "pkcs12": lambda: pkcs12.serialize_key_and_certificates(
            b"sip", key, cert, None, serialization.BestAvailableEncryption(b"p12pass")
        ),
        "pkcs12-no-password": lambda: pkcs12.serialize_key_and_certificates(
            b"sip", key, cert, None, none
        ),
    }[fmt]()
    path = tmp_path / f"key.{fmt}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "fmt",
    [
        "pkcs1-pem",
        "pkcs8-pem",
        "pkcs1-der",
        "pkcs8-der",
        "cert-then-key-bundle",
        "pkcs12",
        "pkcs12-no-password",
    ],
)
def test_key_formats(tmp_path, fmt):
    path = _key_in_format(tmp_path, fmt)
    extra = ["--key-password", "p12pass"] if fmt == "pkcs12" else []
    out = run_json(["-r", str(CAPTURE), "-k", str(path), *extra])
    assert sorted(o["payload"].encode() for o in out) == expected_messages("tls12-aes128gcm-ems")


def test_pkcs12_with_a_wrong_password(tmp_path):
    path = _key_in_format(tmp_path, "pkcs12")
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-k", str(path), "--key-password", "nope"]), "wrong password"
    )
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "--key-password")


def test_no_key_material_in_any_log_output(tmp_path):
    """With the most verbose logging, neither key-log secrets nor derived master secrets nor
    the private key appear on stderr."""
    exported = tmp_path / "exported.keys"
    run(["-r", str(CAPTURE), "-k", str(KEY), "--export-keylog", str(exported), "-q"])
    secrets = [line.split()[2] for line in exported.read_text().splitlines()]
    keylog = FIXTURES / "keylog-tls13-suites.keylog"
    secrets += [line.split()[2] for line in keylog.read_text().splitlines() if line.strip()]
    for args in (
        ["-r", str(CAPTURE), "-k", str(KEY)],
        ["-r", str(FIXTURES / "keylog-tls13-suites.pcap"), "--keylog", str(keylog)],
    ):
        proc = run([*args, "-vv", "--json"])
        assert proc.returncode == 0
        for secret in secrets:
            assert secret not in proc.stderr.lower()
        key_body = KEY.read_text().splitlines()[1]
        assert key_body not in proc.stderr


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_write_gives_a_pcap_that_tshark_reads_as_sip(tmp_path):
    out_file = tmp_path / "decrypted.pcap"
    ours = run_json(["-r", str(CAPTURE), "-k", str(KEY), "-w", str(out_file)])
    rows = tshark_fields(
        out_file,
        [
            "exported_pdu.ipv4_src",
            "exported_pdu.src_port",
            "exported_pdu.ipv4_dst",
            "exported_pdu.dst_port",
            "sip.Call-ID",
            "frame.time_epoch",
        ],
    )
    assert len(rows) == len(ours) == len(expected_messages("tls12-aes128gcm-ems"))
    for row, obj in zip(rows, ours, strict=True):
        assert row[:5] == [
            obj["src_ip"],
            str(obj["src_port"]),
            obj["dst_ip"],
            str(obj["dst_port"]),
            obj["call_id"],
        ]
        assert abs(float(row[5]) - obj["ts"]) < 1e-6


# -- every option, bad values: one line and a non-zero exit, or success when valid --------

BAD_VALUES = {
    "nan": "nan", "inf": "inf", "-1": "-1", "0": "0", "huge-number": "1e308",
    "huge-integer": "1" + "0" * 30, "huge-text": "x" * 70_000, "not-utf8": "\udcff",
    "empty": "",
}  # fmt: skip

#: Numeric options for which 0 is a meaningful value (key wait: do not wait; ids and protocol
#: numbers start at 0).  For every other numeric option, 0 must be refused.
ZERO_IS_VALID = {"--key-wait", "--hep-id", "--hep-ip-proto"}


def parser_options() -> list[tuple[str, argparse.Action]]:
    from captagent_tls.cli import build_parser

    found = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        found.append((max(action.option_strings, key=len), action))
    return found


OPTION_NAMES = [name for name, _ in parser_options()]
NUMERIC = {
    name
    for name, action in parser_options()
    if getattr(action.type, "option", None)
    in {dest for dest, option in OPTIONS.items() if option.kind in ("integer", "number", "size")}
}


@pytest.fixture
def stderr_logging():
    """The agent's logging goes to the (captured) stderr, as in a real run."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    yield
    root.handlers, root.level = saved[0], saved[1]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    from captagent_tls.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("value_name", list(BAD_VALUES))
@pytest.mark.parametrize("option", OPTION_NAMES)
def test_every_option_with_bad_values_ends_in_one_line(
    option, value_name, tmp_path, monkeypatch, capsys, stderr_logging
):
    monkeypatch.chdir(tmp_path)  # -w, --export-keylog and friends may create files here
    value = BAD_VALUES[value_name]
    source = [] if option in ("--read", "--interface") else ["-r", str(CAPTURE)]
    code, err = run_main([*source, "-q", option, value], capsys)
    assert "Traceback" not in err
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1, err[:2000]
        assert lines[0].startswith("captagent-tls: error:")
    if option in NUMERIC and (value_name != "0" or option not in ZERO_IS_VALID):
        assert code != 0, (option, value_name)


def test_every_option_is_checked_by_the_rules_files_use():
    """Each option that takes a value converts it with options.value_type (the rules config
    files go through), and every such rule is an option of the command line."""
    with_values = {
        action.dest: action
        for _, action in parser_options()
        if action.nargs != 0
        and action.dest not in ("config", "captagent_config")
        and not isinstance(action, argparse._CountAction)
    }
    for dest, action in with_values.items():
        assert getattr(action.type, "option", None) == dest, dest
    assert set(OPTIONS) == {
        action.dest
        for _, action in parser_options()
        if action.dest not in ("config", "captagent_config")
    }


@pytest.mark.parametrize(("args", "needle"), [
    (["--flow-timeout", "inf"], "argument --flow-timeout: expected a finite number, got inf"),
    (["--flow-timeout", "nan"], "expected a finite number, got nan"),
    (["--flow-timeout", "1e308"], "must be more than 0 and at most 86400 seconds (a day)"),
    (["--key-wait", "1e300"], "argument --key-wait: must be between 0 and 86400 seconds"),
    (["--stats-interval", "nan"], "argument --stats-interval: expected a finite number"),
    (["-B", "1000000000000"], "argument -B/--buffer-size: must be between 1 and 2097151"),
    (["-B", "-1"], "argument -B/--buffer-size: must be between 1 and 2097151"),
    (["-s", "0"], "argument -s/--snaplen: must be between 1 and 262144 bytes, got 0"),
    (["-s", "-5"], "must be between 1 and 262144 bytes, got -5"),
    (["--hep-node-name", "n" * 70_000], "70000 bytes in UTF-8, more than a HEP chunk holds"),
    (["--hep-password", "p" * 70_000], "more than a HEP chunk holds (65529)"),
    (["--key-hold-flow", "16X"], "argument --key-hold-flow: expected a size in bytes"),
    (["--key-hold-total", "0"], "argument --key-hold-total: must be between 16384"),
    (["--hep-queue", "100000,999G"], "bad HEP queue '100000,999G': from 1 byte to 64G"),
    (["--max-flow-buffer", "2G"], "must be between 1 and 1073741824 bytes"),
])  # fmt: skip
def test_the_reported_values_are_refused_in_one_line(args, needle):
    assert_one_line_error(run(["-r", str(CAPTURE), *args]), needle)


def run_bytes(args: list[bytes]) -> subprocess.CompletedProcess[str]:
    """The CLI with raw bytes on its command line, as a shell passes $'\\xff'."""
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"captagent_tls", *args],
        capture_output=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def test_hep_strings_that_are_not_utf8_are_refused_without_showing_them():
    proc = run_bytes([b"-r", bytes(CAPTURE), b"--hep-password", b"\xff"])
    assert_one_line_error(proc, "argument --hep-password: not UTF-8 text")
    proc = run_bytes([b"-r", bytes(CAPTURE), b"--hep-node-name", b"edge-\xff"])
    assert_one_line_error(proc, "argument --hep-node-name: not UTF-8 text")


def test_key_password_that_is_not_utf8_is_used_as_the_bytes_typed(tmp_path):
    key = serialization.load_pem_private_key(KEY.read_bytes(), None)
    path = tmp_path / "latin1.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"caf\xe9"),
        )
    )
    proc = run_bytes(
        [b"-r", bytes(CAPTURE), b"-k", bytes(path), b"--key-password", b"caf\xe9", b"--json", b"-q"]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == len(expected_messages("tls12-aes128gcm-ems"))


def test_no_such_interface_is_named():
    proc = run(["-i", "nosuchif0"])
    assert_one_line_error(proc, "no such interface nosuchif0 (there are: ", "lo")


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path):
    assert_one_line_error(run(["-r", str(tmp_path / "a\nb.pcap")]), "a\\nb.pcap")


def test_config_values_follow_the_same_rules(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text("[tuning]\nflow_timeout = 1e308\n")
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-c", str(config)]),
        "tuning.flow_timeout: must be more than 0 and at most 86400",
    )
    config.write_text('[keys]\nkey_hold_flow = "1M"\nkey_hold_total = 9999999999999\n')
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-c", str(config)]),
        "keys.key_hold_total: must be between 16384 and 68719476736",
    )


def test_nested_configurations_end_in_one_line(tmp_path):
    toml = tmp_path / "deep.toml"
    toml.write_text("x = " + "[" * 1000 + "]" * 1000 + "\n")
    assert_one_line_error(
        run(["-r", str(CAPTURE), "-c", str(toml)]), "deep.toml: nested too deeply"
    )
    xml = tmp_path / "deep.xml"
    xml.write_text("<document>" + "<a>" * 1000 + "</a>" * 1000 + "</document>")
    assert_one_line_error(
        run(["-r", str(CAPTURE), "--captagent-config", str(xml)]), "nested too deeply"
    )
    chain = tmp_path / "chain"
    chain.mkdir()
    for i in range(400):
        (chain / f"{i}.xml").write_text(
            '<document xmlns:xi="http://www.w3.org/2001/XInclude">'
            + (f'<xi:include href="{i + 1}.xml"/>' if i < 399 else "<module/>")
            + "</document>"
        )
    assert_one_line_error(
        run(["-r", str(CAPTURE), "--captagent-config", str(chain / "0.xml")]),
        "includes nested too deeply",
    )


def test_shared_reproducers_end_in_one_line():
    folder = REPO.parent / "shared" / "regressions"
    if not folder.is_dir():
        pytest.skip("../shared/regressions is not here")
    toml = folder / "toml-array-nested-1000.toml"
    assert_one_line_error(run(["-r", str(CAPTURE), "-c", str(toml)]), "nested too deeply")
    assert_one_line_error(
        run(["-r", str(CAPTURE), "--captagent-config", str(folder / "xml-nested-1000")]),
        "nested too deeply",
    )


def test_key_hold_options_reach_the_hold_limits():
    from captagent_tls.assembly.pipeline import pipeline_options
    from captagent_tls.cli import build_parser

    def hold(*argv: str):
        limits = pipeline_options(build_parser().parse_args(["-r", "x", *argv]), True).hold
        return limits.max_wait_s, limits.max_bytes_per_flow, limits.max_bytes_total

    assert hold() == (10.0, 16 << 20, 256 << 20)
    assert hold("--key-hold-flow", "2M", "--key-hold-total", "1G", "--key-wait", "3") == (
        3.0,
        2 << 20,
        1 << 30,
    )
    # one connection can never hold more than all of them together
    assert hold("--key-hold-flow", "512M") == (10.0, 256 << 20, 256 << 20)


def test_write_skips_messages_too_large_for_pcap_readers(tmp_path, caplog):
    """One packet longer than 262144 bytes makes Wireshark refuse the whole -w file: such a
    message is counted and left out, the others are written."""
    from captagent_tls.capture.files import CaptureReader
    from captagent_tls.message import Message
    from captagent_tls.sinks.pcapfile import PcapFileSink

    def sip(body: bytes) -> Message:
        payload = (
            b"MESSAGE sip:b@example.test SIP/2.0\r\nCall-ID: c\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        return Message(
            1_700_000_000_000_000_000,
            (b"\x0a\0\0\x01", 5060),
            (b"\x0a\0\0\x02", 5060),
            "tcp",
            payload,
            "c",
            True,
            True,
            "",
            "",
        )

    path = tmp_path / "out.pcap"
    sink = PcapFileSink(open(path, "wb"))  # noqa: SIM115 - the sink closes it
    for body in (b"small", b"x" * 300_000, b"small again"):
        sink.emit(sip(body))
    with caplog.at_level(logging.WARNING):
        sink.close()
    assert (sink.written, sink.skipped_too_large) == (2, 1)
    assert "1 SIP messages larger than 262144 bytes were not written" in caplog.text
    with CaptureReader(str(path)) as reader:
        assert [
            bytes(f.data).endswith(b"small") or bytes(f.data).endswith(b"again") for f in reader
        ] == [True, True]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args", [["--json"], [], ["-w", "/dev/full"], ["--export-keylog", "/dev/full"]]
)
def test_an_output_that_cannot_be_written_is_one_line(args):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "captagent_tls",
                "-r",
                str(CAPTURE),
                "-k",
                str(KEY),
                "-q",
                *args,
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
    assert_one_line_error(proc, "cannot write ", "No space left on device")


def test_exported_key_log_is_private_and_its_memory_bounded(tmp_path, monkeypatch):
    from captagent_tls.assembly.keys import KeyLogExporter
    from captagent_tls.tls.events import SessionSecret

    path = tmp_path / "exported.keys"
    run(["-r", str(CAPTURE), "-k", str(KEY), "-q", "--export-keylog", str(path)])
    assert path.stat().st_mode & 0o777 == 0o600  # it holds master secrets
    shared = tmp_path / "shared.keys"
    shared.write_text("")
    shared.chmod(0o644)
    proc = run(["-r", str(CAPTURE), "-k", str(KEY), "-q", "--export-keylog", str(shared)])
    assert proc.returncode == 0 and "readable or writable by group or others" in proc.stderr
    monkeypatch.setattr(KeyLogExporter, "REMEMBERED", 2)
    exporter = KeyLogExporter(str(tmp_path / "other.keys"))
    for i in (1, 2, 3, 1, 3):  # 1 was forgotten once 3 came: written again, which is harmless
        exporter.write(SessionSecret(None, bytes([i]) * 32, b"m" * 48, "rsa"))  # type: ignore[arg-type]
    exporter.close()
    lines = (tmp_path / "other.keys").read_text().splitlines()
    assert [line.split()[1][:2] for line in lines] == ["01", "02", "03", "01"]
    assert len(exporter._written) == 2
