"""What one TCP or TLS connection wrote and its collector's TCP has not acknowledged: sans-IO.

HEP has no acknowledgements of its own, so a packet counts as delivered only once the
collector's kernel acknowledged its last byte (the sender learns the acknowledged offset of
the stream from the socket).  Offsets count from the first byte of the connection, the TLS
handshake included.  Over TLS a collector can use no part of a record it did not get whole,
so every packet in a record ends where the record ends: a record cut by a failure is sent
again whole, and no packet is both used and sent again.
"""

from __future__ import annotations

from collections import deque

TLS_RECORD = 16384  # the largest TLS plaintext record


def group_records(packets: list[bytes]) -> list[list[bytes]]:
    """Groups of consecutive packets that fit in one TLS record (a bigger packet alone)."""
    groups: list[list[bytes]] = []
    group: list[bytes] = []
    size = 0
    for packet in packets:
        if group and size + len(packet) > TLS_RECORD:
            groups.append(group)
            group, size = [], 0
        group.append(packet)
        size += len(packet)
    if group:
        groups.append(group)
    return groups


def acknowledged_offset(written: int, unacknowledged: int | None) -> int:
    """The stream offset the collector acknowledged, from what we wrote and what the socket
    still holds unacknowledged (None where the platform cannot tell: all of it counts)."""
    return written if unacknowledged is None else written - unacknowledged


class InFlight:
    """Packets written on one connection, in order, each with the stream offset at which the
    collector may use it."""

    def __init__(self) -> None:
        self._entries: deque[tuple[int, bytes]] = deque()  # (end offset, packet)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def wrote(self, packets: list[bytes], offset: int) -> int:
        """``packets`` were written back to back from ``offset`` (plain TCP); the end."""
        entries = self._entries
        for packet in packets:
            offset += len(packet)
            entries.append((offset, packet))
        return offset

    def wrote_record(self, packets: list[bytes], end: int) -> None:
        """``packets`` went in one TLS record that ends at ``end``."""
        self._entries.extend((end, packet) for packet in packets)

    def acknowledge(self, offset: int) -> tuple[int, int]:
        """The collector acknowledged the stream up to ``offset``: the packets that ended by
        then are delivered and forgotten; (how many, their bytes)."""
        entries = self._entries
        count = size = 0
        while entries and entries[0][0] <= offset:
            size += len(entries.popleft()[1])
            count += 1
        return count, size

    def unacknowledged(self) -> list[bytes]:
        """The connection is gone: every packet not acknowledged, in order, to send again."""
        packets = [packet for _, packet in self._entries]
        self._entries.clear()
        return packets

    def forget(self) -> tuple[int, int]:
        """Give up on what is left (shutdown deadline); (how many, their bytes)."""
        count, size = len(self._entries), sum(len(p) for _, p in self._entries)
        self._entries.clear()
        return count, size
