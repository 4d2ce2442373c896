"""Wire the stages together: frames -> TCP -> TLS -> SIP -> sinks.

The same pipeline serves capture files and live capture; only the frame source differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from captagent_tls.capture import Frame
from captagent_tls.net.ip import Defragmenter
from captagent_tls.net.packet import Datagram, Fragment, Segment, Skip, decode
from captagent_tls.net.tcp import Event as NetEvent
from captagent_tls.net.tcp import Flow, FlowClosed, StreamData, StreamGap, TcpReassembler
from captagent_tls.sinks import Sink
from captagent_tls.sip import Message
from captagent_tls.sip.framing import (
    MAX_HELD_BYTES,
    MAX_MESSAGE_BYTES,
    SipBudget,
    SipFramer,
    Unit,
    frame_datagram,
)
from captagent_tls.tls.connection import TlsConnection
from captagent_tls.tls.events import (
    PLAINTEXT,
    AppData,
    AppGap,
    ConnectionDone,
    SessionSecret,
    TlsProblem,
)
from captagent_tls.tls.events import Event as TlsEvent
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.tracker import HoldLimits, TlsTracker


@dataclass
class PipelineOptions:
    flow_timeout_s: float = 180.0
    max_direction_bytes: int = 4 << 20
    max_flows: int = 200_000
    session_cache_size: int = 20_000
    keys_may_arrive: bool = False  # key logs still being written: hold records for keys
    hold: HoldLimits = field(default_factory=HoldLimits)
    max_sip_message_bytes: int = MAX_MESSAGE_BYTES  # one incomplete SIP message, per direction
    max_sip_held_bytes: int = MAX_HELD_BYTES  # all incomplete SIP messages together


@dataclass
class PipelineStats:
    frames: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    sip_messages: int = 0
    plain_sip_messages: int = 0  # SIP over UDP or unencrypted TCP
    raw_chunks: int = 0
    raw_bytes: int = 0
    plain_other_bytes: int = 0  # unencrypted TCP that is not SIP: not passed on


class Pipeline:
    def __init__(self, keys: KeyStore, sinks: list[Sink],
                 on_problem: Callable[[TlsProblem], None] | None = None,
                 options: PipelineOptions | None = None,
                 on_secret: Callable[[SessionSecret], None] | None = None):
        options = options or PipelineOptions()
        self.tcp = TcpReassembler(options.flow_timeout_s, options.max_direction_bytes,
                                  options.max_flows)
        self.tls = TlsTracker(keys, options.session_cache_size, options.keys_may_arrive,
                              options.hold)
        self.on_secret = on_secret
        self.sinks = sinks
        self.on_problem = on_problem
        self.stats = PipelineStats()
        self._framers: dict[tuple[Flow, int], SipFramer] = {}
        self.sip_budget = SipBudget(options.max_sip_held_bytes, options.max_sip_message_bytes)
        self.defrag = Defragmenter()
        self._last_ts = 0
        self._next_tick = 0

    def frame(self, frame: Frame) -> None:
        self.stats.frames += 1
        packet: Segment | Datagram | Fragment | Skip | None = decode(frame.linktype, frame.data)
        ts = frame.ts_ns
        if type(packet) is Fragment:
            packet = self.defrag.add(packet, ts)
        if type(packet) is not Segment:
            if type(packet) is Datagram:
                self._datagram(packet, ts)
            elif type(packet) is Skip:
                skipped = self.stats.skipped
                skipped[packet.reason] = skipped.get(packet.reason, 0) + 1
            return  # (None: a fragment waiting for the rest of its datagram)
        segment = packet
        if ts > self._last_ts:
            self._last_ts = ts
            if ts >= self._next_tick:
                self._next_tick = ts + 1_000_000_000
                self._tls_events(self.tls.expire(ts))
        for event in self.tcp.segment(segment, ts):
            self._net_event(event)

    def finish(self) -> None:
        """End of input: flush held-back bytes, close every flow, deliver what is complete."""
        for event in self.tcp.flush(self._last_ts):
            self._net_event(event)
        self._tls_events(self.tls.close_all(self._last_ts))

    def expire(self, now_ns: int) -> None:
        """Time passes without packets (live capture): idle flows and held records expire."""
        for event in self.tcp.expire(now_ns):
            self._net_event(event)
        self._tls_events(self.tls.expire(now_ns))

    def keys_added(self, ts_ns: int | None = None) -> None:
        """Secrets were added to the key store: decrypt what was waiting for them."""
        self._tls_events(self.tls.keys_changed(self._last_ts if ts_ns is None else ts_ns))

    def _net_event(self, event: NetEvent) -> None:
        tls = self.tls
        if type(event) is StreamData:
            self._tls_events(tls.data(event.flow, event.direction, event.data, event.ts_ns))
        elif type(event) is StreamGap:
            self._tls_events(tls.gap(event.flow, event.direction, event.ts_ns))
        elif type(event) is FlowClosed:
            self._tls_events(tls.closed(event.flow, event.ts_ns))

    def _datagram(self, datagram: Datagram, ts: int) -> None:
        unit = frame_datagram(bytes(datagram.payload))
        if unit is None:
            skipped = self.stats.skipped
            skipped["UDP, not SIP"] = skipped.get("UDP, not SIP", 0) + 1
            return
        self.stats.sip_messages += 1
        self.stats.plain_sip_messages += 1
        is_request = not unit.data.startswith(b"SIP/2.0 ")
        message = Message(ts, (datagram.src, datagram.sport), (datagram.dst, datagram.dport),
                          "udp", unit.data, unit.call_id, True, is_request, "", "")
        for sink in self.sinks:
            sink.emit(message)

    def _tls_events(self, events: list[TlsEvent]) -> None:
        for event in events:
            if type(event) is AppData:
                key = (event.flow, event.direction)
                framer = self._framers.get(key)
                if framer is None:
                    framer = self._framers[key] = SipFramer(self.sip_budget)
                units = framer.feed(event.data)
                if framer.idle:
                    del self._framers[key]  # nothing held: idle sessions keep no SIP state
                if units:
                    self._deliver(event.flow, event.direction, units, event.ts_ns, event)
            elif type(event) is AppGap:
                framer = self._framers.get((event.flow, event.direction))
                if framer is not None:
                    self._deliver(event.flow, event.direction, framer.gap(), event.ts_ns, None)
            elif type(event) is TlsProblem:
                if self.on_problem is not None:
                    self.on_problem(event)
            elif type(event) is SessionSecret and self.on_secret is not None:
                self.on_secret(event)
            elif type(event) is ConnectionDone:
                flow = event.flow
                for direction in (0, 1):
                    framer = self._framers.pop((flow, direction), None)
                    if framer is not None:
                        self._deliver(flow, direction, framer.flush(), event.ts_ns, None)
                flow.context = None

    def _deliver(self, flow: Flow, direction: int, units: list[Unit], ts: int,
                 app: AppData | None) -> None:
        if not units:
            return
        conn: TlsConnection = flow.context
        client_dir = conn.client_dir or 0
        info = app.info if app is not None else conn.app_info
        plain = info is PLAINTEXT
        version, suite = info.version, info.cipher_suite
        src, dst = flow.endpoints[direction], flow.endpoints[1 - direction]
        stats = self.stats
        for unit in units:
            if unit.is_sip:
                stats.sip_messages += 1
                if plain:
                    stats.plain_sip_messages += 1
            elif plain:
                stats.plain_other_bytes += len(unit.data)  # not ours to pass on
                continue
            else:
                stats.raw_chunks += 1
                stats.raw_bytes += len(unit.data)
            message = Message(ts, src, dst, "tcp" if plain else "tls", unit.data, unit.call_id,
                              unit.is_sip, direction == client_dir, version, suite)
            for sink in self.sinks:
                sink.emit(message)
