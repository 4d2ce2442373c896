"""Edge stage: where messages go (console, JSON lines, HEPv3, pcap files)."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from captagent_tls.counters import Counters
from captagent_tls.errors import UserFacingError
from captagent_tls.message import Message

if TYPE_CHECKING:
    from captagent_tls.media.reports import MediaEvent


class OutputError(UserFacingError):
    """An output that cannot be written (disk full, device gone); the message is one line
    naming it.  It ends the run: unlike a packet, it concerns every flow."""


def write_failed(out: IO[Any], exc: OSError, name: str | None = None) -> OutputError:
    """The OutputError for a failed write to ``out`` (``name``: what to call it)."""
    if name is None:
        known = getattr(out, "name", None)
        name = "standard output" if known in ("<stdout>", 1) else str(known or "the output")
    return OutputError(f"cannot write {name}: {exc.strerror or exc}")


class Sink:
    """An output.  Those with something to count or to say at the end of a run say it
    themselves: the summary and /metrics never ask what kind of output they have."""

    def emit(self, message: Message) -> None:
        raise NotImplementedError

    def emit_media(self, event: MediaEvent) -> None:
        """An RTCP report of a call, the RTP statistics of a call whose media ended, or (for
        --media-pcap only) a decrypted RTP packet; outputs that show media say so (the
        default shows nothing)."""

    def close(self) -> None:
        """Flush and let go of what the output holds."""

    def add_counters(self, counters: Counters) -> None:
        """Add what this output counts to a snapshot (see counters.py)."""

    def summary_lines(self, verbose: bool = False) -> list[str]:
        """Lines for the end-of-run summary (``verbose``: figures that are zero too)."""
        return []

    def closing_line(self) -> str | None:
        """An output that writes a file: the file's name and what it holds, once closed."""
        return None

    def shortfall(self) -> str | None:
        """What this output could not take (messages not delivered, ...); None when it took
        everything.  Any shortfall makes a run that reads a file end with a failure."""
        return None
