"""Local HEP collectors over TCP and TLS (restartable, stallable), and a throwaway PKI for
the TLS ones.  Shared by the transport tests and the live agent tests."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LINUX = sys.platform.startswith("linux")


class StreamServer:
    """A HEP collector over TCP (or TLS with ``context``) on 127.0.0.1, restartable on its port.

    ``read=False`` accepts connections but never reads (a stalled collector).  ``stop(mode)``:
    ``graceful`` half-closes and reads until the sender closes (a collector draining on
    shutdown), ``abrupt`` closes at once, ``reset`` closes with a TCP reset (SO_LINGER 0).
    """

    def __init__(
        self, context: ssl.SSLContext | None = None, read: bool = True, rcvbuf: int | None = None
    ):
        self.context = context
        self.read = read
        self.rcvbuf = rcvbuf
        self.port = 0
        self.packets: list[bytes] = []
        self.errors: list[str] = []
        self.handshake_failures: list[str] = []
        self.connections = 0
        self.clean_eofs = 0  # connections the sender ended in order (TLS: with close_notify)
        self.unread_at_stop = 0  # bytes left in kernel receive buffers at a reset
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._mode = "graceful"
        self._listener: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"{'tls' if self.context else 'tcp'}://127.0.0.1:{self.port}"

    def start(self) -> StreamServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.02)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True)
        ]
        self._threads[0].start()
        return self

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            thread = threading.Thread(target=self._serve, args=(sock, stop), daemon=True)
            self._threads.append(thread)
            thread.start()
        listener.close()

    def _serve(self, sock: socket.socket, stop: threading.Event) -> None:
        with self._cond:
            self.connections += 1
            self._socks.append(sock)
        if self.context is not None:
            sock.settimeout(5)
            try:
                sock = self.context.wrap_socket(sock, server_side=True, suppress_ragged_eofs=False)
            except (ssl.SSLError, OSError) as exc:
                with self._cond:
                    self.handshake_failures.append(str(exc))
                sock.close()
                return
        sock.settimeout(0.02)
        buffer = bytearray()
        draining_until = None
        while True:
            if stop.is_set() and draining_until is None:
                if self._mode != "graceful":
                    self._close_abruptly(sock, self._mode == "reset")
                    return
                with contextlib.suppress(OSError):  # a FIN; TLS state untouched
                    socket.socket.shutdown(sock, socket.SHUT_WR)
                draining_until = time.monotonic() + 5
            if draining_until is not None and time.monotonic() > draining_until:
                break
            if not self.read and not stop.is_set():
                time.sleep(0.02)
                continue
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ssl.SSLError as exc:  # includes a TCP EOF without close_notify
                with self._cond:
                    self.errors.append(f"TLS: {exc}")
                break
            except OSError:
                break
            if not data:
                with self._cond:
                    self.clean_eofs += 1
                break
            buffer += data
            self._parse(buffer)
        sock.close()

    def _close_abruptly(self, sock: socket.socket, reset: bool) -> None:
        if reset:
            if LINUX:
                import fcntl
                import termios

                raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
                with self._cond:
                    self.unread_at_stop += struct.unpack("i", raw)[0]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _parse(self, buffer: bytearray) -> None:
        found = []
        pos = 0
        while len(buffer) - pos >= 6:
            if buffer[pos : pos + 4] != b"HEP3":
                self.errors.append(f"bad magic {bytes(buffer[pos : pos + 4])!r}")
                pos = len(buffer)
                break
            total = int.from_bytes(buffer[pos + 4 : pos + 6], "big")
            if len(buffer) - pos < total:
                break
            found.append(bytes(buffer[pos : pos + total]))
            pos += total
        del buffer[:pos]
        if found:
            with self._cond:
                self.packets.extend(found)
                self._cond.notify_all()

    def stop(self, mode: str = "graceful") -> None:
        """Stop listening at once; connections end as ``mode`` says (see the class)."""
        self._mode = mode
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)

    def wait_for_packets(self, n: int, timeout: float = 10.0) -> list[bytes]:
        end = time.monotonic() + timeout
        with self._cond:
            while len(self.packets) < n and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            return list(self.packets)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pki:
    ca_file: str  # trusts the server certificates
    other_ca_file: str  # a CA that signed nothing here
    server: ssl.SSLContext  # certificate for 127.0.0.1 and localhost
    wrong_name: ssl.SSLContext  # certificate for collector.example only


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_context(
    tmp: Path, stem: str, ca_key, ca_cert, dns: list[str], ips: list[str]
) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def make_pki(tmp: Path) -> Pki:
    ca_key, ca_cert = _ca("captagent-tls test CA")
    _, other_cert = _ca("some other CA")
    (tmp / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "other-ca.pem").write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    return Pki(
        str(tmp / "ca.pem"),
        str(tmp / "other-ca.pem"),
        _server_context(tmp, "server", ca_key, ca_cert, ["localhost"], ["127.0.0.1"]),
        _server_context(tmp, "wrong", ca_key, ca_cert, ["collector.example"], []),
    )
