"""The capture reader: pcap and pcapng in all their variants, gzip, truncation, bad input."""

from __future__ import annotations

import gzip
import os
import random
import struct
import zlib
from pathlib import Path

import pytest

from captagent_tls.capture import CaptureError
from captagent_tls.capture.files import MAX_TS_NS, CaptureReader
from tests.support.paths import REPO

ETH_FRAME = bytes(range(60))
RAW_FRAME = b"\x45" + bytes(39)


def pcap_bytes(
    frames: list[tuple[int, int, bytes]],
    *,
    nanos: bool = False,
    endian: str = "<",
    linktype: int = 1,
) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in frames:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data
    return out


def _block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(endian + "II", btype, length) + body + struct.pack(endian + "I", length)


def pcapng_section(endian: str = "<") -> bytes:
    return _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def pcapng_interface(linktype: int, tsresol: int | None = None, endian: str = "<") -> bytes:
    options = b""
    if tsresol is not None:
        options = struct.pack(endian + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0"
        options += struct.pack(endian + "HH", 0, 0)
    return _block(endian, 1, struct.pack(endian + "HHI", linktype, 0, 0) + options)


def pcapng_packet(iface: int, ticks: int, data: bytes, endian: str = "<") -> bytes:
    body = (
        struct.pack(endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
        + data
    )
    return _block(endian, 6, body)


def pcapng_secrets(text: bytes, endian: str = "<") -> bytes:
    return _block(endian, 0x0A, struct.pack(endian + "II", 0x544C534B, len(text)) + text)


def read_all(path: str, **kwargs: object) -> tuple[list, CaptureReader]:
    reader = CaptureReader(path, **kwargs)  # type: ignore[arg-type]
    with reader:
        frames = [(f.ts_ns, f.linktype, bytes(f.data)) for f in reader]
    return frames, reader


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_pcap_timestamps_and_endianness(tmp_path, endian, nanos):
    path = tmp_path / "a.pcap"
    path.write_bytes(
        pcap_bytes(
            [(1700000000, 123456, ETH_FRAME), (1700000001, 7, RAW_FRAME)],
            nanos=nanos,
            endian=endian,
        )
    )
    frames, reader = read_all(str(path))
    scale = 1 if nanos else 1000
    assert frames == [
        (1700000000 * 10**9 + 123456 * scale, 1, ETH_FRAME),
        (1700000001 * 10**9 + 7 * scale, 1, RAW_FRAME),
    ]
    assert reader.format == "pcap" and not reader.truncated


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_mixed_link_types_and_resolutions(tmp_path, endian):
    data = (
        pcapng_section(endian)
        + pcapng_interface(1, endian=endian)  # Ethernet, microseconds
        + pcapng_interface(276, tsresol=9, endian=endian)  # SLL2, nanoseconds
        + pcapng_interface(101, tsresol=0x80 | 10, endian=endian)  # raw IP, 2^-10 s
        + pcapng_packet(0, 1_700_000_000_000_001, ETH_FRAME, endian)
        + pcapng_packet(1, 1_700_000_000_000_000_002, b"sll2" + bytes(40), endian)
        + pcapng_packet(2, 1024 * 5 + 512, RAW_FRAME, endian)
    )
    path = tmp_path / "a.pcapng"
    path.write_bytes(data)
    frames, reader = read_all(str(path))
    assert [(ts, lt) for ts, lt, _ in frames] == [
        (1_700_000_000_000_001_000, 1),
        (1_700_000_000_000_000_002, 276),
        (5_500_000_000, 101),
    ]
    assert frames[1][2].startswith(b"sll2")
    assert reader.format == "pcapng"


def test_pcapng_new_section_resets_interfaces(tmp_path):
    data = (
        pcapng_section("<")
        + pcapng_interface(1)
        + pcapng_packet(0, 1, ETH_FRAME)
        + pcapng_section(">")
        + pcapng_interface(101, endian=">")
        + pcapng_packet(0, 2, RAW_FRAME, ">")
    )
    path = tmp_path / "two.pcapng"
    path.write_bytes(data)
    frames, _ = read_all(str(path))
    assert [lt for _, lt, _ in frames] == [1, 101]


def test_pcapng_decryption_secrets_block_reaches_callback_in_order(tmp_path):
    seen: list[tuple[str, bytes]] = []
    data = (
        pcapng_section()
        + pcapng_interface(1)
        + pcapng_packet(0, 1, ETH_FRAME)
        + pcapng_secrets(b"CLIENT_RANDOM aa bb\n")
        + pcapng_packet(0, 2, ETH_FRAME)
    )
    path = tmp_path / "dsb.pcapng"
    path.write_bytes(data)
    reader = CaptureReader(str(path), on_secrets=lambda text: seen.append(("dsb", text)))
    with reader:
        for _frame in reader:
            seen.append(("frame", b""))
    assert seen == [("frame", b""), ("dsb", b"CLIENT_RANDOM aa bb\n"), ("frame", b"")]


def test_gzip_compressed_capture(tmp_path):
    path = tmp_path / "a.pcap.gz"
    path.write_bytes(gzip.compress(pcap_bytes([(1, 0, ETH_FRAME)] * 3)))
    frames, _ = read_all(str(path))
    assert len(frames) == 3 and frames[0][2] == ETH_FRAME


def test_large_gzip_capture_streams_across_chunks(tmp_path, monkeypatch):
    import captagent_tls.capture.files as files

    monkeypatch.setattr(files, "CHUNK", 1000)  # force many window slides
    frames_in = [(i, i, bytes([i % 256]) * (100 + i % 400)) for i in range(500)]
    path = tmp_path / "big.pcap.gz"
    path.write_bytes(gzip.compress(pcap_bytes(frames_in)))
    frames, reader = read_all(str(path))
    assert [f[2] for f in frames] == [f[2] for f in frames_in]
    assert not reader.truncated


def test_truncated_capture_yields_everything_before_the_cut(tmp_path):
    data = pcap_bytes([(1, 0, ETH_FRAME), (2, 0, ETH_FRAME), (3, 0, ETH_FRAME)])
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-10])
    frames, reader = read_all(str(path))
    assert len(frames) == 2
    assert reader.truncated


def test_truncated_gzip_yields_everything_before_the_cut(tmp_path):
    data = gzip.compress(pcap_bytes([(i, 0, ETH_FRAME) for i in range(200)]))
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(data[: len(data) // 2])
    frames, reader = read_all(str(path))
    assert 0 < len(frames) < 200
    assert reader.truncated


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, I am a text file\n", "not a pcap or pcapng file"),
        (b"", "empty file"),
        (b"\xd4\xc3", "not a pcap or pcapng file"),
    ],
)
def test_not_a_capture(tmp_path, content, message):
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=message):
        read_all(str(path))


def test_missing_file_is_a_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="cannot open capture"):
        CaptureReader(str(tmp_path / "nope.pcap"))


def test_corrupt_record_length_is_reported(tmp_path):
    data = pcap_bytes([(1, 0, ETH_FRAME)]) + struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 10)
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(data)
    reader = CaptureReader(str(path))
    got = []
    with pytest.raises(CaptureError, match=r"corrupt pcap file at byte 100: record of 2147483647"):
        for frame in reader:
            got.append(frame)
    assert len(got) == 1


# -- malformed pcapng: skipped with a count, or the end of the read, never another exception --


def frames_until_error(path: Path) -> tuple[list[bytes], CaptureReader, str]:
    """Every frame read, the reader, and the CaptureError message ('' when none)."""
    reader = CaptureReader(str(path))
    got: list[bytes] = []
    error = ""
    with reader:
        try:
            for frame in reader:
                got.append(bytes(frame.data))
        except CaptureError as exc:
            error = str(exc)
    return got, reader, error


def good_start() -> bytes:
    return pcapng_section() + pcapng_interface(1) + pcapng_packet(0, 1, ETH_FRAME)


def bare_block(btype: int, body: bytes = b"") -> bytes:
    """A block whose framing is right, whatever its body."""
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


@pytest.mark.parametrize(
    ("btype", "name"),
    [
        (6, "enhanced packet"),
        (2, "obsolete packet"),
        (0x0A, "decryption secrets"),
        (3, "simple packet"),
        (1, "interface description"),
    ],
)
def test_block_too_short_for_its_type_is_skipped_and_counted(tmp_path, btype, name):
    path = tmp_path / "short.pcapng"
    path.write_bytes(good_start() + bare_block(btype) + pcapng_packet(0, 2, RAW_FRAME))
    got, reader, error = frames_until_error(path)
    assert (got, error) == ([ETH_FRAME, RAW_FRAME], "")
    assert reader.malformed == 1 and not reader.truncated
    assert reader.describe_malformed() == (
        f"1 malformed pcapng structure(s) skipped (the first at byte {len(good_start())}: "
        f"{name} block of 12 bytes, too short for its fields)"
    )


def test_interface_option_running_past_its_block_keeps_the_interface(tmp_path):
    options = struct.pack("<HH", 14, 8) + b"\0\0\0\0"  # if_tsoffset of 8 bytes, 4 present
    interface = _block("<", 1, struct.pack("<HHI", 101, 0, 0) + options)
    path = tmp_path / "option.pcapng"
    path.write_bytes(pcapng_section() + interface + pcapng_packet(0, 7, RAW_FRAME))
    frames, reader = read_all(str(path))
    assert frames == [(7000, 101, RAW_FRAME)]  # microseconds, no offset
    assert reader.malformed == 1
    assert "interface option 14 running past its block" in reader.describe_malformed()


def test_packet_longer_than_its_block_and_undeclared_interface_are_skipped(tmp_path):
    too_long = bytearray(pcapng_packet(0, 3, ETH_FRAME))
    struct.pack_into("<I", too_long, 20, 10_000)  # captured length beyond the block
    path = tmp_path / "packets.pcapng"
    path.write_bytes(
        good_start()
        + bytes(too_long)
        + pcapng_packet(5, 4, ETH_FRAME)
        + pcapng_packet(0, 5, RAW_FRAME)
    )
    got, reader, error = frames_until_error(path)
    assert (got, error, reader.malformed) == ([ETH_FRAME, RAW_FRAME], "", 2)
    assert "packet of 10000 bytes in a block of 92" in reader.describe_malformed()


def test_secrets_longer_than_their_block_are_skipped(tmp_path):
    seen: list[bytes] = []
    secrets = bytearray(pcapng_secrets(b"CLIENT_RANDOM aa bb\n"))
    struct.pack_into("<I", secrets, 12, 1000)
    path = tmp_path / "dsb.pcapng"
    path.write_bytes(good_start() + bytes(secrets) + pcapng_secrets(b"CLIENT_RANDOM cc dd\n"))
    reader = CaptureReader(str(path), on_secrets=seen.append)
    with reader:
        assert len(list(reader)) == 1
    assert seen == [b"CLIENT_RANDOM cc dd\n"] and reader.malformed == 1


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:-4] + struct.pack("<I", 0xFFFF),
     "block length 92 at its start but 65535 at its end"),
    (lambda b: b[:4] + struct.pack("<I", 0x7FFFFFF0) + b[8:], "block length 2147483632"),
    (lambda b: b[:4] + struct.pack("<I", 14) + b[8:], "block length 14"),
])  # fmt: skip
def test_broken_block_framing_ends_the_read_where_it_is(tmp_path, mutate, message):
    path = tmp_path / "framing.pcapng"
    path.write_bytes(
        good_start() + mutate(pcapng_packet(0, 2, ETH_FRAME)) + pcapng_packet(0, 3, ETH_FRAME)
    )
    got, reader, error = frames_until_error(path)
    assert got == [ETH_FRAME]  # what came before is kept
    assert error == f"{path}: corrupt pcapng file at byte {len(good_start())}: {message}"


def test_a_second_section_without_byte_order_magic_is_corrupt(tmp_path):
    section = bytearray(pcapng_section())
    struct.pack_into("<I", section, 8, 0x12345678)
    path = tmp_path / "section.pcapng"
    path.write_bytes(good_start() + bytes(section))
    got, _, error = frames_until_error(path)
    assert got == [ETH_FRAME] and "section header without the byte-order magic" in error


@pytest.mark.parametrize(("tsresol", "ticks", "offset", "expected"), [
    (0x80, (1 << 64) - 1, 0, MAX_TS_NS),  # 2^64 seconds
    (6, 5, -(1 << 62), 0),  # before 1970
])  # fmt: skip
def test_timestamps_out_of_range_are_clamped_and_counted(
    tmp_path, tsresol, ticks, offset, expected
):
    options = (
        struct.pack("<HH", 9, 1)
        + bytes([tsresol])
        + b"\0\0\0"
        + struct.pack("<HHq", 14, 8, offset)
        + struct.pack("<HH", 0, 0)
    )
    interface = _block("<", 1, struct.pack("<HHI", 1, 0, 0) + options)
    path = tmp_path / "time.pcapng"
    path.write_bytes(pcapng_section() + interface + pcapng_packet(0, ticks, ETH_FRAME))
    frames, reader = read_all(str(path))
    assert frames == [(expected, 1, ETH_FRAME)]
    assert "timestamp out of range" in reader.describe_malformed()


def test_damaged_gzip_says_so(tmp_path):
    path = tmp_path / "bad.pcap.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 10)
    with pytest.raises(CaptureError, match=r"bad.pcap.gz: cannot decompress: damaged gzip data"):
        read_all(str(path))
    text = tmp_path / "text.gz"
    text.write_bytes(gzip.compress(b"just some text, no capture"))
    with pytest.raises(CaptureError, match=r"not a pcap or pcapng file \(gzip-compressed\)"):
        read_all(str(text))


def test_gzip_damaged_in_the_middle_keeps_what_came_before(tmp_path):
    frames_in = [(i, 0, bytes([i]) * 200) for i in range(200)]
    raw = pcap_bytes(frames_in)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    data = bytearray(compressor.compress(raw) + compressor.flush())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "mid.pcap.gz"
    path.write_bytes(bytes(data))
    got, _, error = frames_until_error(path)
    # deflate finds some damage only at the end (CRC): frames decoded from the damaged part
    # come out first, as from an uncompressed file damaged there; those before it are intact
    assert got[:20] == [f[2] for f in frames_in[:20]]
    assert "damaged gzip data after" in error or "corrupt pcap file" in error


def test_shared_pcapng_reproducers_end_in_one_line(tmp_path):
    folder = REPO.parent / "shared" / "regressions"
    files = sorted(folder.glob("pcapng-*.pcapng"))
    if not files:
        pytest.skip("../shared/regressions is not here")
    for path in files:
        got, reader, error = frames_until_error(path)
        assert reader.malformed or error, path.name
        assert "\n" not in error


# -- mutations: any bytes end in frames, a count, truncation or one CaptureError -------------


def seed_captures() -> list[bytes]:
    ts_options = (
        struct.pack("<HH", 9, 1)
        + bytes([0x80 | 20])
        + b"\0\0\0"
        + struct.pack("<HHq", 14, 8, 1_700_000_000)
        + struct.pack("<HH", 0, 0)
    )
    obsolete = _block(
        "<",
        2,
        struct.pack("<HHIII", 0, 0, 0, 9, len(RAW_FRAME))
        + struct.pack("<I", len(RAW_FRAME))
        + RAW_FRAME,
    )
    simple = _block("<", 3, struct.pack("<I", len(ETH_FRAME)) + ETH_FRAME)
    return [
        pcap_bytes([(1, 2, ETH_FRAME), (3, 4, RAW_FRAME)]),
        pcap_bytes([(1, 2, ETH_FRAME)], nanos=True, endian=">"),
        (
            pcapng_section()
            + pcapng_interface(1)
            + _block("<", 1, struct.pack("<HHI", 101, 0, 0) + ts_options)
            + pcapng_packet(0, 1, ETH_FRAME)
            + pcapng_packet(1, 2, RAW_FRAME)
            + obsolete
            + simple
            + pcapng_secrets(b"CLIENT_RANDOM aa bb\n")
            + pcapng_section(">")
            + pcapng_interface(1, tsresol=9, endian=">")
            + pcapng_packet(0, 3, ETH_FRAME, ">")
        ),
    ]


INTERESTING = [
    0,
    1,
    3,
    4,
    8,
    11,
    12,
    13,
    16,
    20,
    28,
    32,
    0x7F,
    0x80,
    0xFF,
    0xFFFF,
    0xFFFFFFFF,
    0x0A0D0D0A,
    0x1A2B3C4D,
    64 << 20,
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        kind = rng.randrange(6)
        pos = rng.randrange(len(out))
        if kind == 0:
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[pos] = rng.randrange(256)
        elif kind == 2 and pos + 4 <= len(out):  # a 32-bit field, often a length
            struct.pack_into(
                rng.choice("<>") + "I",
                out,
                pos & ~3 if pos & ~3 + 4 <= len(out) else pos,
                rng.choice(INTERESTING),
            )
        elif kind == 3:
            del out[pos:]
        elif kind == 4:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            end = min(len(out), pos + rng.randrange(1, 64))
            out[pos:pos] = out[pos:end]  # a duplicated run, e.g. a block twice
    return bytes(out)


def test_random_mutations_never_raise_anything_but_capture_error(tmp_path):
    """A local mutation loop (CAPTURE_MUTATIONS=200000 for a long run), over plain and
    gzip-compressed files: frames come out with sane times, or CaptureError with one line."""
    rng = random.Random(20240601)
    seeds = seed_captures()
    path = tmp_path / "m"
    for i in range(int(os.environ.get("CAPTURE_MUTATIONS", "3000"))):
        data = mutate(rng.choice(seeds), rng)
        if i % 5 == 0:
            data = gzip.compress(data)
            if i % 10 == 0:
                data = mutate(data, rng)
        path.write_bytes(data)
        try:
            reader = CaptureReader(str(path), on_secrets=lambda text: None)
            with reader:
                for frame in reader:
                    assert 0 <= frame.ts_ns <= MAX_TS_NS
                    assert len(frame.data) <= len(data) or i % 5 == 0
        except CaptureError as exc:
            message = str(exc)
            assert "\n" not in message and " near byte " not in message, (i, message)
