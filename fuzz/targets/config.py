"""config/: captagent-tls's TOML file (``load_native``) and a captagent XML installation
(``load_captagent``: captagent.xml, module files, XInclude).

Input: one option byte, then the content.  For TOML the content is the file.  For XML it is
cut at the first NUL byte into ``captagent.xml`` and an included file ``inc.xml`` (which the
main file may name with ``<xi:include href="inc.xml"/>``); the option says whether the
folder, the main file or the included file alone is given.

Oracle: only ``ConfigError`` escapes (the command line prints it as one line), and what is
read names only options the command line has.
"""

from __future__ import annotations

import shutil

from captagent_tls.config import OPTIONS, ConfigError, load_captagent, load_native
from fuzz.oracle import OracleFailure
from fuzz.paths import REPO
from fuzz.targets.pipeline import scratch_dir

MAX_LEN = 8192
DICTIONARY = [
    b"[tuning]",
    b"[hep]",
    b"[keys]",
    b" = ",
    b"[[",
    b"]]",
    b'"""',
    b"'''",
    b"{ a = 1 }",
    b'<xi:include href="inc.xml"/>',
    b"<!DOCTYPE",
    b"<!ENTITY",
    b"&#",
    b'<param name="',
    b'value="',
    b'<profile name="',
    b'enable="true"',
    b'<module name="',
    b'<load module="',
    b'<configuration name="',
]


def one_input(data: bytes) -> None:
    if not data:
        return
    option, content = data[0], data[1:]
    folder = scratch_dir() / "config"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    try:
        if option & 1 == 0:
            path = folder / "agent.toml"
            path.write_bytes(content)
            values = load_native(path)
        else:
            main, _, included = content.partition(b"\0")
            (folder / "captagent.xml").write_bytes(main)
            (folder / "inc.xml").write_bytes(included)
            given = (folder, folder / "captagent.xml", folder / "inc.xml")[(option >> 1) % 3]
            values, warnings = load_captagent(given)
            if not all(isinstance(w, str) for w in warnings):
                raise OracleFailure("config-warnings", "a warning that is not a line")
    except ConfigError:
        return
    unknown = set(values) - set(OPTIONS)
    if unknown:
        raise OracleFailure("config-unknown-option", f"{sorted(unknown)}")


def seeds() -> list[bytes]:
    out = []
    example = REPO / "contrib" / "agent.toml.example"
    if example.exists():
        out.append(b"\x00" + example.read_bytes())
    out.append(
        b'\x00hep = ["udp://127.0.0.1:9060"]\nkeylog = ["a.keys"]\n[tuning]\nflow_timeout = 30.5\n'
    )
    data = REPO / "tests" / "data" / "captagent"
    for xml in sorted(data.glob("*/*.xml")):
        content = xml.read_bytes()
        out.append(b"\x01" + content)
        out.append(b"\x03" + content)
    include = (
        b'<document type="captagent/xml"><configuration name="core.conf">'
        b'<xi:include href="inc.xml"/></configuration></document>\0'
        b'<settings><param name="debug" value="false"/></settings>'
    )
    out.append(b"\x01" + include)
    return [s[:MAX_LEN] for s in out]
