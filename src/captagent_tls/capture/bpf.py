"""BPF filters (tcpdump syntax) applied to frames we read ourselves, compiled by libpcap."""

from __future__ import annotations

from captagent_tls.capture import CaptureError, Frame

SNAPLEN = 262144


class FrameFilter:
    def __init__(self, expression: str):
        try:
            import pcapy
        except ImportError as exc:  # pragma: no cover - pcapy-ng is a dependency
            raise CaptureError(f"BPF filters need pcapy-ng (libpcap): {exc}") from None
        self._pcapy = pcapy
        self.expression = expression
        self._programs: dict[int, object] = {}
        self._program(1)  # a syntax error should be reported before any packet is read

    def _program(self, linktype: int) -> object:
        program = self._programs.get(linktype)
        if program is None:
            try:
                program = self._pcapy.compile(linktype, SNAPLEN, self.expression, 1, 0)
            except (self._pcapy.PcapError, UnicodeError, ValueError) as exc:
                raise CaptureError(f"bad filter {self.expression!r}: {exc}") from None
            self._programs[linktype] = program
        return program

    def matches(self, frame: Frame) -> bool:
        program = self._programs.get(frame.linktype) or self._program(frame.linktype)
        return bool(program.filter(bytes(frame.data)))  # type: ignore[attr-defined]
