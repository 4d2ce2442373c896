"""Live tests on loopback: run the agent as a daemon, and real TLS peers making SIP calls."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.peers import SipFactory  # the fixture generator's SIP messages
from tests.support.cli import _env
from tests.support.paths import FIXTURE_KEYS

SERVER_KEY = FIXTURE_KEYS / "server-rsa2048.key"
SERVER_CERT = FIXTURE_KEYS / "server-rsa2048.crt"
OTHER_KEY = FIXTURE_KEYS / "server2-rsa2048.key"


def require_live_capture() -> None:
    """Skip unless we may capture on lo (root, libpcap)."""
    if os.geteuid() != 0:
        pytest.skip("live capture on lo needs root")
    try:
        import pcapy

        pcapy.create("lo").close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot capture on lo: {exc}")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """captagent-tls -i lo ... as a child process."""

    def __init__(self, *args: str, interface: str | None = "lo", ready_timeout: float = 15.0):
        self.args = [
            *(["-i", interface] if interface else []),
            "-v",
            "--stats-interval",
            "3600",
            *args,
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "captagent_tls", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            text=True,
        )
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        self._stdout_chunks: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()
        if not self._ready.wait(ready_timeout):
            self.proc.kill()
            raise RuntimeError("agent did not start:\n" + "".join(self.stderr_lines))
        time.sleep(0.3)  # libpcap is active; let the kernel start handing packets over
        self.stdout = ""

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if "capturing on" in line:
                self._ready.set()
        self._ready.set()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._stdout_chunks.append(line)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, settle: float = 0.6, timeout: float = 30.0) -> int:
        time.sleep(settle)  # let the last packets reach the capture buffer
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        self._reader.join(10)
        self._out_reader.join(10)
        self.stdout = "".join(self._stdout_chunks)
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def json(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Sent:
    """What one connection wrote, in order, per direction."""

    client_port: int
    messages: list[tuple[str, bytes]] = field(default_factory=list)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed early")
        data += chunk
    return data


class TlsSipServer:
    """A SIP-over-TLS peer: reads each client message, answers with the scripted replies."""

    def __init__(
        self,
        port: int,
        *,
        tls13: bool = False,
        key: Path = SERVER_KEY,
        cert: Path = SERVER_CERT,
        plain: bool = False,
    ):
        self.port = port
        self.plain = plain
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if tls13:
            self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        else:
            self.context.maximum_version = ssl.TLSVersion.TLSv1_2
            self.context.set_ciphers("AES256-GCM-SHA384")
        self.listener = socket.create_server(("127.0.0.1", port))
        self.scripts: dict[int, list[tuple[str, bytes]]] = {}
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, addr = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw, addr[1]), daemon=True).start()

    def _handle(self, raw: socket.socket, client_port: int) -> None:
        raw.settimeout(20)
        try:
            for _ in range(200):
                if client_port in self.scripts:
                    break
                time.sleep(0.01)
            script = self.scripts[client_port]
            conn = raw if self.plain else self.context.wrap_socket(raw, server_side=True)
            for direction, data in script:
                if direction == "c2s":
                    _recv_exact(conn, len(data))
                else:
                    conn.sendall(data)
            if isinstance(conn, ssl.SSLSocket):
                with contextlib.suppress(ssl.SSLError, OSError):
                    conn.unwrap()  # answers the client's close_notify
            else:
                while conn.recv(4096):
                    pass
        except Exception as exc:  # noqa: BLE001
            self.errors.append(repr(exc))
        finally:
            raw.close()

    def close(self) -> None:
        self.listener.close()


def client_context(
    *, tls13: bool, keylog: Path | None = None, ciphers: str = "AES256-GCM-SHA384"
) -> ssl.SSLContext:
    """A client context that trusts any server (the tests' own), TLS 1.3 or 1.2 with
    ``ciphers``, writing its key log to ``keylog`` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls13:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    if keylog is not None:
        context.keylog_filename = str(keylog)
    return context


def sip_call(
    server: TlsSipServer,
    *,
    tls13: bool = False,
    keylog: Path | None = None,
    seed: int = 0,
    plain: bool = False,
) -> Sent:
    """One TLS connection carrying one INVITE..BYE call; returns what was written."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_port = raw.getsockname()[1]
    factory = SipFactory(
        random.Random(seed), ("127.0.0.1", client_port), ("127.0.0.1", server.port)
    )
    script = [(direction, text.encode()) for direction, text in factory.invite_call()]
    server.scripts[client_port] = script
    if plain:
        conn: socket.socket = raw
    else:
        conn = client_context(tls13=tls13, keylog=keylog).wrap_socket(raw)
    for direction, data in script:
        if direction == "c2s":
            conn.sendall(data)
        else:
            _recv_exact(conn, len(data))
    if isinstance(conn, ssl.SSLSocket):
        with contextlib.suppress(ssl.SSLError, OSError):
            conn.unwrap()
    else:
        raw.shutdown(socket.SHUT_WR)
    raw.close()
    return Sent(client_port, script)


def expected(calls: Iterable[Sent]) -> list[tuple[int, str, bytes]]:
    return sorted((c.client_port, d, m) for c in calls for d, m in c.messages)


def received(out: list[dict]) -> list[tuple[int, str, bytes]]:
    from tests.support.cli import payload_bytes

    return sorted(
        (
            o["src_port"] if o["direction"] == "c2s" else o["dst_port"],
            o["direction"],
            payload_bytes(o),
        )
        for o in out
        if o["kind"] == "sip"
    )
