"""Wire the stages together: frames -> TCP -> TLS -> application stages -> sinks.

The same pipeline serves capture files and live capture; only the frame source differs.  The
application stages (SIP framing, WebSocket, ...) are registered (:mod:`captagent_tls.registry`)
and reached through one interface (:mod:`captagent_tls.stage`): the pipeline chooses once per
flow direction who takes its bytes, and has no branch of its own for any of them.

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
from captagent_tls.media.reports import MediaEvent
from captagent_tls.message import Message
from captagent_tls.net.addresses import format_endpoint
from captagent_tls.net.ip import Defragmenter
from captagent_tls.net.packet import Datagram, Fragment, Segment, Skip, decode
from captagent_tls.net.tcp import Event as NetEvent
from captagent_tls.net.tcp import Flow, FlowClosed, StreamData, StreamGap, TcpReassembler
from captagent_tls.registry import datagram_stages, stream_stages
from captagent_tls.sinks import OutputError, Sink
from captagent_tls.sip.framing import MAX_HELD_BYTES, MAX_MESSAGE_BYTES, SipBudget
from captagent_tls.stage import DatagramStage, Outputs, StreamConsumer, StreamStage, Units
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
    media: bool = True  # the media stage: RTP, RTCP and SRTCP of the calls' SDP
    decrypt_rtp: bool = False  # --media-pcap: RTP payloads decrypted for that file only


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
        self.sip_budget = SipBudget(options.max_sip_held_bytes, options.max_sip_message_bytes)
        # the application stages, in the order they are asked (captagent_tls.registry)
        self.stream_stages: list[StreamStage] = stream_stages(self.sip_budget)
        self.datagram_stages: list[DatagramStage] = datagram_stages(
            keys, options.media, options.decrypt_rtp
        )
        # stages shown every SIP message emitted (the media stage reads the SDP)
        self._observers = [stage for stage in self.datagram_stages if stage.observes]
        self._settle_next = 0  # capture time at which held media is looked at again
        # False with worker processes: another worker may frame SIP that a datagram here
        # waits for (the parent says how far it has all come: settle_media)
        self.sip_settled = True
        self.sip_watermark: float = float("inf")
        self._announce_sip: Callable[[Message], None] | None = None
        # who takes each flow direction's bytes now (a direction between messages has none)
        self._consumers: dict[tuple[Flow, int], StreamConsumer] = {}
        # consumers a connection-wide one took over from: closed when the connection ends
        self._retired: dict[Flow, list[tuple[int, StreamConsumer]]] = {}
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
                if self._observers:
                    self._settle(ts)
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
        for stage in self.stream_stages:
            stage.add_counters(c)
        for datagram_stage in self.datagram_stages:
            datagram_stage.add_counters(c)
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
        """End of input: flush held-back bytes, close every flow, deliver what is complete;
        then the datagram stages decide what they hold (every SIP message is out)."""
        self.finish_streams()
        self.finish_datagrams()

    def finish_streams(self) -> None:
        """End of input for the TCP and TLS stages: every SIP message they hold goes out."""
        self.settle_rsa()
        self._net_events(self.tcp.flush(self._last_ts))
        self.settle_rsa()
        for conn in self.tls.waiting():
            self._guarded(conn.flow, self.tls.give_up, conn, self._last_ts)

    def finish_datagrams(self) -> None:
        """End of input for the datagram stages: what they hold is decided (with worker
        processes, once every worker's SIP is out: :meth:`settle_media` with infinity)."""
        for observer in self._observers:
            self._outputs(observer.finish(self._last_ts))

    def expire(self, now_ns: int) -> None:
        """Time passes without packets (live capture): idle flows and held records expire,
        and so do calls' media."""
        if self._rsa_completed:
            self._rsa_done(now_ns)
        self._net_events(self.tcp.expire(now_ns))
        self._expire_held(now_ns)
        for observer in self._observers:
            self._outputs(observer.expire(now_ns))
        if self._observers:
            self._settle(now_ns)

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

    def share_media(self, announce: Callable[[Message], None]) -> None:
        """Worker processes: the SIP messages media may need (its SDP, its BYE) go to
        ``announce`` for the other workers, and what waits for SIP waits for the parent's
        word (:meth:`settle_media`): another worker may frame it."""
        if self._observers:
            self._announce_sip = announce
            self.sip_settled = False
            self.sip_watermark = float("-inf")

    def media_shared(self, message: Message) -> None:
        """A SIP message another worker framed, for the media stage."""
        for observer in self._observers:
            outputs = observer.observe(message)
            if outputs:
                self._outputs(outputs)

    def settle_media(self, watermark_ns: float) -> None:
        """Every worker has emitted every SIP message captured before ``watermark_ns``."""
        if watermark_ns > self.sip_watermark:
            self.sip_watermark = watermark_ns
            if self._observers:
                self._settle(self._last_ts if watermark_ns == float("inf") else int(watermark_ns))

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

    def oldest_output_ts(self) -> int | None:
        """The earliest capture time an output may still come with: records held for keys,
        and media held for its call."""
        oldest = self.oldest_held_ts()
        for observer in self._observers:
            waiting = observer.oldest_waiting_ts()
            if waiting is not None and (oldest is None or waiting < oldest):
                oldest = waiting
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
            for _, consumer in self._flow_consumers(flow):
                consumer.discard()  # (gives back what it held to the shared bounds)
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
        if ts >= self._settle_next and self._observers:
            self._settle_next = ts + 1_000_000_000
            self._settle(ts)
        # (records held for keys may still hold SIP captured before this datagram)
        settled = not self.tls.waiting_connections and self.sip_settled
        for stage in self.datagram_stages:
            outputs = stage.datagram(datagram, ts, settled)
            if outputs is not None:
                if outputs:
                    self._outputs(outputs)
                return
        skipped = self.stats.skipped
        skipped["UDP, not SIP"] = skipped.get("UDP, not SIP", 0) + 1

    def _outputs(self, outputs: Outputs) -> None:
        """What a datagram stage hands out: SIP messages (over UDP), and the media stage's
        RTCP reports and media summaries."""
        stats = self.stats
        for output in outputs:
            if isinstance(output, Message):
                stats.sip_messages += 1
                stats.plain_sip_messages += 1
                self._emit(output)
            else:
                self._emit_media(output)

    def _settle(self, now_ns: int) -> None:
        """Media held for a call that is not known yet is decided once every SIP message
        captured before it has been emitted: all but those in records still held for keys
        (and, with worker processes, all but those the other workers may still frame)."""
        if self.sip_watermark < now_ns:
            if self.sip_watermark == float("-inf"):
                return  # (no word from the parent yet)
            now_ns = int(self.sip_watermark)
        held = self.oldest_held_ts()
        watermark = now_ns if held is None else min(now_ns, held)
        for observer in self._observers:
            self._outputs(observer.settle(watermark))

    def _tls_events(self, events: list[TlsEvent]) -> None:
        consumers = self._consumers
        for event in events:
            if type(event) is AppData:
                key = (event.flow, event.direction)
                consumer = consumers.get(key)
                if consumer is None:
                    self._start(event)
                    continue
                units = consumer.data(event)
                if consumer.idle:
                    del consumers[key]
                if units or consumer.problems:
                    tls_client = event.direction if event.from_client else 1 - event.direction
                    self._hand_out(consumer, event.flow, units, event.ts_ns, event.info, tls_client)
            elif type(event) is AppGap:
                consumer = consumers.get((event.flow, event.direction))
                if consumer is not None:
                    tls_client = event.direction if event.from_client else 1 - event.direction
                    units = consumer.gap(event)
                    self._hand_out(consumer, event.flow, units, event.ts_ns, event.info, tls_client)
            elif type(event) is TlsProblem:
                if self.on_problem is not None:
                    self.on_problem(event)
            elif type(event) is SessionSecret and self.on_secret is not None:
                self.on_secret(event)
            elif type(event) is ConnectionDone:
                for direction, consumer in self._flow_consumers(event.flow):
                    units = consumer.close(direction, event)
                    self._hand_out(
                        consumer, event.flow, units, event.ts_ns, event.info, event.client_direction
                    )

    def _start(self, event: AppData) -> None:
        """A direction without a consumer has bytes: the first stage that takes them."""
        for stage in self.stream_stages:
            started = stage.start(event)
            if started is not None:
                break
        else:  # (the last stage, SIP framing, takes anything)
            return
        units, consumer = started
        tls_client = event.direction if event.from_client else 1 - event.direction
        if consumer is None:
            if units:
                self._deliver(event.flow, units, event.ts_ns, event.info, tls_client)
            return
        flow, consumers = event.flow, self._consumers
        if stage.both_directions:
            for direction in (0, 1):
                earlier = consumers.get((flow, direction))
                if earlier is not None:  # (SIP framing held part of a message there)
                    self._retired.setdefault(flow, []).append((direction, earlier))
                consumers[flow, direction] = consumer
        else:
            consumers[flow, event.direction] = consumer
        self._hand_out(consumer, flow, units, event.ts_ns, event.info, tls_client)

    def _flow_consumers(self, flow: Flow) -> list[tuple[int, StreamConsumer]]:
        """A flow's consumers, taken away: the connection-wide one first, then each
        direction's in order (with those a connection-wide one took over from)."""
        consumers = self._consumers
        found: list[tuple[int, StreamConsumer]] = []
        for direction in (0, 1):
            consumer = consumers.pop((flow, direction), None)
            if consumer is not None and all(consumer is not c for _, c in found):
                found.append((direction, consumer))
        if self._retired:
            found.extend(sorted(self._retired.pop(flow, ()), key=lambda item: item[0]))
        return found

    def _hand_out(
        self,
        consumer: StreamConsumer,
        flow: Flow,
        units: Units,
        ts: int,
        info: TlsInfo,
        tls_client: int,
    ) -> None:
        """A consumer's units become messages; its problems are reported."""
        if units:
            client = consumer.client_direction(tls_client)
            self._deliver(flow, units, ts, info, client, consumer.websocket)
        problems = consumer.problems
        if problems:
            if self.on_problem is not None:
                client = consumer.problem_client(tls_client)
                server = flow.describe(client)
                for kind, detail in problems:
                    self.on_problem(
                        TlsProblem(
                            flow,
                            kind,
                            f"{consumer.label} {server}: {detail}",
                            ts,
                            format_endpoint(flow.endpoint(1 - client)),
                        )
                    )
            problems.clear()

    def _deliver(
        self,
        flow: Flow,
        units: Units,
        ts: int,
        info: TlsInfo,
        client: int,
        websocket: bool = False,
    ) -> None:
        """Units become messages (``client``: the client's direction)."""
        plain = info is PLAINTEXT
        transport = TRANSPORTS[websocket, plain]
        version, suite = info.version, info.cipher_suite
        stats = self.stats
        for direction, unit in units:
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
                    flow.endpoint(direction),
                    flow.endpoint(1 - direction),
                    transport,
                    unit.data,
                    unit.call_id,
                    unit.is_sip,
                    direction == client,
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
        if self._observers and message.is_sip:
            for observer in self._observers:
                outputs = observer.observe(message)
                if outputs:
                    self._outputs(outputs)
            if self._announce_sip is not None and any(
                observer.shares(message) for observer in self._observers
            ):
                self._announce_sip(message)

    def _emit_media(self, event: MediaEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit_media(event)
            except (OutputError, BrokenPipeError):
                raise
            except Exception as exc:
                raise OutputError(f"an output failed: {type(exc).__name__}: {exc}") from exc
