"""Configuration files: captagent-tls's own TOML, and a captagent installation's XML.

Both become the same mapping, keyed by the command line's argparse ``dest`` names, so a file
can say anything the command line can and the two combine without translation:

* :func:`load_native` reads ``agent.toml`` (``-c``);
* :func:`load_captagent` reads an existing captagent setup (``captagent.xml`` and the module
  files it loads) for people who switch over from the C agent, and lists, once each, the
  captagent settings that have no effect here;
* :func:`merge` layers defaults < file < command line, and :func:`explicit_args` tells which
  options the user actually typed, so a default on the command line never hides a file value.

Every problem is a :class:`ConfigError` whose message is one line naming the file (and the
line, or the key, when there is one).
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from captagent_tls.options import OPTIONS, check, describe_kind, type_name
from captagent_tls.sinks.hep_transport import CollectorAddressError, parse_collector

__all__ = [
    "ALTERNATIVES",
    "OPTIONS",
    "TABLES",
    "ConfigError",
    "explicit_args",
    "load_captagent",
    "load_native",
    "merge",
    "resolve",
]


class ConfigError(Exception):
    """A configuration file that cannot be used; the message is one line naming the file."""


# --------------------------------------------------------------------------------- options

#: Options holding file names: relative names in a file are relative to that file's folder.
PATH_OPTIONS = frozenset({"read", "key", "keylog", "export_keylog", "hep_ca", "write"})

#: The most a configuration file may hold: captagent's and ours are a few KiB.
MAX_CONFIG_BYTES = 4 << 20


def _table(*dests: str, **aliases: str) -> dict[str, str]:
    names = {dest: dest for dest in dests}
    names.update(aliases)
    names.update({dest: dest for dest in aliases.values()})
    return names


#: TOML tables: name inside the table -> dest.  A table also accepts its dests' full names.
TABLES: dict[str, dict[str, str]] = {
    "capture": _table("read", "interface", "filter", "promisc", "snaplen", "buffer_size"),
    "keys": _table("key", "key_password", "keylog", "keylog_listen", "keylog_listen_remote",
                   "key_wait", "key_hold_flow", "key_hold_total", "export_keylog"),
    "output": _table("json", "console", "write"),
    "hep": _table(collectors="hep", id="hep_id", password="hep_password",
                  node_name="hep_node_name", correlation="hep_correlation",
                  ip_proto="hep_ip_proto", ca="hep_ca", insecure="hep_insecure",
                  queue="hep_queue"),
    "tuning": _table("flow_timeout", "max_flow_buffer", "max_flows", "session_cache"),
    "agent": _table("user", "metrics", "stats_interval", "workers", "quiet",
                    "verbose"),
}


def _read_limited(path: str | Path) -> bytes:
    """A configuration file's bytes; ConfigError for one too large to be one (/dev/zero)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES >> 20} MiB, too large for a "
                          "configuration file")
    return data


def _relative_to(base: Path, name: str) -> str:
    if name == "-" or not name:
        return name
    path = Path(name).expanduser()
    return str(path if path.is_absolute() else base / path)


def _resolve_paths(values: dict[str, object], base: Path) -> None:
    for dest in PATH_OPTIONS & values.keys():
        value = values[dest]
        if isinstance(value, list):
            values[dest] = [_relative_to(base, v) for v in value]
        elif isinstance(value, str):
            values[dest] = _relative_to(base, value)


# ------------------------------------------------------------------------------ native TOML

_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _toml_syntax_error(name: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    where = _TOML_WHERE.search(message)
    if where:
        return f"{name}:{where[1]}:{where[2]}: TOML syntax error: {message[:where.start()]}"
    return f"{name}: TOML syntax error: {message}"


def _unknown(name: str, key: str, known: Sequence[str], table: str | None = None) -> ConfigError:
    bare = key.rpartition(".")[2].replace("-", "_")
    close = difflib.get_close_matches(bare, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" in [{table}]" if table else ""
    return ConfigError(f"{name}: {key}: unknown key{where}{hint}")


def load_native(path: str | Path) -> dict[str, object]:
    """Read captagent-tls's TOML file into ``{dest: value}``.

    Keys are the command line's dest names (``hep_id``; ``hep-id`` too), at the top level or
    in the tables of :data:`TABLES`.  Relative file names are taken from the file's folder.
    """
    name = str(path)
    try:
        document = tomllib.loads(_read_limited(path).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start + 1})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_syntax_error(name, exc)) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{name}: nested too deeply (arrays or inline tables within one "
                          "another, hundreds deep)") from None

    values: dict[str, object] = {}
    set_by: dict[str, str] = {}

    def put(dest: str, key: str, value: object) -> None:
        if dest in set_by:
            raise ConfigError(f"{name}: {key}: {dest} is already set by {set_by[dest]}")
        try:
            values[dest] = check(dest, value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {key}: {exc}") from None
        set_by[dest] = key

    for key, value in document.items():
        bare = key.replace("-", "_")
        if isinstance(value, dict) and bare in TABLES:
            names = TABLES[bare]
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                dest = names.get(sub.replace("-", "_"))
                if dest is None:
                    raise _unknown(name, dotted, sorted(names), table=key)
                if isinstance(sub_value, dict):
                    raise ConfigError(f"{name}: {dotted}: expected {describe_kind(dest)}, "
                                      "got a table")
                put(dest, dotted, sub_value)
        elif bare in OPTIONS:
            if isinstance(value, dict):
                raise ConfigError(f"{name}: {key}: expected {describe_kind(bare)}, "
                                  "got a table")
            put(bare, key, value)
        elif bare in TABLES:
            raise ConfigError(f"{name}: {key}: expected a table ([{key}]), "
                              f"got {type_name(value)} {value!r}")
        else:
            raise _unknown(name, key, sorted([*OPTIONS, *TABLES]))
    _resolve_paths(values, Path(path).parent)
    return values


# --------------------------------------------------------------------------- captagent XML


@dataclass(eq=False)
class _Node:
    """One XML element, remembering its file and line for messages."""

    tag: str
    attrib: dict[str, str]
    file: str
    line: int
    children: list[_Node] = field(default_factory=list)
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def iter(self, tag: str) -> Iterator[_Node]:
        """This element and those within it named ``tag``, in document order (without
        recursion: a deep file must not reach Python's recursion limit)."""
        stack = [self]
        while stack:
            node = stack.pop()
            if node.tag == tag:
                yield node
            stack.extend(reversed(node.children))


#: Limits of a captagent configuration, far above what one holds (a few files, elements six
#: deep, a few hundred in all), so that no file can make reading it run away.
MAX_XML_DEPTH = 64  # elements within one another, in one file
MAX_INCLUDE_DEPTH = 16  # files including files including files...
MAX_XML_FILES = 256  # files read, counting a file each time it is included
MAX_XML_ELEMENTS = 100_000  # elements in all files read


class _XmlBudget:
    """What one configuration has read so far, against the limits above."""

    def __init__(self) -> None:
        self.files = 0
        self.elements = 0


def _parse_xml(path: Path, budget: _XmlBudget) -> _Node:
    """Parse one file with expat (no namespace processing: captagent's parser has none)."""
    budget.files += 1
    if budget.files > MAX_XML_FILES:
        raise ConfigError(f"{path}: more than {MAX_XML_FILES} files read (includes)")
    try:
        data = _read_limited(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    parser = expat.ParserCreate()
    parser.buffer_text = True
    stack: list[_Node] = []
    roots: list[_Node] = []

    def start(tag: str, attrib: dict[str, str]) -> None:
        if len(stack) >= MAX_XML_DEPTH:
            raise ConfigError(f"{path}:{parser.CurrentLineNumber}: nested too deeply (more "
                              f"than {MAX_XML_DEPTH} elements within one another)")
        budget.elements += 1
        if budget.elements > MAX_XML_ELEMENTS:
            raise ConfigError(f"{path}:{parser.CurrentLineNumber}: more than "
                              f"{MAX_XML_ELEMENTS} elements in the configuration")
        node = _Node(tag, attrib, str(path), parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.offset + 1}: XML error: "
                          f"{expat.ErrorString(exc.code)}") from None
    return roots[0]


def _is_include(node: _Node) -> bool:
    prefix, colon, local = node.tag.rpartition(":")
    return local == "include" and (bool(colon) or "href" in node.attrib)


def _load_xml(path: Path, budget: _XmlBudget | None = None,
              including: tuple[Path, ...] = ()) -> _Node:
    """Parse a file and replace its ``<xi:include href=...>`` elements by what they name."""
    budget = budget or _XmlBudget()
    root = _parse_xml(path, budget)
    including = (*including, path.resolve())
    stack = [root]
    while stack:
        node = stack.pop()
        for i, child in enumerate(node.children):
            if _is_include(child):
                node.children[i] = _include(child, budget, including)  # expanded already
            else:
                stack.append(child)
    return root


def _include(node: _Node, budget: _XmlBudget, including: tuple[Path, ...]) -> _Node:
    href = node.attrib.get("href", "").strip()
    if not href:
        raise ConfigError(f"{node.where}: <{node.tag}> has no href")
    if node.attrib.get("parse", "xml") != "xml" or "xpointer" in node.attrib:
        raise ConfigError(f"{node.where}: <{node.tag}>: only whole XML files can be included")
    if "\0" in href:
        raise ConfigError(f"{node.where}: <{node.tag}>: href holds a NUL character")
    target = Path(node.file).parent / href
    if target.resolve() in including:
        raise ConfigError(f"{node.where}: {target} includes itself")
    if len(including) >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{node.where}: includes nested too deeply (more than "
                          f"{MAX_INCLUDE_DEPTH} files including one another)")
    if not target.is_file():
        raise ConfigError(f"{node.where}: included file {target} not found")
    return _load_xml(target, budget, including)


def _is_main(root: _Node) -> bool:
    """captagent.xml (core and module list) rather than one module's file?"""
    if root.tag == "document" and root.attrib.get("type", "").startswith("captagent/"):
        return True
    return any(True for _ in root.iter("configuration")) or any(True for _ in root.iter("load"))


def _enabled(profile: _Node) -> bool:
    # captagent compares the first four characters with "true"
    return profile.attrib.get("enable", "").strip().startswith("true")


def _params(element: _Node) -> Iterator[tuple[str, str, _Node]]:
    """``<param name= value=>`` or ``<param name=><value>...</value></param>``."""
    for param in element.iter("param"):
        name = param.attrib.get("name")
        if name is None:
            continue
        if "value" in param.attrib:
            value = param.attrib["value"]
        else:
            inner = [child for child in param.children if child.tag == "value"]
            value = inner[0].text if inner else param.text
        yield name.strip(), value.strip(), param


#: The modules whose settings become options, in the order they are read.
_HANDLED = ("socket_pcap", "protocol_tls", "protocol_tcp", "transport_hep")

_MODULE_REASONS = {
    "protocol_sip": "captagent-tls frames SIP itself",
    "protocol_rtcp": "RTCP is not captured",
    "protocol_rtcpxr": "RTCP-XR is not captured",
    "socket_rtcpxr": "RTCP-XR is not captured",
    "database_hash": "it only serves RTCP correlation",
    "database_redis": "it only serves RTCP correlation",
    "socket_raw": "captures are made with libpcap, as socket_pcap's",
    "socket_pfring": "captures are made with libpcap, as socket_pcap's",
    "socket_tzsp": "only socket_pcap captures are translated",
    "socket_collector": "only socket_pcap captures are translated",
    "transport_json": "use --json for JSON lines",
    "output_json": "use --json for JSON lines",
    "interface_http": "there is no HTTP interface",
}

_SETTING_REASONS = {
    "capture-plan": "no capture plan is needed: TLS is decrypted, SIP framed and HEP sent "
                    "for every captured TLS connection",
    "capture-filter": "RTP/RTCP capture is not supported",
    "reasm": "IP fragments are always reassembled",
    "tcpdefrag": "TCP streams are always reassembled",
    "timeout": "the capture read timeout is not configurable",
    "full-packet": "SCTP is not captured",
    "payload-compression": "HEP payloads are sent uncompressed",
    "payload-send": "the payload is always sent",
    "debug": "use -v",
    "pid_file": "the service manager tracks the process",
    "daemon": "run it in the foreground under the service manager",
    "syslog": "log lines go to stderr (the journal under systemd)",
    "chroot": "use the systemd unit's sandboxing instead",
    "node": "set hep_node_name (--hep-node-name) to name this agent in HEP",
}

#: Ignored settings whose value says what captagent-tls does anyway: no warning for these.
_SAME_AS_OURS = frozenset({
    ("reasm", "true"), ("tcpdefrag", "true"), ("payload-compression", "false"),
    ("payload-send", "true"), ("daemon", "false"), ("syslog", "false"),
})

#: core.conf settings without meaning here and not worth a warning.
_CORE_SILENT = frozenset({"version", "serial", "uuid", "module_path", "config_path",
                          "capture_plans_path", "backup", "license"})

_FRAGMENTS = {
    "ipv4fragments": "(ip[6:2] & 0x3fff != 0)",  # MF set or offset non-zero
    "ipv6fragments": "(ip6 and ip6[6] = 44)",  # next header: fragment
}

_HEP_SCHEMES = {"udp": "udp", "tcp": "tcp", "ssl": "tls", "tls": "tls"}


@dataclass
class _PcapProfile:
    """One enabled socket_pcap profile, as far as captagent-tls can use it."""

    interface: str = ""
    promisc: bool = False
    filter: str = ""
    snaplen: int | None = None
    buffer_kib: int | None = None
    fragments: list[str] = field(default_factory=list)
    stats_enable: bool = False
    stats_interval: int | None = None

    def bpf(self) -> str:
        """The filter, widened to IP fragments as captagent's ipv4/ipv6fragments do."""
        if not self.fragments:
            return self.filter
        return " or ".join([f"({self.filter})", *self.fragments])


class _CaptagentReader:
    def __init__(self) -> None:
        self.budget = _XmlBudget()
        self.values: dict[str, object] = {}
        self.origin: dict[str, str] = {}  # dest -> file:line that set it
        self.labels: dict[str, str] = {}  # dest -> the captagent setting that set it
        self.warnings: list[str] = []
        self._warned: set[tuple[str, ...]] = set()

    # ---- bookkeeping

    def warn(self, key: tuple[str, ...], text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(text)

    def ignored(self, module: str, name: str, value: str, node: _Node) -> None:
        if (name, value) in _SAME_AS_OURS:
            return
        reason = _SETTING_REASONS.get(name, "unrecognised setting")
        self.warn((module, name),
                  f"{node.where}: {module}: {name}={value!r} ignored: {reason}")

    def set(self, dest: str, value: object, node: _Node, label: str) -> None:
        if dest in self.values and self.values[dest] != value:
            self.warn(("conflict", dest),
                      f"{node.where}: {label} ignored: {dest} is already "
                      f"{self.values[dest]!r} from {self.origin[dest]}")
            return
        if dest not in self.values:
            self.values[dest] = value
            self.origin[dest] = node.where
            self.labels[dest] = label

    @staticmethod
    def integer(node: _Node, name: str, value: str, low: int, high: int) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise ConfigError(f"{node.where}: {name}: expected an integer from {low} to "
                              f"{high}, got {value!r}")
        return number

    @staticmethod
    def seconds(node: _Node, name: str, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"{node.where}: {name}: expected a number of seconds above 0, "
                              f"got {value!r}")
        return number

    def boolean(self, module: str, node: _Node, name: str, value: str) -> bool:
        if value not in ("true", "false"):
            self.warn((module, name, "bool"),
                      f"{node.where}: {module}: {name}={value!r} read as "
                      f"{value.startswith('true')}, as captagent does")
        return value.startswith("true")

    # ---- core.conf

    def core(self, main: _Node) -> str | None:
        config_path = None
        for conf in main.iter("configuration"):
            if conf.attrib.get("name") != "core.conf":
                continue
            for name, value, node in _params(conf):
                if name == "config_path":
                    config_path = value
                elif name == "debug":
                    level = self.integer(node, "debug", value, 0, 10)
                    # captagent's levels are syslog's: 5-6 notice/info, 7 and up debug
                    if level >= 5:
                        self.set("verbose", 2 if level >= 7 else 1, node, "core.conf debug")
                elif name not in _CORE_SILENT:
                    self.ignored("core.conf", name, value, node)
        return config_path

    # ---- modules

    def module(self, name: str, element: _Node) -> None:
        profiles = [p for p in element.iter("profile") if _enabled(p)]
        if name == "socket_pcap":
            self.socket_pcap(element, profiles)
        elif name == "transport_hep":
            self.transport_hep(element, profiles)
        else:
            self.protocol_tls(name, profiles)

    def socket_pcap(self, module: _Node, profiles: list[_Node]) -> None:
        if not profiles:
            self.warn(("socket_pcap", "none"),
                      f"{module.where}: socket_pcap has no enabled profile: no interface or "
                      "filter is configured")
            return
        captures = [self.pcap_profile(profile) for profile in profiles]
        first, label = profiles[0], "socket_pcap"
        devices = list(dict.fromkeys(c.interface for c in captures if c.interface))
        if len(devices) == 1:
            self.set("interface", devices[0], first, f"{label} dev")
        elif devices:
            self.set("interface", "any", first, f"{label} dev")
            self.warn(("socket_pcap", "devs"),
                      f"{first.where}: socket_pcap: enabled profiles capture on "
                      f"{', '.join(devices)}: captagent-tls captures once, on 'any'")
        if all(c.filter for c in captures):  # one profile taking everything takes it all
            filters = [c.bpf() for c in captures]
            merged = filters[0] if len(filters) == 1 else " or ".join(f"({f})" for f in filters)
            self.set("filter", merged, first, f"{label} filter")
        # captagent leaves promiscuous mode off unless a profile turns it on
        self.set("promisc", any(c.promisc for c in captures), first, f"{label} promisc")
        snaplens = [c.snaplen for c in captures if c.snaplen is not None]
        if snaplens:
            self.set("snaplen", max(snaplens), first, f"{label} snap-len")
        buffers = [c.buffer_kib for c in captures if c.buffer_kib is not None]
        if buffers:
            self.set("buffer_size", max(buffers), first, f"{label} ring-buffer")
        intervals = [c.stats_interval for c in captures
                     if c.stats_enable and c.stats_interval is not None]
        if intervals:
            self.set("stats_interval", float(min(intervals)), first, f"{label} stats-interval")
        if len(profiles) > 1:
            names = ", ".join(p.attrib.get("name", "?") for p in profiles)
            self.warn(("socket_pcap", "merged"),
                      f"{first.where}: socket_pcap: enabled profiles {names} are merged into "
                      f"one capture (filter: {self.values.get('filter', 'none')})")

    def pcap_profile(self, profile: _Node) -> _PcapProfile:
        capture = _PcapProfile()
        for name, value, node in _params(profile):
            if name == "dev":
                capture.interface = value
            elif name == "promisc":
                capture.promisc = self.boolean("socket_pcap", node, name, value)
            elif name == "filter":
                capture.filter = value
            elif name == "snap-len":
                capture.snaplen = self.integer(node, name, value, 1, 262144)
                if capture.snaplen < 65535:
                    self.warn(("socket_pcap", name, "short"),
                              f"{node.where}: socket_pcap: snap-len={value} cuts longer "
                              "packets (offloaded TCP segments reach 64 KiB): TLS records "
                              "in them cannot be decrypted")
            elif name == "ring-buffer":  # MiB in captagent, KiB for us
                capture.buffer_kib = self.integer(node, name, value, 1, 1 << 20) * 1024
            elif name in _FRAGMENTS:
                if self.boolean("socket_pcap", node, name, value):
                    capture.fragments.append(_FRAGMENTS[name])
            elif name == "stats-enable":
                capture.stats_enable = self.boolean("socket_pcap", node, name, value)
            elif name == "stats-interval":
                capture.stats_interval = self.integer(node, name, value, 1, 1 << 31)
            else:
                self.ignored("socket_pcap", name, value, node)
        return capture

    def protocol_tls(self, module: str, profiles: list[_Node]) -> None:
        keys: list[str] = []
        for profile in profiles:
            for name, value, node in _params(profile):
                if name == "private-key-path":
                    if value:
                        keys.append(_relative_to(Path(node.file).parent, value))
                elif name == "flow-timeout":
                    self.set("flow_timeout", self.seconds(node, name, value), node,
                             f"{module} flow-timeout")
                else:
                    self.ignored(module, name, value, node)
        if keys:
            known = self.values.setdefault("key", [])
            assert isinstance(known, list)
            known.extend(k for k in dict.fromkeys(keys) if k not in known)

    def transport_hep(self, module: _Node, profiles: list[_Node]) -> None:
        collectors: list[str] = []
        for profile in profiles:
            pname = profile.attrib.get("name", "?")
            settings: dict[str, tuple[str, _Node]] = {}
            for name, value, node in _params(profile):
                if name in ("capture-host", "capture-port", "capture-proto", "capture-id",
                            "capture-password", "version"):
                    settings.setdefault(name, (value, node))
                else:
                    self.ignored("transport_hep", name, value, node)
            label = f"transport_hep profile {pname}"
            if "version" in settings:
                value, node = settings["version"]
                version = self.integer(node, "version", value, 1, 3)
                if version != 3:
                    self.warn(("transport_hep", "version", value),
                              f"{node.where}: {label}: version={value} ignored: captagent-tls "
                              "sends HEPv3 only (HOMER 5 and later, heplify-server read it)")
            if "capture-host" not in settings or not settings["capture-host"][0]:
                raise ConfigError(f"{profile.where}: {label}: capture-host is missing")
            if "capture-port" not in settings:
                raise ConfigError(f"{profile.where}: {label}: capture-port is missing")
            host = settings["capture-host"][0]
            port_text, port_node = settings["capture-port"]
            port = self.integer(port_node, "capture-port", port_text, 1, 65535)
            proto_text, proto_node = settings.get("capture-proto", ("udp", profile))
            scheme = _HEP_SCHEMES.get(proto_text.lower())
            if scheme is None:
                raise ConfigError(f"{proto_node.where}: capture-proto: expected udp, tcp or "
                                  f"ssl, got {proto_text!r}")
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            address = f"{scheme}://{host}:{port}"
            try:
                parse_collector(address)
            except CollectorAddressError as exc:
                raise ConfigError(f"{profile.where}: {label}: {exc}") from None
            collectors.append(address)
            if "capture-id" in settings:
                value, node = settings["capture-id"]
                self.set("hep_id", self.integer(node, "capture-id", value, 0, 0xFFFFFFFF), node,
                         f"{label} capture-id")
            if "capture-password" in settings:
                value, node = settings["capture-password"]
                self.set("hep_password", value, node, f"{label} capture-password")
        if collectors:
            self.values["hep"] = list(dict.fromkeys(collectors))
            self.origin["hep"] = profiles[0].where
        else:
            self.warn(("transport_hep", "none"),
                      f"{module.where}: transport_hep has no enabled profile: no HEP collector "
                      "is configured")


def _module_elements(root: _Node) -> dict[str, _Node]:
    found: dict[str, _Node] = {}
    for element in root.iter("module"):
        name = element.attrib.get("name")
        if name:
            found.setdefault(name.strip(), element)
    return found


def _module_from_file(path: Path, name: str, budget: _XmlBudget) -> _Node:
    root = _load_xml(path, budget)
    element = _module_elements(root).get(name)
    if element is None:
        raise ConfigError(f"{path}: no <module name=\"{name}\"> in it")
    return element


def _read_main(reader: _CaptagentReader, main: Path, root: _Node) -> None:
    config_path = reader.core(root)
    loads: dict[str, _Node] = {}
    for load in root.iter("load"):
        name = load.attrib.get("module", "").strip()
        if name:
            loads.setdefault(name, load)
    inline = _module_elements(root)
    folders = list(dict.fromkeys([main.parent, *([Path(config_path)] if config_path else [])]))

    elements: dict[str, _Node] = {}
    for name, load in loads.items():
        if name not in _HANDLED:
            reason = _MODULE_REASONS.get(name, "captagent-tls has no such module")
            reader.warn(("module", name), f"{load.where}: module {name} ignored: {reason}")
            continue
        if name in inline:
            elements[name] = inline[name]
            continue
        candidates = [folder / f"{name}.xml" for folder in folders]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{load.where}: module {name} is loaded but "
                              f"{' or '.join(map(str, candidates))} is missing")
        elements[name] = _module_from_file(found, name, reader.budget)
    for name in _HANDLED:
        if name in elements:
            reader.module(name, elements[name])
    # installations ship every module's file; only unused keys are worth a word
    unused = main.parent / "protocol_tls.xml"
    if "protocol_tls" not in elements and unused.is_file():
        reader.warn(("unloaded", "protocol_tls"),
                    f"{main}: module protocol_tls is not loaded: the keys in {unused} are "
                    "not used")


def _read_modules(reader: _CaptagentReader, root: _Node) -> bool:
    found = _module_elements(root)
    for name, element in found.items():
        if name not in _HANDLED:
            reason = _MODULE_REASONS.get(name, "captagent-tls has no such module")
            reader.warn(("module", name), f"{element.where}: module {name} ignored: {reason}")
    for name in _HANDLED:
        if name in found:
            reader.module(name, found[name])
    return bool(found)


def load_captagent(path: str | Path) -> tuple[dict[str, object], list[str]]:
    """Read a captagent configuration into ``({dest: value}, warnings)``.

    *path* is the folder holding ``captagent.xml``, ``captagent.xml`` itself, or one module
    file (``protocol_tls.xml``...).  A folder without ``captagent.xml`` is read as if every
    module file in it were loaded.  Module files are looked for beside ``captagent.xml`` and
    then in core.conf's ``config_path``; ``<xi:include href=...>`` elements are expanded.
    Only enabled profiles count.  Each warning is one line, and each ignored setting is
    warned about once.
    """
    given = Path(path)
    reader = _CaptagentReader()
    try:
        is_dir, is_file = given.is_dir(), given.is_file()
    except OSError as exc:  # e.g. a name too long
        raise ConfigError(f"captagent configuration {given}: {exc.strerror or exc}") from None
    if is_dir:
        main = given / "captagent.xml"
        if main.is_file():
            _read_main(reader, main, _load_xml(main, reader.budget))
        else:
            files = [given / f"{name}.xml" for name in _HANDLED
                     if (given / f"{name}.xml").is_file()]
            if not files:
                raise ConfigError(f"{given}: no captagent.xml and no "
                                  f"{', '.join(n + '.xml' for n in _HANDLED)} in it")
            reader.warn(("no-main",), f"{given}: no captagent.xml: reading "
                                      f"{', '.join(f.name for f in files)} as if loaded")
            for file in files:
                reader.module(file.stem, _module_from_file(file, file.stem, reader.budget))
    elif is_file:
        root = _load_xml(given, reader.budget)
        if _is_main(root):
            _read_main(reader, given, root)
        elif not _read_modules(reader, root):
            raise ConfigError(f"{given}: not a captagent configuration (no <load> or <module>)")
    else:
        raise ConfigError(f"captagent configuration {given} not found")
    values = reader.values
    for dest, value in values.items():  # the same rules as the command line's and agent.toml's
        try:
            values[dest] = check(dest, value)
        except ValueError as exc:
            raise ConfigError(f"{reader.origin.get(dest, given)}: "
                              f"{reader.labels.get(dest, dest)}: {exc}") from None
    return values, reader.warnings


# ------------------------------------------------------------------------------- layering


#: Options that exclude one another: choosing one on the command line sets the others back
#: to their defaults, whatever a file says (``-r x.pcap`` with a file naming an interface
#: reads the file, as captagent's ``-D`` does).
ALTERNATIVES = (frozenset({"read", "interface"}),)


def merge(defaults: Mapping[str, object], file_values: Mapping[str, object],
          command_line_values: Mapping[str, object]) -> dict[str, object]:
    """Command line > config file > defaults, option by option.

    A list from a higher layer replaces the lower one's (``-k a.key`` on the command line
    means only ``a.key``, whatever the file lists).  Lists are copied, never shared.  See
    :data:`ALTERNATIVES` for options that displace one another.
    """
    file_values = dict(file_values)
    for group in ALTERNATIVES:
        if group & command_line_values.keys():
            for dest in group - command_line_values.keys():
                file_values.pop(dest, None)
    merged: dict[str, object] = {}
    for layer in (defaults, file_values, command_line_values):
        for dest, value in layer.items():
            merged[dest] = list(value) if isinstance(value, list) else value
    return merged


class _TypedOnly(argparse.Namespace):
    """A namespace that seems to have every attribute already (reading a missing one gives
    None), so argparse fills in no defaults and only the options in argv get stored."""

    def __getattr__(self, name: str) -> None:
        if name.startswith("_"):  # argparse's own bookkeeping, and Python's
            raise AttributeError(name)
        return None


def explicit_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The dests of the options present in *argv*, whatever their values.

    argparse puts a default only where the namespace lacks the attribute; parsing into a
    namespace that lacks none leaves exactly the options the user typed (``--hep-id 2001``
    counts even though 2001 is the default).  The parser itself is not modified.
    """
    typed = parser.parse_args(argv, namespace=_TypedOnly())
    return set(vars(typed))


def resolve(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            file_values: Mapping[str, object]) -> argparse.Namespace:
    """Parse *argv* and lay it over *file_values* and the parser's defaults.

    Options the parser does not know yet (from a file) are kept in the namespace too.
    """
    args = parser.parse_args(argv)
    defaults = {dest: parser.get_default(dest) for dest in vars(args)}
    given = explicit_args(parser, argv)
    typed = {dest: getattr(args, dest) for dest in given}
    return argparse.Namespace(**merge(defaults, file_values, typed))
