"""What is counted and said about each session: exactly one counter per session (full,
resumed, incomplete, or undecryptable for a reason), and one true line per problem."""

from __future__ import annotations

from captagent_tls.net.addresses import format_endpoint
from captagent_tls.tls.events import Event, SessionSecret, TlsProblem
from captagent_tls.tls.problems import Facts, Notice, Reason, describe
from captagent_tls.tls.state import ConnectionState
from captagent_tls.tls.tls13 import is_tls13

# session outcomes besides the undecryptable reasons
FULL, RESUMED, INCOMPLETE = "full", "resumed", "incomplete"


class SessionAccounting(ConnectionState):
    __slots__ = ()

    def server_endpoint(self) -> str:
        if self.client_dir is None:
            return format_endpoint(self.flow.endpoint(1))
        return format_endpoint(self.flow.endpoint(1 - self.client_dir))

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
            events.append(
                SessionSecret(self.flow, hs.client_hello.random, hs.master, hs.master_source)
            )
        elif is_tls13(hs.version):
            logged = self.ctx.keys.secrets_for(hs.client_hello.random)
            if logged is not None and logged.tls13:
                events.append(
                    SessionSecret(
                        self.flow,
                        hs.client_hello.random,
                        b"",
                        "key log",
                        tuple(sorted(logged.tls13.items())),
                    )
                )

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
        elif (
            hs is not None
            and hs.server_hello is None
            and (self.flow.syn_seen or server_side.handshake_gap)
        ):
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
        events.append(self._problem(reason, ts, detail))

    def _problem(self, reason: Reason, ts: int, detail: str) -> TlsProblem:
        """The problem event for ``reason``, worded with what is known of the session."""
        explanation = describe(reason, self._facts(detail))
        return TlsProblem(self.flow, reason.value, explanation, ts, self.server_endpoint())

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
        events.append(self._problem(reason, ts, detail))

    def _notice(self, notice: Notice, ts: int, events: list[Event], message: str) -> None:
        if notice in self.notices:
            return
        self.notices = (*self.notices, notice)
        events.append(TlsProblem(self.flow, notice.value, message, ts, self.server_endpoint()))
