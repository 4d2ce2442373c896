"""The TLS stage: one ``TlsConnection`` per TCP flow, shared keys, session cache and stats.

When keys may still arrive (a key log that is being written, a key-log listener), records
without keys are held per connection, bounded in bytes per flow, in bytes overall, and in time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from captagent_tls.net.tcp import Flow
from captagent_tls.tls.connection import TlsConnection
from captagent_tls.tls.events import ConnectionDone, Event
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.sessions import SessionCache


@dataclass
class TlsStats:
    connections: int = 0
    non_tls_flows: int = 0
    sessions_full: int = 0
    sessions_resumed: int = 0
    undecryptable: dict[str, int] = field(default_factory=dict)
    records_decrypted: int = 0
    records_failed: int = 0  # tag, MAC or padding check failed: dropped
    records_undecrypted: int = 0  # no keys for them
    records_expired: int = 0  # held for keys that did not come in time
    finished_verified: int = 0
    finished_failed: int = 0
    early_data_records: int = 0
    early_data_skipped: int = 0
    key_updates: int = 0
    handshake_errors: int = 0
    framing_errors: int = 0
    resyncs: int = 0
    alerts: int = 0


@dataclass
class HoldLimits:
    max_wait_s: float = 10.0
    max_bytes_per_flow: int = 1 << 20
    max_bytes_total: int = 64 << 20


class TlsTracker:
    def __init__(self, keys: KeyStore | None = None, session_cache_size: int = 20_000,
                 keys_may_arrive: bool = False, hold: HoldLimits | None = None):
        self.keys = keys if keys is not None else KeyStore()
        self.sessions = SessionCache(session_cache_size)
        self.stats = TlsStats()
        self.keys_may_arrive = keys_may_arrive
        self.hold = hold or HoldLimits()
        self.held_bytes = 0
        self._waiting: dict[TlsConnection, None] = {}  # insertion-ordered set
        self._generation = self.keys.generation

    @property
    def max_held_bytes_per_flow(self) -> int:
        return self.hold.max_bytes_per_flow

    def _connection(self, flow: Flow) -> TlsConnection:
        conn: TlsConnection | None = flow.context
        if conn is None:
            conn = flow.context = TlsConnection(flow, self)
        return conn

    def data(self, flow: Flow, direction: int, data: bytes, ts: int) -> list[Event]:
        events = self._connection(flow).data(direction, data, ts)
        if self.held_bytes > self.hold.max_bytes_total:
            events.extend(self._shed(ts))
        return events

    def gap(self, flow: Flow, direction: int, ts: int) -> list[Event]:
        return self._connection(flow).gap(direction, ts)

    def closed(self, flow: Flow, ts: int) -> list[Event]:
        """The TCP flow ended.  Records still waiting for keys keep waiting (the keys of a
        short call often arrive after its FIN); ``ConnectionDone`` says when it is over."""
        conn = flow.context
        if conn is None:
            return [ConnectionDone(flow, ts)]
        conn.closed = True
        if conn.waiting and self.keys_may_arrive:
            return []
        return self._finish(conn, ts)

    def _finish(self, conn: TlsConnection, ts: int) -> list[Event]:
        events: list[Event] = conn.close(ts)
        self._waiting.pop(conn, None)
        events.append(ConnectionDone(conn.flow, ts))
        return events

    def _settle(self, conn: TlsConnection, ts: int, events: list[Event]) -> None:
        """After a retry or an expiry: forget connections that are closed and done."""
        if not conn.waiting:
            self._waiting.pop(conn, None)
            if conn.closed:
                events.extend(self._finish(conn, ts))

    # -- records waiting for keys -----------------------------------------------------------

    def note_waiting(self, conn: TlsConnection, size: int) -> None:
        self.held_bytes += size
        self._waiting[conn] = None

    def note_released(self, conn: TlsConnection, size: int) -> None:
        self.held_bytes -= size
        if not conn.waiting:
            self._waiting.pop(conn, None)

    def keys_changed(self, ts: int) -> list[Event]:
        """Call after adding secrets to the key store: held records get another chance."""
        events: list[Event] = []
        if self.keys.generation == self._generation:
            return events
        self._generation = self.keys.generation
        for conn in list(self._waiting):
            events.extend(conn.retry(ts))
            self._settle(conn, ts, events)
        return events

    def expire(self, now: int) -> list[Event]:
        """Drop held records older than the wait limit (capture time)."""
        events: list[Event] = []
        max_wait = int(self.hold.max_wait_s * 1e9)
        for conn in list(self._waiting):
            events.extend(conn.expire_held(now, max_wait))
            self._settle(conn, now, events)
        return events

    def close_all(self, ts: int) -> list[Event]:
        """End of input: records still waiting will get no keys now."""
        events: list[Event] = []
        for conn in list(self._waiting):
            events.extend(conn.expire_held(ts, -1, "no keys by the end of the capture"))
            self._settle(conn, ts, events)
        return events

    def _shed(self, ts: int) -> list[Event]:
        """Over the overall cap: drop the records of the longest-waiting connections."""
        events: list[Event] = []
        for conn in list(self._waiting):
            if self.held_bytes <= self.hold.max_bytes_total:
                break
            events.extend(conn.expire_held(ts, -1, "too many bytes waiting for keys overall"))
            self._settle(conn, ts, events)
        return events
