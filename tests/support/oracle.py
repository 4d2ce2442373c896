"""tshark as a decryption oracle.

Two entry points:

* :func:`parse_follow_raw` reads the text that ``tshark -q -z follow,tls,raw,N`` prints
  (one or several streams concatenated, as in ``../shared/corpus/public/oracle/``).
* :func:`tshark_decrypt` runs tshark on a capture and returns the decrypted application
  data of every TCP stream, with the real endpoints filled in.

Facts about tshark 4.0's ``follow,tls,raw`` output that shape this code:

* Each chunk is one hex line: no indent for node 0, a TAB indent for node 1.
* Node 0 is the sender of the first packet that carries a *decrypted record*, and that
  includes encrypted handshake records. So node 0 is the server for an abbreviated
  (resumed) TLS 1.2 handshake and for TLS 1.3, where the server's Finished comes first.
* The ``Node 1:`` line is always ``:0`` and ``Node 0:`` is ``:0`` when nothing was
  decrypted. The header therefore never identifies the client by itself:
  :func:`tshark_decrypt` takes the endpoints and the client from the TCP packets.
* With several ``-z follow`` options, the blocks come out in reverse order; each block
  names its stream in ``Filter: tcp.stream eq N``.
* IPv6 endpoints are written ``[addr]:port``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_SEPARATOR = re.compile(r"^=+$")
_FILTER = re.compile(r"^Filter:\s*tcp\.stream eq (\d+)\s*$")
_NODE = re.compile(r"^Node ([01]):\s*(.*?)\s*$")
_HEX = re.compile(r"^(\t?)([0-9a-fA-F]*)$")

UNKNOWN_NODE = ":0"


# --------------------------------------------------------------------------- endpoints


def split_endpoint(text: str) -> tuple[str, int]:
    """``"1.2.3.4:5"`` or ``"[::1]:5"`` (or ``"::1:5"``) -> (normalized ip, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host:
        raise ValueError(f"no address in endpoint {text!r}")
    return str(ipaddress.ip_address(host)), int(port)


def endpoint(ip: str, port: int) -> str:
    """Canonical endpoint string: ``ip:port``, or ``[ip]:port`` for IPv6."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6:
        return f"[{addr.compressed}]:{int(port)}"
    return f"{addr.compressed}:{int(port)}"


def normalize_endpoint(text: str) -> str:
    ip, port = split_endpoint(text)
    return endpoint(ip, port)


def _is_known(node: str) -> bool:
    return bool(node) and node != UNKNOWN_NODE and not node.startswith(":")


# --------------------------------------------------------------------------- Stream


@dataclass
class Stream:
    """Decrypted application data of one TCP stream, as tshark's follow shows it."""

    index: int | None
    node0: str
    node1: str
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    #: endpoint string of the TCP client (the SYN sender) when known, else None
    client: str | None = None

    # -- raw access by node
    def data(self, node: int) -> bytes:
        """All bytes sent by node ``node`` (0 or 1), concatenated in order."""
        if node not in (0, 1):
            raise ValueError(f"node must be 0 or 1, not {node!r}")
        return b"".join(chunk for who, chunk in self.chunks if who == node)

    @property
    def node0_bytes(self) -> bytes:
        return self.data(0)

    @property
    def node1_bytes(self) -> bytes:
        return self.data(1)

    @property
    def endpoints(self) -> tuple[str, str]:
        return self.node0, self.node1

    # -- access by endpoint
    def node_of(self, ep: str) -> int:
        want = normalize_endpoint(ep)
        for i, node in enumerate((self.node0, self.node1)):
            if _is_known(node) and normalize_endpoint(node) == want:
                return i
        raise KeyError(
            f"{ep} is not an endpoint of stream {self.index} ({self.node0}, {self.node1})"
        )

    def data_from(self, ep: str) -> bytes:
        """All bytes sent by endpoint ``ep`` (``ip:port``)."""
        return self.data(self.node_of(ep))

    def by_direction(self) -> dict[tuple[str, str], bytes]:
        """{(src endpoint, dst endpoint): bytes} for both directions (canonical endpoints)."""
        if not (_is_known(self.node0) and _is_known(self.node1)):
            raise ValueError(
                f"stream {self.index} has unknown endpoints: {self.node0}, {self.node1}"
            )
        a, b = normalize_endpoint(self.node0), normalize_endpoint(self.node1)
        return {(a, b): self.data(0), (b, a): self.data(1)}

    # -- access by TCP role (needs .client)
    @property
    def server(self) -> str | None:
        if self.client is None:
            return None
        return self.node1 if self.node_of(self.client) == 0 else self.node0

    @property
    def c2s(self) -> bytes:
        if self.client is None:
            raise ValueError(f"client of stream {self.index} is unknown")
        return self.data_from(self.client)

    @property
    def s2c(self) -> bytes:
        if self.client is None:
            raise ValueError(f"client of stream {self.index} is unknown")
        return self.data(1 - self.node_of(self.client))


# --------------------------------------------------------------------------- parser


def parse_follow_raw(text: str) -> list[Stream]:
    """Parse ``tshark -q -z follow,tls,raw,N`` output (one or several blocks).

    Streams are returned in the order they appear in the text. ``node0``/``node1`` are
    the header's strings as printed (often ``:0``); ``client`` stays None.
    """
    streams: list[Stream] = []
    current: Stream | None = None
    in_block = False
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.rstrip("\r")
        if _SEPARATOR.match(line):
            in_block = not in_block
            if not in_block:
                current = None
            continue
        if not line.strip():
            continue
        if line.startswith("Follow:"):
            kind = line.partition(":")[2].strip()
            if kind != "tls,raw":
                raise ValueError(f"line {lineno}: expected 'Follow: tls,raw', got {line!r}")
            current = Stream(index=None, node0=UNKNOWN_NODE, node1=UNKNOWN_NODE)
            streams.append(current)
            continue
        if current is None:
            raise ValueError(f"line {lineno}: data outside a follow block: {line[:60]!r}")
        m = _FILTER.match(line)
        if m:
            current.index = int(m.group(1))
            continue
        if line.startswith("Filter:"):
            continue  # some other filter expression; index stays None
        m = _NODE.match(line)
        if m:
            if m.group(1) == "0":
                current.node0 = m.group(2)
            else:
                current.node1 = m.group(2)
            continue
        m = _HEX.match(line)
        if m and m.group(2):
            hexdigits = m.group(2)
            if len(hexdigits) % 2:
                raise ValueError(f"line {lineno}: odd number of hex digits")
            current.chunks.append((1 if m.group(1) else 0, bytes.fromhex(hexdigits)))
            continue
        raise ValueError(f"line {lineno}: unexpected line {line[:60]!r}")
    if in_block:
        raise ValueError("unterminated follow block (missing closing ==== line)")
    return streams


# --------------------------------------------------------------------------- tshark


def tshark_path() -> str:
    """Path of tshark, or pytest.skip when it is not installed."""
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed")
    return path


def _run_tshark(args: Sequence[str], timeout: float) -> str:
    env = dict(os.environ)
    # Keep tshark away from any personal preferences that could change the output.
    env.setdefault("WIRESHARK_CONFIG_DIR", "/nonexistent-captagent-tls-tests")
    proc = subprocess.run(
        [tshark_path(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"tshark {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr.strip()}"
        )
    return proc.stdout


@dataclass
class _TcpInfo:
    a: str  # endpoint of the first packet's sender
    b: str
    client: str | None = None  # from SYN / SYN-ACK
    seen_first: str = ""


def list_tcp_streams(pcap: str | os.PathLike[str], *, timeout: float = 300) -> dict[int, _TcpInfo]:
    """tcp.stream index -> endpoints, client (SYN sender) when a SYN is in the capture."""
    out = _run_tshark(
        [
            "-r", os.fspath(pcap), "-n", "-Y", "tcp",
            "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f",
            "-e", "tcp.stream",
            "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport",
            "-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport",
            "-e", "tcp.flags.syn", "-e", "tcp.flags.ack",
        ],
        timeout,
    )  # fmt: skip
    streams: dict[int, _TcpInfo] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 9 or not parts[0]:
            continue
        idx = int(parts[0])
        src_ip = parts[1] or parts[2]
        dst_ip = parts[4] or parts[5]
        if not src_ip or not dst_ip:
            continue
        src = endpoint(src_ip, int(parts[3]))
        dst = endpoint(dst_ip, int(parts[6]))
        syn = parts[7] in ("1", "True")
        ack = parts[8] in ("1", "True")
        info = streams.get(idx)
        if info is None:
            info = streams[idx] = _TcpInfo(a=src, b=dst)
        if info.client is None and syn:
            info.client = dst if ack else src
    return streams


def _guess_client(info: _TcpInfo, tls_ports: Iterable[int]) -> str:
    """Client when no SYN was captured: the side not on a TLS port, else the higher port."""
    if info.client is not None:
        return info.client
    ports = set(tls_ports)
    pa, pb = split_endpoint(info.a)[1], split_endpoint(info.b)[1]
    if pb in ports and pa not in ports:
        return info.a
    if pa in ports and pb not in ports:
        return info.b
    if pa != pb:
        return info.a if pa > pb else info.b
    return info.a


def tshark_decrypt(
    pcap: str | os.PathLike[str],
    *,
    rsa_keys: Iterable[str | os.PathLike[str] | tuple[str | os.PathLike[str], str]] = (),
    keylog: str | os.PathLike[str] | None = None,
    tls_ports: Iterable[int] = (),
    extra_opts: Sequence[str] = (),
    timeout: float = 300,
) -> list[Stream]:
    """Decrypt every TCP stream of ``pcap`` with tshark and return them, ordered by index.

    ``rsa_keys``: key files (PEM), or (file, password) pairs for PKCS#12. They are given as
    ``-o uat:rsa_keys:"FILE","PASS"``: tshark 4.0 picks an RSA key by the server
    certificate's public key, so no IP or port is needed.
    ``keylog``: an NSS key log file (``-o tls.keylog_file:FILE``).
    ``tls_ports``: ports to decode as TLS (``-d tcp.port==P,tls``), needed for ports that
    tshark does not know as TLS.
    ``extra_opts``: more tshark arguments, e.g. ``("-o", "tcp.reassemble_out_of_order:TRUE")``.

    Each returned :class:`Stream` has real ``node0``/``node1`` endpoints and ``client``
    (the SYN sender; guessed from the ports when the capture has no SYN).
    """
    tshark_path()
    tls_ports = [int(p) for p in tls_ports]
    tcp = list_tcp_streams(pcap, timeout=timeout)
    if not tcp:
        return []

    opts: list[str] = ["-n"]
    for item in rsa_keys:
        if isinstance(item, tuple):
            key_file, password = item
        else:
            key_file, password = item, ""
        key_path = os.path.abspath(os.fspath(key_file))
        if '"' in key_path or '"' in password:
            raise ValueError("quotes are not supported in key paths or passwords")
        opts += ["-o", f'uat:rsa_keys:"{key_path}","{password}"']
    if keylog is not None:
        opts += ["-o", f"tls.keylog_file:{os.path.abspath(os.fspath(keylog))}"]
    for port in tls_ports:
        opts += ["-d", f"tcp.port=={port},tls"]
    opts += list(extra_opts)

    follow: list[str] = []
    for idx in sorted(tcp):
        follow += ["-z", f"follow,tls,raw,{idx}"]
    text = _run_tshark(["-r", os.fspath(pcap), "-q", *opts, *follow], timeout)
    parsed = {s.index: s for s in parse_follow_raw(text)}

    result: list[Stream] = []
    for idx in sorted(tcp):
        info = tcp[idx]
        client = _guess_client(info, tls_ports)
        server = info.b if client == info.a else info.a
        got = parsed.get(idx)
        chunks = got.chunks if got is not None else []
        if got is not None and _is_known(got.node0):
            first = normalize_endpoint(got.node0)
            if first not in (info.a, info.b):
                raise RuntimeError(
                    f"stream {idx}: follow says node 0 is {got.node0}, "
                    f"but the stream is {info.a} <-> {info.b}"
                )
            other = info.b if first == info.a else info.a
            node0, node1 = first, other
        elif chunks:
            raise RuntimeError(f"stream {idx}: decrypted data but no node 0 address")
        else:
            node0, node1 = client, server
        result.append(
            Stream(index=idx, node0=node0, node1=node1, chunks=list(chunks), client=client)
        )
    return result


def capture_time_range(
    pcap: str | os.PathLike[str], *, timeout: float = 300
) -> tuple[float, float]:
    """(first, last) frame time (epoch seconds) of any capture tshark can read."""
    out = _run_tshark(
        ["-r", os.fspath(pcap), "-n", "-T", "fields", "-e", "frame.time_epoch"], timeout
    )
    times = [float(x) for x in out.split()]
    if not times:
        raise ValueError(f"{pcap}: no frames")
    return min(times), max(times)


def tshark_fields(
    pcap: str | os.PathLike[str],
    fields: Sequence[str],
    *,
    display_filter: str | None = None,
    options: Sequence[str] = (),
    aggregator: str | None = None,
    timeout: float = 300,
) -> list[list[str]]:
    """``tshark -T fields``: for every packet ``display_filter`` keeps, the values of
    ``fields``; with ``aggregator``, each field's occurrences joined by it.  ``options`` go
    before the filter (``-d``, ``-o``)."""
    args = ["-n", "-r", os.fspath(pcap), *options]
    if display_filter is not None:
        args += ["-Y", display_filter]
    args += ["-T", "fields"]
    if aggregator is not None:
        args += ["-E", "occurrence=a", "-E", f"aggregator={aggregator}"]
    for name in fields:
        args += ["-e", name]
    return [line.split("\t") for line in _run_tshark(args, timeout).splitlines()]


def packet_times(capture: Path) -> set[tuple[str, int, int]]:
    """(time in µs, source port, destination port) of every TCP packet with payload, by
    tshark: an independent reading of the capture."""
    times = set()
    for stamp, sport, dport in tshark_fields(
        capture, ["frame.time_epoch", "tcp.srcport", "tcp.dstport"], display_filter="tcp.len > 0"
    ):
        seconds, _, fraction = stamp.partition(".")
        times.add((f"{seconds}.{(fraction + '000000')[:6]}", int(sport), int(dport)))
    return times
