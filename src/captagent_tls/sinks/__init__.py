"""Edge stage: where messages go (console, JSON lines, HEPv3)."""

from __future__ import annotations

from typing import Protocol

from captagent_tls.sip import Message


class Sink(Protocol):
    def emit(self, message: Message) -> None: ...

    def close(self) -> None: ...
