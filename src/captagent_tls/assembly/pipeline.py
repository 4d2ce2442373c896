"""The pipeline of a run, made from its settings, and the snapshot of every counter."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from captagent_tls.capture.live import KernelStats
from captagent_tls.config.settings import Settings
from captagent_tls.counters import Counters
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.sinks import Sink
from captagent_tls.tls.events import SessionSecret, TlsProblem
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.rsa_pool import RSA_RELEASE_AFTER_FRAMES
from captagent_tls.tls.tracker import HoldLimits


def pipeline_options(
    settings: Settings, keys_may_arrive: bool, live: bool = False
) -> PipelineOptions:
    """The options' values were checked as they were read (captagent_tls.config.options)."""
    hold = HoldLimits(
        max_wait_s=settings.key_wait,
        max_bytes_per_flow=min(settings.key_hold_flow, settings.key_hold_total),
        max_bytes_total=settings.key_hold_total,
    )
    return PipelineOptions(
        flow_timeout_s=settings.flow_timeout,
        max_direction_bytes=settings.max_flow_buffer,
        max_flows=settings.max_flows,
        session_cache_size=settings.session_cache,
        keys_may_arrive=keys_may_arrive,
        hold=hold,
        # live, RSA results are taken up as soon as they are ready; reading a file, at a
        # frame fixed by the capture, so that every run gives the same output
        rsa_release_after=None if live else RSA_RELEASE_AFTER_FRAMES,
        media=settings.media,
        decrypt_rtp=bool(settings.media and settings.media_pcap),
    )


def build_pipeline(
    keys: KeyStore,
    sinks: list[Sink],
    on_problem: Callable[[TlsProblem], None] | None,
    options: PipelineOptions,
    on_secret: Callable[[SessionSecret], None] | None,
) -> Pipeline:
    """The stages of a run, in order, with the application stages registered."""
    return Pipeline(keys, sinks, on_problem, options, on_secret=on_secret)


def snapshot(
    pipeline: Pipeline, sinks: Sequence[Sink], kernel: KernelStats | None = None
) -> Counters:
    """Every counter of the run, once: for the summary, /metrics and the status line."""
    counters = pipeline.counters()
    for sink in sinks:
        sink.add_counters(counters)
    if kernel is not None:
        kernel.add_counters(counters)
    return counters
