"""Ground truth of the SIP-over-TLS captures: the plaintext that was really sent.

Two formats are read and normalized to :class:`GroundTruth`:

(a) scenario files, ``../shared/corpus/sip/NAME.json`` and ``tests/fixtures/captures/NAME.json``::

        {"scenario": ..., "settings": {...}, "key": "server-rsa2048.key", "keys": [...],
         "keylog": null | "NAME.keys", "server_ip": "127.0.0.1",
         "connections": [{"index", "client_port", "server_port", "cipher", "version", "reused",
                          optional: "client_ip", "server_ip", "expect_decrypt", "server_key"}],
         "messages": [{"conn", "dir": "c2s"|"s2c", "text"}]}   # texts are latin-1

    The project fixtures add ``settings.keepalives`` ([{"conn", "dir", "offset", "data"}]:
    CRLF keep-alives sent between messages, at that byte offset of the direction's
    stream) and ``settings.needs_keylog``. Without ``client_ip`` the client is taken to
    be on ``server_ip`` (all captures are made on loopback).

(b) ``../shared/corpus/public/sip-synthetic/NAME.expected.json``::

        [{"conn", "client_port", "version", "cipher", "session_reused", "c2s": str, "s2c": str}]

    Only the concatenated stream text is given there; :func:`split_sip_stream` cuts it
    into messages. All of those captures ran on 127.0.0.1:5061 (see the corpus INDEX.md).

The SIP splitter here is deliberately simple and written for the tests only; it does
not share code or logic with the product's framing.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import FIXTURE_KEYS

# sip-synthetic captures: "SIP over TLS on 127.0.0.1:5061" (corpus/public/INDEX.md).
SYNTHETIC_SERVER_IP = "127.0.0.1"
SYNTHETIC_SERVER_PORT = 5061

# Ciphers (OpenSSL names) that a server RSA key alone can decrypt: RSA key exchange.
_RSA_KX = re.compile(r"^(AES|DES|CAMELLIA|SEED|IDEA|RC4|NULL|ARIA)")


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


@dataclass
class Connection:
    index: int
    client_ip: str | None
    client_port: int
    server_ip: str | None
    server_port: int | None
    version: str | None = None
    cipher: str | None = None
    reused: bool | None = None
    #: False for a connection the given keys cannot decrypt (e.g. its server key is withheld)
    expect_decrypt: bool = True
    server_key: Path | None = None
    c2s: list[bytes] = field(default_factory=list)
    s2c: list[bytes] = field(default_factory=list)
    #: non-message bytes sent between messages (CRLF keep-alives): direction -> [(offset, data)]
    extras: dict[str, list[tuple[int, bytes]]] = field(
        default_factory=lambda: {"c2s": [], "s2c": []}
    )
    #: messages whose records were tampered with or lost on purpose: (direction, payload);
    #: they are not in c2s/s2c
    damaged: list[tuple[str, bytes]] = field(default_factory=list)

    def messages(self, direction: str) -> list[bytes]:
        """The SIP messages of one direction, in order."""
        if direction == "c2s":
            return self.c2s
        if direction == "s2c":
            return self.s2c
        raise ValueError(f"direction must be 'c2s' or 's2c', not {direction!r}")

    def stream(self, direction: str) -> bytes:
        """Every byte the application sent in one direction: messages plus keep-alives."""
        data = b"".join(self.messages(direction))
        for offset, extra in sorted(self.extras[direction], key=lambda e: e[0]):
            if offset > len(data):
                raise ValueError(f"keep-alive offset {offset} past the stream end {len(data)}")
            data = data[:offset] + extra + data[offset:]
        return data

    def src_dst(
        self, direction: str
    ) -> tuple[tuple[str | None, int | None], tuple[str | None, int | None]]:
        client = (self.client_ip, self.client_port)
        server = (self.server_ip, self.server_port)
        return (client, server) if direction == "c2s" else (server, client)


@dataclass
class Message:
    conn: int
    direction: str
    payload: bytes
    #: "tampered" or "lost" when the capture was damaged on purpose where this message ran
    damage: str = ""


@dataclass
class GroundTruth:
    path: Path
    format: str  # "scenario" (a) or "expected" (b)
    name: str
    connections: list[Connection]
    #: messages in the order sent when known (format a), else per connection c2s then s2c
    messages: list[Message]
    settings: dict[str, Any] = field(default_factory=dict)
    #: the main server key (``key``) and every key given to the decoder (``keys``)
    key: Path | None = None
    keys: list[Path] = field(default_factory=list)
    keylog: Path | None = None
    server_ip: str | None = None

    def connection_by_client_port(self, port: int) -> Connection:
        for conn in self.connections:
            if conn.client_port == port:
                return conn
        raise KeyError(f"{self.name}: no connection with client port {port}")

    @property
    def damaged(self) -> bool:
        """The capture was damaged on purpose (a tampered record, a lost segment)."""
        return any(conn.damaged for conn in self.connections)

    def sent(self) -> Counter[tuple[int, str, bytes]]:
        """Multiset of (client port, direction, message) over the connections that should
        decrypt: what ``support.cli.received`` of the decoder's output must equal."""
        sent: Counter[tuple[int, str, bytes]] = Counter()
        for conn in self.connections:
            if conn.expect_decrypt:
                for direction in ("c2s", "s2c"):
                    for message in conn.messages(direction):
                        sent[(conn.client_port, direction, message)] += 1
        return sent

    @property
    def server_ports(self) -> list[int]:
        return sorted({c.server_port for c in self.connections if c.server_port is not None})

    @property
    def needs_keylog(self) -> bool:
        """True when the server RSA key alone cannot decrypt (ECDHE/DHE/TLS 1.3)."""
        if self.keylog is not None or self.settings.get("keylog"):
            return True
        if self.settings.get("needs_keylog"):
            return True
        for conn in self.connections:
            if conn.version == "TLSv1.3":
                return True
            if (
                conn.cipher
                and not _RSA_KX.match(conn.cipher)
                and not conn.cipher.startswith("TLS_RSA_")
            ):
                return True
        return False


# --------------------------------------------------------------------------- SIP splitter

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", re.I | re.M)


def split_sip_stream(data: bytes) -> list[bytes]:
    """Cut a byte stream of back-to-back SIP messages into messages.

    A message is the header block up to the blank line plus Content-Length bytes of
    body (0 when the header is missing). CRLF keep-alives between messages are dropped.
    Raises ValueError on a truncated message.
    """
    return split_sip_stream_with_gaps(data)[0]


def split_sip_stream_with_gaps(data: bytes) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Like :func:`split_sip_stream`, also returning the CRLF runs between messages as
    (offset in ``data``, bytes)."""
    out: list[bytes] = []
    gaps: list[tuple[int, bytes]] = []
    pos = 0
    n = len(data)
    while pos < n:
        start = pos
        while data.startswith(b"\r\n", pos):
            pos += 2
        if pos > start:
            gaps.append((start, data[start:pos]))
        if pos >= n:
            break
        end = data.find(_HEADER_END, pos)
        if end < 0:
            raise ValueError(f"truncated SIP header at offset {pos}")
        head = data[pos:end]
        lengths = _CONTENT_LENGTH.findall(head)
        body_len = int(lengths[0]) if lengths else 0
        stop = end + len(_HEADER_END) + body_len
        if stop > n:
            raise ValueError(f"truncated SIP body at offset {pos} (need {body_len} bytes)")
        out.append(data[pos:stop])
        pos = stop
    return out, gaps


# --------------------------------------------------------------------------- loaders


def _resolve(base: Path, name: str | None, *extra_dirs: Path) -> Path | None:
    if not name:
        return None
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    for folder in (base, *extra_dirs):
        p = folder / candidate
        if p.exists():
            return p
    return base / candidate


def _load_scenario(path: Path, doc: dict[str, Any]) -> GroundTruth:
    base = path.parent
    key_dirs = (base.parent / "keys", FIXTURE_KEYS)
    server_ip = doc.get("server_ip")
    client_ip_default = doc.get("client_ip", server_ip)
    conns: dict[int, Connection] = {}
    for i, c in enumerate(doc.get("connections", [])):
        idx = int(c.get("index", i))
        conns[idx] = Connection(
            index=idx,
            client_ip=c.get("client_ip", client_ip_default),
            client_port=int(c["client_port"]),
            server_ip=c.get("server_ip", server_ip),
            server_port=int(c["server_port"]) if c.get("server_port") is not None else None,
            version=c.get("version"),
            cipher=c.get("cipher"),
            reused=c.get("reused"),
            expect_decrypt=bool(c.get("expect_decrypt", True)),
            server_key=_resolve(base, c.get("server_key"), *key_dirs),
        )
    messages: list[Message] = []
    for m in doc.get("messages", []):
        conn = conns[int(m["conn"])]
        direction = m["dir"]
        payload = _to_bytes(m["text"])
        damage = "tampered" if m.get("tampered") else "lost" if m.get("lost") else ""
        if damage:
            conn.damaged.append((direction, payload))
        else:
            conn.messages(direction).append(payload)
        messages.append(Message(conn.index, direction, payload, damage))
    settings = dict(doc.get("settings") or {})
    for ka in settings.get("keepalives") or []:
        conns[int(ka["conn"])].extras[ka["dir"]].append((int(ka["offset"]), _to_bytes(ka["data"])))
    key_name = doc.get("key") or (doc.get("keys") or [None])[0]
    key_names = list(doc.get("keys") or ([key_name] if key_name else []))
    return GroundTruth(
        path=path,
        format="scenario",
        name=doc.get("scenario") or path.stem,
        connections=[conns[i] for i in sorted(conns)],
        messages=messages,
        settings=settings,
        key=_resolve(base, key_name, *key_dirs),
        keys=[p for p in (_resolve(base, k, *key_dirs) for k in key_names) if p is not None],
        keylog=_resolve(base, doc.get("keylog"), *key_dirs),
        server_ip=server_ip,
    )


def _load_expected(path: Path, doc: list[dict[str, Any]]) -> GroundTruth:
    base = path.parent
    conns: list[Connection] = []
    messages: list[Message] = []
    for i, c in enumerate(doc):
        conn = Connection(
            index=int(c.get("conn", i)),
            client_ip=SYNTHETIC_SERVER_IP,
            client_port=int(c["client_port"]),
            server_ip=SYNTHETIC_SERVER_IP,
            server_port=SYNTHETIC_SERVER_PORT,
            version=c.get("version"),
            cipher=c.get("cipher"),
            reused=c.get("session_reused"),
        )
        for direction in ("c2s", "s2c"):
            payloads, gaps = split_sip_stream_with_gaps(_to_bytes(c.get(direction, "")))
            conn.extras[direction].extend(gaps)
            for payload in payloads:
                conn.messages(direction).append(payload)
                messages.append(Message(conn.index, direction, payload))
        conns.append(conn)
    name = path.name.removesuffix(".expected.json")
    key = base / "sip-server.key"
    keylog = base / f"{name}.keys"
    gt = GroundTruth(
        path=path,
        format="expected",
        name=name,
        connections=conns,
        messages=messages,
        key=key if key.exists() else None,
        keys=[key] if key.exists() else [],
        keylog=None,
        server_ip=SYNTHETIC_SERVER_IP,
    )
    # Only the ECDHE / TLS 1.3 captures *need* their key log.
    if keylog.exists() and gt.needs_keylog:
        gt.keylog = keylog
    return gt


def load_groundtruth(path: str | os.PathLike[str]) -> GroundTruth:
    """Read a ground-truth JSON file of either format (see the module docstring)."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        doc = json.load(fh)
    if isinstance(doc, list):
        return _load_expected(path, doc)
    if isinstance(doc, dict) and "connections" in doc and "messages" in doc:
        return _load_scenario(path, doc)
    raise ValueError(f"{path}: unknown ground-truth format")


def scenario_files(folder: Path) -> Iterator[tuple[Path, Path]]:
    """(capture, ground-truth json) pairs of a folder with NAME.pcap[ng] + NAME.json."""
    if not folder.is_dir():
        return
    for js in sorted(folder.glob("*.json")):
        for ext in (".pcap", ".pcapng"):
            cap = js.with_suffix(ext)
            if cap.exists():
                yield cap, js
                break


# --------------------------------------------------------------------------- capture times


def pcap_time_range(path: str | os.PathLike[str]) -> tuple[float, float]:
    """(first, last) packet time of a classic pcap file, read here without tshark.

    Falls back to tshark (see oracle.capture_time_range) for pcapng or other formats.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    magic = data[:4]
    formats = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
        b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
        b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }
    if magic not in formats:
        from .oracle import capture_time_range

        return capture_time_range(path)
    endian, scale = formats[magic]
    rec = struct.Struct(endian + "IIII")
    pos = 24
    first = last = None
    while pos + rec.size <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, pos)
        t = sec + frac * scale
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
        pos += rec.size + incl
    if first is None or last is None:
        raise ValueError(f"{path}: no packets")
    return first, last
