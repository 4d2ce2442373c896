"""Configuration files: agent.toml, a captagent installation's XML, and their precedence."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest

from captagent_tls.cli import build_parser
from captagent_tls.config import (
    OPTIONS,
    ConfigError,
    explicit_args,
    load_captagent,
    load_native,
    merge,
    resolve,
)
from tests.support.paths import REPO, TESTS

DATA = TESTS / "data" / "captagent"
EXAMPLE = REPO / "contrib" / "agent.toml.example"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(load, path) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- agent.toml


def test_native_flat_keys(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "agent.toml",
        """
        interface = "eth0"
        filter = "tcp port 5061"
        promisc = true
        snaplen = 65535
        key = ["/etc/k1.pem", "/etc/k2.pem"]
        hep = ["udp://10.0.0.5:9060", "tls://[2001:db8::1]:9061"]
        hep_id = 4242
        flow_timeout = 60
        verbose = 2
    """.replace("\n        ", "\n"),
    )
    assert load_native(cfg) == {
        "interface": "eth0", "filter": "tcp port 5061", "promisc": True, "snaplen": 65535,
        "key": ["/etc/k1.pem", "/etc/k2.pem"],
        "hep": ["udp://10.0.0.5:9060", "tls://[2001:db8::1]:9061"],
        "hep_id": 4242, "flow_timeout": 60.0, "verbose": 2,
    }  # fmt: skip
    assert isinstance(load_native(cfg)["flow_timeout"], float)


def test_native_tables_dashes_and_short_names(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "agent.toml",
        """
[capture]
buffer-size = 2048
[keys]
keylog = "/run/keys.log"
keylog-listen = ["udp://127.0.0.1:5999", "tcp://[::1]:5999"]
keylog_listen_remote = true
key-wait = 1.5
[hep]
collectors = "tcp://homer:9060"
id = 7
hep-password = "pw"
ip_proto = 6
queue = "1000,65536"
[tuning]
max_flow_buffer = 1048576
[agent]
user = "captagent"
metrics = "127.0.0.1:9966"
stats-interval = 30
""",
    )
    assert load_native(cfg) == {
        "buffer_size": 2048, "keylog": ["/run/keys.log"], "key_wait": 1.5,
        "keylog_listen": ["udp://127.0.0.1:5999", "tcp://[::1]:5999"],
        "keylog_listen_remote": True,
        "hep": ["tcp://homer:9060"], "hep_id": 7, "hep_password": "pw", "hep_ip_proto": 6,
        "hep_queue": "1000,65536", "max_flow_buffer": 1048576, "user": "captagent",
        "metrics": "127.0.0.1:9966", "stats_interval": 30.0,
    }  # fmt: skip


def test_native_relative_paths_follow_the_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "etc" / "agent.toml",
        """
read = "caps/a.pcap"
key = ["keys/a.key", "/abs/b.key"]
export_keylog = "out.log"
[hep]
ca = "ca.pem"
""",
    )
    values = load_native(cfg)
    etc = tmp_path / "etc"
    assert values["read"] == str(etc / "caps" / "a.pcap")
    assert values["key"] == [str(etc / "keys" / "a.key"), "/abs/b.key"]
    assert values["export_keylog"] == str(etc / "out.log")
    assert values["hep_ca"] == str(etc / "ca.pem")
    assert load_native(write(tmp_path / "stdin.toml", 'read = "-"\n'))["read"] == "-"


def test_native_home_of_a_user_who_does_not_exist_is_one_clear_error(tmp_path: Path) -> None:
    """``~user`` expands to that user's home; a user who does not exist is said as such (it
    was a RuntimeError from pathlib, found by fuzzing the config reader)."""
    cfg = write(tmp_path / "agent.toml", 'key = ["~no-such-user-here-7/server.key"]\n')
    with pytest.raises(ConfigError, match="there is no user 'no-such-user-here-7' here"):
        load_native(cfg)
    home = load_native(write(tmp_path / "home.toml", 'key = ["~/server.key"]\n'))
    assert home["key"] == [str(Path.home() / "server.key")]


def test_example_file_loads_and_documents_every_option(tmp_path: Path) -> None:
    values = load_native(EXAMPLE)
    assert values["interface"] == "any" and values["hep_id"] == 2001
    # every commented example (`#name = value`) is a valid setting, and all options appear
    text = re.sub(r"(?m)^#(?=\w+ = )", "", EXAMPLE.read_text(encoding="utf-8"))
    everything = load_native(write(tmp_path / "agent.toml", text))
    assert set(everything) == set(OPTIONS)


def test_native_empty_file(tmp_path: Path) -> None:
    assert load_native(write(tmp_path / "agent.toml", "# nothing\n")) == {}


def test_native_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "agent.toml", 'interface = "eth0"\n\nhep_id = = 3\n')
    message = error_of(load_native, cfg)
    assert message.startswith(f"{cfg}:3:")
    assert "TOML syntax error" in message


@pytest.mark.parametrize(("text", "needles"), [
    ("hepid = 3\n", ["hepid", "unknown key", "did you mean 'hep_id'"]),
    ("[hep]\nidd = 3\n", ["hep.idd", "unknown key in [hep]", "did you mean 'id'"]),
    ("[capture]\nhep = []\n", ["capture.hep", "unknown key in [capture]"]),
    ("[nonsense]\nx = 1\n", ["nonsense", "unknown key"]),
    ('interface = 3\n', ["interface", "expected a string, got integer 3"]),
    ('json = "yes"\n', ["json", "expected true or false, got string 'yes'"]),
    ('hep_id = "2001"\n', ["hep_id", "expected an integer, got string '2001'"]),
    ("hep_id = true\n", ["hep_id", "expected an integer, got boolean True"]),
    ("snaplen = 1.5\n", ["snaplen", "expected an integer, got float 1.5"]),
    ('flow_timeout = "3"\n', ["flow_timeout", "expected a number"]),
    ("flow_timeout = inf\n", ["flow_timeout", "finite"]),
    ("key = 3\n", ["key", "expected a string or an array of strings"]),
    ('key = ["a", 2]\n', ["key", "item 2: expected a string, got integer 2"]),
    ("flow_timeout = 0\n", ["flow_timeout", "must be more than 0"]),
    ("hep_ip_proto = 300\n", ["hep_ip_proto", "between 0 and 255"]),
    ("hep_id = -1\n", ["hep_id", "between 0 and 4294967295"]),
    ("snaplen = 0\n", ["snaplen", "between 1 and 262144"]),
    ('hep = ["sctp://h:1"]\n', ["hep", "scheme must be udp, tcp or tls"]),
    ('hep = "homer"\n', ["hep", "expected HOST:PORT"]),
    ('hep_queue = "many"\n', ["hep_queue", "MESSAGES,BYTES"]),
    ('metrics = "9966"\n', ["metrics", "expected HOST:PORT"]),
    ('keylog_listen = "http://127.0.0.1:1"\n', ["keylog_listen", "use udp://HOST:PORT"]),
    ("[keys]\nkeylog_listen_remote = 1\n", ["keys.keylog_listen_remote", "true or false"]),
    ('user = ""\n', ["user", "must not be empty"]),
    ('capture = "eth0"\n', ["capture", "expected a table"]),
    ('[hep]\nid = {a = 1}\n', ["hep.id", "got a table"]),
    ('interface = {a = 1}\n', ["interface", "got a table"]),
    ('hep_id = 1\n[hep]\nid = 2\n', ["hep.id", "hep_id is already set by hep_id"]),
    ('hep-id = 1\nhep_id = 2\n', ["hep_id is already set by hep-id"]),
])  # fmt: skip
def test_native_errors_name_file_and_key(tmp_path: Path, text: str, needles: list[str]) -> None:
    cfg = write(tmp_path / "agent.toml", text)
    message = error_of(load_native, cfg)
    assert message.startswith(f"{cfg}: ")
    for needle in needles:
        assert needle in message


def test_native_errors_never_show_passwords(tmp_path: Path) -> None:
    message = error_of(load_native, write(tmp_path / "agent.toml", "key_password = 987654\n"))
    assert "expected a string, got integer" in message and "987654" not in message
    message = error_of(load_native, write(tmp_path / "b.toml", "[hep]\npassword = [31337]\n"))
    assert "hep.password" in message and "31337" not in message


def test_native_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    assert "cannot read config file" in error_of(load_native, tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'filter = "caf\xe9"\n')
    assert "not UTF-8" in error_of(load_native, bad)


# -------------------------------------------------------------------------- captagent XML

FULL_VALUES = {
    "interface": "eth0", "filter": "tcp port 5061", "promisc": True, "buffer_size": 20 * 1024,
    "key": ["/etc/kamailio/tls/server.key"], "flow_timeout": 120.0,
    "hep": ["udp://homer.example.net:9060"], "hep_id": 2042, "hep_password": "s3cret",
}  # fmt: skip


def test_seed_snippets_load_verbatim() -> None:
    values, warnings = load_captagent(DATA / "seed")
    # promisc: captagent leaves it off unless a profile turns it on
    assert values == {
        "interface": "any",
        "filter": "tcp port 5061",
        "promisc": False,
        "flow_timeout": 180.0,
        "key": ["/etc/captagent/server.key"],
    }
    assert "no captagent.xml" in warnings[0]
    assert any("capture-plan='tls_capture_plan.cfg' ignored" in w for w in warnings)
    assert any("tcpdefrag='false' ignored" in w for w in warnings)

    tls, _ = load_captagent(DATA / "seed" / "protocol_tls.xml")
    assert tls == {"flow_timeout": 180.0, "key": ["/etc/captagent/server.key"]}
    pcap, _ = load_captagent(DATA / "seed" / "socket_pcap.xml")
    assert pcap == {"interface": "any", "filter": "tcp port 5061", "promisc": False}


def test_seed_snippets_under_a_captagent_xml(tmp_path: Path) -> None:
    for name in ("protocol_tls.xml", "socket_pcap.xml"):
        shutil.copy(DATA / "seed" / name, tmp_path / name)
    write(
        tmp_path / "captagent.xml",
        """<?xml version="1.0"?>
<document type="captagent/xml">
  <configuration name="modules.conf"><modules>
    <load module="protocol_tls" register="local"/>
    <load module="socket_pcap" register="local"/>
  </modules></configuration>
</document>
""",
    )
    values, warnings = load_captagent(tmp_path)
    assert values["key"] == ["/etc/captagent/server.key"]
    assert values["filter"] == "tcp port 5061"
    assert not any("no captagent.xml" in w for w in warnings)


def test_realistic_installation() -> None:
    values, warnings = load_captagent(DATA / "full")
    assert values == FULL_VALUES
    assert load_captagent(DATA / "full" / "captagent.xml") == (values, warnings)
    text = "\n".join(warnings)
    for needle in (
        "module protocol_sip ignored",
        "module database_hash ignored",
        "module protocol_rtcp ignored",
        "daemon='true' ignored",
        "pid_file='/var/run/captagent.pid' ignored",
        "capture-plan=",
        "reasm='false' ignored",
    ):
        assert needle in text
    # values that already say what captagent-tls does are not warned about
    for quiet in (
        "tcpdefrag",
        "payload-compression",
        "syslog",
        "config_path",
        "uuid",
        "protocol_tcp",
    ):
        assert quiet not in text
    # disabled profiles count for nothing, warnings included
    assert "eth1" not in text and "websocket" not in text and "capture-filter" not in text
    assert "10.9.9.9" not in str(values)
    assert all("\n" not in w for w in warnings)
    assert all(re.match(r"\S+\.xml:\d+: ", w) for w in warnings)


def test_xinclude_and_ipv6_tls_collector() -> None:
    values, warnings = load_captagent(DATA / "xinclude")
    assert values == {
        "interface": "bond0", "filter": "tcp port 5061 or tcp port 5062", "snaplen": 65535,
        "promisc": False,
        "key": [str(DATA / "xinclude" / "modules" / "keys" / "sip.key")],
        "flow_timeout": 60.0, "hep": ["tls://[2001:db8::5]:9062"], "hep_id": 7,
    }  # fmt: skip
    assert warnings == []


MAIN = """<?xml version="1.0"?>
<document type="captagent/xml">
  <configuration name="core.conf"><settings>{core}</settings></configuration>
  <configuration name="modules.conf"><modules>{loads}</modules></configuration>
</document>
"""


def module_file(name: str, *profiles: str) -> str:
    return (
        f'<document type="captagent_module/xml"><module name="{name}" description="x" '
        f'serial="1">{"".join(profiles)}</module></document>\n'
    )


def profile(name: str, *params: tuple[str, str], enable: str = "true") -> str:
    settings = "".join(f'<param name="{k}" value="{v}"/>' for k, v in params)
    return (
        f'<profile name="{name}" description="d" enable="{enable}" serial="1">'
        f"<settings>{settings}</settings></profile>"
    )


def install(tmp_path: Path, modules: dict[str, str], core: str = "") -> Path:
    loads = "".join(f'<load module="{m}" register="local"/>' for m in modules)
    write(tmp_path / "captagent.xml", MAIN.format(core=core, loads=loads))
    for name, text in modules.items():
        if text:
            write(tmp_path / f"{name}.xml", text)
    return tmp_path


def test_ignored_settings_are_listed_once(tmp_path: Path) -> None:
    pcap = module_file(
        "socket_pcap",
        profile(
            "a",
            ("dev", "eth0"),
            ("capture-plan", "sip.cfg"),
            ("erspan", "true"),
            ("filter", "port 5061"),
        ),
        profile(
            "b",
            ("dev", "eth0"),
            ("capture-plan", "tls.cfg"),
            ("erspan", "true"),
            ("filter", "port 5062"),
        ),
    )
    hep = module_file(
        "transport_hep",
        profile(
            "h1",
            ("capture-host", "10.0.0.1"),
            ("capture-port", "9060"),
            ("payload-compression", "true"),
            ("capture-id", "1"),
        ),
        profile(
            "h2",
            ("capture-host", "10.0.0.2"),
            ("capture-port", "9060"),
            ("payload-compression", "true"),
            ("capture-id", "2"),
        ),
    )
    root = install(
        tmp_path,
        {"socket_pcap": pcap, "transport_hep": hep, "protocol_sip": "", "database_hash": ""},
        core='<param name="node" value="sbc1"/><param name="mystery" value="1"/>',
    )
    values, warnings = load_captagent(root)
    assert values["hep"] == ["udp://10.0.0.1:9060", "udp://10.0.0.2:9060"]
    assert values["hep_id"] == 1
    assert values["filter"] == "(port 5061) or (port 5062)"
    for needle in (
        "capture-plan=",
        "erspan=",
        "payload-compression=",
        "capture-id ignored",
        "module protocol_sip",
        "module database_hash",
        "node='sbc1'",
        "mystery='1' ignored: unrecognised setting",
        "are merged into one capture",
    ):
        assert sum(needle in w for w in warnings) == 1, (needle, warnings)


def test_disabled_profiles_are_ignored(tmp_path: Path) -> None:
    pcap = module_file(
        "socket_pcap",
        profile("off", ("dev", "eth9"), ("filter", "udp"), ("weird", "1"), enable="false"),
        profile("noattr", ("dev", "eth8"), enable=""),
        profile("on", ("dev", "eth0"), ("filter", "tcp port 5061")),
    )
    tls = module_file(
        "protocol_tls", profile("off", ("private-key-path", "/x.key"), enable="false")
    )
    values, warnings = load_captagent(install(tmp_path, {"socket_pcap": pcap, "protocol_tls": tls}))
    assert values == {"interface": "eth0", "filter": "tcp port 5061", "promisc": False}
    assert not any("weird" in w or "merged" in w for w in warnings)


def test_capture_profiles_merge(tmp_path: Path) -> None:
    pcap = module_file(
        "socket_pcap",
        profile(
            "a",
            ("dev", "eth0"),
            ("filter", "tcp port 5061"),
            ("ipv4fragments", "true"),
            ("snap-len", "65535"),
            ("promisc", "false"),
        ),
        profile(
            "b",
            ("dev", "eth1"),
            ("filter", "tcp port 5062"),
            ("promisc", "true"),
            ("snap-len", "3200"),
            ("stats-enable", "true"),
            ("stats-interval", "60"),
        ),
    )
    values, warnings = load_captagent(install(tmp_path, {"socket_pcap": pcap}))
    assert values["interface"] == "any"
    assert values["filter"] == ("((tcp port 5061) or (ip[6:2] & 0x3fff != 0)) or (tcp port 5062)")
    assert values["promisc"] is True
    assert values["snaplen"] == 65535
    assert values["stats_interval"] == 60.0
    assert any("eth0, eth1" in w and "'any'" in w for w in warnings)
    assert any("snap-len=3200" in w for w in warnings)


def test_profile_without_filter_takes_everything(tmp_path: Path) -> None:
    pcap = module_file(
        "socket_pcap",
        profile("a", ("dev", "eth0"), ("filter", "port 1")),
        profile("b", ("dev", "eth0")),
    )
    values, _ = load_captagent(install(tmp_path, {"socket_pcap": pcap}))
    assert "filter" not in values


def test_hep_versions_protocols_and_core_debug(tmp_path: Path) -> None:
    hep = module_file(
        "transport_hep",
        profile(
            "h",
            ("version", "2"),
            ("capture-host", "homer"),
            ("capture-port", "9061"),
            ("capture-proto", "TCP"),
            ("capture-password", ""),
        ),
    )
    values, warnings = load_captagent(
        install(tmp_path, {"transport_hep": hep}, core='<param name="debug" value="7"/>')
    )
    assert values == {"hep": ["tcp://homer:9061"], "hep_password": "", "verbose": 2}
    assert sum("version=2 ignored" in w and "HEPv3" in w for w in warnings) == 1


def test_module_loaded_without_profiles_warns(tmp_path: Path) -> None:
    hep = module_file("transport_hep", profile("h", ("capture-host", "x"), enable="false"))
    values, warnings = load_captagent(install(tmp_path, {"transport_hep": hep}))
    assert values == {}
    assert any("no HEP collector" in w for w in warnings)


def test_unloaded_module_file_is_reported(tmp_path: Path) -> None:
    root = install(tmp_path, {"socket_pcap": module_file("socket_pcap", profile("p"))})
    write(
        root / "protocol_tls.xml",
        module_file("protocol_tls", profile("t", ("private-key-path", "/k"))),
    )
    values, warnings = load_captagent(root)
    assert "key" not in values
    assert any("module protocol_tls is not loaded" in w for w in warnings)


def test_module_files_fall_back_to_config_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    write(
        elsewhere / "protocol_tls.xml",
        module_file("protocol_tls", profile("t", ("private-key-path", "/k.pem"))),
    )
    root = install(
        tmp_path / "main",
        {"protocol_tls": ""},
        core=f'<param name="config_path" value="{elsewhere}"/>',
    )
    values, _ = load_captagent(root)
    assert values == {"key": ["/k.pem"]}


def test_broken_xml_names_file_and_line(tmp_path: Path) -> None:
    root = install(tmp_path, {"socket_pcap": module_file("socket_pcap", profile("p"))})
    write(
        root / "socket_pcap.xml",
        '<?xml version="1.0"?>\n<document>\n  <module name="x">\n  </modul>\n</document>\n',
    )
    message = error_of(load_captagent, root)
    assert message.startswith(f"{root / 'socket_pcap.xml'}:4:")
    assert "mismatched tag" in message
    write(root / "captagent.xml", "<document>\n<configuration>\n")
    assert error_of(load_captagent, root).startswith(f"{root / 'captagent.xml'}:3:")


def test_missing_include_and_module_file(tmp_path: Path) -> None:
    write(
        tmp_path / "captagent.xml",
        '<document type="captagent/xml" '
        'xmlns:xi="http://www.w3.org/2001/XInclude">\n'
        '  <xi:include href="modules/gone.xml"/>\n</document>\n',
    )
    message = error_of(load_captagent, tmp_path)
    assert message.startswith(f"{tmp_path / 'captagent.xml'}:2: ")
    assert f"included file {tmp_path / 'modules' / 'gone.xml'} not found" in message

    other = install(tmp_path / "b", {"protocol_tls": ""})
    message = error_of(load_captagent, other)
    assert f"{other / 'protocol_tls.xml'} is missing" in message
    assert message.startswith(f"{other / 'captagent.xml'}:")


def test_include_loops_and_unsupported_includes(tmp_path: Path) -> None:
    write(
        tmp_path / "a.xml", '<document type="captagent/xml"><xi:include href="b.xml"/></document>'
    )
    write(tmp_path / "b.xml", '<module name="m"><xi:include href="a.xml"/></module>')
    assert "includes itself" in error_of(load_captagent, tmp_path / "a.xml")
    write(
        tmp_path / "c.xml",
        '<document type="captagent/xml"><xi:include href="b.xml" parse="text"/></document>',
    )
    assert "only whole XML files" in error_of(load_captagent, tmp_path / "c.xml")


@pytest.mark.parametrize(("params", "needle"), [
    ((("capture-port", "9060"),), "capture-host is missing"),
    ((("capture-host", "h"),), "capture-port is missing"),
    ((("capture-host", "h"), ("capture-port", "http")), "capture-port: expected an integer"),
    ((("capture-host", "h"), ("capture-port", "70000")), "from 1 to 65535"),
    ((("capture-host", "h"), ("capture-port", "1"), ("capture-proto", "sctp")),
     "capture-proto: expected udp, tcp or ssl, got 'sctp'"),
    ((("capture-host", "h"), ("capture-port", "1"), ("version", "three")), "version"),
    ((("capture-host", "h"), ("capture-port", "1"), ("capture-id", "x")), "capture-id"),
])  # fmt: skip
def test_bad_hep_values_are_errors_with_line(tmp_path: Path, params: tuple, needle: str) -> None:
    root = install(tmp_path, {"transport_hep": module_file("transport_hep", profile("h", *params))})
    message = error_of(load_captagent, root)
    assert needle in message
    assert re.match(rf"{re.escape(str(root / 'transport_hep.xml'))}:\d+: ", message)


def test_bad_numbers_elsewhere(tmp_path: Path) -> None:
    tls = module_file("protocol_tls", profile("t", ("flow-timeout", "soon")))
    assert "flow-timeout: expected a number of seconds" in error_of(
        load_captagent, install(tmp_path / "a", {"protocol_tls": tls})
    )
    pcap = module_file("socket_pcap", profile("p", ("snap-len", "big")))
    assert "snap-len: expected an integer" in error_of(
        load_captagent, install(tmp_path / "b", {"socket_pcap": pcap})
    )


def test_captagent_values_follow_the_command_line_rules(tmp_path: Path) -> None:
    """A value captagent accepts but that means nothing here is refused with the rule the
    command line uses, naming the file, line and captagent setting."""
    tls = module_file("protocol_tls", profile("t", ("flow-timeout", "1e308")))
    message = error_of(load_captagent, install(tmp_path / "a", {"protocol_tls": tls}))
    assert re.match(
        rf"{re.escape(str(tmp_path / 'a' / 'protocol_tls.xml'))}:\d+: "
        r"protocol_tls flow-timeout: must be more than 0 and at most 86400",
        message,
    )
    pcap = module_file(
        "socket_pcap",
        profile("p", ("dev", "eth0"), ("stats-enable", "true"), ("stats-interval", "100000000")),
    )
    message = error_of(load_captagent, install(tmp_path / "b", {"socket_pcap": pcap}))
    assert "socket_pcap stats-interval: must be between 1 and 86400 seconds" in message
    hep = module_file(
        "transport_hep",
        profile(
            "h", ("capture-host", "h"), ("capture-port", "9"), ("capture-password", "p" * 70_000)
        ),
    )
    message = error_of(load_captagent, install(tmp_path / "c", {"transport_hep": hep}))
    assert "capture-password: 70000 bytes in UTF-8, more than a HEP chunk holds" in message
    assert "ppppp" not in message  # a password is never shown


def test_deep_xml_and_long_include_chains_end_in_one_line(tmp_path: Path) -> None:
    deep = write(tmp_path / "deep.xml", "<document>" + "<a>" * 1000 + "</a>" * 1000 + "</document>")
    assert "deep.xml:1: nested too deeply (more than 64 elements" in error_of(load_captagent, deep)
    # 60 levels are fine: nothing recursive is left in reading them
    ok = write(
        tmp_path / "ok.xml",
        '<document type="captagent/xml">' + "<a>" * 60 + "</a>" * 60 + "</document>",
    )
    assert load_captagent(ok) == ({}, [])
    for i in range(400):
        target = f'<xi:include href="{i + 1}.xml"/>' if i < 399 else "<module/>"
        write(tmp_path / "chain" / f"{i}.xml", f"<document>{target}</document>")
    assert "includes nested too deeply (more than 16" in error_of(
        load_captagent, tmp_path / "chain" / "0.xml"
    )
    # a fan-out (each file includes the next ten times) is bounded by the files read
    for i in range(6):
        body = f'<xi:include href="f{i + 1}.xml"/>' * 10 if i < 5 else "<module/>"
        write(tmp_path / "fan" / f"f{i}.xml", f"<document>{body}</document>")
    assert "more than 256 files read" in error_of(load_captagent, tmp_path / "fan" / "f0.xml")


def test_deeply_nested_toml_ends_in_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "agent.toml", "x = " + "[" * 1000 + "]" * 1000 + "\n")
    assert error_of(load_native, cfg) == (
        f"{cfg}: nested too deeply (arrays or inline tables within one another, hundreds deep)"
    )
    cfg = write(tmp_path / "b.toml", "x = " + "{a = " * 1000 + "1" + "}" * 1000 + "\n")
    assert "nested too deeply" in error_of(load_native, cfg)


def test_files_too_large_to_be_configurations(tmp_path: Path) -> None:
    assert "too large for a configuration file" in error_of(load_native, "/dev/zero")
    big = tmp_path / "captagent.xml"
    big.write_bytes(b"<document>" + b" " * (5 << 20) + b"</document>")
    assert "too large for a configuration file" in error_of(load_captagent, big)


def test_sizes_and_hold_limits_in_toml(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "agent.toml",
        '[keys]\nkey_hold_flow = "2M"\nkey_hold_total = '
        '1073741824\n[tuning]\nmax_flow_buffer = "64k"\n',
    )
    assert load_native(cfg) == {
        "key_hold_flow": 2 << 20,
        "key_hold_total": 1 << 30,
        "max_flow_buffer": 64 << 10,
    }
    args = resolve(build_parser(), ["-r", "x.pcap", "--key-hold-flow", "1M"], load_native(cfg))
    assert (args.key_hold_flow, args.key_hold_total) == (1 << 20, 1 << 30)
    defaults = build_parser().parse_args(["-r", "x.pcap"])
    assert (defaults.key_hold_flow, defaults.key_hold_total) == (16 << 20, 256 << 20)
    for text, needle in (
        ('key_hold_flow = "2T"', "expected a size in bytes"),
        ("key_hold_flow = 1.5", "expected a size in bytes"),
        ('key_hold_flow = "0"', "must be between 16384"),
        ('filter = "a\\u0000b"', "must not contain a NUL character"),
    ):
        assert needle in error_of(load_native, write(tmp_path / "bad.toml", text + "\n"))


def test_not_captagent_files(tmp_path: Path) -> None:
    assert "not found" in error_of(load_captagent, tmp_path / "nowhere")
    assert "no captagent.xml" in error_of(load_captagent, tmp_path)
    write(tmp_path / "other.xml", "<html><body/></html>")
    assert "not a captagent configuration" in error_of(load_captagent, tmp_path / "other.xml")


def test_protocol_tcp_flow_timeout_yields_to_protocol_tls(tmp_path: Path) -> None:
    root = install(
        tmp_path,
        {
            "protocol_tcp": module_file("protocol_tcp", profile("c", ("flow-timeout", "300"))),
            "protocol_tls": module_file(
                "protocol_tls", profile("t", ("flow-timeout", "90"), ("private-key-path", "k.pem"))
            ),
        },
    )
    values, warnings = load_captagent(root)
    assert values == {"flow_timeout": 90.0, "key": [str(root / "k.pem")]}
    assert any("protocol_tcp flow-timeout ignored" in w for w in warnings)


# ------------------------------------------------------------------------------ precedence


def test_merge_order_and_lists() -> None:
    defaults = {"hep_id": 2001, "key": [], "json": False, "flow_timeout": 180.0}
    file_values = {"hep_id": 7, "key": ["/etc/a.key", "/etc/b.key"], "json": True}
    cli = {"key": ["/tmp/c.key"]}
    merged = merge(defaults, file_values, cli)
    assert merged == {"hep_id": 7, "key": ["/tmp/c.key"], "json": True, "flow_timeout": 180.0}
    assert merged["key"] is not cli["key"]
    assert merge(defaults, {}, {})["key"] is not defaults["key"]


def test_explicit_args_with_the_real_parser() -> None:
    parser = build_parser()
    argv = ["-r", "x.pcap", "-k", "a.key", "-k", "b.key", "--hep-id", "2001", "-vv", "--json"]
    assert explicit_args(parser, argv) == {"read", "key", "hep_id", "verbose", "json"}
    # the parser's defaults are intact afterwards
    args = parser.parse_args(["-r", "x.pcap"])
    assert args.hep_id == 2001 and args.key == [] and args.verbose == 0 and args.json is False


def test_explicit_args_on_a_parser_with_set_defaults() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("--n", type=int, default=3)
    parser.set_defaults(extra="x")
    assert explicit_args(parser, []) == set()
    assert explicit_args(parser, ["--n", "3"]) == {"n"}
    assert vars(parser.parse_args([])) == {"flag": False, "n": 3, "extra": "x"}


def test_resolve_command_line_over_file_over_defaults(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "agent.toml",
        'read = "/cap.pcap"\nhep_id = 9\nkey = ["/f.key"]\njson = true\nflow_timeout = 30\n',
    )
    parser = build_parser()
    args = resolve(
        parser, ["-r", "other.pcap", "--hep-id", "2001", "-k", "cli.key"], load_native(cfg)
    )
    assert args.read == "other.pcap"
    assert args.hep_id == 2001  # typed on the command line, even though it is the default
    assert args.key == ["cli.key"]  # the command line's list replaces the file's
    assert args.json is True and args.flow_timeout == 30.0  # from the file
    assert args.max_flow_buffer == 4 << 20 and args.quiet is False  # defaults


def test_resolve_with_captagent_values() -> None:
    values, _ = load_captagent(DATA / "full")
    args = resolve(build_parser(), ["-r", "x.pcap", "--hep", "udp://127.0.0.1:9060"], values)
    assert args.hep == ["udp://127.0.0.1:9060"]
    assert args.hep_id == 2042 and args.key == ["/etc/kamailio/tls/server.key"]
    assert args.read == "x.pcap" and args.interface is None  # -r displaces the file's dev
    live = resolve(build_parser(), ["-v"], values)
    assert live.interface == "eth0" and live.read is None and live.verbose == 1


def test_command_line_input_displaces_the_files() -> None:
    defaults = {"read": None, "interface": None}
    assert merge(defaults, {"interface": "eth0"}, {"read": "a.pcap"}) == {
        "read": "a.pcap",
        "interface": None,
    }
    assert merge(defaults, {"read": "a.pcap"}, {"interface": "any"}) == {
        "read": None,
        "interface": "any",
    }
    assert merge(defaults, {"read": "a.pcap", "interface": "eth0"}, {}) == {
        "read": "a.pcap",
        "interface": "eth0",
    }  # a file naming both is the CLI's to refuse


def test_native_promisc_false_is_no_promisc(tmp_path: Path) -> None:
    cfg = write(tmp_path / "agent.toml", "[capture]\npromisc = false\n")
    args = resolve(build_parser(), ["-i", "eth0"], load_native(cfg))
    assert args.promisc is False
    assert (
        resolve(build_parser(), ["-i", "eth0", "--no-promisc"], {"promisc": True}).promisc is False
    )
    assert resolve(build_parser(), ["-i", "eth0"], {}).promisc is True
