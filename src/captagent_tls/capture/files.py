"""Read frames from pcap and pcapng files (plain, gzip-compressed, or standard input).

Our own reader rather than libpcap: libpcap refuses pcapng files whose interfaces mix link
types, and dpkt applies the first interface's link type to every packet.  Parsing with
``struct`` over a sliding ``memoryview`` window is also several times faster than dpkt.
"""

from __future__ import annotations

import contextlib
import gzip
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from captagent_tls.capture import CaptureError, Frame

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D

BLOCK_IDB = 0x00000001
BLOCK_OPB = 0x00000002
BLOCK_SPB = 0x00000003
BLOCK_EPB = 0x00000006
BLOCK_DSB = 0x0000000A
SECRETS_TLS_KEY_LOG = 0x544C534B

OPTION_IF_TSRESOL = 9
OPTION_IF_TSOFFSET = 14

CHUNK = 4 << 20
MAX_BLOCK = 64 << 20  # larger than any real frame: a bigger length means corruption
GZIP_MAGIC = b"\x1f\x8b"


class _Window:
    """A view over the file: the whole file when it can be mapped, else a sliding chunk."""

    def __init__(self, stream: BinaryIO | None, data: bytes | mmap.mmap | None = None):
        self._stream = stream
        self.buf = memoryview(data if data is not None else b"")
        self.base = 0  # file offset of buf[0]
        self.damaged = ""

    def fetch(self, pos: int, size: int) -> tuple[int, bool]:
        """Make ``size`` bytes at ``pos`` available.

        Returns the position of those bytes in ``buf`` (the window may have slid) and whether
        they are all there; at end of file, ``buf[pos:]`` holds what is left.
        """
        if pos + size <= len(self.buf) or self._stream is None:
            return pos, pos + size <= len(self.buf)
        parts = [bytes(self.buf[pos:])]
        have = len(parts[0])
        read = getattr(self._stream, "read1", self._stream.read)
        while have < size:
            try:
                chunk = read(max(CHUNK, size - have))
            except (EOFError, zlib.error, OSError) as exc:
                # a cut or damaged gzip stream: keep what was decompressed before the damage
                self.damaged = str(exc) or type(exc).__name__
                self._stream = None
                break
            if not chunk:
                self._stream = None
                break
            parts.append(chunk)
            have += len(chunk)
        self.base += pos
        self.buf = memoryview(b"".join(parts))
        return 0, have >= size


class CaptureReader:
    """Iterate over the frames of a pcap or pcapng file.

    ``on_secrets`` receives the text of every pcapng Decryption Secrets Block holding a TLS
    key log, at the point in the file where it appears.  ``truncated`` is set when the file
    ends in the middle of a block: everything before the cut has been yielded.
    """

    def __init__(self, path: str, on_secrets: Callable[[bytes], None] | None = None):
        self.path = path
        self.on_secrets = on_secrets
        self.truncated = False
        self.format = ""
        self._closers: list[Callable[[], None]] = []
        self._window = self._open(path)

    def _open(self, path: str) -> _Window:
        try:
            if path == "-":
                stream: BinaryIO = sys.stdin.buffer
                head = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
                if head == GZIP_MAGIC:
                    stream = gzip.GzipFile(fileobj=stream)  # type: ignore[assignment]
                return _Window(stream)
            fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise CaptureError(f"cannot open capture {path}: {exc.strerror or exc}") from None
        self._closers.append(fh.close)
        head = fh.read(2)
        fh.seek(0)
        if head == GZIP_MAGIC:
            return _Window(gzip.GzipFile(fileobj=fh))  # type: ignore[arg-type]
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise CaptureError(f"{path}: empty file, not a capture")
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return _Window(fh)
        window = _Window(None, mapped)

        def release() -> None:
            window.buf = memoryview(b"")  # the map cannot close while views of it live
            mapped.close()

        self._closers.insert(0, release)
        return window

    @property
    def is_pcapng(self) -> bool:
        _, ok = self._window.fetch(0, 4)
        return ok and bytes(self._window.buf[:4]) == b"\x0a\x0d\x0d\x0a"

    @property
    def stored_position(self) -> int | None:
        """How far reading has come in the file as stored (compressed bytes for a gzip file,
        read ahead by up to one chunk), for a progress bar.  None when the reader does not
        know: a file read through a memory map (its position lives in the frame loop),
        standard input, and a stream that has ended."""
        stream = self._window._stream
        raw = getattr(stream, "fileobj", stream)  # beneath gzip: the compressed file
        if raw is None or raw is sys.stdin.buffer:
            return None
        try:
            return int(raw.tell())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        for closer in self._closers:
            with contextlib.suppress(OSError, BufferError):
                closer()
        self._closers.clear()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        window = self._window
        try:
            _, ok = window.fetch(0, 4)
            if not ok:
                raise CaptureError(f"{self.path}: not a pcap or pcapng file (too short)")
            magic_le, magic_be = struct.unpack_from("<I", window.buf)[0], struct.unpack_from(
                ">I", window.buf
            )[0]
            if magic_le == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(window)
            elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
                self.format = "pcap"
                yield from self._pcap(window)
            else:
                raise CaptureError(f"{self.path}: not a pcap or pcapng file")
        except (OSError, EOFError, zlib.error) as exc:
            if not self.format:
                raise CaptureError(f"{self.path}: cannot read: {exc}") from None
            self.truncated = True
        if window.damaged:
            if not self.format:
                raise CaptureError(f"{self.path}: cannot read: {window.damaged}")
            self.truncated = True

    def _pcap(self, w: _Window) -> Iterator[Frame]:
        pos, ok = w.fetch(0, 24)
        if not ok:
            raise CaptureError(f"{self.path}: pcap header is truncated")
        little = struct.unpack_from("<I", w.buf)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS)
        endian = "<" if little else ">"
        frac_ns = 1 if struct.unpack_from(endian + "I", w.buf)[0] == PCAP_MAGIC_NS else 1000
        linktype = struct.unpack_from(endian + "I", w.buf, 20)[0] & 0x0FFFFFFF
        unpack = struct.Struct(endian + "IIII").unpack_from
        pos = 24
        buf, size = w.buf, len(w.buf)
        while True:
            if pos + 16 > size:  # only a chunked (gzip, stdin) window needs refilling
                pos, ok = w.fetch(pos, 16)
                buf, size = w.buf, len(w.buf)
                if not ok:
                    self.truncated = pos < size
                    return
            sec, frac, caplen, _origlen = unpack(buf, pos)
            if caplen > MAX_BLOCK:
                raise CaptureError(
                    f"{self.path}: corrupt pcap record at byte {w.base + pos} (length {caplen})"
                )
            start = pos + 16
            if start + caplen > size:
                pos, ok = w.fetch(pos, 16 + caplen)
                buf, size = w.buf, len(w.buf)
                if not ok:
                    self.truncated = True
                    return
                start = pos + 16
            yield Frame(sec * 1_000_000_000 + frac * frac_ns, linktype,
                        buf[start : start + caplen])
            pos = start + caplen

    def _pcapng(self, w: _Window) -> Iterator[Frame]:
        endian = "<"
        interfaces: list[tuple[int, int, int, int]] = []  # linktype, multiplier, divisor, offset
        pos = 0
        while True:
            pos, ok = w.fetch(pos, 12)
            if not ok:
                self.truncated = pos < len(w.buf)
                return
            btype = struct.unpack_from(endian + "I", w.buf, pos)[0]
            if btype == PCAPNG_SHB:
                bom = struct.unpack_from("<I", w.buf, pos + 8)[0]
                if bom == PCAPNG_BYTE_ORDER_MAGIC:
                    endian = "<"
                elif bom == 0x4D3C2B1A:
                    endian = ">"
                else:
                    raise CaptureError(f"{self.path}: corrupt pcapng section header")
                interfaces = []
            blen = struct.unpack_from(endian + "I", w.buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                raise CaptureError(
                    f"{self.path}: corrupt pcapng block at byte {w.base + pos} (length {blen})"
                )
            pos, ok = w.fetch(pos, blen)
            if not ok:
                self.truncated = True
                return
            body = pos + 8
            end = pos + blen - 4
            buf = w.buf
            if btype in (BLOCK_EPB, BLOCK_OPB):
                if btype == BLOCK_EPB:
                    iface, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "IIII", buf, body)
                else:
                    iface, _, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "HHIII", buf, body)
                if iface < len(interfaces):
                    linktype, mult, div, offset = interfaces[iface]
                    start = body + 20
                    ts = ((ts_hi << 32) | ts_lo) * mult // div + offset
                    yield Frame(ts, linktype, buf[start : min(start + caplen, end)])
            elif btype == BLOCK_SPB:
                if interfaces:
                    caplen = min(struct.unpack_from(endian + "I", buf, body)[0], end - body - 4)
                    yield Frame(0, interfaces[0][0], buf[body + 4 : body + 4 + caplen])
            elif btype == BLOCK_IDB:
                interfaces.append(self._interface(buf, body, end, endian))
            elif btype == BLOCK_DSB:
                stype, slen = struct.unpack_from(endian + "II", buf, body)
                if stype == SECRETS_TLS_KEY_LOG and self.on_secrets is not None:
                    self.on_secrets(bytes(buf[body + 8 : body + 8 + slen]))
            pos += blen

    @staticmethod
    def _interface(buf: bytes | memoryview, body: int, end: int, endian: str
                   ) -> tuple[int, int, int, int]:
        linktype = struct.unpack_from(endian + "H", buf, body)[0]
        mult, div, offset = 1000, 1, 0  # default resolution: microseconds
        opt = body + 8
        while opt + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", buf, opt)
            if code == 0:
                break
            value = opt + 4
            if code == OPTION_IF_TSRESOL and olen >= 1:
                resol = buf[value]
                if resol & 0x80:
                    mult, div = 1_000_000_000, 1 << (resol & 0x7F)
                else:
                    exp = resol & 0x7F
                    mult, div = (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))
            elif code == OPTION_IF_TSOFFSET and olen >= 8:
                offset = struct.unpack_from(endian + "q", buf, value)[0] * 1_000_000_000
            opt = value + ((olen + 3) & ~3)
        return (linktype, mult, div, offset)
