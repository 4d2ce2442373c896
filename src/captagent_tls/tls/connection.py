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

from functools import lru_cache
from hmac import compare_digest

from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.tcp import Flow
from captagent_tls.tls import handshake as hsk
from captagent_tls.tls import tls13
from captagent_tls.tls.context import TlsContext
from captagent_tls.tls.events import (
    PLAINTEXT,
    AppData,
    AppGap,
    Event,
    HandshakeDone,
    SessionSecret,
    TlsAlert,
    TlsInfo,
    TlsProblem,
)
from captagent_tls.tls.handshake_state import (
    HandshakeState,
    derive_decryptors,
    hello_inconsistency,
    logged_master,
    logged_pre_master,
    master_from_pre_master,
    rsa_masters,
)
from captagent_tls.tls.held import HeldRecord, HeldRecords
from captagent_tls.tls.keyschedule import (
    SSL3,
    TLS12,
    digest,
    finished_verify_data,
    handshake_hash,
    tls13_finished,
    version_name,
)
from captagent_tls.tls.problems import FINAL, Facts, Notice, Reason, describe
from captagent_tls.tls.protection import UNPROVEN, Decryptor, RecordAuthError
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
from captagent_tls.tls.suites import CipherSuite, lookup, suite_name
from captagent_tls.tls.tls13 import CLIENT, SERVER, is_tls13

MAX_HANDSHAKE_MESSAGE = 1 << 20
RESYNC_MAX_SKIPPED_RECORDS = 256
END_OF_EARLY_DATA_MESSAGE = bytes([hsk.END_OF_EARLY_DATA, 0, 0, 0])
SERVER_FULL_FLIGHT = frozenset((hsk.CERTIFICATE, hsk.SERVER_KEY_EXCHANGE,
                                hsk.CERTIFICATE_REQUEST, hsk.SERVER_HELLO_DONE))

# session outcomes besides the undecryptable reasons
FULL, RESUMED, INCOMPLETE = "full", "resumed", "incomplete"


def _try_open(decryptor: Decryptor | None, content_type: int, version: int, fragment: bytes
              ) -> tuple[int, bytes] | None:
    """Open a record if this decryptor can; None (and no state change) if it cannot."""
    if decryptor is None:
        return None
    try:
        return decryptor.open(content_type, version, fragment)
    except RecordAuthError:
        return None


@lru_cache(maxsize=256)
def tls_info(version: int, suite: int) -> TlsInfo:
    """Shared by every session of the same version and suite."""
    return TlsInfo(version_name(version), suite_name(suite))


_NO_INFO = TlsInfo("unknown", "unknown")  # TLS whose ServerHello we missed


class TlsConnection:
    __slots__ = ("flow", "ctx", "stats", "sides", "client_dir", "is_tls", "handshake",
                 "version", "suite", "client_random", "info", "failed", "refused", "closed",
                 "held", "_replaying", "outcome", "session_open", "session_decrypted",
                 "keys_failed", "notices", "__weakref__")

    def __init__(self, flow: Flow, ctx: TlsContext):
        self.flow = flow
        self.ctx = ctx
        self.stats = ctx.stats
        self.sides = (Side(), Side())
        # the side that sent the SYN is the client until a ClientHello says otherwise
        self.client_dir: int | None = 0 if flow.syn_seen else None
        self.is_tls: bool | None = None  # None until the first bytes say
        self.handshake: HandshakeState | None = None  # while one runs; dropped once it is done
        self.version = 0
        self.suite: CipherSuite | None = None
        self.client_random = b""
        self.info: TlsInfo | None = None
        self.failed: Reason | None = None  # why the current session cannot be decrypted
        self.refused = False  # the session contradicted itself: nothing more of it is opened
        self.closed = False  # the TCP flow has ended
        self.held: HeldRecords | None = None  # records waiting for keys, in arrival order
        self._replaying = False
        self.outcome: str | None = None  # the counter the current session is in
        self.session_open = False
        self.session_decrypted = False  # something of the current session was opened
        self.keys_failed = False  # records of the current session failed with its keys
        self.notices: set[Notice] = set()  # told once per connection

    # -- input from the TCP stage ----------------------------------------------------------

    def data(self, direction: int, chunk: bytes, ts: int) -> list[Event]:
        events: list[Event] = []
        side = self.sides[direction]
        if self.is_tls is None:
            chunk = self._detect(direction, chunk, ts, events)
            if not chunk:
                return events
        elif self.is_tls is False:
            events.append(AppData(self.flow, direction, chunk, ts, PLAINTEXT,
                                  direction == self.client_dir))
            return events
        for content_type, version, fragment in side.stream.feed(chunk):
            if content_type == FRAMING_LOST:
                self.stats.framing_errors += 1
                self._lost(direction, events, ts)
            else:
                self._record(direction, content_type, version, fragment, ts, events)
        return events

    def gap(self, direction: int, ts: int) -> list[Event]:
        """The TCP stream lost bytes: drop the partial record and find the next one."""
        side = self.sides[direction]
        side.stream.gap()
        events: list[Event] = []
        self._lost(direction, events, ts)
        return events

    def close(self, ts: int) -> list[Event]:
        events: list[Event] = []
        if self.is_tls is None:  # it ended before its first bytes could tell: not TLS
            for direction, side in enumerate(self.sides):
                if side.stream.buf:
                    events.append(AppData(self.flow, direction, bytes(side.stream.buf), ts,
                                          PLAINTEXT, direction == (self.client_dir or 0)))
                    side.stream.buf = None
        if self.held:
            self._drop_held(ts, events, "the connection closed first")
        self._settle_session()
        return events

    def retry(self, ts: int) -> list[Event]:
        """New secrets have arrived: install keys where they were missing, replay held records."""
        events: list[Event] = []
        if self.refused:
            return events
        hs = self.handshake
        if (hs is not None and hs.master is None and hs.server_hello is not None
                and not is_tls13(hs.version) and not self.failed_for_good):
            self._find_master(hs)
        for direction, side in enumerate(self.sides):
            if side.encrypted and not side.has_keys:
                self._install(direction)
        if self.held:
            self._replay(events)
        return events

    @property
    def app_info(self) -> TlsInfo:
        """What this flow's application bytes travel in (``PLAINTEXT`` if not TLS)."""
        if self.is_tls is False:
            return PLAINTEXT
        return self.info or _NO_INFO

    @property
    def waiting(self) -> bool:
        return bool(self.held)

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

    def server_endpoint(self) -> str:
        if self.client_dir is None:
            return format_endpoint(self.flow.endpoints[1])
        return format_endpoint(self.flow.endpoints[1 - self.client_dir])

    # -- what the first bytes say, and lost bytes ---------------------------------------------

    def _detect(self, direction: int, chunk: bytes, ts: int, events: list[Event]) -> bytes:
        """Decide from the first bytes whether this flow carries TLS at all.  Returns the
        bytes to parse as records ("" when they were consumed or more are needed)."""
        stream = self.sides[direction].stream
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
        other = self.sides[1 - direction].stream
        if other.buf:  # what the other direction held while the flow was undecided
            events.append(AppData(self.flow, 1 - direction, bytes(other.buf), ts, PLAINTEXT,
                                  1 - direction == self.client_dir))
            other.buf = None
        events.append(AppData(self.flow, direction, head, ts, PLAINTEXT,
                              direction == self.client_dir))
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
        events.append(AppGap(self.flow, direction, ts, self.app_info,
                             direction == self.client_dir))

    # -- records ------------------------------------------------------------------------------

    def _record(self, direction: int, content_type: int, version: int, fragment: bytes,
                ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        decryptor = side.decryptor
        if (content_type == APPLICATION_DATA and decryptor is not None
                and side.phase != Phase.EARLY and not side.seq_unknown and not side.gap_pending
                and (not self.held or self._replaying)):
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
            elif content_type == HANDSHAKE and side.handshake_gap and self._lost_key_change(
                    direction, version, fragment, ts, events):
                return
            else:
                side.stream.lost = False
                self._dispatch(direction, content_type, fragment, ts, events)
                return
        if not side.has_keys:
            self._no_keys(HeldRecord(direction, content_type, version, fragment, ts, False),
                          events)
            return
        opened = self._open(direction, content_type, version, fragment, ts, events)
        if opened is not None:
            side.stream.lost = False
            self._dispatch(direction, *opened, ts, events)

    def _dispatch(self, direction: int, content_type: int, fragment: bytes, ts: int,
                  events: list[Event]) -> None:
        """Act on a record's (decrypted) content."""
        side = self.sides[direction]
        if content_type == APPLICATION_DATA:
            if fragment:
                if side.gap_pending:
                    side.gap_pending = False
                    events.append(AppGap(self.flow, direction, ts, self.app_info,
                                         direction == self.client_dir))
                if not self.session_decrypted:
                    self._decrypted(events)
                events.append(AppData(self.flow, direction, fragment, ts, self.app_info,
                                      direction == self.client_dir))
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

    def _lost_key_change(self, direction: int, version: int, fragment: bytes, ts: int,
                         events: list[Event]) -> bool:
        """A handshake record on a side whose ChangeCipherSpec may have been lost in a gap:
        if this side's pending keys open it, it is the protected Finished."""
        hs = self.handshake
        if hs is None or self.client_dir is None or is_tls13(self.version):
            return False
        pending = hs.pending[self._role(direction)]
        opened = _try_open(pending, HANDSHAKE, version, fragment)
        if opened is None:
            return False
        side = self.sides[direction]
        side.phase = Phase.PROTECTED
        side.decryptor, hs.pending[self._role(direction)] = pending, None
        side.stream.lost = False
        self.stats.records_decrypted += 1
        self._dispatch(direction, *opened, ts, events)
        return True

    # -- opening protected records ------------------------------------------------------------

    def _open(self, direction: int, content_type: int, version: int, fragment: bytes, ts: int,
              events: list[Event]) -> tuple[int, bytes] | None:
        side = self.sides[direction]
        if side.trials:
            return self._open_trial(direction, content_type, version, fragment, ts, events)
        if side.phase == Phase.EARLY:
            return self._open_early(side, content_type, version, fragment)
        decryptor = side.decryptor
        if decryptor is None:  # TLS 1.3 early data refused and no handshake keys yet
            self._no_keys(HeldRecord(direction, content_type, version, fragment, ts, False),
                          events)
            return None
        if side.seq_unknown:
            return self._open_after_gap(direction, decryptor, content_type, version, fragment)
        return self._open_in_order(side, decryptor, content_type, version, fragment)

    def _open_in_order(self, side: Side, decryptor: Decryptor, content_type: int, version: int,
                       fragment: bytes) -> tuple[int, bytes] | None:
        """The next record of a side whose keys and sequence number are known."""
        try:
            opened = decryptor.open(content_type, version, fragment)
        except RecordAuthError:
            self.stats.records_failed += 1
            self.keys_failed = True
            decryptor.skip(fragment)  # it was sent: the next record follows it
            side.gap_pending = True
            return None
        self.stats.records_decrypted += 1
        return opened

    def _open_early(self, side: Side, content_type: int, version: int, fragment: bytes
                    ) -> tuple[int, bytes] | None:
        """TLS 1.3 client records after a ClientHello offering 0-RTT: early data while the
        early keys open them, then (or if the server refused it) the handshake keys."""
        opened = _try_open(side.decryptor, content_type, version, fragment)
        if opened is not None:
            self.stats.records_decrypted += 1
            self.stats.early_data_records += 1
            return opened
        opened = _try_open(side.fallback, content_type, version, fragment)
        if opened is not None:
            self.stats.records_decrypted += 1
            side.decryptor, side.fallback, side.phase = side.fallback, None, Phase.HANDSHAKE
            hs = self.handshake
            if hs is not None and hs.early_data_accepted and not hs.end_of_early_data_seen:
                # it was sent under the early keys we lack; its bytes are fixed, and the
                # client's Finished covers them
                hs.transcript.append(END_OF_EARLY_DATA_MESSAGE)
                hs.end_of_early_data_seen = True
            return opened
        # early data whose keys we lack; the server may have refused it too
        self.stats.early_data_skipped += 1
        side.gap_pending = True
        return None

    def _open_after_gap(self, direction: int, decryptor: Decryptor, content_type: int,
                        version: int, fragment: bytes) -> tuple[int, bytes] | None:
        """After lost records the sequence number is unknown: try the next few.  In TLS 1.3
        the lost records may have ended the handshake: then the application keys open it."""
        side = self.sides[direction]
        opened = self._guess_sequence(decryptor, content_type, version, fragment)
        if opened is None and side.phase == Phase.HANDSHAKE and side.handshake_gap:
            secret = self._tls13_secret(self._role(direction), Phase.APPLICATION)
            if secret is not None and self.suite is not None:
                later = tls13.decryptor(self.suite, self.version, secret)
                opened = self._guess_sequence(later, content_type, version, fragment)
                if opened is not None:
                    side.phase, side.decryptor, side.traffic_secret = (
                        Phase.APPLICATION, later, secret)
        if opened is None:
            decryptor.skip(fragment)
            self.stats.records_failed += 1
            self.keys_failed = True
            return None
        side.seq_unknown = False
        self.stats.records_decrypted += 1
        self.stats.resyncs += 1
        return opened

    @staticmethod
    def _guess_sequence(decryptor: Decryptor, content_type: int, version: int,
                        fragment: bytes) -> tuple[int, bytes] | None:
        first = decryptor.seq
        guesses = range(first, first + RESYNC_MAX_SKIPPED_RECORDS)
        explicit = getattr(decryptor, "explicit", 0)
        if explicit and len(fragment) >= explicit:
            # most stacks use the sequence number as the explicit GCM/CCM nonce
            nonce_seq = int.from_bytes(fragment[:explicit], "big")
            if first <= nonce_seq < first + (1 << 20):
                guesses = range(nonce_seq, nonce_seq + 1)
        for seq in guesses:
            decryptor.seq = seq
            opened = _try_open(decryptor, content_type, version, fragment)
            if opened is not None:
                return opened
        decryptor.seq = first
        return None

    def _open_trial(self, direction: int, content_type: int, version: int, fragment: bytes,
                    ts: int, events: list[Event]) -> tuple[int, bytes] | None:
        """No certificate told us which key: the first protected record picks the master."""
        side = self.sides[direction]
        trials, side.trials = side.trials, []
        for master, mine, peers in trials:
            if side.seq_unknown:
                opened = self._guess_sequence(mine, content_type, version, fragment)
            else:
                opened = _try_open(mine, content_type, version, fragment)
            if opened is None:
                continue
            self.stats.records_decrypted += 1
            side.decryptor = mine
            side.seq_unknown = False
            hs = self.handshake
            if hs is not None:
                hs.master = master
                hs.missing = None
                hs.candidates = []
                hs.pending[self._role(1 - direction)] = peers
                self._take_pending(hs, 1 - direction)
            return opened
        self.stats.records_failed += 1
        self._fail(Reason.KEY_MISMATCH, ts, events)
        return None

    # -- records without keys -----------------------------------------------------------------

    def _no_keys(self, record: HeldRecord, events: list[Event]) -> None:
        if self.ctx.keys_may_arrive and not self.failed_for_good:
            self._hold(record, events)
            return
        self.stats.records_undecrypted += 1
        self.sides[record.direction].gap_pending = True
        if self.failed is None:
            self._fail(self._why_no_keys(), record.ts_ns, events)

    def _why_no_keys(self) -> Reason:
        hs = self.handshake
        if hs is None:
            if not self.flow.syn_seen:
                return Reason.NO_HANDSHAKE
            return Reason.HANDSHAKE_LOST
        if hs.server_hello is None:
            return Reason.HANDSHAKE_LOST
        if hs.missing is not None:
            return hs.missing
        if hs.abbreviated:
            return Reason.SESSION_UNKNOWN
        if is_tls13(hs.version) or (hs.suite is not None and not hs.suite.rsa_key_exchange):
            return Reason.NEEDS_KEY_LOG
        if not hs.key_exchange_seen:
            return Reason.KEY_EXCHANGE_LOST
        return Reason.NO_KEY

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
            self._notice(Notice.RECORDS_DROPPED, record.ts_ns, events,
                         f"records of {self.flow.describe()} waiting for keys are over the "
                         "hold cap (--key-hold-flow, --key-hold-total): the newest are "
                         "dropped, the rest wait")

    def _drop_held(self, ts: int, events: list[Event], why: str) -> None:
        held = self.held
        assert held is not None
        records = held.release(self.ctx.held)
        self.held = None
        for record in records:
            self.sides[record.direction].gap_pending = True
        self.stats.records_expired += len(records)
        events.append(TlsProblem(self.flow, Notice.RECORDS_DROPPED.value,
                                 f"dropped {len(records)} records of {self.flow.describe()}: "
                                 f"{why}", ts, self.server_endpoint()))
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
                if record.dropped:
                    self._skip_dropped(record, events)
                else:
                    self._record(record.direction, record.content_type, record.version,
                                 record.fragment, record.ts_ns, events)
        finally:
            self._replaying = False

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

    # -- handshake ----------------------------------------------------------------------------

    def _role(self, direction: int) -> int:
        return CLIENT if direction == self.client_dir else SERVER

    def _handshake_bytes(self, direction: int, data: bytes, ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        buf = side.handshake_buf
        if buf is None:
            buf = side.handshake_buf = bytearray(data)
        else:
            buf += data
        pos = 0
        while len(buf) - pos >= 4:
            length = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                self.stats.handshake_errors += 1
                side.handshake_buf = None
                return
            if len(buf) - pos - 4 < length:
                break
            message = bytes(buf[pos : pos + 4 + length])
            pos += 4 + length
            try:
                self._handshake_message(direction, message, ts, events)
            except hsk.ParseError:
                self.stats.handshake_errors += 1
        del buf[:pos]
        if not buf and side.handshake_buf is buf:
            side.handshake_buf = None

    def _handshake_message(self, direction: int, message: bytes, ts: int,
                           events: list[Event]) -> None:
        msg_type = message[0]
        body = message[4:]
        if msg_type == hsk.CLIENT_HELLO:
            self._client_hello(direction, message, hsk.parse_client_hello(body))
            return
        if is_tls13(self.version) and msg_type in (hsk.NEW_SESSION_TICKET, hsk.KEY_UPDATE):
            # post-handshake messages: not part of the transcript
            if msg_type == hsk.KEY_UPDATE:
                self._key_update(direction)
            return
        hs = self.handshake
        if hs is None or msg_type == hsk.HELLO_REQUEST or self.client_dir is None:
            return
        from_client = direction == self.client_dir
        if msg_type == hsk.FINISHED:
            self._finished(direction, hs, message, ts, events)
            return
        if all(hs.finished):
            if msg_type == hsk.NEW_SESSION_TICKET:
                hs.ticket = hsk.session_ticket(body, tls13=False)
            return
        if not hs.add_to_transcript(message):
            self.stats.handshakes_too_large += 1
            self._refuse(Reason.HANDSHAKE_TOO_LARGE, ts, events,
                         "its handshake messages exceed "
                         f"{hs.transcript_bytes >> 10} KiB")
            return
        if msg_type == hsk.SERVER_HELLO and not from_client:
            self._server_hello(hs, message, ts, events)
        elif from_client:
            if msg_type == hsk.CLIENT_KEY_EXCHANGE:
                self._client_key_exchange(hs, body)
            elif msg_type == hsk.END_OF_EARLY_DATA:
                hs.end_of_early_data_seen = True
                side = self.sides[direction]
                side.phase = Phase.HANDSHAKE
                side.decryptor, side.fallback = side.fallback, None
                if side.decryptor is None:
                    self._install(direction)
        else:
            if msg_type in SERVER_FULL_FLIGHT:
                hs.server_flight = True
            if msg_type == hsk.CERTIFICATE:
                hs.certificate = hsk.first_certificate(body, tls13=is_tls13(hs.version))
            elif msg_type == hsk.NEW_SESSION_TICKET:
                hs.ticket = hsk.session_ticket(body, tls13=False)
            elif msg_type == hsk.ENCRYPTED_EXTENSIONS:
                hs.early_data_accepted = hsk.EXT_EARLY_DATA in hsk.parse_extensions(body)

    def _client_hello(self, direction: int, message: bytes, hello: hsk.ClientHello) -> None:
        hs = self.handshake
        if self.client_dir is not None and direction != self.client_dir:
            if hs is not None or self.outcome is not None:
                return  # the server does not send ClientHellos
            self.client_dir = direction  # the SYN told us otherwise; the hello is surer
        self.client_dir = direction
        if hs is not None and hs.hello_retry and hs.server_hello is not None:
            # the second ClientHello after a HelloRetryRequest continues the same transcript
            hs.client_hello = hello
            hs.server_hello = None
            hs.transcript.append(message)
            self.client_random = hello.random
            return
        if self.outcome is not None or self.failed is not None or self._renegotiating():
            # a renegotiation: the session before it is over
            self._settle_session()
            self._open_session()
        self.handshake = HandshakeState(hello, [message])
        self.client_random = hello.random
        self.sides[direction].handshake_gap = False
        self.sides[1 - direction].handshake_gap = False

    def _renegotiating(self) -> bool:
        return any(side.encrypted for side in self.sides)

    def _server_hello(self, hs: HandshakeState, message: bytes, ts: int,
                      events: list[Event]) -> None:
        body = message[4:]
        version = int.from_bytes(body[:2], "big")
        hello = (hsk.parse_server_hello_tls13_draft(body) if 0x7F00 <= version <= 0x7F15
                 else hsk.parse_server_hello(body))
        tls13_hello = is_tls13(hello.version)
        for side in self.sides:  # what every record carries from now on (RFC 8446 §5.1)
            side.stream.version = TLS12 if tls13_hello else hello.version
        suite = lookup(hello.cipher_suite)
        hs.server_hello = hello
        hs.version = self.version = hello.version
        hs.suite = self.suite = suite
        self.info = tls_info(hello.version, hello.cipher_suite)
        inconsistency = hello_inconsistency(hs.client_hello, hello, suite, tls13_hello)
        if inconsistency:
            self._refuse(Reason.INCONSISTENT, ts, events, inconsistency)
            return
        if suite is None or not suite.supported:
            self._fail(Reason.UNSUPPORTED_SUITE, ts, events)
            if tls13_hello:
                for side in self.sides:
                    side.phase = Phase.HANDSHAKE
            return
        if tls13_hello:
            self._server_hello_tls13(hs, hello)
            return
        client_ext = hs.client_hello.extensions
        hs.ems = (hsk.EXT_EXTENDED_MASTER_SECRET in client_ext
                  and hsk.EXT_EXTENDED_MASTER_SECRET in hello.extensions)
        hs.etm = (suite.kind == "cbc" and hsk.EXT_ENCRYPT_THEN_MAC in client_ext
                  and hsk.EXT_ENCRYPT_THEN_MAC in hello.extensions)
        session_id = hs.client_hello.session_id
        hs.abbreviated = bool(session_id) and hello.session_id == session_id
        self._find_master(hs)

    def _find_master(self, hs: HandshakeState) -> None:
        """Master secret from a key log or, when resuming, the session cache (TLS 1.0-1.2)."""
        keys = self.ctx.keys
        logged = logged_master(hs, keys)
        if logged is not None:
            self._set_master(hs, logged, "key log")
        elif hs.abbreviated:
            cached = self.ctx.sessions.lookup(hs.client_hello.session_id,
                                              hs.client_hello.ticket or b"")
            if cached is not None:
                self._set_master(hs, cached, "session cache")
            else:
                hs.missing = Reason.SESSION_UNKNOWN
        elif hs.key_exchange_seen:
            pre_master = logged_pre_master(hs, keys)
            if pre_master is not None:
                self._set_master(hs, master_from_pre_master(hs, pre_master), "key log")

    def _client_key_exchange(self, hs: HandshakeState, body: bytes) -> None:
        hs.key_exchange = body
        suite = hs.suite
        if suite is None or not suite.supported or self.failed_for_good or hs.master is not None:
            return
        if hs.ems:
            hs.session_hash = handshake_hash(hs.version, suite.prf_hash, hs.transcript)
        self._find_master(hs)
        if hs.master is not None:
            return
        if not suite.rsa_key_exchange:
            hs.missing = Reason.NEEDS_KEY_LOG
        elif hs.ems and hs.gap:
            # the session hash covers handshake messages the capture lost
            hs.missing = Reason.HANDSHAKE_LOST
        else:
            masters, proven, hs.missing = rsa_masters(hs, self.ctx.keys)
            if proven:
                self._set_master(hs, masters[0], "rsa")
            elif masters:
                hs.candidates, hs.master_source = masters, "rsa"
                hs.missing = Reason.KEY_MISMATCH  # unless the first protected record says

    def _set_master(self, hs: HandshakeState, master: bytes, source: str) -> None:
        hs.master = master
        hs.master_source = source
        hs.missing = None
        if hs.suite is None or not hs.suite.supported:
            return
        hs.pending = list(derive_decryptors(hs, master))
        if self.client_dir is not None:
            for direction in (0, 1):
                self._take_pending(hs, direction)

    def _take_pending(self, hs: HandshakeState, direction: int) -> None:
        """A side past its ChangeCipherSpec, still without keys, takes those waiting for it."""
        side = self.sides[direction]
        role = self._role(direction)
        pending = hs.pending[role]
        if side.encrypted and side.decryptor is None and pending is not None:
            side.decryptor, hs.pending[role] = pending, None
            if side.seq_unknown:
                pending.lost()

    def _start_trials(self, hs: HandshakeState, direction: int) -> None:
        side = self.sides[direction]
        for master in hs.candidates:
            client_write, server_write = derive_decryptors(hs, master)
            side.trials = [*side.trials, (master, client_write, server_write)]

    def _change_cipher_spec(self, direction: int) -> None:
        side = self.sides[direction]
        side.phase = Phase.PROTECTED
        side.decryptor = None
        side.expect_finished = True
        hs = self.handshake
        if hs is None or self.client_dir is None or hs.server_hello is None:
            return
        role = self._role(direction)
        if (role == SERVER and not hs.key_exchange_seen and not hs.abbreviated
                and hs.master is None and not hs.server_flight
                and hs.client_hello.ticket is not None):
            # the server resumed a ticket without echoing a session ID (RFC 5077 §3.4): it
            # sent nothing a full handshake has, and the client offered a ticket
            hs.abbreviated = True
            self._find_master(hs)
        if hs.candidates and role == CLIENT:
            self._start_trials(hs, direction)
            return
        self._take_pending(hs, direction)

    def _finished_first(self, direction: int, fragment: bytes, ts: int,
                        events: list[Event]) -> bool:
        """The first protected handshake message of a TLS 1.0-1.2 side is its Finished.
        Anything else, with no bytes lost, means the keys open records under a cipher the
        peers did not use."""
        expected_length = 36 if self.version == SSL3 else 12
        if not fragment:
            self.sides[direction].expect_finished = True  # (an empty record says nothing)
            return True
        if (fragment[:1] == bytes([hsk.FINISHED])
                and (len(fragment) < 4 or int.from_bytes(fragment[1:4], "big")
                     == expected_length)):
            return True
        if self.sides[direction].handshake_gap:
            return True
        self._refuse(Reason.FINISHED_MISMATCH, ts, events,
                     f"the first protected message of the "
                     f"{'client' if self._role(direction) == CLIENT else 'server'} is not its "
                     "Finished message")
        return False

    def _finished(self, direction: int, hs: HandshakeState, message: bytes, ts: int,
                  events: list[Event]) -> None:
        role = self._role(direction)
        suite = hs.suite
        expected = None
        if suite is not None and is_tls13(hs.version):
            secret = self._tls13_secret(role, Phase.HANDSHAKE)
            if secret is not None:
                expected = tls13_finished(suite.prf_hash, secret, hs.transcript)
        elif hs.master is not None and suite is not None:
            expected = finished_verify_data(hs.version, suite.prf_hash, hs.master,
                                            role == CLIENT, hs.transcript)
        if expected is not None:
            if compare_digest(expected, message[4:]):
                self.stats.finished_verified += 1
                self._proven(hs, events)
            else:
                self.stats.finished_failed += 1
                who = "client" if role == CLIENT else "server"
                if not (hs.gap or any(side.handshake_gap for side in self.sides)
                        or self._messages_missing(hs, role)):
                    self._refuse(Reason.FINISHED_MISMATCH, ts, events,
                                 f"the {who} Finished message does not verify")
                    return
                self._notice(Notice.FINISHED_UNVERIFIABLE, ts, events,
                             f"the {who} Finished message on {self.server_endpoint()} cannot "
                             "be verified: handshake messages were lost in a capture gap "
                             "(its records still authenticate)")
        hs.transcript.append(message)
        hs.finished[role] = True
        if is_tls13(hs.version):
            side = self.sides[direction]
            side.phase = Phase.APPLICATION
            side.decryptor = side.fallback = None
            self._install(direction)
        if all(hs.finished) and not self.failed_for_good and self.info is not None:
            events.append(HandshakeDone(self.flow, self.info.version, self.info.cipher_suite,
                                        hs.abbreviated, ts))
            # what an idle session keeps is its keys: the handshake's state can go
            self.handshake = None
            if not is_tls13(self.version):
                self.client_random = b""

    def _messages_missing(self, hs: HandshakeState, role: int) -> bool:
        """Does the protocol say this Finished covers messages we did not see?  (A gap the
        TCP layer has not noticed yet: the segment that proves it may come later.)"""
        peer = SERVER if role == CLIENT else CLIENT
        if is_tls13(hs.version) or hs.abbreviated:
            # the second Finished covers the first: the server's in TLS 1.3 and when resuming
            first = SERVER
            return role != first and not hs.finished[first]
        if role == SERVER:
            return not (hs.key_exchange_seen and hs.finished[peer])
        return not hs.server_flight

    def _proven(self, hs: HandshakeState, events: list[Event]) -> None:
        """A Finished verified: the keys are right.  Cache the session, offer its secret."""
        if not hs.proven:
            hs.proven = True
            if not self.session_decrypted:
                self._decrypted(events)
        if hs.master is not None:
            hello = hs.server_hello
            self.ctx.sessions.store(hs.master, hello.session_id if hello else b"", hs.ticket)

    # -- TLS 1.3 ------------------------------------------------------------------------------

    def _tls13_possible(self) -> bool:
        if is_tls13(self.version):
            return True
        hs = self.handshake
        return hs is not None and hs.server_hello is None and hs.client_hello.offers_tls13

    def _early_data_possible(self, direction: int) -> bool:
        hs = self.handshake
        return (hs is not None and hs.server_hello is None and direction == self.client_dir
                and hs.offers_early_data)

    def _early_data(self, direction: int, content_type: int, version: int, fragment: bytes,
                    ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        hs = self.handshake
        assert hs is not None
        secret = self._tls13_secret(CLIENT, Phase.EARLY)
        if secret is None:
            if self.ctx.keys_may_arrive:
                self._hold(HeldRecord(direction, content_type, version, fragment, ts, False),
                           events)
            else:
                self.stats.early_data_skipped += 1
                side.gap_pending = True
            return
        found = tls13.open_early_data(hs.client_hello.cipher_suites, secret, content_type,
                                      version, fragment)
        if found is None:
            self.stats.early_data_skipped += 1
            side.gap_pending = True
            return
        decryptor, suite, opened = found
        side.decryptor, side.phase = decryptor, Phase.EARLY
        self.stats.records_decrypted += 1
        self.stats.early_data_records += 1
        if self.info is None:
            self.info = tls_info(tls13.TLS13, suite.code)
        self._dispatch(direction, *opened, ts, events)

    def _server_hello_tls13(self, hs: HandshakeState, hello: hsk.ServerHello) -> None:
        suite = hs.suite
        assert suite is not None and self.client_dir is not None
        if hello.is_hello_retry:
            hs.hello_retry = True
            first_hello = hs.transcript[0]
            hashed = digest(suite.prf_hash, first_hello)
            hs.transcript = [bytes([hsk.MESSAGE_HASH, 0, 0, len(hashed)]) + hashed,
                             hs.transcript[-1]]
            return
        hs.abbreviated = hsk.EXT_PRE_SHARED_KEY in hello.extensions
        client, server = self.sides[self.client_dir], self.sides[1 - self.client_dir]
        server.phase = Phase.HANDSHAKE
        self._install(1 - self.client_dir)
        early = client.decryptor if client.phase == Phase.EARLY else None
        client.phase = (Phase.EARLY if hs.offers_early_data and not hs.hello_retry
                        else Phase.HANDSHAKE)
        self._install(self.client_dir)
        if early is not None:
            client.decryptor = early  # found by trial before the ServerHello: keep its count

    def _tls13_secret(self, role: int, phase: Phase) -> bytes | None:
        return tls13.logged_secret(self.ctx.keys, self.client_random, role, phase)

    def _install(self, direction: int) -> None:
        """Give a side the keys of its phase, if they are known by now."""
        side = self.sides[direction]
        suite = self.suite
        if suite is None or not suite.supported or self.failed_for_good:
            return
        if not is_tls13(self.version):
            if self.handshake is not None:
                self._take_pending(self.handshake, direction)
            return
        role = self._role(direction)
        if side.phase == Phase.EARLY:
            early = self._tls13_secret(CLIENT, Phase.EARLY)
            handshake_secret = self._tls13_secret(CLIENT, Phase.HANDSHAKE)
            side.decryptor = tls13.decryptor(suite, self.version, early) if early else None
            side.fallback = (tls13.decryptor(suite, self.version, handshake_secret)
                             if handshake_secret else None)
            return
        if side.phase == Phase.APPLICATION and side.traffic_secret:
            secret: bytes | None = side.traffic_secret
        else:
            secret = self._tls13_secret(role, side.phase)
        if secret is not None:
            if side.phase == Phase.APPLICATION:
                side.traffic_secret = secret
            side.decryptor = tls13.decryptor(suite, self.version, secret)
            if side.seq_unknown:
                side.decryptor.lost()

    def _key_update(self, direction: int) -> None:
        side = self.sides[direction]
        if not side.traffic_secret or self.suite is None:
            side.decryptor = None
            return
        side.traffic_secret = tls13.next_secret(self.suite, side.traffic_secret)
        side.decryptor = tls13.decryptor(self.suite, self.version, side.traffic_secret)
        self.stats.key_updates += 1

    # -- sessions, failures and what is said about them ---------------------------------------

    def _open_session(self) -> None:
        self.session_open = True
        self.session_decrypted = False
        self.keys_failed = False
        self.outcome = None
        self.failed = None

    def _decrypted(self, events: list[Event]) -> None:
        """Something of this session was opened: it counts as decrypted, whatever it was
        counted as while its keys were missing, and its secrets are offered."""
        self.session_decrypted = True
        if self.refused:
            return
        hs = self.handshake
        self._set_outcome(RESUMED if hs is not None and hs.abbreviated else FULL)
        if hs is None:
            return
        if hs.master is not None:
            events.append(SessionSecret(self.flow, hs.client_hello.random, hs.master,
                                        hs.master_source))
        elif is_tls13(hs.version):
            logged = self.ctx.keys.secrets_for(hs.client_hello.random)
            if logged is not None and logged.tls13:
                events.append(SessionSecret(self.flow, hs.client_hello.random, b"", "key log",
                                            tuple(sorted(logged.tls13.items()))))

    def _set_outcome(self, outcome: str) -> None:
        """Put the session in one counter, out of the one it was in."""
        stats = self.stats
        for previous, delta in ((self.outcome, -1), (outcome, 1)):
            if previous == FULL:
                stats.sessions_full += delta
            elif previous == RESUMED:
                stats.sessions_resumed += delta
            elif previous == INCOMPLETE:
                stats.sessions_incomplete += delta
            elif previous is not None:
                stats.undecryptable[previous] = stats.undecryptable.get(previous, 0) + delta
        self.outcome = outcome

    def _settle_session(self) -> None:
        """The session is over: if nothing decided its counter yet, decide it now."""
        if not self.session_open:
            return
        self.session_open = False
        if self.outcome is None:
            if self.failed is not None:
                self._set_outcome(self.failed.value)
            elif self.keys_failed:
                self._set_outcome(Reason.RECORDS_FAIL.value)
            elif any(side.encrypted for side in self.sides):
                self._set_outcome(self._why_no_keys().value)
            else:
                self._set_outcome(INCOMPLETE)

    def _facts(self, detail: str = "") -> Facts:
        hs = self.handshake
        client = self.client_dir if self.client_dir is not None else 0
        server_side = self.sides[1 - client]
        # the connection began in the capture, and protected records came: a hello that is
        # missing was sent and lost, whether or not the gap has been noticed yet
        lost = ""
        if hs is None and self.flow.syn_seen:
            lost = "ClientHello"
        elif hs is not None and hs.server_hello is None and (self.flow.syn_seen
                                                              or server_side.handshake_gap):
            lost = "ServerHello"
        return Facts(
            server=self.server_endpoint(),
            flow=self.flow.describe(client),
            suite=self.info.cipher_suite if self.info else "",
            suite_code=hs.server_hello.cipher_suite if hs and hs.server_hello else 0,
            certificate_seen=hs is not None and hs.certificate is not None,
            rsa_keys_given=bool(self.ctx.keys.rsa_keys),
            lost=lost,
            detail=detail,
        )

    def _fail(self, reason: Reason, ts: int, events: list[Event], detail: str = "") -> None:
        """This session cannot be decrypted (now: keys may still arrive, unless final)."""
        if self.failed is not None:
            return
        self.failed = reason
        if self.outcome is None:
            self._set_outcome(reason.value)
        events.append(TlsProblem(self.flow, reason.value, describe(reason, self._facts(detail)),
                                 ts, self.server_endpoint()))

    def _refuse(self, reason: Reason, ts: int, events: list[Event], detail: str) -> None:
        """The session contradicts itself: nothing more of it is opened or passed on."""
        self.refused = True
        self.failed = None  # the reason below replaces a lesser one
        for side in self.sides:
            side.decryptor = side.fallback = None
            side.trials = []
            side.handshake_buf = None
        if self.handshake is not None:
            self.handshake.pending = [None, None]
            self.handshake.candidates = []
        self.failed = reason
        self._set_outcome(reason.value)
        events.append(TlsProblem(self.flow, reason.value, describe(reason, self._facts(detail)),
                                 ts, self.server_endpoint()))

    def _notice(self, notice: Notice, ts: int, events: list[Event], message: str) -> None:
        if notice in self.notices:
            return
        self.notices.add(notice)
        events.append(TlsProblem(self.flow, notice.value, message, ts, self.server_endpoint()))
