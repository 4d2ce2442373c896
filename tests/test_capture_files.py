"""The capture reader: pcap and pcapng in all their variants, gzip, truncation, bad input."""

from __future__ import annotations

import gzip
import struct

import pytest

from captagent_tls.capture import CaptureError
from captagent_tls.capture.files import CaptureReader

ETH_FRAME = bytes(range(60))
RAW_FRAME = b"\x45" + bytes(39)


def pcap_bytes(frames: list[tuple[int, int, bytes]], *, nanos: bool = False, endian: str = "<",
               linktype: int = 1) -> bytes:
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
    body = struct.pack(endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                       len(data)) + data
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
    path.write_bytes(pcap_bytes([(1700000000, 123456, ETH_FRAME), (1700000001, 7, RAW_FRAME)],
                                nanos=nanos, endian=endian))
    frames, reader = read_all(str(path))
    scale = 1 if nanos else 1000
    assert frames == [
        (1700000000 * 10**9 + 123456 * scale, 1, ETH_FRAME),
        (1700000001 * 10**9 + 7 * scale, 1, RAW_FRAME),
    ]
    assert reader.format == "pcap" and not reader.truncated


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_mixed_link_types_and_resolutions(tmp_path, endian):
    data = (pcapng_section(endian)
            + pcapng_interface(1, endian=endian)            # Ethernet, microseconds
            + pcapng_interface(276, tsresol=9, endian=endian)  # SLL2, nanoseconds
            + pcapng_interface(101, tsresol=0x80 | 10, endian=endian)  # raw IP, 2^-10 s
            + pcapng_packet(0, 1_700_000_000_000_001, ETH_FRAME, endian)
            + pcapng_packet(1, 1_700_000_000_000_000_002, b"sll2" + bytes(40), endian)
            + pcapng_packet(2, 1024 * 5 + 512, RAW_FRAME, endian))
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
    data = (pcapng_section("<") + pcapng_interface(1) + pcapng_packet(0, 1, ETH_FRAME)
            + pcapng_section(">") + pcapng_interface(101, endian=">")
            + pcapng_packet(0, 2, RAW_FRAME, ">"))
    path = tmp_path / "two.pcapng"
    path.write_bytes(data)
    frames, _ = read_all(str(path))
    assert [lt for _, lt, _ in frames] == [1, 101]


def test_pcapng_decryption_secrets_block_reaches_callback_in_order(tmp_path):
    seen: list[tuple[str, bytes]] = []
    data = (pcapng_section() + pcapng_interface(1) + pcapng_packet(0, 1, ETH_FRAME)
            + pcapng_secrets(b"CLIENT_RANDOM aa bb\n") + pcapng_packet(0, 2, ETH_FRAME))
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
    with pytest.raises(CaptureError, match="corrupt pcap record"):
        for frame in reader:
            got.append(frame)
    assert len(got) == 1
