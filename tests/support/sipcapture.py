"""A real HOMER collector for tests: Kamailio's ``sipcapture`` module storing into SQLite.

Kamailio 5.6 (Debian ``kamailio`` + ``kamailio-sqlite-modules``) with ``hep_capture_on``
stores every HEPv3 packet it receives on UDP: SIP (payload type 1) through ``sip_capture()``
into ``sip_capture``; RTCP reports (payload type 5, the JSON that captagent and rtpengine send)
straight into ``rtcp_capture`` -- only when the packet has a correlation ID (chunk 0x0011),
which lands in ``correlation_id``; types 32/99 go to ``report_capture``, 100 to
``logs_capture`` (sipcapture.c ``receive_logging_json_msg``, hep.c ``hepv3_received``).

    with SipCapture() as homer:                    # listens on 127.0.0.1:homer.port (UDP)
        send HEP to ("127.0.0.1", homer.port)
        rows = homer.wait_rows("rtcp_capture", 3)  # dicts: correlation_id, msg, source_ip ...

Run by hand: ``python -m tests.support.sipcapture [PORT]`` starts it in the foreground, sends
one hand-made HEP type 5 packet and prints what was stored (the self-check).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"

# The columns sipcapture.c writes (Kamailio 5.6: sip_capture() and receive_logging_json_msg()).
SIP_COLUMNS = [
    "date",
    "micro_ts",
    "method",
    "reply_reason",
    "ruri",
    "ruri_user",
    "from_user",
    "from_tag",
    "to_user",
    "to_tag",
    "pid_user",
    "contact_user",
    "auth_user",
    "callid",
    "callid_aleg",
    "via_1",
    "via_1_branch",
    "cseq",
    "reason",
    "content_type",
    "auth",
    "user_agent",
    "source_ip",
    "source_port",
    "destination_ip",
    "destination_port",
    "contact_ip",
    "contact_port",
    "originator_ip",
    "originator_port",
    "proto",
    "family",
    "rtp_stat",
    "type",
    "node",
    "correlation_id",
    "from_domain",
    "to_domain",
    "ruri_domain",
    "diversion",
    "msg",
    "custom_field1",
    "custom_field2",
    "custom_field3",
]
REPORT_COLUMNS = [
    "date",
    "micro_ts",
    "correlation_id",
    "source_ip",
    "source_port",
    "destination_ip",
    "destination_port",
    "proto",
    "family",
    "type",
    "node",
    "msg",
]
REPORT_TABLES = ("rtcp_capture", "report_capture", "logs_capture")

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
listen=udp:{host}:{port}
mpath="{modules}"
loadmodule "db_sqlite.so"
loadmodule "sipcapture.so"
modparam("sipcapture", "db_url", "sqlite://{db}")
modparam("sipcapture", "capture_on", 1)
modparam("sipcapture", "hep_capture_on", 1)
modparam("sipcapture", "table_name", "sip_capture")
modparam("sipcapture", "capture_node", "homer01")

request_route {{
    sip_capture();
    exit;
}}
onreply_route {{
    sip_capture();
    exit;
}}
"""


def _int_col(name: str) -> bool:
    return name.endswith(("_port", "micro_ts")) or name in ("proto", "family", "type")


def create_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        for table, cols in [("sip_capture", SIP_COLUMNS)] + [
            (t, REPORT_COLUMNS) for t in REPORT_TABLES
        ]:
            spec = ", ".join(
                f"{c} {'DATETIME' if c == 'date' else 'INTEGER' if _int_col(c) else 'TEXT'}"
                for c in cols
            )
            db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, {spec})")


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SipCapture:
    """Kamailio sipcapture on UDP ``host:port`` with a fresh SQLite database in a temp dir."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        if shutil.which("kamailio") is None or not Path(MODULES, "db_sqlite.so").exists():
            raise RuntimeError("needs kamailio and kamailio-sqlite-modules")
        self.host, self.port = host, port or free_udp_port(host)
        self._tmp = tempfile.TemporaryDirectory(prefix="sipcapture-")
        self.dir = Path(self._tmp.name)
        self.db = self.dir / "homer.db"
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SipCapture:
        create_db(self.db)
        cfg = self.dir / "kamailio.cfg"
        cfg.write_text(CONFIG.format(host=self.host, port=self.port, modules=MODULES, db=self.db))
        (self.dir / "run").mkdir()
        self.log = open(self.dir / "kamailio.log", "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            ["kamailio", "-DD", "-E", "-f", str(cfg), "-Y", str(self.dir / "run")]
            + ["-P", str(self.dir / "kamailio.pid"), "-m", "64", "-M", "8"],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            text=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kamailio (sipcapture) exited:\n" + self.log_text())
            if "INFO: <core> [core/udp_server.c" in self.log_text() or self._bound():
                time.sleep(0.3)
                return self
            time.sleep(0.1)
        raise RuntimeError("kamailio (sipcapture) did not start:\n" + self.log_text())

    def _bound(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((self.host, self.port))
            except OSError:
                return True
        return False

    def log_text(self) -> str:
        return (self.dir / "kamailio.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self._tmp.cleanup()

    def rows(self, table: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id")]

    def wait_rows(self, table: str, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(table)
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


# --------------------------------------------------------------------------
# A hand-made HEPv3 packet (independent of the agent's encoder)
# --------------------------------------------------------------------------


def _chunk(ctype: int, value: bytes, vendor: int = 0) -> bytes:
    return struct.pack("!HHH", vendor, ctype, 6 + len(value)) + value


def hep3(
    payload: bytes,
    *,
    proto_type: int,
    src: tuple[str, int],
    dst: tuple[str, int],
    ts: float,
    capture_id: int = 2001,
    correlation_id: str | None = None,
    ip_proto: int = 17,
    password: str | None = None,
    node_name: str | None = None,
) -> bytes:
    """HEPv3 (IPv4): chunks 1-12 (+ 0x000e, 0x0011, 0x0013), payload 0x000f last."""
    sec, usec = int(ts), int(round((ts % 1) * 1e6)) % 1_000_000
    chunks = [
        _chunk(0x0001, bytes([socket.AF_INET])),
        _chunk(0x0002, bytes([ip_proto])),
        _chunk(0x0003, socket.inet_aton(src[0])),
        _chunk(0x0004, socket.inet_aton(dst[0])),
        _chunk(0x0007, struct.pack("!H", src[1])),
        _chunk(0x0008, struct.pack("!H", dst[1])),
        _chunk(0x0009, struct.pack("!I", sec)),
        _chunk(0x000A, struct.pack("!I", usec)),
        _chunk(0x000B, bytes([proto_type])),
        _chunk(0x000C, struct.pack("!I", capture_id)),
    ]
    if password is not None:
        chunks.append(_chunk(0x000E, password.encode()))
    if correlation_id is not None:
        chunks.append(_chunk(0x0011, correlation_id.encode()))
    if node_name is not None:
        chunks.append(_chunk(0x0013, node_name.encode()))
    chunks.append(_chunk(0x000F, payload))
    body = b"".join(chunks)
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def parse_hep3(packet: bytes) -> dict[int, bytes]:
    """Chunk type -> value (vendor 0 only)."""
    if packet[:4] != b"HEP3":
        raise ValueError("not HEP3")
    (total,) = struct.unpack_from("!H", packet, 4)
    out, off = {}, 6
    while off + 6 <= total:
        vendor, ctype, length = struct.unpack_from("!HHH", packet, off)
        if length < 6:
            raise ValueError("bad chunk length")
        if vendor == 0:
            out[ctype] = packet[off + 6 : off + length]
        off += length
    return out


def self_check(port: int | None = None) -> list[dict[str, Any]]:
    report = {
        "type": 200,
        "ssrc": 0x11223344,
        "report_count": 0,
        "report_blocks": [],
        "sender_information": {"packets": 10, "octets": 1600},
    }
    with SipCapture(port=port) as homer, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        pkt = hep3(
            json.dumps(report).encode(),
            proto_type=5,
            src=("127.0.0.1", 30001),
            dst=("127.0.0.1", 30051),
            ts=time.time(),
            correlation_id="self-check@127.0.0.1",
        )
        s.sendto(pkt, (homer.host, homer.port))
        # without a correlation ID sipcapture refuses a report ("no correlation id defined")
        s.sendto(
            hep3(
                b"{}",
                proto_type=5,
                src=("127.0.0.1", 1),
                dst=("127.0.0.1", 2),
                ts=time.time(),
            ),
            (homer.host, homer.port),
        )
        rows = homer.wait_rows("rtcp_capture", 1)
        time.sleep(0.3)
        rows = homer.rows("rtcp_capture")
        if len(rows) != 1 or rows[0]["correlation_id"] != "self-check@127.0.0.1":
            raise RuntimeError(f"sipcapture stored {rows!r}\n{homer.log_text()}")
        return rows


if __name__ == "__main__":
    stored = self_check(int(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(json.dumps(stored, indent=1, default=str))
