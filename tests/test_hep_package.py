"""The sinks/hep package: its public names, and what checking a collector address loads."""

from __future__ import annotations

import json
import subprocess
import sys

import captagent_tls.sinks.hep as hep


def test_every_public_name_is_importable_from_the_package():
    for name in hep.__all__:
        assert getattr(hep, name) is not None, name
    assert sorted(hep.__all__) == sorted(hep._WHERE)


def test_checking_a_collector_address_loads_neither_the_collectors_nor_tls():
    """What options and config files import to check --hep and --hep-queue."""
    code = (
        "import json, sys\n"
        "from captagent_tls.sinks.hep.addresses import parse_collector\n"
        "from captagent_tls.sinks.hep import CollectorAddressError, QueueLimits\n"
        "assert parse_collector('tls://[::1]:9061') == ('tls', '::1', 9061)\n"
        "QueueLimits(10, 1000)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout
    )
    ours = {m.rpartition(".")[2] for m in loaded if m.startswith("captagent_tls.sinks.hep.")}
    assert ours == {"addresses", "queue"}
    assert "ssl" not in loaded and "_ssl" not in loaded
