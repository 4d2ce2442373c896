"""One TCP or TLS connection to a collector: a non-blocking socket, and TLS through memory
BIOs, so that every wait is a ``poll`` cut into short slices and a shutdown deadline set
meanwhile (by ``close()`` in another thread) is noticed within one slice.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from captagent_tls.sinks.hep.ledger import InFlight, acknowledged_offset

WAIT_SLICE = 0.25  # blocking waits are cut into slices so that close() is noticed
SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
READ_SIZE = 65536

ShutdownDeadline = Callable[[], float]  # monotonic; infinity while not closing


class Broken(Exception):
    """The connection is unusable; ``clean`` when the collector closed it in an orderly way."""

    def __init__(self, reason: str, clean: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


# Linux: SIOCOUTQ (== TIOCOUTQ) gives the bytes of a TCP socket not yet acknowledged.
if sys.platform.startswith("linux"):
    import fcntl
    import termios

    def unacked_bytes(sock: socket.socket) -> int | None:
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return None
        return int(struct.unpack("i", raw)[0])
else:  # pragma: no cover - other platforms: the kernel taking the bytes is all we know

    def unacked_bytes(sock: socket.socket) -> int | None:
        return None


def wait_ready(sock: socket.socket, events: int, end: float, shutdown: ShutdownDeadline) -> bool:
    """Wait until ``sock`` is ready for ``events``: False at ``end`` or at the shutdown
    deadline, whichever comes first (the deadline may be set while we wait)."""
    poller = select.poll()
    poller.register(sock, events)
    while True:
        end = min(end, shutdown())
        left = end - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(min(left, WAIT_SLICE) * 1000):
            return True


def open_socket(
    infos: list[tuple[Any, ...]], end: float, shutdown: ShutdownDeadline, user_timeout: float
) -> socket.socket:
    """A connected, tuned, non-blocking TCP socket to the first of ``infos`` that answers."""
    error: OSError = OSError("no address")
    for family, _, proto, _, sockaddr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setblocking(False)  # waits go through wait_ready(), which close() cuts short
            code = sock.connect_ex(sockaddr)
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EINTR):
                if not wait_ready(sock, select.POLLOUT, end, shutdown):
                    raise TimeoutError(errno.ETIMEDOUT, "connection timed out")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            if sock.getsockname() == sock.getpeername():
                # TCP simultaneous open with itself: nothing listens on that local port
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError as exc:
            sock.close()
            error = exc
            continue
        _tune(sock, user_timeout)
        return sock
    raise error


def _tune(sock: socket.socket, user_timeout: float) -> None:
    options: list[tuple[int, int, int]] = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for option, value in (
        ("TCP_KEEPIDLE", 15),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(user_timeout * 1000)),
    ):
        if hasattr(socket, option):  # Linux; dead peers are found sooner
            options.append((socket.IPPROTO_TCP, getattr(socket, option), value))
    for level, number, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, number, value)


class Connection:
    """A connected socket, its TLS session if any, the bytes written so far and the packets
    among them not yet acknowledged (:class:`InFlight`).  Used by the sender thread only."""

    def __init__(self, sock: socket.socket, shutdown: ShutdownDeadline, send_timeout: float):
        self.sock = sock
        self.tls: ssl.SSLObject | None = None
        self.tls_in: ssl.MemoryBIO | None = None
        self.tls_out: ssl.MemoryBIO | None = None
        self.written = 0  # bytes the kernel took, from the first byte of the connection
        self.opened_at = time.monotonic()
        self.in_flight = InFlight()
        self._shutdown = shutdown
        self._send_timeout = send_timeout

    def handshake(self, context: ssl.SSLContext, server_name: str | None, end: float) -> None:
        self.tls_in, self.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = tls = context.wrap_bio(self.tls_in, self.tls_out, server_hostname=server_name)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.write(self.tls_out.read(), end)
                data = self._read_some(end)
                if not data:
                    raise Broken(
                        "collector closed the connection during the TLS handshake"
                    ) from None
                self.tls_in.write(data)
            except ssl.SSLError:
                with contextlib.suppress(OSError, Broken):  # tell the collector why (alert)
                    self.write(self.tls_out.read(), end)
                raise
        self.write(self.tls_out.read(), end)

    def _read_some(self, end: float) -> bytes:
        while True:
            try:
                return self.sock.recv(READ_SIZE)
            except BlockingIOError:
                if not wait_ready(self.sock, select.POLLIN, end, self._shutdown):
                    raise TimeoutError("TLS handshake timed out") from None

    def write(self, data: bytes, end: float | None = None) -> None:
        """Write all of ``data``; ``written`` counts what the kernel took.  Broken when the
        collector takes nothing for ``send_timeout`` (or until ``end``), or at shutdown."""
        if not data:
            return
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                n = sock.send(view, SEND_FLAGS)
            except BlockingIOError:
                limit = end if end is not None else time.monotonic() + self._send_timeout
                if not wait_ready(sock, select.POLLOUT, limit, self._shutdown):
                    if self._shutdown() != math.inf:
                        raise Broken("shutdown deadline reached while writing") from None
                    raise Broken(
                        f"collector took no data for {self._send_timeout:g} s while we were writing"
                    ) from None
                continue
            self.written += n
            view = view[n:]

    def seal(self, packets: list[bytes]) -> bytes:
        """``packets`` as one TLS record (they fit: see ``group_records``)."""
        assert self.tls is not None and self.tls_out is not None
        self.tls.write(packets[0] if len(packets) == 1 else b"".join(packets))
        return self.tls_out.read()

    def tls_pending(self) -> bytes:
        """What TLS still has to say (an answer to a KeyUpdate, close_notify), or b""."""
        return self.tls_out.read() if self.tls_out is not None else b""

    def poll_peer(self) -> None:
        """Read what the collector sent, without blocking; Broken when it went away."""
        while True:
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                raise Broken("connection closed by the collector", clean=True)
            if self.tls is None:
                continue  # HEP collectors send nothing: ignore whatever it is
            assert self.tls_in is not None
            self.tls_in.write(data)
            try:
                while self.tls.read(READ_SIZE):
                    pass  # TLS 1.3 session tickets are consumed by the read; data is ignored
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                raise Broken(
                    "collector closed the TLS session (close_notify)", clean=True
                ) from None
        if self.tls_out is not None and self.tls_out.pending:
            self.write(self.tls_out.read())  # e.g. an answer to a KeyUpdate

    def acknowledged(self) -> int:
        """The stream offset up to which the collector's TCP acknowledged our bytes."""
        return acknowledged_offset(self.written, unacked_bytes(self.sock))

    def was_reset(self) -> bool:
        return bool(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def drain_input(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.sock.recv(READ_SIZE):
                pass

    def abort(self) -> None:
        """Close with a reset: nothing more reaches the collector from this connection."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close_gracefully(self, deadline: float) -> None:
        """Everything was acknowledged: close_notify, FIN, and wait for the collector's FIN,
        which proves that it read all we sent."""
        sock = self.sock
        try:
            if self.tls is not None:
                with contextlib.suppress(ssl.SSLError):
                    self.tls.unwrap()  # puts close_notify in tls_out; the peer's is not awaited
                self.write(self.tls_pending(), deadline)
            self.drain_input()
            sock.shutdown(socket.SHUT_WR)
            while wait_ready(
                sock, select.POLLIN, min(deadline, time.monotonic() + 1.0), self._shutdown
            ):
                if not sock.recv(READ_SIZE):
                    break
        except (OSError, Broken):
            pass
        finally:
            sock.close()
