"""No packet can end the agent: an exception no input should cause, while one flow is handled,
is caught at that flow's boundary, counted and reported with the flow and the exception; that
flow is dropped and every other flow goes on.  An offline run then exits non-zero."""

from __future__ import annotations

import pytest

from captagent_tls import cli
from captagent_tls.tls.connection import TlsConnection
from tests.support.groundtruth import load_groundtruth
from tests.support.inprocess import key_store, read_frames, run_frames
from tests.support.paths import FIXTURES

FIXTURE = "tls12-aes256gcm-noems"


@pytest.fixture
def broken_first_flow(monkeypatch):
    """Every record of the first connection's flow raises, as a bug would."""
    truth = load_groundtruth(FIXTURES / f"{FIXTURE}.json")
    victim = truth.connections[0].client_port
    original = TlsConnection.data

    def data(self, direction, chunk, ts):
        if victim in (self.flow.endpoint(0)[1], self.flow.endpoint(1)[1]):
            raise KeyError("a bug")
        return original(self, direction, chunk, ts)

    monkeypatch.setattr(TlsConnection, "data", data)
    return truth, victim


def test_an_internal_error_drops_that_flow_and_every_other_flow_goes_on(broken_first_flow):
    truth, victim = broken_first_flow
    out, pipeline = run_frames(read_frames(FIXTURES / f"{FIXTURE}.pcap"), key_store(truth.keys))
    others = sorted(m for c in truth.connections[1:] for d in ("c2s", "s2c") for m in c.messages(d))
    assert sorted(m.payload for m in out.messages) == others
    assert pipeline.stats.internal_errors == 1  # the rest of that flow is ignored
    [problem] = out.problems
    assert problem.kind == "internal_error"
    assert f":{victim} -> " in problem.message and "KeyError: 'a bug'" in problem.message


def test_an_offline_run_with_an_internal_error_finishes_and_exits_non_zero(
    broken_first_flow, capsys
):
    truth, _ = broken_first_flow
    status = cli.main(["-r", str(FIXTURES / f"{FIXTURE}.pcap"), "--json", "-k", str(truth.keys[0])])
    captured = capsys.readouterr()
    assert status == 1
    assert len(captured.out.splitlines()) == sum(
        len(c.messages(d)) for c in truth.connections[1:] for d in ("c2s", "s2c")
    )
    assert "Traceback" not in captured.err
    assert "internal error on" in captured.err
    assert captured.err.rstrip().endswith("1 flow was dropped after internal errors (see above)")
