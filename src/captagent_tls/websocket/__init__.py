"""WebSocket stage: SIP over WebSocket (RFC 7118) inside decrypted or plain TCP streams.

The opening handshake (:mod:`.handshake`), framing (:mod:`.frames`), permessage-deflate
(:mod:`.deflate`) and the per-connection state that ties them to SIP (:mod:`.session`).
Sans-IO, like ``net``, ``tls`` and ``sip``: bytes in, SIP units and problems out.
"""

from captagent_tls.websocket.session import (
    START_BYTES,
    WebSocketSession,
    WebSocketStats,
    looks_like_start,
)

__all__ = ["START_BYTES", "WebSocketSession", "WebSocketStats", "looks_like_start"]
