"""TLS record framing for one direction of a connection: records spanning segments, several
records per segment, telling TLS from other traffic by its first bytes, and finding the next
record header when framing was lost (a gap in the capture, or bytes that are not records).
"""

from __future__ import annotations

from captagent_tls.tls import handshake as hsk
from captagent_tls.tls.keyschedule import SSL3

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24
CONTENT_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT))
MAX_RECORD = (1 << 14) + 2048
HEADER = 5

# one int object per record version, shared by every session that keeps one (ints above 256
# are new objects each time they are computed)
VERSIONS = {version: version for version in range(0x0300, 0x0305)}

# content type of the marker ``RecordStream.feed`` puts where framing was lost
FRAMING_LOST = -1
Record = tuple[int, int, bytes]  # content type, record version, fragment


def _plausible_header(data: bytes | bytearray, at: int, version: int) -> bool:
    """``version``: the connection's record version (3.x), or 0 when not known."""
    if data[at] not in CONTENT_TYPES or data[at + 1] != 3:
        return False
    if version >> 8 == 3:
        return data[at + 2] == version & 0xFF
    return data[at + 2] <= 4


def find_record_start(data: bytes | bytearray, start: int, version: int) -> int:
    """Offset of the next plausible record header at or after ``start``, or -1.

    Plausible: a known content type, this connection's record version (any SSLv3-TLS 1.3
    version when it is not known yet), a sane length, and another plausible header right after
    the record (when those bytes are here).
    """
    end = len(data)
    search = start
    while True:
        found = data.find(3, search + 1)  # the record version's major byte
        if found < 0:
            return -1
        header = found - 1
        search = found
        if found + 1 >= end:
            return header if data[header] in CONTENT_TYPES else -1  # wait for more bytes
        if not _plausible_header(data, header, version):
            continue
        if header + HEADER > end:
            return header  # too few bytes to judge: wait for more
        length = (data[header + 3] << 8) | data[header + 4]
        following = header + HEADER + length
        if 0 < length <= MAX_RECORD and (
            following + 3 > end or _plausible_header(data, following, version)
        ):
            return header


class Detected:
    """What the first bytes of a stream say about it."""

    TLS = "tls"
    NOT_TLS = "not tls"
    MORE = "more"  # too short to tell
    SSLV2_HELLO = "sslv2 hello"


def detect(head: bytes) -> str:
    if len(head) < 3:
        return Detected.MORE
    if head[0] in CONTENT_TYPES and head[1] == 3 and head[2] <= 4:
        return Detected.TLS
    if head[0] & 0x80 and head[2] == hsk.CLIENT_HELLO:
        # an SSLv2-format hello that offers SSLv3 or TLS: version 3.x follows the type
        if len(head) < 5:
            return Detected.MORE
        if head[3] == 3 and head[4] <= 4:
            return Detected.SSLV2_HELLO
    return Detected.NOT_TLS


def sslv2_client_hello(head: bytes) -> tuple[hsk.ClientHello | None, int]:
    """An SSLv2-format ClientHello opening an SSLv3/TLS session: (hello, record end), or
    (None, 0) when more bytes are needed, or (None, -1) when it is not one."""
    length = ((head[0] & 0x7F) << 8) | head[1]
    if len(head) < 2 + length:
        return None, 0
    try:
        hello = hsk.parse_sslv2_client_hello(head[2 : 2 + length])
    except hsk.ParseError:
        return None, -1
    if hello.version < SSL3:
        return None, -1
    return hello, 2 + length


class RecordStream:
    """Cuts one direction's bytes into records."""

    __slots__ = ("buf", "lost", "version")

    def __init__(self) -> None:
        self.buf: bytearray | None = None  # only while it holds a partial record
        self.lost = False  # framing lost: look for the next record header
        self.version = 0  # the record version in use, to recognise headers after a loss

    def gap(self) -> None:
        """Bytes were lost: drop the partial record and find the next one."""
        self.buf = None
        self.lost = True

    def feed(self, chunk: bytes) -> list[Record]:
        """The complete records in ``chunk`` (and what was buffered before it).  Where
        framing was lost, a ``(FRAMING_LOST, 0, b"")`` marker comes first."""
        records: list[Record] = []
        buf = self.buf
        if buf:
            buf += chunk
            data: bytes | bytearray = buf
        else:
            data = chunk
        end = len(data)
        pos = 0
        if self.lost:
            pos = find_record_start(data, 0, self.version)
            if pos < 0:
                self._keep(data, max(0, end - HEADER + 1))
                return records
        while end - pos >= HEADER:
            content_type = data[pos]
            length = (data[pos + 3] << 8) | data[pos + 4]
            if content_type not in CONTENT_TYPES or data[pos + 1] != 3 or length > MAX_RECORD:
                if not self.lost:
                    self.lost = True
                    records.append((FRAMING_LOST, 0, b""))
                pos = find_record_start(data, pos + 1, self.version)
                if pos < 0:
                    pos = max(0, end - HEADER + 1)
                    break
                continue
            if end - pos - HEADER < length:
                break
            version = VERSIONS.get((data[pos + 1] << 8) | data[pos + 2], -1)
            if version < 0:  # (3.x with x > 4: not one we know; kept as it is)
                version = (data[pos + 1] << 8) | data[pos + 2]
            self.version = version
            records.append(
                (content_type, version, bytes(data[pos + HEADER : pos + HEADER + length]))
            )
            pos += HEADER + length
        self._keep(data, pos)
        return records

    def _keep(self, data: bytes | bytearray, pos: int) -> None:
        if pos >= len(data):
            self.buf = None
        elif data is self.buf:
            del data[:pos]
        else:
            self.buf = bytearray(data[pos:])
