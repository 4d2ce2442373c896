"""Events the TLS stage hands to the SIP stage and to the agent."""

from __future__ import annotations

from typing import NamedTuple

from captagent_tls.net.tcp import Flow


class TlsInfo(NamedTuple):
    version: str  # "TLSv1.2"
    cipher_suite: str  # IANA name


PLAINTEXT = TlsInfo("", "")  # application bytes of a TCP flow that is not TLS


class AppData(NamedTuple):
    """Decrypted (authenticated) application bytes, in stream order for one direction; or the
    bytes of a TCP flow that is not TLS (``info`` is ``PLAINTEXT``)."""

    flow: Flow
    direction: int
    data: bytes
    ts_ns: int
    info: TlsInfo
    from_client: bool


class AppGap(NamedTuple):
    """Application bytes of this direction were lost: what follows does not continue what came
    before, so framing above must find its feet again."""

    flow: Flow
    direction: int
    ts_ns: int
    info: TlsInfo
    from_client: bool


class HandshakeDone(NamedTuple):
    flow: Flow
    version: str
    cipher_suite: str
    resumed: bool
    ts_ns: int


class TlsAlert(NamedTuple):
    flow: Flow
    direction: int
    level: int
    description: int
    ts_ns: int


class TlsProblem(NamedTuple):
    """Something a person should know, e.g. that no key matches a server.  ``kind`` is stable
    (used for de-duplication and stats); ``message`` is one line for the user."""

    flow: Flow | None  # None: not tied to one flow
    kind: str
    message: str
    ts_ns: int
    server: str  # the server's endpoint, "10.0.0.1:5061"


class SessionSecret(NamedTuple):
    """The secrets of a session that was decrypted (proven by a Finished message, or by its
    records authenticating when the Finished was not captured): for key-log export and for
    captures that carry their own secrets."""

    flow: Flow
    client_random: bytes
    master_secret: bytes  # TLS 1.0-1.2 ("" in TLS 1.3)
    source: str  # "rsa", "session cache" or "key log"
    tls13_secrets: tuple[tuple[str, bytes], ...] = ()  # (NSS label, secret) in TLS 1.3

    def key_log_lines(self) -> list[str]:
        """The session in NSS key-log format (SSLKEYLOGFILE), one line each, with newlines."""
        random = self.client_random.hex()
        if self.master_secret:
            return [f"CLIENT_RANDOM {random} {self.master_secret.hex()}\n"]
        return [f"{label} {random} {secret.hex()}\n" for label, secret in self.tls13_secrets]


class ConnectionDone(NamedTuple):
    """The TCP flow has closed and no records of it wait for keys any more: nothing more will
    come for this flow.  ``info`` and ``client_direction`` say what its last bytes were."""

    flow: Flow
    ts_ns: int
    info: TlsInfo
    client_direction: int


Event = AppData | AppGap | HandshakeDone | TlsAlert | TlsProblem | SessionSecret | ConnectionDone
