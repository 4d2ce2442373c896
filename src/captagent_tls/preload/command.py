"""``captagent-tls-keylog``: where the key-log preload library is, and the systemd drop-in that
loads it into a SIP server.

A command of its own rather than a flag of ``captagent-tls``: that one captures and decrypts
(tcpdump-style flags), and this one prints configuration for another program's unit and may
compile a library; they share no option.  Its output on stdout is a complete drop-in file
(comments and a ``[Service]`` section), so it can be pasted into ``systemctl edit UNIT`` or
redirected into ``/etc/systemd/system/UNIT.service.d/``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from captagent_tls.net.addresses import split_url
from captagent_tls.preload import built_library, library_path
from captagent_tls.preload.build import SOURCE, BuildError, compile_library

PROG = "captagent-tls-keylog"
DEFAULT_UDP = "127.0.0.1:5999"
DROPIN_NAME = "captagent-keylog.conf"
EXIT_ERROR = 1


class UserError(Exception):
    """A mistake the user can fix; the message says how."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print the path of the key-log library to preload into a SIP server "
        "that links OpenSSL (Kamailio 5.x, OpenSIPS, Asterisk, FreeSWITCH), and a "
        "systemd drop-in that loads it.  The server then hands every TLS session "
        "secret it negotiates to captagent-tls.",
        epilog="Read the keys with: captagent-tls -i any --keylog-listen udp://127.0.0.1:5999 "
        "(or --keylog FILE).  Per-server instructions: contrib/keylog-preload.md.",
    )
    parser.add_argument(
        "--udp",
        metavar="HOST:PORT",
        help="send each key-log line as one UDP datagram to this address, "
        "an IP literal ([::1]:PORT for IPv6); the agent's "
        f"--keylog-listen udp://HOST:PORT (default {DEFAULT_UDP} unless "
        "--file is given)",
    )
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="append each key-log line to this file (absolute path; created "
        "0600, by the server's user: its directory must be writable "
        "by that user)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="allow --udp to an address other than loopback (key-log lines are secrets in transit)",
    )
    parser.add_argument(
        "--service",
        metavar="UNIT",
        help="the SIP server's systemd unit (kamailio, opensips, asterisk, "
        "freeswitch): names the drop-in file in the output",
    )
    parser.add_argument(
        "--path",
        action="store_true",
        help="print only the library's path (e.g. for LD_PRELOAD=$(...))",
    )
    parser.add_argument(
        "--check",
        metavar="PID",
        type=int,
        help="tell whether the running process PID has the library loaded, "
        "where it sends the key-log lines, and whether it uses libssl",
    )
    parser.add_argument(
        "--build",
        action="store_true",
        help="compile the library in place with the system's C compiler "
        "(needs gcc and the OpenSSL headers: libssl-dev)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.build:
            built = build_in_place()
            print(f"{PROG}: built {built}", file=sys.stderr)
        if args.check is not None:
            print(check_process(args.check), end="")
            return 0
        library = require_library()
        if args.path:
            print(library)
            return 0
        print(dropin(library, args), end="")
        return 0
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def build_in_place() -> Path:
    try:
        return compile_library(library_path(), SOURCE)
    except BuildError as exc:
        raise UserError(f"cannot build the library: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot write {library_path()}: {exc.strerror or exc}") from None


def require_library() -> Path:
    library = built_library()
    if library is None:
        raise UserError(
            f"the key-log library is not built ({library_path()} is missing: the package was "
            f"installed without a C compiler or the OpenSSL headers).  Install them (Debian: "
            f"apt-get install gcc libssl-dev) and run: {PROG} --build"
        )
    text = str(library)
    if any(c.isspace() or c in ":\"'\\" for c in text):
        raise UserError(
            f"LD_PRELOAD cannot name {text} (spaces, colons or quotes in the path): copy the "
            f"library elsewhere, e.g. install -m 0755 '{text}' /usr/local/lib/sslkeylog.so"
        )
    return library


def udp_destination(text: str, allow_remote: bool) -> str:
    """``HOST:PORT`` as the library takes it (``udp://`` accepted); UserError otherwise."""
    try:
        _, host, port = split_url(text, ("udp",), default="udp")
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UserError(
            f"--udp {text}: expected IP:PORT or [IPv6]:PORT (an IP address: "
            "the library resolves no names)"
        ) from None
    mapped = getattr(address, "ipv4_mapped", None)
    loopback = address.is_loopback or (mapped is not None and mapped.is_loopback)
    if not loopback and not allow_remote:
        raise UserError(
            f"--udp {text} is not on loopback: key-log lines are secrets in "
            "transit; add --remote to send them over the network anyway"
        )
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def keylog_file(text: str) -> str:
    if not os.path.isabs(text):
        raise UserError(
            f"--file {text}: give an absolute path (a service's working directory is /)"
        )
    if any(c.isspace() or c in "\"'\\" for c in text):
        raise UserError(f"--file {text}: choose a path without spaces or quotes")
    return os.path.normpath(text)


def dropin(library: Path, args: argparse.Namespace) -> str:
    udp = udp_destination(args.udp, args.remote) if args.udp else None
    path = keylog_file(args.file) if args.file else None
    if udp is None and path is None:
        udp = DEFAULT_UDP
    unit = args.service or "UNIT"
    environment = [f"LD_PRELOAD={library}"]
    destinations = []
    if udp is not None:
        environment.append(f"SSLKEYLOG_UDP={udp}")
        if args.remote:
            environment.append("SSLKEYLOG_UDP_REMOTE=1")
        destinations.append(f"as UDP datagrams to {udp}")
    if path is not None:
        environment.append(f"SSLKEYLOGFILE={path}")
        destinations.append(f"to the file {path} (0600)")
    readers = []
    if udp is not None:
        readers.append(f"--keylog-listen udp://{udp}")
        if args.remote:
            readers.append("--keylog-listen-remote")
    if path is not None:
        readers.append(f"--keylog {path}")
    lines = [
        f"# /etc/systemd/system/{unit}.service.d/{DROPIN_NAME}",
        f"# Preloads captagent-tls's key-log library into {unit}: every TLS session secret",
        f"# its OpenSSL negotiates goes {' and '.join(destinations)}.",
        f"# Install: systemctl edit {unit} and paste this; or save it as the file above,",
        f"# then systemctl daemon-reload.  Then: systemctl restart {unit}.",
        f"# Agent: captagent-tls -i any -f 'tcp port 5061' {' '.join(readers)} ...",
        f"# Turn it off: remove the file, systemctl daemon-reload, systemctl restart {unit}.",
    ]
    lines += [f"# note: {note}" for note in access_notes(library, path)]
    # systemd expands %-specifiers in Environment=: a literal % is written %%
    lines += ["[Service]", "Environment=" + " ".join(environment).replace("%", "%%")]
    return "\n".join(lines) + "\n"


def check_process(pid: int) -> str:
    """What /proc says about a running server: the library mapped, its settings, libssl."""
    proc = Path("/proc") / str(pid)
    try:
        name = (proc / "comm").read_text().strip()
        mapped = {
            line.split(maxsplit=5)[5]
            for line in (proc / "maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6
        }
        environ = (proc / "environ").read_bytes().split(b"\0")
    except FileNotFoundError:
        raise UserError(f"--check {pid}: no such process") from None
    except PermissionError:
        raise UserError(
            f"--check {pid}: not allowed to read /proc/{pid} (run as root or as the server's user)"
        ) from None
    except OSError as exc:
        raise UserError(f"--check {pid}: {exc.strerror or exc}") from None
    libraries = sorted(path for path in mapped if os.path.basename(path) == "sslkeylog.so")
    libssl = sorted(path for path in mapped if os.path.basename(path).startswith("libssl.so"))
    settings = [
        entry.decode(errors="replace")
        for entry in environ
        if entry.split(b"=", 1)[0] in (b"SSLKEYLOGFILE", b"SSLKEYLOG_UDP", b"SSLKEYLOG_UDP_REMOTE")
    ]
    lines = [f"process {pid} ({name}):"]
    if libraries:
        lines.append(f"  library loaded: {', '.join(libraries)}")
    else:
        lines.append(
            "  library NOT loaded: add the drop-in, then systemctl daemon-reload and "
            "restart the service"
        )
    active = [setting for setting in settings if setting.split("=", 1)[1]]
    remote = "SSLKEYLOG_UDP_REMOTE=1" in settings
    for setting in active:
        if setting.startswith("SSLKEYLOG_UDP="):
            try:
                udp_destination(setting.split("=", 1)[1], remote)
            except UserError as exc:
                lines.append(f"  SSLKEYLOG_UDP is refused by the library: {exc}")
    lines.append(
        "  sends key-log lines: "
        + (
            ", ".join(active)
            if active
            else "nowhere (neither SSLKEYLOGFILE nor SSLKEYLOG_UDP is set)"
        )
    )
    lines.append(
        "  libssl: "
        + (
            ", ".join(libssl)
            if libssl
            else "not loaded (yet): the library acts once the server uses OpenSSL"
        )
    )
    return "\n".join(lines) + "\n"


def access_notes(library: Path, path: str | None) -> list[str]:
    """What would stop a server running as its own user (User= in its unit)."""
    notes = []
    if not world_readable(library):
        notes.append(f"users other than {owner(library)} cannot read {library}; for a server")
        notes.append("that runs as its own user, copy it and use the copy's path:")
        notes.append(f"  install -m 0755 {library} /usr/local/lib/sslkeylog.so")
    if path is not None:
        notes.append(f"{os.path.dirname(path)} must exist and be writable by the server's user")
    return notes


def world_readable(path: Path) -> bool:
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


def owner(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, OSError, NotImplementedError):
        return "its owner"


if __name__ == "__main__":
    sys.exit(main())
