"""TLS state for one TCP connection, sans-IO: stream bytes in, events out.

The record layer lives here, in one place: records spanning segments, several records per
segment, handshake messages spanning records.  Handshakes (including renegotiations inside the
encrypted session) are followed to learn the randoms, the suite, the certificate and the key
exchange; keys come from the ``KeyStore`` (RSA private keys, key logs) or the session cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hmac import compare_digest
from typing import TYPE_CHECKING

from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.tcp import Flow
from captagent_tls.tls import handshake as hsk
from captagent_tls.tls.events import (
    AppData,
    AppGap,
    Event,
    HandshakeDone,
    TlsAlert,
    TlsInfo,
    TlsProblem,
)
from captagent_tls.tls.keyschedule import (
    SSL3,
    TLS12,
    TLS13,
    finished_verify_data,
    handshake_hash,
    key_block,
    master_secret,
    version_name,
)
from captagent_tls.tls.protection import Decryptor, RecordAuthError, make_decryptor
from captagent_tls.tls.suites import CipherSuite, lookup, suite_name

if TYPE_CHECKING:
    from captagent_tls.tls.tracker import TlsTracker

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24
CONTENT_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT))
MAX_RECORD = (1 << 14) + 2048
MAX_HANDSHAKE_MESSAGE = 1 << 20
RESYNC_MAX_SKIPPED_RECORDS = 256

CLIENT, SERVER = 0, 1  # roles, as opposed to flow directions

# why a session cannot be decrypted (stats keys)
NO_KEY = "no_key"
KEY_MISMATCH = "key_mismatch"
UNSUPPORTED_SUITE = "unsupported_suite"
NO_HANDSHAKE = "no_handshake"
SESSION_UNKNOWN = "session_unknown"
NEEDS_KEY_LOG = "needs_key_log"


@dataclass
class _Handshake:
    """One handshake: the first of a connection, or a renegotiation."""

    client_hello: hsk.ClientHello
    transcript: list[bytes]
    server_hello: hsk.ServerHello | None = None
    suite: CipherSuite | None = None
    version: int = 0
    ems: bool = False
    etm: bool = False
    abbreviated: bool = False
    certificate: bytes | None = None
    key_exchange_seen: bool = False
    master: bytes | None = None
    candidates: list[bytes] = field(default_factory=list)  # masters still to be proven
    pending: list[Decryptor | None] = field(default_factory=lambda: [None, None])
    finished: list[bool] = field(default_factory=lambda: [False, False])
    ticket: bytes = b""
    failed: str = ""
    counted: bool = False


class _Side:
    """One direction's record stream."""

    __slots__ = ("buf", "handshake_buf", "decryptor", "encrypted", "trials", "resync",
                 "skipped", "gap_pending", "dead")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.handshake_buf = bytearray()
        self.decryptor: Decryptor | None = None
        self.encrypted = False  # a ChangeCipherSpec has been seen: records are protected
        self.trials: list[tuple[bytes, Decryptor, Decryptor]] = []  # (master, mine, peer's)
        self.resync = False
        self.skipped = 0  # records we could not open since keys were expected
        self.gap_pending = False
        self.dead = False


class TlsConnection:
    def __init__(self, flow: Flow, tracker: TlsTracker):
        self.flow = flow
        self.tracker = tracker
        self.stats = tracker.stats
        self.sides = (_Side(), _Side())
        self.client_dir: int | None = None
        self.is_tls: bool | None = None  # None until the first bytes say
        self.handshake: _Handshake | None = None
        self.version = 0
        self.record_version = 0
        self.info: TlsInfo | None = None
        self.failed = ""  # why the current session cannot be decrypted
        self.master: bytes | None = None  # of the established session
        self.handshakes = 0

    # -- input from the TCP stage ----------------------------------------------------------

    def data(self, direction: int, chunk: bytes, ts: int) -> list[Event]:
        events: list[Event] = []
        side = self.sides[direction]
        if side.dead:
            return events
        if self.is_tls is None:
            head = bytes(side.buf) + chunk if side.buf else chunk
            side.buf.clear()
            if not self._detect(direction, head, ts, events):
                if self.is_tls is None:
                    side.buf += head  # too short to tell yet
                return events
            chunk = head
        elif self.is_tls is False:
            return events
        if side.buf:
            side.buf += chunk
            data: bytes | bytearray = side.buf
        else:
            data = chunk
        end = len(data)
        pos = 0
        if side.resync:
            pos = self._find_record_start(data, 0)
            if pos < 0:
                self._keep(side, data, max(0, end - 4))
                return events
        while end - pos >= 5:
            content_type = data[pos]
            length = (data[pos + 3] << 8) | data[pos + 4]
            if content_type not in CONTENT_TYPES or data[pos + 1] != 3 or length > MAX_RECORD:
                self._lost_framing(direction, ts, events)
                pos = self._find_record_start(data, pos + 1)
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
            if side.dead:
                return events
        self._keep(side, data, pos)
        return events

    def gap(self, direction: int, ts: int) -> list[Event]:
        """The TCP stream lost bytes: drop the partial record and find the next one."""
        side = self.sides[direction]
        side.buf.clear()
        side.handshake_buf.clear()
        if self.is_tls:
            side.resync = True
        return [AppGap(self.flow, direction, ts)]

    def close(self, ts: int) -> list[Event]:
        events: list[Event] = []
        if self.is_tls and self.failed == "" and self.handshake is None and self.master is None:
            self._fail(NO_HANDSHAKE, ts, events)
        return events

    # -- record layer -----------------------------------------------------------------------

    @staticmethod
    def _keep(side: _Side, data: bytes | bytearray, pos: int) -> None:
        if data is side.buf:
            del side.buf[:pos]
        elif pos < len(data):
            side.buf += data[pos:]

    def _detect(self, direction: int, head: bytes, ts: int, events: list[Event]) -> bool:
        """Decide from the first bytes whether this flow carries TLS at all.

        Returns True when ``head`` is to be parsed as records; False when it was consumed or
        more bytes are needed (``is_tls`` stays None) or the flow is not TLS.
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
                self.handshake = _Handshake(hello, [head[2 : 2 + length]])
                self.handshakes += 1
                rest = head[2 + length :]
                if rest:
                    events.extend(self.data(direction, rest, ts))
                return False
        self.is_tls = False
        self.stats.non_tls_flows += 1
        return False

    def _find_record_start(self, data: bytes | bytearray, start: int) -> int:
        """Offset of the next plausible record header of this connection, or -1.

        Plausible: a known content type, this connection's record version, a sane length,
        and another plausible header right after the record (when those bytes are here).
        """
        version = self.record_version or TLS12
        marker = bytes([version >> 8, version & 0xFF])
        end = len(data)
        search = start
        while True:
            found = data.find(marker, search + 1)
            if found < 0:
                return -1
            header = found - 1
            search = found
            if data[header] not in CONTENT_TYPES:
                continue
            if header + 5 > end:
                return header  # too few bytes to judge: wait for more
            length = (data[header + 3] << 8) | data[header + 4]
            following = header + 5 + length
            if 0 < length <= MAX_RECORD and (
                following + 3 > end
                or (data[following] in CONTENT_TYPES
                    and data[following + 1 : following + 3] == marker)
            ):
                return header

    def _lost_framing(self, direction: int, ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        if not side.resync:
            self.stats.framing_errors += 1
            events.append(AppGap(self.flow, direction, ts))
        side.resync = True

    def _record(self, direction: int, content_type: int, version: int, fragment: bytes,
                ts: int, events: list[Event]) -> None:
        side = self.sides[direction]
        if side.encrypted and not (content_type == CHANGE_CIPHER_SPEC and self.version >= TLS13):
            opened = self._open(direction, content_type, version, fragment, ts, events)
            if opened is None:
                return
            content_type, fragment = opened
        elif content_type == APPLICATION_DATA and self.version < TLS13:
            # application data before any ChangeCipherSpec: the handshake was not captured
            side.encrypted = True
            if not self.failed:
                self._fail(NO_HANDSHAKE, ts, events)
            self.stats.records_undecrypted += 1
            return
        elif side.resync:
            side.resync = False
        self.record_version = version
        if content_type == APPLICATION_DATA:
            if fragment:
                if side.gap_pending:
                    side.gap_pending = False
                    events.append(AppGap(self.flow, direction, ts))
                events.append(AppData(self.flow, direction, fragment, ts, self.info or _NO_INFO))
        elif content_type == HANDSHAKE:
            self._handshake_bytes(direction, fragment, ts, events)
        elif content_type == CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(direction, ts, events)
        elif content_type == ALERT and len(fragment) >= 2:
            self.stats.alerts += 1
            events.append(TlsAlert(self.flow, direction, fragment[0], fragment[1], ts))

    def _open(self, direction: int, content_type: int, version: int, fragment: bytes, ts: int,
              events: list[Event]) -> tuple[int, bytes] | None:
        side = self.sides[direction]
        if side.trials:
            return self._open_trial(direction, content_type, version, fragment, ts, events)
        decryptor = side.decryptor
        if decryptor is None:
            self.stats.records_undecrypted += 1
            side.skipped += 1
            side.gap_pending = True
            return None
        if side.resync:
            return self._open_after_gap(side, decryptor, content_type, version, fragment)
        try:
            opened = decryptor.open(content_type, version, fragment)
        except RecordAuthError:
            self.stats.records_failed += 1
            decryptor.seq += 1  # the sender used this sequence number; the next goes on
            side.gap_pending = True
            return None
        self.stats.records_decrypted += 1
        return opened

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
            try:
                opened = decryptor.open(content_type, version, fragment)
            except RecordAuthError:
                continue
            side.resync = False
            self.stats.records_decrypted += 1
            self.stats.resyncs += 1
            return opened
        decryptor.seq = first
        self.stats.records_failed += 1
        return None

    def _open_trial(self, direction: int, content_type: int, version: int, fragment: bytes,
                    ts: int, events: list[Event]) -> tuple[int, bytes] | None:
        """No certificate told us which key: the first protected record picks the master."""
        side = self.sides[direction]
        trials, side.trials = side.trials, []
        for master, mine, peers in trials:
            try:
                opened = mine.open(content_type, version, fragment)
            except RecordAuthError:
                continue
            self.stats.records_decrypted += 1
            side.decryptor = mine
            hs = self.handshake
            if hs is not None:
                hs.master = master
                hs.candidates = []
                hs.pending[self._role(1 - direction)] = peers
            return opened
        self.stats.records_failed += 1
        self._fail(KEY_MISMATCH, ts, events)
        return None

    # -- handshake --------------------------------------------------------------------------

    def _role(self, direction: int) -> int:
        return CLIENT if direction == self.client_dir else SERVER

    def _handshake_bytes(self, direction: int, data: bytes, ts: int, events: list[Event]) -> None:
        buf = self.sides[direction].handshake_buf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            length = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                self.stats.handshake_errors += 1
                buf.clear()
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

    def _handshake_message(self, direction: int, message: bytes, ts: int,
                           events: list[Event]) -> None:
        msg_type = message[0]
        body = message[4:]
        if msg_type == hsk.CLIENT_HELLO:
            if self.client_dir is None:
                self.client_dir = direction
            elif direction != self.client_dir:
                return
            self.handshake = _Handshake(hsk.parse_client_hello(body), [message])
            self.handshakes += 1
            return
        hs = self.handshake
        if hs is None or msg_type == hsk.HELLO_REQUEST:
            return
        from_client = direction == self.client_dir
        if msg_type == hsk.FINISHED:
            self._finished(direction, hs, message, ts, events)
            return
        hs.transcript.append(message)
        if msg_type == hsk.SERVER_HELLO and not from_client:
            self._server_hello(hs, body, ts, events)
        elif msg_type == hsk.CERTIFICATE and not from_client:
            hs.certificate = hsk.first_certificate(body)
        elif msg_type == hsk.CLIENT_KEY_EXCHANGE and from_client:
            self._client_key_exchange(hs, body, ts, events)
        elif msg_type == hsk.NEW_SESSION_TICKET and not from_client:
            hs.ticket = hsk.session_ticket(body, tls13=False)

    def _server_hello(self, hs: _Handshake, body: bytes, ts: int, events: list[Event]) -> None:
        hello = hsk.parse_server_hello(body)
        hs.server_hello = hello
        hs.version = hello.version
        self.version = hello.version
        suite = lookup(hello.cipher_suite)
        hs.suite = suite
        self.info = TlsInfo(version_name(hello.version), suite_name(hello.cipher_suite))
        if hello.version >= TLS13:
            for side in self.sides:  # everything after the ServerHello is protected
                side.encrypted = True
            self._fail(NEEDS_KEY_LOG, ts, events, "TLS 1.3 is not supported yet")
            return
        client_ext = hs.client_hello.extensions
        hs.ems = (hsk.EXT_EXTENDED_MASTER_SECRET in client_ext
                  and hsk.EXT_EXTENDED_MASTER_SECRET in hello.extensions)
        hs.etm = (suite is not None and suite.kind == "cbc"
                  and hsk.EXT_ENCRYPT_THEN_MAC in client_ext
                  and hsk.EXT_ENCRYPT_THEN_MAC in hello.extensions)
        if suite is None or not suite.supported:
            self._fail(UNSUPPORTED_SUITE, ts, events)
            return
        session_id = hs.client_hello.session_id
        if session_id and hello.session_id == session_id:
            hs.abbreviated = True
            self._resume(hs, ts, events)

    def _resume(self, hs: _Handshake, ts: int, events: list[Event]) -> None:
        master = self.tracker.sessions.lookup(hs.client_hello.session_id,
                                              hs.client_hello.ticket or b"")
        if master is None:
            self._fail(SESSION_UNKNOWN, ts, events)
            return
        self._set_master(hs, master)

    def _client_key_exchange(self, hs: _Handshake, body: bytes, ts: int,
                             events: list[Event]) -> None:
        hs.key_exchange_seen = True
        suite = hs.suite
        if suite is None or hs.failed or not suite.supported:
            return
        if not suite.rsa_key_exchange:
            self._fail(NEEDS_KEY_LOG, ts, events)
            return
        encrypted = hsk.rsa_encrypted_pre_master(body, ssl3=hs.version == SSL3)
        keys = self.tracker.keys
        candidates = keys.rsa_keys
        if hs.certificate is not None:
            modulus = keys.certificate_modulus(hs.certificate)
            key = keys.rsa_key_for_modulus(modulus) if modulus is not None else None
            if key is None:
                self._fail(NO_KEY, ts, events)
                return
            candidates = [key]
        elif not candidates:
            self._fail(NO_KEY, ts, events)
            return
        versions = (hs.client_hello.version, hs.version)
        session_hash = None
        if hs.ems:
            session_hash = handshake_hash(hs.version, suite.prf_hash, hs.transcript)
        masters = []
        for key in candidates:
            pre_master = key.decrypt_pre_master(encrypted)
            if pre_master is None or int.from_bytes(pre_master[:2], "big") not in versions:
                continue
            hello = hs.server_hello
            assert hello is not None
            masters.append(master_secret(hs.version, suite.prf_hash, pre_master,
                                         hs.client_hello.random, hello.random, session_hash))
        if not masters:
            self._fail(NO_KEY if hs.certificate is not None else KEY_MISMATCH, ts, events)
        elif len(masters) == 1 and hs.certificate is not None:
            self._set_master(hs, masters[0])
        else:
            hs.candidates = masters

    def _set_master(self, hs: _Handshake, master: bytes) -> None:
        hs.master = master
        client_write, server_write = self._derive(hs, master)
        hs.pending = [client_write, server_write]

    def _derive(self, hs: _Handshake, master: bytes) -> tuple[Decryptor, Decryptor]:
        suite = hs.suite
        hello = hs.server_hello
        assert suite is not None and hello is not None
        mac, key, iv = suite.mac_len, suite.key_len, suite.iv_len
        block = key_block(hs.version, suite.prf_hash, master, hs.client_hello.random,
                          hello.random, 2 * (mac + key + iv))
        parts = []
        pos = 0
        for size in (mac, mac, key, key, iv, iv):
            parts.append(block[pos : pos + size])
            pos += size
        client_mac, server_mac, client_key, server_key, client_iv, server_iv = parts
        return (
            make_decryptor(suite, hs.version, client_key, client_iv, client_mac, hs.etm),
            make_decryptor(suite, hs.version, server_key, server_iv, server_mac, hs.etm),
        )

    def _change_cipher_spec(self, direction: int, ts: int, events: list[Event]) -> None:
        if self.version >= TLS13:
            return  # middlebox-compatibility CCS (RFC 8446 D.4)
        side = self.sides[direction]
        side.encrypted = True
        side.decryptor = None
        hs = self.handshake
        if hs is None or self.client_dir is None:
            if not self.failed:
                self._fail(NO_HANDSHAKE, ts, events)
            return
        role = self._role(direction)
        if (role == SERVER and not hs.key_exchange_seen and not hs.abbreviated
                and hs.master is None and not hs.failed):
            # the server resumed a ticket without echoing a session ID (RFC 5077 §3.4)
            hs.abbreviated = True
            self._resume(hs, ts, events)
        if hs.candidates and role == CLIENT:
            hello = hs.server_hello
            assert hello is not None
            for master in hs.candidates:
                client_write, server_write = self._derive(hs, master)
                side.trials.append((master, client_write, server_write))
            return
        side.decryptor = hs.pending[role]
        hs.pending[role] = None
        if side.decryptor is not None:
            self.sides[direction].skipped = 0

    def _finished(self, direction: int, hs: _Handshake, message: bytes, ts: int,
                  events: list[Event]) -> None:
        role = self._role(direction)
        suite = hs.suite
        if hs.master is not None and suite is not None:
            expected = finished_verify_data(hs.version, suite.prf_hash, hs.master,
                                            role == CLIENT, hs.transcript)
            if compare_digest(expected, message[4:]):
                self.stats.finished_verified += 1
                self._proven(hs)
            else:
                self.stats.finished_failed += 1
                if not hs.failed:
                    self._fail(KEY_MISMATCH, ts, events, "Finished message does not verify")
        hs.transcript.append(message)
        hs.finished[role] = True
        if all(hs.finished) and hs.master is not None and not hs.failed:
            self._established(hs, ts, events)

    def _proven(self, hs: _Handshake) -> None:
        """A Finished verified: the master secret is right.  Count and cache the session."""
        assert hs.master is not None
        if not hs.counted:
            hs.counted = True
            if hs.abbreviated:
                self.stats.sessions_resumed += 1
            else:
                self.stats.sessions_full += 1
        hello = hs.server_hello
        self.tracker.sessions.store(hs.master, hello.session_id if hello else b"", hs.ticket)

    def _established(self, hs: _Handshake, ts: int, events: list[Event]) -> None:
        assert hs.master is not None and self.info is not None
        self.master = hs.master
        events.append(HandshakeDone(self.flow, self.info.version, self.info.cipher_suite,
                                    hs.abbreviated, ts))
        hs.transcript = []

    # -- failures ----------------------------------------------------------------------------

    def server_endpoint(self) -> str:
        if self.client_dir is None:
            return format_endpoint(self.flow.endpoints[1])
        return format_endpoint(self.flow.endpoints[1 - self.client_dir])

    def _fail(self, reason: str, ts: int, events: list[Event], detail: str = "") -> None:
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
        messages = {
            NO_KEY: f"no key for server {server}: none of the given keys matches its "
                    "certificate" if hs is not None and hs.certificate is not None else
                    f"no key for server {server}: no RSA key given",
            KEY_MISMATCH: f"key mismatch for server {server}: no given key decrypts its session",
            UNSUPPORTED_SUITE: f"unsupported cipher suite {suite} on server {server}",
            NO_HANDSHAKE: f"no handshake seen for {self.flow.describe()}: it started before "
                          "the capture",
            SESSION_UNKNOWN: f"resumed session on server {server} whose full handshake is not "
                             "in the capture",
            NEEDS_KEY_LOG: f"server {server} uses {suite}: only a key log can decrypt it",
        }
        message = messages.get(reason, reason)
        if detail:
            message = f"{message} ({detail})"
        events.append(TlsProblem(self.flow, reason, message, ts))


_NO_INFO = TlsInfo("", "")
