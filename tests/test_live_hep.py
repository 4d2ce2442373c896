"""The agent on loopback shipping to local HEP collectors over UDP, TCP and TLS: every message
exactly once at each, through a collector outage, with a queue too small for it, driven by a
captagent XML configuration, and watched through Prometheus.  Needs root; skips otherwise."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections import Counter

import pytest
from support.collectors import StreamServer, make_pki
from support.hep import CHUNK_PAYLOAD, UdpCollector, chunk_value, decode_with_hepjs
from support.live import (
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
        with Agent("-f", f"tcp port {port}", "-k", str(SERVER_KEY),
                   "--hep", udp.address, "--hep", tcp.address, "--hep", tls.address,
                   "--hep-ca", pki.ca_file, "--hep-id", "77", "--hep-password", "s3cret",
                   "--hep-node-name", "edge-1") as agent:
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


def run_with_outage(tmp_path, queue: str, outage_s: float, calls_before: int = 3,
                    calls_during: int = 6, calls_after: int = 3):
    port = free_port()
    server = TlsSipServer(port)
    collector = StreamServer().start()
    with Agent("-f", f"tcp port {port}", "-k", str(SERVER_KEY), "--hep", collector.address,
               "--hep-queue", queue) as agent:
        calls = [sip_call(server, seed=i) for i in range(calls_before)]
        collector.wait_for_packets(7 * calls_before, timeout=10)
        collector.stop("abrupt")
        started = time.monotonic()
        seed = calls_before
        while time.monotonic() - started < outage_s or seed < calls_before + calls_during:
            if seed < calls_before + calls_during:
                calls.append(sip_call(server, seed=seed))
                seed += 1
            time.sleep(outage_s / (calls_during + 1))
        collector.start()  # the same port again
        for _ in range(calls_after):
            calls.append(sip_call(server, seed=seed))
            seed += 1
        time.sleep(3)  # reconnect backoff and resend
        assert agent.stop() == 0
    collector.stop()
    server.close()
    return calls, collector.packets, agent.stderr


def test_collector_outage_of_ten_seconds_loses_nothing_and_keeps_order(tmp_path):
    calls, packets, stderr = run_with_outage(tmp_path, queue="100000,64M", outage_s=10)
    assert Counter(payloads(packets)) == Counter(sent_messages(calls))
    assert per_flow_order(calls, packets)
    assert "0 dropped (queue full)" in stderr


def test_queue_too_small_drops_exactly_what_it_reports(tmp_path):
    calls, packets, stderr = run_with_outage(tmp_path, queue="10", outage_s=3)
    dropped = int(re.search(r"(\d+) dropped \(queue full\)", stderr).group(1))
    sent = sent_messages(calls)
    got = payloads(packets)
    assert dropped > 0
    assert len(got) + dropped == len(sent)
    assert not Counter(got) - Counter(sent)  # nothing that was not sent, nothing twice
    assert per_flow_order(calls, packets)


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
    (config / "transport_hep.xml").write_text(
        TRANSPORT_HEP.format(hep_port=collector.port))
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
    with UdpCollector() as udp, Agent("-f", f"tcp port {port}", "-k", str(SERVER_KEY),
                                      "--hep", udp.address,
                                      "--metrics", f"127.0.0.1:{metrics_port}") as agent:
        sip_call(server, seed=1)
        time.sleep(1.5)  # the loop refreshes the kernel counters every 200 ms
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert agent.stop() == 0
    server.close()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["captagent_tls_sip_messages_total"] == 7
    assert values['captagent_tls_tls_sessions_total{outcome="full"}'] == 1
    assert values['captagent_tls_tls_records_total{outcome="decrypted"}'] >= 7
    assert values[f'captagent_tls_hep_sent_total{{collector="udp://{udp.address}"}}'] == 7
    assert values["captagent_tls_kernel_received_packets_total"] > 0
    assert "captagent_tls_kernel_dropped_packets_total" in values
