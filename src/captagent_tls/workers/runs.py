"""Running a job on workers: the parent's outputs, the offline run (fails if a worker dies)
and the live run (restarts a worker that dies), and the summary and metrics they report.

The parent process itself (starting, watching and stopping workers, merging what they send)
is `workers.parent`; this module is what the command line calls.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from captagent_tls.agent import wake_on_signals
from captagent_tls.capture import CaptureError
from captagent_tls.counters import Counters
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.sinks import OutputError, Sink
from captagent_tls.tls.keys import KeyStore
from captagent_tls.views.setup import console_wanted
from captagent_tls.workers.outputs import Writers
from captagent_tls.workers.parent import READY_TIMEOUT_S, Parent

log = logging.getLogger("captagent_tls")


def parent_outputs(args: argparse.Namespace, views: Any, live: bool) -> tuple[Writers, list[Sink]]:
    """The outputs written by the parent, and the sinks among them to close (in order)."""
    from captagent_tls.cli import UserError
    from captagent_tls.sinks.pcapfile import PcapFileSink

    closing: list[Sink] = []
    pcap_sink = None
    if args.write:
        try:
            pcap_sink = PcapFileSink(open(args.write, "wb"), flush_each=live, path=args.write)  # noqa: SIM115
        except OSError as exc:
            raise UserError(f"cannot write {args.write}: {exc.strerror or exc}") from None
        closing.append(pcap_sink)
    report = views.report_sink()
    if report is not None:
        closing.append(report)
    stdout = views.stdout if (args.json or console_wanted(args)) else None
    writers = Writers(
        stdout,
        pcap_sink,
        report,
        views.writer.frame if views.writer is not None else None,
        flush_each=live,
    )
    return writers, closing


def close_outputs(writers: Writers, closing: list[Sink], exporter: Any) -> None:
    """Flush standard output and close the parent's outputs: all of them, then the first
    failure."""
    failure: BaseException | None = None
    steps: list[Callable[[], None]] = []
    if writers.stdout is not None:
        steps.append(writers.stdout.flush)
    steps.extend(sink.close for sink in closing)
    if exporter is not None:
        steps.append(exporter.close)
    for step in steps:
        try:
            step()
        except (OutputError, BrokenPipeError) as exc:
            failure = failure or exc
        except OSError as exc:
            failure = failure or OutputError(f"cannot write standard output: {exc.strerror or exc}")
    if failure is not None:
        raise failure


def close_all(
    views: Any, writers: Writers, closing: list[Sink], exporter: Any, reporter: Any
) -> None:
    """The end of a run: the status lines stop, the outputs close, the last problems show."""
    views.stop_lines()
    try:
        close_outputs(writers, closing, exporter)
        views.close()
    finally:
        reporter.flush()


def end_of_run(
    args: argparse.Namespace, parent: Parent, views: Any, closing: list[Sink], exporter: Any
) -> int:
    """As without workers (the summary, the files written, the last line and the exit
    status), with the totals of every worker and the HEP outputs they ran."""
    from captagent_tls import cli

    return cli.end_of_run(
        args, parent.totals(), [parent.sinks_summary(), *closing], views, exporter
    )


# -- a capture file ----------------------------------------------------------------------------


def run_offline_workers(args: argparse.Namespace, workers: int) -> int:
    from captagent_tls import cli
    from captagent_tls.capture.bpf import FrameFilter
    from captagent_tls.views.setup import Views

    keys = KeyStore()
    cli.load_rsa_key_files(args, keys)
    cli.load_key_log_files(args, keys)
    if args.filter:
        FrameFilter(args.filter)  # a bad filter: one line from here, not one per worker
    views = Views(args, live=False)
    writers, closing = parent_outputs(args, views, live=False)
    reporter = ProblemReporter(views.stderr)
    exporter = cli.KeyLogExporter(args.export_keylog) if args.export_keylog else None
    cli.embedded_secrets(args.read, keys)
    parent = Parent(
        args,
        workers,
        live=False,
        keys=keys,
        writers=writers,
        reporter=reporter,
        on_secret=views.on_secret(exporter.write if exporter else None),
        keys_may_arrive=False,
    )
    interrupted = False

    def on_interrupt(_signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        parent.signal_workers(signal.SIGTERM)  # they stop reading and finish what they have

    log.info("reading %s with %d workers", args.read, workers)
    if views.line is not None:  # a progress bar on the terminal
        from captagent_tls.views.progress import WorkersFileProgress

        parent.bar = WorkersFileProgress(views.line, args.read)
    parent.fork_all()
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while parent.running() and parent.failure is None:
            parent.poll(1.0)
    except BaseException:
        parent.kill_workers()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        if parent.failure is not None:
            parent.kill_workers()
        with contextlib.suppress(OutputError, BrokenPipeError):
            parent.merger.write_ready()
        if parent.bar is not None:
            parent.bar.close(
                complete=parent.failure is None
                and not interrupted
                and not parent.slots[0].notes.get("error")
            )
        close_all(views, writers, closing, exporter, reporter)
    if parent.failure is not None:
        raise cli.UserError(parent.failure)
    notes = parent.slots[0].notes
    if "error" in notes:
        text, had_format = notes["error"]
        if not had_format:
            raise CaptureError(text)
        raise cli.UserError(
            f"{text}; the {parent.totals()['packets']} packets before it were processed"
        )
    if "malformed" in notes:
        print(f"captagent-tls: warning: {args.read}: {notes['malformed']}", file=sys.stderr)
    if "truncated_at" in notes:
        print(
            f"captagent-tls: warning: {args.read} is truncated (a record cut at byte "
            f"{notes['truncated_at']}); everything before the cut was processed",
            file=sys.stderr,
        )
    status = end_of_run(args, parent, views, closing, exporter)
    return 130 if interrupted else status


# -- live --------------------------------------------------------------------------------------


def run_live_workers(args: argparse.Namespace, workers: int) -> int:
    from captagent_tls import cli
    from captagent_tls.keysources import KeyLogListener
    from captagent_tls.views.setup import Views

    keys = KeyStore()
    cli.load_rsa_key_files(args, keys, live=True)
    listener_keys = KeyStore(max_entries=1024)  # the lines are checked here, kept by workers
    parent: Parent | None = None

    def forward(text: str) -> None:
        if parent is not None:
            parent.forward_keys(text)

    listeners = [
        KeyLogListener(url, listener_keys, args.keylog_listen_remote, forward=forward)
        for url in args.keylog_listen
    ]
    views = Views(args, live=True)
    writers, closing = parent_outputs(args, views, live=True)
    exporter = cli.KeyLogExporter(args.export_keylog) if args.export_keylog else None
    reporter = ProblemReporter(views.stderr)
    parent = Parent(
        args,
        workers,
        live=True,
        keys=keys,
        writers=writers,
        reporter=reporter,
        on_secret=views.on_secret(exporter.write if exporter else None),
        keys_may_arrive=bool(args.keylog or args.keylog_listen),
    )
    parent.listener_stats = listener_keys.source_totals
    parent.fork_all([sock.fileno() for listener in listeners for sock in listener.sockets()])

    signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)

    announced = False
    started = time.monotonic()
    with wake_on_signals(on_signal) as wake_read:
        try:
            if args.user:
                cli.drop_privileges(args.user)
            if args.metrics:
                start_metrics(args.metrics, parent.totals)
            views.start_status(parent.totals)
            next_stats = time.monotonic() + args.stats_interval
            while parent.failure is None:
                watched: list[Any] = [wake_read]
                for listener in listeners:
                    watched.extend(listener.sockets())
                ready = parent.poll(0.2, watched)
                if wake_read in ready:
                    with contextlib.suppress(BlockingIOError):
                        wake_read.recv(4096)
                ready_fds = {r if isinstance(r, int) else r.fileno() for r in ready}
                for listener in listeners:
                    listener.handle(ready_fds)
                while signals:
                    signum = signals.pop(0)
                    if signum == signal.SIGHUP:
                        log.warning("SIGHUP: every worker reloads its keys and key logs")
                        parent.signal_workers(signal.SIGHUP)
                    else:
                        parent.stopping = True
                if parent.stopping:
                    break
                if not announced and all(slot.ready for slot in parent.slots):
                    announced = parent.started_all = True
                    log.info(
                        "capturing on %s with %d workers (pids %s)",
                        args.interface,
                        workers,
                        ", ".join(str(slot.pid) for slot in parent.slots),
                    )
                elif not announced and time.monotonic() - started > READY_TIMEOUT_S:
                    parent.failure = (
                        f"the workers did not open the capture within {READY_TIMEOUT_S:.0f} s"
                    )
                parent.restart_due()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + args.stats_interval
                    stats = format_stats(
                        parent.totals(), [parent.sinks_summary()], verbose=args.verbose > 0
                    )
                    log.warning("%s", stats)
            if parent.failure is None:
                parent.stop_workers()
            else:
                parent.kill_workers()
        except BaseException:
            parent.kill_workers()
            raise
        finally:
            for listener in listeners:
                listener.close()
            with contextlib.suppress(OutputError, BrokenPipeError):
                parent.merger.write_ready()
            close_all(views, writers, closing, exporter, reporter)
    if parent.failure is not None:
        raise cli.UserError(parent.failure)
    return end_of_run(args, parent, views, closing, exporter)


def start_metrics(address: str, totals: Callable[[], Counters]) -> None:
    from captagent_tls.cli import UserError
    from captagent_tls.metrics import AgentCollector, serve_metrics

    try:
        serve_metrics(address, AgentCollector(totals))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot serve metrics on {address}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    log.info("metrics on http://%s/metrics", address)
