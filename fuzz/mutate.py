"""Structure-aware mutation of the fixture captures: a fuzz input is a small program.

The first byte picks a fixture capture, the second whether to keep all its connections or
only the first few (fewer packets, more inputs per second); what follows is a list of
operations, each an opcode and its operands, read with :class:`~fuzz.bytesource.ByteSource`.
Operations act at three levels, applied in this order whatever their order in the input:

1. **TLS stream** of one direction of one connection (the TCP payload bytes in sequence
   order): flip bits in record headers, handshake fields (versions, randoms, session IDs,
   cipher suites, compression, extensions, certificates), ciphertext (IV, body, MAC);
   drop, duplicate, swap, truncate, split or merge records; splice a record from another
   flow; insert or overwrite bytes.  Streams are then cut back into the original segments,
   with sequence and acknowledgment numbers moved to match.
2. **Packets**: drop, duplicate, reorder, truncate, bit-flip, split a segment, fragment at
   the IP layer, rewrite TCP flags or timestamps, retransmit with different bytes.
3. **File and keys**: pcap (µs, ns, big-endian), pcapng with or without the key log in a
   Decryption Secrets Block, gzip; raw byte flips or a cut in the file; a wrong extra RSA
   key, a damaged or missing key log.

An input with no operations gives the fixture unchanged (a check the pipeline target makes:
exactly the messages sent).  Every mutation is a pure function of the input bytes.
"""

from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fuzz import capmodel, tlsmap
from fuzz.bytesource import ByteSource
from fuzz.paths import FIXTURE_KEYS, FIXTURES
from fuzz.truth import SentStreams, load_sent_streams

MAX_OPERATIONS = 8

INTERESTING_VERSIONS = (
    0x0300,
    0x0301,
    0x0302,
    0x0303,
    0x0304,
    0x7F12,
    0x7F17,
    0x0000,
    0x0203,
    0x03FF,
    0xFEFD,
)
INTERESTING_SUITES = (
    0x0000,
    0x0001,
    0x0002,
    0x0003,
    0x0004,
    0x0005,
    0x0006,
    0x000A,
    0x002F,
    0x0035,
    0x003B,
    0x003C,
    0x0041,
    0x0084,
    0x0096,
    0x009C,
    0x009D,
    0x009E,
    0x00AE,
    0x00FF,
    0x1301,
    0x1302,
    0x1303,
    0x1304,
    0x1305,
    0x5600,
    0x7F29,
    0xC009,
    0xC013,
    0xC014,
    0xC027,
    0xC02B,
    0xC02F,
    0xC030,
    0xC07C,
    0xC09C,
    0xC0A0,
    0xCCA8,
    0xCCA9,
    0xCCAA,
    0xFFFF,
)
INTERESTING_EXTENSIONS = (0, 10, 13, 16, 22, 23, 35, 41, 42, 43, 45, 51, 0xFF01, 0xFFFF)
INTERESTING_TYPES = (0, 1, 2, 4, 5, 8, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 254, 255)

# extra keys a mutation may add (the slow 8192-bit key is left out on purpose)
WRONG_KEYS = ("rsa1024.key", "server2-rsa2048.key", "server-rsa2048.key")


# --------------------------------------------------------------------------------- seeds


@dataclass
class PacketInfo:
    layout: capmodel.Layout | None
    conn: int = -1  # index into Seed.conns; -1: not TCP of a known connection
    direction: int = 0
    start: int = -1  # point indices into the direction's stream (-1: none)
    end: int = -1
    ack: int = -1  # point index into the peer direction's stream


@dataclass
class Direction:
    isn: int  # sequence number of stream offset 0
    stream: bytes
    fields: list[tlsmap.Field]
    records: list[int]  # indices into fields of the RECORD fields
    points: list[int] = field(default_factory=list)  # offsets moved by stream edits
    field_points: list[tuple[int, int]] = field(default_factory=list)

    def point(self, offset: int) -> int:
        self.points.append(offset)
        return len(self.points) - 1


@dataclass
class Conn:
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    directions: list[Direction]


@dataclass
class Seed:
    name: str
    capture: Path
    linktype: int
    packets: list[capmodel.RawPacket]
    infos: list[PacketInfo]
    conns: list[Conn]
    truth: Any  # GroundTruth; a media fixture's MediaTruth (fuzz/mediatruth.py)
    sent: SentStreams
    key_paths: list[Path]
    keylog: str | None
    # media fixtures: the SIP messages of the TLS connection, and (connection, direction,
    # record field, index in sip_texts or -1) for each of its records (fuzz/mediatruth.py)
    sip_texts: list[bytes] = field(default_factory=list)
    sip_records: list[tuple[int, int, int, int]] = field(default_factory=list)


def _seq_delta(a: int, b: int) -> int:
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= 1 << 31 else d


class CachingKey:
    """A fixture's RSA key whose decryptions are remembered.

    The same few encrypted pre-master secrets come back in almost every input, and one
    8192-bit decryption costs as much as the rest of a run: remembering them speeds the
    pipeline target several times and changes nothing else (a decryption, with OpenSSL's
    implicit rejection too, always gives the same answer).  Everything else is the key's.
    """

    def __init__(self, key: rsa.RSAPrivateKey):
        self._key = key
        self._decrypted: dict[bytes, bytes | ValueError] = {}

    def decrypt(self, ciphertext: bytes, pad: object) -> bytes:
        known = self._decrypted.get(ciphertext)
        if known is None:
            try:
                known = self._key.decrypt(ciphertext, pad)  # type: ignore[arg-type]
            except ValueError as exc:
                known = exc
            if len(self._decrypted) > 4096:
                self._decrypted.clear()
            self._decrypted[ciphertext] = known
        if isinstance(known, ValueError):
            raise ValueError(str(known))
        return known

    def __getattr__(self, name: str) -> object:
        return getattr(self._key, name)


@cache
def load_key(path: Path) -> rsa.RSAPrivateKey:
    # our own fixture keys: the (slow) consistency checks add nothing here
    key = load_pem_private_key(path.read_bytes(), None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return CachingKey(key)  # type: ignore[return-value]


def load_seed(json_path: Path) -> Seed:
    truth, sent = load_sent_streams(json_path)
    keylog = truth.keylog.read_text(encoding="utf-8", errors="replace") if truth.keylog else None
    return load_capture(
        json_path.stem, json_path.with_suffix(".pcap"), truth, sent, list(truth.keys), keylog
    )


def load_capture(
    name: str,
    capture: Path,
    truth: Any,
    sent: SentStreams,
    key_paths: list[Path],
    keylog: str | None,
) -> Seed:
    """A seed from a classic pcap capture: its packets, and the TCP streams with every
    packet's place in them.  ``truth`` is the fixture's ground truth (a ``GroundTruth``, or a
    media fixture's: fuzz/mediatruth.py); ``sent`` what its TLS peers sent."""
    linktype, packets = capmodel.read_pcap(capture.read_bytes())
    infos = [PacketInfo(capmodel.parse_layout(linktype, p.data)) for p in packets]

    # connections: the client is the side that sent a SYN without ACK, else the first sender
    conn_of: dict[tuple[tuple[bytes, int], tuple[bytes, int]], int] = {}
    conns: list[Conn] = []
    first_seq: dict[tuple[int, int], list[int]] = {}
    syn_isn: dict[tuple[int, int], int] = {}
    for info in infos:
        lay = info.layout
        if lay is None or lay.protocol != 6:
            continue
        a, b = (lay.src, lay.sport), (lay.dst, lay.dport)
        key = (a, b) if (a, b) in conn_of else (b, a) if (b, a) in conn_of else None
        if key is None:
            client, server = (
                (b, a) if lay.flags & capmodel.TCP_SYN and lay.flags & capmodel.TCP_ACK else (a, b)
            )
            key = (client, server)
            conn_of[key] = len(conns)
            conns.append(Conn(client, server, []))
        info.conn = conn_of[key]
        info.direction = 0 if a == key[0] else 1
        d = (info.conn, info.direction)
        if lay.flags & capmodel.TCP_SYN:
            syn_isn.setdefault(d, (lay.seq + 1) & 0xFFFFFFFF)
        else:
            first_seq.setdefault(d, []).append(lay.seq)

    isns: dict[tuple[int, int], int] = {}
    for index, _ in enumerate(conns):
        for direction in (0, 1):
            d = (index, direction)
            if d in syn_isn:
                isns[d] = syn_isn[d]
            elif d in first_seq:
                base = first_seq[d][0]
                isns[d] = (base + min(_seq_delta(s, base) for s in first_seq[d])) & 0xFFFFFFFF

    # the streams, and each packet's place in them
    buffers: dict[tuple[int, int], bytearray] = {d: bytearray() for d in isns}
    for info, packet in zip(infos, packets, strict=True):
        lay = info.layout
        if info.conn < 0 or lay is None or lay.flags & capmodel.TCP_SYN:
            continue
        d = (info.conn, info.direction)
        payload = packet.data[lay.payload : lay.end]
        offset = _seq_delta(lay.seq, isns[d])
        if payload and offset >= 0:
            buf = buffers[d]
            if len(buf) < offset + len(payload):
                buf.extend(bytes(offset + len(payload) - len(buf)))
            buf[offset : offset + len(payload)] = payload  # (overlaps agree in the fixtures)
    for index, conn in enumerate(conns):
        for direction in (0, 1):
            stream = bytes(buffers.get((index, direction), b""))
            fields = tlsmap.record_fields(stream)
            records = [i for i, f in enumerate(fields) if f.kind == tlsmap.RECORD]
            conn.directions.append(
                Direction(isns.get((index, direction), 0), stream, fields, records)
            )
    for conn in conns:
        for d in conn.directions:
            d.field_points = [(d.point(f.offset), d.point(f.offset + f.length)) for f in d.fields]
    for info in infos:
        lay = info.layout
        if info.conn < 0 or lay is None:
            continue
        conn = conns[info.conn]
        own, peer = conn.directions[info.direction], conn.directions[1 - info.direction]
        d = (info.conn, info.direction)
        if not lay.flags & capmodel.TCP_SYN and d in isns:
            offset = _seq_delta(lay.seq, own.isn)
            info.start = own.point(offset)
            info.end = own.point(offset + lay.end - lay.payload)
        if lay.flags & capmodel.TCP_ACK and (info.conn, 1 - info.direction) in isns:
            info.ack = peer.point(_seq_delta(lay.ack, peer.isn))

    for path in key_paths:
        load_key(path)  # once, now: a bad fixture key fails here, not in a fuzz input
    return Seed(name, capture, linktype, packets, infos, conns, truth, sent, key_paths, keylog)


@cache
def seeds() -> tuple[Seed, ...]:
    """Every fixture capture that has ground truth, in name order."""
    return tuple(
        load_seed(js) for js in sorted(FIXTURES.glob("*.json")) if js.with_suffix(".pcap").exists()
    )


# ------------------------------------------------------------------------------- programs


@dataclass
class Work:
    """One input's mutable copy of a seed."""

    seed: Seed
    streams: dict[tuple[int, int], bytearray] = field(default_factory=dict)
    points: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    packets: list[tuple[int, bytes, PacketInfo]] = field(default_factory=list)
    connections: int = 1 << 30  # packets of connections with a higher index are left out
    fmt: int = 0
    gzip: bool = False
    dsb_at: int = 0
    file_edits: list[tuple[int, int, int]] = field(default_factory=list)  # (kind, at, value)
    key_paths: list[Path] = field(default_factory=list)
    keylog: str | None = None
    operations: list[str] = field(default_factory=list)  # for the finding's description
    # media: the SIP messages, edited, that replace the TLS connection (None: left as it is)
    sip_texts: list[bytes] | None = None
    # media: (Call-ID or None, plaintext) of SRTCP the program protected with a real key
    forged_rtcp: list[tuple[str | None, bytes]] = field(default_factory=list)

    def rsa_keys_loaded(self) -> list[rsa.RSAPrivateKey]:
        return [load_key(path) for path in self.key_paths]

    def stream(self, conn: int, direction: int) -> tuple[bytearray, list[int]]:
        key = (conn, direction)
        if key not in self.streams:
            d = self.seed.conns[conn].directions[direction]
            self.streams[key] = bytearray(d.stream)
            self.points[key] = list(d.points)
        return self.streams[key], self.points[key]


@dataclass
class Mutated:
    """The result of a program: a capture file and what to decrypt it with."""

    seed: Seed
    data: bytes
    suffix: str  # ".pcap", ".pcapng", with ".gz" when compressed
    key_paths: list[Path]  # RSA keys, in the order given
    keylog: str | None  # passed as --keylog (None: none, or it is inside the file)
    operations: list[str]
    sip_texts: list[bytes] | None = None  # media: the SIP in plaintext instead of TLS
    forged_rtcp: list[tuple[str | None, bytes]] = field(default_factory=list)

    @property
    def rsa_keys(self) -> list[rsa.RSAPrivateKey]:
        return [load_key(path) for path in self.key_paths]


def _replace(buf: bytearray, points: list[int], start: int, end: int, new: bytes) -> None:
    """Replace buf[start:end] by ``new``, moving every point past the edit."""
    start = max(0, min(start, len(buf)))
    end = max(start, min(end, len(buf)))
    delta = len(new) - (end - start)
    buf[start:end] = new
    if delta == 0:
        return
    for i, p in enumerate(points):
        if p >= end:
            points[i] = p + delta
        elif p > start:
            points[i] = start + min(p - start, len(new))


def _field(
    work: Work, src: ByteSource, kinds: tuple[str, ...] | None = None
) -> tuple[int, int, tlsmap.Field, int, int] | None:
    """Pick a field (of the given kinds) of some direction: (conn, direction, field, start,
    end) with its current place in the edited stream."""
    seed = work.seed
    candidates = [
        (c, d)
        for c, conn in enumerate(seed.conns[: work.connections])
        for d in (0, 1)
        if conn.directions[d].fields
    ]
    if not candidates:
        return None
    conn, direction = src.choice(candidates)
    d = seed.conns[conn].directions[direction]
    indices = (
        range(len(d.fields))
        if kinds is None
        else [i for i, f in enumerate(d.fields) if f.kind in kinds]
    )
    if not indices:
        return None
    index = src.choice(indices)
    _, points = work.stream(conn, direction)
    a, b = d.field_points[index]
    return conn, direction, d.fields[index], points[a], points[b]


def _new_value(src: ByteSource, fld: tlsmap.Field, old: bytes) -> bytes:
    """A mutated value for a field: a kind-aware interesting value or a bit flip."""
    size = len(old)
    how = src.below(6)
    if how == 0 and size:
        at, bit = src.below(size), src.below(8)
        return old[:at] + bytes([old[at] ^ (1 << bit)]) + old[at + 1 :]
    if how == 1 and size:
        at = src.below(size)
        return old[:at] + bytes([src.uint(1)]) + old[at + 1 :]
    if how == 2:
        return src.take(size).ljust(size, b"\0")
    if how == 3 and size in (1, 2, 3):
        value = int.from_bytes(old, "big")
        if fld.kind in (tlsmap.HELLO_VERSION, tlsmap.REC_VERSION):
            value = src.choice(INTERESTING_VERSIONS)
        elif fld.kind == tlsmap.SUITE:
            value = src.choice(INTERESTING_SUITES)
        elif fld.kind == tlsmap.EXT_TYPE:
            value = src.choice(INTERESTING_EXTENSIONS)
        elif fld.kind in (tlsmap.REC_TYPE, tlsmap.HS_TYPE):
            value = src.choice(INTERESTING_TYPES)
        else:  # lengths and the rest: off by one, zero, the maximum
            value = src.choice(
                (
                    value - 1,
                    value + 1,
                    0,
                    1,
                    (1 << (8 * size)) - 1,
                    value * 2,
                    value // 2,
                    0x4000,
                    0x4801,
                )
            )
        return (value % (1 << (8 * size))).to_bytes(size, "big")
    if how == 4:
        return old[: src.below(size + 1)]  # shorter: what follows moves up
    return old + src.sized_bytes(64)  # longer


def op_field(work: Work, src: ByteSource) -> None:
    picked = _field(work, src)
    if picked is None:
        return
    conn, direction, fld, start, end = picked
    buf, points = work.stream(conn, direction)
    new = _new_value(src, fld, bytes(buf[start:end]))
    _replace(buf, points, start, end, new)
    work.operations.append(
        f"conn {conn} dir {direction}: {fld.kind} at {start} "
        f"({fld.length} bytes) -> {new[:16].hex()}"
    )


def op_ciphertext(work: Work, src: ByteSource) -> None:
    """Flip one bit in the IV / first block, the middle, or the MAC / tag of a record."""
    picked = _field(work, src, (tlsmap.CIPHERTEXT,))
    if picked is None:
        return
    conn, direction, fld, start, end = picked
    buf, _ = work.stream(conn, direction)
    size = end - start
    if size <= 0:
        return
    where = src.below(4)
    at = (
        src.below(min(16, size))
        if where == 0
        else size - 1 - src.below(min(32, size))
        if where == 1
        else src.below(size)
    )
    buf[start + at] ^= 1 << src.below(8)
    work.operations.append(f"conn {conn} dir {direction}: ciphertext bit at {start + at}")


def _record(work: Work, src: ByteSource) -> tuple[int, int, int, int] | None:
    picked = _field(work, src, (tlsmap.RECORD,))
    if picked is None:
        return None
    conn, direction, _, start, end = picked
    return conn, direction, start, end


def op_records(work: Work, src: ByteSource) -> None:
    """Drop, duplicate, swap with the next, truncate, split or merge whole records."""
    picked = _record(work, src)
    if picked is None:
        return
    conn, direction, start, end = picked
    buf, points = work.stream(conn, direction)
    record = bytes(buf[start:end])
    if len(record) < 5:
        return  # an earlier edit removed it
    how = src.below(6)
    if how == 0:
        _replace(buf, points, start, end, b"")
        what = "dropped"
    elif how == 1:
        _replace(buf, points, end, end, record)
        what = "duplicated"
    elif how == 2:
        following = bytes(buf[end : end + 5])
        if len(following) == 5:
            length = int.from_bytes(following[3:5], "big")
            nxt = bytes(buf[end : end + 5 + length])
            _replace(buf, points, start, end + len(nxt), nxt + record)
        what = "swapped with the next"
    elif how == 3:
        keep = src.below(len(record) + 1)
        _replace(buf, points, start, end, record[:keep])
        what = f"cut to {keep} bytes"
    elif how == 4 and len(record) > 6:
        cut = 1 + src.below(len(record) - 5)
        body = record[5:]
        first = record[:3] + (cut).to_bytes(2, "big") + body[:cut]
        second = record[:3] + (len(body) - cut).to_bytes(2, "big") + body[cut:]
        _replace(buf, points, start, end, first + second)
        what = f"split at {cut}"
    else:
        following = bytes(buf[end : end + 5])
        if len(following) == 5 and following[0] == record[0]:
            length = int.from_bytes(following[3:5], "big")
            body = record[5:] + bytes(buf[end + 5 : end + 5 + length])
            merged = record[:3] + (len(body) & 0xFFFF).to_bytes(2, "big") + body
            _replace(buf, points, start, end + 5 + length, merged)
        what = "merged with the next"
    work.operations.append(f"conn {conn} dir {direction}: record at {start} {what}")


def op_splice(work: Work, src: ByteSource) -> None:
    """Put a record of another flow (or direction) before, or instead of, a record here."""
    donor = _record(work, src)
    target = _record(work, src)
    if donor is None or target is None:
        return
    dconn, ddir, dstart, dend = donor
    dbuf, _ = work.stream(dconn, ddir)
    record = bytes(dbuf[dstart:dend])
    conn, direction, start, end = target
    buf, points = work.stream(conn, direction)
    if src.flag():
        _replace(buf, points, start, end, record)
        what = "replaced by"
    else:
        _replace(buf, points, start, start, record)
        what = "preceded by"
    work.operations.append(
        f"conn {conn} dir {direction}: record at {start} {what} the "
        f"record at {dstart} of conn {dconn} dir {ddir}"
    )


def op_stream_bytes(work: Work, src: ByteSource) -> None:
    """Raw edits anywhere in a stream: insert, overwrite or delete a few bytes."""
    seed = work.seed
    candidates = [
        (c, d)
        for c, conn in enumerate(seed.conns[: work.connections])
        for d in (0, 1)
        if conn.directions[d].stream
    ]
    if not candidates:
        return
    conn, direction = src.choice(candidates)
    buf, points = work.stream(conn, direction)
    at = src.below(len(buf) + 1)
    how = src.below(3)
    data = src.sized_bytes(32)
    if how == 0:
        _replace(buf, points, at, at, data)
    elif how == 1:
        _replace(buf, points, at, at + len(data), data)
    else:
        _replace(buf, points, at, at + 1 + src.below(32), b"")
    work.operations.append(f"conn {conn} dir {direction}: raw edit {how} at {at}")


def _rebuild_packets(work: Work) -> None:
    seed = work.seed
    out: list[tuple[int, bytes, PacketInfo]] = []
    for info, packet in zip(seed.infos, seed.packets, strict=True):
        data = packet.data
        if info.conn >= work.connections:
            continue
        if info.conn >= 0 and info.layout is not None:
            own = (info.conn, info.direction)
            peer = (info.conn, 1 - info.direction)
            if own in work.streams or peer in work.streams:
                directions = seed.conns[info.conn].directions
                lay = info.layout
                seq = ack = None
                payload = data[lay.payload : lay.end]
                if info.start >= 0 and own in work.streams:
                    buf, points = work.streams[own], work.points[own]
                    start, end = points[info.start], points[info.end]
                    payload = bytes(buf[max(0, start) : max(0, end)])
                    seq = directions[info.direction].isn + start
                if info.ack >= 0 and peer in work.streams:
                    ack = directions[1 - info.direction].isn + work.points[peer][info.ack]
                data = capmodel.rebuild(data, lay, payload, seq, ack)
        out.append((packet.ts_ns, data, info))
    work.packets = out


def op_packets(work: Work, src: ByteSource) -> None:
    """Packet-level damage, after the streams are cut back into segments."""
    packets = work.packets
    if not packets:
        return
    i = src.below(len(packets))
    ts, data, info = packets[i]
    lay = capmodel.parse_layout(work.seed.linktype, data)  # (stream edits moved its end)
    how = src.below(10)
    what = ""
    if how == 0:
        del packets[i]
        what = "dropped"
    elif how == 1:
        packets.insert(src.below(len(packets) + 1), packets[i])
        what = "duplicated"
    elif how == 2:
        j = src.below(len(packets))
        packets.insert(j, packets.pop(i))
        what = f"moved to {j}"
    elif how == 3:
        keep = src.below(len(data) + 1)
        packets[i] = (ts, data[:keep], info)
        what = f"cut to {keep} bytes"
    elif how == 4:
        # a bit in the headers (most of the time) or anywhere
        limit = lay.payload if lay is not None and src.flag() else len(data)
        if limit:
            at = src.below(limit)
            flipped = bytearray(data)
            flipped[at] ^= 1 << src.below(8)
            packets[i] = (ts, bytes(flipped), info)
            what = f"bit flipped at {at}"
    elif how == 5:
        delta = src.choice((-1, 1, 181, 3600, -(10**9), 1 << 32, 10**6)) * 1_000_000_000
        packets[i] = (max(0, ts + delta), data, info)
        what = f"time moved by {delta}"
    elif how == 6 and lay is not None and lay.protocol == 6:
        payload = data[lay.payload : lay.end]
        if len(payload) > 1:
            cut = 1 + src.below(len(payload) - 1)
            first = capmodel.rebuild(data, lay, payload[:cut])
            second = capmodel.rebuild(data, lay, payload[cut:], lay.seq + cut)
            packets[i : i + 1] = [(ts, first, info), (ts, second, info)]
            what = f"segment split at {cut}"
    elif how == 7 and lay is not None:
        pieces = capmodel.ipv4_fragments(data, lay, 8 + src.below(lay.end - lay.l4), src.uint(2))
        if pieces:
            if src.flag():
                pieces.reverse()
            packets[i : i + 1] = [(ts, p, info) for p in pieces]
            what = "fragmented"
    elif how == 8 and lay is not None and lay.protocol == 6:
        flags = src.choice(
            (
                capmodel.TCP_RST,
                capmodel.TCP_FIN | capmodel.TCP_ACK,
                capmodel.TCP_SYN,
                capmodel.TCP_SYN | capmodel.TCP_ACK,
                0,
                capmodel.TCP_ACK,
                src.uint(1),
            )
        )
        packets[i] = (
            ts,
            capmodel.rebuild(data, lay, data[lay.payload : lay.end], flags=flags),
            info,
        )
        what = f"flags set to {flags:#x}"
    elif lay is not None and lay.protocol == 6 and lay.end > lay.payload:
        # a retransmission of the same sequence range with different bytes
        payload = bytearray(data[lay.payload : lay.end])
        payload[src.below(len(payload))] ^= 1 << src.below(8)
        copy = capmodel.rebuild(data, lay, bytes(payload))
        packets.insert(i + src.below(2), (ts, copy, info))
        what = "retransmitted with a flipped bit"
    if what:
        work.operations.append(f"packet {i}: {what}")


def op_format(work: Work, src: ByteSource) -> None:
    work.fmt = src.below(5)
    work.gzip = src.below(4) == 0
    work.dsb_at = src.below(len(work.seed.packets) + 1)
    work.operations.append(f"format {work.fmt}{' gzip' if work.gzip else ''}")


def op_file(work: Work, src: ByteSource) -> None:
    kind = src.below(3)
    work.file_edits.append((kind, src.uint(3), src.uint(1)))
    work.operations.append(f"file edit {work.file_edits[-1]}")


def op_keys(work: Work, src: ByteSource) -> None:
    how = src.below(4)
    if how == 0:
        name = src.choice(WRONG_KEYS)
        if src.flag():
            work.key_paths.insert(0, FIXTURE_KEYS / name)
        else:
            work.key_paths.append(FIXTURE_KEYS / name)
        work.operations.append(f"extra key {name}")
    elif how == 1:
        work.key_paths = []
        work.operations.append("no RSA keys")
    elif work.keylog:
        lines = work.keylog.splitlines()
        at = src.below(len(lines))
        if how == 2:
            del lines[at]
            work.operations.append(f"key log line {at + 1} dropped")
        else:
            line = lines[at]
            pos = src.below(len(line) + 1)
            lines[at] = line[:pos] + src.choice("0f x\t") + line[pos + 1 :]
            work.operations.append(f"key log line {at + 1} changed at {pos}")
        work.keylog = "\n".join(lines) + "\n"


STREAM_OPS = (op_field, op_field, op_field, op_ciphertext, op_records, op_splice, op_stream_bytes)
PACKET_OPS = (op_packets, op_packets, op_packets)
OTHER_OPS = (op_format, op_file, op_keys)
ALL_OPS = STREAM_OPS + PACKET_OPS + OTHER_OPS


# -------------------------------------------------------------------- media fixtures

Op = Callable[[Work, ByteSource], None]

SDP_PROTOS = (
    b"RTP/AVP",
    b"RTP/SAVP",
    b"RTP/SAVPF",
    b"RTP/AVPF",
    b"UDP/TLS/RTP/SAVPF",
    b"UDP/TLS/RTP/SAVP",
    b"TCP/RTP/AVP",
    b"udp",
    b"",
)
SDP_PORTS = (b"0", b"1", b"65535", b"65536", b"99999", b"-1", b"abc", b"", b"30000/2")
SDP_ADDRESSES = (
    b"IN IP4 0.0.0.0",
    b"IN IP4 127.0.0.2",
    b"IN IP4 127.0.0.1/127",
    b"IN IP6 ::1",
    b"IN IP6 ::ffff:127.0.0.1",
    b"IN IP4 ::1",
    b"IN IP6 127.0.0.1",
    b"IN IP4 example.com",
    b"IN IP4 256.1.1.1",
    b"IN IP4",
)
SDES_SUITES = (
    b"AES_CM_128_HMAC_SHA1_80",
    b"AES_CM_128_HMAC_SHA1_32",
    b"AES_192_CM_HMAC_SHA1_80",
    b"AES_256_CM_HMAC_SHA1_32",
    b"NULL_HMAC_SHA1_80",
    b"NULL_HMAC_SHA1_32",
    b"AEAD_AES_128_GCM",
    b"AEAD_AES_256_GCM",
    b"F8_128_HMAC_SHA1_80",
    b"AES_128_CM_HMAC_SHA1_80",
)
SDES_PARAMS = (
    b" UNENCRYPTED_SRTCP",
    b" UNENCRYPTED_SRTP",
    b" UNAUTHENTICATED_SRTP",
    b" KDR=1",
    b" KDR=24",
    b" KDR=0",
    b" FEC_ORDER=FEC_SRTP",
    b" WSH=64",
    b" WSH=0",
    b"|2^20",
    b"|2^48|7:4",
    b"|1:4",
    b"|0:0",
    b"|4294967296:4",
)
SDP_ATTRIBUTES = (
    b"a=rtcp-mux",
    b"a=rtcp:0",
    b"a=rtcp:30001",
    b"a=rtcp:30001 IN IP4 127.0.0.1",
    b"a=rtcp:70000 IN IP6 ::1",
    b"a=rtcp:",
    b"a=setup:active",
    b"a=setup:passive",
    b"a=inactive",
    b"a=sendonly",
    b"a=rtpmap:0 PCMU/0",
    b"a=rtpmap:0 PCMU/4294967296",
    b"a=rtpmap:96 opus/48000/2",
    b"a=fingerprint:sha-256 00",
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
    b"m=audio 0 RTP/AVP 0",
    b"m=video 30002 RTP/SAVP 96",
    b"c=IN IP4 127.0.0.1",
)
START_LINES = (
    b"INVITE sip:bob@127.0.0.1 SIP/2.0",
    b"UPDATE sip:bob@127.0.0.1 SIP/2.0",
    b"ACK sip:bob@127.0.0.1 SIP/2.0",
    b"PRACK sip:bob@127.0.0.1 SIP/2.0",
    b"BYE sip:bob@127.0.0.1 SIP/2.0",
    b"CANCEL sip:bob@127.0.0.1 SIP/2.0",
    b"SIP/2.0 200 OK",
    b"SIP/2.0 183 Session Progress",
    b"SIP/2.0 180 Ringing",
    b"SIP/2.0 486 Busy Here",
    b"SIP/2.0 100 Trying",
)
_CONTENT_LENGTH = re.compile(rb"(?im)^(content-length|l)[ \t]*:[ \t]*\d*")


def _sdp_line_edit(src: ByteSource, line: bytes, others: list[bytes]) -> tuple[bytes, str]:
    """A changed SDP line: a field of an m=, c= or a=crypto line, or any line's bytes."""
    kind = src.below(4)
    if line.startswith(b"m=") and kind < 3:
        parts = line.split(b" ")
        if kind == 0 and len(parts) > 2:
            parts[2] = src.choice(SDP_PROTOS)
            return b" ".join(parts), "m= protocol"
        if len(parts) > 1:
            port = parts[1]
            if port.isdigit() and src.flag():
                parts[1] = str(int(port) + src.choice((1, -1, 2, 7, 100))).encode()
            else:
                parts[1] = src.choice(SDP_PORTS)
            return b" ".join(parts), "m= port"
    if line.startswith(b"c=") and kind < 3:
        return b"c=" + src.choice(SDP_ADDRESSES), "c= address"
    if line.startswith(b"a=crypto:") and kind < 3:
        head, _, rest = line.partition(b" ")
        suite, _, params = rest.partition(b" ")
        how = src.below(5)
        if how == 0:
            return head + b" " + src.choice(SDES_SUITES) + b" " + params, "crypto suite"
        if how == 1:
            return line + src.choice(SDES_PARAMS), "crypto parameter"
        if how == 2:
            tag = src.choice((b"0", b"2", b"9", b"4294967296", b"x"))
            return b"a=crypto:" + tag + b" " + rest, "crypto tag"
        if how == 3 and b"inline:" in params:
            at = params.index(b"inline:") + 7 + src.below(40)
            if at < len(params):
                value = src.choice(b"A/+=|:0x ")
                params = params[:at] + bytes([value]) + params[at + 1 :]
            return head + b" " + suite + b" " + params, "crypto key"
        if others:
            return src.choice(others), "crypto line of another SDP"
    if line and kind == 3:
        at = src.below(len(line))
        return line[:at] + bytes([src.uint(1)]) + line[at + 1 :], f"byte {at}"
    return line + src.choice(SDES_PARAMS), "appended"


def op_sdp(work: Work, src: ByteSource) -> None:
    """Edit a SIP message of a media fixture: an SDP line changed, dropped, duplicated,
    moved, added, or taken from another SDP of the capture; the start line or a tag.  The
    fixture's TLS connection is then replaced by its SIP messages in plaintext."""
    seed = work.seed
    if not seed.sip_records:
        return
    if work.sip_texts is None:
        work.sip_texts = list(seed.sip_texts)
    texts = work.sip_texts
    with_sdp = [i for i, t in enumerate(texts) if b"\r\n\r\nv=" in t]
    index = src.choice(with_sdp) if with_sdp and src.below(4) else src.below(len(texts))
    head, sep, body = texts[index].partition(b"\r\n\r\n")
    lines = body.split(b"\r\n")
    end = lines.pop() if lines and lines[-1] == b"" else None
    every = [
        line
        for i, t in enumerate(texts)
        if i != index
        for line in t.partition(b"\r\n\r\n")[2].split(b"\r\n")
        if line
    ]
    how = src.below(10)
    at = src.below(len(lines)) if lines else 0
    if how == 0 and lines:
        del lines[at]
        what = f"SDP line {at} dropped"
    elif how == 1 and lines:
        lines.insert(src.below(len(lines) + 1), lines[at])
        what = f"SDP line {at} duplicated"
    elif how == 2 and lines:
        line = lines.pop(at)
        lines.insert(src.below(len(lines) + 1), line)
        what = f"SDP line {at} moved"
    elif how == 3:
        new = src.choice(every) if every and src.flag() else src.choice(SDP_ATTRIBUTES)
        lines.insert(src.below(len(lines) + 1), new)
        what = f"SDP line added: {new[:40]!r}"
    elif how == 4 and lines and every:
        lines[at] = src.choice(every)
        what = f"SDP line {at} replaced by a line of another message"
    elif how == 5:
        start, crlf, rest = head.partition(b"\r\n")
        head = src.choice(START_LINES) + crlf + rest
        what = "start line changed"
    elif how == 6:
        header = src.choice((b"From", b"To", b"f", b"t"))
        pattern = re.compile(rb"(?im)^(" + header + rb")[ \t]*:(.*)$")
        match = pattern.search(head)
        if match:
            value = match.group(2)
            tag = src.choice((b";tag=x", b"", b";tag=" + value[-6:].strip(), b";tag=c"))
            value = re.sub(rb";tag=[^;\r\n]*", b"", value) + tag
            head = head[: match.start(2)] + value + head[match.end(2) :]
        what = f"{header.decode()} tag changed"
    else:
        if lines:
            # mostly the lines that decide the media: m=, c=, a=crypto, a=rtcp
            aimed = [
                i for i, line in enumerate(lines) if line[:3] in (b"m=", b"c=", b"a=c", b"a=r")
            ]
            if aimed and src.below(4):
                at = src.choice(aimed)
            lines[at], what = _sdp_line_edit(
                src, lines[at], [line for line in every if line.startswith(b"a=crypto:")]
            )
            what = f"SDP line {at}: {what}"
        else:
            lines = [src.choice(SDP_ATTRIBUTES)]
            what = "an SDP line where there was none"
    if end is not None:
        lines.append(end)
    body = b"\r\n".join(lines)
    if sep:
        head = _CONTENT_LENGTH.sub(lambda m: m.group(1) + b": " + str(len(body)).encode(), head)
    texts[index] = head + sep + body
    work.operations.append(f"SIP message {index}: {what}")


def _plain_sip(work: Work) -> None:
    """The TLS connection of a media fixture becomes its SIP messages (``work.sip_texts``)
    in plaintext: each record that carried a message carries it in clear, in the same
    segments; the other records (handshake, alerts, tickets) are gone."""
    assert work.sip_texts is not None
    seed = work.seed
    for conn, direction, index, message in seed.sip_records:
        buf, points = work.stream(conn, direction)
        a, b = seed.conns[conn].directions[direction].field_points[index]
        text = work.sip_texts[message] if message >= 0 else b""
        _replace(buf, points, points[a], points[b], text)
    work.operations.append("SIP in plaintext instead of TLS")


def _udp(work: Work, index: int) -> tuple[capmodel.Layout, bytes] | None:
    data = work.packets[index][1]
    lay = capmodel.parse_layout(work.seed.linktype, data)
    if lay is None or lay.protocol != 17:
        return None
    return lay, data[lay.payload : lay.end]


def _datagrams(work: Work, kind: str = "") -> list[int]:
    """Indices of the UDP packets (``kind``: "rtcp" or "rtp", by the second byte)."""
    found = []
    for i in range(len(work.packets)):
        udp = _udp(work, i)
        if udp is None or len(udp[1]) < 8:
            continue
        payload = udp[1]
        is_rtcp = payload[0] >> 6 == 2 and 192 <= payload[1] <= 223
        if not kind or (kind == "rtcp") == is_rtcp and payload[0] >> 6 == 2:
            found.append(i)
    return found


def _set_payload(work: Work, index: int, payload: bytes) -> None:
    ts, data, info = work.packets[index]
    lay = capmodel.parse_layout(work.seed.linktype, data)
    assert lay is not None
    work.packets[index] = (ts, capmodel.rebuild(data, lay, payload), info)


def _compound_headers(payload: bytes | bytearray) -> list[int]:
    """Offsets of the RTCP headers of a compound, walked by their lengths."""
    found = []
    pos = 0
    while pos + 4 <= len(payload):
        found.append(pos)
        pos += 4 + 4 * struct.unpack_from("!H", payload, pos + 2)[0]
    return found


def _rtcp_lie(src: ByteSource, plain: bytearray) -> str:
    """Lie in an RTCP compound: a length, a count, a type, padding, the version, a byte."""
    headers = _compound_headers(plain) or [0]
    at = src.choice(headers)
    if at + 4 > len(plain):
        return "nothing"
    how = src.below(7)
    if how == 0:
        length = struct.unpack_from("!H", plain, at + 2)[0]
        value = src.choice((length + 1, length - 1, 0, 0xFFFF, length * 2, 1, length + 64))
        struct.pack_into("!H", plain, at + 2, value & 0xFFFF)
        return f"length at {at} -> {value & 0xFFFF}"
    if how == 1:
        count = src.choice((0, 31, 1, 2, (plain[at] & 0x1F) + 1, (plain[at] & 0x1F) - 1)) & 0x1F
        plain[at] = (plain[at] & 0xE0) | count
        return f"count at {at} -> {count}"
    if how == 2:
        plain[at + 1] = src.choice((200, 201, 202, 203, 204, 205, 206, 207, 192, 223, 0, 255))
        return f"type at {at} -> {plain[at + 1]}"
    if how == 3:
        plain[at] |= 0x20
        if src.flag():
            plain[-1] = src.choice((0, 1, 4, 255, len(plain) & 0xFF))
        return f"padding at {at}"
    if how == 4:
        plain[at] = (plain[at] & 0x3F) | (src.below(4) << 6)
        return f"version at {at}"
    if how == 5:
        pos = src.below(len(plain))
        plain[pos] = src.choice((0, 1, 0x7F, 0x80, 0xFF, src.uint(1)))
        return f"byte {pos}"
    end = len(plain)
    pos = min(end, at + 4 * (1 + src.below(8)))
    del plain[pos:]
    if src.flag():
        plain += src.sized_bytes(64)
    return f"cut at {pos}"


def op_datagram(work: Work, src: ByteSource) -> None:
    """Damage a UDP datagram: a bit of its payload (anywhere, the RTP/RTCP header, or the
    SRTCP index, MKI and tag at its end), an RTCP header's length, count or type (clear in
    SRTCP), its length, its ports; or another datagram's payload in its place."""
    candidates = _datagrams(work)
    if not candidates:
        return
    i = src.choice(candidates)
    udp = _udp(work, i)
    assert udp is not None
    lay, payload = udp
    data = bytearray(payload)
    n = len(data)
    how = src.below(9)
    if how == 8:
        # a pause in the capture from this packet on: BYE grace, idle calls, held media
        pause = src.choice((2, 6, 301, 3600)) * 1_000_000_000
        work.packets[i:] = [(ts + pause, d, info) for ts, d, info in work.packets[i:]]
        work.operations.append(f"packet {i} and the rest: {pause // 1_000_000_000} s later")
        return
    if how == 0:
        at = src.below(n)
        data[at] ^= 1 << src.below(8)
        what = f"bit flipped at {at}"
    elif how == 1:
        at = n - 1 - src.below(min(24, n))
        data[at] ^= 1 << src.below(8)
        what = f"trailer bit flipped at {at} (tag, MKI, E/index)"
    elif how == 2:
        at = src.below(min(12, n))
        data[at] ^= 1 << src.below(8)
        what = f"header bit flipped at {at}"
    elif how == 3:
        what = "RTCP " + _rtcp_lie(src, data)
    elif how == 4:
        keep = src.below(n + 1)
        del data[keep:]
        what = f"cut to {keep} bytes"
    elif how == 5:
        data += src.sized_bytes(40) or b"\0"
        what = "bytes appended"
    elif how == 6:
        j = src.choice(candidates)
        other = _udp(work, j)
        assert other is not None
        data = bytearray(other[1])
        what = f"payload of packet {j}"
    else:  # 7
        ports = bytearray(work.packets[i][1])
        sport, dport = lay.sport, lay.dport
        j = src.choice(candidates)
        other = _udp(work, j)
        assert other is not None
        choice = src.below(5)
        if choice == 0:
            dport = (dport + src.choice((1, -1, 2))) & 0xFFFF
        elif choice == 1:
            sport = (sport + src.choice((1, -1, 2))) & 0xFFFF
        elif choice == 2:
            sport, dport = dport, sport
        elif choice == 3:
            sport, dport = other[0].sport, other[0].dport
        else:
            dport = other[0].dport
        struct.pack_into("!HH", ports, lay.l4, sport, dport)
        ts, _, info = work.packets[i]
        work.packets[i] = (ts, bytes(ports), info)
        work.operations.append(f"packet {i}: UDP ports -> {sport}, {dport}")
        return
    _set_payload(work, i, bytes(data))
    work.operations.append(f"packet {i}: {what}")


def srtp_oracle_context(context: Any) -> Any:
    from tests.support import srtcp_oracle

    return srtcp_oracle.SrtcpContext(
        context.suite,
        context.master,
        mki_len=len(context.mki),
        unencrypted_srtcp=context.unencrypted_srtcp,
    )


def op_forge_srtcp(work: Work, src: ByteSource) -> None:
    """An SRTCP packet of the capture whose plaintext lies (a length, a count, a type,
    padding, a cut, bytes), protected again with the key that protected it (with its
    index, or another): authenticated lies, as a peer with the keys could send.  Kept in
    ``work.forged_rtcp`` for the oracle (they were sent, in a way)."""
    truth = work.seed.truth
    sent = [r for r in getattr(truth, "rtcp", ()) if r.context is not None]
    if not sent:
        return
    wires = {r.wire: r for r in sent}
    candidates = [i for i in _datagrams(work, "rtcp") if _udp(work, i)[1] in wires]  # type: ignore[index]
    if not candidates:
        return
    i = src.choice(candidates)
    record = wires[_udp(work, i)[1]]  # type: ignore[index]
    plain = bytearray(record.plaintext)
    what = _rtcp_lie(src, plain)
    if len(plain) < 8:
        plain = plain.ljust(8, b"\0")
    index = record.index or 0
    if src.flag():
        index = src.choice((index + 1, index + 1000, 0x7FFFFFFF, 0, src.uint(4) & 0x7FFFFFFF))
    encrypt = record.encrypted if src.below(4) else not record.encrypted
    context = truth.contexts[record.context]
    wire = srtp_oracle_context(context).protect_rtcp(
        bytes(plain), index, encrypt=encrypt, mki=context.mki
    )
    if src.flag():
        _set_payload(work, i, wire)
        where = "instead"
    else:
        ts, data, info = work.packets[i]
        work.packets.insert(i + 1, (ts + 1000, data, info))
        _set_payload(work, i + 1, wire)
        where = "after it"
    work.forged_rtcp.append((record.call_id, bytes(plain)))
    work.operations.append(f"packet {i}: SRTCP forged with its key ({what}, index {index}) {where}")


def _open_srtp(truth: Any, src_text: str, packet: bytes) -> tuple[Any, Any, int, bytes] | None:
    """(context, srtcp_oracle context, ROC, plaintext) of an SRTP packet of the capture."""
    from tests.support import srtcp_oracle

    ssrc = int.from_bytes(packet[8:12], "big")
    for name in truth.rtp_contexts.get((src_text, ssrc), ()):
        context = truth.contexts[name]
        if context.suite is None:
            continue
        oracle = srtp_oracle_context(context)
        for roc in (0, 1):
            try:
                return context, oracle, roc, oracle.unprotect_rtp(packet, roc)
            except (srtcp_oracle.AuthError, ValueError, struct.error, IndexError):
                continue
    return None


def _endpoint_text(address: bytes, port: int) -> str:
    import ipaddress

    host = str(ipaddress.ip_address(address))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def op_forge_srtp(work: Work, src: ByteSource) -> None:
    """An SRTP packet of the capture whose RTP header lies (CSRC count, extension, padding,
    payload type, sequence number, SSRC) or whose payload is cut, protected again with its
    key: what --media-pcap decrypts must still be what the wire carries."""
    truth = work.seed.truth
    if not getattr(truth, "rtp_contexts", None):
        return
    candidates = _datagrams(work, "rtp")
    if not candidates:
        return
    i = src.choice(candidates)
    lay, payload = _udp(work, i)  # type: ignore[misc]
    opened = _open_srtp(truth, _endpoint_text(lay.src, lay.sport), payload)
    if opened is None:
        return
    context, oracle, roc, plain_bytes = opened
    plain = bytearray(plain_bytes)
    how = src.below(8)
    if how == 0:
        count = 1 + src.below(15)
        plain[0] = (plain[0] & 0xF0) | count
        if src.flag():
            plain[12:12] = bytes(4 * count)
        what = f"CSRC count {count}"
    elif how == 1:
        plain[0] |= 0x10
        words = src.choice((0, 1, 2, 0xFFFF))
        at = 12 + 4 * (plain[0] & 0x0F)
        plain[at:at] = b"\xbe\xde" + struct.pack("!H", words) + bytes(4 * min(words, 2))
        what = f"extension of {words} words"
    elif how == 2:
        plain[0] |= 0x20
        plain[-1] = src.choice((0, 1, 4, 255, len(plain) & 0xFF))
        what = f"padding {plain[-1]}"
    elif how == 3:
        plain[1] = (plain[1] & 0x80) | src.choice((0, 8, 72, 73, 76, 77, 96, 127))
        what = f"payload type {plain[1] & 0x7F}"
    elif how == 4:
        seq = struct.unpack_from("!H", plain, 2)[0]
        new = (seq + src.choice((1, -1, 32768, 3000))) & 0xFFFF
        struct.pack_into("!H", plain, 2, new)
        what = f"sequence number {new}"
    elif how == 5:
        struct.pack_into("!I", plain, 8, src.uint(4))
        what = "SSRC"
    elif how == 6:
        del plain[12 + src.below(max(1, len(plain) - 12)) :]
        what = f"cut to {len(plain)} bytes"
    else:
        struct.pack_into("!I", plain, 4, src.uint(4))
        what = "timestamp"
    try:
        wire = oracle.protect_rtp(bytes(plain), roc, mki=context.mki)
    except (ValueError, struct.error, IndexError):
        return
    _set_payload(work, i, wire)
    work.operations.append(f"packet {i}: SRTP forged with its key ({what})")


# the media target leaves most of the TLS to the pipeline target: one opcode in five is TLS
MEDIA_STREAM_OPS = (op_ciphertext, op_records, op_stream_bytes, op_field)
MEDIA_PACKET_OPS = (op_packets, op_packets) + (op_datagram,) * 4
MEDIA_PACKET_OPS += (op_forge_srtcp, op_forge_srtcp, op_forge_srtp, op_forge_srtp)
MEDIA_SIP_OPS = (op_sdp,) * 4
MEDIA_OPS = MEDIA_STREAM_OPS + MEDIA_PACKET_OPS + OTHER_OPS + MEDIA_SIP_OPS


def mutate_media(data: bytes, all_seeds: Sequence[Seed]) -> Mutated:
    """A program over the media fixtures (``all_seeds``: fuzz/mediatruth.py): the same
    operations as :func:`mutate` (fewer aimed at the TLS handshake), and those on the SIP
    texts and the UDP datagrams above."""
    return run_program(
        data,
        all_seeds,
        MEDIA_OPS,
        STREAM_OPS,
        MEDIA_PACKET_OPS,
        MEDIA_SIP_OPS,
    )


def media_seed_programs(count: int) -> list[bytes]:
    """A starting corpus for the media fixtures: each unchanged, and each operation once,
    on fixtures taken in turn."""
    out = [bytes([index]) for index in range(count)]
    for op in range(len(MEDIA_OPS)):
        for variant in range(2):
            index = (op * 5 + variant * 11) % count
            out.append(
                bytes([index, 0, op, 12])
                + bytes([(index * 7 + op * 13 + variant * 29 + k * 3) & 0xFF for k in range(12)])
            )
    return out


def _file_bytes(work: Work, raw: list[capmodel.RawPacket]) -> tuple[bytes, str, bool]:
    """(file content, suffix, whether the key log went into the file)."""
    seed = work.seed
    in_file = False
    if work.fmt >= 3:
        secrets = None
        if work.fmt == 4 and work.keylog is not None:
            secrets, in_file = work.keylog.encode(), True
        data = capmodel.write_pcapng(seed.linktype, raw, secrets, work.dsb_at)
        suffix = ".pcapng"
    else:
        data = capmodel.write_pcap(
            seed.linktype, raw, nanos=work.fmt == 1, big_endian=work.fmt == 2
        )
        suffix = ".pcap"
    if work.file_edits:
        edited = bytearray(data)
        for kind, at, value in work.file_edits:
            if not edited:
                break
            at %= len(edited)
            if kind == 0:
                edited[at] ^= value or 1
            elif kind == 1:
                edited[at] = value
            else:
                del edited[at:]
        data = bytes(edited)
    if work.gzip:
        data = gzip.compress(data, compresslevel=1, mtime=0)
        suffix += ".gz"
    return data, suffix, in_file


def mutate(data: bytes) -> Mutated:
    """Run a program: the mutated capture file and its keys."""
    return run_program(data, seeds(), ALL_OPS, STREAM_OPS, PACKET_OPS)


def run_program(
    data: bytes,
    all_seeds: Sequence[Seed],
    ops: Sequence[Op],
    stream_ops: Sequence[Op],
    packet_ops: Sequence[Op],
    sip_ops: Sequence[Op] = (),
) -> Mutated:
    """Run a program over ``all_seeds`` with the opcodes ``ops``.  Each operation acts at the
    level of the group it is in, groups applied in this order: ``sip_ops`` (the SIP texts of
    a media fixture, which then replace its TLS connection in plaintext), ``stream_ops``,
    ``packet_ops`` (after the streams are cut back into packets), then the rest (file, keys).
    """
    src = ByteSource(data)
    seed = all_seeds[src.below(len(all_seeds))]
    work = Work(seed, key_paths=list(seed.key_paths), keylog=seed.keylog)
    # the connections kept: all, or the first few (a resumed session needs the earlier
    # connection that set it up); fewer packets make more inputs per second
    keep = src.below(len(seed.conns) + 1)
    if 0 < keep < len(seed.conns):
        work.connections = keep
        work.operations.append(f"only the first {keep} of {len(seed.conns)} connections")
    groups: tuple[list[tuple[Op, ByteSource]], ...] = ([], [], [], [])
    count = 0
    while src.remaining and count < MAX_OPERATIONS:
        op = ops[src.below(len(ops))]
        operands = ByteSource(src.sized_bytes(48))  # each operation reads its own bytes
        group = 0 if op in sip_ops else 1 if op in stream_ops else 2 if op in packet_ops else 3
        groups[group].append((op, operands))
        count += 1
    for op, operands in groups[0]:
        op(work, operands)
    if work.sip_texts is not None:
        _plain_sip(work)
    for op, operands in groups[1]:
        op(work, operands)
    _rebuild_packets(work)
    for op, operands in groups[2] + groups[3]:
        op(work, operands)
    raw = [capmodel.RawPacket(ts, d) for ts, d, _ in work.packets]
    content, suffix, keylog_in_file = _file_bytes(work, raw)
    return Mutated(
        seed,
        content,
        suffix,
        work.key_paths,
        None if keylog_in_file else work.keylog,
        work.operations,
        work.sip_texts,
        work.forged_rtcp,
    )


def seed_programs() -> list[bytes]:
    """A starting corpus: each fixture unchanged, and each with one operation of each kind."""
    count = len(seeds())
    out = []
    for index in range(count):
        out.append(bytes([index]))
        for op in range(len(ALL_OPS)):
            out.append(
                bytes([index, 0, op, 8])
                + bytes([(index * 7 + op * 13 + k) & 0xFF for k in range(8)])
            )
    return out
