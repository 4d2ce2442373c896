"""TLS state for one TCP connection, sans-IO: stream bytes in, events out.

This module orchestrates: each direction's bytes are cut into records (``record_stream``),
protected records are opened with that side's keys (``side``, ``protection``), handshake
messages are followed to learn the randoms, the suite, the certificate and the key exchange
(``handshake_state``, ``tls13``), records without keys wait for them (``held``), and whatever
cannot be decrypted is explained (``problems``).

Nothing is passed on unless everything that shaped it is proven: its tag or MAC, its IV, a
suite and version the ClientHello offered, and the Finished messages that were captured.
Bytes lost in a capture gap cost only what they carried.
"""

from __future__ import annotations

from captagent_tls.net.tcp import Flow
from captagent_tls.tls.accounting import SessionAccounting
from captagent_tls.tls.context import TlsContext
from captagent_tls.tls.events import PLAINTEXT, AppData, AppGap, Event, TlsAlert, TlsInfo
from captagent_tls.tls.held import HeldRecord
from captagent_tls.tls.negotiation import Negotiation
from captagent_tls.tls.opening import RecordOpening, try_open
from captagent_tls.tls.problems import FINAL, Reason
from captagent_tls.tls.protection import LIVE_CONTEXTS, UNPROVEN
from captagent_tls.tls.record_stream import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    FRAMING_LOST,
    HANDSHAKE,
    Detected,
    detect,
    find_record_start,
    sslv2_client_hello,
)
from captagent_tls.tls.side import Phase, Side
from captagent_tls.tls.tls13 import is_tls13
from captagent_tls.tls.tls_info import NO_INFO
from captagent_tls.tls.waiting import KeyWaiting


class TlsConnection(Negotiation, RecordOpening, KeyWaiting, SessionAccounting):
    __slots__ = ()

    def __init__(self, flow: Flow, ctx: TlsContext):
        self.flow = flow
        self.ctx = ctx
        self.stats = ctx.stats
        self.sides = (Side(), Side())
        # the side that sent the SYN is the client until a ClientHello says otherwise
        self.client_dir = 0 if flow.syn_seen else None
        self.is_tls = None  # None until the first bytes say
        self.handshake = None  # while one runs; dropped once it is done
        self.version = 0
        self.suite = None
        self.client_random = b""
        self.info = None
        self.failed = None  # why the current session cannot be decrypted
        self.refused = False  # the session contradicted itself: nothing more of it is opened
        self.closed = False  # the TCP flow has ended
        self.held = None  # records waiting for keys, in arrival order
        self._replaying = False
        self.outcome = None  # the counter the current session is in
        self.session_open = False
        self.session_decrypted = False  # something of the current session was opened
        self.keys_failed = False  # records of the current session failed with its keys
        self.notices = ()  # told once per connection

    # -- input from the TCP stage ----------------------------------------------------------

    def data(self, direction: int, chunk: bytes, ts: int) -> list[Event]:
        events: list[Event] = []
        side = self.sides[direction]
        if self.is_tls is None:
            chunk = self._detect(direction, chunk, ts, events)
            if not chunk:
                return events
        elif self.is_tls is False:
            events.append(
                AppData(self.flow, direction, chunk, ts, PLAINTEXT, direction == self.client_dir)
            )
            return events
        for content_type, version, fragment in side.feed(chunk):
            if content_type == FRAMING_LOST:
                self.stats.framing_errors += 1
                self._lost_in_order(direction, ts, events)
            else:
                self._record(direction, content_type, version, fragment, ts, events)
        return events

    def gap(self, direction: int, ts: int) -> list[Event]:
        """The TCP stream lost bytes: drop the partial record and find the next one."""
        side = self.sides[direction]
        side.gap()
        events: list[Event] = []
        self._lost_in_order(direction, ts, events)
        return events

    def _lost_in_order(self, direction: int, ts: int, events: list[Event]) -> None:
        """Bytes were lost here: if records wait for keys, the loss waits behind them (what it
        does to the record sequence must come after the records before it)."""
        if self.held and not self._replaying:
            self._hold(HeldRecord(direction, FRAMING_LOST, 0, b"", ts, False), events)
        else:
            self._lost(direction, events, ts)

    def close(self, ts: int) -> list[Event]:
        events: list[Event] = []
        if self.is_tls is None:  # it ended before its first bytes could tell: not TLS
            for direction, side in enumerate(self.sides):
                if side.buf:
                    events.append(
                        AppData(
                            self.flow,
                            direction,
                            bytes(side.buf),
                            ts,
                            PLAINTEXT,
                            direction == (self.client_dir or 0),
                        )
                    )
                    side.buf = None
        if self.held:
            self._drop_held(ts, events, "the connection closed first")
        self._settle_session()
        for side in self.sides:  # its keys need not outlive it in OpenSSL's contexts
            for decryptor in (side.decryptor, side.fallback):
                if decryptor is not None:
                    LIVE_CONTEXTS.forget(decryptor)
        return events

    def retry(self, ts: int) -> list[Event]:
        """New secrets have arrived: install keys where they were missing, replay held records."""
        events: list[Event] = []
        if self.refused:
            return events
        self._install_missing_keys()
        if self.held:
            self._replay(events)
        return events

    def _install_missing_keys(self) -> None:
        """Give the sides still without keys those that have arrived since they looked."""
        hs = self.handshake
        if hs is not None and hs.rsa_job is not None and hs.rsa_job.done:
            self._collect_rsa(hs)
        if (
            hs is not None
            and hs.master is None
            and hs.server_hello is not None
            and not is_tls13(hs.version)
            and not self.failed_for_good
        ):
            self._find_master(hs)
        for direction, side in enumerate(self.sides):
            if side.encrypted and not side.has_keys:
                self._install(direction)

    @property
    def app_info(self) -> TlsInfo:
        """What this flow's application bytes travel in (``PLAINTEXT`` if not TLS)."""
        if self.is_tls is False:
            return PLAINTEXT
        return self.info or NO_INFO

    @property
    def waiting(self) -> bool:
        return bool(self.held)

    @property
    def awaiting_session(self) -> bool:
        """Records wait while this resumed session's master is not known (yet)."""
        hs = self.handshake
        return bool(self.held) and hs is not None and hs.missing is Reason.SESSION_UNKNOWN

    @property
    def keys_coming(self) -> bool:
        """Keys this connection waits for are being worked out off the packet path: its own
        pre-master secret, or (resuming) the session of another connection whose RSA
        decryption is not done yet."""
        hs = self.handshake
        if hs is None:
            return False
        if hs.rsa_job is not None:
            return True
        rsa = self.ctx.rsa
        return (
            hs.missing is Reason.SESSION_UNKNOWN
            and rsa is not None
            and (rsa.busy or bool(rsa.completed))
        )

    @property
    def held_bytes(self) -> int:
        return self.held.size if self.held else 0

    @property
    def failed_for_good(self) -> bool:
        return self.refused or self.failed in FINAL

    def expire_held(self, now: int, max_wait_ns: int, why: str = "") -> list[Event]:
        """Drop held records that waited longer than ``max_wait_ns`` (all of them if < 0)."""
        events: list[Event] = []
        held = self.held
        if held and (max_wait_ns < 0 or now - held.since > max_wait_ns):
            self._drop_held(now, events, why or f"no keys within {max_wait_ns / 1e9:g} s")
        return events

    # -- what the first bytes say, and lost bytes ---------------------------------------------

    def _detect(self, direction: int, chunk: bytes, ts: int, events: list[Event]) -> bytes:
        """Decide from the first bytes whether this flow carries TLS at all.  Returns the
        bytes to parse as records ("" when they were consumed or more are needed)."""
        stream = self.sides[direction]
        head = bytes(stream.buf) + chunk if stream.buf else chunk
        stream.buf = None
        if stream.lost:
            # bytes were lost before we could tell: look for a record header in what follows
            if find_record_start(head, 0, 0) >= 0:
                self._is_tls()
                return head
            if b"SIP/2.0" not in head and len(head) < 2 * 5 + (1 << 15):
                stream.buf = bytearray(head)
                return b""
            found = Detected.NOT_TLS
        else:
            found = detect(head)
        if found == Detected.TLS:
            self._is_tls()
            return head
        if found == Detected.MORE:
            stream.buf = bytearray(head)
            return b""
        if found == Detected.SSLV2_HELLO:
            hello, end = sslv2_client_hello(head)
            if end == 0:
                stream.buf = bytearray(head)
                return b""
            if hello is not None:
                self._is_tls()
                self._client_hello(direction, head[2:end], hello)
                return head[end:]
        self.is_tls = False
        self.stats.non_tls_flows += 1
        if self.client_dir is None:
            self.client_dir = 0  # plain TCP: the side that sent the SYN, or spoke first
        other = self.sides[1 - direction]
        if other.buf:  # what the other direction held while the flow was undecided
            events.append(
                AppData(
                    self.flow,
                    1 - direction,
                    bytes(other.buf),
                    ts,
                    PLAINTEXT,
                    1 - direction == self.client_dir,
                )
            )
            other.buf = None
        events.append(
            AppData(self.flow, direction, head, ts, PLAINTEXT, direction == self.client_dir)
        )
        return b""

    def _is_tls(self) -> None:
        self.is_tls = True
        self.stats.connections += 1
        self._open_session()

    def _lost(self, direction: int, events: list[Event], ts: int) -> None:
        """Bytes of this direction were lost (a capture gap, or framing we could not follow)."""
        side = self.sides[direction]
        if side.encrypted:
            side.lose_records()
        else:
            side.gap_pending = True
        side.handshake_buf = None
        hs = self.handshake
        if hs is not None or side.phase in (Phase.PLAIN, Phase.EARLY, Phase.HANDSHAKE):
            side.handshake_gap = True
            if hs is not None:
                hs.gap = True
        events.append(AppGap(self.flow, direction, ts, self.app_info, direction == self.client_dir))

    # -- records ------------------------------------------------------------------------------

    def _record(
        self,
        direction: int,
        content_type: int,
        version: int,
        fragment: bytes,
        ts: int,
        events: list[Event],
    ) -> None:
        side = self.sides[direction]
        decryptor = side.decryptor
        if (
            content_type == APPLICATION_DATA
            and decryptor is not None
            and side.phase != Phase.EARLY
            and not side.seq_unknown
            and not side.gap_pending
            and (not self.held or self._replaying)
        ):
            # the steady state of a session, kept short: it runs once per record
            opened = self._open_in_order(side, decryptor, content_type, version, fragment)
            if opened is not None:
                self._dispatch(direction, *opened, ts, events)
            return
        if self.held and not self._replaying:
            self._hold(HeldRecord(direction, content_type, version, fragment, ts, False), events)
            return
        if content_type == CHANGE_CIPHER_SPEC and self._tls13_possible():
            return  # middlebox-compatibility CCS (RFC 8446 D.4)
        if not side.encrypted:
            if content_type == APPLICATION_DATA:
                if self._early_data_possible(direction):
                    self._early_data(direction, content_type, version, fragment, ts, events)
                    return
                # protected data before this side's ChangeCipherSpec: that was lost in a gap,
                # or the connection started before the capture
                self._protected_from_now(direction)
            elif (
                content_type == HANDSHAKE
                and side.handshake_gap
                and self._lost_key_change(direction, version, fragment, ts, events)
            ):
                return
            else:
                side.lost = False
                self._dispatch(direction, content_type, fragment, ts, events)
                return
        if not side.has_keys:
            self._no_keys(HeldRecord(direction, content_type, version, fragment, ts, False), events)
            return
        opened = self._open(direction, content_type, version, fragment, ts, events)
        if opened is not None:
            side.lost = False
            self._dispatch(direction, *opened, ts, events)

    def _dispatch(
        self, direction: int, content_type: int, fragment: bytes, ts: int, events: list[Event]
    ) -> None:
        """Act on a record's (decrypted) content."""
        side = self.sides[direction]
        if content_type == APPLICATION_DATA:
            if fragment:
                if side.gap_pending:
                    side.gap_pending = False
                    events.append(
                        AppGap(
                            self.flow, direction, ts, self.app_info, direction == self.client_dir
                        )
                    )
                if not self.session_decrypted:
                    self._decrypted(events)
                events.append(
                    AppData(
                        self.flow,
                        direction,
                        fragment,
                        ts,
                        self.app_info,
                        direction == self.client_dir,
                    )
                )
        elif content_type == HANDSHAKE:
            if side.expect_finished:
                side.expect_finished = False
                if not self._finished_first(direction, fragment, ts, events):
                    return
            self._handshake_bytes(direction, fragment, ts, events)
        elif content_type == CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(direction)
        elif content_type == ALERT and len(fragment) >= 2:
            self.stats.alerts += 1
            events.append(TlsAlert(self.flow, direction, fragment[0], fragment[1], ts))
        elif content_type == UNPROVEN[0]:
            # authenticated, but its plaintext hangs on an IV nobody vouches for: counted as
            # opened where it was opened, and dropped here
            self.stats.records_decrypted -= 1
            self.stats.records_unproven += 1
            side.gap_pending = True

    def _protected_from_now(self, direction: int) -> None:
        side = self.sides[direction]
        side.phase = Phase.PROTECTED
        side.seq_unknown = True  # the records before it (Finished at least) are not here
        side.gap_pending = True
        self._install(direction)

    def _lost_key_change(
        self, direction: int, version: int, fragment: bytes, ts: int, events: list[Event]
    ) -> bool:
        """A handshake record on a side whose ChangeCipherSpec may have been lost in a gap:
        if this side's pending keys open it, it is the protected Finished."""
        hs = self.handshake
        if hs is None or self.client_dir is None or is_tls13(self.version):
            return False
        pending = hs.pending[self._role(direction)]
        opened = try_open(pending, HANDSHAKE, version, fragment)
        if opened is None:
            return False
        side = self.sides[direction]
        side.phase = Phase.PROTECTED
        side.decryptor, hs.pending[self._role(direction)] = pending, None
        side.lost = False
        self.stats.records_decrypted += 1
        self._dispatch(direction, *opened, ts, events)
        return True
