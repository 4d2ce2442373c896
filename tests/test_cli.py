"""The command line as a user meets it: outputs, filters, and one clear line for every mistake."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.cli import run, run_json
from support.groundtruth import load_groundtruth
from support.paths import FIXTURES

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
    proc = run(["-r", str(CAPTURE), "-k", str(KEY)])
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
    proc = run(["-r", FIXTURES / f"{name}.pcap", "--keylog", FIXTURES / f"{name}.keylog", "--json"])
    assert proc.returncode == 0
    assert "TLS events: 2 alerts, 3 key updates," in proc.stderr


def test_wrong_key_names_the_server_and_prints_nothing_decrypted():
    proc = run(["-r", str(CAPTURE), "-k", str(OTHER_KEY), "--json"])
    assert proc.returncode == 0
    assert proc.stdout == ""
    problems = [line for line in proc.stderr.splitlines() if "no key for server" in line]
    assert problems == ["captagent-tls: no key for server 127.0.0.1:5061: none of the given keys "
                        "matches its certificate"]


def test_bpf_filter_applies_to_files():
    assert run_json(["-r", str(CAPTURE), "-k", str(KEY), "-f", "tcp port 5061"])
    assert run_json(["-r", str(CAPTURE), "-k", str(KEY), "-f", "tcp port 5999"]) == []


def test_reads_standard_input():
    proc = subprocess.run([sys.executable, "-m", "captagent_tls", "-r", "-", "-k", str(KEY),
                           "--json", "-q"], input=CAPTURE.read_bytes(), capture_output=True,
                          env=_env(), check=True)
    assert len(proc.stdout.splitlines()) == len(expected_messages("tls12-aes128gcm-ems"))


def _env():
    from support.cli import _env as env

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
    with_key = run_json(["-r", str(FIXTURES / "resume-ticket.pcap"), "-k", str(KEY),
                         "--export-keylog", str(keylog)])
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
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(tmp_path / "k.pem")]),
                          "cannot read key file")


def test_garbage_key_file(tmp_path):
    path = tmp_path / "garbage.key"
    path.write_bytes(b"\x30\x82 this is not a key")
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "garbage.key")


def test_pem_with_only_a_certificate():
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(KEYS / "server-rsa2048.crt")]),
                          "no private key")


def test_non_rsa_key_says_a_key_log_is_the_way(tmp_path):
    path = tmp_path / "ec.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "EC private key",
                          "--keylog")


def test_encrypted_key_without_password(tmp_path):
    key = serialization.load_pem_private_key(KEY.read_bytes(), None)
    path = tmp_path / "enc.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret")))
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "--key-password")
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path), "--key-password", "no"]),
                          "wrong password")
    ok = run(["-r", str(CAPTURE), "-k", str(path), "--key-password", "s3cret", "--json", "-q"])
    assert ok.returncode == 0 and ok.stdout.count("\n") == len(
        expected_messages("tls12-aes128gcm-ems"))


@pytest.mark.parametrize("address", ["nowhere", "10.0.0.1:70000", "ftp://h:1",
                                     "no-such-host.invalid:9060"])
def test_bad_collector_address(address):
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(KEY), "--hep", address]),
                          "collector")


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
        "cert-then-key-bundle": lambda: cert.public_bytes(enc.PEM)
        + key.private_bytes(enc.PEM, fmt_.PKCS8, none),
        "pkcs12": lambda: pkcs12.serialize_key_and_certificates(
            b"sip", key, cert, None, serialization.BestAvailableEncryption(b"p12pass")),
        "pkcs12-no-password": lambda: pkcs12.serialize_key_and_certificates(
            b"sip", key, cert, None, none),
    }[fmt]()
    path = tmp_path / f"key.{fmt}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fmt", ["pkcs1-pem", "pkcs8-pem", "pkcs1-der", "pkcs8-der",
                                 "cert-then-key-bundle", "pkcs12", "pkcs12-no-password"])
def test_key_formats(tmp_path, fmt):
    path = _key_in_format(tmp_path, fmt)
    extra = ["--key-password", "p12pass"] if fmt == "pkcs12" else []
    out = run_json(["-r", str(CAPTURE), "-k", str(path), *extra])
    assert sorted(o["payload"].encode() for o in out) == expected_messages("tls12-aes128gcm-ems")


def test_pkcs12_with_a_wrong_password(tmp_path):
    path = _key_in_format(tmp_path, "pkcs12")
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path), "--key-password", "nope"]),
                          "wrong password")
    assert_one_line_error(run(["-r", str(CAPTURE), "-k", str(path)]), "--key-password")


def test_no_key_material_in_any_log_output(tmp_path):
    """With the most verbose logging, neither key-log secrets nor derived master secrets nor
    the private key appear on stderr."""
    exported = tmp_path / "exported.keys"
    run(["-r", str(CAPTURE), "-k", str(KEY), "--export-keylog", str(exported), "-q"])
    secrets = [line.split()[2] for line in exported.read_text().splitlines()]
    keylog = FIXTURES / "keylog-tls13-suites.keylog"
    secrets += [line.split()[2] for line in keylog.read_text().splitlines() if line.strip()]
    for args in (["-r", str(CAPTURE), "-k", str(KEY)],
                 ["-r", str(FIXTURES / "keylog-tls13-suites.pcap"), "--keylog", str(keylog)]):
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
    proc = subprocess.run(
        ["tshark", "-r", str(out_file), "-T", "fields", "-e", "exported_pdu.ipv4_src",
         "-e", "exported_pdu.src_port", "-e", "exported_pdu.ipv4_dst",
         "-e", "exported_pdu.dst_port", "-e", "sip.Call-ID", "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(rows) == len(ours) == len(expected_messages("tls12-aes128gcm-ems"))
    for row, obj in zip(rows, ours, strict=True):
        assert row[:5] == [obj["src_ip"], str(obj["src_port"]), obj["dst_ip"],
                           str(obj["dst_port"]), obj["call_id"]]
        assert abs(float(row[5]) - obj["ts"]) < 1e-6
