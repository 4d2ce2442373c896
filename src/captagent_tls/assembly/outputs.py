"""The outputs of a run, made from its settings: HEP, ``-w``, the report, JSON lines and the
console view; and their end (flushed and closed, all of them, even when one fails)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from captagent_tls.config.settings import Settings
from captagent_tls.config.values import parse_queue_limits
from captagent_tls.errors import UserError
from captagent_tls.sinks import OutputError, Sink
from captagent_tls.sinks.jsonl import JsonLinesSink
from captagent_tls.sinks.pcapfile import PcapFileSink
from captagent_tls.views.setup import Views, console_wanted

log = logging.getLogger("captagent_tls")


class Closeable(Protocol):
    def close(self) -> None: ...


OFFLINE_WAIT_FOR_ROOM_S = 30.0  # then a collector that does not take anything is given up


def hep_sink(settings: Settings, live: bool, warn: bool = True) -> Sink:
    from captagent_tls.sinks.hep import HepOptions, HepSink, TlsOptions

    insecure = settings.hep_insecure
    if warn and insecure and any(a.lower().startswith("tls://") for a in settings.hep):
        log.warning("--hep-insecure: the certificates of tls:// collectors are not verified")
    options = HepOptions(
        capture_id=settings.hep_id,
        password=settings.hep_password,
        ip_proto_tls=settings.hep_ip_proto,
        node_name=settings.hep_node_name,
        correlation_id=settings.hep_correlation,
    )
    limits = parse_queue_limits(settings.hep_queue)
    if not live:  # a file can wait for a slow collector: nothing is dropped for speed
        limits = dataclasses.replace(limits, wait_for_room=OFFLINE_WAIT_FOR_ROOM_S)
    return HepSink(
        settings.hep,
        options,
        limits=limits,
        tls=TlsOptions(ca_file=settings.hep_ca, insecure=insecure),
    )


def pcap_file_sink(settings: Settings, flush_each: bool) -> PcapFileSink | None:
    """``-w FILE``: the decrypted SIP messages as a pcap Wireshark opens as SIP."""
    if not settings.write:
        return None
    try:
        out = open(settings.write, "wb")  # noqa: SIM115 - closed by the sink
    except OSError as exc:
        raise UserError(f"cannot write {settings.write}: {exc.strerror or exc}") from None
    return PcapFileSink(out, flush_each=flush_each, path=settings.write)


def media_pcap_sink(settings: Settings, flush_each: bool) -> Sink | None:
    """``--media-pcap FILE``: the calls' RTP and RTCP, decrypted (mode 0600)."""
    if not settings.media_pcap:
        return None
    if not settings.media:
        raise UserError("--media-pcap needs the media stage: drop --no-media")
    from captagent_tls.sinks.media_pcap import MediaPcapSink

    return MediaPcapSink(settings.media_pcap, flush_each)


def build_sinks(settings: Settings, live: bool, views: Views) -> list[Sink]:
    sinks: list[Sink] = []
    # each message reaches the file or pipe as it comes when packets come as they are sent
    flush_each = live or settings.read == "-"
    if settings.hep:
        sinks.append(hep_sink(settings, live))
    pcap = pcap_file_sink(settings, flush_each)
    if pcap is not None:
        sinks.append(pcap)
    media = media_pcap_sink(settings, flush_each)
    if media is not None:
        sinks.append(media)
    report = views.report_sink()
    if report is not None:
        sinks.append(report)
    if settings.json:
        sinks.append(JsonLinesSink(views.stdout, flush_each=flush_each))
    if console_wanted(settings):
        sinks.append(views.console(flush_each=flush_each))
    return sinks


def close_all(steps: Sequence[Callable[[], None]]) -> None:
    """Run every step (deliver what is complete, close each output), even when one cannot
    be written (the HEP queues are still flushed); then raise the first failure."""
    failure: BaseException | None = None
    for step in steps:
        try:
            step()
        except (OutputError, BrokenPipeError) as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def finish(
    deliver: Callable[[], None], sinks: Sequence[Sink], exporter: Closeable | None = None
) -> None:
    """The end of the input: ``deliver`` what is complete (the pipeline's finish), then
    close every output and the key-log export, as :func:`close_all` does."""
    steps = [deliver, *(sink.close for sink in sinks)]
    if exporter is not None:
        steps.append(exporter.close)
    close_all(steps)
