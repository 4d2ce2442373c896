"""UDP collectors: the queue, and a sender thread doing one ``sendto`` per packet.

``sendto`` to a busy collector costs more than the rest of a message's processing; in its own
thread it runs beside the capture (the GIL is released in the system call).  A packet leaves
the queue, its room free, when the sender takes it.  A datagram the kernel refuses
(``EMSGSIZE``, ``ENOBUFS``, ...) is counted as a send error; UDP itself may lose packets on
the way, which nothing can tell.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from captagent_tls.sinks.hep.collector import Collector, CollectorStats, describe_error, resolve
from captagent_tls.sinks.hep.queue import PacketQueue, QueueLimits

log = logging.getLogger("captagent_tls.hep")

WAIT_SLICE = 0.25  # a full send buffer is waited out in slices, so that close() is noticed


class UdpCollector(Collector):
    def __init__(
        self, host: str, port: int, text: str | None = None, limits: QueueLimits | None = None
    ):
        super().__init__("udp", host, port)
        family, _, _, _, sockaddr = resolve(text or self.address, host, port, socket.SOCK_DGRAM)[0]
        self._sockaddr = sockaddr
        self.queue = PacketQueue(limits)
        self.limits = self.queue.limits
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.settimeout(WAIT_SLICE)
        with contextlib.suppress(OSError):  # room for bursts; the kernel caps it at wmem_max
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        # written by the sender thread only
        self._sent = 0
        self._send_errors = 0
        self._last_error = ""
        self._failing = False
        self._thread = threading.Thread(target=self._run, name=f"hep {self.address}", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self.queue.closing:
            self._thread.start()

    def _run(self) -> None:
        queue, sock, address = self.queue, self._sock, self._sockaddr
        while True:
            pending, _, deadline = queue.wait_for_work()
            if not pending or time.monotonic() > deadline:
                return
            for packet in queue.take(settle=True):
                try:
                    sock.sendto(packet, address)
                except OSError as exc:
                    self._send_failed(exc)
                else:
                    self._failing = False
                    self._sent += 1

    def _send_failed(self, exc: OSError) -> None:
        self._send_errors += 1
        self._last_error = describe_error(exc)
        if not self._failing:
            self._failing = True
            log.warning(
                "HEP collector %s: send failed: %s (counting further failures)",
                self.address,
                self._last_error,
            )

    @property
    def stats(self) -> CollectorStats:
        queue = self.queue
        with queue.cond:
            return CollectorStats(
                sent=self._sent,
                queued=queue.held,
                queued_bytes=queue.held_bytes,
                dropped=queue.dropped,
                dropped_at_shutdown=queue.dropped_at_shutdown,
                send_errors=self._send_errors,
                connected=not queue.closing,
                last_error=self._last_error,
            )

    def wait_closed(self, deadline: float) -> None:
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self.queue.finalize()
        self._sock.close()
