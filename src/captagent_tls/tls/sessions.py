"""A bounded cache of master secrets, for resumption by session ID (RFC 5246) and by session
ticket (RFC 5077)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class SessionCache:
    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self._by_id: OrderedDict[bytes, bytes] = OrderedDict()
        self._by_ticket: OrderedDict[bytes, bytes] = OrderedDict()
        self.evictions = 0
        # told of every session stored here (worker processes pass them to the others)
        self.on_store: Callable[[bytes, bytes, bytes], None] | None = None

    def __len__(self) -> int:
        return len(self._by_id) + len(self._by_ticket)

    def store(
        self, master: bytes, session_id: bytes = b"", ticket: bytes = b"", announce: bool = True
    ) -> None:
        if announce and self.on_store is not None:
            self.on_store(master, session_id, ticket)
        for table, key in ((self._by_id, session_id), (self._by_ticket, ticket)):
            if not key:
                continue
            table[key] = master
            table.move_to_end(key)
            if len(table) > self.max_entries:
                table.popitem(last=False)
                self.evictions += 1

    def lookup(self, session_id: bytes = b"", ticket: bytes = b"") -> bytes | None:
        if session_id and session_id in self._by_id:
            return self._by_id[session_id]
        if ticket and ticket in self._by_ticket:
            return self._by_ticket[ticket]
        return None
