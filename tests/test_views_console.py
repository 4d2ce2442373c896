"""The console views: colour only when asked (--color, a terminal, NO_COLOR), the coloured
view is the plain one plus colour, and --brief gives one line per message."""

from __future__ import annotations

import re

import pytest

from captagent_tls.message import Message
from captagent_tls.views.colour import (
    CLIENT_TO_SERVER,
    DIM,
    FAILURE,
    PROVISIONAL,
    REQUEST,
    SERVER_TO_CLIENT,
    SUCCESS,
    colour_wanted,
)
from captagent_tls.views.console import BriefSink, ColourConsoleSink, printable
from tests.support.cli import key_args, run, run_json
from tests.support.groundtruth import load_groundtruth
from tests.support.paths import FIXTURE_KEYS, FIXTURES
from tests.support.terminal import run_on_terminal

CAPTURE = FIXTURES / "rsa-tls12-aes-cbc.pcap"
KEY = FIXTURE_KEYS / "server-rsa2048.key"
ARGS = ["-r", CAPTURE, *key_args([KEY]), "-q"]
SGR = re.compile(r"\x1b\[[0-9;]*m")


def strip_sgr(text: str) -> str:
    return SGR.sub("", text)


# -- when ------------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    "choice, tty, environ, wanted",
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # no-color.org: set and not empty
        ("auto", True, {"TERM": "dumb"}, False),
        ("always", False, {"NO_COLOR": "1"}, True),  # the user's explicit word wins
        ("never", True, {}, False),
    ],
)
def test_colour_wanted(choice, tty, environ, wanted):
    assert colour_wanted(choice, FakeStream(tty), environ) is wanted


def test_not_a_terminal_by_default_no_colour_codes():
    proc = run(ARGS, check=True)
    assert "SIP/2.0" in proc.stdout
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr


def test_always_colours_even_a_pipe_and_is_the_plain_view_plus_colour():
    plain = run(ARGS, check=True).stdout
    coloured = run([*ARGS, "--color", "always"], check=True).stdout
    assert "\x1b[" in coloured
    assert strip_sgr(coloured) == plain
    for code in (CLIENT_TO_SERVER, SERVER_TO_CLIENT, DIM, REQUEST, PROVISIONAL, SUCCESS):
        assert code in coloured, repr(code)
    # each header line takes its direction's colour; the TLS details are dim
    for line in coloured.splitlines():
        if " UTC " in line and " -> " in line:
            assert line.startswith((CLIENT_TO_SERVER, SERVER_TO_CLIENT)), line
            assert f"{DIM}TLSv1.2 TLS_RSA_WITH_" in line, line


def test_start_lines_take_the_colour_of_their_class():
    coloured = run([*ARGS, "--color", "always"], check=True).stdout
    starts = re.findall(
        r"\x1b\[([0-9;]*)m((?:[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3}[^\x1b]*))\x1b", coloured
    )
    assert starts
    for code, line in starts:
        sgr = f"\x1b[{code}m"
        if line.startswith("SIP/2.0 1"):
            assert sgr == PROVISIONAL, line
        elif line.startswith("SIP/2.0 2"):
            assert sgr == SUCCESS, line
        elif line.startswith("SIP/2.0 "):
            assert sgr == FAILURE, line
        else:
            assert sgr == REQUEST, line


def test_auto_on_a_terminal_colours_and_no_color_or_never_turn_it_off():
    auto = run_on_terminal([*ARGS], stdout_on_terminal=True)
    assert auto.returncode == 0
    assert REQUEST in auto.terminal and SUCCESS in auto.terminal
    for env, extra in (({"NO_COLOR": "1"}, []), ({}, ["--color", "never"])):
        off = run_on_terminal([*ARGS, *extra], stdout_on_terminal=True, env=env)
        assert off.returncode == 0
        assert "INVITE sips:" in off.terminal
        assert "\x1b[" not in off.terminal, env or extra


def test_json_is_never_coloured():
    out = run([*ARGS, "--json", "--color", "always"], check=True).stdout
    assert "\x1b" not in out


# -- brief -----------------------------------------------------------------------------------


def test_brief_one_line_per_message_like_sngrep():
    truth = load_groundtruth(FIXTURES / "rsa-tls12-aes-cbc.json")
    objects = run_json(["-r", CAPTURE, *key_args([KEY]), "-q"])
    lines = run([*ARGS, "--brief"], check=True).stdout.splitlines()
    assert len(lines) == len(objects) == len(truth.messages)
    for line, obj in zip(lines, objects, strict=True):
        fields = line.split()
        assert fields[1] == f"{obj['src_ip']}:{obj['src_port']}"
        assert fields[2] == "->"
        assert fields[3] == f"{obj['dst_ip']}:{obj['dst_port']}"
        first_line = obj["payload"].split("\r\n", 1)[0]
        label = first_line[8:] if first_line.startswith("SIP/2.0 ") else first_line.split()[0]
        assert line.split(fields[3], 1)[1].strip().startswith(label), (line, label)
        assert line.endswith(f" {obj['call_id']} {obj['tls_version']} {obj['cipher_suite']}")
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}", fields[0])


def test_brief_in_colour_and_not():
    plain = run([*ARGS, "--brief"], check=True).stdout
    coloured = run([*ARGS, "--brief", "--color", "always"], check=True).stdout
    assert "\x1b" not in plain
    assert strip_sgr(coloured) == plain
    assert coloured.count(DIM) == len(plain.splitlines())


# -- what came off the wire cannot drive the terminal ----------------------------------------


def _message(payload: bytes, call_id: str = "x") -> Message:
    return Message(
        1_700_000_000_123_456_000,
        (b"\x7f\0\0\1", 5000),
        (b"\x7f\0\0\1", 5061),
        "tls",
        payload,
        call_id,
        True,
        True,
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256",
    )


class Collect:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_control_characters_from_the_wire_are_shown_escaped():
    evil = (
        b"MESSAGE sip:b@y SIP/2.0\r\nSubject: \x1b]0;owned\x07\x1b[2J\x9b31m\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    for sink in (
        ColourConsoleSink(Collect()),
        BriefSink(Collect(), colour=True),  # type: ignore[arg-type]
        BriefSink(Collect()),
    ):  # type: ignore[arg-type]
        sink.emit(_message(evil, call_id="id\x1b[31m"))
        text = "".join(sink.out.parts)  # type: ignore[attr-defined]
        assert "\\x1b]0;owned\\x07" in text or "\\x1b[31m" in text
        assert "\x07" not in text and "\x9b" not in text
        assert not re.search(r"\x1b(?!\[[0-9;]*m)", text), repr(text)  # only our SGR codes
    assert printable("a\tb\r\nc\x00\x7f") == "a\tb\r\nc\\x00\\x7f"


@pytest.mark.parametrize(
    "transport, version, shown",
    [
        ("tls", "TLSv1.3", "TLSv1.3 TLS_AES_128_GCM_SHA256"),
        ("wss", "TLSv1.3", "WSS TLSv1.3 TLS_AES_128_GCM_SHA256"),
        ("ws", "", "WS"),
        ("tcp", "", "TCP"),
        ("udp", "", "UDP"),
    ],
)
def test_brief_says_how_the_message_travelled(transport, version, shown):
    message = _message(b"OPTIONS sip:b@y SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n")._replace(
        transport=transport,
        tls_version=version,
        cipher_suite="TLS_AES_128_GCM_SHA256" if version else "",
    )
    line = BriefSink(Collect()).line(message)  # type: ignore[arg-type]
    assert line.endswith(f" OPTIONS              x {shown}\n"), line
