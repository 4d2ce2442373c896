"""Read frames from pcap and pcapng files (plain, gzip-compressed, or standard input).

Our own reader rather than libpcap: libpcap refuses pcapng files whose interfaces mix link
types, and dpkt applies the first interface's link type to every packet.  Parsing with
``struct`` over a sliding ``memoryview`` window is also several times faster than dpkt.

Any bytes may come in.  A structure that is malformed but whose framing holds (a pcapng
block too short for its type, a packet longer than its block, an option running past its
block, a timestamp out of range) is counted in ``malformed`` and skipped (a timestamp is
clamped instead, so that the packet still reaches its TCP stream); a broken framing (a block
length that cannot be, a pcap record longer than any frame, gzip data that does not
decompress) ends the read with a :class:`CaptureError` saying where; a file that stops in the
middle of a record sets ``truncated``.  In every case the frames before the damage have been
yielded, and nothing else than :class:`CaptureError` is raised.
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
PCAPNG_BYTE_ORDER_SWAPPED = 0x4D3C2B1A

BLOCK_IDB = 0x00000001
BLOCK_OPB = 0x00000002
BLOCK_SPB = 0x00000003
BLOCK_EPB = 0x00000006
BLOCK_DSB = 0x0000000A
SECRETS_TLS_KEY_LOG = 0x544C534B

#: The smallest total length of each block type: 12 bytes of framing plus its fixed fields.
MIN_BLOCK_LENGTH = {
    PCAPNG_SHB: 28,  # byte-order magic, version, section length
    BLOCK_IDB: 20,  # link type, reserved, snap length
    BLOCK_OPB: 32,  # interface, drops, timestamp, captured and original length
    BLOCK_SPB: 16,  # original length
    BLOCK_EPB: 32,  # interface, timestamp, captured and original length
    BLOCK_DSB: 20,  # secrets type and length
}
BLOCK_NAMES = {
    PCAPNG_SHB: "section header", BLOCK_IDB: "interface description",
    BLOCK_OPB: "obsolete packet", BLOCK_SPB: "simple packet", BLOCK_EPB: "enhanced packet",
    BLOCK_DSB: "decryption secrets",
}  # fmt: skip

OPTION_IF_TSRESOL = 9
OPTION_IF_TSOFFSET = 14

CHUNK = 4 << 20
MAX_BLOCK = 64 << 20  # larger than any real frame: a bigger length means corruption
GZIP_MAGIC = b"\x1f\x8b"
#: Frame times stay within pcap's (and HEP's) unsigned 32-bit seconds since the epoch.
MAX_TS_NS = (1 << 32) * 1_000_000_000 - 1


class _Window:
    """A view over the file: the whole file when it can be mapped, else a sliding chunk."""

    def __init__(self, stream: BinaryIO | None, data: bytes | mmap.mmap | None = None):
        self._stream = stream
        self.buf = memoryview(data if data is not None else b"")
        self.base = 0  # file offset of buf[0]
        # when the stream failed: why, whether it merely ended early, and the offset reached
        self.damage = ""
        self.damage_is_cut = False
        self.damage_at = 0

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
                self.damage = str(exc) or type(exc).__name__
                self.damage_is_cut = isinstance(exc, EOFError)
                self.damage_at = self.base + pos + have
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
    ends in the middle of a block (``truncated_at`` is where that block began): everything
    before the cut has been yielded.  ``malformed`` counts the structures skipped (see the
    module's description), :meth:`describe_malformed` says what the first one was.
    """

    def __init__(self, path: str, on_secrets: Callable[[bytes], None] | None = None):
        self.path = path
        self.on_secrets = on_secrets
        self.truncated = False
        self.truncated_at = 0
        self.malformed = 0
        self.first_malformed = ""
        self.format = ""
        self._closers: list[Callable[[], None]] = []
        self._gzip = False
        self._window = self._open(path)

    def _open(self, path: str) -> _Window:
        try:
            if path == "-":
                stream: BinaryIO = sys.stdin.buffer
                head = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
                if head == GZIP_MAGIC:
                    self._gzip = True
                    stream = gzip.GzipFile(fileobj=stream)  # type: ignore[assignment]
                return _Window(stream)
            fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise CaptureError(f"cannot open capture {path}: {exc.strerror or exc}") from None
        self._closers.append(fh.close)
        try:
            head = fh.read(2)
            fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise CaptureError(f"cannot read capture {path}: {exc.strerror or exc}") from None
        if head == GZIP_MAGIC:
            self._gzip = True
            return _Window(gzip.GzipFile(fileobj=fh))  # type: ignore[arg-type]
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

    def describe_malformed(self) -> str:
        """One line: how many structures were skipped and what the first one was."""
        if not self.malformed:
            return ""
        return (
            f"{self.malformed} malformed {self.format or 'capture'} structure(s) skipped "
            f"(the first {self.first_malformed})"
        )

    def _skip(self, offset: int, what: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            self.first_malformed = f"at byte {offset}: {what}"

    def _corrupt(self, offset: int, what: str) -> CaptureError:
        where = " of the decompressed data" if self._gzip else ""
        return CaptureError(
            f"{self.path}: corrupt {self.format or 'capture'} file at byte {offset}{where}: {what}"
        )

    def _cut(self, offset: int) -> None:
        self.truncated = True
        self.truncated_at = offset

    def _damaged_stream(self, window: _Window) -> CaptureError:
        if self._gzip:
            what = "gzip file ends early" if window.damage_is_cut else "damaged gzip data"
            if window.damage_at == 0:
                return CaptureError(f"{self.path}: cannot decompress: {what} ({window.damage})")
            return CaptureError(
                f"{self.path}: {what} after {window.damage_at} decompressed bytes ({window.damage})"
            )
        return CaptureError(f"{self.path}: cannot read at byte {window.damage_at}: {window.damage}")

    def __iter__(self) -> Iterator[Frame]:
        window = self._window
        try:
            _, ok = window.fetch(0, 4)
            if not ok:
                if window.damage:
                    raise self._damaged_stream(window)
                raise CaptureError(f"{self.path}: not a pcap or pcapng file (too short)")
            magic_le, magic_be = (
                struct.unpack_from("<I", window.buf)[0],
                struct.unpack_from(">I", window.buf)[0],
            )
            if magic_le == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(window)
            elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
                self.format = "pcap"
                yield from self._pcap(window)
            else:
                kind = " (gzip-compressed)" if self._gzip else ""
                raise CaptureError(f"{self.path}: not a pcap or pcapng file{kind}")
        except (OSError, EOFError, zlib.error) as exc:  # reading stdin or a non-mappable file
            if not self.format:
                raise CaptureError(f"{self.path}: cannot read: {exc}") from None
            self._cut(window.base)
        except struct.error as exc:  # a check missing below: still one line, never a traceback
            raise CaptureError(
                f"{self.path}: corrupt {self.format or 'capture'} file near "
                f"byte {window.base}: {exc}"
            ) from None
        if window.damage:
            if not window.damage_is_cut or not self.format:
                raise self._damaged_stream(window)
            self.truncated = True

    def _pcap(self, w: _Window) -> Iterator[Frame]:
        pos, ok = w.fetch(0, 24)
        if not ok:
            if w.damage:
                return  # reported by __iter__
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
                    if pos < size:
                        self._cut(w.base + pos)
                    return
            sec, frac, caplen, _origlen = unpack(buf, pos)
            if caplen > MAX_BLOCK:
                raise self._corrupt(w.base + pos, f"record of {caplen} bytes")
            start = pos + 16
            if start + caplen > size:
                pos, ok = w.fetch(pos, 16 + caplen)
                buf, size = w.buf, len(w.buf)
                if not ok:
                    self._cut(w.base + pos)
                    return
                start = pos + 16
            ts = sec * 1_000_000_000 + frac * frac_ns
            if ts > MAX_TS_NS:  # a fraction field of more than a second, at the end of time
                self._skip(w.base + pos, "timestamp out of range")
                ts = MAX_TS_NS
            yield Frame(ts, linktype, buf[start : start + caplen])
            pos = start + caplen

    def _pcapng(self, w: _Window) -> Iterator[Frame]:
        endian = "<"
        interfaces: list[tuple[int, int, int, int]] = []  # linktype, multiplier, divisor, offset
        pos = 0
        while True:
            pos, ok = w.fetch(pos, 12)
            if not ok:
                if pos < len(w.buf):
                    self._cut(w.base + pos)
                return
            offset = w.base + pos
            btype = struct.unpack_from(endian + "I", w.buf, pos)[0]
            if btype == PCAPNG_SHB:  # the same in either byte order
                bom = struct.unpack_from("<I", w.buf, pos + 8)[0]
                if bom == PCAPNG_BYTE_ORDER_MAGIC:
                    endian = "<"
                elif bom == PCAPNG_BYTE_ORDER_SWAPPED:
                    endian = ">"
                else:
                    raise self._corrupt(offset, "section header without the byte-order magic")
                interfaces = []
            blen = struct.unpack_from(endian + "I", w.buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                raise self._corrupt(offset, f"block length {blen}")
            pos, ok = w.fetch(pos, blen)
            if not ok:
                self._cut(offset)
                return
            buf = w.buf
            end = pos + blen - 4
            trailer = struct.unpack_from(endian + "I", buf, end)[0]
            if trailer != blen:
                raise self._corrupt(
                    offset, f"block length {blen} at its start but {trailer} at its end"
                )
            if blen < MIN_BLOCK_LENGTH.get(btype, 12):
                what = f"{BLOCK_NAMES[btype]} block of {blen} bytes, too short for its fields"
                if btype == PCAPNG_SHB:
                    raise self._corrupt(offset, what)
                self._skip(offset, what)
                pos += blen
                continue
            body = pos + 8
            if btype in (BLOCK_EPB, BLOCK_OPB):
                if btype == BLOCK_EPB:
                    iface, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "IIII", buf, body)
                else:
                    iface, _, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "HHIII", buf, body)
                start = body + 20
                if caplen > end - start:
                    self._skip(offset, f"packet of {caplen} bytes in a block of {blen}")
                elif iface >= len(interfaces):
                    self._skip(offset, f"packet on undeclared interface {iface}")
                else:
                    linktype, mult, div, ts_offset = interfaces[iface]
                    ts = ((ts_hi << 32) | ts_lo) * mult // div + ts_offset
                    if not 0 <= ts <= MAX_TS_NS:
                        self._skip(offset, "timestamp out of range")
                        ts = min(max(ts, 0), MAX_TS_NS)
                    yield Frame(ts, linktype, buf[start : start + caplen])
            elif btype == BLOCK_SPB:
                if interfaces:
                    caplen = min(struct.unpack_from(endian + "I", buf, body)[0], end - body - 4)
                    yield Frame(0, interfaces[0][0], buf[body + 4 : body + 4 + caplen])
                else:
                    self._skip(offset, "simple packet block before any interface")
            elif btype == BLOCK_IDB:
                interfaces.append(self._interface(buf, body, end, endian, offset))
            elif btype == BLOCK_DSB:
                stype, slen = struct.unpack_from(endian + "II", buf, body)
                if slen > end - body - 8:
                    self._skip(offset, f"decryption secrets of {slen} bytes in a block of {blen}")
                elif stype == SECRETS_TLS_KEY_LOG and self.on_secrets is not None:
                    self.on_secrets(bytes(buf[body + 8 : body + 8 + slen]))
            pos += blen

    def _interface(
        self, buf: bytes | memoryview, body: int, end: int, endian: str, offset: int
    ) -> tuple[int, int, int, int]:
        linktype = struct.unpack_from(endian + "H", buf, body)[0]
        mult, div, ts_offset = 1000, 1, 0  # default resolution: microseconds
        opt = body + 8
        while opt + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", buf, opt)
            if code == 0:
                break
            value = opt + 4
            if value + olen > end:
                # the interface is still used: its packets matter more than its options
                self._skip(offset, f"interface option {code} running past its block")
                break
            if code == OPTION_IF_TSRESOL and olen >= 1:
                resol = buf[value]
                if resol & 0x80:
                    mult, div = 1_000_000_000, 1 << (resol & 0x7F)
                else:
                    exp = resol & 0x7F
                    mult, div = (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))
            elif code == OPTION_IF_TSOFFSET and olen >= 8:
                ts_offset = struct.unpack_from(endian + "q", buf, value)[0] * 1_000_000_000
            opt = value + ((olen + 3) & ~3)
        return (linktype, mult, div, ts_offset)
