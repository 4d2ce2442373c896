"""Capturing live in one process (the workers' parent is :mod:`.with_workers`)."""

from __future__ import annotations

import logging

from captagent_tls.assembly.keys import key_log_exporter, load_rsa_key_files
from captagent_tls.assembly.outputs import build_sinks, finish
from captagent_tls.assembly.pipeline import build_pipeline, pipeline_options, snapshot
from captagent_tls.assembly.process import drop_privileges, import_what_packets_may_need
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.runs.description import RunDescription
from captagent_tls.runs.ending import end_of_run
from captagent_tls.tls.keys import KeyStore
from captagent_tls.views.setup import Views

log = logging.getLogger("captagent_tls")


def run_live(description: RunDescription) -> int:
    if description.workers > 1:
        from captagent_tls.runs.with_workers import run_live_workers

        return run_live_workers(description)
    from captagent_tls.agent import Agent
    from captagent_tls.keysources import KeyLogFile, KeyLogListener

    settings = description.settings
    keys = KeyStore()
    load_rsa_key_files(settings, keys, live=True)
    key_files = [KeyLogFile(path, keys) for path in settings.keylog]
    for source in key_files:
        source.poll()
    listeners = [
        KeyLogListener(url, keys, settings.keylog_listen_remote) for url in settings.keylog_listen
    ]
    views = Views(settings, live=True)
    sinks = build_sinks(settings, live=True, views=views)
    exporter = key_log_exporter(settings)
    reporter = ProblemReporter(views.stderr)
    pipeline = build_pipeline(
        keys,
        sinks,
        reporter.report,
        pipeline_options(settings, keys_may_arrive=bool(key_files or listeners), live=True),
        on_secret=views.on_secret(exporter.write if exporter else None),
    )
    capture = views.live_capture(
        description.source,
        settings.filter,
        settings.promisc,
        settings.snaplen,
        settings.buffer_size,
    )
    if settings.user:
        import_what_packets_may_need()
        drop_privileges(settings.user)

    def report() -> None:
        stats = snapshot(pipeline, sinks, agent.kernel)
        log.warning("%s", format_stats(stats, sinks, verbose=settings.verbose > 0))

    agent = Agent(
        capture,
        pipeline,
        key_files,
        listeners,
        reload_keys=lambda: load_rsa_key_files(settings, keys, live=True),
        stats_interval_s=settings.stats_interval,
        report_stats=report,
    )
    if settings.metrics:
        from captagent_tls.metrics import start_metrics

        start_metrics(settings.metrics, lambda: snapshot(pipeline, sinks, agent.kernel))
    log.info("capturing on %s", description.source)
    views.start_status(lambda: snapshot(pipeline, sinks, agent.kernel))
    try:
        agent.run()
    finally:
        views.stop_lines()
        finish(pipeline.finish, sinks, exporter)
        views.close()
        reporter.flush()
    return end_of_run(settings, snapshot(pipeline, sinks, agent.kernel), sinks, views, exporter)
