"""A captagent installation's configuration, read as captagent-tls options.

For people who switch over from the C agent: ``captagent.xml`` and the module files it loads
(``socket_pcap``, ``protocol_tls``/``protocol_tcp``, ``transport_hep``) become the same
``{dest: value}`` mapping as ``agent.toml``, and the captagent settings that have no effect
here are listed, once each.  Which captagent settings feed which option is written in the
option table (:data:`captagent_tls.config.options.TABLE`, ``captagent=``); how they are
translated (merging profiles, units, captagent's booleans) is here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from captagent_tls.config.files import ConfigError, relative_to
from captagent_tls.config.options import check
from captagent_tls.config.xml import XmlBudget, XmlNode, load_xml

__all__ = ["load_captagent"]


def _is_main(root: XmlNode) -> bool:
    """captagent.xml (core and module list) rather than one module's file?"""
    if root.tag == "document" and root.attrib.get("type", "").startswith("captagent/"):
        return True
    return any(True for _ in root.iter("configuration")) or any(True for _ in root.iter("load"))


def _enabled(profile: XmlNode) -> bool:
    # captagent compares the first four characters with "true"
    return profile.attrib.get("enable", "").strip().startswith("true")


def _params(element: XmlNode) -> Iterator[tuple[str, str, XmlNode]]:
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
_SAME_AS_OURS = frozenset(
    {
        ("reasm", "true"),
        ("tcpdefrag", "true"),
        ("payload-compression", "false"),
        ("payload-send", "true"),
        ("daemon", "false"),
        ("syslog", "false"),
    }
)

#: core.conf settings without meaning here and not worth a warning.
_CORE_SILENT = frozenset(
    {
        "version",
        "serial",
        "uuid",
        "module_path",
        "config_path",
        "capture_plans_path",
        "backup",
        "license",
    }
)

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
        self.budget = XmlBudget()
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

    def ignored(self, module: str, name: str, value: str, node: XmlNode) -> None:
        if (name, value) in _SAME_AS_OURS:
            return
        reason = _SETTING_REASONS.get(name, "unrecognised setting")
        self.warn((module, name), f"{node.where}: {module}: {name}={value!r} ignored: {reason}")

    def set(self, dest: str, value: object, node: XmlNode, label: str) -> None:
        if dest in self.values and self.values[dest] != value:
            self.warn(
                ("conflict", dest),
                f"{node.where}: {label} ignored: {dest} is already "
                f"{self.values[dest]!r} from {self.origin[dest]}",
            )
            return
        if dest not in self.values:
            self.values[dest] = value
            self.origin[dest] = node.where
            self.labels[dest] = label

    @staticmethod
    def integer(node: XmlNode, name: str, value: str, low: int, high: int) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise ConfigError(
                f"{node.where}: {name}: expected an integer from {low} to {high}, got {value!r}"
            )
        return number

    @staticmethod
    def seconds(node: XmlNode, name: str, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(
                f"{node.where}: {name}: expected a number of seconds above 0, got {value!r}"
            )
        return number

    def boolean(self, module: str, node: XmlNode, name: str, value: str) -> bool:
        if value not in ("true", "false"):
            self.warn(
                (module, name, "bool"),
                f"{node.where}: {module}: {name}={value!r} read as "
                f"{value.startswith('true')}, as captagent does",
            )
        return value.startswith("true")

    # ---- core.conf

    def core(self, main: XmlNode) -> str | None:
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

    def module(self, name: str, element: XmlNode) -> None:
        profiles = [p for p in element.iter("profile") if _enabled(p)]
        if name == "socket_pcap":
            self.socket_pcap(element, profiles)
        elif name == "transport_hep":
            self.transport_hep(element, profiles)
        else:
            self.protocol_tls(name, profiles)

    def socket_pcap(self, module: XmlNode, profiles: list[XmlNode]) -> None:
        if not profiles:
            self.warn(
                ("socket_pcap", "none"),
                f"{module.where}: socket_pcap has no enabled profile: no interface or "
                "filter is configured",
            )
            return
        captures = [self.pcap_profile(profile) for profile in profiles]
        first, label = profiles[0], "socket_pcap"
        devices = list(dict.fromkeys(c.interface for c in captures if c.interface))
        if len(devices) == 1:
            self.set("interface", devices[0], first, f"{label} dev")
        elif devices:
            self.set("interface", "any", first, f"{label} dev")
            self.warn(
                ("socket_pcap", "devs"),
                f"{first.where}: socket_pcap: enabled profiles capture on "
                f"{', '.join(devices)}: captagent-tls captures once, on 'any'",
            )
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
        intervals = [
            c.stats_interval for c in captures if c.stats_enable and c.stats_interval is not None
        ]
        if intervals:
            self.set("stats_interval", float(min(intervals)), first, f"{label} stats-interval")
        if len(profiles) > 1:
            names = ", ".join(p.attrib.get("name", "?") for p in profiles)
            self.warn(
                ("socket_pcap", "merged"),
                f"{first.where}: socket_pcap: enabled profiles {names} are merged into "
                f"one capture (filter: {self.values.get('filter', 'none')})",
            )

    def pcap_profile(self, profile: XmlNode) -> _PcapProfile:
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
                    self.warn(
                        ("socket_pcap", name, "short"),
                        f"{node.where}: socket_pcap: snap-len={value} cuts longer "
                        "packets (offloaded TCP segments reach 64 KiB): TLS records "
                        "in them cannot be decrypted",
                    )
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

    def protocol_tls(self, module: str, profiles: list[XmlNode]) -> None:
        keys: list[str] = []
        for profile in profiles:
            for name, value, node in _params(profile):
                if name == "private-key-path":
                    if value:
                        keys.append(relative_to(Path(node.file).parent, value))
                elif name == "flow-timeout":
                    self.set(
                        "flow_timeout",
                        self.seconds(node, name, value),
                        node,
                        f"{module} flow-timeout",
                    )
                else:
                    self.ignored(module, name, value, node)
        if keys:
            known = self.values.setdefault("key", [])
            assert isinstance(known, list)
            known.extend(k for k in dict.fromkeys(keys) if k not in known)

    def transport_hep(self, module: XmlNode, profiles: list[XmlNode]) -> None:
        from captagent_tls.sinks.hep.addresses import CollectorAddressError, parse_collector

        collectors: list[str] = []
        for profile in profiles:
            pname = profile.attrib.get("name", "?")
            settings: dict[str, tuple[str, XmlNode]] = {}
            for name, value, node in _params(profile):
                if name in (
                    "capture-host",
                    "capture-port",
                    "capture-proto",
                    "capture-id",
                    "capture-password",
                    "version",
                ):
                    settings.setdefault(name, (value, node))
                else:
                    self.ignored("transport_hep", name, value, node)
            label = f"transport_hep profile {pname}"
            if "version" in settings:
                value, node = settings["version"]
                version = self.integer(node, "version", value, 1, 3)
                if version != 3:
                    self.warn(
                        ("transport_hep", "version", value),
                        f"{node.where}: {label}: version={value} ignored: captagent-tls "
                        "sends HEPv3 only (HOMER 5 and later, heplify-server read it)",
                    )
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
                raise ConfigError(
                    f"{proto_node.where}: capture-proto: expected udp, tcp or "
                    f"ssl, got {proto_text!r}"
                )
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
                self.set(
                    "hep_id",
                    self.integer(node, "capture-id", value, 0, 0xFFFFFFFF),
                    node,
                    f"{label} capture-id",
                )
            if "capture-password" in settings:
                value, node = settings["capture-password"]
                self.set("hep_password", value, node, f"{label} capture-password")
        if collectors:
            self.values["hep"] = list(dict.fromkeys(collectors))
            self.origin["hep"] = profiles[0].where
        else:
            self.warn(
                ("transport_hep", "none"),
                f"{module.where}: transport_hep has no enabled profile: no HEP collector "
                "is configured",
            )


def _module_elements(root: XmlNode) -> dict[str, XmlNode]:
    found: dict[str, XmlNode] = {}
    for element in root.iter("module"):
        name = element.attrib.get("name")
        if name:
            found.setdefault(name.strip(), element)
    return found


def _module_from_file(path: Path, name: str, budget: XmlBudget) -> XmlNode:
    root = load_xml(path, budget)
    element = _module_elements(root).get(name)
    if element is None:
        raise ConfigError(f'{path}: no <module name="{name}"> in it')
    return element


def _read_main(reader: _CaptagentReader, main: Path, root: XmlNode) -> None:
    config_path = reader.core(root)
    loads: dict[str, XmlNode] = {}
    for load in root.iter("load"):
        name = load.attrib.get("module", "").strip()
        if name:
            loads.setdefault(name, load)
    inline = _module_elements(root)
    folders = list(dict.fromkeys([main.parent, *([Path(config_path)] if config_path else [])]))

    elements: dict[str, XmlNode] = {}
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
            raise ConfigError(
                f"{load.where}: module {name} is loaded but "
                f"{' or '.join(map(str, candidates))} is missing"
            )
        elements[name] = _module_from_file(found, name, reader.budget)
    for name in _HANDLED:
        if name in elements:
            reader.module(name, elements[name])
    # installations ship every module's file; only unused keys are worth a word
    unused = main.parent / "protocol_tls.xml"
    if "protocol_tls" not in elements and unused.is_file():
        reader.warn(
            ("unloaded", "protocol_tls"),
            f"{main}: module protocol_tls is not loaded: the keys in {unused} are not used",
        )


def _read_modules(reader: _CaptagentReader, root: XmlNode) -> bool:
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
            _read_main(reader, main, load_xml(main, reader.budget))
        else:
            files = [
                given / f"{name}.xml" for name in _HANDLED if (given / f"{name}.xml").is_file()
            ]
            if not files:
                raise ConfigError(
                    f"{given}: no captagent.xml and no "
                    f"{', '.join(n + '.xml' for n in _HANDLED)} in it"
                )
            reader.warn(
                ("no-main",),
                f"{given}: no captagent.xml: reading "
                f"{', '.join(f.name for f in files)} as if loaded",
            )
            for file in files:
                reader.module(file.stem, _module_from_file(file, file.stem, reader.budget))
    elif is_file:
        root = load_xml(given, reader.budget)
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
            raise ConfigError(
                f"{reader.origin.get(dest, given)}: {reader.labels.get(dest, dest)}: {exc}"
            ) from None
    return values, reader.warnings
