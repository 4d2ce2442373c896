"""What every collector is: its interface, its counters, and the errors it reports."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from captagent_tls.sinks.hep.addresses import CollectorAddressError, format_collector
from captagent_tls.sinks.hep.queue import PacketQueue


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


def resolve(address: str, host: str, port: int, socktype: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo``, or :class:`CollectorAddressError` naming the collector ``address``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socktype)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CollectorAddressError(
            f"bad HEP collector {address!r}: cannot resolve {host}: {reason}"
        ) from None
    if not infos:
        raise CollectorAddressError(f"bad HEP collector {address!r}: {host} has no address")
    return infos


class Collector:
    """One HEP collector: a :class:`PacketQueue` and a sender thread that empties it.

    ``submit()`` never waits for the network (at most, reading a file, for room in the queue);
    ``close()`` delivers what is held within a timeout.
    """

    scheme: str
    host: str
    port: int
    queue: PacketQueue

    def __init__(self, scheme: str, host: str, port: int):
        self.scheme, self.host, self.port = scheme, host, port
        self.address = format_collector(scheme, host, port)

    def start(self) -> None:  # pragma: no cover - trivial default
        """Begin sending; construction only validated the configuration."""

    def submit(self, packet: bytes) -> bool:
        """Hand one packet over; False when it was dropped (counted in the stats)."""
        return self.queue.offer(packet)

    @property
    def stats(self) -> CollectorStats:
        raise NotImplementedError

    def begin_close(self, deadline: float) -> None:
        """Stop accepting packets; deliver what is held until ``deadline`` (monotonic)."""
        self.queue.close(deadline)

    def wait_closed(self, deadline: float) -> None:
        """Wait for :meth:`begin_close` to finish; count what is left as dropped."""
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        self.begin_close(deadline)
        self.wait_closed(deadline)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"
