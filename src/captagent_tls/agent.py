"""The live agent: capture from an interface until SIGINT/SIGTERM, reload keys on SIGHUP.

One thread runs the loop: ``select`` over the capture, the key-log listeners and a wake-up
socket for signals.  Everything past the capture is the offline pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, Protocol

from captagent_tls.capture.live import KernelStats, LiveCapture
from captagent_tls.keysources import KeyLogFile
from captagent_tls.pipeline import Pipeline

log = logging.getLogger("captagent_tls")

TICK_NS = 1_000_000_000
BATCH = 4096
MAX_BATCHES_PER_TURN = 64  # then look at keys, timers and signals again


@contextlib.contextmanager
def wake_on_signals(
    handler: Callable[[int, FrameType | None], None],
) -> Iterator[socket.socket]:
    """SIGINT, SIGTERM and SIGHUP go to ``handler`` and make the socket this yields readable
    (so a ``select`` on it wakes); the handlers and wake-up descriptor in place before are put
    back afterwards."""
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    previous_wakeup = signal.set_wakeup_fd(wake_write.fileno())
    previous = {
        sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield wake_read
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)
        wake_read.close()
        wake_write.close()


class KeySource(Protocol):
    """What the loop watches besides the capture: a key-log listener (or, in a worker
    process, the lines its parent forwards)."""

    def sockets(self) -> list[Any]: ...

    def handle(self, ready: set[int]) -> int: ...

    def close(self) -> None: ...


class Agent:
    def __init__(
        self,
        capture: LiveCapture,
        pipeline: Pipeline,
        key_files: list[KeyLogFile],
        listeners: Sequence[KeySource],
        reload_keys: Callable[[], None],
        stats_interval_s: float = 60.0,
        report_stats: Callable[[], None] | None = None,
        on_turn: Callable[[int], None] | None = None,
    ):
        self.capture = capture
        self.pipeline = pipeline
        self.key_files = key_files
        self.listeners = listeners
        self.reload_keys = reload_keys
        self.stats_interval_ns = int(stats_interval_s * 1e9)
        self.report_stats = report_stats
        self.on_turn = on_turn  # called after each turn of the loop with the time (a worker
        # process sends its outputs then)
        self.drained = True  # the last read took everything the kernel held
        self.kernel = KernelStats(0, 0, 0)
        self._stopping = False
        self._reload = False

    def stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        try:
            with wake_on_signals(self._on_signal) as wake:
                self._loop(wake)
        finally:
            self._drain()
            self.kernel = self.capture.stats()
            self.capture.close()
            for listener in self.listeners:
                listener.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stopping = True

    def _loop(self, wake: socket.socket) -> None:
        capture = self.capture
        pipeline = self.pipeline
        next_tick = time.time_ns()
        next_stats = next_tick + self.stats_interval_ns
        while not self._stopping:
            capture_fd = capture.fileno()  # (None while the interface is down or gone)
            watched: list[int | socket.socket] = [wake]
            if capture_fd is not None:
                watched.append(capture_fd)
            for listener in self.listeners:
                watched.extend(listener.sockets())
            try:
                ready, _, _ = select.select(watched, [], [], 0.2)
            except InterruptedError:
                continue
            ready_fds = {r if isinstance(r, int) else r.fileno() for r in ready}
            if wake.fileno() in ready_fds:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)
            if capture_fd is not None and capture_fd in ready_fds:
                self._read_frames()
            added = sum(listener.handle(ready_fds) for listener in self.listeners)
            now = time.time_ns()
            if now >= next_tick:
                next_tick = now + TICK_NS // 5
                added += sum(source.poll() for source in self.key_files)
                pipeline.expire(now)
                capture.maintain()  # a capture whose interface was lost is opened again
                self.kernel = capture.stats()  # read here only: libpcap is not threadsafe
            if added:
                pipeline.keys_added(now)
            if self._reload:
                self._reload = False
                self._do_reload(now)
            if self.report_stats is not None and now >= next_stats:
                next_stats = now + self.stats_interval_ns
                self.report_stats()
            if self.on_turn is not None:
                self.on_turn(now)

    def _read_frames(self) -> None:
        feed = self.pipeline.frame
        for _ in range(MAX_BATCHES_PER_TURN):
            count = 0
            for frame in self.capture.read(BATCH):
                feed(frame)
                count += 1
            if count < BATCH:
                self.drained = True
                return
        self.drained = False

    def _drain(self) -> None:
        """Whatever the kernel already holds is still processed before shutdown, and the
        key-log lines already sent with it (records may wait for them)."""
        try:
            self._read_waiting_keys()
            self._read_frames()
            self._read_waiting_keys()
        except Exception as exc:  # noqa: BLE001 - shutting down: never lose the final flush
            log.error("reading the last packets failed: %s", exc)
            log.debug("reading the last packets failed", exc_info=exc)

    def _read_waiting_keys(self) -> None:
        added = sum(source.poll() for source in self.key_files)
        for _ in range(MAX_BATCHES_PER_TURN):  # a listener reads a bounded batch per call
            watched = [sock for listener in self.listeners for sock in listener.sockets()]
            if not watched:
                break
            ready, _, _ = select.select(watched, [], [], 0)
            ready_fds = {r if isinstance(r, int) else r.fileno() for r in ready}
            got = sum(listener.handle(ready_fds) for listener in self.listeners) if ready else 0
            if not got:
                break
            added += got
        if added:
            self.pipeline.keys_added(time.time_ns())

    def _do_reload(self, now: int) -> None:
        log.warning("SIGHUP: reloading keys and key logs")
        try:
            self.reload_keys()
        except Exception as exc:  # noqa: BLE001 - keep running with the keys we had
            log.error("reload failed, keeping the previous keys: %s", exc)
        for source in self.key_files:
            source.reload()
        self.pipeline.keys_added(now)
