"""Running a job on workers: the parent's outputs, the offline run (fails if a worker dies)
and the live run (restarts a worker that dies), and the summary and metrics they report.

The parent process itself (starting, watching and stopping workers, merging what they send)
is :mod:`captagent_tls.workers.parent`; each worker builds its pipeline through the same
assembly as a run in one process (:mod:`captagent_tls.workers.worker`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from captagent_tls.agent import wake_on_signals
from captagent_tls.assembly.keys import (
    KeyLogExporter,
    embedded_secrets,
    key_log_exporter,
    load_key_log_files,
    load_rsa_key_files,
)
from captagent_tls.assembly.outputs import close_all, media_pcap_sink, pcap_file_sink
from captagent_tls.assembly.process import drop_privileges
from captagent_tls.capture import CaptureError
from captagent_tls.config.settings import Settings
from captagent_tls.errors import UserError
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.runs.description import RunDescription
from captagent_tls.runs.ending import end_of_run, warn_malformed, warn_truncated
from captagent_tls.sinks import OutputError, Sink, write_failed
from captagent_tls.tls.keys import KeyStore
from captagent_tls.views.setup import Views, console_wanted
from captagent_tls.workers.outputs import Writers
from captagent_tls.workers.parent import READY_TIMEOUT_S, Parent

if TYPE_CHECKING:
    from captagent_tls.sinks.media_pcap import MediaPcapSink

log = logging.getLogger("captagent_tls")


def parent_outputs(settings: Settings, views: Views, live: bool) -> tuple[Writers, list[Sink]]:
    """The outputs written by the parent, and the sinks among them to close (in order)."""
    closing: list[Sink] = []
    pcap_sink = pcap_file_sink(settings, flush_each=live)
    if pcap_sink is not None:
        closing.append(pcap_sink)
    media = media_pcap_sink(settings, flush_each=live)
    if media is not None:
        closing.append(media)
    report = views.report_sink()
    if report is not None:
        closing.append(report)
    stdout = views.stdout if (settings.json or console_wanted(settings)) else None
    writers = Writers(
        stdout,
        pcap_sink,
        report,
        views.writer.frame if views.writer is not None else None,
        flush_each=live,
        media=cast("MediaPcapSink | None", media),
    )
    return writers, closing


def close_parent_outputs(
    views: Views,
    writers: Writers,
    closing: list[Sink],
    exporter: KeyLogExporter | None,
    reporter: ProblemReporter,
) -> None:
    """The end of a run: the status lines stop, standard output is flushed, the outputs
    close (all of them, then the first failure), the last problems show."""
    views.stop_lines()
    stdout = writers.stdout

    def flush_stdout() -> None:
        if stdout is not None:
            try:
                stdout.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise write_failed(stdout, exc) from None

    try:
        steps = [flush_stdout, *(sink.close for sink in closing)]
        if exporter is not None:
            steps.append(exporter.close)
        close_all(steps)
        views.close()
    finally:
        reporter.flush()


def workers_end_of_run(
    settings: Settings,
    parent: Parent,
    views: Views,
    closing: list[Sink],
    exporter: KeyLogExporter | None,
) -> int:
    """As without workers, with the totals of every worker and the HEP outputs they ran."""
    return end_of_run(
        settings, parent.totals(), [parent.sinks_summary(), *closing], views, exporter
    )


# -- a capture file ----------------------------------------------------------------------------


def run_offline_workers(description: RunDescription) -> int:
    from captagent_tls.capture.bpf import FrameFilter

    settings, path, workers = description.settings, description.source, description.workers
    keys = KeyStore()
    load_rsa_key_files(settings, keys)
    load_key_log_files(settings, keys)
    if settings.filter:
        FrameFilter(settings.filter)  # a bad filter: one line from here, not one per worker
    views = Views(settings, live=False)
    writers, closing = parent_outputs(settings, views, live=False)
    reporter = ProblemReporter(views.stderr)
    exporter = key_log_exporter(settings)
    embedded_secrets(path, keys)
    parent = Parent(
        settings,
        path,
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

    log.info("reading %s with %d workers", path, workers)
    if views.line is not None:  # a progress bar on the terminal
        from captagent_tls.views.progress import WorkersFileProgress

        parent.bar = WorkersFileProgress(views.line, path)
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
        close_parent_outputs(views, writers, closing, exporter, reporter)
    if parent.failure is not None:
        raise UserError(parent.failure)
    notes = parent.slots[0].notes
    if "error" in notes:
        text, had_format = notes["error"]
        if not had_format:
            raise CaptureError(text)
        raise UserError(
            f"{text}; the {parent.totals()['packets']} packets before it were processed"
        )
    if "malformed" in notes:
        warn_malformed(path, notes["malformed"])
    if "truncated_at" in notes:
        warn_truncated(path, notes["truncated_at"])
    status = workers_end_of_run(settings, parent, views, closing, exporter)
    return 130 if interrupted else status


# -- live --------------------------------------------------------------------------------------


def run_live_workers(description: RunDescription) -> int:
    from captagent_tls.keysources import KeyLogListener

    settings, workers = description.settings, description.workers
    keys = KeyStore()
    load_rsa_key_files(settings, keys, live=True)
    listener_keys = KeyStore(max_entries=1024)  # the lines are checked here, kept by workers
    parent: Parent | None = None

    def forward(text: str) -> None:
        if parent is not None:
            parent.forward_keys(text)

    listeners = [
        KeyLogListener(url, listener_keys, settings.keylog_listen_remote, forward=forward)
        for url in settings.keylog_listen
    ]
    views = Views(settings, live=True)
    writers, closing = parent_outputs(settings, views, live=True)
    exporter = key_log_exporter(settings)
    reporter = ProblemReporter(views.stderr)
    parent = Parent(
        settings,
        description.source,
        workers,
        live=True,
        keys=keys,
        writers=writers,
        reporter=reporter,
        on_secret=views.on_secret(exporter.write if exporter else None),
        keys_may_arrive=bool(settings.keylog or settings.keylog_listen),
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
            if settings.user:
                drop_privileges(settings.user)
            if settings.metrics:
                from captagent_tls.metrics import start_metrics

                start_metrics(settings.metrics, parent.totals)
            views.start_status(parent.totals)
            next_stats = time.monotonic() + settings.stats_interval
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
                        description.source,
                        workers,
                        ", ".join(str(slot.pid) for slot in parent.slots),
                    )
                elif not announced and time.monotonic() - started > READY_TIMEOUT_S:
                    parent.failure = (
                        f"the workers did not open the capture within {READY_TIMEOUT_S:.0f} s"
                    )
                parent.restart_due()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + settings.stats_interval
                    stats = format_stats(
                        parent.totals(), [parent.sinks_summary()], verbose=settings.verbose > 0
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
            close_parent_outputs(views, writers, closing, exporter, reporter)
    if parent.failure is not None:
        raise UserError(parent.failure)
    return workers_end_of_run(settings, parent, views, closing, exporter)
