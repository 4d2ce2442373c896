"""One worker process: the single-process pipeline on its share of the flows.

It runs the same stages and the same sinks as a run without workers; the outputs the parent
writes are recorded instead (:class:`~captagent_tls.workers.outputs.RecordingSink`), HEP is
sent from here.  What it tells the parent (see :mod:`.channel`):

* ``("ready", pid)``: a live worker's capture is open;
* ``("out", records, watermark, progress, waiting, read)``: output records; the earliest
  capture time it may still send a record for; the capture time up to which it has read every
  packet; whether records wait for a session another worker may have; and for a file, how
  far it has read (position in the file, frames, SIP messages so far), for the progress bar;
* ``("session", master, session_id, ticket)``: a TLS session it cached (for resumption: the
  resumed connection may be another worker's);
* ``("problem", problem)``: a problem to report (each kind and server once per worker; the
  parent de-duplicates across workers);
* ``("secret", secret)``: a session's secrets, for ``--export-keylog`` and
  ``--write-decryptable``;
* ``("counters", counters, sink_states)``: a snapshot, once a second when live;
* ``("done", counters, sink_states, notes)``: it finished (``notes``: what it has to say about
  the capture file);
* ``("fatal", text)``: it cannot go on (one line for the user).

The parent sends ``("keys", text)``: key-log lines that came over the network;
``("session", master, session_id, ticket)``: a session another worker cached; and
``("progress", ts)`` to a worker with records waiting for a session: every worker has read
every packet before ``ts``, so a session resumed before it that no worker had will not come.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO, cast

from captagent_tls.assembly.keys import load_rsa_key_files
from captagent_tls.assembly.outputs import finish, hep_sink
from captagent_tls.assembly.pipeline import build_pipeline, pipeline_options, snapshot
from captagent_tls.assembly.process import drop_privileges
from captagent_tls.capture import CaptureError, Frame
from captagent_tls.capture.live import KernelStats, LiveCapture
from captagent_tls.config.settings import Settings
from captagent_tls.counters import Counters
from captagent_tls.errors import UserFacingError, one_line
from captagent_tls.message import Message
from captagent_tls.pipeline import Pipeline
from captagent_tls.sinks import Sink
from captagent_tls.tls.events import SessionSecret, TlsProblem
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.views.setup import console_wanted
from captagent_tls.workers import usable_cores
from captagent_tls.workers.channel import Channel, ChannelClosed
from captagent_tls.workers.fanout import join_fanout
from captagent_tls.workers.outputs import CONSOLE, JSON, PCAP, RecordingSink
from captagent_tls.workers.shard import FileSharder
from captagent_tls.workers.totals import sink_states

log = logging.getLogger("captagent_tls")

SEND_EVERY_FRAMES = 1024  # a file's worker sends its records after reading this many frames
COUNTERS_INTERVAL_NS = 1_000_000_000  # a live worker sends a counters snapshot this often
# A live worker that has read everything the kernel held says it may still send messages from
# this long before now: a packet the kernel stamped just before may not be readable yet.
LIVE_SLACK_NS = 100_000_000
SEND_INTERVAL_NS = 50_000_000  # a live worker sends its records (and watermark) this often...
SEND_RECORDS = 512  # ...or when this many wait
PROBLEMS_REMEMBERED = 10_000  # (kind, server) pairs each worker has already forwarded
MEDIA_WAIT_S = 10.0  # at the end: the longest a worker waits for the others' SIP


@dataclass
class WorkerSpec:
    index: int
    workers: int
    settings: Settings
    source: str  # the capture file, or the interface
    live: bool
    colour: bool  # the console view is coloured (decided by the parent, which owns stdout)
    forward_secrets: bool  # the parent writes session secrets (export, decryptable capture)
    keys_may_arrive: bool
    fanout_group: int = 0


class ProblemForwarder:
    """The pipeline's problem callback: each (kind, server) once to the parent, which prints
    it once for all workers."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def report(self, problem: TlsProblem) -> None:
        key = (problem.kind, problem.server)
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        self._seen[key] = None
        if len(self._seen) > PROBLEMS_REMEMBERED:
            self._seen.popitem(last=False)
        self.channel.send(("problem", problem._replace(flow=None)))


class ParentKeys:
    """What the parent sends (key-log lines from its listeners, sessions, progress), as one
    more key source of the live loop.  When the parent is gone, the worker stops."""

    def __init__(
        self, channel: Channel, keys: KeyStore, stop: Callable[[], None], pipeline: Pipeline
    ):
        self.channel = channel
        self.keys = keys
        self.stop = stop
        self.pipeline = pipeline

    def sockets(self) -> list[Any]:
        return [self.channel]

    def handle(self, ready: set[int]) -> int:
        if self.channel.read_fd not in ready:
            return 0
        try:
            messages = self.channel.receive()
        except ChannelClosed:
            log.warning("the parent process is gone: stopping")
            self.stop()
            return 0
        added = 0
        for message in messages:
            added += from_parent(message, self.keys, self.pipeline)
        return added

    def close(self) -> None:
        pass


class WatchedCapture(LiveCapture):
    """The live capture, keeping the last frame's time (and the frames, for the decryptable
    capture)."""

    recording: RecordingSink | None = None
    last_ts = 0

    def read(self, max_packets: int = 4096) -> Iterator[Frame]:
        record = self.recording.frame if self.recording is not None else None
        frame = None
        for frame in super().read(max_packets):
            if record is not None:
                record(frame)
            yield frame
        if frame is not None:
            self.last_ts = frame.ts_ns


def from_parent(message: tuple[Any, ...], keys: KeyStore, pipeline: Pipeline) -> int:
    """Act on a message from the parent; the number of key-log secrets it added."""
    kind = message[0]
    if kind == "keys":
        return load_key_log(message[1], keys).added
    if kind == "session":
        pipeline.session_shared(*message[1:])
    elif kind == "progress":
        pipeline.settle_sessions(message[1])
    elif kind == "sip":
        pipeline.media_shared(message[1])
    elif kind == "media_settled":
        pipeline.settle_media(message[1])
    return 0


def build_outputs(spec: WorkerSpec) -> tuple[list[Sink], RecordingSink]:
    """The worker's outputs: HEP, and the recording of those the parent writes (the same
    choice of outputs as ``assembly.outputs.build_sinks``)."""
    args = spec.settings
    sinks: list[Sink] = []
    if args.hep:
        sinks.append(hep_sink(args, spec.live, warn=spec.index == 0))
    recording = RecordingSink()
    if args.write:
        from captagent_tls.sinks.pcapfile import PcapFileSink

        recording.add(PCAP, lambda tap: PcapFileSink(cast(BinaryIO, tap)), binary=True)
    recording.report = bool(args.report)
    if args.json:
        from captagent_tls.sinks.jsonl import JsonLinesSink

        recording.add(JSON, lambda tap: JsonLinesSink(cast(TextIO, tap)))
    if console_wanted(args):
        recording.add(CONSOLE, lambda tap: console_sink(cast(TextIO, tap), spec))
    recording.frames = bool(args.write_decryptable)
    recording.media_pcap = bool(args.media and args.media_pcap)
    recording.ready()
    if recording.records_messages:
        sinks.append(recording)
    return sinks, recording


def console_sink(out: TextIO, spec: WorkerSpec) -> Sink:
    if not (spec.colour or spec.settings.brief):
        from captagent_tls.sinks.console import ConsoleSink

        return ConsoleSink(out)
    from captagent_tls.views.console import console_view

    return console_view(out, False, spec.colour, spec.settings.brief)


class Worker:
    def __init__(self, spec: WorkerSpec, keys: KeyStore, channel: Channel):
        self.spec = spec
        self.keys = keys
        self.channel = channel
        self.sinks, self.recording = build_outputs(spec)
        self.problems = ProblemForwarder(channel)
        options = pipeline_options(spec.settings, spec.keys_may_arrive, live=spec.live)
        # RSA off the packet path uses the cores the capture loop does not; with workers, the
        # cores are theirs: threads only for the cores left over per worker
        options.rsa_threads = max(0, usable_cores() // spec.workers - 1)
        self.pipeline = build_pipeline(
            keys,
            self.sinks,
            self.problems.report,
            options,
            on_secret=self._secret if spec.forward_secrets else None,
        )
        self.pipeline.share_sessions(self._announce_session)
        self.pipeline.share_media(self._announce_sip)
        self.foreign_fragments = 0  # fragments fed here that another worker counts
        self.kernel: KernelStats | None = None
        self.stopping = False
        self._last_sent = (-1.0, -1.0, -1.0)
        self.media_settled = float("-inf")  # every worker's SIP before this is out
        # a file's worker: (position in the file, frames read, SIP messages) for the bar
        self.read: Callable[[], tuple[int, int, int]] | None = None
        self.progress = 0.0  # every worker has read every packet before this (the parent says)
        self._next_counters = 0

    def _announce_session(self, master: bytes, session_id: bytes, ticket: bytes) -> None:
        self.channel.send(("session", master, session_id, ticket))

    def _announce_sip(self, message: Message) -> None:
        self.channel.send(("sip", message))

    def waiting_for_sessions(self) -> bool:
        return bool(self.pipeline.tls.waiting_connections) and not self.spec.keys_may_arrive

    def _secret(self, secret: SessionSecret) -> None:
        self.channel.send(("secret", secret._replace(flow=cast(Any, None))))  # (no Flow)

    def snapshot(self) -> Counters:
        counters = snapshot(self.pipeline, self.sinks, self.kernel)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counters.set("worker_cpu_seconds", round(usage.ru_utime + usage.ru_stime, 3), "self")
        if self.foreign_fragments:
            counters.set("packets", counters["packets"] - self.foreign_fragments)
        return counters

    def send_records(self, watermark: float, progress: float, force: bool = False) -> None:
        """``watermark``: the earliest capture time a SIP message may still come out with;
        the records' own watermark is earlier still when media waits for its call."""
        records = self.recording.take()
        waiting = self.waiting_for_sessions()
        media = self.pipeline.oldest_output_ts()
        outputs = watermark if media is None else min(watermark, media)
        if records or force or waiting or (outputs, progress, watermark) != self._last_sent:
            self._last_sent = (outputs, progress, watermark)
            read = self.read() if self.read is not None else None
            self.channel.send(("out", records, outputs, progress, waiting, read, watermark))

    def from_parent(self) -> None:
        """Take what the parent sent (a file's worker looks between batches of frames)."""
        for message in self.channel.receive():
            self._note(message)
            from_parent(message, self.keys, self.pipeline)

    def _note(self, message: tuple[Any, ...]) -> None:
        if message[0] == "progress":
            self.progress = message[1]
        elif message[0] == "media_settled":
            self.media_settled = message[1]

    def wait_for_sessions(self) -> None:
        """At the end of a file: records wait for sessions other workers may still cache;
        take what the parent sends until every worker has read everything."""
        import select

        while self.waiting_for_sessions() and self.progress != float("inf"):
            self.send_records(self._watermark(float("inf")), float("inf"))
            select.select([self.channel], [], [])
            for message in self.channel.receive():
                self._note(message)
                from_parent(message, self.keys, self.pipeline)

    def _watermark(self, last_ts: float) -> float:
        held = self.pipeline.oldest_held_ts()
        return last_ts if held is None else min(last_ts, held)

    def finish(self) -> None:
        """Deliver what is complete and close the outputs, as a run in one process does;
        media waits for every worker's SIP first."""
        finish(self._finish_pipeline, self.sinks)

    def _finish_pipeline(self) -> None:
        self.pipeline.finish_streams()
        self.wait_for_media()
        self.pipeline.finish_datagrams()

    def wait_for_media(self) -> None:
        """Every SIP message of this worker is out: say so, and take what the parent sends
        until every worker's is (media here may wait for another's SDP)."""
        import select

        if self.pipeline.sip_settled:
            return  # (media is off)
        deadline = time.monotonic() + MEDIA_WAIT_S
        self.send_records(float("inf"), float("inf"), force=True)
        while self.media_settled != float("inf") and time.monotonic() < deadline:
            ready, _, _ = select.select([self.channel], [], [], 0.5)
            if not ready:
                continue
            try:
                messages = self.channel.receive()
            except ChannelClosed:
                return
            for message in messages:
                self._note(message)
                from_parent(message, self.keys, self.pipeline)

    def done(self, notes: dict[str, Any]) -> None:
        self.send_records(float("inf"), float("inf"), force=True)
        self.channel.send(("done", self.snapshot(), sink_states(self.sinks), notes))

    # -- a capture file ----------------------------------------------------------------------

    def run_file(self) -> None:
        from captagent_tls.capture.bpf import FrameFilter
        from captagent_tls.capture.files import CaptureReader

        spec, pipeline, args = self.spec, self.pipeline, self.spec.settings
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent tells us (SIGTERM)
        signal.signal(signal.SIGTERM, self._stop)
        sharder = FileSharder(spec.workers, spec.index)
        pipeline.owns = sharder.owns
        matches = FrameFilter(args.filter).matches if args.filter else None

        def secrets_in_stream(text: bytes) -> None:
            if load_key_log(text.decode("utf-8", "replace"), self.keys).added:
                pipeline.keys_added()

        reader = CaptureReader(spec.source, on_secrets=secrets_in_stream)
        feed, index, workers = pipeline.frame, spec.index, spec.workers
        deal = sharder.dealer()
        mine_without_connection = workers + index
        record = self.recording.frame if self.recording.frames else None
        notes: dict[str, Any] = {}
        last_ts = last_tcp_ts = due = 0
        frames = data_bytes = 0
        framing = 16  # a pcap record's header (a pcapng block's framing is 32 and padding)

        def read() -> tuple[int, int, int]:
            stored = reader.stored_position
            if stored is None:
                stored = 24 + data_bytes + frames * (framing if reader.format == "pcap" else 34)
            return stored, frames, pipeline.stats.sip_messages

        self.read = read
        advance = pipeline.advance
        try:
            with reader:
                count = 0
                for frame in reader:
                    if matches is not None and not matches(frame):
                        continue
                    owner = deal(frame.linktype, frame.data)
                    last_ts = frame.ts_ns
                    frames += 1
                    data_bytes += len(frame.data)
                    if owner == index or owner == mine_without_connection:  # noqa: SIM109
                        if record is not None:
                            record(frame)
                        feed(frame)
                    elif 0 <= owner < workers:  # another worker's connection: time passes
                        last_tcp_ts = last_ts
                        if last_ts >= due:
                            due = advance(last_ts)
                    elif owner < -1:  # an IP fragment: every worker reassembles it
                        if -2 - owner == index:
                            if record is not None:
                                record(frame)
                        else:
                            self.foreign_fragments += 1
                        feed(frame)
                    count += 1
                    if count == SEND_EVERY_FRAMES:
                        count = 0
                        self.send_records(self._watermark(last_ts), last_ts)
                        self.from_parent()
                        if self.stopping:
                            break
        except CaptureError as exc:
            notes["error"] = (str(exc), bool(reader.format))
        finally:
            advance(last_tcp_ts)
            if not self.stopping:
                self.wait_for_sessions()
            self.finish()
        if reader.malformed:
            notes["malformed"] = reader.describe_malformed()
        if reader.truncated:
            notes["truncated_at"] = reader.truncated_at
        self.done(notes)

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    # -- live ------------------------------------------------------------------------------

    def run_live(self) -> None:
        from captagent_tls.agent import Agent
        from captagent_tls.keysources import KeyLogFile

        spec, args, keys = self.spec, self.spec.settings, self.keys
        # every handle the capture opens (again, after its interface was lost) joins the group
        capture = WatchedCapture(
            spec.source,
            args.filter,
            args.promisc,
            args.snaplen,
            args.buffer_size,
            on_open=lambda fd: join_fanout(fd, spec.fanout_group),
        )
        capture.name = f"{spec.source} (worker {spec.index})"
        if self.recording.frames:
            capture.recording = self.recording
        if args.user:
            drop_privileges(args.user)
        key_files = [KeyLogFile(path, keys) for path in args.keylog]
        for source in key_files:
            source.poll()
        agent: Agent | None = None

        def stop() -> None:
            if agent is not None:
                agent.stop()

        next_send = 0

        def turn(now: int) -> None:
            nonlocal next_send
            assert agent is not None
            # a message to the parent costs a system call here and a wake-up there: at most
            # one per SEND_INTERVAL_NS, sooner when records pile up
            if now >= next_send or len(self.recording.records) >= SEND_RECORDS:
                next_send = now + SEND_INTERVAL_NS
                progress = now - LIVE_SLACK_NS if agent.drained else capture.last_ts
                self.send_records(progress, progress)
            if now >= self._next_counters:
                self._next_counters = now + COUNTERS_INTERVAL_NS
                self.kernel = agent.kernel
                self.channel.send(("counters", self.snapshot(), sink_states(self.sinks)))

        agent = Agent(
            capture,
            self.pipeline,
            key_files,
            [ParentKeys(self.channel, keys, stop, self.pipeline)],
            reload_keys=lambda: load_rsa_key_files(args, keys, live=True),
            stats_interval_s=86_400,
            report_stats=None,
            on_turn=turn,
        )
        self.channel.send(("ready", os.getpid()))
        try:
            agent.run()
        finally:
            self.kernel = agent.kernel
            self.finish()
        self.done({})


def run_worker(spec: WorkerSpec, keys: KeyStore, channel: Channel) -> int:
    """A worker's life; its exit status."""
    try:
        worker = Worker(spec, keys, channel)
        if spec.live:
            worker.run_live()
        else:
            worker.run_file()
        return 0
    except (ChannelClosed, BrokenPipeError):
        return 1  # the parent is gone: nobody to tell
    except UserFacingError as exc:
        with contextlib.suppress(ChannelClosed, BrokenPipeError):
            channel.send(("fatal", one_line(str(exc))))
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent reports it; the traceback with -vv
        log.debug("worker %d failed", spec.index, exc_info=exc)
        with contextlib.suppress(ChannelClosed, BrokenPipeError):
            channel.send(("fatal", one_line(f"worker {spec.index}: {type(exc).__name__}: {exc}")))
        return 1


def fork_worker(
    spec: WorkerSpec, keys: KeyStore, fds: tuple[int, int], close_in_child: list[int]
) -> int:
    """Start a worker as a fork of this process (which has started no thread): it inherits
    the loaded keys.  Returns its process id."""
    for stream in (logging.root.handlers,):
        for handler in stream:
            handler.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in close_in_child:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = run_worker(spec, keys, Channel(fds[0], fds[1], blocking_writes=True))
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(code)
