"""Which worker a frame of a capture file belongs to.

Both directions of a TCP connection must reach the same worker, so a connection is known by a
key that does not depend on the direction: the sum of its two addresses and the sum of its two
ports.  Two connections may share a key (they then share a worker, which is only a matter of
balance); one connection always has one key.  A UDP datagram goes by its address pair, because
the fragments of a fragmented datagram carry no ports.  Fragments themselves go to *every*
worker: the datagram they make up may be a TCP segment, which belongs to the worker of its
connection (the ports are only known once it is whole), so each worker reassembles and keeps
the datagrams that are its own, as the kernel's ``PACKET_FANOUT_FLAG_DEFRAG`` does for live
capture.  One worker, the owner of the address pair, counts a fragment as a packet.  Frames
that carry no flow (not IP, truncated, an unknown link type) go to worker 0, which counts them.

A capture file is read by every worker, in the same order, so the workers can agree on more
than a hash without talking to each other: :class:`FileSharder` deals the TCP connections in
turn, in the order they first appear, and remembers each choice for the connections seen
last.  Every
worker makes the same choices, and the work is spread evenly even when a capture holds few
connections: with the 20 connections of the bulk benchmark, a hash of the connections split
the packets 65 % / 35 % over two workers, dealing them splits it 50 / 50.

Hashes are CRC-32 (``zlib``): the same in every process, unlike ``hash()`` of bytes, which is
salted per interpreter.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from zlib import crc32

from captagent_tls.net.packet import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_EXTENSION_HEADERS,
    IPV6_FRAGMENT,
    LINKTYPE_ETHERNET,
    Datagram,
    Segment,
    Skip,
    ip_offset,
)

REMEMBERED = 1 << 20  # TCP connections whose worker is remembered (those seen last)

_ipv4 = struct.Struct("!B5xHxB2xII").unpack_from  # version/IHL, fragment, protocol, addresses
_ports = struct.Struct("!HH").unpack_from
# Ethernet type, IPv4 version/IHL, fragment, protocol, addresses, and the ports where a TCP
# header starts when the IPv4 header has no options
_ETHERNET_IPV4_TCP = struct.Struct("!12xHB5xHxB2xIIHH").unpack_from


def connection_key(src: int, sport: int, dst: int, dport: int) -> int:
    """The same number for both directions of a TCP connection (addresses as integers)."""
    return ((src + dst) << 17) | (sport + dport)


def pair_hash(src: bytes, dst: bytes) -> int:
    """The same number for both directions between two addresses."""
    return crc32(src + dst if src <= dst else dst + src)


def _flow_of(linktype: int, data: bytes | memoryview) -> tuple[bool, int]:
    """(True, the connection key) for a TCP segment; (False, n) otherwise, where n is the
    address pair's hash for a UDP datagram, ``-1 - hash`` for an IP fragment, and 0 for a frame
    without a flow.  Reads only the headers it needs; frames the pipeline will find malformed
    go to worker 0, which says so."""
    found = ip_offset(linktype, data)
    if not isinstance(found, int):
        return False, 0
    offset = found
    if len(data) < offset + 20:
        return False, 0
    version = data[offset] >> 4
    if version == 4:
        version_ihl, fragment, protocol, src_int, dst_int = _ipv4(data, offset)
        src = bytes(data[offset + 12 : offset + 16])
        dst = bytes(data[offset + 16 : offset + 20])
        if fragment & 0x3FFF:  # MF flag or a fragment offset
            return False, -1 - pair_hash(src, dst)
        l4 = offset + (version_ihl & 0x0F) * 4
    elif version == 6:
        if len(data) < offset + 40:
            return False, 0
        protocol = data[offset + 6]
        src = bytes(data[offset + 8 : offset + 24])
        dst = bytes(data[offset + 24 : offset + 40])
        src_int, dst_int = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        l4 = offset + 40
        while protocol in IPV6_EXTENSION_HEADERS:
            if len(data) < l4 + 8:
                return False, 0
            ext_len = (data[l4 + 1] + 2) * 4 if protocol == 51 else (data[l4 + 1] + 1) * 8
            protocol = data[l4]
            l4 += ext_len
        if protocol == IPV6_FRAGMENT:
            return False, -1 - pair_hash(src, dst)
    else:
        return False, 0
    if protocol == IPPROTO_TCP:
        if len(data) < l4 + 4:
            return False, 0
        sport, dport = _ports(data, l4)
        return True, connection_key(src_int, sport, dst_int, dport)
    if protocol == IPPROTO_UDP:
        return False, pair_hash(src, dst)
    return False, 0


class FileSharder:
    """Deals a capture file's frames to ``workers`` workers (see the module docstring).

    Called with each frame, in file order, in every worker (``dealer()`` is the same function,
    quicker); the result says who takes the frame:

    * ``k`` (0 to ``workers`` - 1): a TCP segment, of worker ``k``'s connection;
    * ``workers + k``: a frame without a connection (UDP, not IP...), worker ``k``'s;
    * ``-2 - k``: an IP fragment: every worker takes it, worker ``k`` counts it.

    ``owns`` tells whether a datagram reassembled from fragments belongs to worker ``index``.

    The connections' workers are remembered in two generations of at most ``remembered / 2``
    each: a connection seen in the older one moves to the newer; when the newer is full, the
    older is forgotten.  Forgetting depends only on the frames, so every worker forgets alike.
    """

    def __init__(self, workers: int, index: int, remembered: int = REMEMBERED):
        self.workers = workers
        self.index = index
        self.generation_size = max(1, remembered // 2)
        self._next = 0  # the worker the next new connection goes to
        self._recent: dict[int, int] = {}
        self._older: dict[int, int] = {}

    def owner(self, key: int) -> int:
        """The worker of the TCP connection ``key``; a new connection is dealt one."""
        owner = self._recent.get(key)
        if owner is None:
            owner = self._older.pop(key, None)
            if owner is None:
                owner = self._next
                self._next = (owner + 1) % self.workers
            if len(self._recent) >= self.generation_size:
                self._older = self._recent
                self._recent = {}
            self._recent[key] = owner
        return owner

    def __call__(self, linktype: int, data: bytes | memoryview) -> int:
        tcp, number = _flow_of(linktype, data)
        if tcp:
            return self.owner(number)
        if number >= 0:
            return self.workers + number % self.workers
        return -2 - ((-1 - number) % self.workers)

    def dealer(self) -> Callable[[int, bytes | memoryview], int]:
        """``self`` as a closure, with the common frame (Ethernet, IPv4 without options, TCP)
        read by one ``struct`` call: it runs for every frame of the file in every worker."""
        head = _ETHERNET_IPV4_TCP
        owner, slow, sharder = self.owner, self.__call__, self

        def deal(linktype: int, data: bytes | memoryview) -> int:
            if linktype == LINKTYPE_ETHERNET and len(data) >= 38:
                ethertype, version_ihl, fragment, protocol, src, dst, sport, dport = head(data)
                if (
                    ethertype == 0x0800
                    and version_ihl == 0x45
                    and protocol == IPPROTO_TCP
                    and not fragment & 0x3FFF
                ):
                    key = ((src + dst) << 17) | (sport + dport)  # connection_key, inlined
                    found = sharder._recent.get(key)
                    return owner(key) if found is None else found
            return slow(linktype, data)

        return deal

    def owns(self, packet: Segment | Datagram | Skip) -> bool:
        """Whether a datagram reassembled from fragments is this worker's."""
        if type(packet) is Segment:
            key = connection_key(
                int.from_bytes(packet.src, "big"),
                packet.sport,
                int.from_bytes(packet.dst, "big"),
                packet.dport,
            )
            return self.owner(key) == self.index
        if type(packet) is Datagram:
            return pair_hash(packet.src, packet.dst) % self.workers == self.index
        return self.index == 0
