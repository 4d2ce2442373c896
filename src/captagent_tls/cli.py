"""Command line: ``captagent-tls -r capture.pcap -k server.key [--json | --hep HOST:PORT]`` or
``captagent-tls -i eth0 -f "tcp port 5061" -k server.key --hep tcp://homer:9061``.

Flags follow tcpdump/tshark habits (-r, -i, -f, -s, -B).  Every error a user can cause ends in
one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import stat
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NoReturn

from captagent_tls.capture import CaptureError
from captagent_tls.capture.bpf import FrameFilter
from captagent_tls.capture.files import CaptureReader
from captagent_tls.capture.live import KernelStats
from captagent_tls.config import ConfigError
from captagent_tls.config.parser import add_options
from captagent_tls.config.values import parse_queue_limits
from captagent_tls.counters import Counters
from captagent_tls.errors import UserFacingError
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.sinks import OutputError, Sink, write_failed
from captagent_tls.sinks.jsonl import JsonLinesSink
from captagent_tls.sinks.pcapfile import PcapFileSink
from captagent_tls.tls.events import SessionSecret
from captagent_tls.tls.keylog import KeyLogResult, load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.rsa_pool import RSA_RELEASE_AFTER_FRAMES
from captagent_tls.tls.tracker import HoldLimits
from captagent_tls.views.setup import Views, console_wanted

EXIT_ERROR = 1
OFFLINE_WAIT_FOR_ROOM_S = 30.0  # then a collector that does not take anything is given up

log = logging.getLogger("captagent_tls")


class UserError(UserFacingError):
    pass


def one_line(text: str) -> str:
    """A message as one line: control characters (a newline in a file name...) and bytes
    that are not UTF-8 (surrogates, from argv) are shown escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class _Parser(argparse.ArgumentParser):
    """argparse, with every mistake on the command line in one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: every option of the table (captagent_tls.config.options)."""
    parser = _Parser(
        prog="captagent-tls",
        description="Rebuild TCP streams, decrypt TLS and pass on the SIP inside: to the "
        "console, as JSON lines, or to a HOMER collector as HEPv3.",
    )
    return add_options(parser)


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """The command line, over the config files (-c, --captagent-config), over defaults."""
    args = parser.parse_args(argv)
    if not (args.config or args.captagent_config):
        return args
    from captagent_tls.config.layering import resolve

    file_values: dict[str, object] = {}
    if args.captagent_config:
        from captagent_tls.config.captagent import load_captagent

        values, warnings = load_captagent(args.captagent_config)
        for line in warnings:
            print(f"captagent-tls: warning: {line}", file=sys.stderr)
        file_values.update(values)
    if args.config:
        from captagent_tls.config.toml import load_native

        file_values.update(load_native(args.config))  # our own file wins over captagent's
    for dest in sorted(file_values.keys() - vars(args).keys()):
        print(
            f"captagent-tls: warning: {dest}: not supported by this version; ignored",
            file=sys.stderr,
        )
        del file_values[dest]
    return resolve(parser, argv, file_values)


def configure_logging(verbose: int) -> None:
    """Warnings by default, -v information, -vv debugging; every line names the program."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="captagent-tls: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_arguments(parser, argv)
    except ConfigError as exc:
        print(f"captagent-tls: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging(args.verbose)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Buffered whatever PYTHONUNBUFFERED says (container images often set it): live runs
        # and standard input flush after each message themselves, a terminal gets lines, and a
        # file or pipe is written 8 KB at a time instead of one system call per message (10 %
        # of a bulk run's time).
        try:
            terminal = sys.stdout.isatty()
        except (OSError, ValueError):
            terminal = False
        sys.stdout.reconfigure(
            encoding="utf-8",
            errors="backslashreplace",
            write_through=False,
            line_buffering=terminal,
        )
    if args.read and args.interface:
        parser.error("give a capture file (-r FILE) or an interface (-i IFACE), not both")
    if not (args.read or args.interface):
        parser.error("give a capture file (-r FILE) or an interface (-i IFACE)")
    try:
        return run_live(args) if args.interface else run_offline(args)
    except UserFacingError as exc:
        print(f"captagent-tls: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        sys.stderr.close()  # the reader of our output went away (| head): not an error
        return 0
    except KeyboardInterrupt:
        return 130


# -- keys ------------------------------------------------------------------------------------


def load_rsa_key_files(args: argparse.Namespace, keys: KeyStore, live: bool = False) -> None:
    if not args.key:
        keys.clear_rsa_keys()
        return
    from captagent_tls.keyfiles import key_file_mode_warning, load_rsa_keys

    # the bytes that were typed, even when they are not UTF-8 (argv keeps them as surrogates)
    password = os.fsencode(args.key_password) if args.key_password is not None else None
    loaded = [(path, load_rsa_keys(path, password)) for path in args.key]
    keys.clear_rsa_keys()
    for path, private_keys in loaded:
        warning = key_file_mode_warning(path) if live else None
        if warning:
            log.warning("%s", warning)
        for private_key in private_keys:
            keys.add_rsa_key(private_key, path)


def load_key_log_files(args: argparse.Namespace, keys: KeyStore) -> None:
    for path in args.keylog:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read key log {path}: {exc.strerror or exc}") from None
        report_key_log(path, load_key_log(text, keys))


def report_key_log(source: str, result: KeyLogResult) -> None:
    if result.malformed_lines:
        print(f"captagent-tls: warning: {source}: {result.describe_malformed()}", file=sys.stderr)


def embedded_secrets(path: str, keys: KeyStore) -> None:
    """Secrets in pcapng Decryption Secrets Blocks, read before decryption starts."""
    if path == "-":
        return  # standard input cannot be read twice: blocks apply where they appear

    def add(text: bytes) -> None:
        report_key_log(
            f"{path} (embedded secrets)", load_key_log(text.decode("utf-8", "replace"), keys)
        )

    with CaptureReader(path, on_secrets=add) as reader:
        if reader.is_pcapng:
            # damage is reported by the pass that decrypts: what comes before it still counts
            with contextlib.suppress(CaptureError):
                for _ in reader:
                    pass


class KeyLogExporter:
    """Writes CLIENT_RANDOM lines for sessions whose secret did not come from a key log.

    The file holds secrets: it is created 0600.  A session seen again (a resumption) is not
    written twice, as far as the last REMEMBERED sessions go: a daemon must not remember every
    session it ever saw, and a line written twice does no harm.
    """

    REMEMBERED = 65_536

    def __init__(self, path: str):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self.out = open(fd, "a", encoding="ascii")  # noqa: SIM115 - closed in close()
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise UserError(f"cannot write key log {path}: {exc.strerror or exc}") from None
        self.path = path
        if stat.S_ISREG(mode) and mode & 0o077:
            log.warning(
                "%s is readable or writable by group or others, and it will hold "
                "session secrets (chmod 600 it)",
                path,
            )
        self._written: OrderedDict[bytes, None] = OrderedDict()
        self.lines = 0

    def write(self, secret: SessionSecret) -> None:
        if secret.source == "key log" or secret.client_random in self._written:
            return
        self._written[secret.client_random] = None
        if len(self._written) > self.REMEMBERED:
            self._written.popitem(last=False)
        try:
            self.out.write(
                f"CLIENT_RANDOM {secret.client_random.hex()} {secret.master_secret.hex()}\n"
            )
            self.out.flush()
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None
        self.lines += 1

    def close(self) -> None:
        try:
            self.out.close()
        except OSError as exc:
            raise write_failed(self.out, exc, self.path) from None

    def closing_line(self) -> str:
        return (
            f"exported key log: {self.path}: {self.lines} CLIENT_RANDOM lines added "
            "(mode 0600: it holds secrets)"
        )


# -- outputs ---------------------------------------------------------------------------------


def hep_sink(args: argparse.Namespace, live: bool, warn: bool = True) -> Sink:
    from captagent_tls.sinks.hep import HepOptions, HepSink, TlsOptions

    if warn and args.hep_insecure and any(a.lower().startswith("tls://") for a in args.hep):
        log.warning("--hep-insecure: the certificates of tls:// collectors are not verified")
    options = HepOptions(
        capture_id=args.hep_id,
        password=args.hep_password,
        ip_proto_tls=args.hep_ip_proto,
        node_name=args.hep_node_name,
        correlation_id=args.hep_correlation,
    )
    limits = parse_queue_limits(args.hep_queue)
    if not live:  # a file can wait for a slow collector: nothing is dropped for speed
        limits = dataclasses.replace(limits, wait_for_room=OFFLINE_WAIT_FOR_ROOM_S)
    return HepSink(
        args.hep,
        options,
        limits=limits,
        tls=TlsOptions(ca_file=args.hep_ca, insecure=args.hep_insecure),
    )


def build_sinks(args: argparse.Namespace, live: bool, views: Views) -> list[Sink]:
    sinks: list[Sink] = []
    # each message reaches the file or pipe as it comes when packets come as they are sent
    flush_each = live or args.read == "-"
    if args.hep:
        sinks.append(hep_sink(args, live))
    if args.write:
        try:
            out = open(args.write, "wb")  # noqa: SIM115 - closed by the sink
            sinks.append(PcapFileSink(out, flush_each=flush_each, path=args.write))
        except OSError as exc:
            raise UserError(f"cannot write {args.write}: {exc.strerror or exc}") from None
    report = views.report_sink()
    if report is not None:
        sinks.append(report)
    if args.json:
        sinks.append(JsonLinesSink(views.stdout, flush_each=flush_each))
    if console_wanted(args):
        sinks.append(views.console(flush_each=flush_each))
    return sinks


def pipeline_options(
    args: argparse.Namespace, keys_may_arrive: bool, live: bool = False
) -> PipelineOptions:
    """The options' values were checked as they were read (captagent_tls.config.options)."""
    hold = HoldLimits(
        max_wait_s=args.key_wait,
        max_bytes_per_flow=min(args.key_hold_flow, args.key_hold_total),
        max_bytes_total=args.key_hold_total,
    )
    return PipelineOptions(
        flow_timeout_s=args.flow_timeout,
        max_direction_bytes=args.max_flow_buffer,
        max_flows=args.max_flows,
        session_cache_size=args.session_cache,
        keys_may_arrive=keys_may_arrive,
        hold=hold,
        # live, RSA results are taken up as soon as they are ready; reading a file, at a
        # frame fixed by the capture, so that every run gives the same output
        rsa_release_after=None if live else RSA_RELEASE_AFTER_FRAMES,
    )


def finish(pipeline: Pipeline, sinks: list[Sink], exporter: KeyLogExporter | None) -> None:
    """Deliver what is complete, flush the outputs and close them: all of them, even when
    one cannot be written (the HEP queues are still flushed); then the first failure."""
    steps = [pipeline.finish, *(sink.close for sink in sinks)]
    if exporter is not None:
        steps.append(exporter.close)
    failure: BaseException | None = None
    for step in steps:
        try:
            step()
        except (OutputError, BrokenPipeError) as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


# -- offline ---------------------------------------------------------------------------------


def run_offline(args: argparse.Namespace) -> int:
    if args.keylog_listen:
        raise UserError("--keylog-listen needs live capture (-i)")
    from captagent_tls.workers import workers_for

    workers = workers_for(args, live=False)
    if workers > 1:
        from captagent_tls.workers.runs import run_offline_workers

        return run_offline_workers(args, workers)
    keys = KeyStore()
    load_rsa_key_files(args, keys)
    load_key_log_files(args, keys)
    frame_filter = FrameFilter(args.filter) if args.filter else None
    views = Views(args, live=False)
    sinks = build_sinks(args, live=False, views=views)
    reporter = ProblemReporter(views.stderr)
    exporter = KeyLogExporter(args.export_keylog) if args.export_keylog else None
    embedded_secrets(args.read, keys)
    options = pipeline_options(args, False)
    if args.read == "-":
        # standard input may be a stream (tcpdump -w - | ...) that pauses between packets: a
        # pool thread's result would wait for the next packet, so RSA runs in the loop
        options.rsa_threads = 0
    pipeline = Pipeline(
        keys,
        sinks,
        reporter.report,
        options,
        on_secret=views.on_secret(exporter.write if exporter else None),
    )

    def secrets_in_stream(text: bytes) -> None:
        if load_key_log(text.decode("utf-8", "replace"), keys).added:
            pipeline.keys_added()

    reader = CaptureReader(args.read, on_secrets=secrets_in_stream)
    try:
        with reader:
            feed = views.feed(pipeline.frame)
            frames = views.frames(reader, pipeline)
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
            finish(pipeline, sinks, exporter)
        finally:
            views.stop_lines()
            views.close()
            reporter.flush()
    if reader.malformed:
        print(
            f"captagent-tls: warning: {args.read}: {reader.describe_malformed()}", file=sys.stderr
        )
    if reader.truncated:
        print(
            f"captagent-tls: warning: {args.read} is truncated (a record cut at byte "
            f"{reader.truncated_at}); everything before the cut was processed",
            file=sys.stderr,
        )
    return end_of_run(args, snapshot(pipeline, sinks), sinks, views, exporter)


# -- live ------------------------------------------------------------------------------------


def run_live(args: argparse.Namespace) -> int:
    from captagent_tls.agent import Agent
    from captagent_tls.keysources import KeyLogFile, KeyLogListener
    from captagent_tls.workers import workers_for

    workers = workers_for(args, live=True)
    if workers > 1:
        from captagent_tls.workers.runs import run_live_workers

        return run_live_workers(args, workers)

    keys = KeyStore()
    load_rsa_key_files(args, keys, live=True)
    key_files = [KeyLogFile(path, keys) for path in args.keylog]
    for source in key_files:
        source.poll()
    listeners = [KeyLogListener(url, keys, args.keylog_listen_remote) for url in args.keylog_listen]
    views = Views(args, live=True)
    sinks = build_sinks(args, live=True, views=views)
    exporter = KeyLogExporter(args.export_keylog) if args.export_keylog else None
    reporter = ProblemReporter(views.stderr)
    pipeline = Pipeline(
        keys,
        sinks,
        reporter.report,
        pipeline_options(args, keys_may_arrive=bool(key_files or listeners), live=True),
        on_secret=views.on_secret(exporter.write if exporter else None),
    )
    capture = views.live_capture(
        args.interface, args.filter, args.promisc, args.snaplen, args.buffer_size
    )
    if args.user:
        import_what_packets_may_need()
        drop_privileges(args.user)

    def report() -> None:
        stats = snapshot(pipeline, sinks, agent.kernel)
        log.warning("%s", format_stats(stats, sinks, verbose=args.verbose > 0))

    agent = Agent(
        capture,
        pipeline,
        key_files,
        listeners,
        reload_keys=lambda: load_rsa_key_files(args, keys, live=True),
        stats_interval_s=args.stats_interval,
        report_stats=report,
    )
    if args.metrics:
        start_metrics(args.metrics, pipeline, sinks, lambda: agent.kernel)
    log.info("capturing on %s", args.interface)
    views.start_status(lambda: snapshot(pipeline, sinks, agent.kernel))
    try:
        agent.run()
    finally:
        views.stop_lines()
        finish(pipeline, sinks, exporter)
        views.close()
        reporter.flush()
    return end_of_run(args, snapshot(pipeline, sinks, agent.kernel), sinks, views, exporter)


def end_of_run(
    args: argparse.Namespace,
    counters: Counters,
    sinks: Sequence[Sink],
    views: Views,
    exporter: KeyLogExporter | None,
) -> int:
    """The summary, a line for each file written, then the last line: whether every output
    took everything.  Reading a file, an output that did not (HEP packets not delivered)
    makes the exit status non-zero; a live agent says so and exits 0 (it was stopped)."""
    out = sys.stderr
    if not args.quiet:
        print(format_stats(counters, sinks, verbose=args.verbose > 0), file=out)
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
    if failures and (not args.interface or dropped):
        print(f"captagent-tls: error: {'; '.join(failures)}", file=out)
        return EXIT_ERROR
    if failures:
        print(f"captagent-tls: warning: {'; '.join(failures)}", file=out)
    elif not args.quiet:
        print(
            f"captagent-tls: done: {counters['sip_messages']} SIP messages; every output "
            "took everything",
            file=out,
        )
    return 0


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


def start_metrics(
    address: str, pipeline: Pipeline, sinks: list[Sink], kernel: Callable[[], KernelStats | None]
) -> None:
    from captagent_tls.metrics import AgentCollector, serve_metrics

    try:
        serve_metrics(address, AgentCollector(lambda: snapshot(pipeline, sinks, kernel())))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot serve metrics on {address}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    log.info("metrics on http://%s/metrics", address)


def import_what_packets_may_need() -> None:
    """Modules the packet path imports only when it meets what needs them (start-up stays
    short) are imported now, while their files can be read: the user we switch to may not
    read the interpreter's library (a Python under /root, say)."""
    import cryptography.hazmat.primitives.serialization  # noqa: F401 - certificates' keys

    import captagent_tls.websocket  # noqa: F401


def drop_privileges(user: str) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UserError(f"no such user {user!r} (--user)") from None
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise UserError(f"cannot switch to user {user!r}: not running as root") from None
    log.info("running as %s", user)


if __name__ == "__main__":
    sys.exit(main())
