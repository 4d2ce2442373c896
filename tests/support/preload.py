"""The key-log preload library under test: finding or building it, running programs under it,
and SIP-over-TLS clients that talk to them (the ground truth is what the client wrote and
what it read)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.peers import C2S, S2C, SipFactory
from tests.support.live import Sent, client_context
from tests.support.paths import TESTS
from tests.support.sip_responder import TLS12_ECDHE, read_message

RESPONDER = TESTS / "support" / "sip_responder.py"
KEYLOG_LINE = re.compile(r"[A-Z][A-Z0-9_]* [0-9a-f]{64} [0-9a-f]{32,}")
PRELOAD_VARIABLES = ("LD_PRELOAD", "SSLKEYLOGFILE", "SSLKEYLOG_UDP", "SSLKEYLOG_UDP_REMOTE")


def preload_library(tmp_factory: pytest.TempPathFactory) -> Path:
    """The package's library; built into a temporary folder when the package has none
    (a checkout that was not installed); skips when it cannot be built here."""
    from captagent_tls.preload import built_library
    from captagent_tls.preload.build import BuildError, compile_library

    library = built_library()
    if library is not None:
        return library
    try:
        return compile_library(tmp_factory.mktemp("preload") / "sslkeylog.so")
    except BuildError as exc:
        pytest.skip(f"the key-log library cannot be built here: {exc}")


def preload_env(library: Path | None, **variables: str) -> dict[str, str]:
    """This environment without any preload setting, plus LD_PRELOAD and ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in PRELOAD_VARIABLES}
    if library is not None:
        env["LD_PRELOAD"] = str(library)
    env.update(variables)
    return env


def key_lines(text: str) -> list[str]:
    """The key-log lines of a file's or datagram's text, each checked whole."""
    lines = text.split("\n")
    assert lines[-1] == "", f"does not end with a newline: {text[-80:]!r}"
    for line in lines[:-1]:
        assert KEYLOG_LINE.fullmatch(line), f"not one whole key-log line: {line!r}"
    return lines[:-1]


class Responder:
    """``sip_responder.py`` as a child process, in the environment given (the preload)."""

    def __init__(
        self, env: dict[str, str], *args: str, tls13: bool = True, cwd: Path | None = None
    ):
        argv = [sys.executable, str(RESPONDER), *(["--tls13"] if tls13 else []), *args]
        # a session of its own: its forked workers go with it (killpg) whatever happens
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.report: list[str] = []
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        while ready:
            line = self.proc.stdout.readline()
            if not line or line.startswith("listening "):
                break
            self.report.append(line.strip())
        if not line.startswith("listening "):
            self._kill()
            raise RuntimeError("the responder did not start: " + self.proc.communicate()[1])
        self.port = int(line.split()[1])
        self.stderr = ""

    def stop(self) -> str:
        """Stops it; returns what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, self.stderr = self.proc.communicate(timeout=30)
        return self.stderr

    def __enter__(self) -> Responder:
        return self

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self._kill()
            self.proc.communicate(timeout=30)


def requests(client_port: int, server_port: int, seed: int) -> list[bytes]:
    """A REGISTER, an INVITE dialog's requests (INVITE, ACK, BYE), a MESSAGE and an OPTIONS."""
    factory = SipFactory(
        random.Random(seed), ("127.0.0.1", client_port), ("127.0.0.1", server_port)
    )
    dialogs = factory.register() + factory.invite_call() + factory.message()
    return [text.encode() for direction, text in dialogs if direction == C2S] + [
        factory.options().encode()
    ]


def sip_exchange(
    port: int, *, tls13: bool, keylog: Path | None = None, seed: int = 0, ciphers: str = TLS12_ECDHE
) -> Sent:
    """One TLS connection: each request, then its answer read whole (none for ACK)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_port = raw.getsockname()[1]
    conn = client_context(tls13=tls13, keylog=keylog, ciphers=ciphers).wrap_socket(raw)
    sent = Sent(client_port)
    pending = bytearray()
    for request in requests(client_port, port, seed):
        conn.sendall(request)
        sent.messages.append((C2S, request))
        if not request.startswith(b"ACK "):
            answer = read_message(conn, pending)
            assert answer is not None, "the server closed the connection"
            sent.messages.append((S2C, answer))
    with contextlib.suppress(ssl.SSLError, OSError):
        conn.unwrap()
    raw.close()
    return sent


def exchanges(
    port: int, count: int, *, tls13: bool, parallel: int = 1, keylogs: Path | None = None
) -> list[Sent]:
    """``count`` connections, ``parallel`` at a time; client key logs in ``keylogs/N.keys``."""
    results: list[Sent | None] = [None] * count
    if keylogs is not None:
        keylogs.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []
    next_index = iter(range(count))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                keylog = keylogs / f"{index}.keys" if keylogs is not None else None
                results[index] = sip_exchange(port, tls13=tls13, keylog=keylog, seed=index)
            except BaseException as exc:  # noqa: BLE001  (reported after the join)
                errors.append(exc)
                return

    threads = [threading.Thread(target=run) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return [sent for sent in results if sent is not None]


def client_key_lines(folder: Path) -> set[str]:
    """Every line the clients' own (Python) key logs hold: the reference."""
    lines: set[str] = set()
    for path in folder.glob("*.keys"):
        lines.update(
            line for line in path.read_text().splitlines() if line and not line.startswith("#")
        )
    return lines


class UdpCollector:
    """A UDP socket on loopback that keeps every datagram it gets."""

    def __init__(self, family: int = socket.AF_INET):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, 0))
        except OSError as exc:
            self.sock.close()
            pytest.skip(f"cannot bind UDP on {host}: {exc.strerror or exc}")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        port = self.sock.getsockname()[1]
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self.datagrams: list[bytes] = []

    def drain(self, quiet: float = 0.3) -> list[bytes]:
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready:
                self.datagrams.append(self.sock.recv(65536))
                deadline = time.monotonic() + quiet
        return self.datagrams

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def udp_collector(family: int = socket.AF_INET) -> Iterator[UdpCollector]:
    collector = UdpCollector(family)
    try:
        yield collector
    finally:
        collector.close()
