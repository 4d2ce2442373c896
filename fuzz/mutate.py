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
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fuzz import capmodel, tlsmap
from fuzz.bytesource import ByteSource
from fuzz.paths import FIXTURE_KEYS, FIXTURES
from fuzz.truth import SentStreams, load_sent_streams
from tests.support.groundtruth import GroundTruth

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
    truth: GroundTruth
    sent: SentStreams
    key_paths: list[Path]
    keylog: str | None


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
    capture = json_path.with_suffix(".pcap")
    linktype, packets = capmodel.read_pcap(capture.read_bytes())
    truth, sent = load_sent_streams(json_path)
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

    for path in truth.keys:
        load_key(path)  # once, now: a bad fixture key fails here, not in a fuzz input
    keylog = truth.keylog.read_text(encoding="utf-8", errors="replace") if truth.keylog else None
    return Seed(
        json_path.stem,
        capture,
        linktype,
        packets,
        infos,
        conns,
        truth,
        sent,
        list(truth.keys),
        keylog,
    )


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
    src = ByteSource(data)
    all_seeds = seeds()
    seed = all_seeds[src.below(len(all_seeds))]
    work = Work(seed, key_paths=list(seed.key_paths), keylog=seed.keylog)
    # the connections kept: all, or the first few (a resumed session needs the earlier
    # connection that set it up); fewer packets make more inputs per second
    keep = src.below(len(seed.conns) + 1)
    if 0 < keep < len(seed.conns):
        work.connections = keep
        work.operations.append(f"only the first {keep} of {len(seed.conns)} connections")
    stream_ops, packet_ops, other_ops = [], [], []
    while src.remaining and len(stream_ops) + len(packet_ops) + len(other_ops) < MAX_OPERATIONS:
        op = ALL_OPS[src.below(len(ALL_OPS))]
        operands = ByteSource(src.sized_bytes(48))  # each operation reads its own bytes
        (stream_ops if op in STREAM_OPS else packet_ops if op in PACKET_OPS else other_ops).append(
            (op, operands)
        )
    for op, operands in stream_ops:
        op(work, operands)
    _rebuild_packets(work)
    for op, operands in packet_ops:
        op(work, operands)
    for op, operands in other_ops:
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
