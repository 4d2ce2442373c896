"""Edge stage: where messages go (console, JSON lines, HEPv3)."""

from __future__ import annotations

from typing import IO, Any, Protocol

from captagent_tls.sip import Message


class OutputError(Exception):
    """An output that cannot be written (disk full, device gone); the message is one line
    naming it.  It ends the run: unlike a packet, it concerns every flow."""


def write_failed(out: IO[Any], exc: OSError, name: str | None = None) -> OutputError:
    """The OutputError for a failed write to ``out`` (``name``: what to call it)."""
    if name is None:
        known = getattr(out, "name", None)
        name = "standard output" if known in ("<stdout>", 1) else str(known or "the output")
    return OutputError(f"cannot write {name}: {exc.strerror or exc}")


class Sink(Protocol):
    def emit(self, message: Message) -> None: ...

    def close(self) -> None: ...
