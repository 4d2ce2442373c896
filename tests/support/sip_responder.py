"""A SIP-over-TLS responder to run as its own process (so that a library can be preloaded into
it): every request gets a 200 OK (ACK gets nothing), on as many forked workers as asked.

    python tests/support/sip_responder.py --tls13 --workers 4 [--threads] [--host-keylog FILE]

It prints ``listening PORT`` once every worker is accepting, and serves until SIGTERM or until
``--connections`` connections per worker are done.  ``--host-keylog`` sets the process's own
key log (Python's ``SSLContext.keylog_filename``, i.e. its own OpenSSL key-log callback), and
``--report-callbacks`` prints which object's function OpenSSL holds as the context's key-log
callback, as libssl sees it and as the process sees it through SSL_CTX_get_keylog_callback.

The message framing (:func:`read_message`) is shared with the clients of the tests; it is test
code on purpose, independent of the agent's own SIP framing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
SERVER_KEY = KEYS / "server-rsa2048.key"
SERVER_CERT = KEYS / "server-rsa2048.crt"
TLS12_ECDHE = "ECDHE-RSA-AES256-GCM-SHA384"
_CONTENT_LENGTH = re.compile(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", re.M | re.I)


def read_message(conn: socket.socket, pending: bytearray) -> bytes | None:
    """The next SIP message on ``conn`` (head and Content-Length body), None at a clean end."""
    while True:
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            match = _CONTENT_LENGTH.search(pending, 0, end)
            size = end + 4 + (int(match.group(1)) if match else 0)
            if len(pending) >= size:
                message = bytes(pending[:size])
                del pending[:size]
                return message
        data = conn.recv(65536)
        if not data:
            if pending:
                raise ConnectionError(f"connection closed inside a message: {bytes(pending)!r}")
            return None
        pending += data


def response_to(request: bytes) -> bytes | None:
    """A 200 OK to ``request`` (its Via, From, To, Call-ID and CSeq), None for ACK."""
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    if lines[0].startswith("ACK "):
        return None
    copied = [
        line
        for line in lines[1:]
        if line.split(":", 1)[0].strip().lower()
        in ("via", "v", "from", "f", "call-id", "i", "cseq")
    ]
    to = next(
        (line for line in lines[1:] if line.split(":", 1)[0].strip().lower() in ("to", "t")),
        "To: <sip:unknown@invalid>",
    )
    if ";tag=" not in to:
        to += ";tag=responder"
    return (
        "\r\n".join(
            [
                "SIP/2.0 200 OK",
                *copied,
                to,
                f"Server: sip-responder pid={os.getpid()}",
                "Content-Length: 0",
            ]
        )
        + "\r\n\r\n"
    ).encode()


def server_context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(SERVER_CERT, SERVER_KEY)
    if args.tls13:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(args.ciphers)
    if args.host_keylog:
        context.keylog_filename = args.host_keylog
    return context


def handle(context: ssl.SSLContext, raw: socket.socket) -> None:
    raw.settimeout(20)
    with contextlib.closing(raw):
        conn = context.wrap_socket(raw, server_side=True)
        pending = bytearray()
        while (request := read_message(conn, pending)) is not None:
            answer = response_to(request)
            if answer is not None:
                conn.sendall(answer)
        with contextlib.suppress(ssl.SSLError, OSError):
            conn.unwrap()


def serve_one(context: ssl.SSLContext, raw: socket.socket) -> None:
    try:
        handle(context, raw)
    except (OSError, ssl.SSLError, ConnectionError, ValueError) as exc:
        print(f"sip_responder[{os.getpid()}]: {exc!r}", file=sys.stderr, flush=True)


def worker(
    listener: socket.socket, context: ssl.SSLContext, connections: int, threaded: bool
) -> None:
    served = 0
    while connections == 0 or served < connections:
        raw, _ = listener.accept()
        served += 1
        if threaded:  # a thread per connection: handshakes run at once in one process
            threading.Thread(target=serve_one, args=(context, raw), daemon=True).start()
        else:
            serve_one(context, raw)


def callback_owner(address: int | None) -> str:
    """The file of the object that holds ``address`` (dladdr), or "none"."""
    if not address:
        return "none"

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    info = DlInfo()
    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    if not libc.dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return "unknown"
    return os.path.basename(info.dli_fname.decode())


def report_callbacks(context: ssl.SSLContext) -> None:
    sys.path.insert(0, str(KEYS.parent))
    from peers import _ssl_ctx_ptr  # the fixtures' CPython layout helper

    ctx = _ssl_ctx_ptr(context)
    get_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
    import _ssl

    # libssl's own function (dlsym through _ssl's handle searches only its dependencies) ...
    in_libssl = get_type(
        ctypes.cast(ctypes.CDLL(_ssl.__file__).SSL_CTX_get_keylog_callback, ctypes.c_void_p).value
    )
    # ... and the one the process binds to (global lookup: a preloaded library comes first)
    as_seen = (
        get_type(ctypes.cast(ctypes.CDLL(None).SSL_CTX_get_keylog_callback, ctypes.c_void_p).value)
        if hasattr(ctypes.CDLL(None), "SSL_CTX_get_keylog_callback")
        else in_libssl
    )
    print(f"callback in libssl: {callback_owner(in_libssl(ctx))}", flush=True)
    print(f"callback as seen: {callback_owner(as_seen(ctx))}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls13", action="store_true")
    parser.add_argument("--ciphers", default=TLS12_ECDHE)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=0, help="per worker; 0: no end")
    parser.add_argument("--threads", action="store_true", help="a thread per connection")
    parser.add_argument("--host-keylog")
    parser.add_argument("--report-callbacks", action="store_true")
    parser.add_argument("--chdir", help="change to this folder first, as a daemon does")
    args = parser.parse_args()
    if args.chdir:
        os.chdir(args.chdir)
    context = server_context(args)
    if args.report_callbacks:
        report_callbacks(context)
    listener = socket.create_server(("127.0.0.1", args.port), backlog=128)
    port = listener.getsockname()[1]
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                worker(listener, context, args.connections, args.threads)
            finally:
                os._exit(0)
        children.append(pid)
    listener.close()

    def stop(signum: int, frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    print(f"listening {port}", flush=True)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
