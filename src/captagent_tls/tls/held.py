"""Records that wait for keys, both directions of a connection in arrival order.

A handshake's transcript and key changes depend on the order across directions, so one queue
holds both.  A record that arrives when the connection's cap or the overall cap is full is not
kept: a small stand-in takes its place, so that once keys arrive the records after it are still
opened with the right sequence number (and, for SSLv3/TLS 1.0 CBC, the right IV).  Only the
records that did not fit are lost.
"""

from __future__ import annotations

from typing import NamedTuple

from captagent_tls.tls.context import HoldBudget

# what a stand-in keeps of its record: enough for the next record's chained CBC IV, which is
# the last cipher block before the MAC (at most 16 + 48 bytes)
TAIL_BYTES = 64
# stand-ins are small but not free: beyond this many the connection stops waiting
MAX_STAND_INS = 1 << 16


class HeldRecord(NamedTuple):
    direction: int
    content_type: int
    version: int
    fragment: bytes  # the whole record body, or only its tail for a stand-in
    ts_ns: int
    dropped: bool  # a stand-in for a record that did not fit


class HeldRecords:
    """One connection's records waiting for keys."""

    __slots__ = ("records", "size", "since", "stand_ins")

    def __init__(self, first_ts: int):
        self.records: list[HeldRecord] = []
        self.size = 0  # bytes of whole records kept
        self.since = first_ts
        self.stand_ins = 0

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: HeldRecord, per_flow_cap: int, budget: HoldBudget) -> bool:
        """Keep the record, or a stand-in when it does not fit.  False: not even a stand-in
        fits any more."""
        size = len(record.fragment)
        if self.size + size <= per_flow_cap and budget.fits(size):
            self.records.append(record)
            self.size += size
            budget.used += size
            return True
        if self.stand_ins >= MAX_STAND_INS:
            return False
        self.stand_ins += 1
        self.records.append(record._replace(fragment=record.fragment[-TAIL_BYTES:], dropped=True))
        return True

    def release(self, budget: HoldBudget) -> list[HeldRecord]:
        """Hand every record back (to be replayed or dropped) and give their bytes back."""
        budget.used -= self.size
        records = self.records
        self.records = []
        self.size = 0
        self.stand_ins = 0
        return records

    @property
    def dropped(self) -> int:
        return self.stand_ins
