"""HEP delivery to collectors over UDP, TCP and TLS, with real sockets on 127.0.0.1.

The local TCP/TLS collectors parse the HEP3 stream (each packet carries its own length) and
record every packet; each test message carries its sequence number, so loss, duplication and
reordering are all visible.  Timings are short (fast backoff); the outage length is
``HEP_TEST_OUTAGE_S`` seconds (default 2.5).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import threading
import time
from types import SimpleNamespace

import pytest

import captagent_tls.sinks.hep.connection as connection
from captagent_tls.message import Message
from captagent_tls.sinks.hep import (
    CHUNK_CORRELATION_ID,
    CHUNK_NODE_NAME,
    CollectorAddressError,
    HepConfigError,
    HepOptions,
    HepSink,
    QueueLimits,
    RetryPolicy,
    TlsOptions,
    encode_hep3,
    open_collector,
)
from tests.support.collectors import LINUX, Pki, StreamServer, free_port, make_pki
from tests.support.hep import CHUNK_PAYLOAD, UdpCollector, chunk_value

OUTAGE_S = float(os.environ.get("HEP_TEST_OUTAGE_S", "2.5"))
FAST = RetryPolicy(
    backoff_initial=0.05, backoff_max=0.3, idle_check=0.05, connect_timeout=2.0, send_timeout=5.0
)


# --------------------------------------------------------------------------- messages


def message(
    seq: int, *, is_sip: bool = True, payload: bytes | None = None, call_id: str | None = None
) -> Message:
    if payload is None:
        payload = (
            f"OPTIONS sip:{seq:08d}@example.test SIP/2.0\r\nCall-ID: c{seq:08d}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    return Message(
        1_700_000_000_000_000_000 + seq * 1000,
        (b"\x0a\x00\x00\x01", 40000),
        (b"\x0a\x00\x00\x02", 5061),
        "tls",
        payload,
        f"c{seq:08d}" if call_id is None else call_id,
        is_sip,
        True,
        "TLSv1.2",
        "X",
    )


def packet(seq: int) -> bytes:
    return encode_hep3(message(seq), HepOptions())


PACKET_SIZE = len(packet(0))  # every test packet has this size


def seq_of(hep: bytes) -> int:
    payload = chunk_value(hep, CHUNK_PAYLOAD)
    assert payload is not None
    match = re.match(rb"OPTIONS sip:(\d+)@", payload)
    assert match, payload[:40]
    return int(match[1])


def seqs(server: StreamServer) -> list[int]:
    return [seq_of(p) for p in list(server.packets)]


def wait_for(server: StreamServer, n: int, timeout: float = 10.0) -> list[int]:
    return [seq_of(p) for p in server.wait_for_packets(n, timeout)]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --------------------------------------------------------------------------- local collector


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def servers():
    """Starts StreamServers and stops whatever is left running at the end of the test."""
    started: list[StreamServer] = []

    def make(*args, **kwargs) -> StreamServer:
        server = StreamServer(*args, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop("abrupt")


# --------------------------------------------------------------------------- encoding


def test_correlation_id_is_the_call_id_only_when_asked():
    plain = encode_hep3(message(1), HepOptions(node_name="edge-1"))
    assert chunk_value(plain, CHUNK_CORRELATION_ID) is None
    assert chunk_value(plain, CHUNK_NODE_NAME) == b"edge-1"
    correlated = encode_hep3(message(1), HepOptions(correlation_id=True))
    assert chunk_value(correlated, CHUNK_CORRELATION_ID) == b"c00000001"
    assert chunk_value(correlated, CHUNK_PAYLOAD) == message(1).payload  # payload still last
    no_call_id = encode_hep3(message(1, call_id=""), HepOptions(correlation_id=True))
    assert chunk_value(no_call_id, CHUNK_CORRELATION_ID) is None


# --------------------------------------------------------------------------- delivery


def test_udp_tcp_and_tls_collectors_each_get_every_message_once_in_order(pki, servers):
    n = 300
    tcp = servers()
    tls = servers(pki.server)
    with UdpCollector() as udp:
        sink = HepSink(
            [udp.address, tcp.address, tls.address],
            HepOptions(),
            tls=TlsOptions(ca_file=pki.ca_file),
            retry=FAST,
        )
        assert [c.address for c in sink.collectors] == [
            f"udp://{udp.address}",
            tcp.address,
            tls.address,
        ]
        for i in range(n):
            sink.emit(message(i))
            if i % 100 == 0:  # what the sink holds back is counted once, not per collector
                sink.emit(message(i, is_sip=False, payload=b"\x16\x03 not sip"))
                sink.emit(message(i, payload=b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n"))
                sink.emit(message(i, payload=b"INVITE " + b"x" * 70000))
        sink.close()
        udp_seqs = [seq_of(p) for p in udp.wait_for(n, timeout=5)]
    assert udp_seqs == list(range(n))
    assert seqs(tcp) == list(range(n))
    assert seqs(tls) == list(range(n))
    assert sink.stats.packets == n
    assert (sink.stats.skipped_not_sip, sink.stats.skipped_short, sink.stats.skipped_too_large) == (
        3,
        3,
        3,
    )
    for collector in sink.collectors:
        stats = collector.stats
        assert (
            stats.sent,
            stats.queued,
            stats.dropped,
            stats.dropped_at_shutdown,
            stats.send_errors,
        ) == (n, 0, 0, 0, 0), collector.address
    assert wait_until(lambda: tls.clean_eofs == 1 and tcp.clean_eofs == 1, 3)
    assert not tls.errors and not tcp.errors  # TLS ended with close_notify, not a bare EOF


def test_tls_untrusted_certificate_is_reported_once_counted_and_retried(pki, servers, caplog):
    server = servers(pki.server)
    collector = open_collector(
        server.address, tls=TlsOptions(ca_file=pki.other_ca_file), retry=FAST
    )
    with caplog.at_level(logging.WARNING, logger="captagent_tls.hep"):
        for i in range(5):
            assert collector.submit(packet(i))
        assert wait_until(lambda: collector.stats.tls_verify_failures >= 3, 5)
        collector.close(timeout=0.2)
    stats = collector.stats
    assert not stats.connected and stats.sent == 0 and server.packets == []
    assert stats.last_error.startswith("TLS certificate verification failed: ")
    assert "issuer" in stats.last_error  # OpenSSL: "unable to get local issuer certificate"
    assert stats.connect_failures >= stats.tls_verify_failures >= 3
    assert stats.dropped_at_shutdown == 5
    reports = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(reports) == 1, reports  # one line however many attempts
    assert server.address in reports[0]


def test_tls_system_cas_and_host_name_are_checked_by_default(pki, servers):
    untrusted = servers(pki.server)
    wrong_name = servers(pki.wrong_name)
    system = open_collector(untrusted.address, retry=FAST)  # system CAs do not know ours
    mismatch = open_collector(wrong_name.address, tls=TlsOptions(ca_file=pki.ca_file), retry=FAST)
    named = open_collector(
        wrong_name.address,
        retry=FAST,
        tls=TlsOptions(ca_file=pki.ca_file, server_name="collector.example"),
    )
    for collector in (system, mismatch, named):
        collector.submit(packet(7))
    assert wait_until(
        lambda: system.stats.tls_verify_failures and mismatch.stats.tls_verify_failures, 5
    )
    assert wait_for(wrong_name, 1, timeout=5) == [7]  # through ``named``
    for collector in (system, mismatch, named):
        collector.close(timeout=0.5)
    assert "mismatch" in mismatch.stats.last_error  # "IP address mismatch, certificate is ..."
    assert named.stats.sent == 1 and named.stats.tls_verify_failures == 0


def test_tls_insecure_skips_verification(pki, servers):
    server = servers(pki.server)
    collector = open_collector(server.address, tls=TlsOptions(insecure=True), retry=FAST)
    for i in range(50):
        collector.submit(packet(i))
    collector.close(timeout=5)
    assert seqs(server) == list(range(50))
    assert collector.stats.sent == 50 and collector.stats.tls_verify_failures == 0


def run_outage(
    server: StreamServer,
    collector,
    outage_s: float,
    interval: float = 0.002,
    before_s: float = 0.7,
    after_s: float = 0.7,
) -> int:
    """Submit a steady stream; stop the collector ``before_s`` in for ``outage_s``."""
    submitted = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal submitted
        while not stop.is_set():
            assert collector.submit(packet(submitted))
            submitted += 1
            time.sleep(interval)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(before_s)
        server.stop("graceful")
        time.sleep(outage_s)
        server.start()  # same port
        time.sleep(after_s)
    finally:
        stop.set()
        producer.join()
    return submitted


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_collector_outage_loses_nothing_and_keeps_order(pki, servers, scheme):
    server = servers(pki.server if scheme == "tls" else None)
    collector = open_collector(server.address, tls=TlsOptions(ca_file=pki.ca_file), retry=FAST)
    started = time.monotonic()
    submitted = run_outage(server, collector, OUTAGE_S)
    collector.close(timeout=5)
    assert seqs(server) == list(range(submitted))
    stats = collector.stats
    assert stats.sent == submitted and stats.reconnects >= 1 and stats.disconnects >= 1
    assert stats.dropped == stats.dropped_at_shutdown == stats.queued == 0
    assert stats.connect_failures >= 1  # the collector really was unreachable for a while
    assert server.connections == stats.connections
    assert time.monotonic() - started < OUTAGE_S + 5


@pytest.mark.skipif(not LINUX, reason="tells acknowledged from unacknowledged bytes (SIOCOUTQ)")
@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_packets_written_into_a_dead_connection_are_sent_again(pki, servers, monkeypatch, scheme):
    """The sender does not notice that the collector went away before writing: the kernel
    takes the bytes, the collector's kernel answers with a reset, nothing was acknowledged,
    so everything is sent again on the next connection."""
    server = servers(pki.server if scheme == "tls" else None)
    collector = open_collector(server.address, tls=TlsOptions(ca_file=pki.ca_file), retry=FAST)
    for i in range(100):
        collector.submit(packet(i))
    assert wait_for(server, 100) == list(range(100))
    assert wait_until(lambda: collector.stats.sent == 100, 2)
    monkeypatch.setattr(connection.Connection, "poll_peer", lambda self: None)
    server.stop("abrupt")  # nothing unread: a FIN, then resets for whatever arrives
    for i in range(100, 200):
        collector.submit(packet(i))  # written into the dead connection, "successfully"
    time.sleep(0.2)
    collector.submit(packet(200))  # this write fails: the connection is found broken
    assert wait_until(lambda: collector.stats.resent >= 100, 3)
    server.start()
    collector.close(timeout=5)
    assert seqs(server) == list(range(201))
    assert collector.stats.sent == 201


@pytest.mark.skipif(not LINUX, reason="tells acknowledged from unacknowledged bytes (SIOCOUTQ)")
def test_reset_by_a_stalled_collector_loses_only_what_its_kernel_acknowledged(servers):
    """The residual risk, measured: bytes the collector's kernel acknowledged but its
    application never read are lost; all that sat in our send buffer is sent again."""
    n = 3000
    server = servers(read=False, rcvbuf=4096)
    collector = open_collector(server.address, retry=FAST)
    for i in range(n):
        collector.submit(packet(i))
    assert wait_until(lambda: collector.stats.in_flight > 0, 3)
    time.sleep(0.3)  # the collector's receive window is full; our send buffer holds the rest
    stalled = collector.stats
    assert stalled.queued == n - stalled.sent
    server.stop("reset")
    lost_bound = server.unread_at_stop // PACKET_SIZE + 1
    assert wait_until(lambda: collector.stats.resent > 0 and not collector.stats.connected, 3)
    server.read = True
    server.start()
    collector.close(timeout=5)
    received = seqs(server)
    lost = n - len(received)
    assert received == list(range(lost, n))  # a contiguous suffix: no gap, no duplicate
    assert lost <= lost_bound
    assert collector.stats.sent == n  # the lost ones had been acknowledged


@pytest.mark.parametrize("limit", ["messages", "bytes"])
def test_queue_too_small_drops_exactly_what_it_reports(servers, limit):
    limits = (
        QueueLimits(max_messages=50)
        if limit == "messages"
        else QueueLimits(max_bytes=50 * PACKET_SIZE)
    )
    server = servers()
    collector = open_collector(server.address, limits=limits, retry=FAST)
    seq = 0
    for _ in range(40):
        assert collector.submit(packet(seq))
        seq += 1
    assert wait_for(server, 40) == list(range(40))
    assert wait_until(lambda: collector.stats.queued == 0, 2)
    server.stop("graceful")
    assert wait_until(lambda: not collector.stats.connected, 3)
    accepted = [collector.submit(packet(seq + i)) for i in range(200)]
    seq += 200
    assert accepted == [True] * 50 + [False] * 150
    assert collector.stats.dropped == 150 and collector.stats.queued == 50
    server.start()
    assert wait_for(server, 90) == list(range(90))
    assert wait_until(lambda: collector.stats.queued == 0, 2)
    for _ in range(40):  # fits: the queue has room again
        assert collector.submit(packet(seq))
        seq += 1
    collector.close(timeout=5)
    received = seqs(server)
    stats = collector.stats
    assert len(received) + stats.dropped == seq == 280
    assert received == list(range(90)) + list(range(240, 280))
    assert stats.sent == len(received) and stats.dropped_at_shutdown == 0


@contextlib.contextmanager
def blackhole():
    """An address where connect() hangs: a listener whose accept queue is full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        for sock in [*fillers, listener]:
            sock.close()


GUARD_S = 60.0  # bounds a test only when what it checks is broken


class HeldSocketWaits:
    """Holds the sender thread inside its waits on the collector's socket (the ``poll``
    slices of :mod:`captagent_tls.sinks.hep.connection`) until the test lets it go: the
    collector is then as slow as the test wants, whatever the load of the machine."""

    def __init__(self, monkeypatch, hold_when=lambda: True):
        self.hold_when = hold_when  # called by the sender: must take no lock
        self.inside = threading.Event()  # the sender is held
        self.released = threading.Event()
        gate = self

        class Poller:
            def __init__(self) -> None:
                self.real = select.poll()
                self.register = self.real.register

            def poll(self, timeout_ms):
                if not gate.released.is_set() and gate.hold_when():
                    gate.inside.set()
                    gate.released.wait()
                return self.real.poll(timeout_ms)

        monkeypatch.setattr(
            connection,
            "select",
            SimpleNamespace(poll=Poller, POLLIN=select.POLLIN, POLLOUT=select.POLLOUT),
        )


@pytest.mark.parametrize("situation", ["refused", "stalled", "blackholed"])
def test_submit_never_blocks_while_the_collector_is_down_or_stalled(
    servers, monkeypatch, situation
):
    """While the sender thread is held inside a wait on the collector's socket (connecting
    to a refused or blackholed port, or writing to a collector that reads nothing), 20,000
    submits all return: had one waited for the sender, it would still be waiting, since the
    sender is let go only after them (or after ``GUARD_S``, and the test fails)."""
    stack = contextlib.ExitStack()
    if situation == "refused":
        address = f"tcp://127.0.0.1:{free_port()}"
    elif situation == "stalled":
        address = servers(read=False, rcvbuf=4096).address
    else:
        address = stack.enter_context(blackhole())
    with stack:
        collector = open_collector(address, retry=FAST)
        queue = collector.queue
        # held while connecting; when stalled, while waiting to write what is in flight
        held = HeldSocketWaits(
            monkeypatch,
            hold_when=((lambda: queue.in_flight > 0) if situation == "stalled" else (lambda: True)),
        )
        submitted = 0
        accepted: list[bool] = []

        def submit_20000() -> None:
            accepted.extend(collector.submit(packet(submitted + i)) for i in range(20_000))

        try:
            if situation == "stalled":  # fill the collector's window and our send buffer
                while not held.inside.wait(0.05) and submitted < 60_000:
                    for _ in range(1000):
                        assert collector.submit(packet(submitted))
                        submitted += 1
            assert held.inside.wait(GUARD_S), "the sender never waited on its socket"
            producer = threading.Thread(target=submit_20000, daemon=True)
            producer.start()
            producer.join(GUARD_S)
            returned_while_held = not producer.is_alive()
        finally:
            held.released.set()
        producer.join()
        submitted += 20_000
        collector.close(timeout=0.3)
        closed = not collector._thread.is_alive()  # close() cut the socket wait short
    assert returned_while_held, "a submit waited for the sender, held in a socket wait"
    assert accepted == [True] * 20_000
    assert closed, "close() did not cut the sender's socket wait short"
    stats = collector.stats
    assert stats.dropped == 0 and stats.queued == 0
    assert stats.sent + stats.dropped_at_shutdown == submitted
    if situation != "stalled":
        assert stats.sent == 0 and not stats.connected
    if situation == "refused":
        assert stats.connect_failures >= 1 and stats.last_error == "Connection refused"
    assert not collector.submit(packet(0))
    assert collector.stats.dropped_at_shutdown == submitted + 1 - stats.sent


def test_close_flushes_the_queue_and_reports_what_it_could_not(servers):
    server = servers()
    collector = open_collector(server.address, retry=FAST)
    n = 20_000
    for i in range(n):
        collector.submit(packet(i))
    started = time.monotonic()
    collector.close(timeout=10)
    assert time.monotonic() - started < 10
    assert seqs(server) == list(range(n))
    stats = collector.stats
    assert (stats.sent, stats.queued, stats.dropped_at_shutdown) == (n, 0, 0)
    assert wait_until(lambda: server.clean_eofs == 1, 2)  # FIN after the last packet

    down = open_collector(f"tcp://127.0.0.1:{free_port()}", retry=FAST)
    for i in range(10):
        down.submit(packet(i))
    down.close(timeout=0.2)
    assert (down.stats.sent, down.stats.dropped_at_shutdown) == (0, 10)


def test_collector_comes_back_within_close_timeout(servers):
    port = free_port()
    collector = open_collector(f"tcp://127.0.0.1:{port}", retry=FAST)
    for i in range(10):
        collector.submit(packet(i))
    server = StreamServer()
    server.port = port
    threading.Timer(0.5, server.start).start()
    try:
        collector.close(timeout=5)
        assert wait_for(server, 10, 2) == list(range(10))
        assert collector.stats.sent == 10
    finally:
        server.stop("abrupt")


def test_shutdown_tries_a_collector_that_came_back_at_once(servers):
    """The collector returns while the sender waits out a long backoff: close() does not wait
    for that attempt (past its deadline) but tries at once, and delivers everything."""
    port = free_port()
    slow = RetryPolicy(backoff_initial=30.0, backoff_max=30.0, idle_check=0.05, connect_timeout=2.0)
    collector = open_collector(f"tcp://127.0.0.1:{port}", retry=slow)
    for i in range(10):
        collector.submit(packet(i))
    assert wait_until(lambda: collector.stats.connect_failures >= 1, 5)
    server = servers()
    server.stop("abrupt")
    server.port = port
    server.start()
    started = time.monotonic()
    collector.close(timeout=3)
    assert time.monotonic() - started < 3
    assert wait_for(server, 10, 2) == list(range(10))
    assert (collector.stats.sent, collector.stats.dropped_at_shutdown) == (10, 0)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "addresses",
    [["no-such-host.invalid:9060"], ["tcp://h"], ["tcp://127.0.0.1:9", "TCP://127.0.0.1:9"], []],
)
def test_bad_collector_configuration_fails_at_construction(addresses):
    with pytest.raises(HepConfigError) as info:
        HepSink(addresses, HepOptions())
    assert "\n" not in str(info.value)
    if addresses:
        assert isinstance(info.value, CollectorAddressError)
        assert "collector" in str(info.value)


def test_unreadable_ca_file_is_a_configuration_error(tmp_path):
    with pytest.raises(HepConfigError, match="CA file"):
        HepSink(["tls://127.0.0.1:9061"], tls=TlsOptions(ca_file=str(tmp_path / "none.pem")))


def test_udp_send_errors_are_counted():
    with UdpCollector() as udp:
        collector = open_collector(udp.address)
        assert collector.submit(packet(1))
        # too big for a datagram: queued, then counted by the sender thread
        assert collector.submit(b"HEP3" + b"\0" * 65520)
        collector.close()
        assert [seq_of(p) for p in udp.wait_for(1, 2)] == [1]
    stats = collector.stats
    assert (stats.sent, stats.send_errors) == (1, 1)
    assert "too long" in stats.last_error
    assert not collector.submit(packet(2)) and collector.stats.dropped_at_shutdown == 1


def test_a_call_id_too_long_for_its_chunk_is_counted_never_raised():
    """Bytes that are not UTF-8 in a Call-ID become U+FFFD, three bytes each: 30,000 of them
    on the wire do not fit in the correlation chunk.  The message is counted as too large."""
    sink = HepSink([f"udp://127.0.0.1:{free_port()}"], HepOptions(correlation_id=True))
    try:
        sink.emit(message(1, call_id="\ufffd" * 30_000))
        sink.emit(message(2))
    finally:
        sink.close(0.5)
    assert (sink.stats.skipped_too_large, sink.stats.packets) == (1, 1)


@pytest.mark.parametrize(
    "options",
    [
        HepOptions(password="\udcff"),
        HepOptions(node_name="n" * 70_000),
        HepOptions(capture_id=1 << 32),
        HepOptions(ip_proto_tls=256),
    ],
)
def test_hep_options_that_cannot_be_encoded_fail_at_construction(options):
    with pytest.raises(HepConfigError) as info:
        HepSink([f"udp://127.0.0.1:{free_port()}"], options)
    assert "\n" not in str(info.value)
