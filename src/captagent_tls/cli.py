"""Command line: ``captagent-tls -r capture.pcap -k server.key [--json | --hep HOST:PORT]``.

Flags follow tcpdump/tshark habits (-r, -f, -k).  Every error a user can cause ends in one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Sequence

from captagent_tls import __version__
from captagent_tls.capture import CaptureError
from captagent_tls.capture.bpf import FrameFilter
from captagent_tls.capture.files import CaptureReader
from captagent_tls.keyfiles import KeyFileError, load_rsa_keys
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.report import ProblemReporter, format_stats
from captagent_tls.sinks import Sink
from captagent_tls.sinks.console import ConsoleSink
from captagent_tls.sinks.hep import CollectorAddressError, HepOptions, HepUdpSink
from captagent_tls.sinks.jsonl import JsonLinesSink
from captagent_tls.tls.events import SessionSecret
from captagent_tls.tls.keylog import KeyLogResult, load_key_log
from captagent_tls.tls.keys import KeyStore

EXIT_USAGE = 2
EXIT_ERROR = 1

log = logging.getLogger("captagent_tls")


class UserError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captagent-tls",
        description="Rebuild TCP streams, decrypt TLS and pass on the SIP inside: to the "
                    "console, as JSON lines, or to a HOMER collector as HEPv3.",
    )
    parser.add_argument("-r", "--read", metavar="FILE", required=True,
                        help="capture file to read: pcap or pcapng, optionally .gz; - for stdin")
    parser.add_argument("-k", "--key", metavar="KEYFILE", action="append", default=[],
                        help="server RSA private key (PEM, DER or PKCS#12); repeatable. Each key "
                             "is matched to servers by their certificate")
    parser.add_argument("--key-password", metavar="PASSWORD",
                        help="password of encrypted key files")
    parser.add_argument("--keylog", metavar="FILE", action="append", default=[],
                        help="NSS key log (SSLKEYLOGFILE format); repeatable. Decrypts ECDHE, "
                             "DHE and TLS 1.3 sessions")
    parser.add_argument("--export-keylog", metavar="FILE",
                        help="write a CLIENT_RANDOM line for every session decrypted with an "
                             "RSA key, so Wireshark can open the capture without the key")
    parser.add_argument("-f", "--filter", metavar="BPF",
                        help='BPF filter, tcpdump syntax, e.g. "tcp port 5061"')
    out = parser.add_argument_group("outputs (default: the console)")
    out.add_argument("--json", action="store_true",
                     help="one JSON object per message on stdout")
    out.add_argument("--console", action="store_true",
                     help="print messages on the console even when another output is chosen")
    out.add_argument("--hep", metavar="[udp://]HOST:PORT", action="append", default=[],
                     help="send each SIP message as a HEPv3 packet to this collector; repeatable")
    out.add_argument("--hep-id", metavar="N", type=int, default=2001,
                     help="HEP capture agent id (default 2001)")
    out.add_argument("--hep-password", metavar="KEY", default="",
                     help="HEP authentication key (chunk 0x000e)")
    out.add_argument("--hep-ip-proto", metavar="N", type=int, default=22,
                     help="IP protocol number sent for decrypted TLS: 22 (default, shown as "
                          "'tls' by HOMER) or 6 for the real TCP value")
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--flow-timeout", metavar="SECONDS", type=float, default=180.0,
                        help="close flows idle this long, in capture time (default 180)")
    tuning.add_argument("--max-flow-buffer", metavar="BYTES", type=int, default=4 << 20,
                        help="out-of-order bytes one direction may hold (default 4 MiB)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no stats summary at the end")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else
        logging.WARNING,
        format="captagent-tls: %(message)s",
    )
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    try:
        return run_offline(args)
    except (UserError, CaptureError, KeyFileError, CollectorAddressError) as exc:
        print(f"captagent-tls: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        sys.stderr.close()  # the reader of our output went away (| head): not an error
        return 0
    except KeyboardInterrupt:
        return 130


def load_keys(args: argparse.Namespace) -> KeyStore:
    keys = KeyStore()
    password = args.key_password.encode() if args.key_password is not None else None
    for path in args.key:
        for private_key in load_rsa_keys(path, password):
            keys.add_rsa_key(private_key, path)
    for path in args.keylog:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read key log {path}: {exc.strerror or exc}") from None
        report_key_log(path, load_key_log(text, keys))
    return keys


def report_key_log(source: str, result: KeyLogResult) -> None:
    if result.malformed_lines:
        shown = ", ".join(str(n) for n in result.malformed_lines[:10])
        more = " ..." if len(result.malformed_lines) > 10 else ""
        print(f"captagent-tls: warning: {source}: {len(result.malformed_lines)} malformed key "
              f"log line(s) ignored (line {shown}{more})", file=sys.stderr)


def embedded_secrets(path: str, keys: KeyStore) -> None:
    """Secrets in pcapng Decryption Secrets Blocks, read before decryption starts."""
    if path == "-":
        return  # standard input cannot be read twice: blocks apply where they appear

    def add(text: bytes) -> None:
        report_key_log(f"{path} (embedded secrets)",
                       load_key_log(text.decode("utf-8", "replace"), keys))

    with CaptureReader(path, on_secrets=add) as reader:
        if reader.is_pcapng:
            for _ in reader:
                pass


def build_sinks(args: argparse.Namespace) -> list[Sink]:
    sinks: list[Sink] = []
    if not 0 <= args.hep_ip_proto <= 255:
        raise UserError("--hep-ip-proto must be an IP protocol number (0-255)")
    if not 0 <= args.hep_id <= 0xFFFFFFFF:
        raise UserError("--hep-id must fit in 32 bits")
    hep_options = HepOptions(capture_id=args.hep_id, password=args.hep_password,
                             ip_proto_tls=args.hep_ip_proto)
    for address in args.hep:
        sinks.append(HepUdpSink(address, hep_options))
    if args.json:
        sinks.append(JsonLinesSink(sys.stdout))
    if args.console or not sinks:
        sinks.append(ConsoleSink(sys.stdout))
    return sinks


class KeyLogExporter:
    """Writes CLIENT_RANDOM lines for sessions whose secret did not come from a key log."""

    def __init__(self, path: str):
        try:
            self.out = open(path, "a", encoding="ascii")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise UserError(f"cannot write key log {path}: {exc.strerror or exc}") from None
        self._written: set[bytes] = set()

    def write(self, secret: SessionSecret) -> None:
        if secret.source == "key log" or secret.client_random in self._written:
            return
        self._written.add(secret.client_random)
        self.out.write(f"CLIENT_RANDOM {secret.client_random.hex()} "
                       f"{secret.master_secret.hex()}\n")
        self.out.flush()

    def close(self) -> None:
        self.out.close()


def run_offline(args: argparse.Namespace) -> int:
    keys = load_keys(args)
    frame_filter = FrameFilter(args.filter) if args.filter else None
    sinks = build_sinks(args)
    reporter = ProblemReporter(sys.stderr)
    options = PipelineOptions(flow_timeout_s=args.flow_timeout,
                              max_direction_bytes=args.max_flow_buffer)
    exporter = KeyLogExporter(args.export_keylog) if args.export_keylog else None
    embedded_secrets(args.read, keys)
    pipeline = Pipeline(keys, sinks, reporter.report, options,
                        on_secret=exporter.write if exporter else None)

    def secrets_in_stream(text: bytes) -> None:
        if load_key_log(text.decode("utf-8", "replace"), keys).added:
            pipeline.keys_added()

    reader = CaptureReader(args.read, on_secrets=secrets_in_stream)
    try:
        with reader:
            feed = pipeline.frame
            if frame_filter is None:
                for frame in reader:
                    feed(frame)
            else:
                matches = frame_filter.matches
                for frame in reader:
                    if matches(frame):
                        feed(frame)
    finally:
        # whatever was read, even from a broken file, is decrypted and delivered
        pipeline.finish()
        for sink in sinks:
            sink.close()
        if exporter is not None:
            exporter.close()
    if reader.truncated:
        print(f"captagent-tls: warning: {args.read} is truncated; everything before the cut "
              "was processed", file=sys.stderr)
    if not args.quiet:
        print(format_stats(pipeline, sinks), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
