"""The state of one TLS connection, declared once for the parts that work on it.

``TlsConnection`` (connection.py) is assembled from parts that each live in their own module:
opening protected records (opening.py), records waiting for keys (waiting.py), the handshake and
its keys (negotiation.py), and what is counted and said about each session (accounting.py).
They are mixins of one object rather than objects of their own because an agent keeps
100,000 idle sessions: every extra object per session would cost memory for nothing.
"""

from __future__ import annotations

from captagent_tls.net.tcp import Flow
from captagent_tls.tls.context import TlsContext, TlsStats
from captagent_tls.tls.events import Event, TlsInfo
from captagent_tls.tls.handshake_state import HandshakeState
from captagent_tls.tls.held import HeldRecord, HeldRecords
from captagent_tls.tls.problems import Notice, Reason
from captagent_tls.tls.side import Phase, Side
from captagent_tls.tls.suites import CipherSuite


class ConnectionState:
    """Attributes every part reads, and the steps one part asks of another."""

    __slots__ = (
        "flow",
        "ctx",
        "stats",
        "sides",
        "client_dir",
        "is_tls",
        "handshake",
        "version",
        "suite",
        "client_random",
        "info",
        "failed",
        "refused",
        "closed",
        "held",
        "_replaying",
        "outcome",
        "session_open",
        "session_decrypted",
        "keys_failed",
        "notices",
    )

    flow: Flow
    ctx: TlsContext
    stats: TlsStats
    sides: tuple[Side, Side]
    client_dir: int | None  # the direction the client sends in, once known
    is_tls: bool | None  # None until the first bytes say
    handshake: HandshakeState | None  # while one runs; dropped once it is done
    version: int
    suite: CipherSuite | None
    client_random: bytes
    info: TlsInfo | None
    failed: Reason | None  # why the current session cannot be decrypted
    refused: bool  # the session contradicted itself: nothing more of it is opened
    closed: bool  # the TCP flow has ended
    held: HeldRecords | None  # records waiting for keys, in arrival order
    _replaying: bool
    outcome: str | None  # the counter the current session is in
    session_open: bool
    session_decrypted: bool  # something of the current session was opened
    keys_failed: bool  # records of the current session failed with its keys
    notices: tuple[Notice, ...]  # told once per connection

    @property
    def app_info(self) -> TlsInfo:
        raise NotImplementedError

    @property
    def failed_for_good(self) -> bool:
        raise NotImplementedError

    @property
    def keys_coming(self) -> bool:
        raise NotImplementedError

    def _role(self, direction: int) -> int:
        raise NotImplementedError

    def _record(
        self,
        direction: int,
        content_type: int,
        version: int,
        fragment: bytes,
        ts: int,
        events: list[Event],
    ) -> None:
        raise NotImplementedError

    def _dispatch(
        self, direction: int, content_type: int, fragment: bytes, ts: int, events: list[Event]
    ) -> None:
        raise NotImplementedError

    def _lost(self, direction: int, events: list[Event], ts: int) -> None:
        raise NotImplementedError

    def _install(self, direction: int) -> None:
        raise NotImplementedError

    def _collect_rsa(self, hs: HandshakeState) -> None:
        raise NotImplementedError

    def _install_missing_keys(self) -> None:
        raise NotImplementedError

    def _take_pending(self, hs: HandshakeState, direction: int) -> None:
        raise NotImplementedError

    def _hold(self, record: HeldRecord, events: list[Event]) -> None:
        raise NotImplementedError

    def _no_keys(self, record: HeldRecord, events: list[Event]) -> None:
        raise NotImplementedError

    def _tls13_secret(self, role: int, phase: Phase) -> bytes | None:
        raise NotImplementedError

    def _decrypted(self, events: list[Event]) -> None:
        raise NotImplementedError

    def _fail(self, reason: Reason, ts: int, events: list[Event], detail: str = "") -> None:
        raise NotImplementedError

    def _refuse(self, reason: Reason, ts: int, events: list[Event], detail: str) -> None:
        raise NotImplementedError

    def _notice(self, notice: Notice, ts: int, events: list[Event], message: str) -> None:
        raise NotImplementedError

    def _open_session(self) -> None:
        raise NotImplementedError

    def _set_outcome(self, outcome: str) -> None:
        raise NotImplementedError

    def _settle_session(self) -> None:
        raise NotImplementedError

    def _why_no_keys(self) -> Reason:
        raise NotImplementedError

    def server_endpoint(self) -> str:
        raise NotImplementedError
