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
from tests.support.cli import key_args, payload_bytes, run, run_json
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


# -- hostile messages through every console mode ---------------------------------------------

HOSTILE_HEADERS = (
    "Subject: \x1b]0;owned window title\x07 and \x1b[2J\x1b[H a cleared screen\r\n"
    "Via: SIP/2.0/TCP 10.0.0.1:40000;rport\r;received=6.6.6.6\r\n"  # a bare CR overwrites
    "X-C1: \u009b31m CSI in one character, DEL \x7f, NUL \x00, bell \x07\r\n"
    "X-Bidi: \u202egnirts desrever\u202c\r\n"
)


def hostile_capture(path) -> bytes:
    """Plain SIP over TCP whose headers, body and Call-ID carry terminal control sequences;
    returns the bytes of the INVITE as sent."""
    from fuzz.capmodel import RawPacket, write_pcap
    from tests.support.tlswriter import LINKTYPE_ETHERNET, TcpConversation

    body = "v=0\r\ns=\x1b[31mred\x1b[0m\x1bc\r\n"
    invite = (
        "INVITE sip:bob@example.com SIP/2.0\r\n"
        "Call-ID: evil\x1b[5m@example.com\r\n"
        "CSeq: 1 INVITE\r\n"
        f"{HOSTILE_HEADERS}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()
    answer = (
        "SIP/2.0 200 OK\r\nCall-ID: evil\x1b[5m@example.com\r\nCSeq: 1 INVITE\r\n"
        f"{HOSTILE_HEADERS}Content-Length: 0\r\n\r\n"
    ).encode()
    conversation = TcpConversation()
    conversation.open()
    conversation.send(0, invite)
    conversation.send(1, answer)
    conversation.close()
    packets = [RawPacket(frame.ts_ns, bytes(frame.data)) for frame in conversation.frames]
    path.write_bytes(write_pcap(LINKTYPE_ETHERNET, packets))
    return invite


def assert_drives_nothing(text: str) -> None:
    """Only our colour codes, line ends (CR only before LF) and tabs: no other control
    character, and the hostile ones are there as visible escapes."""
    without_ours = SGR.sub("", text)
    for index, char in enumerate(without_ours):
        code = ord(char)
        if char == "\r":
            assert without_ours[index + 1 : index + 2] == "\n", repr(without_ours[index - 40 :])
        elif code < 0x20 and char not in "\n\t" or 0x7F <= code < 0xA0 or char in "\u202e\u202c":
            raise AssertionError(f"control U+{code:04X} reached the console: {without_ours!r}")
    assert "\\x1b" in without_ours


@pytest.mark.parametrize(
    "mode",
    [
        [],
        ["--color", "never"],
        ["--color", "always"],
        ["--brief"],
        ["--brief", "--color", "always"],
        ["--workers", "2"],
        ["--workers", "2", "--color", "always"],
        ["--workers", "2", "--brief", "--color", "always"],
    ],
    ids=lambda mode: " ".join(mode) or "default",
)
def test_hostile_control_sequences_never_reach_the_console(tmp_path, mode):
    capture = tmp_path / "hostile.pcap"
    hostile_capture(capture)
    proc = run(["-r", capture, "-q", *mode], check=True)
    assert proc.stdout.count("\\x1b") >= 2
    assert_drives_nothing(proc.stdout)
    assert_drives_nothing(proc.stdout + proc.stderr.replace("\\", "\\\\") + "\\x1b")
    if "--brief" not in mode:
        assert "rport\\x0d;received=6.6.6.6" in proc.stdout  # the bare CR, shown


def test_hostile_control_sequences_on_a_terminal(tmp_path):
    capture = tmp_path / "hostile.pcap"
    hostile_capture(capture)
    for extra in ([], ["--brief"], ["--color", "never"]):
        shown = run_on_terminal(
            ["-r", capture, "-q", "--no-progress", *extra], stdout_on_terminal=True
        )
        assert shown.returncode == 0
        assert_drives_nothing(shown.terminal.replace("\r\n", "\n"))  # (the tty's own CR)


def test_the_other_outputs_keep_the_exact_bytes(tmp_path):
    capture = tmp_path / "hostile.pcap"
    invite = hostile_capture(capture)
    out = run_json(["-r", capture, "-q"])
    assert payload_bytes(out[0]) == invite
