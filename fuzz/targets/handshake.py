"""tls/handshake.py: the handshake message parsers, and the certificate reading behind them.

Input: one byte picks the parser (and its flag: TLS 1.3, SSLv3), the rest is the message
body.  The hello parsers' results are also asked for what the connection code asks (server
name, TLS 1.3 offered, ticket, HelloRetryRequest); a certificate found is handed to
``KeyStore.certificate_modulus`` as the connection code does.

Oracle: only ``ParseError`` escapes; the fields returned have their fixed sizes (a 32-byte
random, a two-byte suite list, session IDs of at most 255 bytes) and are pieces of the input.
A certificate's RSA modulus, which we read without ``cryptography.x509``
(tls/certificate.py), is the one x509 reads whenever x509 accepts the certificate.
"""

from __future__ import annotations

from captagent_tls.tls import handshake as hsk
from captagent_tls.tls.keys import KeyStore
from fuzz import mutate, tlsmap
from fuzz.oracle import OracleFailure

MAX_LEN = 4096
PARSERS = (
    "client_hello",
    "server_hello",
    "server_hello_draft",
    "sslv2_client_hello",
    "certificate",
    "certificate13",
    "ticket",
    "ticket13",
    "extensions",
    "pre_master",
    "pre_master_ssl3",
)
_keys = KeyStore()
DICTIONARY = [
    b"\x00\x2b",
    b"\x00\x17",
    b"\x00\x16",
    b"\x00\x23",
    b"\x00\x29",
    b"\x00\x2a",
    b"\x03\x03",
    b"\x03\x04",
    b"\x7f\x17",
    b"\x30\x82",
    b"\xa0\x03\x02\x01\x02",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
]


def _check_hello(hello: hsk.ClientHello | hsk.ServerHello, body: bytes) -> None:
    if len(hello.random) != 32:
        raise OracleFailure("hello-random", f"random of {len(hello.random)} bytes")
    if len(hello.session_id) > 255 or (hello.session_id and hello.session_id not in body):
        raise OracleFailure("hello-session-id", "session id not from the message")
    for ext_type, value in hello.extensions.items():
        if not 0 <= ext_type < 65536 or (value and value not in body):
            raise OracleFailure("hello-extension", f"extension {ext_type}")


def _x509_modulus(cert: bytes) -> int | None:
    """The RSA modulus as cryptography.x509 reads it (None when it refuses the certificate
    or the key is not RSA): the independent reference for tls/certificate.py."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        public_key = x509.load_der_x509_certificate(cert).public_key()
    except Exception:  # noqa: BLE001 - x509 refusing the bytes is an answer, not a finding
        return None
    return public_key.public_numbers().n if isinstance(public_key, rsa.RSAPublicKey) else None


def one_input(data: bytes) -> None:
    if not data:
        return
    parser, body = PARSERS[data[0] % len(PARSERS)], data[1:]
    try:
        if parser == "client_hello":
            hello = hsk.parse_client_hello(body)
            _check_hello(hello, body)
            if len(hello.cipher_suites) % 2 and hello.cipher_suites not in body:
                raise OracleFailure("hello-suites", "suites not from the message")
            _ = hello.server_name, hello.offers_tls13, hello.ticket
        elif parser in ("server_hello", "server_hello_draft"):
            parse = (
                hsk.parse_server_hello
                if parser == "server_hello"
                else hsk.parse_server_hello_tls13_draft
            )
            server = parse(body)
            _check_hello(server, body)
            if not 0 <= server.cipher_suite < 65536 or not 0 <= server.version < 65536:
                raise OracleFailure("hello-suite", f"{server.cipher_suite} {server.version}")
            _ = server.is_hello_retry
        elif parser == "sslv2_client_hello":
            hello = hsk.parse_sslv2_client_hello(body)
            if len(hello.random) != 32 or len(hello.cipher_suites) % 2:
                raise OracleFailure("sslv2-hello", "random or suites of the wrong size")
        elif parser.startswith("certificate"):
            cert = hsk.first_certificate(body, tls13=parser.endswith("13"))
            if cert is not None:
                if cert and cert not in body:
                    raise OracleFailure("certificate-bytes", "not from the message")
                modulus = _keys.certificate_modulus(cert)
                if modulus is not None and not isinstance(modulus, int):
                    raise OracleFailure("certificate-modulus", repr(modulus))
                expected = _x509_modulus(cert)
                if expected is not None and modulus != expected:
                    raise OracleFailure("certificate-modulus", "not the modulus x509 reads")
        elif parser.startswith("ticket"):
            ticket = hsk.session_ticket(body, tls13=parser.endswith("13"))
            if ticket and ticket not in body:
                raise OracleFailure("ticket-bytes", "not from the message")
        elif parser == "extensions":
            hsk.parse_extensions(body)
        else:
            secret = hsk.rsa_encrypted_pre_master(body, ssl3=parser.endswith("ssl3"))
            if secret and secret not in body:
                raise OracleFailure("pre-master-bytes", "not from the message")
    except hsk.ParseError:
        pass


def seeds() -> list[bytes]:
    """The fixtures' handshake messages, each under its own parser and one other."""
    wanted = {
        1: "client_hello",
        2: "server_hello",
        11: "certificate",
        4: "ticket",
        16: "pre_master",
        8: "extensions",
    }
    out: list[bytes] = []
    seen: set[bytes] = set()
    for seed in mutate.seeds():
        for conn in seed.conns:
            for direction in conn.directions:
                stream = direction.stream
                for fld in direction.fields:
                    if fld.kind != tlsmap.HS_TYPE:
                        continue
                    msg_type = stream[fld.offset]
                    length = int.from_bytes(stream[fld.offset + 1 : fld.offset + 4], "big")
                    body = stream[fld.offset + 4 : fld.offset + 4 + length]
                    parser = wanted.get(msg_type)
                    if parser is None or body in seen or len(body) >= MAX_LEN:
                        continue
                    seen.add(body)
                    out.append(bytes([PARSERS.index(parser)]) + body)
    sslv2 = (
        b"\x01\x03\x01\x00\x09\x00\x00\x00\x10"
        + b"\x00\x00\x2f\x00\x00\x35\x01\x00\x80"
        + bytes(range(16))
    )
    out.append(bytes([PARSERS.index("sslv2_client_hello")]) + sslv2)
    return out
