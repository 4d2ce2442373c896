"""Live capture from a network interface through libpcap (pcapy-ng).

Non-blocking mode driven by ``select``: on Linux, libpcap's read timeout never fires on an idle
link, so a blocking read would hang shutdown.  Frames come in batches (one C call for many
packets) to keep the per-packet cost low.

The capture outlives its interface.  A link that goes down, or an interface that is deleted
and created again (a NIC reset, a re-created VLAN, a container's veth), makes libpcap's handle
useless; the capture then closes it, says so once, and opens the interface again with capped
backoff until it is back (same filter, snap length, buffer, and, through ``on_open``, the
same ``PACKET_FANOUT`` group).  Meanwhile the caller goes on with everything it holds: flows,
records waiting for keys and queued HEP messages are not the capture's to lose.  How often
it was re-opened and how long it was blind are in its stats.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from captagent_tls.capture import CaptureError, Frame
from captagent_tls.counters import Counters
from captagent_tls.errors import UserFacingError

log = logging.getLogger("captagent_tls")

_META = struct.Struct("=IIII")  # sec, usec, offset, caplen

# pcap_activate() statuses (pcap/pcap.h): it reports these instead of raising
_NO_SUCH_DEVICE = -5
_PERMISSION_DENIED = -8
_INTERFACE_NOT_UP = -9
_PROMISC_PERMISSION_DENIED = -11
_ACTIVATE_ERRORS = {
    -1: "libpcap error",
    -3: "not activated",
    -4: "already activated",
    _NO_SUCH_DEVICE: "no such device",
    -6: "monitor mode not supported",
    -7: "not in monitor mode",
    _PERMISSION_DENIED: "permission denied",
    _INTERFACE_NOT_UP: "the interface is not up",
    -10: "cannot set the timestamp type",
    _PROMISC_PERMISSION_DENIED: "permission denied for promiscuous mode",
    -12: "timestamp precision not supported",
}
# What libpcap says when the interface under a handle goes away (pcap-linux.c): the handle is
# lost, the interface may come back.  Any other read error is reported as a failure.
_INTERFACE_LOST = ("went down", "disappeared", "no such device", "network is down", "not up")

REOPEN_FIRST_S = 0.2  # the first attempt to re-open a lost capture, then doubling...
REOPEN_MAX_S = 2.0  # ...up to this


class KernelStats(NamedTuple):
    """The capture's own figures: the kernel's counts (over every handle the capture had),
    and how often and how long the interface was lost."""

    received: int
    dropped: int  # by the kernel: no room in the buffer
    interface_dropped: int
    reopens: int = 0  # times the capture was opened again after its interface was lost
    blind_seconds: float = 0.0  # time without a capture (interface down or gone)

    def add_counters(self, counters: Counters) -> None:
        counters.set("kernel_received_packets", self.received)
        counters.set("kernel_dropped_packets", self.dropped)
        counters.set("interface_dropped_packets", self.interface_dropped)
        counters.set("capture_reopens", self.reopens)
        counters.set("capture_blind_seconds", round(self.blind_seconds, 3))

    def plus(self, other: KernelStats) -> KernelStats:
        return KernelStats(
            self.received + other.received,
            self.dropped + other.dropped,
            self.interface_dropped + other.interface_dropped,
        )


class _Unavailable(Exception):
    """The interface is down or gone right now: try again later."""


class LiveCapture:
    def __init__(
        self,
        interface: str,
        bpf: str | None = None,
        promisc: bool = True,
        snaplen: int = 262144,
        buffer_kib: int = 32768,
        timeout_ms: int = 50,
        on_open: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Open the capture.  A missing interface, a bad filter or a lack of permission is a
        ``CaptureError``; an interface that exists but is down is waited for.  ``on_open``
        is called with the handle's descriptor each time one is opened (joining a fanout
        group); what it raises at the first opening is the caller's."""
        try:
            import pcapy
        except ImportError as exc:  # pragma: no cover - pcapy-ng is a dependency
            raise CaptureError(f"live capture needs pcapy-ng (libpcap): {exc}") from None
        self._pcapy: Any = pcapy
        self.interface = interface
        self.name = interface  # how log lines name this capture (a worker adds its number)
        devices = capture_devices()
        if interface not in devices:
            # libpcap would open a socket and fail later with an unrelated error (F_GETFL)
            raise CaptureError(
                f"no such interface {interface} (there are: {', '.join(devices) or 'none'})"
            )
        self._settings = (bpf, promisc, snaplen, buffer_kib, timeout_ms)
        self.on_open = on_open
        self._clock = clock
        self._reader: Any = None
        self.linktype = 0
        self.reopens = 0
        self._closed_stats = KernelStats(0, 0, 0)  # of the handles lost so far
        self._last_stats = KernelStats(0, 0, 0)  # of the current handle, as last read
        self._blind_since: float | None = None
        self._blind_total = 0.0
        self._next_attempt = 0.0
        self._backoff = REOPEN_FIRST_S
        try:
            self._open()
        except _Unavailable as exc:
            log.warning("%s is not capturing yet (%s): waiting for it to come up", self.name, exc)
            self._blind(self._clock())

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        pcapy = self._pcapy
        bpf, promisc, snaplen, buffer_kib, timeout_ms = self._settings
        reader = None
        try:
            reader = pcapy.create(self.interface)
            reader.set_snaplen(snaplen)
            reader.set_promisc(1 if promisc else 0)
            reader.set_buffer_size(buffer_kib * 1024)
            reader.set_timeout(timeout_ms)
            status = reader.activate()
            if isinstance(status, int) and status < 0:
                reason = _ACTIVATE_ERRORS.get(status, f"libpcap error {status}")
                if status in (_INTERFACE_NOT_UP, _NO_SUCH_DEVICE):
                    raise _Unavailable(reason)
                if status in (_PERMISSION_DENIED, _PROMISC_PERMISSION_DENIED):
                    reason += " (capturing needs root or CAP_NET_RAW)"
                raise CaptureError(f"cannot capture on {self.interface}: {reason}")
            if bpf:
                try:
                    reader.setfilter(bpf)
                except pcapy.PcapError as exc:
                    raise CaptureError(f"bad filter {bpf!r}: {_reason(exc)}") from None
            reader.setnonblock(1)
            linktype = reader.datalink()
            if self.on_open is not None:
                self.on_open(int(reader.getfd()))
        except pcapy.PcapError as exc:
            if reader is not None:
                reader.close()
            if _interface_lost(exc):
                raise _Unavailable(str(exc)) from None
            raise CaptureError(f"cannot capture on {self.interface}: {_reason(exc)}") from None
        except (UnicodeError, ValueError) as exc:
            if reader is not None:
                reader.close()
            raise CaptureError(f"cannot capture on {self.interface}: {_reason(exc)}") from None
        except BaseException:
            if reader is not None:
                reader.close()
            raise
        self._reader = reader
        self.linktype = linktype
        self._last_stats = KernelStats(0, 0, 0)

    def _blind(self, now: float) -> None:
        self._blind_since = now
        self._backoff = REOPEN_FIRST_S
        self._next_attempt = now + self._backoff

    def _lose(self, exc: Exception) -> None:
        """The handle is useless (its interface went down or away): close it, keep its
        figures, and re-open from ``maintain``."""
        reader, self._reader = self._reader, None
        with contextlib.suppress(Exception):
            self._last_stats = _kernel_stats(reader)
        self._closed_stats = self._closed_stats.plus(self._last_stats)
        self._last_stats = KernelStats(0, 0, 0)
        with contextlib.suppress(Exception):
            reader.close()
        log.warning(
            "capture on %s lost (%s): flows, records held for keys and queued HEP messages "
            "are kept; re-opening it when the interface is back",
            self.name,
            exc,
        )
        self._blind(self._clock())

    @property
    def capturing(self) -> bool:
        return self._reader is not None

    def maintain(self) -> bool:
        """While the capture is lost, try to open it again when the backoff allows.  True
        when it has just been re-opened."""
        if self._reader is not None or self._blind_since is None:
            return False  # (capturing, or closed)
        now = self._clock()
        if now < self._next_attempt:
            return False
        try:
            self._open()
        except (_Unavailable, UserFacingError, OSError) as exc:
            # (a fanout group the other workers have not left yet, a filter refused while
            # the interface comes up...: the next attempt may work)
            self._backoff = min(self._backoff * 2, REOPEN_MAX_S)
            self._next_attempt = now + self._backoff
            log.debug("re-opening the capture on %s failed: %s", self.name, exc)
            return False
        assert self._blind_since is not None
        blind = now - self._blind_since
        self._blind_total += blind
        self._blind_since = None
        self.reopens += 1
        log.warning(
            "capturing on %s again after %.1f s without capture (re-opened %d time%s)",
            self.name,
            blind,
            self.reopens,
            "" if self.reopens == 1 else "s",
        )
        return True

    # -- reading ---------------------------------------------------------------------------

    def fileno(self) -> int | None:
        """The descriptor to wait on; None while the capture is lost."""
        return int(self._reader.getfd()) if self._reader is not None else None

    def read(self, max_packets: int = 4096) -> Iterator[Frame]:
        """Frames that are ready now (none when the kernel has nothing, or the capture is
        lost)."""
        reader = self._reader
        if reader is None:
            return
        try:
            buffer, meta = reader.next_batch(max_packets)
        except self._pcapy.PcapError as exc:
            if not _interface_lost(exc):
                self.close()  # (not re-opened: nothing says it would work again)
                raise CaptureError(f"capture on {self.interface} failed: {exc}") from None
            self._lose(exc)
            return
        if not meta:
            return
        view = memoryview(buffer)
        linktype = self.linktype
        for sec, usec, offset, caplen in _META.iter_unpack(meta):
            yield Frame(sec * 1_000_000_000 + usec * 1000, linktype, view[offset : offset + caplen])

    def stats(self) -> KernelStats:
        if self._reader is not None:
            with contextlib.suppress(Exception):  # (a handle whose interface just went)
                self._last_stats = _kernel_stats(self._reader)
        total = self._closed_stats.plus(self._last_stats)
        blind = self._blind_total
        if self._blind_since is not None:
            blind += self._clock() - self._blind_since
        return total._replace(reopens=self.reopens, blind_seconds=blind)

    def close(self) -> None:
        """Close the handle; the figures stay readable."""
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                self._last_stats = _kernel_stats(reader)
            self._closed_stats = self._closed_stats.plus(self._last_stats)
            self._last_stats = KernelStats(0, 0, 0)
            reader.close()
        if self._blind_since is not None:
            self._blind_total += self._clock() - self._blind_since
            self._blind_since = None


def _kernel_stats(reader: Any) -> KernelStats:
    received, dropped, if_dropped = reader.stats()
    return KernelStats(received, dropped, if_dropped)


def _interface_lost(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _INTERFACE_LOST)


def capture_devices() -> list[str]:
    """What ``-i`` may name: libpcap's devices (``any``, ``nflog``...) and every network
    interface, up or down."""
    names: dict[str, None] = {"any": None} if sys.platform.startswith("linux") else {}
    try:
        import pcapy

        names.update(dict.fromkeys(pcapy.findalldevs()))
    except Exception:  # noqa: BLE001 - pcapy raises PcapError when it finds none
        pass
    with contextlib.suppress(OSError):
        names.update(dict.fromkeys(name for _, name in socket.if_nameindex()))
    return list(names)


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "permission" in text.lower() or "not permitted" in text.lower():
        return f"{text} (capturing needs root or CAP_NET_RAW)"
    return text
