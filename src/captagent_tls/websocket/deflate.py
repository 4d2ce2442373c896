"""permessage-deflate (RFC 7692): the negotiated parameters, and the inflation of one
direction's compressed messages.  Sans-IO.

A compressed message is raw DEFLATE data without its last four bytes ``00 00 ff ff``
(§7.2.1).  With context takeover the sender's LZ77 window carries over from message to
message; with ``*_no_context_takeover`` it starts empty each time.  ``*_max_window_bits``
bounds the sender's window.

Inflation is bounded: a message that inflates to more than the cap (a "deflate bomb") is
cut off at the cap, counted and dropped, and never held in memory beyond it.

An observer may also meet compressed messages without having seen the handshake (picked up
mid-stream, or after bytes were lost).  DEFLATE makes that safe: between messages the stream
is flushed to a byte boundary, so the only state carried over is the window, and zlib
refuses a back-reference to window bytes it does not have ("invalid distance too far
back").  A message inflated from a window we do hold is therefore exactly what was sent,
and one that needs bytes we never saw fails and is dropped: nothing is invented.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from captagent_tls.websocket.handshake import Extension

_TAIL = b"\x00\x00\xff\xff"
MAX_WINDOW_BITS = 15


class DeflateParams(NamedTuple):
    """What the server accepted, per sender."""

    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False
    client_max_window_bits: int = MAX_WINDOW_BITS
    server_max_window_bits: int = MAX_WINDOW_BITS


class DeflateParamError(ValueError):
    """A permessage-deflate answer the client must reject (RFC 7692 §7.1)."""


def negotiated(extension: Extension) -> DeflateParams:
    """The parameters of the server's ``permessage-deflate`` answer."""
    params = extension.params
    flags: dict[str, bool] = {}
    for name in ("client_no_context_takeover", "server_no_context_takeover"):
        if name in params:
            if params[name] is not None:
                raise DeflateParamError(f"{name} takes no value")
            flags[name] = True
    bits: dict[str, int] = {}
    for name in ("client_max_window_bits", "server_max_window_bits"):
        if name in params:
            value = params[name]
            # in an answer both need a value (a bare client_max_window_bits is an offer)
            if value is None or not value.isdigit() or not 8 <= int(value) <= 15:
                raise DeflateParamError(f"{name}={value} is not a window size of 8 to 15 bits")
            bits[name] = int(value)
    unknown = set(params) - set(flags) - set(bits)
    if unknown:
        raise DeflateParamError(f"unknown parameter {sorted(unknown)[0]}")
    return DeflateParams(
        client_no_context_takeover=flags.get("client_no_context_takeover", False),
        server_no_context_takeover=flags.get("server_no_context_takeover", False),
        client_max_window_bits=bits.get("client_max_window_bits", MAX_WINDOW_BITS),
        server_max_window_bits=bits.get("server_max_window_bits", MAX_WINDOW_BITS),
    )


class InflateError(Exception):
    """A compressed message that cannot be read.  ``kind``: "corrupt" (not DEFLATE data, or
    it needs window bytes we do not hold) or "too large" (over the cap)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


class Inflater:
    """Inflation state of one direction.  ``window_bits`` is the sender's negotiated window
    (the largest when the handshake was not seen); ``takeover`` says whether the window
    carries over between messages."""

    __slots__ = ("window_bits", "takeover", "max_size", "_zlib")

    def __init__(
        self, window_bits: int = MAX_WINDOW_BITS, takeover: bool = True, max_size: int = 1 << 20
    ):
        # zlib cannot inflate raw DEFLATE with an 8-bit window, and its deflate never makes
        # one (it uses 9 bits instead): a 9-bit window reads everything an 8-bit one does
        self.window_bits = max(window_bits, 9)
        self.takeover = takeover
        self.max_size = max_size
        self._zlib: zlib._Decompress | None = None

    def inflate(self, payload: bytes) -> bytes:
        inflater = self._zlib
        if inflater is None:
            inflater = self._zlib = zlib.decompressobj(wbits=-self.window_bits)
        try:
            data = inflater.decompress(payload + _TAIL, self.max_size + 1)
        except zlib.error as exc:
            self._zlib = None  # its window is now unknown
            raise InflateError("corrupt", str(exc)) from None
        if len(data) > self.max_size or inflater.unconsumed_tail:
            self._zlib = None
            raise InflateError("too large", f"inflates to more than {self.max_size} bytes")
        if inflater.eof:
            # a final block: legal DEFLATE, but the sender may not go on from it; start anew
            self._zlib = None
        elif not self.takeover:
            self._zlib = None
        return data

    def reset(self) -> None:
        """Window bytes were lost (a gap): what comes next may not refer to them."""
        self._zlib = None
