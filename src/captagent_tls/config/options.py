"""Every option of captagent-tls, in one table: a row per option.

A row says everything about one option: its flags and help on the command line, its kind and
range, its default, the section of ``--help`` it is listed in, its key in ``agent.toml`` (the
table it sits in, and a shorter name there if it has one) and the captagent settings that set
it.  The command line (:mod:`captagent_tls.config.parser`) and the configuration files
(:mod:`captagent_tls.config.toml`, :mod:`captagent_tls.config.captagent`) are made from it:
adding an option is adding a row.

Values are read by :func:`check` (files) and :func:`value_type` (the command line's argparse
``type``), with the rules of :mod:`captagent_tls.config.values`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from captagent_tls.config import values as v
from captagent_tls.config.values import (
    BOOL,
    CHOICE,
    COUNT_OR_AUTO,
    DAY_S,
    FLOAT,
    GIB,
    INT,
    KIB,
    LIST,
    MIB,
    SIZE,
    STR,
    Check,
    between,
)
from captagent_tls.views.colour import CHOICES as COLOUR_CHOICES

__all__ = ["OPTIONS", "TABLE", "TABLES", "Option", "check", "describe_kind", "value_type"]


def host_name() -> str:
    """The default HEP node name, asked for when the command line is built."""
    import socket

    return socket.gethostname()


@dataclass(frozen=True)
class Option:
    """One option: what the command line, agent.toml and a captagent setup make of it."""

    dest: str  # argparse's dest, and the option's key at the top level of agent.toml
    flags: tuple[str, ...]  # on the command line; a boolean gets --no-... too
    kind: str  # values.STR, BOOL, INT, ...
    help: str
    group: str | None  # the section of --help; None: the first
    default: object = None  # a callable is called when the parser is built
    metavar: str | None = None
    check: Check | None = None  # the value (of its kind) -> what is wrong with it, or None
    secret: bool = False  # never shown in a message
    table: str | None = None  # agent.toml table that holds it; None: files cannot set it
    key: str | None = None  # its shorter name inside that table
    path: bool = False  # a file name: in a file, relative to that file's folder
    choices: tuple[str, ...] = ()
    counted: bool = False  # a flag that counts (-vv), set to a number in files
    alias: str | None = None  # a second long flag (--colour)
    captagent: tuple[str, ...] = ()  # the captagent settings read into it: "module setting"


INPUT = "input (one of -r or -i)"
KEYS = "keys"
MEDIA = "media (RTP, RTCP and SRTCP of the calls)"
OUTPUTS = "outputs (default: the console, which an output of the messages replaces)"
AGENT = "running as an agent"
TUNING = "tuning"
VIEWS = "views"

#: Every option, in the order of ``--help`` (within each section).
TABLE: tuple[Option, ...] = (
    # -- input -----------------------------------------------------------------------------
    Option(
        "read",
        ("-r", "--read"),
        STR,
        group=INPUT,
        metavar="FILE",
        table="capture",
        path=True,
        help="capture file to read: pcap or pcapng, optionally .gz; - for stdin",
    ),
    Option(
        "interface",
        ("-i", "--interface"),
        STR,
        group=INPUT,
        metavar="IFACE",
        check=v.interface_name,
        table="capture",
        captagent=("socket_pcap dev",),
        help="capture live from this interface (any: all of them)",
    ),
    Option(
        "filter",
        ("-f", "--filter"),
        STR,
        group=INPUT,
        metavar="BPF",
        check=v.utf8_text,
        table="capture",
        captagent=("socket_pcap filter", "socket_pcap ipv4fragments", "socket_pcap ipv6fragments"),
        help='BPF filter, tcpdump syntax, e.g. "tcp port 5061"',
    ),
    Option(
        "promisc",
        ("--promisc",),
        BOOL,
        group=INPUT,
        default=True,
        table="capture",
        captagent=("socket_pcap promisc",),
        help="put the interface into promiscuous mode (default: yes)",
    ),
    Option(
        "snaplen",
        ("-s", "--snaplen"),
        INT,
        group=INPUT,
        metavar="BYTES",
        default=262144,
        check=between(1, 262144, "bytes"),
        table="capture",
        captagent=("socket_pcap snap-len",),
        help="bytes to capture per packet (default 262144)",
    ),
    Option(
        "buffer_size",
        ("-B", "--buffer-size"),
        INT,
        group=INPUT,
        metavar="KIB",
        default=32768,
        check=between(1, v.MAX_BUFFER_KIB, "KiB (2 GiB)"),
        table="capture",
        captagent=("socket_pcap ring-buffer",),
        help="kernel capture buffer in KiB (default 32768)",
    ),
    # -- keys ------------------------------------------------------------------------------
    Option(
        "key",
        ("-k", "--key"),
        LIST,
        group=KEYS,
        metavar="KEYFILE",
        default=[],
        table="keys",
        path=True,
        captagent=("protocol_tls private-key-path", "protocol_tcp private-key-path"),
        help="server RSA private key (PEM, DER or PKCS#12); repeatable. Each key is "
        "matched to servers by their certificate",
    ),
    Option(
        "key_password",
        ("--key-password",),
        STR,
        group=KEYS,
        metavar="PASSWORD",
        secret=True,
        table="keys",
        help="password of encrypted key files",
    ),
    Option(
        "keylog",
        ("--keylog",),
        LIST,
        group=KEYS,
        metavar="FILE",
        default=[],
        table="keys",
        path=True,
        help="NSS key log (SSLKEYLOGFILE format); repeatable. Decrypts ECDHE, DHE and "
        "TLS 1.3 sessions. Followed as it grows when capturing live",
    ),
    Option(
        "keylog_listen",
        ("--keylog-listen",),
        LIST,
        group=KEYS,
        metavar="udp|tcp://HOST:PORT",
        default=[],
        check=v.listeners,
        table="keys",
        help="accept key-log lines over the network (live capture); e.g. from "
        "Kamailio's keylog_peer",
    ),
    Option(
        "keylog_listen_remote",
        ("--keylog-listen-remote",),
        BOOL,
        group=KEYS,
        default=False,
        table="keys",
        help="allow --keylog-listen on an address other than loopback",
    ),
    Option(
        "key_wait",
        ("--key-wait",),
        FLOAT,
        group=KEYS,
        metavar="SECONDS",
        default=10.0,
        check=between(0, DAY_S, "seconds (a day)"),
        table="keys",
        help="how long records wait for keys that may still arrive (default 10)",
    ),
    Option(
        "key_hold_flow",
        ("--key-hold-flow",),
        SIZE,
        group=KEYS,
        metavar="BYTES",
        default=16 * MIB,
        check=between(16 * KIB, 16 * GIB, "bytes (16K to 16G)"),
        table="keys",
        help="records one connection may hold while they wait for keys (default 16M; "
        "K, M and G suffixes); more are dropped and counted",
    ),
    Option(
        "key_hold_total",
        ("--key-hold-total",),
        SIZE,
        group=KEYS,
        metavar="BYTES",
        default=256 * MIB,
        check=between(16 * KIB, 64 * GIB, "bytes (16K to 64G)"),
        table="keys",
        help="records all connections together may hold while they wait for keys "
        "(default 256M); a connection holds at most this much too",
    ),
    Option(
        "export_keylog",
        ("--export-keylog",),
        STR,
        group=KEYS,
        metavar="FILE",
        table="keys",
        path=True,
        help="write a CLIENT_RANDOM line for every session decrypted with an RSA key, so "
        "Wireshark can open the capture without the key",
    ),
    # -- outputs ---------------------------------------------------------------------------
    Option(
        "json",
        ("--json",),
        BOOL,
        group=OUTPUTS,
        default=False,
        table="output",
        help="one JSON object per message on stdout",
    ),
    Option(
        "write",
        ("-w", "--write"),
        STR,
        group=OUTPUTS,
        metavar="FILE",
        table="output",
        path=True,
        help="write the decrypted SIP messages to a pcap file that Wireshark opens as SIP, "
        "with the real addresses, ports and times",
    ),
    Option(
        "console",
        ("--console",),
        BOOL,
        group=OUTPUTS,
        default=False,
        table="output",
        help="print messages on the console too: --json, --hep, -w, --report and "
        "--write-decryptable replace it otherwise, as tcpdump -w prints no packets (and an "
        "agent shipping to HOMER should not write every message to its log)",
    ),
    Option(
        "hep",
        ("--hep",),
        LIST,
        group=OUTPUTS,
        metavar="[udp|tcp|tls://]HOST:PORT",
        default=[],
        check=v.collectors,
        table="hep",
        key="collectors",
        captagent=(
            "transport_hep capture-host",
            "transport_hep capture-port",
            "transport_hep capture-proto",
        ),
        help="send each SIP message as a HEPv3 packet to this collector (UDP when no "
        "scheme is given); repeatable: every collector gets every message",
    ),
    Option(
        "hep_id",
        ("--hep-id",),
        INT,
        group=OUTPUTS,
        metavar="N",
        default=2001,
        check=between(0, 0xFFFFFFFF),
        table="hep",
        key="id",
        captagent=("transport_hep capture-id",),
        help="HEP capture agent id (default 2001)",
    ),
    Option(
        "hep_password",
        ("--hep-password",),
        STR,
        group=OUTPUTS,
        metavar="KEY",
        default="",
        check=v.hep_chunk,
        secret=True,
        table="hep",
        key="password",
        captagent=("transport_hep capture-password",),
        help="HEP authentication key (chunk 0x000e)",
    ),
    Option(
        "hep_ip_proto",
        ("--hep-ip-proto",),
        INT,
        group=OUTPUTS,
        metavar="N",
        default=22,
        check=between(0, 255),
        table="hep",
        key="ip_proto",
        help="IP protocol number sent for decrypted TLS: 22 (default, shown as 'tls' by "
        "HOMER) or 6 for the real TCP value",
    ),
    Option(
        "hep_node_name",
        ("--hep-node-name",),
        STR,
        group=OUTPUTS,
        metavar="NAME",
        default=host_name,
        check=v.hep_chunk,
        table="hep",
        key="node_name",
        help="HEP node name (chunk 0x0013; default: the host name)",
    ),
    Option(
        "hep_correlation",
        ("--hep-correlation",),
        BOOL,
        group=OUTPUTS,
        default=False,
        table="hep",
        key="correlation",
        help="send the SIP Call-ID as HEP correlation id (chunk 0x0011)",
    ),
    Option(
        "hep_ca",
        ("--hep-ca",),
        STR,
        group=OUTPUTS,
        metavar="FILE",
        table="hep",
        key="ca",
        path=True,
        help="trust this CA for tls:// collectors (heplify-server makes its own)",
    ),
    Option(
        "hep_insecure",
        ("--hep-insecure",),
        BOOL,
        group=OUTPUTS,
        default=False,
        table="hep",
        key="insecure",
        help="do not verify the certificate of tls:// collectors",
    ),
    Option(
        "hep_queue",
        ("--hep-queue",),
        STR,
        group=OUTPUTS,
        metavar="MESSAGES[,BYTES]",
        default="100000,64M",
        check=v.hep_queue,
        table="hep",
        key="queue",
        help="per tcp/tls collector, what may wait while it is unreachable (default "
        "100000,64M); what does not fit is counted as dropped",
    ),
    # -- running as an agent ---------------------------------------------------------------
    Option(
        "user",
        ("--user",),
        STR,
        group=AGENT,
        metavar="NAME",
        check=v.not_empty,
        table="agent",
        help="drop root to this user once the capture is open and keys are read",
    ),
    Option(
        "stats_interval",
        ("--stats-interval",),
        FLOAT,
        group=AGENT,
        metavar="SECONDS",
        default=60.0,
        check=between(1, DAY_S, "seconds (a day)"),
        table="agent",
        captagent=("socket_pcap stats-interval", "socket_pcap stats-enable"),
        help="log stats this often when capturing live (default 60)",
    ),
    Option(
        "metrics",
        ("--metrics",),
        STR,
        group=AGENT,
        metavar="HOST:PORT",
        check=v.host_port,
        table="agent",
        help="serve Prometheus metrics over HTTP here",
    ),
    Option(
        "workers",
        ("--workers",),
        COUNT_OR_AUTO,
        group=AGENT,
        metavar="N|auto",
        default=1,
        check=v.workers,
        table="agent",
        help="worker processes, each taking a share of the flows (default 1); auto: one "
        "per core this process may use (one for a small file)",
    ),
    # -- tuning ----------------------------------------------------------------------------
    Option(
        "flow_timeout",
        ("--flow-timeout",),
        FLOAT,
        group=TUNING,
        metavar="SECONDS",
        default=180.0,
        check=between(0, DAY_S, "seconds (a day)", above=True),
        table="tuning",
        captagent=("protocol_tls flow-timeout", "protocol_tcp flow-timeout"),
        help="close flows idle this long, in capture time (default 180)",
    ),
    Option(
        "max_flow_buffer",
        ("--max-flow-buffer",),
        SIZE,
        group=TUNING,
        metavar="BYTES",
        default=4 * MIB,
        check=between(1, GIB, "bytes (1G, the largest TCP window)"),
        table="tuning",
        help="out-of-order bytes one direction may hold (default 4M)",
    ),
    Option(
        "max_flows",
        ("--max-flows",),
        INT,
        group=TUNING,
        metavar="N",
        default=200_000,
        check=between(1, v.MAX_COUNT),
        table="tuning",
        help="TCP flows tracked at once; the least recently active go first (default 200000)",
    ),
    Option(
        "session_cache",
        ("--session-cache",),
        INT,
        group=TUNING,
        metavar="N",
        default=20_000,
        check=between(1, v.MAX_COUNT),
        table="tuning",
        help="TLS sessions remembered for resumption, by ID and by ticket (default 20000 each)",
    ),
    # -- views: progress and status lines, colour, --brief, --report, --write-decryptable ---
    Option(
        "progress",
        ("--progress",),
        BOOL,
        group=VIEWS,
        default=True,
        table="views",
        help="with -r, a progress bar on stderr when it is a terminal (default: yes; also "
        "off with --quiet)",
    ),
    Option(
        "status",
        ("--status",),
        BOOL,
        group=VIEWS,
        default=False,
        table="views",
        help="with -i, a status line on stderr when it is a terminal, once a second: "
        "packets/s, messages/s, kernel drops, HEP queue, flows, sessions waiting for "
        "keys",
    ),
    Option(
        "color",
        ("--color",),
        CHOICE,
        group=VIEWS,
        alias="--colour",
        metavar="WHEN",
        default="auto",
        choices=COLOUR_CHOICES,
        check=v.one_of(COLOUR_CHOICES),
        table="views",
        key="colour",
        help="colour the console view: auto (default: on a terminal, unless NO_COLOR is "
        "set), always or never",
    ),
    Option(
        "brief",
        ("--brief",),
        BOOL,
        group=VIEWS,
        default=False,
        table="views",
        help="console: one line per message (time, source -> destination, method or "
        "status, Call-ID, TLS version and suite)",
    ),
    Option(
        "report",
        ("--report",),
        STR,
        group=VIEWS,
        metavar="FILE.html",
        table="views",
        path=True,
        help="write a call-flow report: the list of calls and a ladder diagram per call, "
        "in one HTML file that needs no network",
    ),
    Option(
        "write_decryptable",
        ("--write-decryptable",),
        STR,
        group=VIEWS,
        metavar="FILE.pcapng",
        table="views",
        path=True,
        help="write the captured packets with the secrets of every session decrypted, so "
        "that Wireshark and tshark decrypt the file with no key. The file holds "
        "secrets: it is created with mode 0600",
    ),
    # -- media -------------------------------------------------------------------------------
    Option(
        "media",
        ("--media",),
        BOOL,
        group=MEDIA,
        default=True,
        table="media",
        key="enabled",
        help="follow the calls' media (default: yes; --no-media turns it off): RTP "
        "statistics, and RTCP and SRTCP reports sent as HEP type 5 with the Call-ID, on the "
        "address:port pairs the decrypted SDP names. The capture filter decides whether media "
        "reaches the agent (e.g. -f 'tcp port 5061 or udp portrange 10000-20000')",
    ),
    Option(
        "media_pcap",
        ("--media-pcap",),
        STR,
        group=MEDIA,
        metavar="FILE",
        table="media",
        key="pcap",
        path=True,
        help="write the calls' RTP and RTCP with their payloads decrypted to a pcap file that "
        "Wireshark plays; off by default (audio is content); the file is created with mode "
        "0600",
    ),
    # -- the first section of --help -------------------------------------------------------
    Option(
        "quiet",
        ("-q", "--quiet"),
        BOOL,
        group=None,
        default=False,
        table="agent",
        help="no stats summary and no closing lines at the end (a failure is still reported)",
    ),
    Option(
        "config",
        ("-c", "--config"),
        STR,
        group=None,
        metavar="FILE",
        help="read options from this TOML file (contrib/agent.toml.example); options on "
        "the command line override it",
    ),
    Option(
        "captagent_config",
        ("--captagent-config",),
        STR,
        group=None,
        metavar="PATH",
        help="read options from a captagent installation (the folder holding "
        "captagent.xml, or the file); settings without effect are listed",
    ),
    Option(
        "verbose",
        ("-v", "--verbose"),
        INT,
        group=None,
        default=0,
        counted=True,
        check=between(0, 10),
        table="agent",
        captagent=("core.conf debug",),
        help="more log output",
    ),
)

ROWS: dict[str, Option] = {row.dest: row for row in TABLE}

#: The options a configuration file may set (all but the files themselves), by dest.
OPTIONS: dict[str, Option] = {row.dest: row for row in TABLE if row.table}

#: Options holding file names: relative names in a file are relative to that file's folder.
PATH_OPTIONS = frozenset(dest for dest, row in OPTIONS.items() if row.path)


def _tables() -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    for dest, row in OPTIONS.items():
        assert row.table is not None
        names = tables.setdefault(row.table, {})
        names[dest] = dest
        if row.key:
            names[row.key] = dest
    return tables


#: agent.toml's tables: name inside the table -> dest.  A table accepts its options' dests
#: and their shorter names.
TABLES: dict[str, dict[str, str]] = _tables()


def describe_kind(dest: str) -> str:
    """What the option expects, as in "expected an integer"."""
    return v.EXPECTED[OPTIONS[dest].kind]


def check(dest: str, value: object) -> object:
    """Type and range check one option's value (from a file, or a command-line word already
    converted); the value as the option's kind, or ValueError saying what is wrong."""
    option = ROWS[dest]
    if option.secret and not isinstance(value, str):
        raise ValueError(
            f"expected {v.EXPECTED[option.kind]}, got {v.type_name(value)} (value not shown)"
        )
    value = v.typed(option.kind, value)
    texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    if any("\0" in text for text in texts):
        raise ValueError("must not contain a NUL character")
    problem = option.check(value) if option.check else None
    if problem:
        raise ValueError(problem)
    return value


def value_type(dest: str) -> Callable[[str], object]:
    """The argparse ``type`` of an option: a command-line word, converted and checked by the
    same rules as a file's value.  For a list option it takes one item; a choice is refused
    by argparse itself (``choices``), in its usual words."""
    kind = ROWS[dest].kind

    def convert(text: str) -> object:
        try:
            if kind == LIST:
                return check(dest, [text])[0]  # type: ignore[index]
            if kind == CHOICE:
                return text
            return check(dest, v.from_text(kind, text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.option = dest  # type: ignore[attr-defined]  # tests find the rule of an action
    convert.__name__ = f"{dest} value"
    return convert
