"""TCP and TLS collectors: the queue, and a sender thread that reconnects with backoff.

The thread reconnects with exponential backoff capped at 5 s while the collector is
unreachable and sends the queue in order once it is back; at shutdown it tries again at once.
Nothing is lost to an outage as long as the queue (``--hep-queue``) holds the traffic of the
outage plus those 5 s.

What happens to packets in flight when a connection breaks
----------------------------------------------------------
HEP has no acknowledgements: a collector never writes anything back.  A successful ``send()``
only means that our kernel took the bytes.  So the sender:

1. keeps every written packet until the collector's **TCP acknowledged** it
   (:class:`~captagent_tls.sinks.hep.ledger.InFlight`).  On Linux the unacknowledged byte
   count of the socket (``SIOCOUTQ``) tells how far the collector's kernel has acknowledged our
   stream; it stays valid after a reset.  When the connection breaks, every packet not wholly
   acknowledged is put back at the head of the queue and sent again on the next connection.
   This covers a ``send()`` that raised, data still in our send buffer when the peer reset or
   vanished (host down, network cut: ``TCP_USER_TIMEOUT`` and keepalives end such
   connections), and data written just after the collector closed, which its kernel answers
   with a reset instead of an acknowledgement.
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
import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from captagent_tls.sinks.hep.collector import Collector, CollectorStats, describe_error, resolve
from captagent_tls.sinks.hep.connection import WAIT_SLICE, Broken, Connection, open_socket
from captagent_tls.sinks.hep.ledger import group_records
from captagent_tls.sinks.hep.queue import PacketQueue, QueueLimits
from captagent_tls.sinks.hep.tls_context import TlsOptions, make_ssl_context

log = logging.getLogger("captagent_tls.hep")


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


class StreamCollector(Collector):
    """TCP or TLS: the queue, and a sender thread that reconnects with backoff."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        limits: QueueLimits | None = None,
        tls: TlsOptions | None = None,
        retry: RetryPolicy | None = None,
        text: str | None = None,
    ):
        super().__init__(scheme, host, port)
        self._infos = resolve(text or self.address, host, port, socket.SOCK_STREAM)
        self.queue = PacketQueue(limits, on_full=self._queue_full)
        self.limits = self.queue.limits
        self.retry = retry or RetryPolicy()
        self._ssl: ssl.SSLContext | None = None
        self._server_name: str | None = None
        if scheme == "tls":
            options = tls or TlsOptions()
            self._ssl = make_ssl_context(options)
            self._server_name = options.server_name or host
        # -- shared with stats, guarded by the queue's condition
        self._cond = self.queue.cond
        self._send_errors = 0
        self._connect_failures = 0
        self._tls_verify_failures = 0
        self._connections = 0
        self._disconnects = 0
        self._resent = 0
        self._connected = False
        self._last_error = ""
        # -- sender thread only
        self._conn: Connection | None = None
        self._delay = self.retry.backoff_initial
        self._next_attempt = 0.0
        self._retry_at_close = False
        self._failing_since: float | None = None
        self._logged_error = ""
        self._thread = threading.Thread(target=self._run, name=f"hep {self.address}", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self.queue.closing:
            self._thread.start()

    def _queue_full(self) -> None:
        limits = self.limits
        log.warning(
            "HEP collector %s: queue full (%d packets, %d bytes): dropping new "
            "packets until it drains",
            self.address,
            limits.max_messages,
            limits.max_bytes,
        )

    @property
    def stats(self) -> CollectorStats:
        queue = self.queue
        with self._cond:
            return CollectorStats(
                sent=queue.sent,
                queued=queue.held,
                queued_bytes=queue.held_bytes,
                in_flight=queue.in_flight,
                dropped=queue.dropped,
                dropped_at_shutdown=queue.dropped_at_shutdown,
                send_errors=self._send_errors,
                connect_failures=self._connect_failures,
                tls_verify_failures=self._tls_verify_failures,
                connections=self._connections,
                reconnects=max(0, self._connections - 1),
                disconnects=self._disconnects,
                resent=self._resent,
                connected=self._connected,
                last_error=self._last_error,
            )

    def wait_closed(self, deadline: float) -> None:
        if self._thread.is_alive():
            # the thread watches the deadline itself; the grace covers one blocking call
            self._thread.join(max(0.0, deadline - time.monotonic()) + 2 * WAIT_SLICE)
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
                    self._lost(Broken(describe_error(exc)))
                self._schedule_retry(time.monotonic())
        if self._conn is not None:
            self._abort()
        self._finalize()

    def _loop(self) -> None:
        queue = self.queue
        while True:
            pending, closing, deadline = queue.wait_for_work(self.retry.idle_check)
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
                    with self._cond:
                        self._cond.wait(min(self._next_attempt, deadline) - now)
                    continue
                self._connect(deadline)
                continue
            try:
                conn.poll_peer()
                self._confirm(conn)
                if pending:
                    self._send_batch(conn)
                    self._confirm(conn)
                elif closing:
                    if conn.in_flight:
                        self._wait_acks(conn, deadline)
                    if not conn.in_flight:
                        self._conn = None
                        conn.close_gracefully(deadline)
                        with self._cond:
                            self._connected = False
                        return
            except (Broken, OSError) as exc:  # ssl.SSLError is an OSError
                broken = exc if isinstance(exc, Broken) else Broken(describe_error(exc))
                if queue.past_deadline():
                    with self._cond:
                        self._last_error = broken.reason
                    return  # _run() aborts: what is unacknowledged is dropped
                self._lost(broken)

    # connecting

    def _connect(self, deadline: float) -> None:
        end = min(time.monotonic() + self.retry.connect_timeout, deadline)
        sock: socket.socket | None = None
        try:
            sock = open_socket(
                self._addresses(), end, self.queue.shutdown_deadline, self.retry.user_timeout
            )
            conn = Connection(sock, self.queue.shutdown_deadline, self.retry.send_timeout)
            if self._ssl is not None:
                conn.handshake(self._ssl, self._server_name, end)
        except (OSError, ssl.SSLError, Broken) as exc:
            if sock is not None:
                sock.close()
            verify = isinstance(exc, ssl.SSLCertVerificationError)
            reason = exc.reason if isinstance(exc, Broken) else describe_error(exc)
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
                log.warning(
                    "HEP collector %s: cannot connect: %s (retrying, next in %.2g s)",
                    self.address,
                    reason,
                    delay,
                )
            else:
                log.debug("HEP collector %s: cannot connect: %s", self.address, reason)
            return
        self._conn = conn
        with self._cond:
            self._connections += 1
            self._connected = True
            first = self._connections == 1
        if self._failing_since is not None:
            log.warning(
                "HEP collector %s: %s after %.1f s without a connection",
                self.address,
                "connected" if first else "reconnected",
                time.monotonic() - self._failing_since,
            )
        else:
            log.info("HEP collector %s: connected", self.address)
        self._failing_since = None
        self._logged_error = ""

    def _addresses(self) -> list[tuple[Any, ...]]:
        """The collector's addresses now, or those that worked before when DNS is down."""
        with contextlib.suppress(socket.gaierror, UnicodeError):
            self._infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        return self._infos

    def _schedule_retry(self, now: float) -> float:
        retry = self.retry
        delay = self._delay * (1.0 - random.uniform(0.0, retry.backoff_jitter))
        self._next_attempt = now + delay
        self._delay = min(self._delay * 2.0, retry.backoff_max)
        return delay

    # sending and confirming

    def _send_batch(self, conn: Connection) -> None:
        batch = self.queue.take(self.retry.batch_bytes)
        if conn.tls is None:
            conn.in_flight.wrote(batch, conn.written)
            data = b"".join(batch)
        else:
            parts = [conn.tls_pending()]  # anything TLS still had to say comes first
            offset = conn.written + len(parts[0])
            done = 0
            try:
                # Packets go in records of at most 16 KiB and each is confirmed with the end of
                # its record: a collector decrypts nothing of a record it did not get whole, so
                # a record cut by a failure is sent again whole, without duplicates.
                for group in group_records(batch):
                    record = conn.seal(group)
                    parts.append(record)
                    offset += len(record)
                    conn.in_flight.wrote_record(group, offset)
                    done += len(group)
            except BaseException:
                # never written: back to the queue, behind what is in flight
                self.queue.put_back(batch[done:])
                raise
            data = b"".join(parts)
        conn.write(data)

    def _confirm(self, conn: Connection) -> None:
        """Packets the collector's TCP acknowledged are delivered: release them."""
        if not conn.in_flight:
            return
        count, size = conn.in_flight.acknowledge(conn.acknowledged())
        if count:
            self.queue.settle(count, size, delivered=True)

    def _wait_acks(self, conn: Connection, deadline: float) -> None:
        """Closing: wait (in short sleeps) until what was written is acknowledged."""
        end = min(deadline, time.monotonic() + self.retry.send_timeout)
        while conn.in_flight and time.monotonic() < end:
            conn.poll_peer()
            self._confirm(conn)
            if conn.in_flight:
                time.sleep(0.005)

    # ending connections

    def _lost(self, broken: Broken) -> None:
        """The connection broke: keep what was not acknowledged, resend it on the next one."""
        conn = self._conn
        assert conn is not None
        self._conn = None
        if broken.clean and conn.in_flight:
            # the collector closed in order; if it is still reading, let it acknowledge
            with contextlib.suppress(OSError, Broken):
                conn.drain_input()
                end = time.monotonic() + min(1.0, self.retry.send_timeout)
                while conn.in_flight and time.monotonic() < end:
                    self._confirm(conn)
                    if conn.was_reset():
                        break  # reset: what is unacknowledged now never will be
                    if conn.in_flight:
                        time.sleep(0.005)
        self._confirm(conn)
        resend = conn.in_flight.unacknowledged()
        now = time.monotonic()
        uptime = now - conn.opened_at
        self.queue.put_back(resend)
        with self._cond:
            self._resent += len(resend)
            self._disconnects += 1
            self._send_errors += not broken.clean
            self._connected = False
            self._last_error = broken.reason
        if resend or not broken.clean:
            conn.abort()  # nothing more may reach the collector from it: we send it again
        else:
            with contextlib.suppress(OSError):
                conn.drain_input()
                conn.sock.close()
        log.warning(
            "HEP collector %s: connection lost: %s%s",
            self.address,
            broken.reason,
            f"; {len(resend)} packets will be sent again" if resend else "",
        )
        self._failing_since = now  # the next connection is reported too
        if uptime >= self.retry.stable_after:
            self._delay = self.retry.backoff_initial
            self._next_attempt = now  # a long-lived connection ended: try again at once
        else:
            self._schedule_retry(now)

    def _abort(self) -> None:
        """Shutdown deadline passed: what is still unacknowledged counts as not delivered."""
        conn = self._conn
        assert conn is not None
        self._conn = None
        with contextlib.suppress(OSError):
            self._confirm(conn)
        dropped, size = conn.in_flight.forget()
        conn.abort()
        if dropped:
            self.queue.settle(dropped, size, delivered=False)
        with self._cond:
            self._connected = False

    def _finalize(self) -> None:
        """Count what is still held as dropped at shutdown (once)."""
        left = self.queue.finalize()
        with self._cond:
            self._connected = False
        if left:
            log.warning(
                "HEP collector %s: %d packets not delivered at shutdown (%s)",
                self.address,
                left,
                self._last_error or "time ran out",
            )
