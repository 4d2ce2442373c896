"""The agent on loopback shipping to local HEP collectors over UDP, TCP and TLS: every message
exactly once at each, through a 60-second outage of a TCP and a TLS collector, with a queue
too small for it, driven by a captagent XML configuration, and watched through Prometheus.
Needs root; skips otherwise."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections import Counter

import pytest

from tests.support.collectors import StreamServer, make_pki
from tests.support.hep import CHUNK_PAYLOAD, UdpCollector, chunk_value, decode_with_hepjs
from tests.support.live import (
    SERVER_KEY,
    Agent,
    TlsSipServer,
    free_port,
    require_live_capture,
    sip_call,
)

pytestmark = pytest.mark.usefixtures("live_capture")


@pytest.fixture(scope="module")
def live_capture():
    require_live_capture()


def sent_messages(calls) -> list[bytes]:
    return [m for call in calls for _, m in call.messages]


def payloads(packets: list[bytes]) -> list[bytes]:
    return [chunk_value(p, CHUNK_PAYLOAD) for p in packets]


def per_flow_order(calls, packets: list[bytes]) -> bool:
    """Within each connection, messages arrived in the order they were sent."""
    got = payloads(packets)
    for call in calls:
        mine = [m for _, m in call.messages]
        positions = [got.index(m) for m in mine if m in got]
        if positions != sorted(positions):
            return False
    return True


def test_every_message_exactly_once_at_udp_tcp_and_tls_collectors(tmp_path):
    pki = make_pki(tmp_path)
    port = free_port()
    server = TlsSipServer(port)
    tcp, tls = StreamServer().start(), StreamServer(pki.server).start()
    with UdpCollector() as udp:
        with Agent(
            "-f",
            f"tcp port {port}",
            "-k",
            str(SERVER_KEY),
            "--hep",
            udp.address,
            "--hep",
            tcp.address,
            "--hep",
            tls.address,
            "--hep-ca",
            pki.ca_file,
            "--hep-id",
            "77",
            "--hep-password",
            "s3cret",
            "--hep-node-name",
            "edge-1",
        ) as agent:
            calls = [sip_call(server, seed=i) for i in range(4)]
            assert agent.stop() == 0
        expected = Counter(sent_messages(calls))
        udp_packets = udp.wait_for(len(expected), timeout=5)
    tcp.stop()
    tls.stop()
    server.close()
    for name, packets in (("udp", udp_packets), ("tcp", tcp.packets), ("tls", tls.packets)):
        assert Counter(payloads(packets)) == expected, name
        assert per_flow_order(calls, packets), name
    decoded = decode_with_hepjs(udp_packets)
    assert {d["captureId"] for d in decoded} == {77}
    assert {d["capturePass"] for d in decoded} == {"s3cret"}
    assert {d["protocol"] for d in decoded} == {22}
    ports = {(d["srcPort"], d["dstPort"]) for d in decoded}
    assert all(port in pair for pair in ports)
    assert all(chunk_value(p, 0x0013) == b"edge-1" for p in udp_packets)


def run_with_outage(
    tmp_path,
    queue: str,
    outage_s: float,
    collectors: list[StreamServer],
    call_every_s: float = 2.0,
    calls_before: int = 3,
    calls_after: int = 3,
    extra: tuple[str, ...] = (),
    expect_all: bool = True,
):
    """Calls before, during and after an outage of every collector; the collectors come
    back on their ports.  Returns the calls, the agent's stderr, and how long the messages
    sent so far took to arrive once the collectors were back (None: not all arrived)."""
    port = free_port()
    server = TlsSipServer(port)
    hep = [arg for c in collectors for arg in ("--hep", c.address)]
    with Agent(
        "-f", f"tcp port {port}", "-k", str(SERVER_KEY), *hep, "--hep-queue", queue, *extra
    ) as agent:
        calls = [sip_call(server, seed=i) for i in range(calls_before)]
        for collector in collectors:
            collector.wait_for_packets(7 * calls_before, timeout=10)
            collector.stop("abrupt")
        started = time.monotonic()
        seed = calls_before
        while time.monotonic() - started < outage_s:  # a steady trickle of calls
            calls.append(sip_call(server, seed=seed))
            seed += 1
            time.sleep(call_every_s)
        for collector in collectors:
            collector.start()  # the same port again
        back = time.monotonic()
        for _ in range(calls_after):
            calls.append(sip_call(server, seed=seed))
            seed += 1
        wanted = len(sent_messages(calls))
        caught_up = expect_all and all(
            len(c.wait_for_packets(wanted, timeout=20)) >= wanted for c in collectors
        )
        delay = time.monotonic() - back if caught_up else None
        assert agent.stop() == 0
    for collector in collectors:
        collector.stop()
    server.close()
    return calls, agent.stderr, delay


def collector_line(stderr: str, address: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith(f"HEP {address}:"))


def test_collector_outage_of_sixty_seconds_over_tcp_and_tls_loses_nothing(tmp_path):
    """Both collectors are down for 60 s at once while calls go on: each gets every message
    exactly once, in order within each connection, soon after it is back (not only when the
    agent shuts down), and nothing is dropped."""
    pki = make_pki(tmp_path)
    tcp, tls = StreamServer().start(), StreamServer(pki.server).start()
    calls, stderr, delay = run_with_outage(
        tmp_path, "100000,64M", 60, [tcp, tls], extra=("--hep-ca", pki.ca_file)
    )
    expected = Counter(sent_messages(calls))
    assert len(calls) >= 30
    for collector in (tcp, tls):
        assert Counter(payloads(collector.packets)) == expected, collector.address
        assert per_flow_order(calls, collector.packets), collector.address
        line = collector_line(stderr, collector.address)
        assert "0 dropped (queue full), 0 dropped at shutdown" in line, line
        assert int(re.search(r"(\d+) failed connection attempts", line)[1]) >= 1, line
        assert int(re.search(r"(\d+) reconnects", line)[1]) >= 1, line
    # reconnection backs off to at most 5 s (RetryPolicy.backoff_max), plus the calls after
    assert delay is not None and delay < 15, delay


def test_queue_too_small_drops_exactly_what_it_reports(tmp_path):
    collector = StreamServer().start()
    calls, stderr, _ = run_with_outage(
        tmp_path, "10", 3, [collector], call_every_s=0.5, expect_all=False
    )
    dropped = int(re.search(r"(\d+) dropped \(queue full\)", stderr).group(1))
    sent = sent_messages(calls)
    got = payloads(collector.packets)
    assert dropped > 0
    assert len(got) + dropped == len(sent)
    assert not Counter(got) - Counter(sent)  # nothing that was not sent, nothing twice
    assert per_flow_order(calls, collector.packets)


SEED_SOCKET_PCAP = """<?xml version="1.0"?>
<document type="captagent_module/xml">
    <module name="socket_pcap" description="HEP Socket" serial="2014010402">
        <profile name="socketspcap_tls" description="TLS Socket" enable="true"
                 serial="2014010402">
            <settings>
                <param name="dev" value="lo"/>
                <param name="reasm" value="false"/>
                <param name="tcpdefrag" value="false"/>
                <param name="capture-plan" value="tls_capture_plan.cfg"/>
                <param name="filter" value="tcp port {port}"/>
            </settings>
        </profile>
    </module>
</document>
"""

SEED_PROTOCOL_TLS = """<?xml version="1.0"?>
<document type="captagent_module/xml">
    <module name="protocol_tls" description="TLS Protocol" serial="2014010402">
        <profile name="tls" description="TLS" enable="true" serial="2014120501">
            <settings>
                <param name="flow-timeout" value="180"/>
                <param name="private-key-path" value="{key}"/>
            </settings>
        </profile>
    </module>
</document>
"""

TRANSPORT_HEP = """<?xml version="1.0"?>
<document type="captagent_module/xml">
    <module name="transport_hep" description="HEP Protocol" serial="2014010402">
        <profile name="hepsocket" description="Transport HEP" enable="true"
                 serial="2014010402">
            <settings>
                <param name="version" value="3"/>
                <param name="capture-host" value="127.0.0.1"/>
                <param name="capture-port" value="{hep_port}"/>
                <param name="capture-proto" value="tcp"/>
                <param name="capture-id" value="2017"/>
                <param name="capture-password" value="myhep"/>
                <param name="payload-compression" value="false"/>
            </settings>
        </profile>
    </module>
</document>
"""

CAPTAGENT_XML = """<?xml version="1.0"?>
<document type="captagent/xml">
    <configuration name="core.conf" description="CORE Settings" serial="2014024212">
        <settings>
            <param name="debug" value="3"/>
            <param name="daemon" value="false"/>
            <param name="module_path" value="/usr/local/lib/captagent/modules"/>
            <param name="config_path" value="{config_dir}"/>
        </settings>
    </configuration>
    <configuration name="modules.conf" description="Modules" serial="2014024212">
        <modules>
            <load module="transport_hep" register="local"/>
            <load module="protocol_tls" register="local"/>
            <load module="socket_pcap" register="local"/>
        </modules>
    </configuration>
</document>
"""


def test_captagent_xml_configuration_runs_the_same(tmp_path):
    """captagent's own files, the seed's socket_pcap and protocol_tls snippets verbatim but for
    the port and key path, decide the interface, filter, key and collector."""
    port = free_port()
    collector = StreamServer().start()
    config = tmp_path / "captagent"
    config.mkdir()
    key = tmp_path / "server.key"
    shutil.copy(SERVER_KEY, key)
    key.chmod(0o600)
    (config / "captagent.xml").write_text(CAPTAGENT_XML.format(config_dir=config))
    (config / "socket_pcap.xml").write_text(SEED_SOCKET_PCAP.format(port=port))
    (config / "protocol_tls.xml").write_text(SEED_PROTOCOL_TLS.format(key=key))
    (config / "transport_hep.xml").write_text(TRANSPORT_HEP.format(hep_port=collector.port))
    server = TlsSipServer(port)
    with Agent("--captagent-config", str(config), interface=None) as agent:
        calls = [sip_call(server, seed=i) for i in range(2)]
        assert agent.stop() == 0
    collector.stop()
    server.close()
    assert Counter(payloads(collector.packets)) == Counter(sent_messages(calls))
    assert {chunk_value(p, 0x000C) for p in collector.packets} == {(2017).to_bytes(4, "big")}
    assert {chunk_value(p, 0x000E) for p in collector.packets} == {b"myhep"}
    assert "capture-plan" in agent.stderr  # what has no effect here is said, once


def test_prometheus_metrics(tmp_path):
    port, metrics_port = free_port(), free_port()
    server = TlsSipServer(port)
    with (
        UdpCollector() as udp,
        Agent(
            "-f",
            f"tcp port {port}",
            "-k",
            str(SERVER_KEY),
            "--hep",
            udp.address,
            "--metrics",
            f"127.0.0.1:{metrics_port}",
        ) as agent,
    ):
        sip_call(server, seed=1)
        time.sleep(1.5)  # the loop refreshes the kernel counters every 200 ms
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert agent.stop() == 0
    server.close()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["captagent_tls_sip_messages_total"] == 7
    assert values['captagent_tls_tls_sessions_total{outcome="full"}'] == 1
    assert values['captagent_tls_tls_records_total{outcome="decrypted"}'] >= 7
    assert values[f'captagent_tls_hep_sent_total{{collector="udp://{udp.address}"}}'] == 7
    assert values["captagent_tls_kernel_received_packets_total"] > 0
    assert "captagent_tls_kernel_dropped_packets_total" in values
