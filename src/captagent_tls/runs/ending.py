"""The end of a run: the summary, a line for each file written, and the last line, which says
whether every output took everything; and the exit status that goes with it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from captagent_tls.config.settings import Settings
from captagent_tls.counters import Counters
from captagent_tls.report import format_stats
from captagent_tls.sinks import Sink

if TYPE_CHECKING:
    from captagent_tls.assembly.keys import KeyLogExporter
    from captagent_tls.views.setup import Views

EXIT_ERROR = 1


def end_of_run(
    settings: Settings,
    counters: Counters,
    sinks: Sequence[Sink],
    views: Views,
    exporter: KeyLogExporter | None,
) -> int:
    """Reading a file, an output that did not take everything (HEP packets not delivered)
    makes the exit status non-zero; a live agent says so and exits 0 (it was stopped)."""
    out = sys.stderr
    if not settings.quiet:
        print(format_stats(counters, sinks, verbose=settings.verbose > 0), file=out)
        closing = [line for sink in sinks if (line := sink.closing_line())]
        closing += views.closing_lines()
        if exporter is not None:
            closing.append(exporter.closing_line())
        for line in closing:
            print(f"captagent-tls: {line}", file=out)
    failures = [text for sink in sinks if (text := sink.shortfall())]
    dropped = int(counters["internal_errors"])
    if dropped:
        failures.append(
            f"{dropped} flow{' was' if dropped == 1 else 's were'} dropped after internal "
            "errors (see above)"
        )
    if failures and not settings.interface:
        print(f"captagent-tls: error: {'; '.join(failures)}", file=out)
        return EXIT_ERROR
    if failures:
        print(f"captagent-tls: warning: {'; '.join(failures)}", file=out)
    elif not settings.quiet:
        print(
            f"captagent-tls: done: {counters['sip_messages']} SIP messages; every output "
            "took everything",
            file=out,
        )
    return 0


def warn_malformed(path: str, description: str) -> None:
    print(f"captagent-tls: warning: {path}: {description}", file=sys.stderr)


def warn_truncated(path: str, at: int | None) -> None:
    print(
        f"captagent-tls: warning: {path} is truncated (a record cut at byte {at}); "
        "everything before the cut was processed",
        file=sys.stderr,
    )
