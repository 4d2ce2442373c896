"""The call-flow report (--report): its data, then what a real browser (headless Chromium)
shows once the page's scripts ran: the call list, its pages and filter, a call's ladder with
one arrow per message, and the message an arrow opens.  Ground truth: what the fixture
peers sent."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from captagent_tls.message import Message
from captagent_tls.views.callflow import CallFlowReport
from tests.support.browser import chromium_path, dump_dom, read_page
from tests.support.cli import key_args, run, run_json
from tests.support.groundtruth import load_groundtruth
from tests.support.paths import FIXTURE_KEYS, FIXTURES

KEY = FIXTURE_KEYS / "server-rsa2048.key"
SCENARIO = "rsa-tls12-aes-cbc"  # 8 calls over 8 TLS connections (several suites)
CALL_ID = re.compile(r"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)


def embedded(html: str, ident: str) -> object:
    """The JSON data the report embeds in <script type="application/json" id=IDENT>."""
    match = re.search(
        rf'<script type="application/json" id="{ident}">(.*?)</script>', html, re.DOTALL
    )
    assert match, ident
    return json.loads(match.group(1))


def label_of(text: str) -> str:
    """What the arrow of a message must say, from the text that was sent (its first line)."""
    first = text.split("\r\n", 1)[0]
    return first[8:] if first.startswith("SIP/2.0 ") else first.split(" ", 1)[0]


# -- the data --------------------------------------------------------------------------------

SRC = (bytes([10, 0, 0, 1]), 40000)
DST = (bytes([10, 0, 0, 2]), 5061)


def sip(first: str, call_id: str, cseq: str, extra: str = "", body: str = "") -> bytes:
    return (
        f'{first}\r\nFrom: "A" <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: {call_id}\r\n'
        f"CSeq: {cseq}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def message(
    ts_s: float, payload: bytes, call_id: str | None, c2s: bool = True, is_sip: bool = True
) -> Message:
    src, dst = (SRC, DST) if c2s else (DST, SRC)
    return Message(
        int(ts_s * 1e9),
        src,
        dst,
        "tls",
        payload,
        call_id,
        is_sip,
        c2s,
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256",
    )


def test_calls_status_and_safety_of_the_embedded_data(tmp_path):
    path = tmp_path / "calls.html"
    report = CallFlowReport(str(path), max_calls=3)
    report.emit(message(10, sip("INVITE sip:b@y SIP/2.0", "c1", "1 INVITE"), "c1"))
    report.emit(message(10.5, sip("SIP/2.0 401 Unauthorized", "c1", "1 INVITE"), "c1", False))
    report.emit(message(11, sip("INVITE sip:b@y SIP/2.0", "c1", "2 INVITE"), "c1"))
    report.emit(message(11.2, sip("SIP/2.0 180 Ringing", "c1", "2 INVITE"), "c1", False))
    report.emit(message(12, sip("SIP/2.0 200 OK", "c1", "2 INVITE"), "c1", False))
    report.emit(message(13, sip("BYE sip:b@y SIP/2.0", "c1", "3 BYE"), "c1"))
    report.emit(message(13.1, sip("SIP/2.0 481 No Such Call", "c1", "3 BYE"), "c1", False))
    # a call whose capture began with its answer, still ringing; a script in the payload
    evil = "</script><script>alert(1)</script><!--"
    report.emit(
        message(
            20, sip("SIP/2.0 180 Ringing", "c2", "7 INVITE", f"Subject: {evil}\r\n"), "c2", False
        )
    )
    report.emit(message(21, b"\x00\x01 raw bytes", None, is_sip=False))
    report.emit(message(22, sip("MESSAGE sip:b@y SIP/2.0", "c3", "1 MESSAGE"), "c3"))
    report.emit(message(23, sip("OPTIONS sip:b@y SIP/2.0", "c4", "1 OPTIONS"), "c4"))  # cap
    report.close()
    html = path.read_text(encoding="utf-8")
    calls = embedded(html, "calls")
    assert [c[0] for c in calls] == ["c1", "c2", "c3"]
    c1, c2, c3 = calls
    assert c1[1:3] == ["sip:a@x", "sip:b@y"]
    assert (c1[3], c1[4]) == (10_000_000, 13_100_000)
    # the final answer to the call's INVITE, not the one to its BYE nor the challenge
    assert (c1[5], c1[6], c1[7], c1[11]) == (200, "OK", 7, "INVITE")
    assert (c2[5], c2[6], c2[11]) == (180, "Ringing", "INVITE")
    assert (c3[5], c3[11]) == (0, "MESSAGE")
    messages = embedded(html, "messages")
    assert len(messages) == 9 and report.messages == 9 and report.not_shown == 2
    assert [m[4] for m in messages[:3]] == ["INVITE", "401 Unauthorized", "INVITE"]
    assert evil in messages[7][6]  # shown as sent, and yet it cannot end the script element
    assert evil not in html and "</script><script>alert" not in html
    assert html.count("<script") == 5  # meta, endpoints, calls, messages, the page's script
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert report.summary_line().startswith(f"report: {path}: 3 calls, 9 messages, ")


def test_the_file_is_written_only_where_it_can_be(tmp_path):
    proc = run(
        [
            "-r",
            FIXTURES / f"{SCENARIO}.pcap",
            *key_args([KEY]),
            "--report",
            tmp_path / "missing" / "calls.html",
        ]
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "calls.html" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """The report of the fixture, and the messages we emitted per Call-ID (--json)."""
    chromium_path()
    path = tmp_path_factory.mktemp("report") / "calls.html"
    args = ["-r", FIXTURES / f"{SCENARIO}.pcap", *key_args([KEY])]
    proc = run([*args, "--report", path], check=True)
    assert "report: " in proc.stderr and " 8 calls, 56 messages, " in proc.stderr
    by_call: dict[str, list[dict]] = defaultdict(list)
    for obj in run_json(args):
        by_call[obj["call_id"]].append(obj)
    return path, by_call


def test_the_browser_lists_every_call_that_was_sent(fixture_report):
    path, _ = fixture_report
    truth = load_groundtruth(FIXTURES / f"{SCENARIO}.json")
    sent_calls = Counter(
        CALL_ID.search(m.payload.decode("latin-1")).group(1).strip() for m in truth.messages
    )
    page = read_page(dump_dom(path))
    assert sorted(page.rows) == sorted(sent_calls)
    assert page.attributes["count"]["data-total"] == str(len(sent_calls))
    assert page.texts["count"] == f"{len(sent_calls)} calls"
    assert "ladder" not in page.attributes and "flow" in page.hidden  # drawn on demand only
    assert page.scripts_with_src == 0 and not page.external_refs
    by_call = {row: cells for row, cells in zip(page.rows, page.row_cells, strict=True)}
    for call_id, count in sent_calls.items():
        cells = by_call[call_id]
        assert cells[1] == call_id and cells[9] == str(count)
        assert cells[2] == "sips:alice@example.com" and cells[3] == "sips:bob@example.com"
        assert cells[4] == "INVITE" and cells[8] == "200 OK"
        assert cells[10] == "tls" and cells[11] == "TLSv1.2"
        assert cells[12].startswith("TLS_RSA_WITH_")


def test_a_ladder_has_one_arrow_per_message_in_order(fixture_report):
    path, by_call = fixture_report
    truth = load_groundtruth(FIXTURES / f"{SCENARIO}.json")
    call_id = sorted(by_call)[3]
    sent = [
        m
        for m in truth.messages
        if CALL_ID.search(m.payload.decode("latin-1")).group(1).strip() == call_id
    ]
    emitted = by_call[call_id]
    page = read_page(dump_dom(path, f"call={call_id}"))
    assert "flow" not in page.hidden
    assert [a["data-label"] for a in page.arrows] == [
        label_of(m.payload.decode("latin-1")) for m in sent
    ]
    assert [a["text"] for a in page.arrows] == [a["data-label"] for a in page.arrows]
    assert [(a["data-src"], a["data-dst"]) for a in page.arrows] == [
        (f"{o['src_ip']}:{o['src_port']}", f"{o['dst_ip']}:{o['dst_port']}") for o in emitted
    ]
    assert page.texts["flow-title"] == f"Call {call_id}"
    assert "message-box" in page.hidden  # no message open yet


def test_an_arrow_opens_its_whole_message(fixture_report):
    path, by_call = fixture_report
    call_id = sorted(by_call)[0]
    emitted = by_call[call_id]
    page = read_page(dump_dom(path, f"call={call_id}&msg=3"))
    assert "message-box" not in page.hidden
    # (the DOM as Chromium dumps it has its line ends as LF)
    assert page.texts["message"] == emitted[3]["payload"].replace("\r\n", "\n")
    assert [i for i, a in enumerate(page.arrows) if "selected" in a["class"].split()] == [3]
    o = emitted[3]
    assert (
        f"{o['src_ip']}:{o['src_port']} \u2192 {o['dst_ip']}:{o['dst_port']}"
        in (page.texts["message-head"])
    )


# -- 10,000 calls ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_report(tmp_path_factory) -> Path:
    chromium_path()
    path = tmp_path_factory.mktemp("big") / "calls.html"
    report = CallFlowReport(str(path))
    flow = [
        ("INVITE sip:b@y SIP/2.0", "1 INVITE", True),
        ("SIP/2.0 180 Ringing", "1 INVITE", False),
        ("SIP/2.0 200 OK", "1 INVITE", False),
        ("ACK sip:b@y SIP/2.0", "1 ACK", True),
    ]
    for n in range(10_000):
        call_id = f"call-{n:05d}"
        for k, (first, cseq, c2s) in enumerate(flow):
            if n % 10 == 3 and k == 2:
                first = "SIP/2.0 486 Busy Here"
            report.emit(
                message(1_700_000_000 + n + k / 10, sip(first, call_id, cseq), call_id, c2s)
            )
    report.close()
    assert report.calls == 10_000 and report.messages == 40_000
    return path


def test_ten_thousand_calls_a_page_at_a_time(big_report):
    page = read_page(dump_dom(big_report))
    assert page.attributes["count"]["data-total"] == "10000"
    assert page.rows == [f"call-{n:05d}" for n in range(100)]
    assert page.texts["page"] == "page 1 of 100"
    assert "ladder" not in page.attributes
    last = read_page(dump_dom(big_report, "page=100"))
    assert last.rows == [f"call-{n:05d}" for n in range(9900, 10_000)]
    assert last.attributes["next"].get("disabled") is not None


def test_ten_thousand_calls_filtered_and_sorted(big_report):
    page = read_page(dump_dom(big_report, "filter=CALL-0424"))
    assert sorted(page.rows) == [f"call-{n:05d}" for n in range(4240, 4250)]
    assert page.attributes["count"]["data-shown"] == "10"
    busy = read_page(dump_dom(big_report, "filter=486 busy&sort=first&dir=desc"))
    assert busy.attributes["count"]["data-shown"] == "1000"
    assert busy.rows[:3] == ["call-09993", "call-09983", "call-09973"]
    assert all(cells[8] == "486 Busy Here" for cells in busy.row_cells)


def test_ten_thousand_calls_a_ladder_on_demand(big_report):
    page = read_page(dump_dom(big_report, "filter=call-07773&call=call-07773"))
    assert page.rows == ["call-07773"]
    assert [a["data-label"] for a in page.arrows] == [
        "INVITE",
        "180 Ringing",
        "486 Busy Here",
        "ACK",
    ]
    assert page.attributes["ladder-box"].get("data-drawn-ms", "").isdigit()


def test_a_full_disk_at_the_end_is_an_output_error(tmp_path):
    import errno

    from captagent_tls.sinks import OutputError

    report = CallFlowReport(str(tmp_path / "calls.html"))
    report.emit(message(10, sip("OPTIONS sip:b@y SIP/2.0", "c1", "1 OPTIONS"), "c1"))

    def full(_text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    report._out.write = full  # type: ignore[method-assign]
    with pytest.raises(OutputError, match=r"report .*calls\.html: No space left on device"):
        report.close()
