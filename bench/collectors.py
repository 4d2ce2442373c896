"""The local HEP collectors the agent ships to: a UDP drain that counts datagrams, a UDP
receiver that keeps them (live.py checks each against the ground truth), a TCP collector
that counts the packets of a HEP stream (soak.py); the chunks of a HEPv3 packet, and a free
port on loopback."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time


class UdpDrain:
    """A local UDP 'collector' that reads and counts datagrams on a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # SO_RCVBUFFORCE (33 on Linux; Python has no constant) lets root pass rmem_max
        force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)
        for opt in (force, socket.SO_RCVBUF):
            if opt is None:
                continue
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
                break
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.hep3 = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        recv = self.sock.recv
        while not self._stop.is_set():
            try:
                data = recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            self.bytes += len(data)
            if data[:4] == b"HEP3":
                self.hep3 += 1

    def settle(self, quiet: float = 0.5) -> int:
        """Wait until no datagram arrived for ``quiet`` seconds; return the count so far."""
        last = -1
        while last != self.count:
            last = self.count
            time.sleep(quiet)
        return self.count

    def reset(self) -> None:
        self.settle(0.2)
        self.count = self.hep3 = self.bytes = 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class HepReceiver(UdpDrain):
    """A UdpDrain that also keeps each datagram and the time the last one arrived.

    ``poll`` (the default) reads the socket without blocking every POLL_S seconds instead of
    sleeping in recv().  On loopback the sender's sendto() runs the whole receive path,
    including waking a receiver that sleeps in recv(): measured on the 2-vCPU VM this was
    made on, that is ~30 us of the agent's CPU per datagram against ~8 us when nobody waits
    (see bench/README.md).  A collector on another host costs the agent no wake-up, so
    polling is the closer model; ``blocking=True`` gives the sleeping receiver.
    """

    POLL_S = 0.005

    def __init__(self, blocking: bool = False) -> None:
        # set before the base class starts the receiving thread
        self.datagrams: list[bytes] = []
        self.last_rx = 0.0
        self.blocking = blocking
        super().__init__()

    def _loop(self) -> None:
        recv, keep, clock = self.sock.recv, self.datagrams.append, time.perf_counter
        if self.blocking:
            while not self._stop.is_set():
                try:
                    data = recv(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                keep(data)
                self.last_rx = clock()
                self.count += 1
            return
        self.sock.setblocking(False)
        while not self._stop.is_set():
            n = 0
            while True:
                try:
                    keep(recv(65535))
                except BlockingIOError:
                    break
                except OSError:
                    return
                n += 1
            if n:
                self.last_rx = clock()
                self.count += n
            time.sleep(self.POLL_S)


def hep_chunks(datagram: bytes) -> dict[int, bytes]:
    """The chunks of one HEPv3 packet by type (vendor 0 only); empty if it is not HEPv3."""
    if datagram[:4] != b"HEP3" or int.from_bytes(datagram[4:6], "big") != len(datagram):
        return {}
    chunks: dict[int, bytes] = {}
    pos = 6
    while pos + 6 <= len(datagram):
        vendor = int.from_bytes(datagram[pos : pos + 2], "big")
        ctype = int.from_bytes(datagram[pos + 2 : pos + 4], "big")
        clen = int.from_bytes(datagram[pos + 4 : pos + 6], "big")
        if clen < 6 or pos + clen > len(datagram):
            return {}
        if vendor == 0:
            chunks[ctype] = datagram[pos + 6 : pos + clen]
        pos += clen
    return chunks if pos == len(datagram) else {}


class HepStreamCounter:
    """A HEP collector over TCP on 127.0.0.1 that counts the HEPv3 packets it receives."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.count = 0
        self.bytes = 0
        self.bad = 0  # streams that stopped being HEPv3
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        buffer = bytearray()
        with sock:
            while not self._stop.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                pos = 0
                while len(buffer) - pos >= 6:
                    total = int.from_bytes(buffer[pos + 4 : pos + 6], "big")
                    if buffer[pos : pos + 4] != b"HEP3" or total < 6:
                        self.bad += 1
                        return
                    if len(buffer) - pos < total:
                        break
                    pos += total
                    self.count += 1
                    self.bytes += total
                del buffer[:pos]

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
