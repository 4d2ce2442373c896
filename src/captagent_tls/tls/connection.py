"""TLS state for one TCP connection, sans-IO: stream bytes in, events out.

The record layer lives here, in one place: records spanning segments, several records per
segment, handshake messages spanning records.  Handshakes (including renegotiations inside the
encrypted session) are followed to learn the randoms, the suite, the certificate and the key
exchange.  Keys come from the ``KeyStore`` (RSA private keys, key logs) or the session cache.

Each direction ("side") moves through phases: plaintext, then protected (TLS 1.0-1.2, after
its ChangeCipherSpec), or early / handshake / application (TLS 1.3).  A protected record that
arrives before its keys are known is held, in order, when keys may still come (a live key log),
and decrypted as soon as they do.
"""

from __future__ import annotations

from functools import lru_cache
from hmac import compare_digest
from typing import TYPE_CHECKING

from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.tcp import Flow
from captagent_tls.tls import handshake as hsk
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
    KEY_MISMATCH,
    NEEDS_KEY_LOG,
    NO_KEY,
    SESSION_UNKNOWN,
    HandshakeState,
    derive_decryptors,
    logged_master,
    logged_pre_master,
    master_from_pre_master,
    rsa_masters,
)
from captagent_tls.tls.keyschedule import (
    SSL3,
    TLS13,
    digest,
    finished_verify_data,
    handshake_hash,
    hash_algorithm,
    next_traffic_secret,
    tls13_finished,
    traffic_key_iv,
    version_name,
)
from captagent_tls.tls.protection import AeadDecryptor, Decryptor, RecordAuthError
from captagent_tls.tls.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    CONTENT_TYPES,
    HANDSHAKE,
    MAX_RECORD,
    find_record_start,
)
from captagent_tls.tls.suites import CipherSuite, lookup, suite_name

if TYPE_CHECKING:
    from captagent_tls.tls.tracker import TlsTracker

MAX_HANDSHAKE_MESSAGE = 1 << 20
RESYNC_MAX_SKIPPED_RECORDS = 256

CLIENT, SERVER = 0, 1  # roles, as opposed to flow directions

# side phases
PLAIN, PROTECTED, EARLY, HANDSHAKE_KEYS, APPLICATION_KEYS = range(5)

# why a session cannot be decrypted (stats keys; more in handshake_state)
UNSUPPORTED_SUITE = "unsupported_suite"
NO_HANDSHAKE = "no_handshake"
KEYS_LATE = "keys_late"
FINISHED_MISMATCH = "finished_mismatch"  # a problem to report, not a reason to stop

TLS13_SECRET_LABELS = {
    (CLIENT, EARLY): "CLIENT_EARLY_TRAFFIC_SECRET",
    (CLIENT, HANDSHAKE_KEYS): "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    (SERVER, HANDSHAKE_KEYS): "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    (CLIENT, APPLICATION_KEYS): "CLIENT_TRAFFIC_SECRET_0",
    (SERVER, APPLICATION_KEYS): "SERVER_TRAFFIC_SECRET_0",
}

_NONE: list = []  # shared "nothing yet"; a side gets its own list when it needs one
END_OF_EARLY_DATA_MESSAGE = bytes([hsk.END_OF_EARLY_DATA, 0, 0, 0])

Record = tuple[int, int, int, bytes, int]  # direction, content type, version, fragment, time


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


def is_tls13(version: int) -> bool:
    return version >= TLS13  # includes the 0x7fXX drafts


class _Side:
    """One direction's record stream."""

    __slots__ = ("buf", "handshake_buf", "decryptor", "fallback", "encrypted", "phase",
                 "traffic_secret", "trials", "resync", "gap_pending")

    def __init__(self) -> None:
        # buffers exist only while they hold something: an idle session keeps no buffers
        self.buf: bytearray | None = None
        self.handshake_buf: bytearray | None = None
        self.decryptor: Decryptor | None = None
        self.fallback: Decryptor | None = None  # TLS 1.3 handshake keys, while early data runs
        self.encrypted = False
        self.phase = PLAIN
        self.traffic_secret = b""  # TLS 1.3 application secret, for KeyUpdate
        self.trials: list[tuple[bytes, Decryptor, Decryptor]] = _NONE  # (master, mine, peer's)
        self.resync = False
        self.gap_pending = False


class TlsConnection:
    __slots__ = ("flow", "tracker", "stats", "sides", "client_dir", "is_tls", "handshake",
                 "version", "suite", "client_random", "record_version", "info", "failed",
                 "closed", "held", "held_bytes", "held_since", "_replaying",
                 "__weakref__")

    def __init__(self, flow: Flow, tracker: TlsTracker):
        self.flow = flow
        self.tracker = tracker
        self.stats = tracker.stats
        self.sides = (_Side(), _Side())
        self.client_dir: int | None = None
        self.is_tls: bool | None = None  # None until the first bytes say
        self.handshake: HandshakeState | None = None  # while one runs; dropped once it is done
        self.version = 0
        self.suite: CipherSuite | None = None
        self.client_random = b""
        self.record_version = 0
        self.info: TlsInfo | None = None
        self.failed = ""  # why the current session cannot be decrypted
        self.closed = False  # the TCP flow has ended
        # records waiting for keys, both directions in arrival order: a handshake's transcript
        # and key changes depend on the order across directions
        self.held: list[Record] = _NONE
        self.held_bytes = 0
        self.held_since = 0
        self._replaying = False

    # -- input from the TCP stage ----------------------------------------------------------

    def data(self, direction: int, chunk: bytes, ts: int) -> list[Event]:
        events: list[Event] = []
        side = self.sides[direction]
        if self.is_tls is None:
            head = bytes(side.buf) + chunk if side.buf else chunk
            side.buf = None
            if not self._detect(direction, head, ts, events):
                if self.is_tls is None:
                    side.buf = bytearray(head)  # too short to tell yet
                elif self.is_tls is False:
                    events.append(AppData(self.flow, direction, head, ts, PLAINTEXT))
                return events
            chunk = head
        elif self.is_tls is False:
            events.append(AppData(self.flow, direction, chunk, ts, PLAINTEXT))
            return events
        if side.buf:
            side.buf += chunk
            data: bytes | bytearray = side.buf
        else:
            data = chunk
        end = len(data)
        pos = 0
        if side.resync:
            pos = find_record_start(data, 0, self.record_version)
            if pos < 0:
                self._keep(side, data, max(0, end - 4))
                return events
        while end - pos >= 5:
            content_type = data[pos]
            length = (data[pos + 3] << 8) | data[pos + 4]
            if content_type not in CONTENT_TYPES or data[pos + 1] != 3 or length > MAX_RECORD:
                self._lost_framing(direction, ts, events)
                pos = find_record_start(data, pos + 1, self.record_version)
                if pos < 0:
                    pos = max(0, end - 4)
                    break
                continue
            if end - pos - 5 < length:
                break
            version = (data[pos + 1] << 8) | data[pos + 2]
            fragment = bytes(data[pos + 5 : pos + 5 + length])
            pos += 5 + length
            self._record(direction, content_type, version, fragment, ts, events)
        self._keep(side, data, pos)
        return events

    def gap(self, direction: int, ts: int) -> list[Event]:
        """The TCP stream lost bytes: drop the partial record and find the next one."""
        side = self.sides[direction]
        side.buf = None  # (if the flow was not judged yet, what follows will be)
        side.handshake_buf = None
        if self.is_tls:
            side.resync = True
        return [AppGap(self.flow, direction, ts)]

    def close(self, ts: int) -> list[Event]:
        events: list[Event] = []
        if self.held:
            self._drop_held(ts, events, "the connection closed first")
        return events

    def retry(self, ts: int) -> list[Event]:
        """New secrets have arrived: install keys where they were missing, replay held records."""
        events: list[Event] = []
        hs = self.handshake
        if (hs is not None and hs.master is None and hs.server_hello is not None
                and not is_tls13(hs.version)):
            self._find_master(hs)
        for direction, side in enumerate(self.sides):
            if side.encrypted and side.decryptor is None and not side.trials:
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

    def expire_held(self, now: int, max_wait_ns: int, why: str = "") -> list[Event]:
        """Drop held records that waited longer than ``max_wait_ns`` (all of them if < 0)."""
        events: list[Event] = []
        if self.held and (max_wait_ns < 0 or now - self.held_since > max_wait_ns):
            self._drop_held(now, events, why or f"no keys within {max_wait_ns / 1e9:g} s")
        return events

    # -- record layer -----------------------------------------------------------------------

    @staticmethod
    def _keep(side: _Side, data: bytes | bytearray, pos: int) -> None:
        if pos >= len(data):
            side.buf = None
        elif data is side.buf:
            del data[:pos]
        else:
            side.buf = bytearray(data[pos:])

    def _detect(self, direction: int, head: bytes, ts: int, events: list[Event]) -> bool:
        """Decide from the first bytes whether this flow carries TLS at all.

        Returns True when ``head`` is to be parsed as records; False when it was consumed, or
        more bytes are needed (``is_tls`` stays None), or the flow is not TLS.
        """
        if len(head) < 3:
            return False
        if head[0] in CONTENT_TYPES and head[1] == 3 and head[2] <= 4:
            self.is_tls = True
            self.stats.connections += 1
            return True
        if head[0] & 0x80 and head[2] == hsk.CLIENT_HELLO:
            # an SSLv2-format ClientHello opening an SSLv3/TLS session
            length = ((head[0] & 0x7F) << 8) | head[1]
            if len(head) < 2 + length:
                return False
            try:
                hello = hsk.parse_sslv2_client_hello(head[2 : 2 + length])
            except hsk.ParseError:
                hello = None
            if hello is not None and hello.version >= SSL3:
                self.is_tls = True
                self.stats.connections += 1
                self.client_dir = direction
                # the SSLv2 record body is what the Finished hash covers (RFC 5246 E.2)
                self.handshake = HandshakeState(hello, [head[2 : 2 + length]])
                self.client_random = hello.random
                rest = head[2 + length :]
                if rest:
                    events.extend(self.data(direction, rest, ts))
                return False
        self.is_tls = False
        self.stats.non_tls_flows += 1
        if self.client_dir is None:
            self.client_dir = 0  # plain TCP: the side that sent the SYN, or spoke first
        return False

    def _lost_framing(self, direction: int, ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        if not side.resync:
            self.stats.framing_errors += 1
            events.append(AppGap(self.flow, direction, ts))
        side.resync = True

    def _record(self, direction: int, content_type: int, version: int, fragment: bytes,
                ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        decryptor = side.decryptor
        if (content_type == APPLICATION_DATA and decryptor is not None and side.phase != EARLY
                and not side.resync and not side.gap_pending
                and (not self.held or self._replaying)):
            # the steady state of a session, kept short: it runs once per record
            opened = self._open_in_order(side, decryptor, content_type, version, fragment)
            if opened is not None:
                self._dispatch(direction, *opened, ts, events)
            return
        if self.held and not self._replaying:
            self._hold((direction, content_type, version, fragment, ts), events)
            return
        if content_type == CHANGE_CIPHER_SPEC and self._tls13_possible():
            return  # middlebox-compatibility CCS (RFC 8446 D.4)
        if side.encrypted:
            if side.decryptor is None and not side.trials and side.fallback is None:
                self._no_keys((direction, content_type, version, fragment, ts), events)
                return
            opened = self._open(direction, content_type, version, fragment, ts, events)
            if opened is None:
                return
            content_type, fragment = opened
        elif content_type == APPLICATION_DATA:
            hs = self.handshake
            if (hs is not None and hs.server_hello is None and direction == self.client_dir
                    and hs.offers_early_data):
                self._early_data(direction, content_type, version, fragment, ts, events)
                return
            side.encrypted = True  # application data before any key change: joined too late
            self._no_keys((direction, content_type, version, fragment, ts), events)
            return
        elif side.resync:
            side.resync = False
        self.record_version = version
        self._dispatch(direction, content_type, fragment, ts, events)

    def _dispatch(self, direction: int, content_type: int, fragment: bytes, ts: int,
                  events: list[Event]) -> None:
        """Act on a record's (decrypted) content."""
        side = self.sides[direction]
        if content_type == APPLICATION_DATA:
            if fragment:
                if side.gap_pending:
                    side.gap_pending = False
                    events.append(AppGap(self.flow, direction, ts))
                events.append(AppData(self.flow, direction, fragment, ts, self.app_info))
        elif content_type == HANDSHAKE:
            self._handshake_bytes(direction, fragment, ts, events)
        elif content_type == CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(direction, ts, events)
        elif content_type == ALERT and len(fragment) >= 2:
            self.stats.alerts += 1
            events.append(TlsAlert(self.flow, direction, fragment[0], fragment[1], ts))

    def _early_data(self, direction: int, content_type: int, version: int, fragment: bytes,
                    ts: int, events: list[Event]) -> None:
        """0-RTT data arriving before the ServerHello has named the suite.  Its secret comes
        from the key log; its suite is the resumed session's, one the ClientHello offers, so
        the offered TLS 1.3 suites are tried until one authenticates the record."""
        side = self.sides[direction]
        hs = self.handshake
        assert hs is not None
        secret = self._tls13_secret(CLIENT, EARLY)
        if secret is None:
            if self.tracker.keys_may_arrive:
                self._hold((direction, content_type, version, fragment, ts), events)
            else:
                self.stats.early_data_skipped += 1
                side.gap_pending = True
            return
        offered = hs.client_hello.cipher_suites
        for at in range(0, len(offered) - 1, 2):
            suite = lookup(int.from_bytes(offered[at : at + 2], "big"))
            if (suite is None or suite.key_exchange != "TLS13" or not suite.supported
                    or hash_algorithm(suite.prf_hash).digest_size != len(secret)):
                continue
            key, iv = traffic_key_iv(suite.prf_hash, secret, suite.key_len)
            decryptor = AeadDecryptor(suite, key, iv, TLS13)
            opened = _try_open(decryptor, content_type, version, fragment)
            if opened is None:
                continue
            side.decryptor, side.phase, side.encrypted = decryptor, EARLY, True
            self.stats.records_decrypted += 1
            self.stats.early_data_records += 1
            if self.info is None:
                self.info = tls_info(TLS13, suite.code)
            self._dispatch(direction, *opened, ts, events)
            return
        self.stats.early_data_skipped += 1
        side.gap_pending = True

    def _tls13_possible(self) -> bool:
        if is_tls13(self.version):
            return True
        hs = self.handshake
        return hs is not None and hs.server_hello is None and hs.client_hello.offers_tls13

    def _open(self, direction: int, content_type: int, version: int, fragment: bytes, ts: int,
              events: list[Event]) -> tuple[int, bytes] | None:
        side = self.sides[direction]
        if side.trials:
            return self._open_trial(direction, content_type, version, fragment, ts, events)
        if side.phase == EARLY:
            return self._open_early(side, content_type, version, fragment)
        decryptor = side.decryptor
        assert decryptor is not None
        if side.resync:
            return self._open_after_gap(side, decryptor, content_type, version, fragment)
        return self._open_in_order(side, decryptor, content_type, version, fragment)

    def _open_in_order(self, side: _Side, decryptor: Decryptor, content_type: int, version: int,
                       fragment: bytes) -> tuple[int, bytes] | None:
        """The next record of a side whose keys and sequence number are known."""
        try:
            opened = decryptor.open(content_type, version, fragment)
        except RecordAuthError:
            self.stats.records_failed += 1
            decryptor.skip(fragment)  # it was sent: the next record follows it
            side.gap_pending = True
            return None
        self.stats.records_decrypted += 1
        return opened

    def _open_early(self, side: _Side, content_type: int, version: int, fragment: bytes
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
            side.decryptor, side.fallback, side.phase = side.fallback, None, HANDSHAKE_KEYS
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

    def _open_after_gap(self, side: _Side, decryptor: Decryptor, content_type: int,
                        version: int, fragment: bytes) -> tuple[int, bytes] | None:
        """After lost bytes the sequence number is unknown: try the next few."""
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
            if opened is None:
                continue
            side.resync = False
            self.stats.records_decrypted += 1
            self.stats.resyncs += 1
            return opened
        decryptor.seq = first
        decryptor.follow(fragment)
        self.stats.records_failed += 1
        return None

    def _open_trial(self, direction: int, content_type: int, version: int, fragment: bytes,
                    ts: int, events: list[Event]) -> tuple[int, bytes] | None:
        """No certificate told us which key: the first protected record picks the master."""
        side = self.sides[direction]
        trials, side.trials = side.trials, _NONE
        for master, mine, peers in trials:
            opened = _try_open(mine, content_type, version, fragment)
            if opened is None:
                continue
            self.stats.records_decrypted += 1
            side.decryptor = mine
            hs = self.handshake
            if hs is not None:
                hs.master = master
                hs.candidates = []
                hs.pending[self._role(1 - direction)] = peers
                self._take_pending(hs, 1 - direction)
            return opened
        self.stats.records_failed += 1
        self._fail(KEY_MISMATCH, ts, events)
        return None

    # -- records without keys ---------------------------------------------------------------

    def _no_keys(self, record: Record, events: list[Event]) -> None:
        if self.tracker.keys_may_arrive and not self.failed_for_good:
            self._hold(record, events)
            return
        self.stats.records_undecrypted += 1
        self.sides[record[0]].gap_pending = True
        if not self.failed:
            hs = self.handshake
            self._fail(hs.missing if hs is not None and hs.missing else self._why_no_keys(),
                       record[4], events)

    @property
    def failed_for_good(self) -> bool:
        return self.failed in (UNSUPPORTED_SUITE, NO_HANDSHAKE, KEYS_LATE)

    def _why_no_keys(self) -> str:
        hs = self.handshake
        if hs is None or hs.server_hello is None:
            return NO_HANDSHAKE
        if hs.abbreviated:
            return SESSION_UNKNOWN
        if is_tls13(hs.version) or (hs.suite is not None and not hs.suite.rsa_key_exchange):
            return NEEDS_KEY_LOG
        return NO_KEY

    def _hold(self, record: Record, events: list[Event]) -> None:
        """Keep a record until keys arrive; everything after it waits too, in order."""
        if not self.held:
            self.held_since = record[4]
            self.held = []
        self.held.append(record)
        self.held_bytes += len(record[3])
        self.tracker.note_waiting(self, len(record[3]))
        if self.held_bytes > self.tracker.max_held_bytes_per_flow:
            self._drop_held(record[4], events, "too many bytes waiting for keys")

    def _drop_held(self, ts: int, events: list[Event], why: str) -> None:
        count = len(self.held)
        for record in self.held:
            self.sides[record[0]].gap_pending = True
        self.tracker.note_released(self, self.held_bytes)
        self.stats.records_expired += count
        self.held = _NONE
        self.held_bytes = 0
        events.append(TlsProblem(self.flow, KEYS_LATE,
                                 f"dropped {count} records of {self.flow.describe()}: {why}",
                                 ts))
        if not self.failed:
            self.failed = KEYS_LATE
            self.stats.undecryptable[KEYS_LATE] = self.stats.undecryptable.get(KEYS_LATE, 0) + 1

    def _replay(self, events: list[Event]) -> None:
        held = self.held
        self.held = _NONE
        self.tracker.note_released(self, self.held_bytes)
        self.held_bytes = 0
        self._replaying = True
        try:
            for index, record in enumerate(held):
                if self.held:  # a record was held again: keep the rest behind it
                    rest = held[index:]
                    size = sum(len(r[3]) for r in rest)
                    self.held_bytes += size
                    self.tracker.note_waiting(self, size)
                    self.held = self.held + rest
                    return
                self._record(*record, events)
        finally:
            self._replaying = False

    # -- handshake --------------------------------------------------------------------------

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
            self._client_hello(direction, message, body)
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
        hs.transcript.append(message)
        if msg_type == hsk.SERVER_HELLO and not from_client:
            self._server_hello(hs, message, ts, events)
        elif msg_type == hsk.CERTIFICATE and not from_client:
            hs.certificate = hsk.first_certificate(body, tls13=is_tls13(hs.version))
        elif msg_type == hsk.CLIENT_KEY_EXCHANGE and from_client:
            self._client_key_exchange(hs, body)
        elif msg_type == hsk.NEW_SESSION_TICKET and not from_client:
            hs.ticket = hsk.session_ticket(body, tls13=False)
        elif msg_type == hsk.ENCRYPTED_EXTENSIONS and not from_client:
            hs.early_data_accepted = hsk.EXT_EARLY_DATA in hsk.parse_extensions(body)
        elif msg_type == hsk.END_OF_EARLY_DATA and from_client:
            hs.end_of_early_data_seen = True
            side = self.sides[direction]
            side.phase = HANDSHAKE_KEYS
            side.decryptor, side.fallback = side.fallback, None
            if side.decryptor is None:
                self._install(direction)

    def _client_hello(self, direction: int, message: bytes, body: bytes) -> None:
        if self.client_dir is None:
            self.client_dir = direction
        elif direction != self.client_dir:
            return
        hello = hsk.parse_client_hello(body)
        hs = self.handshake
        if hs is not None and hs.hello_retry and hs.server_hello is not None:
            # the second ClientHello after a HelloRetryRequest continues the same transcript
            hs.client_hello = hello
            hs.server_hello = None
            hs.transcript.append(message)
            self.client_random = hello.random
            return
        self.handshake = HandshakeState(hello, [message])
        self.client_random = hello.random

    def _server_hello(self, hs: HandshakeState, message: bytes, ts: int,
                      events: list[Event]) -> None:
        body = message[4:]
        version = int.from_bytes(body[:2], "big")
        hello = (hsk.parse_server_hello_tls13_draft(body) if 0x7F00 <= version <= 0x7F15
                 else hsk.parse_server_hello(body))
        hs.server_hello = hello
        hs.version = self.version = hello.version
        suite = hs.suite = self.suite = lookup(hello.cipher_suite)
        self.info = tls_info(hello.version, hello.cipher_suite)
        if suite is None or not suite.supported:
            self._fail(UNSUPPORTED_SUITE, ts, events)
            if is_tls13(hello.version):
                for side in self.sides:
                    side.encrypted = True
            return
        if is_tls13(hello.version):
            self._server_hello_tls13(hs, hello, suite, ts, events)
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
        keys = self.tracker.keys
        logged = logged_master(hs, keys)
        if logged is not None:
            self._set_master(hs, logged, "key log")
        elif hs.abbreviated:
            cached = self.tracker.sessions.lookup(hs.client_hello.session_id,
                                                  hs.client_hello.ticket or b"")
            if cached is not None:
                self._set_master(hs, cached, "session cache")
            else:
                hs.missing = SESSION_UNKNOWN
        elif hs.key_exchange_seen:
            pre_master = logged_pre_master(hs, keys)
            if pre_master is not None:
                self._set_master(hs, master_from_pre_master(hs, pre_master), "key log")

    def _client_key_exchange(self, hs: HandshakeState, body: bytes) -> None:
        hs.key_exchange = body
        suite = hs.suite
        if suite is None or hs.failed or hs.master is not None:
            return
        if hs.ems:
            hs.session_hash = handshake_hash(hs.version, suite.prf_hash, hs.transcript)
        self._find_master(hs)
        if hs.master is not None:
            return
        if not suite.rsa_key_exchange:
            hs.missing = NEEDS_KEY_LOG
        else:
            masters, proven, hs.missing = rsa_masters(hs, self.tracker.keys)
            if proven:
                self._set_master(hs, masters[0], "rsa")
            elif masters:
                hs.candidates, hs.master_source = masters, "rsa"
                hs.missing = KEY_MISMATCH  # unless the first protected record says otherwise

    def _set_master(self, hs: HandshakeState, master: bytes, source: str) -> None:
        hs.master = master
        hs.master_source = source
        hs.missing = ""
        hs.pending = list(derive_decryptors(hs, master))
        if self.client_dir is not None:
            for direction in (0, 1):
                self._take_pending(hs, direction)

    def _take_pending(self, hs: HandshakeState, direction: int) -> None:
        """A side past its ChangeCipherSpec, still without keys, takes those waiting for it."""
        side = self.sides[direction]
        role = self._role(direction)
        if side.encrypted and side.decryptor is None and hs.pending[role] is not None:
            side.decryptor, hs.pending[role] = hs.pending[role], None

    def _change_cipher_spec(self, direction: int, ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        side.encrypted = True
        side.phase = PROTECTED
        side.decryptor = None
        hs = self.handshake
        if hs is None or self.client_dir is None or hs.server_hello is None:
            return
        role = self._role(direction)
        if (role == SERVER and not hs.key_exchange_seen and not hs.abbreviated
                and hs.master is None):
            # the server resumed a ticket without echoing a session ID (RFC 5077 §3.4)
            hs.abbreviated = True
            self._find_master(hs)
        if hs.candidates and role == CLIENT:
            for master in hs.candidates:
                client_write, server_write = derive_decryptors(hs, master)
                side.trials = [*side.trials, (master, client_write, server_write)]
            return
        self._take_pending(hs, direction)

    def _finished(self, direction: int, hs: HandshakeState, message: bytes, ts: int,
                  events: list[Event]) -> None:
        role = self._role(direction)
        suite = hs.suite
        expected = None
        if suite is not None and is_tls13(hs.version):
            secret = self._tls13_secret(role, HANDSHAKE_KEYS)
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
                # the record carrying it authenticated, so the keys are right: what differs
                # is the transcript, i.e. handshake messages the capture did not show us
                self.stats.finished_failed += 1
                events.append(TlsProblem(
                    self.flow, FINISHED_MISMATCH,
                    f"the {'client' if role == CLIENT else 'server'} Finished message on "
                    f"{self.server_endpoint()} does not verify: handshake messages are missing "
                    "from the capture (its records still authenticate)", ts))
        hs.transcript.append(message)
        hs.finished[role] = True
        if is_tls13(hs.version):
            side = self.sides[direction]
            side.phase = APPLICATION_KEYS
            side.decryptor = side.fallback = None
            self._install(direction)
        if all(hs.finished) and not hs.failed and self.info is not None:
            events.append(HandshakeDone(self.flow, self.info.version, self.info.cipher_suite,
                                        hs.abbreviated, ts))
            # what an idle session keeps is its keys: the handshake's state can go
            self.handshake = None
            if not is_tls13(self.version):
                self.client_random = b""

    def _proven(self, hs: HandshakeState, events: list[Event]) -> None:
        """A Finished verified: the keys are right.  Count and cache the session."""
        if not hs.counted:
            hs.counted = True
            if hs.abbreviated:
                self.stats.sessions_resumed += 1
            else:
                self.stats.sessions_full += 1
            if hs.master is not None:
                events.append(SessionSecret(self.flow, hs.client_hello.random, hs.master,
                                            hs.master_source))
        if hs.master is not None:
            hello = hs.server_hello
            self.tracker.sessions.store(hs.master, hello.session_id if hello else b"",
                                        hs.ticket)

    # -- TLS 1.3 ----------------------------------------------------------------------------

    def _server_hello_tls13(self, hs: HandshakeState, hello: hsk.ServerHello, suite: CipherSuite,
                            ts: int, events: list[Event]) -> None:
        if hello.is_hello_retry:
            hs.hello_retry = True
            first_hello = hs.transcript[0]
            hashed = digest(suite.prf_hash, first_hello)
            hs.transcript = [bytes([hsk.MESSAGE_HASH, 0, 0, len(hashed)]) + hashed,
                             hs.transcript[-1]]
            return
        hs.abbreviated = hsk.EXT_PRE_SHARED_KEY in hello.extensions
        assert self.client_dir is not None
        client, server = self.sides[self.client_dir], self.sides[1 - self.client_dir]
        server.encrypted = client.encrypted = True
        server.phase = HANDSHAKE_KEYS
        self._install(1 - self.client_dir)
        early = client.decryptor if client.phase == EARLY else None
        client.phase = EARLY if hs.offers_early_data and not hs.hello_retry else HANDSHAKE_KEYS
        self._install(self.client_dir)
        if early is not None:
            client.decryptor = early  # found by trial before the ServerHello: keep its count

    def _tls13_secret(self, role: int, phase: int) -> bytes | None:
        logged = self.tracker.keys.secrets_for(self.client_random)
        if logged is None:
            return None
        return logged.tls13.get(TLS13_SECRET_LABELS[(role, phase)])

    def _tls13_decryptor(self, secret: bytes) -> Decryptor:
        suite = self.suite
        assert suite is not None
        key, iv = traffic_key_iv(suite.prf_hash, secret, suite.key_len)
        return AeadDecryptor(suite, key, iv, self.version)

    def _install(self, direction: int) -> None:
        """Give a side the keys of its phase, if they are known by now."""
        side = self.sides[direction]
        hs = self.handshake
        if self.suite is None or not self.suite.supported:
            return
        if not is_tls13(self.version):
            if hs is not None:
                self._take_pending(hs, direction)
            return
        role = self._role(direction)
        if side.phase == EARLY:
            early = self._tls13_secret(CLIENT, EARLY)
            handshake_secret = self._tls13_secret(CLIENT, HANDSHAKE_KEYS)
            side.decryptor = self._tls13_decryptor(early) if early else None
            side.fallback = (self._tls13_decryptor(handshake_secret) if handshake_secret
                             else None)
            return
        if side.phase == APPLICATION_KEYS and side.traffic_secret:
            secret: bytes | None = side.traffic_secret
        else:
            secret = self._tls13_secret(role, side.phase)
        if secret is not None:
            if side.phase == APPLICATION_KEYS:
                side.traffic_secret = secret
            side.decryptor = self._tls13_decryptor(secret)

    def _key_update(self, direction: int) -> None:
        side = self.sides[direction]
        if not side.traffic_secret or self.suite is None:
            side.decryptor = None
            return
        side.traffic_secret = next_traffic_secret(self.suite.prf_hash, side.traffic_secret)
        side.decryptor = self._tls13_decryptor(side.traffic_secret)
        self.stats.key_updates += 1

    # -- failures ----------------------------------------------------------------------------

    def server_endpoint(self) -> str:
        if self.client_dir is None:
            return format_endpoint(self.flow.endpoints[1])
        return format_endpoint(self.flow.endpoints[1 - self.client_dir])

    def _fail(self, reason: str, ts: int, events: list[Event]) -> None:
        hs = self.handshake
        if hs is not None:
            if hs.failed:
                return
            hs.failed = reason
        elif self.failed:
            return
        self.failed = reason
        self.stats.undecryptable[reason] = self.stats.undecryptable.get(reason, 0) + 1
        server = self.server_endpoint()
        suite = self.info.cipher_suite if self.info else ""
        cert_seen = hs is not None and hs.certificate is not None
        suite_code = hs.server_hello.cipher_suite if hs and hs.server_hello else 0
        messages = {
            NO_KEY: (f"no key for server {server}: none of the given keys matches its "
                     "certificate") if cert_seen and self.tracker.keys.rsa_keys else
                    f"no key for server {server}: no RSA key given",
            KEY_MISMATCH: f"key mismatch for server {server}: no given key decrypts its session",
            UNSUPPORTED_SUITE: f"unsupported cipher suite {suite} (0x{suite_code:04X}) on "
                               f"server {server}",
            NO_HANDSHAKE: f"no handshake seen for {self.flow.describe()}: it started before "
                          "the capture",
            SESSION_UNKNOWN: f"resumed session on server {server} whose full handshake is not "
                             "in the capture (a key log would decrypt it)",
            NEEDS_KEY_LOG: f"server {server} uses {suite}: only a key log can decrypt it, and "
                           "it has no entry for this session",
        }
        events.append(TlsProblem(self.flow, reason, messages.get(reason, reason), ts))


_NO_INFO = TlsInfo("unknown", "unknown")  # TLS whose ServerHello we missed
