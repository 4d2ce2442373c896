"""Worker processes, in-process parts: the file dealer (both directions of a connection to one
worker, every worker dealing alike), the merge by capture time, the totals, ``auto``."""

from __future__ import annotations

from pathlib import Path

import pytest

from captagent_tls.capture.files import CaptureReader
from captagent_tls.counters import Counters
from captagent_tls.net.packet import Datagram, Segment, decode
from captagent_tls.workers.outputs import Merger, Writers
from captagent_tls.workers.shard import FileSharder
from captagent_tls.workers.totals import combine
from tests.support.paths import FIXTURES
from tests.test_workers_files import fragments_capture


def test_file_sharder_keeps_both_directions_together_and_spreads_connections():
    capture = FIXTURES / "multi-key.pcap"
    workers = 2
    sharders = [FileSharder(workers, i) for i in range(workers)]
    by_flow: dict[frozenset, set[int]] = {}
    with CaptureReader(str(capture)) as reader:
        for frame in reader:
            owners = {sharder(frame.linktype, frame.data) for sharder in sharders}
            assert len(owners) == 1  # every worker makes the same choice
            packet = decode(frame.linktype, frame.data)
            if type(packet) is Segment:
                flow = frozenset(((packet.src, packet.sport), (packet.dst, packet.dport)))
                by_flow.setdefault(flow, set()).update(owners)
    assert by_flow and all(len(owner) == 1 for owner in by_flow.values())
    if len(by_flow) >= workers:
        assert {next(iter(o)) for o in by_flow.values()} == set(range(workers))


@pytest.mark.parametrize("name", ["multi-key.pcap", "ipv6.pcap", "sll2-any.pcap", "fragments"])
def test_the_quick_dealer_deals_as_the_sharder_does(name: str, tmp_path: Path):
    capture = FIXTURES / name
    if name == "fragments":
        capture = tmp_path / "fragments.pcap"
        fragments_capture(capture)
    plain, quick = FileSharder(3, 0), FileSharder(3, 0).dealer()
    with CaptureReader(str(capture)) as reader:
        dealt = [(plain(f.linktype, f.data), quick(f.linktype, f.data)) for f in reader]
    assert dealt and all(a == b for a, b in dealt)
    assert any(0 <= a < 3 for a, _ in dealt)


def test_reassembled_datagrams_belong_to_one_worker():
    segment = Segment(b"\x0a\0\0\1", b"\x0a\0\0\2", 40000, 5061, 1, 0, 0x18, b"x")
    backwards = Segment(b"\x0a\0\0\2", b"\x0a\0\0\1", 5061, 40000, 1, 0, 0x18, b"y")
    datagram = Datagram(b"\x0a\0\0\1", b"\x0a\0\0\2", 5060, 5060, b"z")
    sharders = [FileSharder(3, i) for i in range(3)]
    for packet in (segment, backwards, datagram):
        assert sum(s.owns(packet) for s in sharders) == 1
    assert [s.owns(segment) for s in sharders] == [s.owns(backwards) for s in sharders]


def test_auto_takes_every_usable_core_for_a_large_file_and_one_for_a_small_one(
    tmp_path: Path, monkeypatch
):
    import argparse

    from captagent_tls import workers

    monkeypatch.setattr(workers, "usable_cores", lambda: 4)
    small, large = tmp_path / "small.pcap", tmp_path / "large.pcap"
    small.write_bytes(b"\0" * 1000)
    with large.open("wb") as out:
        out.truncate(workers.AUTO_MIN_FILE_BYTES)
    for path, live, wanted, expected in (
        (small, False, "auto", 1),
        (large, False, "auto", 4),
        (small, True, "auto", 4),
        (small, False, 3, 3),
        ("-", False, 3, 1),
        ("-", False, "auto", 1),
    ):
        args = argparse.Namespace(read=str(path), workers=wanted)
        assert workers.workers_for(args, str(path), live) == expected, (path, live, wanted)


class Collected:
    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_merge_writes_in_time_order_up_to_the_lowest_watermark():
    out = Collected()
    merger = Merger(Writers(out, None, None, None, flush_each=False), 2)  # type: ignore[arg-type]

    def record(ts: int, text: str) -> tuple[int, tuple]:
        return (ts, (text, None, None, None, None))

    merger.add(0, [record(10, "a"), record(30, "c")], 30)
    assert merger.write_ready() == 0  # worker 1 may still send anything from 0 on
    merger.add(1, [record(20, "b"), record(40, "d")], 35)
    assert merger.write_ready() == 3 and "".join(out.text) == "abc"
    # a record held for keys comes late with its capture time, below the watermark sent
    merger.add(0, [record(32, "late"), record(50, "e")], 50)
    merger.forget(1)  # worker 1 finished
    merger.write_ready()
    assert "".join(out.text) == "abclatede"
    assert merger.held() == 0
    # a batch out of order, partly below the watermark: cut in time order, the rest waits
    merger.watch(1, 70)
    merger.add(0, [record(80, "i"), record(60, "g"), record(55, "f"), record(75, "h")], 80)
    assert merger.write_ready() == 2 and "".join(out.text).endswith("efg")
    assert merger.held() == 2
    merger.forget(1)
    assert merger.write_ready() == 2 and "".join(out.text).endswith("efghi")


def test_totals_add_up_and_take_the_largest_of_what_every_worker_holds():
    a, b = Counters(), Counters()
    for snapshot, packets, secrets in ((a, 10, 5), (b, 20, 5)):
        snapshot.set("packets", packets)
        snapshot.set("sip_messages", packets // 2)
        snapshot.set("key_log_secrets", secrets)  # every worker holds every secret
        snapshot.set("worker_cpu_seconds", packets / 100, "self")
    total = combine([(0, a), (1, b)])
    assert total["packets"] == 30 and total["sip_messages"] == 15
    assert total["key_log_secrets"] == 5
    assert total.labelled("worker_packets") == {("0",): 10, ("1",): 20}
    assert total.labelled("worker_cpu_seconds") == {("0",): 0.1, ("1",): 0.2}
