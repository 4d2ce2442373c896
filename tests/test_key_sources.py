"""Key logs that arrive while the agent runs: followed files (growth, truncation, rotation),
network listeners, and the bounded wait of records for their keys."""

from __future__ import annotations

import logging
import random
import select
import socket
import time

import pytest

from captagent_tls import keysources
from captagent_tls.capture.files import CaptureReader
from captagent_tls.keysources import (
    MAX_LINE,
    KeyLogFile,
    KeyLogListener,
    KeySourceError,
    ListenerLimits,
)
from captagent_tls.message import Message
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.tracker import HoldLimits
from tests.support.groundtruth import load_groundtruth
from tests.support.paths import FIXTURES

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
        sender.sendto(
            (line("CLIENT_RANDOM", 2) + line("CLIENT_RANDOM", 3)).encode(), ("127.0.0.1", port)
        )
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


# -- bounds: what any local process can send a listener or write to a key log ----------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def turn(listener: KeyLogListener, wait: float = 0.05) -> int:
    """One turn of the agent's loop: whatever is ready is handled."""
    time.sleep(wait)
    ready, _, _ = select.select(listener.sockets(), [], [], 0)
    return listener.handle({s.fileno() for s in ready})


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(1)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_tcp_listener_full_of_idle_connections_still_takes_a_new_one():
    """The issue: 64 idle connections, and the 65th was refused for good.  Now a new
    connection evicts the one idle longest."""
    port = free_port()
    listener = KeyLogListener(
        f"tcp://127.0.0.1:{port}",
        KeyStore(),
        limits=ListenerLimits(max_clients=64, max_clients_per_source=64),
    )
    idle = []
    for _ in range(64):
        idle.append(connect(port))
        turn(listener, 0.002)
    turn(listener)
    assert len(listener.sockets()) == 1 + 64
    late = connect(port)
    late.sendall(line("CLIENT_RANDOM", 1).encode())
    added = turn(listener) + turn(listener)
    assert added == 1
    assert listener.stats.connections_evicted == 1
    assert closed_by_peer(idle[0])  # the one idle longest
    assert len(listener.sockets()) == 1 + 64
    for sock in [*idle, late]:
        sock.close()
    listener.close()


def test_one_source_address_cannot_take_every_connection():
    port = free_port()
    keys = KeyStore()
    listener = KeyLogListener(
        f"tcp://127.0.0.1:{port}",
        keys,
        limits=ListenerLimits(max_clients=8, max_clients_per_source=3),
    )
    other = connect(port, "127.0.0.2")  # another local source, quiet all along
    turn(listener)
    flood = []
    for _ in range(10):
        flood.append(connect(port))
        turn(listener, 0.01)
    assert listener.stats.connections_evicted == 7  # each beyond 3 evicted one of its own
    other.sendall(line("CLIENT_RANDOM", 7).encode())
    assert turn(listener) == 1  # never evicted by the flood
    assert sum(closed_by_peer(s) for s in flood[:7]) == 7
    for sock in [other, *flood]:
        sock.close()
    listener.close()


def test_idle_connections_are_closed_after_the_idle_timeout():
    port = free_port()
    listener = KeyLogListener(
        f"tcp://127.0.0.1:{port}", KeyStore(), limits=ListenerLimits(idle_timeout_s=1.0)
    )
    quiet, talking = connect(port), connect(port)
    turn(listener)
    for n in range(13):  # 1.3 s, a line every 0.1 s
        talking.sendall(line("CLIENT_RANDOM", n).encode())
        turn(listener, 0.1)
    assert listener.stats.connections_idle == 1
    assert closed_by_peer(quiet)
    assert len(listener.sockets()) == 2  # the listening socket and the one that talks
    quiet.close()
    talking.close()
    listener.close()


def test_udp_listener_reads_a_bounded_number_of_datagrams_per_turn():
    port = free_port(socket.SOCK_DGRAM)
    listener = KeyLogListener(
        f"udp://127.0.0.1:{port}", KeyStore(), limits=ListenerLimits(max_datagrams_per_turn=4)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(10):
            sender.sendto(line("CLIENT_RANDOM", n).encode(), ("127.0.0.1", port))
    assert [turn(listener) for _ in range(4)] == [4, 4, 2, 0]
    listener.close()


def test_a_line_that_never_ends_is_not_held_and_the_next_line_is_read():
    port = free_port()
    keys = KeyStore()
    listener = KeyLogListener(f"tcp://127.0.0.1:{port}", keys)
    client = connect(port)
    turn(listener)
    client.sendall(line("CLIENT_RANDOM", 1).encode())
    for _ in range(20):  # 20 x 60 kB without a newline
        client.sendall(b"A" * 60_000)
        turn(listener, 0.005)
        assert all(len(c.lines.partial) <= MAX_LINE for c in listener._clients.values())
    client.sendall(b"A" * 100 + b"\n" + line("CLIENT_RANDOM", 2).encode())
    turn(listener)
    turn(listener)
    assert len(keys.by_client_random) == 2
    assert listener.stats.malformed_lines == 1  # the long line, dropped unread
    client.close()
    listener.close()


@pytest.mark.parametrize("seed", range(10))
def test_line_buffer_gives_the_same_lines_however_the_stream_is_cut(seed):
    rng = random.Random(seed)
    lines = [b"short", b"x" * (MAX_LINE + 1), b"", b"y" * MAX_LINE, b"z" * 3 * MAX_LINE, b"end"]
    stream = b"\n".join(lines) + b"\n"
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    buffer, out, dropped, ends = keysources.LineBuffer(), b"", 0, 0
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        complete, too_long, consumed = buffer.feed(stream[a:b])
        out, dropped, ends = out + complete, dropped + too_long, ends + consumed
        assert len(buffer.partial) <= MAX_LINE
    # a long line is dropped unread when it outgrows the buffer; one that arrives whole in
    # one read passes (the parser counts it as malformed): either way, never a piece of it
    passed = out.split(b"\n")[:-1]
    assert [line for line in passed if len(line) <= MAX_LINE] == [
        line for line in lines if len(line) <= MAX_LINE
    ]
    long_passed = [line for line in passed if len(line) > MAX_LINE]
    assert all(line in lines for line in long_passed)
    assert dropped == ends == 2 - len(long_passed)


def test_followed_file_drops_a_line_too_long_and_reads_on_after_it(tmp_path):
    path = tmp_path / "keys.log"
    keys = KeyStore()
    source = KeyLogFile(str(path), keys)
    path.write_text(line("CLIENT_RANDOM", 1) + "x" * 10_000)
    assert source.poll() == 1
    assert len(source._buffer.partial) <= MAX_LINE
    with path.open("a") as fh:
        fh.write("x" * 10_000 + "\n" + line("CLIENT_RANDOM", 2) + "bad line\n")
    assert source.poll() == 1
    assert source.stats.malformed_lines == 2
    assert len(keys.by_client_random) == 2


def test_followed_file_is_read_a_bounded_amount_per_poll(tmp_path, monkeypatch):
    monkeypatch.setattr(keysources, "MAX_READ_PER_POLL", 1000)
    monkeypatch.setattr(keysources, "READ_CHUNK", 300)
    path = tmp_path / "keys.log"
    path.write_text("".join(line("CLIENT_RANDOM", n) for n in range(30)))  # 30 x 176 bytes
    keys = KeyStore()
    source = KeyLogFile(str(path), keys)
    added = [source.poll() for _ in range(7)]
    complete = [min(30, k * 1000 // 176) for k in range(8)]  # lines complete after k polls
    assert added == [b - a for a, b in zip(complete, complete[1:], strict=False)]
    assert added[0] == 5 and sum(added) == 30


def test_malformed_line_warnings_are_rate_limited_and_never_show_key_material(tmp_path, caplog):
    """The issue: 207,000 malformed lines gave 207,000 warnings (19 MB of log)."""
    now = [1000.0]
    path = tmp_path / "keys.log"
    path.write_text("")
    source = KeyLogFile(str(path), KeyStore(), clock=lambda: now[0])
    secret = "cd" * 48
    caplog.set_level(logging.WARNING, logger="captagent_tls")
    for n in range(500):
        with path.open("a") as fh:
            fh.write(f"CLIENT_RANDOM {n:064x} {secret[:-2]}\n")  # one hex digit short
        source.poll()
        now[0] += 1  # a line a second
    now[0] += 60
    source.poll()  # what is still counted is logged once its minute is over
    messages = [r.getMessage() for r in caplog.records]
    assert source.stats.malformed_lines == 500
    assert len(messages) == keysources.WARNINGS_IN_FULL + 9  # then one per minute
    assert "further ones are counted" in messages[keysources.WARNINGS_IN_FULL - 1]
    assert messages[keysources.WARNINGS_IN_FULL] == (
        f"key log {path}: 60 more malformed key log line(s) ignored in the last 60 s"
    )
    assert sum(int(m.split(": ")[1].split()[0]) for m in messages) == 500
    assert not any(secret[:40] in m for m in messages)


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
    pipeline = Pipeline(
        keys, [sink], problems.append, PipelineOptions(keys_may_arrive=True, hold=hold)
    )
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
    expected = sorted(m for c in truth.connections for d in ("c2s", "s2c") for m in c.messages(d))
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
        HoldLimits(max_wait_s=3600, max_bytes_per_flow=cap)
    )
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
        HoldLimits(max_wait_s=3600, max_bytes_total=2000)
    )
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
