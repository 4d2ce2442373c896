"""Key-log lines that arrive one by one while the capture is read, in any order and at any
point: whatever the lines' timing, every message the connection carried comes out.

A live agent reads the capture and the key-log listener in turns, so a TLS 1.3 connection's
five lines (sent by the server as each secret is made) and its records interleave however the
scheduler wants.  Found on CI: the client's handshake secret arriving just after the server's
first flight (the other lines before it) cost the whole connection.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from tests.support.groundtruth import load_groundtruth
from tests.support.inprocess import Collected, read_frames
from tests.support.paths import FIXTURES

pytestmark = pytest.mark.unit

KEY_LOG_FIXTURES = [
    "keylog-tls13",
    "keylog-tls13-hrr",
    "keylog-tls13-resume",
    "keylog-tls13-keyupdate",
    "keylog-tls12-ecdhe",
]


def key_lines(name: str) -> list[str]:
    text = (FIXTURES / f"{name}.keylog").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def run_with_arrivals(pcap: Path, arrivals: list[tuple[str, int]]) -> Collected:
    """Feed the capture; each (line, index) is added to the key store just before frame
    ``index`` (after the last frame when ``index`` is past it)."""
    frames = read_frames(pcap)
    keys = KeyStore()
    out = Collected()
    pipeline = Pipeline(keys, [out], out.problems.append, PipelineOptions(keys_may_arrive=True))
    for index in range(len(frames) + 1):
        arrived = [line for line, at in arrivals if at == index]
        ts = frames[min(index, len(frames) - 1)].ts_ns
        if arrived:
            load_key_log("\n".join(arrived), keys)
            pipeline.keys_added(ts)
        if index < len(frames):
            pipeline.frame(frames[index])
    pipeline.finish()
    return out


def sent(name: str) -> list[bytes]:
    return sorted(m.payload for m in load_groundtruth(FIXTURES / f"{name}.json").messages)


@pytest.mark.parametrize("name", KEY_LOG_FIXTURES)
def test_one_line_late_at_every_point_of_the_capture(name):
    pcap, lines = FIXTURES / f"{name}.pcap", key_lines(name)
    frame_count = len(read_frames(pcap))
    for late in lines:
        for index in range(frame_count + 1):
            arrivals = [(line, index if line is late else 0) for line in lines]
            out = run_with_arrivals(pcap, arrivals)
            assert sorted(m.payload for m in out.messages) == sent(name), (
                f"{late.split()[0]} arriving before frame {index}: {out.problem_text()}"
            )


@pytest.mark.parametrize("name", KEY_LOG_FIXTURES)
def test_lines_in_random_order_at_random_points(name):
    pcap, lines = FIXTURES / f"{name}.pcap", key_lines(name)
    frame_count = len(read_frames(pcap))
    rng = random.Random(name)
    for _ in range(60):
        arrivals = [(line, rng.randrange(frame_count + 1)) for line in lines]
        out = run_with_arrivals(pcap, arrivals)
        assert sorted(m.payload for m in out.messages) == sent(name), (
            f"{[(line.split()[0], at) for line, at in arrivals]}: {out.problem_text()}"
        )
