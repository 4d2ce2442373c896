"""The SRTP keys one sender may be using on one media line: those in use and those offered
and not yet proven, as SDES offers, answers and re-INVITEs change them."""

from __future__ import annotations

from collections.abc import Sequence

from captagent_tls.media.srtp import SrtpContext, SrtpError

MAX_PENDING = 16  # offered keys not yet proven, per sender and media line


class Keyring:
    """The SRTP contexts of one sender on one media line: ``pending`` (offered, not yet
    proven) are tried before ``current`` (in use); the first pending one that authenticates
    becomes the only current one."""

    __slots__ = ("current", "pending")

    def __init__(self) -> None:
        self.current: list[SrtpContext] = []
        self.pending: list[SrtpContext] = []

    def __bool__(self) -> bool:
        return bool(self.current or self.pending)

    def _known(self, context: SrtpContext) -> SrtpContext | None:
        for held in (*self.pending, *self.current):
            if held.identity == context.identity:
                return held
        return None

    def offer(self, contexts: Sequence[SrtpContext]) -> None:
        """New candidates.  A key already in use stays as it is (its replay state too)."""
        fresh = []
        for context in contexts[:MAX_PENDING]:
            known = self._known(context)
            if known is not None and known in self.current:
                continue
            fresh.append(known or context)
        self.pending = fresh

    def select(self, context: SrtpContext) -> None:
        """The answer chose this key: the other candidates go."""
        known = self._known(context)
        if known is not None and known in self.current:
            self.pending = []
        else:
            self.pending = [known or context]

    def _run(self, packet: bytes, rtcp: bool) -> bytes:
        reasons = []
        for group in (self.pending, self.current):
            for context in group:
                try:
                    plain = (
                        context.unprotect_rtcp(packet) if rtcp else context.unprotect_rtp(packet)
                    )
                except SrtpError as error:
                    reasons.append(error.reason)
                    continue
                if group is self.pending:
                    self.current = [context]
                    self.pending = []
                return plain
        for reason in (SrtpError.REPLAY, SrtpError.MALFORMED, SrtpError.UNKNOWN_MKI):
            if reason in reasons:
                raise SrtpError(reason)
        raise SrtpError(SrtpError.AUTH)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._run(packet, True)

    def unprotect_rtp(self, packet: bytes) -> bytes:
        return self._run(packet, False)
