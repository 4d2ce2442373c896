"""The key-log preload library (src/captagent_tls/preload/sslkeylog.c): programs that link
OpenSSL (Python's ssl, openssl s_client, Kamailio) run under it, and the key-log lines they
negotiate reach a file and UDP, whole and once each, and let captagent-tls decrypt what they
sent, offline and live.  The reference for every key-log line is the other peer's own key log
(written by OpenSSL through Python or s_client, not by the library).

Needs a C compiler and the OpenSSL headers (skips otherwise); decryption needs root (tcpdump,
live capture on lo); the Kamailio test needs kamailio and its tls module."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.peers import C2S, S2C, Tcpdump
from tests.support.cli import run, run_json
from tests.support.live import Agent, expected, free_port, received, require_live_capture
from tests.support.paths import REPO, TESTS
from tests.support.preload import (
    Responder,
    client_key_lines,
    exchanges,
    key_lines,
    preload_env,
    preload_library,
    requests,
    sip_exchange,
    udp_collector,
)
from tests.support.sip_responder import SERVER_CERT, SERVER_KEY, TLS12_ECDHE, read_message

TLS_VERSIONS = pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2-ecdhe"])
LINES_PER_HANDSHAKE = {True: 5, False: 1}  # 4 traffic secrets + exporter / CLIENT_RANDOM


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return preload_library(tmp_path_factory)


def needs_root_capture() -> None:
    require_live_capture()
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")


# -- the lines arrive -------------------------------------------------------------------------


@TLS_VERSIONS
def test_every_secret_reaches_the_file_and_udp_once(library, tmp_path, tls13):
    keys = tmp_path / "server.log"
    clients = tmp_path / "clients"
    with udp_collector() as udp:
        env = preload_env(library, SSLKEYLOGFILE=str(keys), SSLKEYLOG_UDP=udp.address)
        with Responder(env, tls13=tls13) as server:
            exchanges(server.port, 3, tls13=tls13, keylogs=clients)
            datagrams = udp.drain()
            assert server.stop() == ""
    reference = client_key_lines(clients)
    assert len(reference) == 3 * LINES_PER_HANDSHAKE[tls13]
    assert sorted(key_lines(keys.read_text())) == sorted(reference)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    per_datagram = [key_lines(d.decode()) for d in datagrams]
    assert all(len(lines) == 1 for lines in per_datagram), "one line per datagram"
    assert sorted(lines[0] for lines in per_datagram) == sorted(reference)


def test_udp_to_ipv6_loopback_and_a_udp_url(library, tmp_path):
    clients = tmp_path / "clients"
    with udp_collector(socket.AF_INET6) as udp:
        env = preload_env(library, SSLKEYLOG_UDP="udp://" + udp.address)
        with Responder(env) as server:
            exchanges(server.port, 1, tls13=True, keylogs=clients)
            datagrams = udp.drain()
            server.stop()
    assert sorted(d.decode().rstrip("\n") for d in datagrams) == sorted(client_key_lines(clients))


def test_a_relative_keylog_path_is_taken_from_where_the_server_started(library, tmp_path):
    clients = tmp_path / "clients"
    env = preload_env(library, SSLKEYLOGFILE="relative.log")
    with Responder(env, "--chdir", "/", cwd=tmp_path) as server:  # as a daemon does
        exchanges(server.port, 1, tls13=True, keylogs=clients)
        server.stop()
    assert sorted(key_lines((tmp_path / "relative.log").read_text())) == sorted(
        client_key_lines(clients)
    )


def test_a_forking_server_writes_whole_lines_from_every_process_and_survives_rotation(
    library, tmp_path
):
    keys = tmp_path / "keys.log"
    rotated = tmp_path / "keys.log.1"
    with Responder(preload_env(library, SSLKEYLOGFILE=str(keys)), "--workers", "6") as server:
        before = exchanges(server.port, 48, tls13=True, parallel=6, keylogs=tmp_path / "c1")
        keys.rename(rotated)  # what logrotate does; the next line must create keys.log again
        after = exchanges(server.port, 48, tls13=True, parallel=6, keylogs=tmp_path / "c2")
        assert server.stop() == ""
    workers = {
        re.search(rb"pid=(\d+)", data).group(1)  # type: ignore[union-attr]
        for sent in before + after
        for direction, data in sent.messages
        if direction == S2C
    }
    assert len(workers) >= 2, "the connections should have been spread over the workers"
    old, new = key_lines(rotated.read_text()), key_lines(keys.read_text())
    assert sorted(old) == sorted(client_key_lines(tmp_path / "c1"))
    assert sorted(new) == sorted(client_key_lines(tmp_path / "c2"))
    assert len(old) == len(new) == 48 * 5
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_a_threaded_server_delivers_every_line_once_to_both_destinations(library, tmp_path):
    keys = tmp_path / "keys.log"
    with udp_collector() as udp:
        env = preload_env(library, SSLKEYLOGFILE=str(keys), SSLKEYLOG_UDP=udp.address)
        with Responder(env, "--threads") as server:
            exchanges(server.port, 40, tls13=True, parallel=8, keylogs=tmp_path / "clients")
            datagrams = udp.drain()
            assert server.stop() == ""
    reference = sorted(client_key_lines(tmp_path / "clients"))
    assert len(reference) == 40 * 5
    assert sorted(key_lines(keys.read_text())) == reference
    assert sorted(d.decode().rstrip("\n") for d in datagrams) == reference


# -- the host is not disturbed ----------------------------------------------------------------


def test_the_hosts_own_key_log_callback_still_fires_and_is_what_it_reads_back(library, tmp_path):
    ours, host = tmp_path / "ours.log", tmp_path / "host.log"
    env = preload_env(library, SSLKEYLOGFILE=str(ours))
    with Responder(env, "--host-keylog", str(host), "--report-callbacks") as server:
        exchanges(server.port, 2, tls13=True, keylogs=tmp_path / "clients")
        server.stop()
    in_libssl, as_seen = server.report
    assert in_libssl == f"callback in libssl: {library.name}"  # ours is the one OpenSSL calls
    assert as_seen.startswith("callback as seen: _ssl")  # the host reads back its own
    reference = sorted(client_key_lines(tmp_path / "clients"))
    assert sorted(key_lines(ours.read_text())) == reference
    host_lines = [line for line in host.read_text().splitlines() if not line.startswith("#")]
    assert sorted(host_lines) == reference


def test_without_a_destination_nothing_is_installed_written_or_sent(library, tmp_path):
    host = tmp_path / "host.log"
    env = preload_env(library, SSLKEYLOGFILE="", SSLKEYLOG_UDP="")
    with Responder(env, "--report-callbacks", cwd=tmp_path) as server:
        exchanges(server.port, 1, tls13=True)
        assert server.stop() == ""
    # no callback at all: OpenSSL never calls into the library, so it cannot write or send
    assert server.report == ["callback in libssl: none", "callback as seen: none"]
    with Responder(env, "--host-keylog", str(host), "--report-callbacks", cwd=tmp_path) as server:
        exchanges(server.port, 1, tls13=True)
        server.stop()
    assert server.report[0].startswith("callback in libssl: _ssl")  # the host's, untouched
    assert server.report[1].startswith("callback as seen: _ssl")
    assert (
        len(
            key_lines(
                "".join(
                    line + "\n"
                    for line in host.read_text().splitlines()
                    if not line.startswith("#")
                )
            )
        )
        == 5
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.log"]


OUR_CALLBACK = r"""
import ctypes, errno, os, socket, ssl, sys, _ssl
sys.path.insert(0, sys.argv[1])
from peers import _ssl_ctx_ptr
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
libssl = ctypes.CDLL(_ssl.__file__)
libssl.SSL_CTX_get_keylog_callback.restype = ctypes.c_void_p
libssl.SSL_CTX_get_keylog_callback.argtypes = [ctypes.c_void_p]
address = libssl.SSL_CTX_get_keylog_callback(_ssl_ctx_ptr(context))
callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, use_errno=True)(address)
"""

CALL_THE_CALLBACK = (
    OUR_CALLBACK
    + r"""
descriptors = len(os.listdir("/proc/self/fd"))
for _ in range(int(sys.argv[3])):
    ctypes.set_errno(errno.EDOM)
    callback(None, sys.argv[2].encode())
    if ctypes.get_errno() != errno.EDOM:
        sys.exit(f"errno changed to {ctypes.get_errno()}")
callback(None, b"CLIENT_RANDOM " + b"ab" * 600)  # longer than any key-log line: dropped
print(len(os.listdir("/proc/self/fd")) - descriptors)
"""
)


def test_errno_is_kept_and_no_descriptor_is_left_open_even_when_delivery_fails(library, tmp_path):
    line = "CLIENT_RANDOM " + "11" * 32 + " " + "22" * 48
    fixtures = str(TESTS / "fixtures")
    with udp_collector() as udp:
        env = preload_env(
            library,
            SSLKEYLOGFILE=str(tmp_path / "no-such-folder" / "k.log"),
            SSLKEYLOG_UDP=udp.address,
        )
        child = subprocess.run(
            [sys.executable, "-c", CALL_THE_CALLBACK, fixtures, line, "100"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        datagrams = udp.drain()
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "1"  # the one UDP socket, kept for the next lines
    assert datagrams == [line.encode() + b"\n"] * 100
    keys = tmp_path / "k.log"
    child = subprocess.run(
        [sys.executable, "-c", CALL_THE_CALLBACK, fixtures, line, "3"],
        env=preload_env(library, SSLKEYLOGFILE=str(keys)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "0"  # the file is opened for each line and closed
    assert keys.read_text() == (line + "\n") * 3


TAKE_ITS_SOCKET = (
    OUR_CALLBACK
    + r"""
def sockets():
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(int(fd))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found
before = sockets()
callback(None, b"first")
ours, = sockets() - before
listener = socket.create_server(("127.0.0.1", 0))
os.close(ours)  # the host closes every descriptor, as a daemon does ...
host = socket.create_connection(listener.getsockname())  # ... and gets the number back
assert host.fileno() == ours, (host.fileno(), ours)
peer, _ = listener.accept()
callback(None, b"second")
host.sendall(b"the host's own bytes")
host.close()
print(repr(peer.recv(100)))
"""
)


def test_a_udp_socket_the_host_closed_and_reused_is_left_alone(library):
    with udp_collector() as udp:
        child = subprocess.run(
            [sys.executable, "-c", TAKE_ITS_SOCKET, str(TESTS / "fixtures")],
            env=preload_env(library, SSLKEYLOG_UDP=udp.address),
            capture_output=True,
            text=True,
            timeout=60,
        )
        datagrams = udp.drain()
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == repr(b"the host's own bytes")  # no key line in its stream
    assert datagrams == [b"first\n", b"second\n"]  # through a new socket of ours


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("10.1.2.3:5999", "not a loopback address"),
        ("localhost:5999", "the host must be an IP address"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
        ("::1:5999", "IPv6 address goes in brackets"),
    ],
)
def test_a_udp_destination_it_refuses_is_named_once_and_nothing_is_sent(library, value, complaint):
    env = preload_env(library, SSLKEYLOG_UDP=value)
    with Responder(env, "--report-callbacks") as server:
        exchanges(server.port, 1, tls13=True)
        stderr = server.stop()
    assert stderr.count("sslkeylog: ignoring SSLKEYLOG_UDP=") == 1
    assert complaint in stderr
    assert server.report == ["callback in libssl: none", "callback as seen: none"]


def test_a_remote_udp_destination_with_the_opt_in_is_taken(library):
    env = preload_env(library, SSLKEYLOG_UDP="192.0.2.1:5999", SSLKEYLOG_UDP_REMOTE="1")
    with Responder(env, "--report-callbacks") as server:
        server.stop()
    assert server.stderr == ""
    assert server.report[0] == f"callback in libssl: {library.name}"


# -- a C program: openssl s_client ------------------------------------------------------------


class _Pipe:
    """A pipe read like a socket, for read_message."""

    def __init__(self, fd: int):
        self.fd = fd

    def recv(self, size: int) -> bytes:
        return os.read(self.fd, size)


def s_client(
    library: Path, port: int, tls13: bool, env: dict[str, str], host_keys: Path
) -> tuple[list[bytes], list[bytes]]:
    """openssl s_client under the library sends the requests; returns them and the answers."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    version = ["-tls1_3"] if tls13 else ["-tls1_2", "-cipher", TLS12_ECDHE]
    sent = requests(0, port, seed=5)  # its port is not known in advance: 0 in the headers
    proc = subprocess.Popen(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            *version,
            "-quiet",
            "-no_ign_eof",
            "-nocommands",
            "-keylogfile",
            str(host_keys),
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"".join(sent))
        proc.stdin.flush()
        pending = bytearray()
        answers = []
        for _ in [r for r in sent if not r.startswith(b"ACK ")]:
            answer = read_message(_Pipe(proc.stdout.fileno()), pending)  # type: ignore[arg-type]
            assert answer is not None
            answers.append(answer)
        proc.stdin.close()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return sent, answers


@TLS_VERSIONS
def test_openssl_s_client_under_the_library_and_with_its_own_keylogfile(library, tmp_path, tls13):
    server_keys, host_keys, ours = (tmp_path / name for name in ("server", "host", "ours"))
    with udp_collector() as udp:
        env = preload_env(library, SSLKEYLOGFILE=str(ours), SSLKEYLOG_UDP=udp.address)
        with Responder(preload_env(None), "--host-keylog", str(server_keys), tls13=tls13) as server:
            sent, answers = s_client(library, server.port, tls13, env, host_keys)
            datagrams = udp.drain()
            server.stop()
    assert len(answers) == len(sent) - 1 and all(a.startswith(b"SIP/2.0 200 OK") for a in answers)
    reference = sorted(
        line for line in server_keys.read_text().splitlines() if not line.startswith("#")
    )
    assert len(reference) == LINES_PER_HANDSHAKE[tls13]
    assert sorted(key_lines(ours.read_text())) == reference
    assert (
        sorted(line for line in host_keys.read_text().splitlines() if not line.startswith("#"))
        == reference
    )  # s_client's own, still written
    assert sorted(d.decode().rstrip("\n") for d in datagrams) == reference


# -- captagent-tls decrypts with them ---------------------------------------------------------


@TLS_VERSIONS
def test_captagent_decrypts_a_capture_with_the_key_log_the_library_wrote(library, tmp_path, tls13):
    needs_root_capture()
    port = free_port()
    keys, pcap = tmp_path / "keys.log", tmp_path / "calls.pcap"
    with (
        Tcpdump(pcap, f"tcp port {port}"),
        Responder(
            preload_env(library, SSLKEYLOGFILE=str(keys)), "--port", str(port), tls13=tls13
        ) as server,
    ):
        calls = exchanges(server.port, 3, tls13=tls13)
        server.stop()
    out = run_json(["-r", pcap, "--keylog", keys])
    assert received(out) == expected(calls)
    assert {o["tls_version"] for o in out} == {"TLSv1.3" if tls13 else "TLSv1.2"}
    if not tls13:
        assert {o["cipher_suite"] for o in out} == {"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"}
    without = run(["-r", pcap, "--json"])
    assert without.returncode == 0 and without.stdout == ""  # the keys are what decrypts it


@TLS_VERSIONS
def test_captagent_decrypts_live_with_the_keys_arriving_over_udp(library, tls13):
    needs_root_capture()
    port, listen = free_port(), free_port(socket.SOCK_DGRAM)
    env = preload_env(library, SSLKEYLOG_UDP=f"127.0.0.1:{listen}")
    with (
        Agent(
            "-f", f"tcp port {port}", "--keylog-listen", f"udp://127.0.0.1:{listen}", "--json"
        ) as agent,
        Responder(env, "--port", str(port), "--workers", "2", tls13=tls13) as server,
    ):
        calls = exchanges(server.port, 4, tls13=tls13, parallel=2)
        assert agent.stop() == 0
        assert server.stop() == ""
    assert received(agent.json()) == expected(calls), agent.stderr
    assert " 0 without keys, 0 dropped waiting for keys" in agent.stderr


# -- Kamailio 5.x (Debian's, OpenSSL 3) -------------------------------------------------------

KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=3
enable_tls=yes
auto_aliases=no
listen=tls:127.0.0.1:{port}
mpath="{modules}/"
loadmodule "tls.so"
loadmodule "sl.so"
modparam("tls", "config", "{tls_cfg}")
request_route {{
    if (method == "ACK") exit;
    sl_send_reply("200", "OK");
    exit;
}}
"""

# Kamailio 5.6 has no "TLSv1.3" method: it offers 1.2 and up, and the client insists on 1.3.
KAMAILIO_TLS = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}
"""


def kamailio_modules() -> Path:
    if shutil.which("kamailio") is None:
        pytest.skip("kamailio is not installed")
    for folder in (KAMAILIO_MODULES, *Path("/usr/lib").glob("*/kamailio/modules")):
        if (folder / "tls.so").is_file() and (folder / "sl.so").is_file():
            return folder
    pytest.skip("kamailio's tls module is not installed (kamailio-tls-modules)")


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("kamailio did not listen in time")


def test_kamailio_5_under_the_library_tls13_sip_decrypted_live(library, tmp_path):
    modules = kamailio_modules()
    needs_root_capture()
    port, listen = free_port(), free_port(socket.SOCK_DGRAM)
    tls_cfg = tmp_path / "tls.cfg"
    tls_cfg.write_text(KAMAILIO_TLS.format(key=SERVER_KEY, cert=SERVER_CERT))
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, modules=modules, tls_cfg=tls_cfg))
    (tmp_path / "run").mkdir()
    keys = tmp_path / "keys.log"
    env = preload_env(library, SSLKEYLOG_UDP=f"127.0.0.1:{listen}", SSLKEYLOGFILE=str(keys))
    with Agent(
        "-f", f"tcp port {port}", "--keylog-listen", f"udp://127.0.0.1:{listen}", "--json"
    ) as agent:
        kamailio = subprocess.Popen(
            [
                "kamailio",
                "-f",
                str(cfg),
                "-DD",
                "-E",
                "-Y",
                str(tmp_path / "run"),
                "-m",
                "64",
                "-M",
                "8",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "kamailio.log", "wb"),  # noqa: SIM115
            cwd=tmp_path,
        )
        try:
            wait_for_port(port, kamailio)
            calls = [sip_exchange(port, tls13=True, seed=i) for i in range(3)]
        finally:
            kamailio.terminate()
            kamailio.wait(30)
        assert agent.stop() == 0
    log = (tmp_path / "kamailio.log").read_text(errors="replace")
    assert all(
        a.startswith(b"SIP/2.0 200 OK") and b"kamailio" in a
        for sent in calls
        for d, a in sent.messages
        if d == S2C
    ), log[-2000:]
    assert received(agent.json()) == expected(calls), log[-2000:]
    assert {o["tls_version"] for o in agent.json()} == {"TLSv1.3"}
    assert len(key_lines(keys.read_text())) == 3 * 5
    assert sum(1 for sent in calls for d, _ in sent.messages if d == C2S) == 3 * 6


# -- built and found by the package -----------------------------------------------------------


@pytest.fixture
def package_library() -> Path:
    """The library the package found (the command looks for it before anything else)."""
    from captagent_tls.preload import built_library

    found = built_library()
    if found is None:
        pytest.skip("the package's library is not built (not installed with cc and libssl-dev)")
    return found


def test_the_command_prints_the_library_and_a_dropin(package_library):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "captagent_tls.preload",
            "--service",
            "kamailio",
            "--udp",
            "127.0.0.1:5999",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=preload_env(None, PYTHONPATH=str(REPO / "src")),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "# /etc/systemd/system/kamailio.service.d/captagent-keylog.conf"
    assert lines[-2:] == [
        "[Service]",
        f"Environment=LD_PRELOAD={package_library} SSLKEYLOG_UDP=127.0.0.1:5999",
    ]
    assert all(line.startswith("#") for line in lines[:-2])


def test_the_command_checks_a_running_server(library, tmp_path):
    env = preload_env(library, SSLKEYLOG_UDP="127.0.0.1:5999")
    with Responder(env) as server:
        report = keylog_command(REPO / "src", "--check", str(server.proc.pid))
        server.stop()
    assert report.returncode == 0, report.stderr
    assert f"library loaded: {library}" in report.stdout
    assert "sends key-log lines: SSLKEYLOG_UDP=127.0.0.1:5999" in report.stdout
    assert "libssl: /" in report.stdout and "libssl.so" in report.stdout
    with Responder(preload_env(None)) as server:
        report = keylog_command(REPO / "src", "--check", str(server.proc.pid))
        server.stop()
    assert "library NOT loaded" in report.stdout and "sends key-log lines: nowhere" in report.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--udp", "10.0.0.1:5999"], "not on loopback"),
        (["--udp", "sip.example.com:5999"], "an IP address"),
        (["--file", "keys.log"], "absolute path"),
    ],
)
def test_the_command_refuses_what_the_library_would_not_take(package_library, args, complaint):
    out = keylog_command(REPO / "src", *args)
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and complaint in out.stderr


def test_the_command_with_a_file_and_a_remote_collector(package_library):
    out = keylog_command(
        REPO / "src", "--udp", "192.0.2.7:5999", "--remote", "--file", "/run/kamailio/tls.keys"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].endswith(
        " SSLKEYLOG_UDP=192.0.2.7:5999 SSLKEYLOG_UDP_REMOTE=1 SSLKEYLOGFILE=/run/kamailio/tls.keys"
    )
    assert (
        "--keylog-listen udp://192.0.2.7:5999 --keylog-listen-remote --keylog "
        "/run/kamailio/tls.keys"
    ) in out.stdout
    out = keylog_command(REPO / "src", "--file", "/run/100%/keys.log")
    assert out.stdout.splitlines()[-1].endswith(" SSLKEYLOGFILE=/run/100%%/keys.log")


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What pip installs from, without anything built in it."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(
        REPO / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info"),
    )
    return tree


def pip_install(tree: Path, target: Path, **env: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(tree),
        ],
        env=preload_env(None, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def keylog_command(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "captagent_tls.preload", *args],
        env=preload_env(None, PYTHONPATH=str(target)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pip_install_builds_the_library_and_the_command_finds_it(library, source_tree, tmp_path):
    target = tmp_path / "site"
    pip_install(source_tree, target)
    installed = target / "captagent_tls" / "preload" / "sslkeylog.so"
    assert installed.is_file()
    found = keylog_command(target, "--path")
    assert found.returncode == 0 and found.stdout == f"{installed}\n"
    with (
        udp_collector() as udp,
        Responder(preload_env(installed, SSLKEYLOG_UDP=udp.address)) as server,
    ):
        exchanges(server.port, 1, tls13=True, keylogs=tmp_path / "clients")  # it works
        datagrams = udp.drain()
        server.stop()
    assert sorted(d.decode().rstrip("\n") for d in datagrams) == sorted(
        client_key_lines(tmp_path / "clients")
    )


@pytest.mark.parametrize("no_compiler", ["CC=/bin/false", "PATH without cc"])
def test_pip_install_without_a_compiler_installs_and_the_command_says_how_to_build(
    library, source_tree, tmp_path, no_compiler
):
    target = tmp_path / "site"
    empty = tmp_path / "empty"
    empty.mkdir()
    pip_install(
        source_tree,
        target,
        **({"CC": "/bin/false"} if no_compiler.startswith("CC") else {"PATH": str(empty)}),
    )
    preload = target / "captagent_tls" / "preload"
    assert (preload / "sslkeylog.c").is_file() and not (preload / "sslkeylog.so").exists()
    refused = keylog_command(target)
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1
    assert "not built" in refused.stderr and "--build" in refused.stderr
    assert "libssl-dev" in refused.stderr
    built = keylog_command(target, "--build", "--path")  # now with the system's compiler
    assert built.returncode == 0, built.stderr
    assert built.stdout == f"{preload / 'sslkeylog.so'}\n"
    assert (preload / "sslkeylog.so").is_file()


def test_build_names_what_is_missing(tmp_path, monkeypatch):
    from captagent_tls.preload.build import BuildError, compile_library

    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    source = tmp_path / "needs_headers.c"
    source.write_text("#include <openssl/no_such_header.h>\n")
    with pytest.raises(BuildError, match="OpenSSL headers are missing.*libssl-dev"):
        compile_library(tmp_path / "x.so", source)
    monkeypatch.setenv("CC", "/no/such/compiler")
    with pytest.raises(BuildError, match="no C compiler"):
        compile_library(tmp_path / "x.so", source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["needs_headers.c"]
