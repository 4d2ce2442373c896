#!/usr/bin/env python3
"""Make docs/report.png: the call-flow report of a test fixture, as headless Chromium shows it
(the same browser and flags as tests/test_report_html.py).

    .venv/bin/python docs/make_report_screenshot.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.browser import screenshot  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "captures" / "rsa-tls12-aead.pcap"
KEY = ROOT / "tests" / "fixtures" / "keys" / "server-rsa2048.key"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "calls.html"
        subprocess.run([sys.executable, "-m", "captagent_tls", "-r", str(FIXTURE), "-k",
                        str(KEY), "--report", str(report), "-q"], check=True,
                       env={"PYTHONPATH": str(ROOT / "src")})
        calls = json.loads(report.read_text().split('id="calls">', 1)[1].split("</script>")[0])
        call_id = calls[1][0]  # a call that is not the first row: the opened row shows
        screenshot(report, DOCS / "report.png", f"call={call_id}&msg=0", size=(1760, 1000))
    print(DOCS / "report.png")


if __name__ == "__main__":
    main()
