"""SIP over WebSocket (RFC 7118) as an application stage (:mod:`captagent_tls.stage`): a
connection whose first bytes in a direction are an HTTP upgrade request or response (or,
picked up mid-stream, a WebSocket frame) belongs to a WebSocket session, both directions."""

from __future__ import annotations

from captagent_tls.counters import Counters
from captagent_tls.sip.framing import SipBudget
from captagent_tls.stage import Units
from captagent_tls.tls.events import AppData, AppGap, ConnectionDone
from captagent_tls.websocket.session import (
    START_BYTES,
    WebSocketSession,
    WebSocketStats,
    looks_like_start,
)


class WebSocketConsumer:
    """One connection's WebSocket session, as the consumer of both its directions."""

    __slots__ = ("session",)
    label = "WebSocket"
    idle = False  # (kept for the connection's life)

    def __init__(self, session: WebSocketSession):
        self.session = session

    @property
    def problems(self) -> list[tuple[str, str]]:
        return self.session.problems

    @property
    def websocket(self) -> bool:
        return self.session.websocket

    def client_direction(self, tls_client: int) -> int:
        session = self.session
        return session.client_dir if session.websocket else tls_client

    def problem_client(self, tls_client: int) -> int:
        return self.session.client_dir  # (the side that sent the upgrade request, or masks)

    def data(self, event: AppData) -> Units:
        return self.session.feed(event.direction, event.data)

    def gap(self, event: AppGap) -> Units:
        return self.session.gap(event.direction)

    def close(self, direction: int, event: ConnectionDone) -> Units:
        return self.session.close()

    def discard(self) -> None:
        pass


class WebSocketStage:
    both_directions = True

    def __init__(self, sip_budget: SipBudget):
        self.stats = WebSocketStats()
        self.sip_budget = sip_budget  # SIP framed inside, held with every other flow's

    def start(self, event: AppData) -> tuple[Units, WebSocketConsumer] | None:
        data = event.data
        if data[0] not in START_BYTES:
            return None
        start = looks_like_start(data)
        if not start:
            return None
        session = WebSocketSession(
            self.stats, event.direction, start, data, sip_budget=self.sip_budget
        )
        return session.feed(event.direction, data), WebSocketConsumer(session)

    def add_counters(self, counters: Counters) -> None:
        self.stats.add_counters(counters)
