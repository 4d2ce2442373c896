"""Delivery of encoded HEP packets to HOMER collectors over UDP, TCP and TLS.

A capture daemon must neither lose a message nor stall the capture because a collector is slow
or down, so every collector is fed through :meth:`Collector.submit`, which never blocks:

* **UDP**: one non-blocking ``sendto`` per packet, from the caller's thread.  A datagram the
  kernel refuses (``EAGAIN``, ``EMSGSIZE``, ...) is counted as a send error.  UDP itself may
  drop packets on the way; nothing can tell.
* **TCP and TLS**: a sender thread per collector behind a queue bounded in packets and in
  bytes.  When the queue is full the *new* packet is dropped and counted, so what does arrive
  is always an in-order prefix-plus-suffix of what was submitted, never reordered.  The thread
  reconnects with exponential backoff capped at 5 s while the collector is unreachable and
  sends the queue in order once it is back; at shutdown it tries again at once.  Nothing is
  lost to an outage as long as the queue (``--hep-queue``) holds the traffic of the outage
  plus those 5 s.

What happens to packets in flight when a connection breaks
----------------------------------------------------------
HEP has no acknowledgements: a collector never writes anything back.  A successful ``send()``
only means that our kernel took the bytes.  So the sender:

1. keeps every written packet until the collector's **TCP acknowledged** it.  On Linux the
   unacknowledged byte count of the socket (``SIOCOUTQ``) tells how far the collector's kernel
   has acknowledged our stream; it stays valid after a reset.  When the connection breaks,
   every packet not wholly acknowledged is put back at the head of the queue and sent again on
   the next connection.  This covers a ``send()`` that raised, data still in our send buffer
   when the peer reset or vanished (host down, network cut: ``TCP_USER_TIMEOUT`` and keepalives
   end such connections), and data written just after the collector closed, which its kernel
   answers with a reset instead of an acknowledgement.
2. checks the connection before each write, and every ``idle_check`` seconds when idle: the
   socket is read without blocking; end of file, a reset or a TLS ``close_notify`` means the
   collector went away, so nothing is written into a dead connection.  When the collector
   closed cleanly we wait (briefly) for it to acknowledge what is still in flight before
   deciding what to resend, so a collector that drains its connections on shutdown gets
   everything exactly once.
3. over TLS, writes packets in records of at most 16 KiB and confirms each packet with the end
   of its record (the collector cannot use part of a record), so the same reasoning holds on
   the encrypted byte stream.

Residual risk, which no HEP sender can remove: bytes that the collector's *kernel*
acknowledged but its *application* never read (it crashed or was killed with data in its
socket's receive buffer) are lost without a trace.  On platforms without ``SIOCOUTQ`` a
packet counts as delivered once the kernel took it, so data in our send buffer at the moment
of a failure may be lost too.  The other way round, a packet may be sent twice when the
collector read it but its acknowledgement was lost together with the connection: delivery is
at least once, duplicates are rare.

At shutdown (:meth:`Collector.close`) the queue is flushed within a deadline, then TLS
connections send ``close_notify``, the socket is half-closed and we wait (within the deadline)
for the collector to close its side, which proves that it read everything.  What could not be
delivered by the deadline is counted as dropped at shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from captagent_tls.errors import UserFacingError
from captagent_tls.net.addresses import split_url

log = logging.getLogger("captagent_tls.hep")

SCHEMES = ("udp", "tcp", "tls")


class HepConfigError(UserFacingError, ValueError):
    """A HEP output that cannot work as configured (address, CA file, limits)."""


class CollectorAddressError(HepConfigError):
    """A collector address that is malformed or cannot be resolved."""


def parse_collector(text: str) -> tuple[str, str, int]:
    """``[udp://|tcp://|tls://]HOST:PORT`` -> (scheme, host, port).  IPv6 hosts go in brackets."""
    try:
        return split_url(text, SCHEMES, default="udp")
    except ValueError as exc:
        raise CollectorAddressError(f"bad HEP collector {text!r}: {exc}") from None


def format_collector(scheme: str, host: str, port: int) -> str:
    """The canonical spelling of a collector address: ``tls://[2001:db8::1]:9061``."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class QueueLimits:
    """How much one TCP/TLS collector may hold (queued plus written but not acknowledged)."""

    max_messages: int = 100_000
    max_bytes: int = 64 << 20
    # when full, wait this long for room before dropping: 0 for live capture, which must
    # never wait; reading a file may, so that nothing is dropped just for going fast
    wait_for_room: float = 0.0

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise HepConfigError("HEP queue limits must be at least 1 message and 1 byte")


@dataclass(frozen=True)
class TlsOptions:
    """How ``tls://`` collectors are verified.

    By default the system's CAs and the host name (or IP address) of the collector address.
    ``ca_file`` trusts that CA bundle *instead* (heplify-server setups usually make their own
    CA); ``server_name`` checks the certificate against this name (and sends it as SNI) when
    the collector is addressed by IP; ``insecure`` verifies nothing.  ``cert_file`` and
    ``key_file`` present a client certificate to collectors that ask for one.
    """

    ca_file: str | None = None
    insecure: bool = False
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Reconnection backoff and the timeouts of TCP/TLS collectors (seconds)."""

    backoff_initial: float = 0.5
    # A collector that is back gets its queue within this long.  Each attempt on a collector
    # that is down costs one refused or unanswered SYN, so a short cap is cheap; a long one
    # (it was 30 s) made the queue hold that much more traffic after an outage and, at
    # shutdown, left the queue unsent while waiting for an attempt past the close deadline.
    backoff_max: float = 5.0
    backoff_jitter: float = 0.2  # each delay is shortened by up to this fraction
    stable_after: float = 10.0  # a connection that lived this long resets the backoff
    connect_timeout: float = 5.0  # TCP connect, and again the TLS handshake
    send_timeout: float = 30.0  # collector accepts no data this long: reconnect
    user_timeout: float = 30.0  # TCP_USER_TIMEOUT: data unacknowledged this long ends it
    idle_check: float = 0.25  # how often an idle connection is checked
    batch_bytes: int = 256 << 10  # most bytes written at once


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class CollectorStats:
    """A snapshot of one collector's counters (all counts are HEP packets unless noted)."""

    sent: int = 0  # delivered: TCP-acknowledged by the collector (UDP: sendto succeeded)
    queued: int = 0  # held now: waiting, plus written and not yet acknowledged
    queued_bytes: int = 0
    in_flight: int = 0  # of ``queued``: written, not yet acknowledged
    dropped: int = 0  # refused by submit() because the queue was full
    dropped_at_shutdown: int = 0  # still held when close() gave up, or submitted after it
    send_errors: int = 0  # UDP sendto failures; TCP/TLS connections that broke with an error
    connect_failures: int = 0  # failed connection attempts (TLS verification included)
    tls_verify_failures: int = 0  # of ``connect_failures``: certificate not trusted
    connections: int = 0  # successful connections (TLS: handshakes)
    reconnects: int = 0  # connections after the first
    disconnects: int = 0  # established connections that ended (error or collector closed)
    resent: int = 0  # packets written again after a connection broke
    connected: bool = False
    last_error: str = ""


def describe_error(exc: BaseException) -> str:
    """One short line for an error, good for a log and a ``last_error`` field."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- collectors


class Collector:
    """One HEP collector.  ``submit()`` never blocks; ``close()`` flushes within a timeout."""

    scheme: str
    host: str
    port: int

    def __init__(self, scheme: str, host: str, port: int):
        self.scheme, self.host, self.port = scheme, host, port
        self.address = format_collector(scheme, host, port)

    def start(self) -> None:  # pragma: no cover - trivial default
        """Begin connecting (TCP/TLS); construction only validated the configuration."""

    def submit(self, packet: bytes) -> bool:
        """Hand one packet over; False when it was dropped (counted in the stats)."""
        raise NotImplementedError

    @property
    def stats(self) -> CollectorStats:
        raise NotImplementedError

    def begin_close(self, deadline: float) -> None:
        """Stop accepting packets; deliver what is held until ``deadline`` (monotonic)."""
        raise NotImplementedError

    def wait_closed(self, deadline: float) -> None:
        """Wait for :meth:`begin_close` to finish; count what is left as dropped."""
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        self.begin_close(deadline)
        self.wait_closed(deadline)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"


def _resolve(address: str, host: str, port: int, socktype: int) -> list[tuple]:
    try:
        infos = socket.getaddrinfo(host, port, type=socktype)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CollectorAddressError(
            f"bad HEP collector {address!r}: cannot resolve {host}: {reason}") from None
    if not infos:
        raise CollectorAddressError(f"bad HEP collector {address!r}: {host} has no address")
    return infos


class UdpCollector(Collector):
    """A bounded queue and a sender thread doing one ``sendto`` per packet.

    ``sendto`` to a busy collector costs more than the rest of a message's processing; in its
    own thread it runs beside the capture (the GIL is released in the system call).  A full
    queue drops and counts, unless the limits allow waiting for room (reading a file).
    """

    def __init__(self, host: str, port: int, text: str | None = None,
                 limits: QueueLimits | None = None):
        super().__init__("udp", host, port)
        family, _, _, _, sockaddr = _resolve(text or self.address, host, port,
                                             socket.SOCK_DGRAM)[0]
        self._sockaddr = sockaddr
        self.limits = limits or QueueLimits()
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.settimeout(_WAIT_SLICE)  # a full send buffer is waited out, in slices
        with contextlib.suppress(OSError):  # room for bursts; the kernel caps it at wmem_max
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._sent = 0
        self._dropped = 0
        self._send_errors = 0
        self._dropped_at_shutdown = 0
        self._last_error = ""
        self._failing = False
        self._closing = False
        self._deadline = math.inf
        self._thread = threading.Thread(target=self._run, name=f"hep {self.address}",
                                        daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    def _room(self, size: int) -> bool:
        return (len(self._queue) < self.limits.max_messages
                and self._queued_bytes + size <= self.limits.max_bytes)

    def submit(self, packet: bytes) -> bool:
        size = len(packet)
        with self._cond:
            if self._closing:
                self._dropped_at_shutdown += 1
                return False
            if self.limits.wait_for_room and not self._room(size):
                self._cond.wait_for(lambda: self._closing or self._room(size),
                                    self.limits.wait_for_room)
            if not self._room(size) or self._closing:
                self._dropped += 1
                return False
            self._queue.append(packet)
            self._queued_bytes += size
            if len(self._queue) == 1:
                self._cond.notify_all()
        return True

    def _run(self) -> None:
        queue, sock, address = self._queue, self._sock, self._sockaddr
        while True:
            with self._cond:
                while not queue and not self._closing:
                    self._cond.wait()
                if not queue or time.monotonic() > self._deadline:
                    return
                batch = list(queue)
                queue.clear()
                self._queued_bytes = 0
                self._cond.notify_all()  # room for a submit() that waits
            for packet in batch:
                try:
                    sock.sendto(packet, address)
                except OSError as exc:
                    self._send_failed(exc)
                else:
                    self._failing = False
                    self._sent += 1

    def _send_failed(self, exc: OSError) -> None:
        self._send_errors += 1
        self._last_error = describe_error(exc)
        if not self._failing:
            self._failing = True
            log.warning("HEP collector %s: send failed: %s (counting further failures)",
                        self.address, self._last_error)

    @property
    def stats(self) -> CollectorStats:
        with self._cond:
            queued, queued_bytes = len(self._queue), self._queued_bytes
        return CollectorStats(sent=self._sent, queued=queued, queued_bytes=queued_bytes,
                              dropped=self._dropped,
                              dropped_at_shutdown=self._dropped_at_shutdown,
                              send_errors=self._send_errors, connected=not self._closing,
                              last_error=self._last_error)

    def begin_close(self, deadline: float) -> None:
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()

    def wait_closed(self, deadline: float) -> None:
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        with self._cond:
            self._dropped_at_shutdown += len(self._queue)
            self._queue.clear()
        self._sock.close()


# Linux: SIOCOUTQ (== TIOCOUTQ) gives the bytes of a TCP socket not yet acknowledged.
if sys.platform.startswith("linux"):
    import fcntl
    import termios

    def _unacked_bytes(sock: socket.socket) -> int | None:
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return None
        return struct.unpack("i", raw)[0]
else:  # pragma: no cover - other platforms: the kernel taking the bytes is all we know

    def _unacked_bytes(sock: socket.socket) -> int | None:
        return None


_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_WAIT_SLICE = 0.25  # blocking waits are cut into slices so that close() is noticed


TLS_RECORD = 16384  # the largest TLS plaintext record


def _records(packets: list[bytes]) -> list[list[bytes]]:
    """Groups of consecutive packets that fit in one TLS record (a bigger packet alone)."""
    groups: list[list[bytes]] = []
    group: list[bytes] = []
    size = 0
    for packet in packets:
        if group and size + len(packet) > TLS_RECORD:
            groups.append(group)
            group, size = [], 0
        group.append(packet)
        size += len(packet)
    if group:
        groups.append(group)
    return groups


class _Broken(Exception):
    """The connection is unusable; ``clean`` when the collector closed it in an orderly way."""

    def __init__(self, reason: str, clean: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


@dataclass
class _Connection:
    sock: socket.socket
    tls: ssl.SSLObject | None = None
    tls_in: ssl.MemoryBIO | None = None
    tls_out: ssl.MemoryBIO | None = None
    written: int = 0  # bytes the kernel took, from the first byte of the connection
    opened_at: float = 0.0
    inflight: deque[tuple[int, bytes]] = field(default_factory=deque)  # (end offset, packet)


class StreamCollector(Collector):
    """TCP or TLS: a bounded queue and a sender thread that reconnects with backoff."""

    def __init__(self, scheme: str, host: str, port: int, *, limits: QueueLimits | None = None,
                 tls: TlsOptions | None = None, retry: RetryPolicy | None = None,
                 text: str | None = None):
        super().__init__(scheme, host, port)
        self._infos = _resolve(text or self.address, host, port, socket.SOCK_STREAM)
        self.limits = limits or QueueLimits()
        self.retry = retry or RetryPolicy()
        self._ssl: ssl.SSLContext | None = None
        self._server_name: str | None = None
        if scheme == "tls":
            options = tls or TlsOptions()
            self._ssl = make_ssl_context(options)
            self._server_name = options.server_name or host
        self._cond = threading.Condition(threading.Lock())
        # -- shared with submit() and stats, guarded by _cond
        self._queue: deque[bytes] = deque()
        self._held = 0  # queue + in flight
        self._held_bytes = 0
        self._in_flight = 0
        self._sent = 0
        self._dropped = 0
        self._dropped_at_shutdown = 0
        self._send_errors = 0
        self._connect_failures = 0
        self._tls_verify_failures = 0
        self._connections = 0
        self._disconnects = 0
        self._resent = 0
        self._connected = False
        self._last_error = ""
        self._dropping = False
        self._closing = False
        self._deadline = math.inf
        self._finalized = False
        # -- sender thread only
        self._conn: _Connection | None = None
        self._delay = self.retry.backoff_initial
        self._next_attempt = 0.0
        self._retry_at_close = False
        self._failing_since: float | None = None
        self._logged_error = ""
        self._thread = threading.Thread(target=self._run, name=f"hep {self.address}",
                                         daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    # -- caller side ---------------------------------------------------------------------

    def submit(self, packet: bytes) -> bool:
        size = len(packet)
        limits = self.limits
        with self._cond:
            if self._closing:
                self._dropped_at_shutdown += 1
                return False
            if limits.wait_for_room and not (
                self._held < limits.max_messages and self._held_bytes + size <= limits.max_bytes
            ):
                self._cond.wait_for(
                    lambda: self._closing or (self._held < limits.max_messages
                                              and self._held_bytes + size <= limits.max_bytes),
                    limits.wait_for_room)
            if self._held < limits.max_messages and self._held_bytes + size <= limits.max_bytes:
                self._queue.append(packet)
                self._held += 1
                self._held_bytes += size
                self._dropping = False
                if len(self._queue) == 1:
                    self._cond.notify()
                return True
            self._dropped += 1
            first = not self._dropping
            self._dropping = True
        if first:
            log.warning("HEP collector %s: queue full (%d packets, %d bytes): dropping new "
                        "packets until it drains", self.address, limits.max_messages,
                        limits.max_bytes)
        return False

    @property
    def stats(self) -> CollectorStats:
        with self._cond:
            return CollectorStats(
                sent=self._sent, queued=self._held, queued_bytes=self._held_bytes,
                in_flight=self._in_flight, dropped=self._dropped,
                dropped_at_shutdown=self._dropped_at_shutdown, send_errors=self._send_errors,
                connect_failures=self._connect_failures,
                tls_verify_failures=self._tls_verify_failures, connections=self._connections,
                reconnects=max(0, self._connections - 1), disconnects=self._disconnects,
                resent=self._resent, connected=self._connected, last_error=self._last_error)

    def begin_close(self, deadline: float) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()

    def wait_closed(self, deadline: float) -> None:
        if self._thread.is_alive():
            # the thread watches the deadline itself; the grace covers one blocking call
            self._thread.join(max(0.0, deadline - time.monotonic()) + 2 * _WAIT_SLICE)
        self._finalize()

    # -- sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                break
            except Exception as exc:  # a bug: log it, keep the packets, carry on
                log.exception("HEP collector %s: sender error", self.address)
                if self._conn is not None:
                    self._lost(_Broken(describe_error(exc)))
                self._schedule_retry(time.monotonic())
        if self._conn is not None:
            self._abort()
        self._finalize()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                if not self._queue and not self._closing:
                    cond.wait(self.retry.idle_check)
                pending = len(self._queue)
                closing, deadline = self._closing, self._deadline
            now = time.monotonic()
            if closing and now >= deadline:
                return
            conn = self._conn
            if conn is None:
                if closing and not pending:
                    return
                if closing and not self._retry_at_close:
                    # shutting down with packets held: the collector may be back, and there is
                    # only until the deadline to find out; try now, then at the first delays
                    self._retry_at_close = True
                    self._delay = self.retry.backoff_initial
                    self._next_attempt = now
                if now < self._next_attempt:
                    with cond:
                        cond.wait(min(self._next_attempt, deadline) - now)
                    continue
                self._connect(deadline)
                continue
            try:
                self._poll_peer(conn)
                self._confirm(conn)
                if pending:
                    self._send_batch(conn)
                    self._confirm(conn)
                elif closing:
                    if conn.inflight:
                        self._wait_acks(conn, deadline)
                    if not conn.inflight:
                        self._close_gracefully(conn, deadline)
                        return
            except (_Broken, OSError) as exc:  # ssl.SSLError is an OSError
                broken = exc if isinstance(exc, _Broken) else _Broken(describe_error(exc))
                with cond:
                    if self._closing and time.monotonic() >= self._deadline:
                        self._last_error = broken.reason
                        return  # _run() aborts: what is unacknowledged is dropped
                self._lost(broken)

    # connecting

    def _connect(self, deadline: float) -> None:
        timeout = self.retry.connect_timeout
        end = min(time.monotonic() + timeout, deadline)
        sock: socket.socket | None = None
        try:
            sock = self._open_socket(end)
            conn = _Connection(sock, opened_at=time.monotonic())
            if self._ssl is not None:
                self._handshake(conn, end)
        except (OSError, ssl.SSLError, _Broken) as exc:
            if sock is not None:
                sock.close()
            verify = isinstance(exc, ssl.SSLCertVerificationError)
            reason = exc.reason if isinstance(exc, _Broken) else describe_error(exc)
            now = time.monotonic()
            with self._cond:
                self._connect_failures += 1
                self._tls_verify_failures += verify
                self._last_error = reason
            if self._failing_since is None:
                self._failing_since = now
            delay = self._schedule_retry(now)
            if reason != self._logged_error:
                self._logged_error = reason
                log.warning("HEP collector %s: cannot connect: %s (retrying, next in %.2g s)",
                            self.address, reason, delay)
            else:
                log.debug("HEP collector %s: cannot connect: %s", self.address, reason)
            return
        self._conn = conn
        with self._cond:
            self._connections += 1
            self._connected = True
            first = self._connections == 1
        if self._failing_since is not None:
            log.warning("HEP collector %s: %s after %.1f s without a connection", self.address,
                        "connected" if first else "reconnected",
                        time.monotonic() - self._failing_since)
        else:
            log.info("HEP collector %s: connected", self.address)
        self._failing_since = None
        self._logged_error = ""

    def _schedule_retry(self, now: float) -> float:
        retry = self.retry
        delay = self._delay * (1.0 - random.uniform(0.0, retry.backoff_jitter))
        self._next_attempt = now + delay
        self._delay = min(self._delay * 2.0, retry.backoff_max)
        return delay

    def _open_socket(self, end: float) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._infos = infos
        except (socket.gaierror, UnicodeError):
            infos = self._infos  # DNS down: the addresses that worked before
        error: OSError = OSError("no address")
        for family, _, proto, _, sockaddr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            try:
                sock.setblocking(False)  # waits go through _wait(), which close() cuts short
                code = sock.connect_ex(sockaddr)
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EINTR):
                    if not self._wait(sock, select.POLLOUT, end):
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
            self._tune(sock)
            return sock
        raise error

    def _tune(self, sock: socket.socket) -> None:
        options: list[tuple[int, int, int]] = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                                               (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        for option, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3),
                              ("TCP_USER_TIMEOUT", int(self.retry.user_timeout * 1000))):
            if hasattr(socket, option):  # Linux; dead peers are found sooner
                options.append((socket.IPPROTO_TCP, getattr(socket, option), value))
        for level, number, value in options:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, number, value)

    def _handshake(self, conn: _Connection, end: float) -> None:
        assert self._ssl is not None
        conn.tls_in, conn.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn.tls = self._ssl.wrap_bio(conn.tls_in, conn.tls_out,
                                      server_hostname=self._server_name)
        while True:
            try:
                conn.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._write(conn, conn.tls_out.read(), end)
                data = self._read_some(conn.sock, end)
                if not data:
                    raise _Broken(
                        "collector closed the connection during the TLS handshake") from None
                conn.tls_in.write(data)
            except ssl.SSLError:
                with contextlib.suppress(OSError, _Broken):  # tell the collector why (alert)
                    self._write(conn, conn.tls_out.read(), end)
                raise
        self._write(conn, conn.tls_out.read(), end)

    # reading and writing (non-blocking socket, waits cut into slices)

    def _wait(self, sock: socket.socket, events: int, end: float) -> bool:
        poller = select.poll()
        poller.register(sock, events)
        while True:
            with self._cond:
                end = min(end, self._deadline)
            left = end - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(min(left, _WAIT_SLICE) * 1000):
                return True

    def _read_some(self, sock: socket.socket, end: float) -> bytes:
        while True:
            try:
                return sock.recv(65536)
            except BlockingIOError:
                if not self._wait(sock, select.POLLIN, end):
                    raise TimeoutError("TLS handshake timed out") from None

    def _write(self, conn: _Connection, data: bytes, end: float | None = None) -> None:
        """Write all of ``data``; ``conn.written`` counts what the kernel took."""
        if not data:
            return
        view = memoryview(data)
        sock = conn.sock
        while view:
            try:
                n = sock.send(view, _SEND_FLAGS)
            except BlockingIOError:
                limit = end if end is not None else time.monotonic() + self.retry.send_timeout
                if not self._wait(sock, select.POLLOUT, limit):
                    with self._cond:
                        closing = self._closing
                    if closing:
                        raise _Broken("shutdown deadline reached while writing") from None
                    raise _Broken(f"collector took no data for {self.retry.send_timeout:g} s "
                                  "while we were writing") from None
                continue
            conn.written += n
            view = view[n:]

    def _poll_peer(self, conn: _Connection) -> None:
        """Read what the collector sent, without blocking; _Broken when it went away."""
        while True:
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                raise _Broken("connection closed by the collector", clean=True)
            if conn.tls is None:
                continue  # HEP collectors send nothing: ignore whatever it is
            assert conn.tls_in is not None
            conn.tls_in.write(data)
            try:
                while conn.tls.read(65536):
                    pass  # TLS 1.3 session tickets are consumed by the read; data is ignored
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                raise _Broken("collector closed the TLS session (close_notify)",
                              clean=True) from None
        if conn.tls_out is not None and conn.tls_out.pending:
            self._write(conn, conn.tls_out.read())  # e.g. an answer to a KeyUpdate

    def _send_batch(self, conn: _Connection) -> None:
        batch: list[bytes] = []
        size = 0
        limit = self.retry.batch_bytes
        with self._cond:
            queue = self._queue
            while queue and (size < limit or not batch):
                packet = queue.popleft()
                batch.append(packet)
                size += len(packet)
            self._in_flight += len(batch)
        offset = conn.written
        if conn.tls is None:
            for packet in batch:
                offset += len(packet)
                conn.inflight.append((offset, packet))
            data = b"".join(batch)
        else:
            assert conn.tls_out is not None
            parts = [conn.tls_out.read()]  # anything TLS still had to say comes first
            offset += len(parts[0])
            done = 0
            try:
                # Packets go in records of at most 16 KiB and each is confirmed with the end of
                # its record: a collector decrypts nothing of a record it did not get whole, so
                # a record cut by a failure is sent again whole, without duplicates.
                for group in _records(batch):
                    conn.tls.write(group[0] if len(group) == 1 else b"".join(group))
                    record = conn.tls_out.read()
                    parts.append(record)
                    offset += len(record)
                    conn.inflight.extend((offset, packet) for packet in group)
                    done += len(group)
            except BaseException:
                rest = batch[done:]  # never written: back to the queue, behind the in-flight
                with self._cond:
                    self._in_flight -= len(rest)
                    self._queue.extendleft(reversed(rest))
                raise
            data = b"".join(parts)
        self._write(conn, data)

    def _acked_offset(self, conn: _Connection) -> int:
        unacked = _unacked_bytes(conn.sock)
        return conn.written if unacked is None else conn.written - unacked

    def _confirm(self, conn: _Connection) -> None:
        """Packets the collector's TCP acknowledged are delivered: release them."""
        inflight = conn.inflight
        if not inflight:
            return
        acked = self._acked_offset(conn)
        count = size = 0
        while inflight and inflight[0][0] <= acked:
            size += len(inflight.popleft()[1])
            count += 1
        if count:
            self._release(count, size, delivered=True)

    def _release(self, count: int, size: int, delivered: bool) -> None:
        with self._cond:
            self._in_flight -= count
            if self._finalized:
                return
            self._held -= count
            self._held_bytes -= size
            self._cond.notify_all()  # room for a submit() that waits
            if delivered:
                self._sent += count
            else:
                self._dropped_at_shutdown += count

    def _wait_acks(self, conn: _Connection, deadline: float) -> None:
        """Closing: wait (in short sleeps) until what was written is acknowledged."""
        end = min(deadline, time.monotonic() + self.retry.send_timeout)
        while conn.inflight and time.monotonic() < end:
            self._poll_peer(conn)
            self._confirm(conn)
            if conn.inflight:
                time.sleep(0.005)

    # ending connections

    def _lost(self, broken: _Broken) -> None:
        """The connection broke: keep what was not acknowledged, resend it on the next one."""
        conn = self._conn
        assert conn is not None
        self._conn = None
        if broken.clean and conn.inflight:
            # the collector closed in order; if it is still reading, let it acknowledge
            with contextlib.suppress(OSError, _Broken):
                self._drain_input(conn)
                end = time.monotonic() + min(1.0, self.retry.send_timeout)
                while conn.inflight and time.monotonic() < end:
                    self._confirm(conn)
                    if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        break  # reset: what is unacknowledged now never will be
                    if conn.inflight:
                        time.sleep(0.005)
        self._confirm(conn)
        resend = [packet for _, packet in conn.inflight]
        conn.inflight.clear()
        now = time.monotonic()
        uptime = now - conn.opened_at
        with self._cond:
            self._in_flight -= len(resend)
            self._queue.extendleft(reversed(resend))
            self._resent += len(resend)
            self._disconnects += 1
            self._send_errors += not broken.clean
            self._connected = False
            self._last_error = broken.reason
        if resend or not broken.clean:
            # nothing more may reach the collector from this connection: we send it again
            self._abort_socket(conn.sock)
        else:
            with contextlib.suppress(OSError):
                self._drain_input(conn)
                conn.sock.close()
        log.warning("HEP collector %s: connection lost: %s%s", self.address, broken.reason,
                    f"; {len(resend)} packets will be sent again" if resend else "")
        self._failing_since = now  # the next connection is reported too
        if uptime >= self.retry.stable_after:
            self._delay = self.retry.backoff_initial
            self._next_attempt = now  # a long-lived connection ended: try again at once
        else:
            self._schedule_retry(now)

    def _drain_input(self, conn: _Connection) -> None:
        with contextlib.suppress(BlockingIOError):
            while conn.sock.recv(65536):
                pass

    def _abort_socket(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _abort(self) -> None:
        """Shutdown deadline passed: what is still unacknowledged counts as not delivered."""
        conn = self._conn
        assert conn is not None
        self._conn = None
        with contextlib.suppress(OSError):
            self._confirm(conn)
        dropped = len(conn.inflight)
        size = sum(len(p) for _, p in conn.inflight)
        conn.inflight.clear()
        self._abort_socket(conn.sock)
        if dropped:
            self._release(dropped, size, delivered=False)
        with self._cond:
            self._connected = False

    def _close_gracefully(self, conn: _Connection, deadline: float) -> None:
        """Everything was acknowledged: close_notify, FIN, and wait for the collector's FIN."""
        self._conn = None
        sock = conn.sock
        try:
            if conn.tls is not None:
                assert conn.tls_out is not None
                with contextlib.suppress(ssl.SSLError):
                    conn.tls.unwrap()  # puts close_notify in tls_out; the peer's is not awaited
                self._write(conn, conn.tls_out.read(), deadline)
            self._drain_input(conn)
            sock.shutdown(socket.SHUT_WR)
            # the collector closing its side proves that it read all we sent
            while self._wait(sock, select.POLLIN, min(deadline, time.monotonic() + 1.0)):
                if not sock.recv(65536):
                    break
        except (OSError, _Broken):
            pass
        finally:
            sock.close()
            with self._cond:
                self._connected = False

    def _finalize(self) -> None:
        """Count what is still held as dropped at shutdown (once)."""
        with self._cond:
            if self._finalized:
                return
            left = self._held
            self._dropped_at_shutdown += left
            self._held = self._held_bytes = 0
            self._queue.clear()
            self._finalized = True
            self._connected = False
        if left:
            log.warning("HEP collector %s: %d packets not delivered at shutdown (%s)",
                        self.address, left, self._last_error or "time ran out")


def make_ssl_context(options: TlsOptions) -> ssl.SSLContext:
    if options.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=options.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise HepConfigError(
                f"cannot load HEP CA file {options.ca_file}: {describe_error(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.cert_file:
        try:
            context.load_cert_chain(options.cert_file, options.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise HepConfigError(f"cannot load HEP client certificate {options.cert_file}: "
                                 f"{describe_error(exc)}") from None
    return context


def open_collector(address: str, *, limits: QueueLimits | None = None,
                   tls: TlsOptions | None = None, retry: RetryPolicy | None = None,
                   start: bool = True) -> Collector:
    """A collector for ``[udp://|tcp://|tls://]HOST:PORT``.

    Raises :class:`CollectorAddressError` (a :class:`HepConfigError`) for a malformed or
    unresolvable address and :class:`HepConfigError` for unusable TLS files, before any thread
    starts.  With ``start=False`` nothing is sent until :meth:`Collector.start`.
    """
    scheme, host, port = parse_collector(address)
    collector: Collector
    if scheme == "udp":
        collector = UdpCollector(host, port, text=address, limits=limits)
    else:
        collector = StreamCollector(scheme, host, port, limits=limits, tls=tls, retry=retry,
                                    text=address)
    if start:
        collector.start()
    return collector
