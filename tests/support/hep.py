"""HEP test helpers: a UDP collector, the hep-js decoder bridge, and a tiny chunk walker.

* :class:`UdpCollector` receives what the product sends to ``--hep 127.0.0.1:PORT``.
* :func:`decode_with_hepjs` decodes packets with the npm package ``hep-js`` (a second,
  independent decoder), through ``tests/hepjs/decode.js``.
* :func:`walk_hep3` lists the chunks of a packet, only to check chunk order and presence
  (hep-js merges chunks into one object and cannot tell either).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from .paths import HEPJS_DIR

# --------------------------------------------------------------------------- UDP collector


class UdpCollector:
    """Collect UDP datagrams on 127.0.0.1 in a background thread.

    >>> with UdpCollector() as col:
    ...     run_product(["--hep", f"127.0.0.1:{col.port}"])
    ...     col.wait_for(7, timeout=5)
    """

    def __init__(self, host: str = "127.0.0.1", rcvbuf: int = 8 * 1024 * 1024) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        # The kernel caps SO_RCVBUF at net.core.rmem_max; SO_RCVBUFFORCE (Linux, needs
        # CAP_NET_ADMIN) goes past it. Whatever we get is still the most we can have.
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        if force is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, force, rcvbuf)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.05)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.packets: list[bytes] = []
        self.senders: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"udp-collector-{self.port}", daemon=True
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> UdpCollector:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                break
            with self._cond:
                self.packets.append(data)
                self.senders.append(sender)
                self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until at least ``n`` datagrams arrived (or ``timeout``); return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.packets) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.packets)

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> list[bytes]:
        """Wait until no datagram arrived for ``quiet`` seconds; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            count = len(self.packets)
            while time.monotonic() < deadline:
                self._cond.wait(quiet)
                if len(self.packets) == count:
                    break
                count = len(self.packets)
            return list(self.packets)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> UdpCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- hep-js


def node_path() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed")
    return path


def ensure_hepjs() -> None:
    """Install tests/hepjs/node_modules with npm if needed; skip when that is impossible."""
    node_path()
    if (HEPJS_DIR / "node_modules" / "hep-js" / "index.js").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed and tests/hepjs/node_modules is missing")
    cmd = [npm, "ci"] if (HEPJS_DIR / "package-lock.json").exists() else [npm, "install"]
    proc = subprocess.run(
        [*cmd, "--no-audit", "--no-fund"],
        cwd=HEPJS_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 or not (HEPJS_DIR / "node_modules" / "hep-js").exists():
        pytest.skip(f"could not install hep-js with npm: {proc.stderr.strip()[-500:]}")


def decode_with_hepjs(packets: Iterable[bytes]) -> list[dict[str, Any]]:
    """Decode HEPv3 packets with hep-js; one dict per packet, in order.

    Keys are those hep-js puts in ``rcinfo`` (protocolFamily, protocol, srcIp, dstIp,
    srcPort, dstPort, timeSeconds, timeUseconds, payloadType, captureId, capturePass,
    hepNodeName, correlation_id, ...) plus ``payload`` (a UTF-8 decoded string) and
    ``index``. A packet hep-js rejects gives ``{"index": i, "error": ...}``.
    hep-js has no IPv6 address chunks (0x0005/0x0006): srcIp/dstIp are absent for them.
    """
    packets = list(packets)
    ensure_hepjs()
    node = node_path()
    with tempfile.NamedTemporaryFile("wb", suffix=".hep", delete=False) as fh:
        for p in packets:
            fh.write(struct.pack(">I", len(p)))
            fh.write(p)
        name = fh.name
    try:
        proc = subprocess.run(
            [node, str(HEPJS_DIR / "decode.js"), name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.unlink(name)
    if proc.returncode != 0:
        raise RuntimeError(f"decode.js exited with {proc.returncode}:\n{proc.stderr.strip()}")
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(out) != len(packets):
        raise RuntimeError(f"decode.js returned {len(out)} records for {len(packets)} packets")
    return out


# --------------------------------------------------------------------------- chunk walker

HEP3_MAGIC = b"HEP3"
CHUNK_IP_FAMILY = 0x0001
CHUNK_IP_PROTO = 0x0002
CHUNK_SRC_IP4 = 0x0003
CHUNK_DST_IP4 = 0x0004
CHUNK_SRC_IP6 = 0x0005
CHUNK_DST_IP6 = 0x0006
CHUNK_SRC_PORT = 0x0007
CHUNK_DST_PORT = 0x0008
CHUNK_TIME_SEC = 0x0009
CHUNK_TIME_USEC = 0x000A
CHUNK_PROTO_TYPE = 0x000B
CHUNK_CAPTURE_ID = 0x000C
CHUNK_AUTH_KEY = 0x000E
CHUNK_PAYLOAD = 0x000F
CHUNK_CORRELATION_ID = 0x0011
CHUNK_NODE_NAME = 0x0013


@dataclass(frozen=True)
class Chunk:
    vendor: int
    type: int
    value: bytes


def walk_hep3(packet: bytes) -> list[Chunk]:
    """Split a HEPv3 packet into its chunks; ValueError when the framing is wrong.

    Layout: "HEP3", total length u16 (whole packet), then chunks of vendor u16, type u16,
    length u16 (including these 6 bytes) and the value.
    """
    if len(packet) < 6 or packet[:4] != HEP3_MAGIC:
        raise ValueError("not a HEPv3 packet (no 'HEP3' magic)")
    (total,) = struct.unpack_from(">H", packet, 4)
    if total != len(packet):
        raise ValueError(f"total length {total} != datagram length {len(packet)}")
    chunks: list[Chunk] = []
    pos = 6
    while pos < total:
        if pos + 6 > total:
            raise ValueError(f"truncated chunk header at offset {pos}")
        vendor, ctype, length = struct.unpack_from(">HHH", packet, pos)
        if length < 6 or pos + length > total:
            raise ValueError(f"bad chunk length {length} at offset {pos}")
        chunks.append(Chunk(vendor, ctype, bytes(packet[pos + 6 : pos + length])))
        pos += length
    return chunks


def chunk_types(packet: bytes) -> list[int]:
    """Chunk types in packet order (vendor 0 only; others as -1)."""
    return [c.type if c.vendor == 0 else -1 for c in walk_hep3(packet)]


def chunk_value(packet: bytes, ctype: int) -> bytes | None:
    """Value of the first vendor-0 chunk of type ``ctype``, or None."""
    for c in walk_hep3(packet):
        if c.vendor == 0 and c.type == ctype:
            return c.value
    return None
