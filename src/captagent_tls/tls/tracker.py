"""The TLS stage: one ``TlsConnection`` per TCP flow, shared keys, session cache and stats."""

from __future__ import annotations

from dataclasses import dataclass, field

from captagent_tls.net.tcp import Flow
from captagent_tls.tls.connection import TlsConnection
from captagent_tls.tls.events import Event
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
    finished_verified: int = 0
    finished_failed: int = 0
    handshake_errors: int = 0
    framing_errors: int = 0
    resyncs: int = 0
    alerts: int = 0


class TlsTracker:
    def __init__(self, keys: KeyStore | None = None, session_cache_size: int = 20_000):
        self.keys = keys if keys is not None else KeyStore()
        self.sessions = SessionCache(session_cache_size)
        self.stats = TlsStats()

    def connection(self, flow: Flow) -> TlsConnection:
        conn = flow.context
        if conn is None:
            conn = flow.context = TlsConnection(flow, self)
        return conn  # type: ignore[no-any-return]

    def data(self, flow: Flow, direction: int, data: bytes, ts: int) -> list[Event]:
        conn = flow.context
        if conn is None:
            conn = flow.context = TlsConnection(flow, self)
        return conn.data(direction, data, ts)  # type: ignore[no-any-return]

    def gap(self, flow: Flow, direction: int, ts: int) -> list[Event]:
        return self.connection(flow).gap(direction, ts)

    def closed(self, flow: Flow, ts: int) -> list[Event]:
        conn = flow.context
        if conn is None:
            return []
        events = conn.close(ts)
        flow.context = None
        return events  # type: ignore[no-any-return]
