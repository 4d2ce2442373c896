"""The application stages a pipeline uses, in the order they are asked
(:mod:`captagent_tls.stage`).  Adding a stage is a package with a ``stage`` module and a line
here."""

from __future__ import annotations

from captagent_tls.media.stage import MediaStage
from captagent_tls.sip.framing import SipBudget
from captagent_tls.sip.stage import SipDatagramStage, SipStreamStage
from captagent_tls.stage import DatagramStage, StreamStage
from captagent_tls.tls.keys import KeyStore
from captagent_tls.websocket.stage import WebSocketStage


def stream_stages(sip_budget: SipBudget) -> list[StreamStage]:
    """Who takes a TCP or TLS connection's bytes: WebSocket when a direction starts with an
    upgrade (or a frame), else SIP stream framing, which takes anything (what is not SIP
    is passed on as raw application data)."""
    return [WebSocketStage(sip_budget), SipStreamStage(sip_budget)]


def datagram_stages(
    keys: KeyStore, media: bool = True, decrypt_rtp: bool = False
) -> list[DatagramStage]:
    """Who takes a UDP datagram: SIP over UDP (a start line), then, unless media is off,
    the media stage: RTP, RTCP, SRTCP and DTLS at the endpoints the calls' SDP named."""
    if not media:
        return [SipDatagramStage()]
    return [SipDatagramStage(), MediaStage(keys, decrypt_rtp)]
