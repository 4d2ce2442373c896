"""Live capture from a network interface through libpcap (pcapy-ng).

Non-blocking mode driven by ``select``: on Linux, libpcap's read timeout never fires on an idle
link, so a blocking read would hang shutdown.  Frames come in batches (one C call for many
packets) to keep the per-packet cost low.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from collections.abc import Iterator
from typing import NamedTuple

from captagent_tls.capture import CaptureError, Frame
from captagent_tls.counters import Counters

_META = struct.Struct("=IIII")  # sec, usec, offset, caplen


class KernelStats(NamedTuple):
    received: int
    dropped: int  # by the kernel: no room in the buffer
    interface_dropped: int

    def add_counters(self, counters: Counters) -> None:
        counters.set("kernel_received_packets", self.received)
        counters.set("kernel_dropped_packets", self.dropped)
        counters.set("interface_dropped_packets", self.interface_dropped)


class LiveCapture:
    def __init__(
        self,
        interface: str,
        bpf: str | None = None,
        promisc: bool = True,
        snaplen: int = 262144,
        buffer_kib: int = 32768,
        timeout_ms: int = 50,
    ):
        try:
            import pcapy
        except ImportError as exc:  # pragma: no cover - pcapy-ng is a dependency
            raise CaptureError(f"live capture needs pcapy-ng (libpcap): {exc}") from None
        self.interface = interface
        devices = capture_devices()
        if interface not in devices:
            # libpcap would open a socket and fail later with an unrelated error (F_GETFL)
            raise CaptureError(
                f"no such interface {interface} (there are: {', '.join(devices) or 'none'})"
            )
        reader = None
        try:
            reader = pcapy.create(interface)
            reader.set_snaplen(snaplen)
            reader.set_promisc(1 if promisc else 0)
            reader.set_buffer_size(buffer_kib * 1024)
            reader.set_timeout(timeout_ms)
            reader.activate()
            if bpf:
                try:
                    reader.setfilter(bpf)
                except pcapy.PcapError as exc:
                    raise CaptureError(f"bad filter {bpf!r}: {_reason(exc)}") from None
            reader.setnonblock(1)
            self.linktype = reader.datalink()
        except (pcapy.PcapError, UnicodeError, ValueError) as exc:
            if reader is not None:
                reader.close()
            raise CaptureError(f"cannot capture on {interface}: {_reason(exc)}") from None
        except CaptureError:
            if reader is not None:
                reader.close()
            raise
        self._reader = reader

    def fileno(self) -> int:
        return int(self._reader.getfd())

    def read(self, max_packets: int = 4096) -> Iterator[Frame]:
        """Frames that are ready now (none when the kernel has nothing)."""
        buffer, meta = self._reader.next_batch(max_packets)
        if not meta:
            return
        view = memoryview(buffer)
        linktype = self.linktype
        for sec, usec, offset, caplen in _META.iter_unpack(meta):
            yield Frame(sec * 1_000_000_000 + usec * 1000, linktype, view[offset : offset + caplen])

    def stats(self) -> KernelStats:
        received, dropped, if_dropped = self._reader.stats()
        return KernelStats(received, dropped, if_dropped)

    def close(self) -> None:
        self._reader.close()


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
