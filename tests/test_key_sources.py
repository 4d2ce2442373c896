"""Key logs that arrive while the agent runs: followed files (growth, truncation, rotation),
network listeners, and the bounded wait of records for their keys."""

from __future__ import annotations

import socket
import time

import pytest
from support.groundtruth import load_groundtruth
from support.paths import FIXTURES

from captagent_tls.capture.files import CaptureReader
from captagent_tls.keysources import KeyLogFile, KeyLogListener, KeySourceError
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.sip import Message
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.tracker import HoldLimits

CR = "aa" * 32


def line(label: str, n: int) -> str:
    return f"{label} {n:064x} {'bb' * 48}\n"


def test_followed_file_growth_partial_lines_truncation_and_rotation(tmp_path):
    path = tmp_path / "keys.log"
    keys = KeyStore()
    source = KeyLogFile(str(path), keys)
    assert source.poll() == 0  # not there yet: that is fine
    path.write_text(line("CLIENT_RANDOM", 1) + line("CLIENT_RANDOM", 2)[:40])
    assert source.poll() == 1  # the second line is not finished
    with path.open("a") as fh:
        fh.write(line("CLIENT_RANDOM", 2)[40:])
    assert source.poll() == 1
    assert source.poll() == 0  # nothing new
    path.write_text(line("CLIENT_RANDOM", 3))  # truncated and rewritten
    assert source.poll() == 1
    path.rename(tmp_path / "keys.log.1")  # rotated away...
    path.write_text(line("CLIENT_RANDOM", 4) + "garbage line\n")  # ...and a new file
    assert source.poll() == 1
    assert source.stats.malformed_lines == 1
    assert len(keys.by_client_random) == 4


def test_udp_listener_takes_one_or_many_lines_per_datagram():
    keys = KeyStore()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = KeyLogListener(f"udp://127.0.0.1:{port}", keys)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(line("CLIENT_RANDOM", 1).strip().encode(), ("127.0.0.1", port))
        sender.sendto((line("CLIENT_RANDOM", 2) + line("CLIENT_RANDOM", 3)).encode(),
                      ("127.0.0.1", port))
    time.sleep(0.1)
    assert listener.handle({listener.sock.fileno()}) == 3
    listener.close()


def test_tcp_listener_reassembles_lines_across_reads():
    keys = KeyStore()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = KeyLogListener(f"tcp://127.0.0.1:{port}", keys)
    client = socket.create_connection(("127.0.0.1", port))
    text = (line("CLIENT_RANDOM", 1) + line("CLIENT_RANDOM", 2)).encode()
    added = 0
    for piece in (text[:50], text[50:170], text[170:]):
        client.sendall(piece)
        time.sleep(0.05)
        added += listener.handle({s.fileno() for s in listener.sockets()})
    client.close()
    time.sleep(0.05)
    added += listener.handle({s.fileno() for s in listener.sockets()})
    assert added == 2
    listener.close()


def test_listeners_stay_on_loopback_unless_told():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    with pytest.raises(KeySourceError, match="not on loopback"):
        KeyLogListener(f"udp://0.0.0.0:{port}", KeyStore())
    KeyLogListener(f"udp://0.0.0.0:{port}", KeyStore(), allow_remote=True).close()
    with pytest.raises(KeySourceError, match="use udp://HOST:PORT"):
        KeyLogListener("http://127.0.0.1:1", KeyStore())


# -- records that wait for keys -------------------------------------------------------------

class Collect:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def emit(self, message: Message) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


def feed(pipeline: Pipeline, capture, upto: int | None = None) -> list:
    frames = list(CaptureReader(str(capture)))
    for frame in frames[:upto]:
        pipeline.frame(frame)
    return frames


def waiting_pipeline(hold: HoldLimits) -> tuple[Pipeline, Collect, KeyStore, list]:
    keys = KeyStore()
    sink = Collect()
    problems: list = []
    pipeline = Pipeline(keys, [sink], problems.append,
                        PipelineOptions(keys_may_arrive=True, hold=hold))
    return pipeline, sink, keys, problems


def test_held_records_come_out_in_order_with_their_own_times_once_keys_arrive():
    capture = FIXTURES / "keylog-tls13-suites.pcap"
    truth = load_groundtruth(FIXTURES / "keylog-tls13-suites.json")
    pipeline, sink, keys, problems = waiting_pipeline(HoldLimits(max_wait_s=3600))
    frames = feed(pipeline, capture)
    assert sink.messages == []  # everything waits
    load_key_log(truth.keylog.read_text(), keys)
    pipeline.keys_added()
    pipeline.finish()
    expected = sorted(m for c in truth.connections for d in ("c2s", "s2c")
                      for m in c.messages(d))
    assert sorted(m.payload for m in sink.messages) == expected
    stamps = {f.ts_ns // 1000 for f in frames}
    assert all(m.ts_ns // 1000 in stamps for m in sink.messages)
    per_flow: dict = {}
    for message in sink.messages:
        per_flow.setdefault((message.src, message.dst), []).append(message.ts_ns)
    assert all(times == sorted(times) for times in per_flow.values())
    assert not problems


def held_per_flow(pipeline: Pipeline) -> int:
    return max((conn.held_bytes for conn in pipeline.tls.waiting()), default=0)


def sent_messages(truth) -> list[bytes]:
    return sorted(m for c in truth.connections for d in ("c2s", "s2c") for m in c.messages(d))


@pytest.mark.parametrize("name", ["keylog-tls13-suites", "keylog-tls12-ecdhe"])
def test_records_over_the_flow_cap_are_lost_and_the_rest_decrypts_once_keys_arrive(name):
    """Only the records that did not fit are lost: once the keys arrive, what the held
    records carried and every later record decrypt, with the right sequence numbers."""
    truth = load_groundtruth(FIXTURES / f"{name}.json")
    cap = 1500
    pipeline, sink, keys, problems = waiting_pipeline(
        HoldLimits(max_wait_s=3600, max_bytes_per_flow=cap))
    most = 0
    keys_added_at = None
    frames = list(CaptureReader(str(FIXTURES / f"{name}.pcap")))
    for index, frame in enumerate(frames):
        pipeline.frame(frame)
        most = max(most, held_per_flow(pipeline))
        if keys_added_at is None and pipeline.tls.stats.records_over_hold_cap:
            keys_added_at = index  # the keys come late, after the cap was hit
            load_key_log(truth.keylog.read_text(), keys)
            pipeline.keys_added()
    pipeline.finish()
    assert keys_added_at is not None and 0 < most <= cap
    dropped = [p for p in problems if p.kind == "records_dropped"]
    assert dropped and " -> 127.0.0.1:" in dropped[0].message  # names the flow
    assert "--key-hold-flow" in dropped[0].message
    sent = sent_messages(truth)
    got = [m.payload for m in sink.messages if m.is_sip]
    assert all(payload in sent for payload in got)  # nothing invented
    lost = pipeline.tls.stats.records_over_hold_cap
    assert 0 < len(sent) - len(got) <= lost  # at most one message per record that did not fit
    # the connection that was cut goes on decrypting after the keys came: its last messages
    # are there; so is every message of the connections after it
    cut_port = int(dropped[0].message.split(" -> ")[0].rsplit(":", 1)[1])
    cut = truth.connection_by_client_port(cut_port)
    assert {cut.messages(d)[-1] for d in ("c2s", "s2c") if cut.messages(d)} <= set(got)
    for conn in truth.connections:
        if conn.index > cut.index:
            assert all(m in got for d in ("c2s", "s2c") for m in conn.messages(d))
    assert pipeline.tls.held_bytes == 0
    assert pipeline.tls.stats.records_failed == 0


def test_all_flows_together_are_bounded_too():
    truth = load_groundtruth(FIXTURES / "keylog-tls13-suites.json")
    pipeline, sink, keys, problems = waiting_pipeline(
        HoldLimits(max_wait_s=3600, max_bytes_total=2000))
    most = 0
    keys_added = False
    for frame in CaptureReader(str(FIXTURES / "keylog-tls13-suites.pcap")):
        pipeline.frame(frame)
        most = max(most, pipeline.tls.held_bytes)
        if not keys_added and pipeline.tls.stats.records_over_hold_cap:
            keys_added = True
            load_key_log(truth.keylog.read_text(), keys)
            pipeline.keys_added()
    pipeline.finish()
    assert 0 < most <= 2000
    assert any("--key-hold-total" in p.message for p in problems)
    got = [m.payload for m in sink.messages if m.is_sip]
    assert got and all(payload in sent_messages(truth) for payload in got)


def test_records_wait_no_longer_than_the_key_wait_in_capture_time():
    pipeline, sink, keys, problems = waiting_pipeline(HoldLimits(max_wait_s=0.5))
    frames = feed(pipeline, FIXTURES / "keylog-tls13-suites.pcap")
    pipeline.expire(frames[-1].ts_ns + 2_000_000_000)
    assert pipeline.tls.held_bytes == 0
    assert any("no keys within 0.5 s" in p.message for p in problems)
