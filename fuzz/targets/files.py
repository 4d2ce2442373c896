"""capture/files.py: the pcap / pcapng reader, plain (memory-mapped) and gzip (streamed).

Input: one option byte, then the file's content, or (option bit 7) a pcapng block program
(:func:`build_pcapng`: block types, bodies, and length fields that lie), so that a block cut
at the end of the file or a length that disagrees with the body costs a byte or two.  The
content is read as a file; when the option byte says so it is also gzip-compressed and read
through the streaming window, whose read size is made tiny (1 to 97 bytes) so that every
refill and slide of the window runs.

Oracle: only ``CaptureError`` may escape (the command line prints it as one line); every
frame's bytes are bytes of the file; the Decryption Secrets Blocks' contents are bytes of the
file; and the compressed reading gives exactly the frames, secrets, truncation flag and
error/no-error outcome of the plain one.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

from captagent_tls.capture import CaptureError
from captagent_tls.capture import files as capture_files
from captagent_tls.capture.files import CaptureReader
from fuzz import capmodel, mutate
from fuzz.bytesource import ByteSource
from fuzz.capmodel import block
from fuzz.oracle import OracleFailure
from fuzz.targets.pipeline import scratch_dir

MAX_LEN = 4096
CHUNK_SIZES = (1, 2, 3, 5, 8, 13, 64, 97)
#: tokens for libFuzzer (-dict): magics, block types and lengths, option codes
DICTIONARY = [
    b"\x0a\x0d\x0d\x0a",
    b"\x4d\x3c\x2b\x1a",
    b"\x1a\x2b\x3c\x4d",
    b"\xd4\xc3\xb2\xa1",
    b"\x4d\x3c\xb2\xa1",
    b"\x1f\x8b",
    b"\x06\x00\x00\x00",
    b"\x02\x00\x00\x00",
    b"\x03\x00\x00\x00",
    b"\x0a\x00\x00\x00",
    b"\x01\x00\x00\x00",
    b"\x0c\x00\x00\x00",
    b"\x10\x00\x00\x00",
    b"KSLT",
    b"\x09\x00\x01\x00",
    b"\x0e\x00\x08\x00",
    b"\xff\xff\xff\xff",
]

Outcome = tuple[list[tuple[int, int, bytes]], list[bytes], bool, bool]


def read(path: Path, content: bytes) -> Outcome:
    """(frames, secrets, truncated, failed with CaptureError)."""
    frames: list[tuple[int, int, bytes]] = []
    secrets: list[bytes] = []
    failed = False
    reader = None
    try:
        reader = CaptureReader(str(path), on_secrets=secrets.append)
        with reader:
            _ = reader.is_pcapng
            for frame in reader:
                data = bytes(frame.data)
                if not isinstance(frame.ts_ns, int) or not isinstance(frame.linktype, int):
                    raise OracleFailure("frame-fields", f"{frame.ts_ns!r} {frame.linktype!r}")
                if data and data not in content:
                    raise OracleFailure("frame-bytes", "a frame's bytes are not in the file")
                frames.append((frame.ts_ns, frame.linktype, data))
    except CaptureError:
        failed = True
    for secret in secrets:
        if secret and secret not in content:
            raise OracleFailure("secret-bytes", "a secrets block's bytes are not in the file")
    return frames, secrets, bool(reader is not None and reader.truncated), failed


BLOCK_TYPES = (0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000003, 0x00000002, 0x0000000A, 0x00000BAD)


def build_pcapng(src: ByteSource) -> bytes:
    """A pcapng file from a block program: per block a type, a body, and how its length
    fields lie (right, short, long, or only the 12 bytes of an empty block)."""
    out = bytearray()
    while src.remaining:
        btype = BLOCK_TYPES[src.below(len(BLOCK_TYPES))]
        body = src.sized_bytes(96)
        if btype == 0x0A0D0D0A and src.flag():
            body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + body
        body += b"\0" * (-len(body) % 4)
        length = 12 + len(body)
        lie = src.below(5)
        if lie == 1:
            length -= 4 * (1 + src.below(4))
        elif lie == 2:
            length += 4 * (1 + src.below(4))
        elif lie == 3:
            body, length = b"", 12
        out += struct.pack("<II", btype, length & 0xFFFFFFFF) + body
        if lie != 4:  # (4: the file ends before the trailing length)
            out += struct.pack("<I", length & 0xFFFFFFFF)
    return bytes(out)


def one_input(data: bytes) -> None:
    if not data:
        return
    option, content = data[0], data[1:]
    if option & 0x80:  # a block program rather than the file itself
        content = build_pcapng(ByteSource(content))
    plain = scratch_dir() / "files-input.pcap"
    plain.write_bytes(content)
    expected = read(plain, content)
    if not option & 1:
        return
    packed = scratch_dir() / "files-input.pcap.gz"
    packed.write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    saved = capture_files.CHUNK
    capture_files.CHUNK = CHUNK_SIZES[(option >> 1) % len(CHUNK_SIZES)]
    try:
        streamed = read(packed, content)
    finally:
        capture_files.CHUNK = saved
    if not content:
        return  # an empty file is refused as such; its gzip form as "too short"
    if streamed != expected:
        what = [
            name
            for name, a, b in zip(
                ("frames", "secrets", "truncated", "error"), expected, streamed, strict=True
            )
            if a != b
        ]
        raise OracleFailure(
            "gzip-differs", f"the gzip-compressed file reads differently: {', '.join(what)}"
        )


def _pcapng_blocks() -> bytes:
    """A section with two interfaces (one with if_tsresol and if_tsoffset), simple and
    obsolete packet blocks, a secrets block, and a block of an unknown type."""
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = (
        struct.pack("<HHB3x", 9, 1, 0x86)
        + struct.pack("<HHq", 14, 8, 1_600_000_000)
        + struct.pack("<HH", 0, 0)
    )
    idb0 = block(1, struct.pack("<HHI", 1, 0, 65535) + opts)
    idb1 = block(1, struct.pack("<HHI", 101, 0, 65535))
    frame = bytes.fromhex("4500002800010000400600007f0000017f000001") + bytes(20)
    epb = block(6, struct.pack("<IIIII", 1, 1, 2, len(frame), len(frame)) + frame)
    spb = block(3, struct.pack("<I", len(frame)) + frame)
    opb = block(2, struct.pack("<HHIIII", 1, 0, 1, 2, len(frame), len(frame)) + frame)
    dsb = block(10, struct.pack("<II", 0x544C534B, 12) + b"CLIENT_RANDOM")
    unknown = block(0x0BAD, b"abcd")
    return shb + idb0 + idb1 + epb + spb + opb + dsb + unknown


def seeds() -> list[bytes]:
    out = []
    for seed in mutate.seeds()[:12]:
        packets = seed.packets[:5]
        pcap = capmodel.write_pcap(seed.linktype, packets)
        out += [b"\x00" + pcap, b"\x03" + capmodel.write_pcap(seed.linktype, packets, True, True)]
        secrets = (seed.keylog or "CLIENT_RANDOM 00 00\n").encode()[:300]
        out.append(b"\x05" + capmodel.write_pcapng(seed.linktype, packets[:3], secrets, 1))
    out.append(b"\x07" + _pcapng_blocks())
    # block programs: a section, an interface, a packet, secrets, a block of unknown type
    out.append(
        b"\x81"
        + bytes([0, 0, 1, 0, 1, 8])
        + bytes(8)
        + b"\x00"
        + bytes([2, 24])
        + bytes(24)
        + b"\x00"
        + bytes([5, 8])
        + b"KSLT\x00\x00\x00\x00"
        + b"\x00"
        + bytes([6, 4])
        + b"abcd"
        + b"\x00"
    )
    return [s for s in out if len(s) <= MAX_LEN]
