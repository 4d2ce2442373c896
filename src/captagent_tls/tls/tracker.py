"""The TLS stage: one ``TlsConnection`` per TCP flow, and what they share (``TlsContext``).

When keys may still arrive (a key log that is being written, a key-log listener), records
without keys are held per connection, bounded in bytes per flow, in bytes overall, and in time;
the tracker keeps the set of connections that wait, so that new keys and the clock reach them.
"""

from __future__ import annotations

from captagent_tls.counters import Counters
from captagent_tls.net.tcp import Flow
from captagent_tls.tls.connection import TlsConnection
from captagent_tls.tls.context import HoldLimits, TlsContext, TlsStats
from captagent_tls.tls.events import PLAINTEXT, ConnectionDone, Event
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.rsa_pool import RsaPool
from captagent_tls.tls.sessions import SessionCache

__all__ = ["HoldLimits", "TlsStats", "TlsTracker"]


class TlsTracker:
    def __init__(
        self,
        keys: KeyStore | None = None,
        session_cache_size: int = 20_000,
        keys_may_arrive: bool = False,
        hold: HoldLimits | None = None,
        rsa: RsaPool | None = None,
    ):
        self.context = TlsContext(
            keys if keys is not None else KeyStore(),
            SessionCache(session_cache_size),
            TlsStats(),
            hold or HoldLimits(),
            keys_may_arrive,
            rsa,
        )
        self.keys = self.context.keys
        self.sessions = self.context.sessions
        self.stats = self.context.stats
        self._waiting: dict[TlsConnection, None] = {}  # insertion-ordered set
        # of those, the resumed sessions whose master is not cached yet: the session may be
        # one whose RSA decryption is still running
        self._awaiting_session: dict[TlsConnection, None] = {}
        self._generation = self.keys.generation

    def add_counters(self, counters: Counters) -> None:
        tls = self.stats
        for name, value in (
            ("tls_connections", tls.connections),
            ("non_tls_flows", tls.non_tls_flows),
            ("tls_held_bytes", self.held_bytes),
            ("tls_waiting_connections", self.waiting_connections),
            ("session_cache_evictions", self.sessions.evictions),
        ):
            counters.set(name, value)
        counters.set("tls_sessions", tls.sessions_full, "full")
        counters.set("tls_sessions", tls.sessions_resumed, "resumed")
        counters.set("tls_sessions", tls.sessions_incomplete, "incomplete")
        for reason, count in tls.undecryptable.items():
            counters.set("tls_sessions", count, reason)
        for outcome, value in (
            ("decrypted", tls.records_decrypted),
            ("failed_authentication", tls.records_failed),
            ("unproven_iv", tls.records_unproven),
            ("no_keys", tls.records_undecrypted),
            ("expired_waiting_for_keys", tls.records_expired),
            ("over_hold_cap", tls.records_over_hold_cap),
        ):
            counters.set("tls_records", value, outcome)
        counters.set("tls_finished", tls.finished_verified, "verified")
        counters.set("tls_finished", tls.finished_failed, "failed")
        for kind in (
            "alerts",
            "key_updates",
            "early_data_records",
            "early_data_skipped",
            "resyncs",
            "framing_errors",
            "handshake_errors",
            "handshakes_too_large",
        ):
            counters.set("tls_events", getattr(tls, kind), kind)
        self.keys.add_counters(counters)

    @property
    def held_bytes(self) -> int:
        return self.context.held.used

    @property
    def waiting_connections(self) -> int:
        return len(self._waiting)

    def _connection(self, flow: Flow) -> TlsConnection:
        conn: TlsConnection | None = flow.context
        if conn is None:
            conn = flow.context = TlsConnection(flow, self.context)
        return conn

    def data(self, flow: Flow, direction: int, data: bytes, ts: int) -> list[Event]:
        conn = self._connection(flow)
        events = conn.data(direction, data, ts)
        if conn.held is not None:
            self._waiting[conn] = None
            if conn.awaiting_session:
                self._awaiting_session[conn] = None
        return events

    def gap(self, flow: Flow, direction: int, ts: int) -> list[Event]:
        return self._connection(flow).gap(direction, ts)

    def closed(self, flow: Flow, ts: int) -> list[Event]:
        """The TCP flow ended.  Records still waiting for keys keep waiting (the keys of a
        short call often arrive after its FIN); ``ConnectionDone`` says when it is over."""
        conn: TlsConnection | None = flow.context
        if conn is None:
            return [ConnectionDone(flow, ts, PLAINTEXT, 0)]
        conn.closed = True
        if conn.waiting and (
            self.context.keys_may_arrive or conn.keys_coming or self.context.sessions_shared
        ):
            return []
        return self._finish(conn, ts)

    def discard(self, flow: Flow) -> None:
        """Forget a flow's TLS state at once (after an internal error)."""
        conn: TlsConnection | None = flow.context
        flow.context = None
        if conn is not None:
            self._waiting.pop(conn, None)
            if conn.held is not None:
                conn.held.release(self.context.held)
                conn.held = None

    def _finish(self, conn: TlsConnection, ts: int) -> list[Event]:
        events: list[Event] = conn.close(ts)
        self._waiting.pop(conn, None)
        conn.flow.context = None
        events.append(ConnectionDone(conn.flow, ts, conn.app_info, conn.client_dir or 0))
        return events

    def _settle(self, conn: TlsConnection, ts: int, events: list[Event]) -> None:
        """After a retry or an expiry: forget connections that are closed and done."""
        if not conn.waiting:
            self._waiting.pop(conn, None)
            if conn.closed:
                events.extend(self._finish(conn, ts))

    # -- records waiting for keys -----------------------------------------------------------

    def waiting(self) -> list[TlsConnection]:
        """The connections holding records for keys, longest waiting first."""
        return list(self._waiting)

    def keys_pending(self) -> bool:
        """Secrets were added to the key store since the waiting connections last tried."""
        if self.keys.generation == self._generation:
            return False
        self._generation = self.keys.generation
        return True

    def retry(self, conn: TlsConnection, ts: int) -> list[Event]:
        """New secrets: this waiting connection gets another chance."""
        events = conn.retry(ts)
        self._settle(conn, ts, events)
        return events

    def expire(self, conn: TlsConnection, now: int) -> list[Event]:
        """Drop the connection's held records if they are older than the wait limit."""
        if self.context.sessions_shared and not self.context.keys_may_arrive:
            return []  # waiting for a session another worker may have: see settle
        events = conn.expire_held(now, int(self.context.hold.max_wait_s * 1e9))
        self._settle(conn, now, events)
        return events

    def settle(self, conn: TlsConnection, ts: int) -> list[Event]:
        """Every worker has read past this connection's held records and none had its
        session: they are handled as if they had not waited."""
        events: list[Event] = []
        conn.settle_without_session(events)
        self._settle(conn, ts, events)
        return events

    def rsa_done(self) -> list[TlsConnection]:
        """Connections whose pre-master secret was decrypted since the last call."""
        rsa = self.context.rsa
        if rsa is None or not rsa.completed:
            return []
        done = []
        while rsa.completed:
            conn = rsa.completed.popleft().owner
            if isinstance(conn, TlsConnection) and conn.flow.context is conn:
                done.append(conn)  # (not a connection dropped meanwhile)
        return done

    def awaiting_sessions(self) -> list[TlsConnection]:
        """Waiting connections that resume a session not known yet (forgotten once they no
        longer wait for it)."""
        waiting = [conn for conn in self._awaiting_session if conn.awaiting_session]
        self._awaiting_session = dict.fromkeys(waiting)
        return waiting

    def release_rsa(self, frame: int) -> None:
        """Reading a file: hand over the RSA results due at this frame."""
        rsa = self.context.rsa
        if rsa is not None:
            rsa.release_due(frame)

    def wait_for_rsa(self) -> bool:
        """Until the pre-master secrets submitted so far are decrypted; False if none were."""
        rsa = self.context.rsa
        if rsa is None or not (rsa.busy or rsa.completed):  # (a scheduled job is pending)
            return False
        rsa.wait()
        return True

    def give_up(self, conn: TlsConnection, ts: int) -> list[Event]:
        """End of input: records still waiting will get no keys now."""
        if self.context.sessions_shared and not self.context.keys_may_arrive:
            return self.settle(conn, ts)
        events = conn.expire_held(ts, -1, "no keys by the end of the capture")
        self._settle(conn, ts, events)
        return events
