"""Events the TLS stage hands to the SIP stage and to the agent."""

from __future__ import annotations

from typing import NamedTuple

from captagent_tls.net.tcp import Flow


class TlsInfo(NamedTuple):
    version: str  # "TLSv1.2"
    cipher_suite: str  # IANA name


PLAINTEXT = TlsInfo("", "")  # application bytes of a TCP flow that is not TLS


class AppData(NamedTuple):
    """Decrypted (authenticated) application bytes, in stream order for one direction."""

    flow: Flow
    direction: int
    data: bytes
    ts_ns: int
    info: TlsInfo


class AppGap(NamedTuple):
    """Application bytes of this direction were lost: what follows does not continue what came
    before, so framing above must find its feet again."""

    flow: Flow
    direction: int
    ts_ns: int


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

    flow: Flow
    kind: str
    message: str
    ts_ns: int


class SessionSecret(NamedTuple):
    """A master secret proven by a Finished message, for key-log export."""

    flow: Flow
    client_random: bytes
    master_secret: bytes
    source: str  # "rsa", "session cache" or "key log"


class ConnectionDone(NamedTuple):
    """The TCP flow has closed and no records of it wait for keys any more: nothing more will
    come for this flow."""

    flow: Flow
    ts_ns: int


Event = (AppData | AppGap | HandshakeDone | TlsAlert | TlsProblem | SessionSecret
         | ConnectionDone)
