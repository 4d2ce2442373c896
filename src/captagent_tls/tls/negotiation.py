"""Following a handshake: the hellos (and whether they agree), the certificate, the key
exchange, ChangeCipherSpec and Finished (verified, and what a failure means), TLS 1.3's phases
and KeyUpdate, and giving each side its keys as soon as they are known."""

from __future__ import annotations

from hmac import compare_digest

from captagent_tls.tls import handshake as hsk
from captagent_tls.tls import tls13
from captagent_tls.tls.events import Event, HandshakeDone
from captagent_tls.tls.handshake_state import (
    HandshakeState,
    derive_decryptors,
    encrypted_pre_master,
    hello_inconsistency,
    logged_master,
    logged_pre_master,
    master_from_pre_master,
    rsa_candidates,
    rsa_masters,
)
from captagent_tls.tls.held import HeldRecord
from captagent_tls.tls.keyschedule import (
    SSL3,
    TLS12,
    TLS13,
    digest,
    finished_verify_data,
    handshake_hash,
    tls13_finished,
)
from captagent_tls.tls.problems import Notice, Reason
from captagent_tls.tls.record_stream import VERSIONS
from captagent_tls.tls.side import Phase
from captagent_tls.tls.state import ConnectionState
from captagent_tls.tls.suites import lookup
from captagent_tls.tls.tls13 import CLIENT, SERVER, is_tls13
from captagent_tls.tls.tls_info import tls_info

MAX_HANDSHAKE_MESSAGE = 1 << 20
SERVER_FULL_FLIGHT = frozenset(
    (hsk.CERTIFICATE, hsk.SERVER_KEY_EXCHANGE, hsk.CERTIFICATE_REQUEST, hsk.SERVER_HELLO_DONE)
)


class Negotiation(ConnectionState):
    __slots__ = ()

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

    def _handshake_message(
        self, direction: int, message: bytes, ts: int, events: list[Event]
    ) -> None:
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
            self._refuse(
                Reason.HANDSHAKE_TOO_LARGE,
                ts,
                events,
                f"its handshake messages exceed {hs.transcript_bytes >> 10} KiB",
            )
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

    def _server_hello(
        self, hs: HandshakeState, message: bytes, ts: int, events: list[Event]
    ) -> None:
        body = message[4:]
        version = int.from_bytes(body[:2], "big")
        hello = (
            hsk.parse_server_hello_tls13_draft(body)
            if 0x7F00 <= version <= 0x7F15
            else hsk.parse_server_hello(body)
        )
        tls13_hello = is_tls13(hello.version)
        for side in self.sides:  # what every record carries from now on (RFC 8446 §5.1)
            side.version = TLS12 if tls13_hello else hello.version
        suite = lookup(hello.cipher_suite)
        hs.server_hello = hello
        # the module's int, not one parsed per connection (28 bytes an idle session keeps)
        hs.version = self.version = VERSIONS.get(hello.version, hello.version)
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
        hs.ems = (
            hsk.EXT_EXTENDED_MASTER_SECRET in client_ext
            and hsk.EXT_EXTENDED_MASTER_SECRET in hello.extensions
        )
        hs.etm = (
            suite.kind == "cbc"
            and hsk.EXT_ENCRYPT_THEN_MAC in client_ext
            and hsk.EXT_ENCRYPT_THEN_MAC in hello.extensions
        )
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
            cached = self.ctx.sessions.lookup(
                hs.client_hello.session_id, hs.client_hello.ticket or b""
            )
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
            keys, proven, missing = rsa_candidates(hs, self.ctx.keys)
            if not keys:
                hs.missing = missing
            elif self.ctx.rsa is None:
                encrypted = encrypted_pre_master(hs)
                self._rsa_decrypted(hs, [k.decrypt_pre_master(encrypted) for k in keys], proven)
            else:  # the records wait (in order) until the job is done
                hs.rsa_proven = proven
                hs.rsa_job = self.ctx.rsa.submit(self, keys, encrypted_pre_master(hs))

    def _collect_rsa(self, hs: HandshakeState) -> None:
        """The pre-master secret was decrypted off the packet path: take up the result."""
        job, hs.rsa_job = hs.rsa_job, None
        assert job is not None
        try:
            pre_masters = job.result()
        except Exception:  # noqa: BLE001 - an RSA error is "no key", never the agent's end
            pre_masters = []
        self._rsa_decrypted(hs, pre_masters, hs.rsa_proven)

    def _rsa_decrypted(
        self, hs: HandshakeState, pre_masters: list[bytes | None], proven: bool
    ) -> None:
        masters, hs.missing = rsa_masters(hs, pre_masters, proven)
        if proven and masters:
            self._set_master(hs, masters[0], "rsa")
        elif masters:
            hs.candidates, hs.master_source = masters, "rsa"
            hs.missing = Reason.KEY_MISMATCH  # unless the first protected record says
            if self.client_dir is not None:
                client = self.sides[self.client_dir]
                if client.encrypted and not client.trials and client.decryptor is None:
                    self._start_trials(hs, self.client_dir)

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
        if (
            role == SERVER
            and not hs.key_exchange_seen
            and not hs.abbreviated
            and hs.master is None
            and not hs.server_flight
            and hs.client_hello.ticket is not None
        ):
            # the server resumed a ticket without echoing a session ID (RFC 5077 §3.4): it
            # sent nothing a full handshake has, and the client offered a ticket
            hs.abbreviated = True
            self._find_master(hs)
        if hs.candidates and role == CLIENT:
            self._start_trials(hs, direction)
            return
        self._take_pending(hs, direction)

    def _finished_first(
        self, direction: int, fragment: bytes, ts: int, events: list[Event]
    ) -> bool:
        """The first protected handshake message of a TLS 1.0-1.2 side is its Finished.
        Anything else, with no bytes lost, means the keys open records under a cipher the
        peers did not use."""
        expected_length = 36 if self.version == SSL3 else 12
        if not fragment:
            self.sides[direction].expect_finished = True  # (an empty record says nothing)
            return True
        if fragment[:1] == bytes([hsk.FINISHED]) and (
            len(fragment) < 4 or int.from_bytes(fragment[1:4], "big") == expected_length
        ):
            return True
        if self.sides[direction].handshake_gap:
            return True
        self._refuse(
            Reason.FINISHED_MISMATCH,
            ts,
            events,
            f"the first protected message of the "
            f"{'client' if self._role(direction) == CLIENT else 'server'} is not its "
            "Finished message",
        )
        return False

    def _finished(
        self, direction: int, hs: HandshakeState, message: bytes, ts: int, events: list[Event]
    ) -> None:
        role = self._role(direction)
        suite = hs.suite
        expected = None
        if suite is not None and is_tls13(hs.version):
            secret = self._tls13_secret(role, Phase.HANDSHAKE)
            if secret is not None:
                expected = tls13_finished(suite.prf_hash, secret, hs.transcript)
        elif hs.master is not None and suite is not None:
            expected = finished_verify_data(
                hs.version, suite.prf_hash, hs.master, role == CLIENT, hs.transcript
            )
        if expected is not None:
            if compare_digest(expected, message[4:]):
                self.stats.finished_verified += 1
                self._proven(hs, events)
            else:
                self.stats.finished_failed += 1
                who = "client" if role == CLIENT else "server"
                if not (
                    hs.gap
                    or any(side.handshake_gap for side in self.sides)
                    or self._messages_missing(hs, role)
                ):
                    self._refuse(
                        Reason.FINISHED_MISMATCH,
                        ts,
                        events,
                        f"the {who} Finished message does not verify",
                    )
                    return
                self._notice(
                    Notice.FINISHED_UNVERIFIABLE,
                    ts,
                    events,
                    f"the {who} Finished message on {self.server_endpoint()} cannot "
                    "be verified: handshake messages were lost in a capture gap "
                    "(its records still authenticate)",
                )
        hs.transcript.append(message)
        hs.finished[role] = True
        if is_tls13(hs.version):
            side = self.sides[direction]
            side.phase = Phase.APPLICATION
            side.decryptor = side.fallback = None
            self._install(direction)
        if all(hs.finished) and not self.failed_for_good and self.info is not None:
            events.append(
                HandshakeDone(
                    self.flow, self.info.version, self.info.cipher_suite, hs.abbreviated, ts
                )
            )
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
        return (
            hs is not None
            and hs.server_hello is None
            and direction == self.client_dir
            and hs.offers_early_data
        )

    def _early_data(
        self,
        direction: int,
        content_type: int,
        version: int,
        fragment: bytes,
        ts: int,
        events: list[Event],
    ) -> None:
        side = self.sides[direction]
        hs = self.handshake
        assert hs is not None
        secret = self._tls13_secret(CLIENT, Phase.EARLY)
        if secret is None:
            if self.ctx.keys_may_arrive:
                self._hold(
                    HeldRecord(direction, content_type, version, fragment, ts, False), events
                )
            else:
                self.stats.early_data_skipped += 1
                side.gap_pending = True
            return
        found = tls13.open_early_data(
            hs.client_hello.cipher_suites, secret, content_type, version, fragment
        )
        if found is None:
            self.stats.early_data_skipped += 1
            side.gap_pending = True
            return
        decryptor, suite, opened = found
        side.decryptor, side.phase = decryptor, Phase.EARLY
        self.stats.records_decrypted += 1
        self.stats.early_data_records += 1
        if self.info is None:
            self.info = tls_info(TLS13, suite.code)
        self._dispatch(direction, *opened, ts, events)

    def _server_hello_tls13(self, hs: HandshakeState, hello: hsk.ServerHello) -> None:
        suite = hs.suite
        assert suite is not None and self.client_dir is not None
        if hello.is_hello_retry:
            hs.hello_retry = True
            first_hello = hs.transcript[0]
            hashed = digest(suite.prf_hash, first_hello)
            hs.transcript = [
                bytes([hsk.MESSAGE_HASH, 0, 0, len(hashed)]) + hashed,
                hs.transcript[-1],
            ]
            return
        hs.abbreviated = hsk.EXT_PRE_SHARED_KEY in hello.extensions
        client, server = self.sides[self.client_dir], self.sides[1 - self.client_dir]
        server.phase = Phase.HANDSHAKE
        self._install(1 - self.client_dir)
        early = client.decryptor if client.phase == Phase.EARLY else None
        client.phase = (
            Phase.EARLY if hs.offers_early_data and not hs.hello_retry else Phase.HANDSHAKE
        )
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
            side.fallback = (
                tls13.decryptor(suite, self.version, handshake_secret) if handshake_secret else None
            )
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
