"""The interface of application stages: who takes the bytes a flow carries once TCP has put
them in order and TLS has decrypted them (or found them plain), and who takes a datagram.

**Streams.**  The pipeline looks for a consumer once per flow direction, when bytes come and
the direction has none: it asks the registered stream stages in order
(:mod:`captagent_tls.registry`), and the first whose ``start`` takes the bytes gives the
direction's consumer, or, for a stage that speaks for the whole connection (WebSocket: the
upgrade request or response decides), the consumer of both directions.  From then on the
consumer gets that direction's bytes (``data``), the holes the capture left (``gap``) and the
end of the connection (``close``), each with its time and TLS information (the TLS stage's
events), and hands out units: a SIP message or other application data, with its direction.
What it has to report goes out as ``problems``.  A consumer that holds nothing between
messages says so (``idle``) and is let go: an idle connection keeps no application state, and
the next bytes choose again.  SIP stream framing is the last stage and takes whatever the
others leave.

**Datagrams.**  Each UDP datagram is offered to the registered datagram stages in order; the
first that claims it returns what it made of it (SIP over UDP: a message).

A stage is a package of its own with a ``stage`` module (``sip/stage.py``,
``websocket/stage.py``); adding one is a new package and a line in the registry, not a
branch in the pipeline.  Stages are sans-IO, as every stage before them.
"""

from __future__ import annotations

from typing import Protocol

from captagent_tls.counters import Counters
from captagent_tls.media.reports import MediaEvent
from captagent_tls.message import Message
from captagent_tls.net.packet import Datagram
from captagent_tls.sip.framing import Unit
from captagent_tls.tls.events import AppData, AppGap, ConnectionDone

#: units handed out, each with the direction it travelled in
Units = list[tuple[int, Unit]]
#: what a datagram stage hands out: messages, and the media stage's RTCP reports and the
#: RTP statistics of calls whose media ended
Outputs = list[Message | MediaEvent]


class StreamConsumer(Protocol):
    """Takes one direction's (or one connection's) application bytes."""

    @property
    def label(self) -> str:
        """Names the stage in its problems ("WebSocket 10.0.0.2:443: ...")."""

    @property
    def problems(self) -> list[tuple[str, str]]:
        """(kind, detail) pairs to report, which the pipeline takes (clears) after each
        call."""

    @property
    def idle(self) -> bool:
        """Holds nothing: may be let go until the direction's next bytes."""

    @property
    def websocket(self) -> bool:
        """The units came inside WebSocket frames (their transport says ws or wss)."""

    def client_direction(self, tls_client: int) -> int:
        """Which direction is the client's for the units (``tls_client``: the TLS client's);
        WebSocket: the side that masks its frames."""

    def problem_client(self, tls_client: int) -> int:
        """The client's direction as the problems see it (the server they name is the
        other side)."""

    def data(self, event: AppData) -> Units: ...

    def gap(self, event: AppGap) -> Units: ...

    def close(self, direction: int, event: ConnectionDone) -> Units:
        """The connection ended: whatever is held, as units (``direction``: the one this
        consumer was chosen for)."""

    def discard(self) -> None:
        """Forget what is held (the flow is dropped after an internal error)."""


class StreamStage(Protocol):
    #: its consumer takes both directions of the connection, not only the one that started it
    both_directions: bool

    def start(self, event: AppData) -> tuple[Units, StreamConsumer | None] | None:
        """A direction with no consumer has these bytes: None when they are not this
        stage's; otherwise the units they make and the consumer to keep (None: it holds
        nothing yet)."""

    def add_counters(self, counters: Counters) -> None: ...


class DatagramStage(Protocol):
    """Takes UDP datagrams; it may also watch the SIP messages the pipeline emits (the media
    stage learns calls from their SDP) and hold what it cannot place yet."""

    observes: bool  # the pipeline shows it every SIP message it emits (``observe``)

    def datagram(self, datagram: Datagram, ts_ns: int, settled: bool) -> Outputs | None:
        """None when the datagram is not this stage's; otherwise what it made of it.
        ``settled``: every SIP message captured before it has been emitted (none is held
        for keys); a stage may wait for one otherwise."""

    def observe(self, message: Message) -> Outputs:
        """A SIP message the pipeline emitted; what that lets the stage hand out."""

    def shares(self, message: Message) -> bool:
        """With worker processes: does the stage in every other worker need this message?"""

    def settle(self, watermark_ns: int) -> Outputs:
        """Every message captured before ``watermark_ns`` has been emitted: what waited for
        one can be decided."""

    def oldest_waiting_ts(self) -> int | None:
        """The capture time of the oldest thing held (an output may still come with it)."""

    def expire(self, now_ns: int) -> Outputs:
        """Time passes without datagrams (live capture)."""

    def finish(self, now_ns: int) -> Outputs:
        """The end of the input: everything held is decided."""

    def add_counters(self, counters: Counters) -> None: ...


class DatagramStageBase:
    """What a datagram stage that holds nothing and watches no message does for the hooks."""

    observes = False  # (True: the pipeline shows it every SIP message it emits)

    def observe(self, message: Message) -> Outputs:
        return []

    def shares(self, message: Message) -> bool:
        return False

    def settle(self, watermark_ns: int) -> Outputs:
        return []

    def oldest_waiting_ts(self) -> int | None:
        return None

    def expire(self, now_ns: int) -> Outputs:
        return []

    def finish(self, now_ns: int) -> Outputs:
        return []

    def add_counters(self, counters: Counters) -> None:
        pass
