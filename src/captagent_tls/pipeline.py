"""Wire the stages together: frames -> TCP -> TLS -> SIP -> sinks.

The same pipeline serves capture files and live capture; only the frame source differs.

No packet can end it: an unexpected exception while one flow is handled is caught here, at
the flow's boundary, counted and reported with the flow, and that flow's state is dropped;
every other flow goes on.  Errors of the outputs are not the packet's fault: they reach the
caller as ``OutputError`` (or ``BrokenPipeError``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from captagent_tls.capture import Frame
from captagent_tls.counters import Counters
from captagent_tls.message import Message
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.ip import Defragmenter
from captagent_tls.net.packet import Datagram, Fragment, Segment, Skip, decode
from captagent_tls.net.tcp import Event as NetEvent
from captagent_tls.net.tcp import Flow, FlowClosed, StreamData, StreamGap, TcpReassembler
from captagent_tls.sinks import OutputError, Sink
from captagent_tls.sip.framing import (
    MAX_HELD_BYTES,
    MAX_MESSAGE_BYTES,
    SipBudget,
    SipFramer,
    Unit,
    frame_datagram,
)
from captagent_tls.tls.events import (
    PLAINTEXT,
    AppData,
    AppGap,
    ConnectionDone,
    SessionSecret,
    TlsInfo,
    TlsProblem,
)
from captagent_tls.tls.events import Event as TlsEvent
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.problems import Notice
from captagent_tls.tls.rsa_pool import RSA_RELEASE_AFTER_FRAMES, RsaPool
from captagent_tls.tls.tracker import HoldLimits, TlsTracker
from captagent_tls.websocket import START_BYTES as WEBSOCKET_START
from captagent_tls.websocket import WebSocketSession, WebSocketStats, looks_like_start

log = logging.getLogger("captagent_tls")


@dataclass
class PipelineOptions:
    flow_timeout_s: float = 180.0
    max_direction_bytes: int = 4 << 20
    max_flows: int = 200_000
    session_cache_size: int = 20_000
    keys_may_arrive: bool = False  # key logs still being written: hold records for keys
    hold: HoldLimits = field(default_factory=HoldLimits)
    rsa_threads: int | None = None  # RSA off the packet path (None: cores - 1; 0: no threads)
    # reading a file: RSA results are taken up this many frames after their ClientKeyExchange,
    # so the output's order depends on the capture alone (tls/rsa_pool.py); None when live
    rsa_release_after: int | None = RSA_RELEASE_AFTER_FRAMES
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
    internal_errors: int = 0  # flows dropped after an unexpected exception
    websocket: WebSocketStats = field(default_factory=WebSocketStats)


TRANSPORTS = {
    (False, False): "tls",
    (False, True): "tcp",
    (True, False): "wss",
    (True, True): "ws",
}  # by (WebSocket, unencrypted)


class Pipeline:
    def __init__(
        self,
        keys: KeyStore,
        sinks: list[Sink],
        on_problem: Callable[[TlsProblem], None] | None = None,
        options: PipelineOptions | None = None,
        on_secret: Callable[[SessionSecret], None] | None = None,
    ):
        options = options or PipelineOptions()
        self.tcp = TcpReassembler(
            options.flow_timeout_s, options.max_direction_bytes, options.max_flows
        )
        lag = options.rsa_release_after
        rsa = (
            RsaPool(
                options.rsa_threads,
                (lambda: self.stats.frames + 1 + lag) if lag is not None else None,
            )
            if options.rsa_threads != 0
            else None
        )
        self.tls = TlsTracker(
            keys, options.session_cache_size, options.keys_may_arrive, options.hold, rsa
        )
        self._rsa_completed = rsa.completed if rsa is not None else deque()
        self._rsa_scheduled = rsa.scheduled if rsa is not None else deque()
        self.on_secret = on_secret
        self.sinks = sinks
        self.on_problem = on_problem
        self.stats = PipelineStats()
        self._framers: dict[tuple[Flow, int], SipFramer] = {}
        self._websockets: dict[Flow, WebSocketSession] = {}
        self.sip_budget = SipBudget(options.max_sip_held_bytes, options.max_sip_message_bytes)
        self._spare_framer = SipFramer(self.sip_budget)
        self.defrag = Defragmenter()
        # with worker processes reading one file, each reassembles every fragmented datagram
        # and keeps those that are its own (captagent_tls.workers.shard)
        self.owns: Callable[[Segment | Datagram | Skip], bool] | None = None
        self._last_ts = 0
        self._next_tick = 0

    def frame(self, frame: Frame) -> None:
        self.stats.frames += 1
        ts = frame.ts_ns
        if self._rsa_scheduled and self._rsa_scheduled[0][0] <= self.stats.frames:
            self.tls.release_rsa(self.stats.frames)
        if self._rsa_completed:
            self._rsa_done(self._last_ts)
        try:
            packet: Segment | Datagram | Fragment | Skip | None = decode(frame.linktype, frame.data)
            if type(packet) is Fragment:
                packet = self.defrag.add(packet, ts)
                if packet is not None and self.owns is not None and not self.owns(packet):
                    return
            if type(packet) is not Segment:
                if type(packet) is Datagram:
                    self._datagram(packet, ts)
                elif type(packet) is Skip:
                    skipped = self.stats.skipped
                    skipped[packet.reason] = skipped.get(packet.reason, 0) + 1
                return  # (None: a fragment waiting for the rest of its datagram)
        except (OutputError, BrokenPipeError):
            raise
        except Exception as exc:  # the last line of defence: see the module docstring
            self._internal_error(exc, None, ts)
            return
        segment = packet
        if ts > self._last_ts:
            self._last_ts = ts
            if ts >= self._next_tick:
                self._next_tick = ts + 1_000_000_000
                self._expire_held(ts)
        try:
            events = self.tcp.segment(segment, ts)
        except Exception as exc:
            flow = self.tcp.flow_for(segment.src, segment.sport, segment.dst, segment.dport)
            self._internal_error(exc, flow, ts)
            return
        self._net_events(events)

    def counters(self, into: Counters | None = None) -> Counters:
        """Everything the stages count, as one snapshot (see counters.py): each stage says
        what it counts."""
        c = into if into is not None else Counters()
        stats = self.stats
        c.set("packets", stats.frames)
        for reason, count in stats.skipped.items():
            c.set("packets_skipped", count, reason)
        self.defrag.stats.add_counters(c)
        self.tcp.add_counters(c)
        self.tls.add_counters(c)
        for name, value in (
            ("internal_errors", stats.internal_errors),
            ("sip_messages", stats.sip_messages),
            ("sip_messages_unencrypted", stats.plain_sip_messages),
            ("raw_chunks", stats.raw_chunks),
            ("raw_bytes", stats.raw_bytes),
            ("plain_other_bytes", stats.plain_other_bytes),
        ):
            c.set(name, value)
        self.sip_budget.add_counters(c)
        stats.websocket.add_counters(c)
        return c

    def _rsa_done(self, ts: int) -> None:
        """Pre-master secrets decrypted off the packet path: their records can go on."""
        for conn in self.tls.rsa_done():
            self._guarded(conn.flow, self.tls.retry, conn, ts)
        # their sessions may be what resumed connections wait for
        for conn in self.tls.awaiting_sessions():
            self._guarded(conn.flow, self.tls.retry, conn, ts)

    def settle_rsa(self) -> None:
        """Wait for the RSA decryptions submitted so far and let their records go on."""
        while self.tls.wait_for_rsa():
            self._rsa_done(self._last_ts)

    def finish(self) -> None:
        """End of input: flush held-back bytes, close every flow, deliver what is complete."""
        self.settle_rsa()
        self._net_events(self.tcp.flush(self._last_ts))
        self.settle_rsa()
        for conn in self.tls.waiting():
            self._guarded(conn.flow, self.tls.give_up, conn, self._last_ts)

    def expire(self, now_ns: int) -> None:
        """Time passes without packets (live capture): idle flows and held records expire."""
        if self._rsa_completed:
            self._rsa_done(now_ns)
        self._net_events(self.tcp.expire(now_ns))
        self._expire_held(now_ns)

    def keys_added(self, ts_ns: int | None = None) -> None:
        """Secrets were added to the key store: decrypt what was waiting for them."""
        if not self.tls.keys_pending():
            return
        ts = self._last_ts if ts_ns is None else ts_ns
        for conn in self.tls.waiting():
            self._guarded(conn.flow, self.tls.retry, conn, ts)

    def advance(self, ts: int) -> int:
        """A TCP segment at ``ts`` that another worker takes: time passes here as it would in
        one process reading everything (idle flows time out at the same packet).  Returns
        when this next matters: calling again sooner changes nothing."""
        if ts > self._last_ts:
            self._last_ts = ts
            if ts >= self._next_tick:
                self._next_tick = ts + 1_000_000_000
                self._expire_held(ts)
        self._net_events(self.tcp.tick(ts))
        return min(self._next_tick, self.tcp.next_sweep)

    def share_sessions(self, announce: Callable[[bytes, bytes, bytes], None]) -> None:
        """Worker processes: tell ``announce`` of every session this pipeline caches, and
        hold the records of resumed sessions it does not know (another worker may)."""
        self.tls.sessions.on_store = announce
        self.tls.context.sessions_shared = True

    def session_shared(self, master: bytes, session_id: bytes, ticket: bytes) -> None:
        """A session another worker cached: connections waiting for it go on."""
        self.tls.sessions.store(master, session_id, ticket, announce=False)
        for conn in self.tls.waiting():
            self._guarded(conn.flow, self.tls.retry, conn, self._last_ts)

    def settle_sessions(self, progress_ns: int) -> None:
        """Every worker has read every packet before ``progress_ns``: records held since
        before it for a session no worker had will get none."""
        if self.tls.context.keys_may_arrive:
            return  # (held for keys: they wait --key-wait, sessions included)
        for conn in self.tls.waiting():
            held = conn.held
            if held is not None and held.since < progress_ns and not conn.keys_coming:
                self._guarded(conn.flow, self.tls.settle, conn, self._last_ts)

    def oldest_held_ts(self) -> int | None:
        """The capture time of the oldest record held for keys: a message may still come
        with that time (held records keep theirs).  None when nothing is held."""
        oldest = None
        for conn in self.tls.waiting():
            held = conn.held
            if held is not None and (oldest is None or held.since < oldest):
                oldest = held.since
        return oldest

    def _expire_held(self, now_ns: int) -> None:
        for conn in self.tls.waiting():
            self._guarded(conn.flow, self.tls.expire, conn, now_ns)

    # -- the flow boundary ------------------------------------------------------------------

    def _net_events(self, events: list[NetEvent]) -> None:
        event: NetEvent | None = None
        try:
            for event in events:
                self._net_event(event)
        except (OutputError, BrokenPipeError):
            raise
        except Exception as exc:
            assert event is not None
            failed = event.flow
            self._internal_error(exc, failed, event.ts_ns)
            rest = events[next(i for i, e in enumerate(events) if e is event) + 1 :]
            self._net_events([e for e in rest if e.flow is not failed])

    def _guarded(self, flow: Flow, step: Callable[..., list[TlsEvent]], *args: object) -> None:
        try:
            self._tls_events(step(*args))
        except (OutputError, BrokenPipeError):
            raise
        except Exception as exc:
            self._internal_error(exc, flow, self._last_ts)

    def _internal_error(self, exc: Exception, flow: Flow | None, ts: int) -> None:
        """An exception no input should cause: count it, say so, forget the flow."""
        self.stats.internal_errors += 1
        log.debug("internal error", exc_info=exc)
        where = flow.describe() if flow is not None else "a packet"
        if flow is not None:
            self.tcp.discard(flow)
            self.tls.discard(flow)
            for direction in (0, 1):
                framer = self._framers.pop((flow, direction), None)
                if framer is not None:
                    framer.flush()  # (gives back what it held to the shared budget)
            self._websockets.pop(flow, None)
        if self.on_problem is not None:
            self.on_problem(
                TlsProblem(
                    flow,
                    Notice.INTERNAL_ERROR.value,
                    f"internal error on {where}: {type(exc).__name__}: {exc}; that flow was "
                    "dropped and every other flow goes on (please report this with the capture)",
                    ts,
                    where,
                )
            )

    # -- stage to stage ---------------------------------------------------------------------

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
        self._emit(
            Message(
                ts,
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
        )

    def _tls_events(self, events: list[TlsEvent]) -> None:
        framers = self._framers
        for event in events:
            if type(event) is AppData:
                if self._websockets and event.flow in self._websockets:
                    self._websocket(event)
                    continue
                key = (event.flow, event.direction)
                framer = framers.get(key)
                data = event.data
                if framer is None:
                    # a direction between messages keeps no SIP state (idle sessions cost
                    # nothing): a spare framer frames what arrives, and stays with the
                    # direction only when it has to hold something
                    if data[0] in WEBSOCKET_START and self._websocket(event):
                        continue
                    framer = self._spare_framer
                    units = framer.feed(data)
                    if framer.idle:
                        framer.started = False  # as a new one would be
                    else:
                        framers[key] = framer
                        self._spare_framer = SipFramer(self.sip_budget)
                else:
                    units = framer.feed(data)
                    if framer.idle:
                        del framers[key]
                if units:
                    self._deliver(
                        event.flow,
                        event.direction,
                        units,
                        event.ts_ns,
                        event.info,
                        event.from_client,
                    )
                continue
            if self._websockets and self._websocket(event):
                continue
            if type(event) is AppGap:
                framer = self._framers.get((event.flow, event.direction))
                if framer is not None:
                    self._deliver(
                        event.flow,
                        event.direction,
                        framer.gap(),
                        event.ts_ns,
                        event.info,
                        event.from_client,
                    )
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
                        self._deliver(
                            flow,
                            direction,
                            framer.flush(),
                            event.ts_ns,
                            event.info,
                            direction == event.client_direction,
                        )

    def _deliver(
        self,
        flow: Flow,
        direction: int,
        units: list[Unit],
        ts: int,
        info: TlsInfo,
        from_client: bool,
        websocket: bool = False,
    ) -> None:
        if not units:
            return
        plain = info is PLAINTEXT
        transport = TRANSPORTS[websocket, plain]
        version, suite = info.version, info.cipher_suite
        src, dst = flow.endpoint(direction), flow.endpoint(1 - direction)
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
            self._emit(
                Message(
                    ts,
                    src,
                    dst,
                    transport,
                    unit.data,
                    unit.call_id,
                    unit.is_sip,
                    from_client,
                    version,
                    suite,
                )
            )

    def _emit(self, message: Message) -> None:
        for sink in self.sinks:
            try:
                sink.emit(message)
            except (OutputError, BrokenPipeError):
                raise
            except Exception as exc:  # not the packet's fault: it concerns every flow
                raise OutputError(f"an output failed: {type(exc).__name__}: {exc}") from exc

    # -- SIP over WebSocket (RFC 7118) ------------------------------------------------------

    def _websocket(self, event: TlsEvent) -> bool:
        """Application bytes of a WebSocket connection (or of its HTTP upgrade) go to its
        session instead of SIP stream framing.  True when the event was taken care of."""
        kind = type(event)
        if kind is AppData:
            assert isinstance(event, AppData)
            flow, direction = event.flow, event.direction
            session = self._websockets.get(flow)
            if session is None:
                if (flow, direction) in self._framers:
                    return False  # a stream already being framed as SIP
                start = looks_like_start(event.data)
                if not start:
                    return False
                session = self._websockets[flow] = WebSocketSession(
                    self.stats.websocket, direction, start, event.data, sip_budget=self.sip_budget
                )
            client = direction if event.from_client else 1 - direction
            self._websocket_units(
                session, flow, session.feed(direction, event.data), event.ts_ns, event.info, client
            )
            return True
        if kind is AppGap:
            assert isinstance(event, AppGap)
            session = self._websockets.get(event.flow)
            if session is None:
                return False
            client = event.direction if event.from_client else 1 - event.direction
            self._websocket_units(
                session, event.flow, session.gap(event.direction), event.ts_ns, event.info, client
            )
            return True
        if kind is ConnectionDone and self._websockets:
            assert isinstance(event, ConnectionDone)
            session = self._websockets.pop(event.flow, None)
            if session is not None:
                self._websocket_units(
                    session,
                    event.flow,
                    session.close(),
                    event.ts_ns,
                    event.info,
                    event.client_direction,
                )
        return False  # (the rest of ConnectionDone is done by the caller)

    def _websocket_units(
        self,
        session: WebSocketSession,
        flow: Flow,
        units: list[tuple[int, Unit]],
        ts: int,
        info: TlsInfo,
        tls_client: int,
    ) -> None:
        websocket = session.websocket
        client = session.client_dir if websocket else tls_client  # WebSocket: the side masking
        for direction, unit in units:
            self._deliver(flow, direction, [unit], ts, info, direction == client, websocket)
        if session.problems and self.on_problem is not None:
            server = flow.describe(session.client_dir)
            for kind, detail in session.problems:
                self.on_problem(
                    TlsProblem(
                        flow,
                        kind,
                        f"WebSocket {server}: {detail}",
                        ts,
                        format_endpoint(flow.endpoint(1 - session.client_dir)),
                    )
                )
        session.problems.clear()
