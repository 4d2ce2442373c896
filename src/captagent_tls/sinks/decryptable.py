"""A copy of the capture that opens decrypted anywhere (``--write-decryptable FILE.pcapng``).

The original frames, unchanged, with the secrets of every session we decrypted in a pcapng
Decryption Secrets Block (TLS key log, NSS format): Wireshark and tshark then decrypt the
file with no key and no option, as after ``editcap --inject-secrets tls,KEYLOG``.

Where the block goes matters.  Wireshark reads a file in one pass and applies a secrets block
from where it stands: the handshakes before it are dissected without its secrets, and their
sessions stay encrypted (checked with tshark 4.0: a block after the packets decrypts nothing).
So the secrets must come first, but they are only known once the sessions have been
decrypted.  The frames therefore go to an unnamed temporary file beside the output while the
capture is read; at the end the output is assembled: section header, interfaces, secrets,
then the frames.

The frames are those the pipeline reads (with ``-f``, those the filter lets through), each
with its link type (one interface per link type) and its time to the nanosecond.  A frame
carries its captured bytes only, so a packet's original length is written as its captured
length.

The output holds secrets, so it is created readable by its owner only (mode 0600), like a
private key.  The temporary file holds the frames only, and has no name: it disappears with
the process whatever happens.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO

from captagent_tls import __version__
from captagent_tls.capture import Frame
from captagent_tls.capture.live import LiveCapture
from captagent_tls.sinks import OutputError
from captagent_tls.tls.events import SessionSecret

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_EPB = 0x00000006
BLOCK_DSB = 0x0000000A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SECRETS_TLS_KEY_LOG = 0x544C534B
OPTION_END = 0
OPTION_SHB_USERAPPL = 4
OPTION_IF_TSRESOL = 9
TSRESOL_NANOSECONDS = 9
SPOOL_BUFFER = 1 << 20

_epb_head = struct.Struct("<IIIIIII").pack  # type, length, interface, ts high, ts low, lengths


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def section_header() -> bytes:
    options = _option(OPTION_SHB_USERAPPL, f"captagent-tls {__version__}".encode()) + _option(
        OPTION_END, b""
    )
    return _block(BLOCK_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + options)


def interface_description(linktype: int) -> bytes:
    """One interface per link type, with nanosecond timestamps (our frames carry ns)."""
    options = _option(OPTION_IF_TSRESOL, bytes([TSRESOL_NANOSECONDS])) + _option(OPTION_END, b"")
    return _block(BLOCK_IDB, struct.pack("<HHI", linktype, 0, 0) + options)


def decryption_secrets(key_log: bytes) -> bytes:
    return _block(BLOCK_DSB, struct.pack("<II", SECRETS_TLS_KEY_LOG, len(key_log)) + _pad(key_log))


class DecryptableCaptureWriter:
    """Tee of the frames the pipeline reads plus the secrets of the sessions it decrypted.

    ``frame`` and ``secret`` are called while the capture is read; ``close`` writes the file.
    The output is opened (and so checked) at once, with mode 0600.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise OSError(f"{path}: {exc.strerror or exc}") from None
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: not this one
            self._spool: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 - closed in close()
                dir=os.path.dirname(os.path.abspath(path)), buffering=SPOOL_BUFFER
            )
        except OSError as exc:
            os.close(fd)
            raise OSError(f"{path}: {exc.strerror or exc}") from None
        self._out: BinaryIO = os.fdopen(fd, "wb")
        self._interfaces: dict[int, int] = {}  # link type -> interface index
        self._secrets: dict[str, None] = {}  # key-log lines, in order, once each
        self.frames = 0
        self.sessions = 0
        self.closed = False

    def frame(self, frame: Frame) -> None:
        linktype = frame.linktype
        interface = self._interfaces.get(linktype)
        if interface is None:
            interface = self._interfaces[linktype] = len(self._interfaces)
        data = frame.data
        size = len(data)
        padding = -size % 4
        ts = frame.ts_ns
        write = self._spool.write
        try:
            write(
                _epb_head(
                    BLOCK_EPB, 32 + size + padding, interface, ts >> 32, ts & 0xFFFFFFFF, size, size
                )
            )
            write(data)
            write(b"\0" * padding + (32 + size + padding).to_bytes(4, "little"))
        except OSError as exc:  # the disk is full: the run cannot give what was asked
            raise OutputError(f"{self.path}: {exc.strerror or exc}") from None
        self.frames += 1

    def secret(self, secret: SessionSecret) -> None:
        lines = secret.key_log_lines()
        if lines and any(line not in self._secrets for line in lines):
            self.sessions += 1
            for line in lines:
                self._secrets[line] = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            out = self._out
            out.write(section_header())
            for linktype in self._interfaces:  # in index order: dicts keep insertion order
                out.write(interface_description(linktype))
            if self._secrets:
                out.write(decryption_secrets("".join(self._secrets).encode("ascii")))
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, out, SPOOL_BUFFER)
            out.close()
        finally:
            self._spool.close()
            self._out.close()


def tee_frames(
    feed: Callable[[Frame], None], writer: DecryptableCaptureWriter
) -> Callable[[Frame], None]:
    """``feed`` that also writes every frame it is given."""
    write = writer.frame

    def feed_and_write(frame: Frame) -> None:
        write(frame)
        feed(frame)

    return feed_and_write


class TeeLiveCapture(LiveCapture):
    """Live capture whose frames are also written by ``writer`` (set it after creation)."""

    writer: DecryptableCaptureWriter | None = None

    def read(self, max_packets: int = 4096) -> Iterator[Frame]:
        writer = self.writer
        if writer is None:
            yield from super().read(max_packets)
            return
        write = writer.frame
        for frame in super().read(max_packets):
            write(frame)
            yield frame
