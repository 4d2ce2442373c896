"""The views options of one run (argument group "views"), set up around the pipeline.

The command line makes one :class:`Views` before the outputs, takes from it the console sink,
the report and the streams to write to, lets it tee the frames and the session secrets, and
closes it after the outputs.  Nothing here changes what the pipeline does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO

from captagent_tls.capture import Frame
from captagent_tls.capture.live import LiveCapture
from captagent_tls.config.settings import Settings
from captagent_tls.counters import Counters
from captagent_tls.sinks import OutputError, Sink
from captagent_tls.tls.events import SessionSecret
from captagent_tls.views.colour import colour_wanted, is_terminal

# What only some runs need is imported when they need it: start-up time counts.
if TYPE_CHECKING:
    from captagent_tls.capture.files import CaptureReader
    from captagent_tls.pipeline import Pipeline
    from captagent_tls.sinks.decryptable import DecryptableCaptureWriter
    from captagent_tls.views.callflow import CallFlowReport
    from captagent_tls.views.progress import FileProgress, LiveStatus, TerminalLine


def console_wanted(args: Settings) -> bool:
    """Whether the console view is shown.  An output that takes the messages elsewhere
    replaces it, as ``tcpdump -w`` and ``tshark -w`` print no packets: ``--json`` (it takes
    standard output), ``--hep`` (an agent shipping to HOMER should not also write every
    message to its log), ``-w``, ``--report`` and ``--write-decryptable``; ``--console``
    keeps it.  ``--export-keylog`` writes secrets, not messages: the console stays."""
    replaced = args.json or args.hep or args.write or args.report or args.write_decryptable
    return bool(args.console or not replaced)


class Views:
    """What the views options ask for, around one run (``live``: capturing from -i)."""

    def __init__(
        self,
        args: Settings,
        live: bool,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ):
        self.args = args
        self.live = live
        self._stdout = stdout if stdout is not None else sys.stdout
        self._stderr = stderr if stderr is not None else sys.stderr
        shown = args.status if live else args.progress and not args.quiet
        self.line: TerminalLine | None = None
        if shown and is_terminal(self._stderr):
            from captagent_tls.views.progress import TerminalLine

            self.line = TerminalLine(self._stderr)
            self.line.guard_logging()
        self.progress: FileProgress | None = None
        self.status: LiveStatus | None = None
        self.report: CallFlowReport | None = None
        self.writer: DecryptableCaptureWriter | None = None
        if args.write_decryptable:
            from captagent_tls.sinks.decryptable import DecryptableCaptureWriter

            try:
                self.writer = DecryptableCaptureWriter(args.write_decryptable)
            except OSError as exc:
                raise OutputError(str(exc)) from None

    # -- outputs ---------------------------------------------------------------------------

    @property
    def stdout(self) -> TextIO:
        """Standard output as the outputs should write to it."""
        return self.line.guard(self._stdout) if self.line is not None else self._stdout

    @property
    def stderr(self) -> TextIO:
        """Standard error for messages written while the progress or status line is shown."""
        return self.line.guard(self._stderr) if self.line is not None else self._stderr

    def console(self, flush_each: bool) -> Sink:
        colour = colour_wanted(self.args.color, self._stdout)
        if not (colour or self.args.brief):
            from captagent_tls.sinks.console import ConsoleSink

            return ConsoleSink(self.stdout, flush_each)
        from captagent_tls.views.console import console_view

        return console_view(self.stdout, flush_each, colour, self.args.brief)

    def report_sink(self) -> Sink | None:
        if not self.args.report:
            return None
        from captagent_tls.views.callflow import CallFlowReport

        self.report = CallFlowReport(self.args.report)  # or a ReportError, a OutputError
        return self.report

    # -- taps --------------------------------------------------------------------------------

    def on_secret(
        self, other: Callable[[SessionSecret], None] | None
    ) -> Callable[[SessionSecret], None] | None:
        """The pipeline's ``on_secret``: ``other`` (the key-log export) and the writer."""
        if self.writer is None:
            return other
        write = self.writer.secret
        if other is None:
            return write

        def both(secret: SessionSecret) -> None:
            other(secret)
            write(secret)

        return both

    def feed(self, feed: Callable[[Frame], None]) -> Callable[[Frame], None]:
        """The pipeline's frame input, teed to the decryptable capture when one is written."""
        if self.writer is None:
            return feed
        from captagent_tls.sinks.decryptable import tee_frames

        return tee_frames(feed, self.writer)

    def live_capture(self, *args: Any, **kwargs: Any) -> LiveCapture:
        """The live capture (LiveCapture's arguments), teed to the decryptable capture when
        one is written."""
        if self.writer is None:
            return LiveCapture(*args, **kwargs)
        from captagent_tls.sinks.decryptable import TeeLiveCapture

        capture = TeeLiveCapture(*args, **kwargs)
        capture.writer = self.writer
        return capture

    def frames(self, reader: CaptureReader, pipeline: Pipeline, path: str) -> Iterable[Frame]:
        """A capture file's frames, with a progress bar when one is shown."""
        if self.line is None:
            return reader
        from captagent_tls.views.progress import FileProgress

        self.progress = FileProgress(self.line, path, reader, pipeline)
        return self.progress.frames(reader)

    def start_status(self, snapshot: Callable[[], Counters]) -> None:
        if self.line is None:
            if self.args.status and self.live:
                print(
                    "captagent-tls: warning: --status needs stderr to be a terminal; "
                    "the stats are logged every --stats-interval instead",
                    file=self._stderr,
                )
            return
        from captagent_tls.views.progress import LiveStatus

        self.status = LiveStatus(self.line, snapshot)
        self.status.start()

    # -- the end -----------------------------------------------------------------------------

    def stop_lines(self) -> None:
        """Take the progress bar or status line off (a file's bar stays with its last
        figures)."""
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.status is not None:
            self.status.stop()
            self.status = None

    def close(self) -> None:
        """After the outputs are closed: write the decryptable capture."""
        self.stop_lines()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                raise OutputError(f"{self.writer.path}: {exc.strerror or exc}") from None

    def closing_lines(self) -> list[str]:
        """The files the views wrote: each one's name and what it holds."""
        lines = []
        if self.report is not None and self.report.size:
            lines.append(self.report.summary_line())
        writer = self.writer
        if writer is not None and writer.closed:
            lines.append(
                f"decryptable capture: {writer.path}: {writer.frames} packets, secrets "
                f"of {writer.sessions} TLS sessions (mode 0600: it holds secrets)"
            )
        return lines
