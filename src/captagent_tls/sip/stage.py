"""SIP as an application stage (:mod:`captagent_tls.stage`): stream framing for TCP and TLS
connections (the stage that takes whatever no other stage takes), and SIP over UDP."""

from __future__ import annotations

from typing import ClassVar

from captagent_tls.counters import Counters
from captagent_tls.message import Message
from captagent_tls.net.packet import Datagram
from captagent_tls.sip.framing import SipBudget, SipFramer, frame_datagram
from captagent_tls.stage import DatagramStageBase, Outputs, Units
from captagent_tls.tls.events import AppData, AppGap, ConnectionDone


class SipStreamConsumer(SipFramer):
    """A direction's SIP framer, as a stream consumer."""

    __slots__ = ()
    label: ClassVar[str] = "SIP"
    problems: ClassVar[list[tuple[str, str]]] = []  # (SIP framing reports none; never added to)
    websocket: ClassVar[bool] = False

    def client_direction(self, tls_client: int) -> int:
        return tls_client

    problem_client = client_direction

    def data(self, event: AppData) -> Units:
        direction = event.direction
        return [(direction, unit) for unit in self.feed(event.data)]

    def gap(self, event: AppGap) -> Units:  # type: ignore[override]
        direction = event.direction
        return [(direction, unit) for unit in SipFramer.gap(self)]

    def close(self, direction: int, event: ConnectionDone) -> Units:
        return [(direction, unit) for unit in self.flush()]

    def discard(self) -> None:
        self.flush()  # (gives back what it held to the shared budget)


class SipStreamStage:
    """SIP stream framing, one framer per direction.  A direction between messages keeps no
    framer (idle sessions cost nothing): a spare framer frames what arrives, and stays with
    the direction only when it has to hold something."""

    both_directions = False

    def __init__(self, budget: SipBudget):
        self.budget = budget
        self._spare = SipStreamConsumer(budget)

    def start(self, event: AppData) -> tuple[Units, SipStreamConsumer | None]:
        framer = self._spare
        direction = event.direction
        units = [(direction, unit) for unit in framer.feed(event.data)]
        if framer.idle:
            framer.started = False  # as a new one would be
            return units, None
        self._spare = SipStreamConsumer(self.budget)
        return units, framer

    def add_counters(self, counters: Counters) -> None:
        self.budget.add_counters(counters)


class SipDatagramStage(DatagramStageBase):
    """SIP over UDP: a datagram carries one message (RFC 3261 §18.3)."""

    def datagram(self, datagram: Datagram, ts_ns: int, settled: bool) -> Outputs | None:
        payload = datagram.payload
        if not payload or not 0x41 <= payload[0] & 0xDF <= 0x5A:
            return None  # (a start line begins with a letter: RTP, DTLS, STUN do not)
        unit = frame_datagram(bytes(payload))
        if unit is None:
            return None
        is_request = not unit.data.startswith(b"SIP/2.0 ")
        return [
            Message(
                ts_ns,
                (datagram.src, datagram.sport),
                (datagram.dst, datagram.dport),
                "udp",
                unit.data,
                unit.call_id,
                True,
                is_request,
                "",
                "",
            )
        ]
