"""Reading a capture file in one process (the workers' parent is :mod:`.with_workers`)."""

from __future__ import annotations

from captagent_tls.assembly.keys import (
    embedded_secrets,
    key_log_exporter,
    load_key_log_files,
    load_rsa_key_files,
)
from captagent_tls.assembly.outputs import build_sinks, finish
from captagent_tls.assembly.pipeline import build_pipeline, pipeline_options, snapshot
from captagent_tls.capture import CaptureError
from captagent_tls.capture.bpf import FrameFilter
from captagent_tls.capture.files import CaptureReader
from captagent_tls.errors import UserError
from captagent_tls.report import ProblemReporter
from captagent_tls.runs.description import RunDescription
from captagent_tls.runs.ending import end_of_run, warn_malformed, warn_truncated
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.views.setup import Views


def run_offline(description: RunDescription) -> int:
    settings = description.settings
    if settings.keylog_listen:
        raise UserError("--keylog-listen needs live capture (-i)")
    if description.workers > 1:
        from captagent_tls.runs.with_workers import run_offline_workers

        return run_offline_workers(description)
    path = description.source
    keys = KeyStore()
    load_rsa_key_files(settings, keys)
    load_key_log_files(settings, keys)
    frame_filter = FrameFilter(settings.filter) if settings.filter else None
    views = Views(settings, live=False)
    sinks = build_sinks(settings, live=False, views=views)
    reporter = ProblemReporter(views.stderr)
    exporter = key_log_exporter(settings)
    embedded_secrets(path, keys)
    options = pipeline_options(settings, False)
    if path == "-":
        # standard input may be a stream (tcpdump -w - | ...) that pauses between packets: a
        # pool thread's result would wait for the next packet, so RSA runs in the loop
        options.rsa_threads = 0
    pipeline = build_pipeline(
        keys,
        sinks,
        reporter.report,
        options,
        on_secret=views.on_secret(exporter.write if exporter else None),
    )

    def secrets_in_stream(text: bytes) -> None:
        if load_key_log(text.decode("utf-8", "replace"), keys).added:
            pipeline.keys_added()

    reader = CaptureReader(path, on_secrets=secrets_in_stream)
    try:
        with reader:
            feed = views.feed(pipeline.frame)
            frames = views.frames(reader, pipeline, path)
            if frame_filter is None:
                for frame in frames:
                    feed(frame)
            else:
                matches = frame_filter.matches
                for frame in frames:
                    if matches(frame):
                        feed(frame)
    except CaptureError as exc:
        if not reader.format:
            raise
        raise UserError(
            f"{exc}; the {pipeline.stats.frames} packets before it were processed"
        ) from None
    finally:
        # whatever was read, even from a broken file, is decrypted and delivered (the bar
        # stays up meanwhile: what waited for keys is counted in its last figures)
        try:
            finish(pipeline.finish, sinks, exporter)
        finally:
            views.stop_lines()
            views.close()
            reporter.flush()
    if reader.malformed:
        warn_malformed(path, reader.describe_malformed())
    if reader.truncated:
        warn_truncated(path, reader.truncated_at)
    return end_of_run(settings, snapshot(pipeline, sinks), sinks, views, exporter)
