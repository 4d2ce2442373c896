"""The contract between the core and the outputs: one ``Message`` per SIP message (or chunk
of application bytes that is not SIP), with the endpoints, transport and TLS details every
sink and view needs.  The stages produce it; the sinks only read it."""

from __future__ import annotations

from typing import NamedTuple

Endpoint = tuple[bytes, int]  # packed IP address, port


class Message(NamedTuple):
    """One unit for the sinks: a SIP message, or raw application bytes that are not SIP."""

    ts_ns: int  # capture time of the packet that completed it
    src: Endpoint
    dst: Endpoint
    transport: str  # "udp", "tcp", "tls", or "ws" / "wss" (SIP over WebSocket, RFC 7118)
    payload: bytes
    call_id: str | None
    is_sip: bool
    from_client: bool
    tls_version: str
    cipher_suite: str
