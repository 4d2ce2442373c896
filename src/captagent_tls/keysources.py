"""Where key-log lines come from while the agent runs: files that are still being written
(followed like ``tail -F``, through truncation and rotation) and network listeners
(``udp://`` and ``tcp://``, one or more lines per datagram or stream).

Kamailio's tls module (``keylog_mode`` with the peer bit, ``keylog_peer``) sends each key-log
line as one UDP datagram: that is the sender the UDP listener is built for.  Key-log lines
are secrets in transit, so listeners bind to loopback unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from captagent_tls.net.addresses import split_url
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore

log = logging.getLogger("captagent_tls")

MAX_LINE = 4096  # a key-log line is < 300 bytes; anything longer is not one
MAX_CLIENTS = 64


class KeySourceError(Exception):
    """A key source cannot be set up; the message is for the user as it is."""


@dataclass
class KeySourceStats:
    lines_added: int = 0
    malformed_lines: int = 0


class KeyLogFile:
    """A key log file, followed: new lines are read as they are written."""

    def __init__(self, path: str, keys: KeyStore):
        self.path = path
        self.keys = keys
        self.stats = KeySourceStats()
        self._inode: tuple[int, int] | None = None
        self._position = 0
        self._partial = b""
        self._line_number = 0
        self._missing_reported = False

    def poll(self) -> int:
        """Read what was added since the last poll; returns the number of secrets added."""
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
            self._inode, self._position, self._partial, self._line_number = inode, 0, b"", 0
        if st.st_size == self._position:
            return 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._position)
                data = fh.read(st.st_size - self._position)
        except OSError as exc:
            log.warning("cannot read key log %s: %s", self.path, exc.strerror or exc)
            return 0
        self._position += len(data)
        return self._lines(data)

    def reload(self) -> int:
        """Read the file again from the start (SIGHUP)."""
        self._inode = None
        return self.poll()

    def _lines(self, data: bytes) -> int:
        data = self._partial + data
        complete, newline, self._partial = data.rpartition(b"\n")
        if not newline:
            return 0
        text = complete.decode("utf-8", "replace")
        result = load_key_log(text, self.keys, first_line=self._line_number + 1)
        self._line_number += text.count("\n") + 1
        self.stats.lines_added += result.added
        if result.malformed_lines:
            self.stats.malformed_lines += len(result.malformed_lines)
            log.warning("key log %s: %s", self.path, result.describe_malformed())
        return result.added


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


class KeyLogListener:
    """Accepts key-log lines over UDP (one or more lines per datagram) or TCP (a stream)."""

    def __init__(self, url: str, keys: KeyStore, allow_remote: bool = False):
        scheme, host, port = parse_listen_url(url)
        if not is_loopback(host):
            if not allow_remote:
                raise KeySourceError(
                    f"key-log listener {url} is not on loopback: key-log lines are secrets in "
                    "transit; add --keylog-listen-remote to bind it anyway")
            log.warning("key-log listener %s accepts secrets from the network: keep it on a "
                        "trusted link", url)
        self.url = url
        self.keys = keys
        self.stats = KeySourceStats()
        self.scheme = scheme
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM if scheme == "udp"
                                       else socket.SOCK_STREAM)
            family, kind, _, _, address = infos[0]
            self.sock = socket.socket(family, kind)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(address)
            if scheme == "tcp":
                self.sock.listen(16)
        except OSError as exc:
            raise KeySourceError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self._clients: dict[socket.socket, bytes] = {}

    def sockets(self) -> list[socket.socket]:
        return [self.sock, *self._clients]

    def handle(self, ready: set[int]) -> int:
        """Read from whichever of our sockets are ready; returns the number of secrets added."""
        added = 0
        if self.sock.fileno() in ready:
            if self.scheme == "udp":
                added += self._datagrams()
            else:
                self._accept()
        for client in list(self._clients):
            if client.fileno() in ready:
                added += self._stream(client)
        return added

    def _datagrams(self) -> int:
        added = 0
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return added
            except OSError:
                return added
            added += self._load(data.decode("utf-8", "replace"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self._clients) >= MAX_CLIENTS:
                client.close()
                continue
            client.setblocking(False)
            self._clients[client] = b""

    def _stream(self, client: socket.socket) -> int:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:
            rest = self._clients.pop(client)
            client.close()
            return self._load(rest.decode("utf-8", "replace")) if rest else 0
        buffered = self._clients[client] + data
        complete, _, partial = buffered.rpartition(b"\n")
        if len(partial) > MAX_LINE:
            partial = b""
        self._clients[client] = partial
        return self._load(complete.decode("utf-8", "replace")) if complete else 0

    def _load(self, text: str) -> int:
        result = load_key_log(text, self.keys)
        self.stats.lines_added += result.added
        if result.malformed_lines:
            self.stats.malformed_lines += len(result.malformed_lines)
            # line numbers would count from the start of each datagram or chunk
            log.warning("key-log listener %s: %s", self.url,
                        result.describe_malformed(line_numbers=False))
        return result.added

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.sock.close()
