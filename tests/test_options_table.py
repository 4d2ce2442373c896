"""The option table is the one source of the command line and of the configuration files."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from captagent_tls.cli import build_parser
from captagent_tls.config import ConfigError, load_captagent, load_native, resolve
from captagent_tls.config.options import OPTIONS, PATH_OPTIONS, TABLE, TABLES
from captagent_tls.config.parser import argument_of
from tests.support.cli import run
from tests.support.paths import FIXTURES, SRC

CAPTURE = FIXTURES / "tls12-aes128gcm-ems.pcap"
KEY = FIXTURES.parent / "keys" / "server-rsa2048.key"


def actions() -> list[argparse.Action]:
    return [
        action
        for action in build_parser()._actions
        if not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    ]


def test_every_argument_of_the_parser_is_a_row_and_every_row_an_argument() -> None:
    found = actions()
    assert [action.dest for action in found] == [row.dest for row in TABLE]
    for action, row in zip(found, TABLE, strict=True):
        flags, keywords = argument_of(row)
        assert action.option_strings[: len(row.flags)] == list(row.flags)
        assert len(action.option_strings) in (len(flags), len(flags) + 1)  # + --no-...
        assert action.help == row.help
        assert action.default == keywords["default"]
        assert action.metavar == row.metavar or row.kind == "boolean" or row.counted
        assert tuple(action.choices or ()) == row.choices
        if action.nargs != 0 and not row.counted:
            assert getattr(action.type, "option", None) == row.dest


def test_the_typed_settings_name_every_row_with_the_type_of_its_kind() -> None:
    from captagent_tls.config.settings import Settings

    annotations = dict(Settings.__annotations__)
    for row in TABLE:
        expected = {
            "string": "str | None" if row.default is None else "str",
            "boolean": "bool",
            "integer": "int",
            "number": "float",
            "size": "int",
            "list": "list[str]",
            "choice": "str",
            "count or auto": "int | str",
        }[row.kind]
        assert annotations.pop(row.dest, None) == expected, row.dest
    assert annotations == {}  # nothing that is not a row


def test_the_file_keys_are_the_rows_with_a_table() -> None:
    assert set(OPTIONS) == {row.dest for row in TABLE if row.table}
    # a configuration file names neither itself nor another one
    assert {row.dest for row in TABLE if not row.table} == {"config", "captagent_config"}
    for dest, row in OPTIONS.items():
        assert TABLES[row.table][dest] == dest
        if row.key:
            assert TABLES[row.table][row.key] == dest
    assert {dest for names in TABLES.values() for dest in names.values()} == set(OPTIONS)
    assert {"read", "key", "report", "write_decryptable"} <= PATH_OPTIONS


VIEWS_TOML = """
[views]
progress = false
status = true
colour = "never"
brief = true
report = "out/calls.html"
write_decryptable = "out/shareable.pcapng"
"""


def test_views_have_file_keys(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "agent.toml"
    config.parent.mkdir()
    config.write_text(VIEWS_TOML)
    values = load_native(config)
    assert values == {
        "progress": False,
        "status": True,
        "color": "never",
        "brief": True,
        "report": str(tmp_path / "etc" / "out" / "calls.html"),
        "write_decryptable": str(tmp_path / "etc" / "out" / "shareable.pcapng"),
    }
    config.write_text('color = "always"\nreport = "/abs/r.html"\n')
    assert load_native(config) == {"color": "always", "report": "/abs/r.html"}
    args = resolve(
        build_parser(),
        ["-r", "x.pcap", "--no-brief"],
        {"brief": True, "color": "never", "progress": False},
    )
    assert args.brief is False and args.color == "never" and args.progress is False


@pytest.mark.parametrize(("text", "needle"), [
    ('[views]\ncolour = "sometimes"\n', "views.colour: expected auto, always or never, got "
                                        "'sometimes'"),
    ("color = 1\n", "color: expected a string, got integer 1"),
    ('[views]\nbrief = "yes"\n', "views.brief: expected true or false, got string 'yes'"),
    ('[views]\nreport = ["a", "b"]\n', "views.report: expected a string, got array"),
    ('[views]\nprogres = true\n', "unknown key in [views] (did you mean 'progress'?)"),
])  # fmt: skip
def test_bad_view_keys_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_native(config)
    assert needle in str(info.value)


def test_views_from_the_file_reach_the_run(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[views]\nbrief = true\ncolour = "never"\nprogress = false\n')
    proc = run(["-r", CAPTURE, "-k", KEY, "-c", config, "-q"], check=True)
    plain = run(["-r", CAPTURE, "-k", KEY, "--brief", "--color", "never", "-q"], check=True)
    assert proc.stdout == plain.stdout and proc.stdout.count("\n") >= 2
    # the command line still wins over the file
    proc = run(["-r", CAPTURE, "-k", KEY, "-c", config, "-q", "--no-brief"], check=True)
    assert len(proc.stdout.splitlines()) > len(plain.stdout.splitlines())
    # files named in the file are where the file says, relative to it
    config.write_text(VIEWS_TOML)
    (tmp_path / "out").mkdir()
    run(["-r", CAPTURE, "-k", KEY, "-c", config, "-q"], check=True)
    assert (tmp_path / "out" / "calls.html").read_text().lstrip().lower().startswith("<!doctype")
    written = tmp_path / "out" / "shareable.pcapng"
    assert written.stat().st_mode & 0o777 == 0o600 and written.stat().st_size > 0


# ------------------------------------------------------------------------ captagent mapping

CAPTAGENT = """<?xml version="1.0"?>
<document type="captagent/xml">
  <configuration name="core.conf"><settings><param name="debug" value="7"/></settings>
  </configuration>
  <configuration name="modules.conf"><modules>
    <load module="socket_pcap" register="local"/><load module="protocol_tls" register="local"/>
    <load module="transport_hep" register="local"/>
  </modules></configuration>
</document>
"""


def module(name: str, settings: dict[str, str]) -> str:
    params = "".join(f'<param name="{k}" value="{v}"/>' for k, v in settings.items())
    return (
        f'<document type="captagent_module/xml"><module name="{name}"><profile name="p" '
        f'enable="true"><settings>{params}</settings></profile></module></document>'
    )


def test_the_captagent_settings_of_the_table_are_the_ones_read(tmp_path: Path) -> None:
    settings: dict[str, dict[str, str]] = {
        "socket_pcap": {
            "dev": "eth0",
            "promisc": "true",
            "filter": "tcp port 5061",
            "ipv4fragments": "true",
            "ipv6fragments": "true",
            "snap-len": "65535",
            "ring-buffer": "12",
            "stats-enable": "true",
            "stats-interval": "30",
        },
        "protocol_tls": {"private-key-path": "k.pem", "flow-timeout": "60"},
        "transport_hep": {
            "capture-host": "10.0.0.1",
            "capture-port": "9061",
            "capture-proto": "tcp",
            "capture-id": "9",
            "capture-password": "x",
        },
    }
    (tmp_path / "captagent.xml").write_text(CAPTAGENT)
    for name, values in settings.items():
        (tmp_path / f"{name}.xml").write_text(module(name, values))
    values, warnings = load_captagent(tmp_path)
    declared = {row.dest for row in TABLE if row.captagent}
    assert set(values) == declared
    assert warnings == []  # every setting above was read, none ignored
    # ...and they are the settings the table names (protocol_tcp's are protocol_tls's)
    named = {f"{m} {s}" for m, group in settings.items() for s in group} | {"core.conf debug"}
    assert {
        setting
        for row in TABLE
        for setting in row.captagent
        if not setting.startswith("protocol_tcp ")
    } == named


def test_a_setting_the_table_does_not_name_is_ignored_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "socket_pcap.xml").write_text(
        module("socket_pcap", {"dev": "eth0", "erspan": "true"})
    )
    values, warnings = load_captagent(tmp_path / "socket_pcap.xml")
    assert values == {"interface": "eth0", "promisc": False}
    assert any("erspan='true' ignored" in w for w in warnings)


# ------------------------------------------------------------------------------ start-up


def test_a_run_without_config_files_imports_no_file_reader_and_no_transport() -> None:
    code = (
        "import sys\nfrom captagent_tls.cli import build_parser, parse_arguments\n"
        "parse_arguments(build_parser(), ['-r', 'x.pcap', '--hep-id', '7'])\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    env = {"PYTHONPATH": str(SRC)}
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    for module_name in (
        "tomllib",
        "xml.parsers.expat",
        "captagent_tls.config.toml",
        "captagent_tls.config.captagent",
        "captagent_tls.config.layering",
    ):
        assert module_name not in loaded
