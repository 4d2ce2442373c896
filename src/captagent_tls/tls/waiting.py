"""Records without keys: held while keys may still arrive (a key log being written), replayed
in order when they do, dropped (and said so) when they do not come in time."""

from __future__ import annotations

from captagent_tls.tls.events import Event, TlsProblem
from captagent_tls.tls.held import HeldRecord, HeldRecords
from captagent_tls.tls.problems import Notice, Reason
from captagent_tls.tls.record_stream import FRAMING_LOST
from captagent_tls.tls.side import Phase
from captagent_tls.tls.state import ConnectionState


class KeyWaiting(ConnectionState):
    __slots__ = ()

    def _no_keys(self, record: HeldRecord, events: list[Event]) -> None:
        hs = self.handshake
        if hs is not None and hs.rsa_job is not None and hs.rsa_job.done:
            self._collect_rsa(hs)
            if self.sides[record.direction].has_keys:
                self._record(*record[:5], events)
                return
        if self.held is None and self.ctx.keys_may_arrive and not self.failed_for_good:
            # Keys that arrived while this connection held no records were offered to the
            # connections that did, not to this one (a TLS 1.3 key log's lines come one by
            # one: the client's handshake secret may follow the server's first flight).
            self._install_missing_keys()
            if self.sides[record.direction].has_keys:
                self._record(*record[:5], events)
                return
        if self.keys_coming:  # being worked out off the packet path: wait for them
            self._hold(record, events)
            return
        ctx = self.ctx
        if (
            ctx.keys_may_arrive
            or (
                ctx.sessions_shared
                and not ctx.settling
                and self._why_no_keys() is Reason.SESSION_UNKNOWN
            )
        ) and not self.failed_for_good:
            self._hold(record, events)
            return
        self.stats.records_undecrypted += 1
        self.sides[record.direction].gap_pending = True
        if self.failed is None:
            self._fail(self._why_no_keys(), record.ts_ns, events)

    def _hold(self, record: HeldRecord, events: list[Event]) -> None:
        """Keep a record until keys arrive; everything after it waits too, in order."""
        held = self.held
        if held is None:
            held = self.held = HeldRecords(record.ts_ns)
        if not held.add(record, self.ctx.hold.max_bytes_per_flow, self.ctx.held):
            self._drop_held(record.ts_ns, events, "too many records waiting for keys")
            self.stats.records_expired += 1
            self.sides[record.direction].gap_pending = True
        elif held.records[-1].dropped:
            self.stats.records_over_hold_cap += 1
            self._notice(
                Notice.RECORDS_DROPPED,
                record.ts_ns,
                events,
                f"records of {self.flow.describe()} waiting for keys are over the "
                "hold cap (--key-hold-flow, --key-hold-total): the newest are "
                "dropped, the rest wait",
            )

    def _drop_held(self, ts: int, events: list[Event], why: str) -> None:
        held = self.held
        assert held is not None
        records = held.release(self.ctx.held)
        self.held = None
        for record in records:
            self.sides[record.direction].gap_pending = True
        self.stats.records_expired += len(records)
        events.append(
            TlsProblem(
                self.flow,
                Notice.RECORDS_DROPPED.value,
                f"dropped {len(records)} records of {self.flow.describe()}: {why}",
                ts,
                self.server_endpoint(),
            )
        )
        if self.failed is None:
            self.failed = Reason.KEYS_LATE
            if self.outcome is None:
                self._set_outcome(Reason.KEYS_LATE.value)

    def _replay(self, events: list[Event]) -> None:
        held = self.held
        assert held is not None
        records = held.release(self.ctx.held)
        self.held = None
        self._replaying = True
        try:
            for index, record in enumerate(records):
                if self.held:  # a record was held again: keep the rest behind it
                    for rest in records[index:]:
                        self._requeue(rest)
                    return
                self._handle_held(record, events)
        finally:
            self._replaying = False

    def _handle_held(self, record: HeldRecord, events: list[Event]) -> None:
        """One record that waited, handled as it would have been on arrival: a stand-in for
        one that did not fit, a loss of bytes behind the records before it, or a record."""
        if record.dropped:
            self._skip_dropped(record, events)
        elif record.content_type == FRAMING_LOST:  # bytes lost after those before
            self._lost(record.direction, events, record.ts_ns)
        else:
            self._record(
                record.direction,
                record.content_type,
                record.version,
                record.fragment,
                record.ts_ns,
                events,
            )

    def settle_without_session(self, events: list[Event]) -> None:
        """Records held for a resumed session that no worker had: handled now as they would
        have been had they not waited (counted and reported as without keys)."""
        held = self.held
        if held is None:
            return
        records = held.release(self.ctx.held)
        self.held = None
        self.ctx.settling = True
        try:
            for record in records:
                self._handle_held(record, events)
        finally:
            self.ctx.settling = False

    def _requeue(self, record: HeldRecord) -> None:
        held = self.held
        assert held is not None
        if record.dropped:
            held.records.append(record)
            held.stand_ins += 1
        else:
            held.add(record, self.ctx.hold.max_bytes_per_flow, self.ctx.held)

    def _skip_dropped(self, record: HeldRecord, events: list[Event]) -> None:
        """A record that did not fit while waiting: move its side past it.  With keys the
        next record's sequence number (and chained IV) follow exactly; in a TLS 1.3
        handshake the dropped record may have ended the handshake, so the next one may be
        under the application keys."""
        side = self.sides[record.direction]
        decryptor = side.decryptor
        if side.encrypted and decryptor is not None and not side.seq_unknown:
            decryptor.skip(record.fragment)
            side.gap_pending = True
            if side.phase in (Phase.EARLY, Phase.HANDSHAKE):
                side.seq_unknown = side.handshake_gap = True
                if self.handshake is not None:
                    self.handshake.gap = True
        else:
            self._lost(record.direction, events, record.ts_ns)
