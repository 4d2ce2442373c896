"""The parent process: starts the workers, merges their outputs, forwards keys, adds up the
counters, and watches over the workers.

A worker that dies is never silent.  Reading a file, the run then fails with a line that
says which worker ended how (its share of the flows is missing).  Capturing live, it is
reported and started again (after a pause that doubles while it keeps dying young, up to a
minute); meanwhile the kernel spreads its flows over the other workers' sockets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from captagent_tls.config.settings import Settings
from captagent_tls.counters import Counters
from captagent_tls.report import ProblemReporter
from captagent_tls.tls.keys import KeyStore
from captagent_tls.workers.channel import Channel, ChannelClosed, channel_pair
from captagent_tls.workers.fanout import group_id
from captagent_tls.workers.outputs import Merger, Writers
from captagent_tls.workers.totals import WorkersHep, combine, only_counters
from captagent_tls.workers.worker import LIVE_SLACK_NS, WorkerSpec, fork_worker

log = logging.getLogger("captagent_tls")

MAX_PENDING_RECORDS = 50_000  # records of a worker held for the merge before it must wait
STOP_TIMEOUT_S = 60.0  # workers still running this long after SIGTERM are killed
READY_TIMEOUT_S = 60.0  # live workers that have not opened their capture by then: an error
RESTART_PAUSE_S = (1.0, 60.0)  # first and longest pause before a dead worker starts again
YOUNG_S = 10.0  # a worker that dies younger than this makes the next pause longer
REPLAY_KEY_TEXT = 16 << 20  # key-log text kept for workers started again (the latest)


@dataclass
class Slot:
    """One worker's place: the process in it now, and what it said last."""

    index: int
    pid: int = 0
    channel: Channel | None = None
    process: subprocess.Popen[bytes] | None = None  # a worker started again (not forked)
    started: float = 0.0
    ready: bool = False
    done: bool = False
    counters: Counters = field(default_factory=Counters)
    sink_states: list[Any] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    restart_at: float | None = None  # when it is to start again (live)
    pause: float = 0.0
    progress: float = 0.0  # it has read every packet before this capture time
    read: tuple[int, int, int] = (0, 0, 0)  # file position, frames, SIP messages (a file)
    waiting: bool = False  # records wait for a session another worker may have
    told: float = 0.0  # the progress it was last told
    # every SIP message it will emit has a later capture time (-inf: it has not said yet)
    sip_watermark: float = float("-inf")


def describe_status(status: int | None) -> str:
    if status is None:
        return "is still running"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Parent:
    def __init__(
        self,
        settings: Settings,
        source: str,
        workers: int,
        live: bool,
        keys: KeyStore,
        writers: Writers,
        reporter: ProblemReporter,
        on_secret: Callable[[Any], None] | None,
        keys_may_arrive: bool,
    ):
        self.settings = settings
        self.workers = workers
        self.live = live
        self.keys = keys
        self.reporter = reporter
        self.on_secret = on_secret
        self.merger = Merger(writers, workers)
        self.slots = [Slot(i) for i in range(workers)]
        self.retired = Counters()  # what workers that are gone counted
        self.restarts = 0
        self.started_all = not live  # live: every worker has opened its capture once
        self.failure: str | None = None
        self.stopping = False
        self.listener_stats: Callable[[], Any] | None = None
        self.bar: Any = None  # a file's progress bar (views.progress.WorkersFileProgress)
        self.media_settled = float("-inf")  # what the workers were last told
        self.key_text: deque[str] = deque()
        self.key_text_size = 0
        from captagent_tls.views.colour import colour_wanted

        self.spec = WorkerSpec(
            index=0,
            workers=workers,
            settings=settings,
            source=source,
            live=live,
            colour=colour_wanted(settings.color, sys.stdout),
            forward_secrets=on_secret is not None,
            keys_may_arrive=keys_may_arrive,
            fanout_group=group_id(os.getpid()),
        )

    # -- starting ----------------------------------------------------------------------------

    def fork_all(self, close_in_child: Sequence[int] = ()) -> None:
        """Fork every worker (nothing may have started a thread yet); ``close_in_child``:
        descriptors of the parent's own (key-log listeners)."""
        sys.stdout.flush()
        sys.stderr.flush()
        pairs = [channel_pair() for _ in self.slots]
        parent_fds = [fd for channel, _ in pairs for fd in (channel.read_fd, channel.write_fd)]
        for slot, (channel, child_fds) in zip(self.slots, pairs, strict=True):
            others = [fd for _, fds in pairs if fds is not child_fds for fd in fds]
            spec = self._spec(slot.index)
            slot.pid = fork_worker(
                spec, self.keys, child_fds, [*parent_fds, *others, *close_in_child]
            )
            slot.channel, slot.started = channel, time.monotonic()
            slot.ready = not self.live  # a live worker says when its capture is open
        for _, (read_fd, write_fd) in pairs:
            os.close(read_fd)
            os.close(write_fd)

    def _spec(self, index: int) -> WorkerSpec:
        spec = WorkerSpec(**vars(self.spec))
        spec.index = index
        return spec

    def spawn(self, slot: Slot) -> None:
        """Start a worker again as a fresh interpreter (this process may run threads now, so
        no fork): it loads the keys from the command line's files, and is sent the key-log
        lines received so far."""
        channel, child_fds = channel_pair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "captagent_tls.workers"],
                stdin=subprocess.PIPE,
                pass_fds=child_fds,
                close_fds=True,
            )
        except OSError as exc:
            channel.close()
            for fd in child_fds:
                os.close(fd)
            log.error("worker %d cannot be started again: %s", slot.index, exc.strerror or exc)
            self._schedule_restart(slot)
            return
        for fd in child_fds:
            os.close(fd)
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.write(pickle.dumps((self._spec(slot.index), child_fds)))
            process.stdin.close()
        slot.pid, slot.process, slot.channel = process.pid, process, channel
        slot.started, slot.ready, slot.done, slot.restart_at = time.monotonic(), False, False, None
        slot.counters, slot.sink_states = Counters(), []
        for text in self.key_text:
            channel.send(("keys", text))
        log.warning("worker %d started again (pid %d)", slot.index, slot.pid)

    # -- keys ----------------------------------------------------------------------------------

    def forward_keys(self, text: str) -> None:
        """Key-log lines from a listener: to every worker, and kept for those started again."""
        self.key_text.append(text)
        self.key_text_size += len(text)
        while self.key_text_size > REPLAY_KEY_TEXT and len(self.key_text) > 1:
            self.key_text_size -= len(self.key_text.popleft())
        for slot in self.running():
            assert slot.channel is not None
            with contextlib.suppress(ChannelClosed):
                slot.channel.send(("keys", text))

    # -- what workers say ------------------------------------------------------------------

    def running(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.channel is not None]

    def receive(self, slot: Slot) -> None:
        assert slot.channel is not None
        try:
            messages = slot.channel.receive()
        except ChannelClosed:
            self._ended(slot)
            return
        for message in messages:
            self._handle(slot, message)

    def _handle(self, slot: Slot, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "out":
            self.merger.add(slot.index, message[1], message[2])
            slot.progress, slot.waiting, slot.sip_watermark = message[3], message[4], message[6]
            if message[5] is not None:
                slot.read = message[5]
        elif kind in ("session", "sip"):
            for other in self.running():
                if other is not slot and other.channel is not None:
                    with contextlib.suppress(ChannelClosed):
                        other.channel.send(message)
        elif kind == "problem":
            self.reporter.report(message[1])
        elif kind == "secret":
            if self.on_secret is not None:
                self.on_secret(message[1])
        elif kind == "counters":
            slot.counters, slot.sink_states = message[1], message[2]
        elif kind == "ready":
            slot.ready = True
            self.merger.watch(slot.index, time.time_ns() - LIVE_SLACK_NS)
        elif kind == "done":
            slot.counters, slot.sink_states, slot.notes = message[1], message[2], message[3]
            slot.done = True
            self.merger.forget(slot.index)
        elif kind == "fatal":
            if self.live and self.started_all and not self.stopping:
                log.error("worker %d: %s", slot.index, message[1])  # (then it ends: see _ended)
            elif self.failure is None:
                self.failure = message[1]

    def _ended(self, slot: Slot) -> None:
        """A worker's channel closed: it exited.  Reap it; if it had not finished, say so."""
        assert slot.channel is not None
        slot.channel.close()
        slot.channel = None
        status = self._reap(slot)
        if slot.done:
            return
        self.merger.forget(slot.index)
        what = f"worker {slot.index} (pid {slot.pid}) {describe_status(status)} before it finished"
        if not self.live:
            if self.failure is None:
                self.failure = f"{what}: its share of the flows is missing"
            return
        if self.stopping:
            log.error("%s", what)
            return
        if not self.started_all:
            self.failure = self.failure or what  # the workers could not start: a setup error
            return
        self.retired.add(only_counters(slot.counters))
        slot.counters = Counters()
        log.error("%s; its flows go to the other workers until it is started again", what)
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: Slot) -> None:
        young = time.monotonic() - slot.started < YOUNG_S
        first, longest = RESTART_PAUSE_S
        slot.pause = min(longest, slot.pause * 2 if young and slot.pause else first)
        slot.restart_at = time.monotonic() + slot.pause

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.channel is None and slot.restart_at is not None and now >= slot.restart_at:
                self.restarts += 1
                self.spawn(slot)

    def _reap(self, slot: Slot, timeout: float = 10.0) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                return status
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(slot.pid, signal.SIGKILL)
                timeout, deadline = 0, time.monotonic() + 5.0
            time.sleep(0.01)

    # -- the loop ------------------------------------------------------------------------------

    def poll(self, timeout: float, extra: Sequence[Any] = ()) -> list[Any]:
        """Wait up to ``timeout`` for workers (and ``extra``, returned when ready); handle
        what the workers sent and write what the merge allows."""
        slowest = set(self.merger.slowest())
        progress = self.progress()
        readable: list[Any] = []
        writable: list[Any] = []
        for slot in self.running():
            assert slot.channel is not None
            # a worker far ahead waits (its records are held for the merge), unless the merge
            # waits for it, or for sessions it may still cache (it is the one behind)
            if (
                self.merger.pending(slot.index) < MAX_PENDING_RECORDS
                or slot.index in slowest
                or slot.progress <= progress
                or self.stopping
            ):
                readable.append(slot.channel)
            if slot.channel.waiting:
                writable.append(slot.channel)
        try:
            ready, can_write, _ = select.select(readable + list(extra), writable, [], timeout)
        except InterruptedError:
            ready, can_write = [], []
        for channel in can_write:
            with contextlib.suppress(ChannelClosed):
                channel.flush()
        for slot in self.running():
            if slot.channel in ready:
                self.receive(slot)
        self.tell_progress()
        self.tell_media_settled()
        self.merger.write_ready()
        if self.bar is not None:
            reads = [slot.read for slot in self.slots]
            self.bar.update(
                min(r[0] for r in reads), min(r[1] for r in reads), sum(r[2] for r in reads)
            )
        return [r for r in ready if r in extra]

    def progress(self) -> float:
        """Every worker has read every packet before this capture time."""
        return min(
            (
                slot.progress
                for slot in self.slots
                if slot.channel is not None and not slot.done and slot.ready
            ),
            default=float("inf"),
        )

    def tell_progress(self) -> None:
        """Workers whose records wait for a session hear how far every worker has read."""
        progress = None
        for slot in self.running():
            if slot.waiting:
                progress = self.progress() if progress is None else progress
                if progress > slot.told:
                    slot.told = progress
                    assert slot.channel is not None
                    with contextlib.suppress(ChannelClosed):
                        slot.channel.send(("progress", progress))

    def tell_media_settled(self) -> None:
        """Every worker hears how far every worker's SIP messages are out: media waiting for
        its call's SDP (framed perhaps by another worker) can then be decided."""
        settled = min(
            (slot.sip_watermark for slot in self.running() if not slot.done),
            default=float("inf"),
        )
        if settled <= self.media_settled:
            return
        self.media_settled = settled
        for slot in self.running():
            assert slot.channel is not None
            with contextlib.suppress(ChannelClosed):
                slot.channel.send(("media_settled", settled))

    def signal_workers(self, signum: int) -> None:
        for slot in self.running():
            with contextlib.suppress(OSError):
                os.kill(slot.pid, signum)

    def stop_workers(self) -> None:
        """SIGTERM, and wait (writing their last outputs) for them to finish."""
        self.stopping = True
        self.signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.running():
            if time.monotonic() > deadline:
                for slot in self.running():
                    log.error(
                        "worker %d (pid %d) did not finish within %.0f s of SIGTERM: killed",
                        slot.index,
                        slot.pid,
                        STOP_TIMEOUT_S,
                    )
                    with contextlib.suppress(OSError):
                        os.kill(slot.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10.0
            self.poll(0.2)

    def kill_workers(self) -> None:
        """After a failure: end the others at once."""
        self.stopping = True
        for slot in self.running():
            with contextlib.suppress(OSError):
                os.kill(slot.pid, signal.SIGKILL)
            assert slot.channel is not None
            slot.channel.close()
            slot.channel = None
            self._reap(slot, 5.0)

    # -- figures -----------------------------------------------------------------------------

    def totals(self) -> Counters:
        counters = combine((slot.index, slot.counters) for slot in self.slots)
        counters.add(self.retired)
        if self.listener_stats is not None:
            stats = self.listener_stats()
            for outcome, value in (
                ("added", stats.lines_added),
                ("malformed", stats.malformed_lines),
            ):
                counters.set(
                    "key_log_lines", counters.get("key_log_lines", outcome) + value, outcome
                )
            for reason, value in (
                ("make_room", stats.connections_evicted),
                ("idle", stats.connections_idle),
            ):
                counters.set(
                    "key_log_connections_closed",
                    counters.get("key_log_connections_closed", reason) + value,
                    reason,
                )
        counters.set(
            "workers", sum(1 for slot in self.slots if slot.channel is not None and not slot.done)
        )
        counters.set("worker_restarts", self.restarts)
        return counters

    def sinks_summary(self) -> WorkersHep:
        return WorkersHep(slot.sink_states for slot in self.slots if slot.sink_states)


# -- the parent's outputs ------------------------------------------------------------------------
