"""The agent as a daemon on loopback, with real TLS peers: key logs that arrive late, signals,
plain SIP.  Needs root (live capture on lo); skips otherwise."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.live import (
    OTHER_KEY,
    SERVER_KEY,
    Agent,
    TlsSipServer,
    expected,
    free_port,
    received,
    require_live_capture,
    sip_call,
)

pytestmark = pytest.mark.usefixtures("live_capture")


@pytest.fixture(scope="module")
def live_capture():
    require_live_capture()


def test_rsa_key_live_to_json():
    port = free_port()
    server = TlsSipServer(port)
    with Agent("-f", f"tcp port {port}", "-k", str(SERVER_KEY), "--json") as agent:
        calls = [sip_call(server, seed=i) for i in range(3)]
        assert agent.stop() == 0
    server.close()
    assert not server.errors
    assert received(agent.json()) == expected(calls)
    assert "TLS sessions: 3 full" in agent.stderr


@pytest.mark.parametrize("delivery", ["followed file", "udp listener", "tcp listener"])
def test_tls13_keys_that_arrive_after_the_traffic(tmp_path, delivery):
    """The client's key log reaches the agent only after its handshake and call crossed the
    wire: records wait, then come out in order, each message exactly once."""
    port = free_port()
    followed = tmp_path / "followed.keys"
    followed.write_text("# key log, still empty\n")
    listen_port = free_port(socket.SOCK_DGRAM if delivery == "udp listener" else socket.SOCK_STREAM)
    scheme = "tcp" if delivery == "tcp listener" else "udp"
    server = TlsSipServer(port, tls13=True)
    with Agent(
        "-f",
        f"tcp port {port}",
        "--keylog",
        str(followed),
        "--keylog-listen",
        f"{scheme}://127.0.0.1:{listen_port}",
        "--json",
    ) as agent:
        private_logs = [tmp_path / f"client{i}.keys" for i in range(2)]
        calls = [
            sip_call(server, tls13=True, keylog=log, seed=i) for i, log in enumerate(private_logs)
        ]
        time.sleep(0.5)  # the agent has seen every record by now, and holds them
        lines = "".join(log.read_text() for log in private_logs)
        assert "CLIENT_TRAFFIC_SECRET_0" in lines
        if delivery == "followed file":
            with followed.open("a") as fh:
                fh.write(lines)
        elif delivery == "udp listener":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for line in lines.splitlines():  # one line per datagram, as Kamailio sends
                    udp.sendto(line.encode(), ("127.0.0.1", listen_port))
        else:
            with socket.create_connection(("127.0.0.1", listen_port)) as tcp:
                tcp.sendall(lines.encode())
        assert agent.stop(settle=1.0) == 0
    server.close()
    assert received(agent.json()) == expected(calls)
    assert " 0 without keys, 0 dropped waiting for keys" in agent.stderr


def test_keys_that_never_come_are_dropped_after_the_wait_and_named(tmp_path):
    port = free_port()
    followed = tmp_path / "followed.keys"
    followed.write_text("")
    server = TlsSipServer(port, tls13=True)
    with Agent(
        "-f", f"tcp port {port}", "--keylog", str(followed), "--key-wait", "1", "--json"
    ) as agent:
        sip_call(server, tls13=True, seed=7)
        time.sleep(2.5)
        assert agent.stop() == 0
    server.close()
    assert agent.json() == []
    assert "dropped" in agent.stderr and f":{port}" in agent.stderr


def test_sighup_loads_a_new_key_for_later_connections(tmp_path):
    port = free_port()
    key = tmp_path / "server.key"
    shutil.copy(OTHER_KEY, key)  # the wrong key first
    server = TlsSipServer(port)
    with Agent("-f", f"tcp port {port}", "-k", str(key), "--json") as agent:
        sip_call(server, seed=1)
        time.sleep(0.5)
        shutil.copy(SERVER_KEY, key)
        agent.signal(signal.SIGHUP)
        time.sleep(1.0)
        later = sip_call(server, seed=2)
        assert agent.stop() == 0
    server.close()
    assert received(agent.json()) == expected([later])
    assert "no key for server" in agent.stderr


def test_sigterm_flushes_and_prints_final_stats():
    port = free_port()
    server = TlsSipServer(port)
    with Agent("-f", f"tcp port {port}", "-k", str(SERVER_KEY), "--json") as agent:
        call = sip_call(server, seed=3)
        assert agent.stop(settle=0.2) == 0
    server.close()
    assert received(agent.json()) == expected([call])
    assert "--- captagent-tls stats ---" in agent.stderr
    assert "kernel:" in agent.stderr


# -- plain SIP -------------------------------------------------------------------------------


def ethernet_ipv4_udp_fragments(
    payload: bytes, sport: int, dport: int, mtu: int = 1500, ident: int = 4242
) -> list[bytes]:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    chunk = (mtu - 20) // 8 * 8
    frames = []
    for offset in range(0, len(udp), chunk):
        piece = udp[offset : offset + chunk]
        flags = 0x2000 if offset + chunk < len(udp) else 0
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(piece),
            ident,
            flags | offset // 8,
            64,
            17,
            0,
            socket.inet_aton("127.0.0.1"),
            socket.inet_aton("127.0.0.1"),
        )
        frames.append(b"\x00" * 12 + b"\x08\x00" + header + piece)
    return frames


def write_pcap(path, frames: list[bytes]) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, frame in enumerate(frames):
            fh.write(struct.pack("<IIII", 1, i, len(frame), len(frame)) + frame)


def test_plain_sip_over_udp_with_a_fragmented_invite_and_over_tcp(tmp_path):
    if shutil.which("tcpreplay") is None:
        pytest.skip("tcpreplay is not installed")
    udp_port, tcp_port = free_port(socket.SOCK_DGRAM), free_port()
    invite = (
        b"INVITE sip:bob@example.test SIP/2.0\r\nCall-ID: frag-1\r\n"
        b"Content-Length: 4000\r\n\r\n" + b"a=x-pad:" + b"P" * 3990 + b"\r\n"
    )
    options = b"OPTIONS sip:bob@example.test SIP/2.0\r\nCall-ID: small-1\r\nl: 0\r\n\r\n"
    pcap = tmp_path / "udp.pcap"
    write_pcap(pcap, ethernet_ipv4_udp_fragments(invite, 5060, udp_port))
    server = TlsSipServer(tcp_port, plain=True)
    with Agent(
        "-f", f"udp port {udp_port} or tcp port {tcp_port} or (ip[6:2] & 0x1fff != 0)", "--json"
    ) as agent:
        subprocess.run(["tcpreplay", "-i", "lo", str(pcap)], check=True, capture_output=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(options, ("127.0.0.1", udp_port))
        call = sip_call(server, seed=5, plain=True)
        assert agent.stop() == 0
    server.close()
    out = agent.json()
    udp_messages = sorted(o["payload"].encode() for o in out if o["transport"] == "udp")
    assert udp_messages == sorted([invite, options])
    tcp_out = [o for o in out if o["transport"] == "tcp"]
    assert received(tcp_out) == expected([call])
    assert all(o["tls_version"] is None for o in out)


def test_drops_root_after_opening_the_capture_and_reading_the_keys():
    port = free_port()
    server = TlsSipServer(port)
    with Agent(
        "-f", f"tcp port {port}", "-k", str(SERVER_KEY), "--user", "nobody", "--json"
    ) as agent:
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        call = sip_call(server, seed=9)
        assert agent.stop() == 0
    server.close()
    import pwd

    assert set(uids) == {str(pwd.getpwnam("nobody").pw_uid)}
    assert received(agent.json()) == expected([call])  # the open capture keeps working
