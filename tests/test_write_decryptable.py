"""--write-decryptable: the original packets plus a Decryption Secrets Block with the secrets
of every session we decrypted.  tshark (an independent TLS implementation) is given that file
and nothing else (no key, no key log; only "decode this port as TLS" where the port is not
5061) and must show every SIP message we emitted, byte for byte."""

from __future__ import annotations

import os
import stat
import struct
from collections import Counter
from pathlib import Path

import pytest

from captagent_tls.capture.files import CaptureReader
from tests.support.cli import key_args, payload_bytes, received, run, run_json
from tests.support.groundtruth import load_groundtruth, split_sip_stream
from tests.support.oracle import tshark_decrypt, tshark_fields, tshark_path
from tests.support.paths import FIXTURE_KEYS, FIXTURES, TESTS

SHB, IDB, EPB, DSB = 0x0A0D0D0A, 1, 6, 10
TLS_KEY_LOG = 0x544C534B

SCENARIOS = [
    "tls12-aes128gcm-ems",  # RSA key exchange, port 5061
    "resume-session-id",  # RSA, then abbreviated handshakes (secrets from the session cache)
    "multi-key",  # two server keys, two ports
    "missing-key",  # one server's key is not given: its session stays out of the file
    "keylog-tls12-ecdhe",  # key log and RSA, two ports
    "keylog-tls13",  # TLS 1.3 traffic secrets, port 5063
    "keylog-tls13-resume",  # TLS 1.3 PSK resumption
    "sll2-any",  # link type 276 (Linux cooked v2)
    "ipv6",
]


def product_args(name: str) -> list[str | os.PathLike[str]]:
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    args: list[str | os.PathLike[str]] = ["-r", FIXTURES / f"{name}.pcap", *key_args(truth.keys)]
    if truth.keylog is not None:
        args += ["--keylog", truth.keylog]
    return args


def other_tls_ports(name: str) -> list[int]:
    """Ports tshark does not know as SIP over TLS: it is told to decode them as TLS."""
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    return [port for port in truth.server_ports if port != 5061]


def blocks(path: Path) -> list[tuple[int, bytes]]:
    """(type, body) of each pcapng block, read here with struct (not the product's reader)."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        assert length >= 12 and length % 4 == 0, (pos, length)
        assert struct.unpack_from("<I", data, pos + length - 4)[0] == length
        out.append((btype, data[pos + 8 : pos + length - 4]))
        pos += length
    assert pos == len(data)
    return out


def tshark_messages(path: Path, ports: list[int]) -> Counter[tuple[int, str, bytes]]:
    """The SIP messages tshark decrypts from ``path`` alone: (client port, direction, bytes)."""
    found: Counter[tuple[int, str, bytes]] = Counter()
    for stream in tshark_decrypt(path, tls_ports=ports):
        if not stream.chunks:
            continue
        client_port = int(stream.client.rsplit(":", 1)[1])
        for direction, data in (("c2s", stream.c2s), ("s2c", stream.s2c)):
            for message in split_sip_stream(data):
                found[(client_port, direction, message)] += 1
    return found


def tshark_call_ids(path: Path, ports: list[int]) -> Counter[str]:
    """The Call-ID of every SIP message tshark's SIP dissector shows."""
    decode = [
        arg
        for port in ports
        for arg in ("-d", f"tcp.port=={port},tls", "-d", f"tls.port=={port},sip")
    ]
    rows = tshark_fields(
        path, ["sip.Call-ID"], display_filter="sip", options=decode, aggregator="|"
    )
    return Counter(call_id for (line,) in rows if line.strip() for call_id in line.split("|"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_tshark_decrypts_every_message_we_emit_from_the_file_alone(tmp_path, name):
    tshark_path()
    out = tmp_path / f"{name}.pcapng"
    emitted = [
        o for o in run_json([*product_args(name), "--write-decryptable", out]) if o["kind"] == "sip"
    ]
    assert emitted
    ports = other_tls_ports(name)
    ours = received(emitted)
    assert tshark_messages(out, ports) == ours
    assert tshark_call_ids(out, ports) == Counter(o["call_id"] for o in emitted)
    # the control: the capture as it was, no keys given, opens nothing
    assert not tshark_messages(FIXTURES / f"{name}.pcap", ports)


def test_the_packets_are_the_originals_and_the_secrets_come_first(tmp_path):
    name = "keylog-tls12-ecdhe"
    out = tmp_path / "out.pcapng"
    proc = run([*product_args(name), "--write-decryptable", out, "--json"], check=True)
    types = [btype for btype, _ in blocks(out)]
    assert types[0] == SHB and types[1] == IDB
    assert types.index(DSB) < types.index(EPB) and types.count(DSB) == 1
    with CaptureReader(str(FIXTURES / f"{name}.pcap")) as a, CaptureReader(str(out)) as b:
        original = [(f.ts_ns, f.linktype, bytes(f.data)) for f in a]
        copy = [(f.ts_ns, f.linktype, bytes(f.data)) for f in b]
    assert copy == original
    # one key-log line per session decrypted, none for anything else
    (dsb,) = [body for btype, body in blocks(out) if btype == DSB]
    secrets_type, length = struct.unpack_from("<II", dsb)
    assert secrets_type == TLS_KEY_LOG
    lines = dsb[8 : 8 + length].decode("ascii").splitlines()
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    assert len(lines) == len(truth.connections)
    assert all(line.startswith("CLIENT_RANDOM ") for line in lines)
    assert f"secrets of {len(truth.connections)} TLS sessions" in proc.stderr


def test_sessions_we_could_not_decrypt_stay_out(tmp_path):
    out = tmp_path / "out.pcapng"
    run([*product_args("missing-key"), "--write-decryptable", out, "--json"], check=True)
    (dsb,) = [body for btype, body in blocks(out) if btype == DSB]
    truth = load_groundtruth(FIXTURES / "missing-key.json")
    decryptable = [c for c in truth.connections if c.expect_decrypt]
    assert len(decryptable) < len(truth.connections)
    assert len(dsb[8:].rstrip(b"\0").decode().splitlines()) == len(decryptable)


def test_tls13_secrets_are_the_traffic_secrets(tmp_path):
    out = tmp_path / "out.pcapng"
    run([*product_args("keylog-tls13"), "--write-decryptable", out, "--json"], check=True)
    (dsb,) = [body for btype, body in blocks(out) if btype == DSB]
    lines = dsb[8:].rstrip(b"\0").decode().splitlines()
    labels = [line.split()[0] for line in lines]
    traffic = {
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
    }
    assert (
        traffic
        <= set(labels)
        <= traffic | {"EXPORTER_SECRET", "EARLY_EXPORTER_SECRET", "CLIENT_EARLY_TRAFFIC_SECRET"}
    )
    assert len(labels) == len(set(labels))
    logged = (FIXTURES / "keylog-tls13.keylog").read_text().splitlines()
    assert set(lines) <= set(logged)  # as the key log said, nothing made up


def test_the_file_is_readable_by_its_owner_only(tmp_path):
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"an older file, readable by all")
    out.chmod(0o644)
    old_umask = os.umask(0)
    try:
        run(
            [*product_args("tls12-aes128gcm-ems"), "--write-decryptable", out, "--json"], check=True
        )
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert blocks(out)[0][0] == SHB
    assert "0600" in run(["--help"]).stdout.replace("\n", " ")


def test_a_filter_writes_only_the_packets_it_lets_through(tmp_path):
    out = tmp_path / "out.pcapng"
    emitted = run_json(
        [*product_args("multi-key"), "-f", "tcp port 5071", "--write-decryptable", out]
    )
    with CaptureReader(str(out)) as reader:
        frames = list(reader)
    assert frames and len(emitted) < 21
    assert tshark_messages(out, [5071]) == received(o for o in emitted if o["kind"] == "sip")
    assert all(payload_bytes(o) for o in emitted)


def test_an_unwritable_file_is_one_line(tmp_path):
    proc = run(
        [
            *product_args("tls12-aes128gcm-ems"),
            "--write-decryptable",
            tmp_path / "no" / "such" / "dir.pcapng",
        ]
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "dir.pcapng" in proc.stderr


def test_live_capture_writes_a_decryptable_file(tmp_path):
    """Live from lo: a TLS 1.3 server whose client logs its keys, and a TLS 1.2 server whose
    RSA key we hold; the file opens in tshark alone."""
    from tests.support import live

    live.require_live_capture()
    tshark_path()
    tls13_port, rsa_port = live.free_port(), live.free_port()
    tls13_server = live.TlsSipServer(tls13_port, tls13=True)
    rsa_server = live.TlsSipServer(rsa_port)
    keylog = tmp_path / "client.keys"
    keylog.write_text("")
    out = tmp_path / "live.pcapng"
    with live.Agent(
        "-f",
        f"tcp port {tls13_port} or tcp port {rsa_port}",
        "--keylog",
        str(keylog),
        "-k",
        str(live.SERVER_KEY),
        "--write-decryptable",
        str(out),
        "--json",
    ) as agent:
        calls = [
            live.sip_call(tls13_server, tls13=True, keylog=keylog, seed=1),
            live.sip_call(rsa_server, seed=2),
        ]
        assert agent.stop() == 0
    tls13_server.close()
    rsa_server.close()
    emitted = [o for o in agent.json() if o["kind"] == "sip"]
    assert live.received(emitted) == live.expected(calls)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert tshark_messages(out, [tls13_port, rsa_port]) == received(emitted)
    assert "decryptable capture: " in agent.stderr and "secrets of 2 TLS sessions" in agent.stderr


def test_with_the_key_log_export_too(tmp_path):
    """--export-keylog and --write-decryptable both get the secrets of the RSA sessions."""
    out, keys = tmp_path / "out.pcapng", tmp_path / "exported.keys"
    run(
        [
            *product_args("tls12-aes128gcm-ems"),
            "--write-decryptable",
            out,
            "--export-keylog",
            keys,
            "--json",
        ],
        check=True,
    )
    (dsb,) = [body for btype, body in blocks(out) if btype == DSB]
    written = dsb[8:].rstrip(b"\0").decode().splitlines()
    assert len(written) == 2
    assert sorted(written) == sorted(keys.read_text().splitlines())


def test_sip_over_websocket_from_kamailio(tmp_path):
    """wss (TLS 1.2 with the RSA key, TLS 1.3 with the client's key log) and ws: tshark shows
    every SIP message of the file as SIP, with no key; the capture alone shows only ws's."""
    tshark_path()
    folder = TESTS / "fixtures" / "websocket"
    out = tmp_path / "kamailio.pcapng"
    emitted = [
        o
        for o in run_json(
            [
                "-r",
                folder / "kamailio.pcap",
                "-k",
                FIXTURE_KEYS / "server-rsa2048.key",
                "--keylog",
                folder / "kamailio.keylog",
                "--write-decryptable",
                out,
            ]
        )
        if o["kind"] == "sip"
    ]
    assert {o["transport"] for o in emitted} == {"ws", "wss"}
    assert tshark_call_ids(out, []) == Counter(o["call_id"] for o in emitted)
    plain = Counter(o["call_id"] for o in emitted if o["transport"] == "ws")
    assert tshark_call_ids(folder / "kamailio.pcap", []) == plain


def test_a_full_disk_is_an_output_error_not_a_traceback(tmp_path):
    import errno

    from captagent_tls.capture import Frame
    from captagent_tls.sinks import OutputError
    from captagent_tls.sinks.decryptable import DecryptableCaptureWriter

    writer = DecryptableCaptureWriter(str(tmp_path / "out.pcapng"))

    def full(_data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer._spool.write = full  # type: ignore[method-assign]
    with pytest.raises(OutputError, match=r"out\.pcapng: No space left on device"):
        writer.frame(Frame(1, 1, b"\0" * 60))
