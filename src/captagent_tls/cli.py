"""Command line: ``captagent-tls -r capture.pcap -k server.key [--json | --hep HOST:PORT]`` or
``captagent-tls -i eth0 -f "tcp port 5061" -k server.key --hep tcp://homer:9061``.

Flags follow tcpdump/tshark habits (-r, -i, -f, -s, -B).  This module only turns argv (and
the configuration files, through the one option table) into typed settings and a
:class:`~captagent_tls.runs.RunDescription`, and hands it to :mod:`captagent_tls.runs`.  Every
error a user can cause ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from typing import NoReturn, cast

from captagent_tls.assembly.process import configure_logging
from captagent_tls.config import ConfigError
from captagent_tls.config.parser import add_options
from captagent_tls.config.settings import Settings
from captagent_tls.errors import UserFacingError, one_line

EXIT_ERROR = 1


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


def buffer_stdout() -> None:
    """Standard output buffered whatever PYTHONUNBUFFERED says (container images often set
    it): live runs and standard input flush after each message themselves, a terminal gets
    lines, and a file or pipe is written 8 KB at a time instead of one system call per
    message (10 % of a bulk run's time)."""
    if not isinstance(sys.stdout, io.TextIOWrapper):
        return
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_arguments(parser, argv)
    except ConfigError as exc:
        print(f"captagent-tls: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging(args.verbose)
    buffer_stdout()
    if args.read and args.interface:
        parser.error("give a capture file (-r FILE) or an interface (-i IFACE), not both")
    if not (args.read or args.interface):
        parser.error("give a capture file (-r FILE) or an interface (-i IFACE)")
    from captagent_tls.runs import describe, run

    try:
        return run(describe(cast(Settings, args)))
    except UserFacingError as exc:
        print(f"captagent-tls: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        sys.stderr.close()  # the reader of our output went away (| head): not an error
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
