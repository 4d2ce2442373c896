"""Where key-log lines come from while the agent runs: files that are still being written
(followed like ``tail -F``, through truncation and rotation) and network listeners
(``udp://`` and ``tcp://``, one or more lines per datagram or stream).

Kamailio's tls module (``keylog_mode`` with the peer bit, ``keylog_peer``) sends each key-log
line as one UDP datagram: that is the sender the UDP listener is built for.  Key-log lines
are secrets in transit, so listeners bind to loopback unless told otherwise.

Anyone who can reach a listener (any local process, on loopback) can send it anything, so
everything here is bounded: a line (``MAX_LINE``), what a followed file is read in one poll,
the datagrams taken in one turn, the TCP connections (all together, per source address, and
in idle time: a new connection evicts the one idle longest rather than being refused), and
the warnings about malformed lines (the first few, then a periodic count).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from captagent_tls.errors import UserFacingError
from captagent_tls.net.addresses import split_url
from captagent_tls.tls.keylog import KeyLogResult, load_key_log
from captagent_tls.tls.keys import KeySourceStats, KeyStore

__all__ = ["KeyLogFile", "KeyLogListener", "KeySourceError", "KeySourceStats", "ListenerLimits"]

log = logging.getLogger("captagent_tls")

MAX_LINE = 4096  # a key-log line is < 300 bytes (1,100 with a 512-byte pre-master); not longer
READ_CHUNK = 1 << 20  # a followed file is read this much at a time...
MAX_READ_PER_POLL = 16 << 20  # ...and this much per poll at most: the rest waits for the next
MAX_CLIENTS = 64  # TCP connections at once, all sources together
# TCP connections at once from one source address.  On a loopback listener every local
# sender is 127.0.0.1 (unless it binds another 127.x address), so there this mostly bounds
# what one address takes from remote listeners' other senders.
MAX_CLIENTS_PER_SOURCE = 16
IDLE_TIMEOUT_S = 600.0  # a TCP connection that sent nothing for this long is closed
IDLE_CHECK_INTERVAL_S = 1.0  # how often connections are checked for the idle timeout
MAX_ACCEPTS_PER_TURN = 16  # connections accepted per turn of the loop (the backlog keeps more)
MAX_DATAGRAMS_PER_TURN = 256  # UDP datagrams read per turn: then the capture gets its turn
RECV_SIZE = 65536  # one read per ready TCP connection per turn: no connection starves others
WARNINGS_IN_FULL = 3  # per source, the first warnings of a kind are logged as they come...
WARNING_SUMMARY_INTERVAL_S = 60.0  # ...then one count per interval


class KeySourceError(UserFacingError):
    """A key source cannot be set up; the message is for the user as it is."""


class LimitedWarning:
    """One kind of warning from one source: the first ``WARNINGS_IN_FULL`` are logged as they
    come, later ones are counted and logged as one line per ``WARNING_SUMMARY_INTERVAL_S``.
    ``tick`` is called regularly (every poll of a followed file, every second by a listener),
    so a count is logged even when nothing else comes; ``flush`` logs what is still counted."""

    def __init__(self, source: str, what: str, clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.what = what  # for the summary: "N more <what>"
        self.clock = clock
        self.logged = 0
        self.unlogged = 0
        self.since = 0.0

    def warn(self, count: int, text: str) -> None:
        if self.logged < WARNINGS_IN_FULL:
            self.logged += 1
            if self.logged == WARNINGS_IN_FULL:
                text += (
                    f"; further ones are counted and logged every "
                    f"{WARNING_SUMMARY_INTERVAL_S:.0f} s"
                )
            log.warning("%s: %s", self.source, text)
            return
        if not self.unlogged:
            self.since = self.clock()
        self.unlogged += count

    def tick(self) -> None:
        if self.unlogged and self.clock() - self.since >= WARNING_SUMMARY_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.unlogged:
            log.warning(
                "%s: %d more %s in the last %.0f s",
                self.source,
                self.unlogged,
                self.what,
                self.clock() - self.since,
            )
            self.unlogged = 0


class LineBuffer:
    """Cuts a byte stream into complete lines.  At most ``MAX_LINE`` bytes of an unfinished
    line are held: a longer one is no key-log line, so it is dropped up to its newline."""

    __slots__ = ("partial", "dropping")

    def __init__(self) -> None:
        self.partial = b""
        self.dropping = False  # inside a line that was too long: skip to its end

    def feed(self, data: bytes) -> tuple[bytes, int, int]:
        """The complete lines now known (with their newlines), the number of lines dropped
        as too long, and the number of line ends consumed by dropping."""
        dropped = ends = 0
        if self.dropping:
            newline = data.find(b"\n")
            if newline < 0:
                return b"", 0, 0
            data = data[newline + 1 :]
            self.dropping = False
            ends = 1
        if self.partial:
            data = self.partial + data
        cut = data.rfind(b"\n") + 1  # 0 when there is no newline
        rest = data[cut:]
        if len(rest) > MAX_LINE:
            rest = b""
            self.dropping = True
            dropped = 1
        self.partial = rest
        return data[:cut], dropped, ends


class _KeyLines:
    """Loads text into the key store, counting and (within limits) reporting bad lines."""

    def __init__(
        self,
        keys: KeyStore,
        source: str,
        clock: Callable[[], float],
        forward: Callable[[str], None] | None = None,
    ):
        self.keys = keys
        self.forward = forward
        self.stats = KeySourceStats()
        keys.source_stats.append(self.stats)
        self.malformed = LimitedWarning(source, "malformed key log line(s) ignored", clock)

    def load(
        self, text: str, first_line: int = 1, line_numbers: bool = True, too_long: int = 0
    ) -> int:
        if text and self.forward is not None:
            self.forward(text)
        result = load_key_log(text, self.keys, first_line=first_line) if text else KeyLogResult()
        self.stats.lines_added += result.added
        count = result.malformed + too_long
        if count:
            self.stats.malformed_lines += count
            parts = [result.describe_malformed(line_numbers)] if result.malformed else []
            if too_long:
                parts.append(f"{too_long} key log line(s) longer than {MAX_LINE} bytes ignored")
            self.malformed.warn(count, "; ".join(parts))
        return result.added


class KeyLogFile:
    """A key log file, followed: new lines are read as they are written."""

    def __init__(self, path: str, keys: KeyStore, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.keys = keys
        self._lines = _KeyLines(keys, f"key log {path}", clock)
        self.stats = self._lines.stats
        self._inode: tuple[int, int] | None = None
        self._position = 0
        self._buffer = LineBuffer()
        self._line_number = 0
        self._missing_reported = False

    def poll(self) -> int:
        """Read what was added since the last poll (up to ``MAX_READ_PER_POLL``); returns the
        number of secrets added."""
        self._lines.malformed.tick()
        try:
            st = os.stat(self.path)
        except OSError:
            if not self._missing_reported:
                log.warning("key log %s is not there (yet); will keep looking", self.path)
                self._missing_reported = True
            return 0
        self._missing_reported = False
        inode = (st.st_dev, st.st_ino)
        if inode != self._inode or st.st_size < self._position:
            # replaced (rotation) or truncated: start over from its beginning
            self._inode, self._position, self._line_number = inode, 0, 0
            self._buffer = LineBuffer()
        if st.st_size == self._position:
            return 0
        added = 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._position)
                budget = min(st.st_size - self._position, MAX_READ_PER_POLL)
                while budget > 0:
                    data = fh.read(min(budget, READ_CHUNK))
                    if not data:
                        break
                    budget -= len(data)
                    self._position += len(data)
                    added += self._feed(data)
        except OSError as exc:
            log.warning("cannot read key log %s: %s", self.path, exc.strerror or exc)
        return added

    def reload(self) -> int:
        """Read the file again from the start (SIGHUP)."""
        self._inode = None
        return self.poll()

    def _feed(self, data: bytes) -> int:
        complete, too_long, ends = self._buffer.feed(data)
        self._line_number += ends
        if not complete and not too_long:
            return 0
        text = complete.decode("utf-8", "replace")
        added = self._lines.load(text, first_line=self._line_number + 1, too_long=too_long)
        self._line_number += text.count("\n")
        return added


def parse_listen_url(url: str) -> tuple[str, str, int]:
    try:
        return split_url(url, ("udp", "tcp"))
    except ValueError as exc:
        raise KeySourceError(f"bad key-log listener {url!r}: {exc}") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class ListenerLimits:
    max_clients: int = MAX_CLIENTS
    max_clients_per_source: int = MAX_CLIENTS_PER_SOURCE
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_datagrams_per_turn: int = MAX_DATAGRAMS_PER_TURN


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    source: str  # the peer's address (not its port): the unit of fairness
    lines: LineBuffer
    last_active: float


class KeyLogListener:
    """Accepts key-log lines over UDP (one or more lines per datagram) or TCP (a stream).

    TCP connections are bounded (``ListenerLimits``): at most ``max_clients`` at once and
    ``max_clients_per_source`` from one address; a connection over either bound evicts the
    one idle longest (of its own source when that source is at its bound), so no sender can
    lock the listener for good.  Connections that send nothing for ``idle_timeout_s`` are
    closed.  Each turn reads once from each ready connection and at most
    ``max_datagrams_per_turn`` datagrams.  Evictions and idle closes are counted in
    ``stats`` and logged like malformed lines (the first few, then a periodic count).

    ``forward``, when given, is handed the text of every batch of complete lines as it comes
    (with worker processes, the parent listens and forwards the lines to every worker).
    """

    def __init__(
        self,
        url: str,
        keys: KeyStore,
        allow_remote: bool = False,
        limits: ListenerLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        forward: Callable[[str], None] | None = None,
    ):
        scheme, host, port = parse_listen_url(url)
        if not is_loopback(host):
            if not allow_remote:
                raise KeySourceError(
                    f"key-log listener {url} is not on loopback: key-log lines are secrets in "
                    "transit; add --keylog-listen-remote to bind it anyway"
                )
            log.warning(
                "key-log listener %s accepts secrets from the network: keep it on a trusted link",
                url,
            )
        self.url = url
        self.keys = keys
        self.limits = limits if limits is not None else ListenerLimits()
        self.clock = clock
        self._lines = _KeyLines(keys, f"key-log listener {url}", clock, forward)
        self.stats = self._lines.stats
        self._evicted = LimitedWarning(
            f"key-log listener {url}",
            "connection(s) closed to make room or after the idle timeout",
            clock,
        )
        self.scheme = scheme
        try:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
            )
            family, kind, _, _, address = infos[0]
            self.sock = socket.socket(family, kind)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(address)
            if scheme == "tcp":
                self.sock.listen(16)
        except OSError as exc:
            raise KeySourceError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self._clients: dict[socket.socket, _Client] = {}
        self._next_idle_check = 0.0

    def sockets(self) -> list[socket.socket]:
        return [self.sock, *self._clients]

    def handle(self, ready: set[int]) -> int:
        """Read from whichever of our sockets are ready; returns the number of secrets added.
        Called every turn of the loop, ready or not: it also closes idle connections."""
        added = 0
        now = self.clock()
        if self.sock.fileno() in ready:
            if self.scheme == "udp":
                added += self._datagrams()
            else:
                self._accept(now)
        for client in list(self._clients.values()):
            if client.sock.fileno() in ready:
                added += self._stream(client, now)
        if now >= self._next_idle_check:
            self._next_idle_check = now + min(IDLE_CHECK_INTERVAL_S, self.limits.idle_timeout_s / 4)
            self._close_idle(now)
            self._lines.malformed.tick()
            self._evicted.tick()
        return added

    def _close_idle(self, now: float) -> None:
        for client in list(self._clients.values()):
            if now - client.last_active > self.limits.idle_timeout_s:
                self.stats.connections_idle += 1
                self._evicted.warn(
                    1,
                    f"closed a connection from {client.source} idle for "
                    f"{now - client.last_active:.0f} s",
                )
                self._drop(client)

    def _datagrams(self) -> int:
        added = 0
        for _ in range(self.limits.max_datagrams_per_turn):
            try:
                data = self.sock.recv(65535)
            except OSError:  # BlockingIOError: nothing more for now
                break
            added += self._lines.load(data.decode("utf-8", "replace"), line_numbers=False)
        return added

    def _accept(self, now: float) -> None:
        for _ in range(MAX_ACCEPTS_PER_TURN):
            try:
                sock, address = self.sock.accept()
            except OSError:  # BlockingIOError: nothing more for now
                return
            source = str(address[0])
            self._make_room(source, now)
            sock.setblocking(False)
            self._clients[sock] = _Client(sock, source, LineBuffer(), now)

    def _make_room(self, source: str, now: float) -> None:
        limits = self.limits
        clients = list(self._clients.values())
        same_source = [c for c in clients if c.source == source]
        if len(same_source) >= limits.max_clients_per_source:
            candidates = same_source
        elif len(clients) >= limits.max_clients:
            candidates = clients
        else:
            return
        victim = min(candidates, key=lambda c: c.last_active)
        self.stats.connections_evicted += 1
        self._evicted.warn(
            1,
            f"closed the connection from {victim.source} idle longest "
            f"({now - victim.last_active:.0f} s) to make room for one from "
            f"{source} (at most {limits.max_clients} connections, "
            f"{limits.max_clients_per_source} per address)",
        )
        self._drop(victim)

    def _drop(self, client: _Client) -> None:
        """Close a connection; an unfinished line it sent is dropped with it."""
        del self._clients[client.sock]
        client.sock.close()

    def _stream(self, client: _Client, now: float) -> int:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:  # closed: a last line without a newline still counts
            rest = client.lines.partial
            self._drop(client)
            return (
                self._lines.load(rest.decode("utf-8", "replace"), line_numbers=False) if rest else 0
            )
        client.last_active = now
        complete, too_long, _ = client.lines.feed(data)
        if not complete and not too_long:
            return 0
        return self._lines.load(
            complete.decode("utf-8", "replace"), line_numbers=False, too_long=too_long
        )

    def close(self) -> None:
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
        self.sock.close()
        self._lines.malformed.flush()
        self._evicted.flush()
