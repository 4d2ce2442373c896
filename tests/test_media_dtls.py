"""media/dtls.py: DTLS records and hellos, and DTLS-SRTP keys, checked against what OpenSSL
exported for real handshakes (tests/data/media/dtls, made by
tests/fixtures/make_dtls_fixtures.py) and, for DTLS 1.3, against the exporter computed here
from RFC 8446 and RFC 9147 with pyca/cryptography alone."""

from __future__ import annotations

import ipaddress
import json
import random
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from captagent_tls.media import dtls
from captagent_tls.media.dtls import (
    DTLS12,
    DTLS13,
    DtlsTracker,
    candidate_materials,
    keying_material,
    parse_records,
    parse_use_srtp,
    split_keying_material,
    tls13_exporter,
)
from captagent_tls.media.srtp import PROFILES, SUITES, MasterKey
from captagent_tls.tls import handshake as hsk
from captagent_tls.tls.keylog import load_key_log
from captagent_tls.tls.keys import KeyStore
from captagent_tls.tls.keyschedule import hkdf_expand_label

DATA = Path(__file__).parent / "data" / "media" / "dtls"
FIXTURES = sorted(DATA.glob("*.json"))
# OpenSSL's names of the suites the fixtures negotiated
OPENSSL_SUITES = {
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
    "ECDHE-ECDSA-AES128-SHA": 0xC009,
}


def endpoint(text: str) -> tuple[bytes, int]:
    host, port = text.rsplit(":", 1)
    return ipaddress.ip_address(host).packed, int(port)


def load(path: Path) -> tuple[dict, KeyStore]:
    fixture = json.loads(path.read_text())
    keys = KeyStore()
    load_key_log(fixture["keylog"], keys)
    return fixture, keys


def feed(tracker: DtlsTracker, fixture: dict) -> list[dtls.DtlsAssociation]:
    completed = []
    for datagram in fixture["datagrams"]:
        done = tracker.datagram(
            endpoint(datagram["src"]),
            endpoint(datagram["dst"]),
            bytes.fromhex(datagram["hex"]),
            datagram["ts_ns"],
        )
        if done is not None:
            completed.append(done)
    return completed


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_openssl_handshakes_give_the_keys_openssl_exported(path):
    fixture, keys = load(path)
    tracker = DtlsTracker()
    (association,) = feed(tracker, fixture)
    first = fixture["datagrams"][0]
    assert association.client == endpoint(first["src"])
    assert association.server == endpoint(first["dst"])
    openssl_names = {"DTLSv1": "DTLSv1.0", "DTLSv1.2": "DTLSv1.2"}
    assert dtls.version_name(association.version) == openssl_names[fixture["protocol"]]
    assert association.cipher_suite == OPENSSL_SUITES[fixture["cipher"]]
    offered = [
        next(s.profile_id for s in SUITES.values() if s.profile_name == name)
        for name in fixture["client_profiles"].split(":")
    ]
    assert list(association.offered_profiles) == offered
    assert PROFILES[association.selected_profile].profile_name == fixture["profile"]
    (material,) = candidate_materials(association, keys)
    exported = bytes.fromhex(fixture["keying_material"])
    k, s = material.suite.key_length, material.suite.salt_length
    assert material.client == MasterKey(exported[:k], exported[2 * k : 2 * k + s])
    assert material.server == MasterKey(exported[k : 2 * k], exported[2 * k + s :])
    # the records after the hellos are encrypted (epoch 1): nothing malformed, nothing more
    assert tracker.malformed == 0 and len(tracker) == 1


def test_the_fixtures_cover_both_prfs_and_three_profiles():
    seen = {json.loads(p.read_text())["protocol"] for p in FIXTURES}
    assert {"DTLSv1", "DTLSv1.2"} <= seen
    assert len(FIXTURES) >= 4


def test_without_the_key_log_there_are_no_keys():
    fixture, _ = load(FIXTURES[0])
    tracker = DtlsTracker()
    (association,) = feed(tracker, fixture)
    assert candidate_materials(association, KeyStore()) == []
    other = KeyStore()
    load_key_log(f"CLIENT_RANDOM {'11' * 32} {'22' * 48}\n", other)
    assert candidate_materials(association, other) == []


def _hello_records(fixture: dict) -> list[tuple[bytes, bytes, bytes]]:
    """(src, dst, handshake fragment bytes) of the epoch-0 hellos of a fixture."""
    out = []
    for datagram in fixture["datagrams"]:
        for record in parse_records(bytes.fromhex(datagram["hex"])).records:
            if record.content_type == 22 and record.epoch == 0:
                for fragment in dtls.parse_fragments(record.fragment):
                    if fragment.msg_type in (1, 2):
                        out.append((datagram["src"], datagram["dst"], fragment))
    return out


def record(fragment: bytes, epoch: int = 0, content_type: int = 22) -> bytes:
    return struct.pack("!BHHHIH", content_type, DTLS12, epoch, 0, 0, len(fragment)) + fragment


def handshake_fragment(msg_type: int, seq: int, message: bytes, offset: int, size: int) -> bytes:
    piece = message[offset : offset + size]
    return (
        bytes([msg_type])
        + len(message).to_bytes(3, "big")
        + seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + len(piece).to_bytes(3, "big")
        + piece
    )


def test_fragmented_reordered_and_repeated_hellos_are_reassembled():
    fixture, keys = load(FIXTURES[0])
    reference = feed(DtlsTracker(), fixture)[0]
    tracker = DtlsTracker()
    hellos = _hello_records(fixture)
    client_hello = next(f for _, _, f in hellos if f.msg_type == 1 and f.length == len(f.data))
    server_hello = next(f for _, _, f in hellos if f.msg_type == 2)
    src, dst = endpoint(fixture["datagrams"][0]["src"]), endpoint(fixture["datagrams"][0]["dst"])
    body = client_hello.data
    cuts = [(40, 60), (0, 50), (100, len(body)), (40, 60), (90, 20)]  # overlapping, repeated
    for offset, size in cuts[:-1]:
        frag = handshake_fragment(1, client_hello.message_seq, body, offset, size)
        assert tracker.datagram(src, dst, record(frag)) is None
    last = handshake_fragment(1, client_hello.message_seq, body, *cuts[-1])
    assert tracker.datagram(src, dst, record(last)) is None  # complete, but no ServerHello yet
    association = tracker.association(src, dst)
    assert association is not None and association.client_random == reference.client_random
    two = handshake_fragment(2, server_hello.message_seq, server_hello.data, 0, 30)
    rest = handshake_fragment(2, server_hello.message_seq, server_hello.data, 30, 10_000)
    assert tracker.datagram(dst, src, record(two) + record(rest)) is association
    assert candidate_materials(association, keys) == candidate_materials(reference, keys)


def test_a_hello_over_the_bound_is_not_held():
    tracker = DtlsTracker()
    big = handshake_fragment(1, 0, bytes(dtls.MAX_MESSAGE_BYTES + 1), 0, 100)
    assert tracker.datagram((b"\x7f\0\0\1", 1), (b"\x7f\0\0\1", 2), record(big)) is None
    assert tracker.malformed == 1 and len(tracker) == 0


def test_a_server_hello_alone_makes_no_association():
    fixture, _ = load(FIXTURES[0])
    tracker = DtlsTracker()
    for src, dst, fragment in _hello_records(fixture):
        if fragment.msg_type == 2:
            frag = handshake_fragment(2, fragment.message_seq, fragment.data, 0, len(fragment.data))
            tracker.datagram(endpoint(src), endpoint(dst), record(frag))
    assert len(tracker) == 0


def test_associations_are_bounded():
    tracker = DtlsTracker(max_associations=2)
    hello = _dtls_client_hello(bytes(32), (1,))
    for port in (1, 2, 3):
        frag = handshake_fragment(1, 0, hello, 0, len(hello))
        tracker.datagram((b"\x7f\0\0\1", port), (b"\x7f\0\0\1", 9), record(frag))
    assert len(tracker) == 2 and tracker.evictions == 1
    assert tracker.association((b"\x7f\0\0\1", 1), (b"\x7f\0\0\1", 9)) is None


# -- DTLS 1.3 -------------------------------------------------------------------------


def _extension(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def _use_srtp(profiles: tuple[int, ...], mki: bytes = b"") -> bytes:
    listed = b"".join(struct.pack("!H", p) for p in profiles)
    return struct.pack("!H", len(listed)) + listed + bytes([len(mki)]) + mki


def _dtls_client_hello(random_: bytes, profiles: tuple[int, ...], cookie: bytes = b"") -> bytes:
    extensions = _extension(14, _use_srtp(profiles)) + _extension(43, b"\x02\xfe\xfc")
    return (
        struct.pack("!H", DTLS12)
        + random_
        + b"\x00"  # session id
        + bytes([len(cookie)])
        + cookie
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )


def _server_hello(random_: bytes, version: int, suite: int, srtp: bytes | None) -> bytes:
    extensions = _extension(43, struct.pack("!H", version)) if version == DTLS13 else b""
    if srtp is not None:
        extensions += _extension(14, srtp)
    return (
        struct.pack("!H", DTLS12)
        + random_
        + b"\x00"
        + struct.pack("!H", suite)
        + b"\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )


def _independent_dtls13_exporter(secret: bytes, length: int) -> bytes:
    """RFC 8446 §7.5 with RFC 9147 §5.9's "dtls13" label prefix, written from the RFCs."""

    def expand_label(key: bytes, label: bytes, context: bytes, size: int) -> bytes:
        full = b"dtls13" + label
        info = struct.pack("!H", size) + bytes([len(full)]) + full + bytes([len(context)])
        return HKDFExpand(hashes.SHA256(), size, info + context).derive(key)

    empty = hashes.Hash(hashes.SHA256())
    empty_hash = empty.finalize()
    derived = expand_label(secret, b"EXTRACTOR-dtls_srtp", empty_hash, 32)
    return expand_label(derived, b"exporter", empty_hash, length)


def test_dtls13_tries_every_offered_profile_with_the_exporter():
    client_random, server_random = bytes(range(32)), bytes(range(32, 64))
    keys = KeyStore()
    exporter_secret = bytes(range(100, 132))
    load_key_log(f"EXPORTER_SECRET {client_random.hex()} {exporter_secret.hex()}\n", keys)
    tracker = DtlsTracker()
    a, b = (b"\x0a\0\0\1", 5000), (b"\x0a\0\0\2", 6000)
    hello = _dtls_client_hello(client_random, (0x0007, 0x0001, 0x0999), cookie=b"\x01\x02")
    tracker.datagram(a, b, record(handshake_fragment(1, 0, hello, 0, len(hello))))
    server = _server_hello(server_random, DTLS13, 0x1301, None)
    association = tracker.datagram(b, a, record(handshake_fragment(2, 0, server, 0, len(server))))
    assert association is not None and association.version == DTLS13
    assert association.offered_profiles == (0x0007, 0x0001, 0x0999)
    assert association.selected_profile is None
    materials = candidate_materials(association, keys)
    assert [m.suite.name for m in materials] == ["AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"]
    for material in materials:
        expected = _independent_dtls13_exporter(exporter_secret, 2 * material.suite.master_length)
        assert split_keying_material(expected, material.suite) == material
    # the exporter with the TLS prefix is the project's own HKDF-Expand-Label
    assert dtls._expand_label("sha256", exporter_secret, b"x", b"c", 20, b"tls13 ") == (
        hkdf_expand_label("sha256", exporter_secret, b"x", b"c", 20)
    )
    assert tls13_exporter("sha256", exporter_secret, b"l", b"", 16) != tls13_exporter(
        "sha256", exporter_secret, b"l", b"", 16, prefix=b"tls13 "
    )


def test_dtls12_server_that_declines_srtp_gives_no_keys():
    client_random, server_random = bytes(32), bytes([1]) * 32
    keys = KeyStore()
    load_key_log(f"CLIENT_RANDOM {client_random.hex()} {'33' * 48}\n", keys)
    tracker = DtlsTracker()
    a, b = (b"\x0a\0\0\1", 1), (b"\x0a\0\0\2", 2)
    hello = _dtls_client_hello(client_random, (1,))
    tracker.datagram(a, b, record(handshake_fragment(1, 0, hello, 0, len(hello))))
    server = _server_hello(server_random, DTLS12, 0xC02B, None)
    association = tracker.datagram(b, a, record(handshake_fragment(2, 0, server, 0, len(server))))
    assert association is not None and association.candidate_suites() == []
    chosen = _server_hello(server_random, DTLS12, 0xC02B, _use_srtp((1,)))
    tracker.datagram(b, a, record(handshake_fragment(2, 1, chosen, 0, len(chosen))))
    (material,) = candidate_materials(association, keys)
    assert material == keying_material(association, keys, SUITES["AES_CM_128_HMAC_SHA1_80"])


def test_keying_material_layout_is_rfc_5764():
    suite = SUITES["AES_CM_128_HMAC_SHA1_80"]
    material = bytes(range(60))
    keys = split_keying_material(material, suite)
    assert keys.client == MasterKey(bytes(range(16)), bytes(range(32, 46)))
    assert keys.server == MasterKey(bytes(range(16, 32)), bytes(range(46, 60)))
    with pytest.raises(ValueError):
        split_keying_material(material[:-1], suite)


def test_use_srtp_extension():
    assert parse_use_srtp(_use_srtp((1, 2), b"\x09")) == ((1, 2), b"\x09")
    for bad in (b"", b"\x00\x03\x00\x01\x00\x00", b"\x00\x02\x00\x01", b"\x00\x02\x00\x01\x05"):
        with pytest.raises(hsk.ParseError):
            parse_use_srtp(bad)


def test_records_with_unified_headers_are_skipped():
    plain = record(b"\x01\x02")
    encrypted_with_length = bytes([0x2C, 0x00, 0x05, 0x00, 0x03]) + b"abc"  # S=1, L=1
    parsed = parse_records(encrypted_with_length + plain)
    assert parsed.encrypted_skipped == 1 and not parsed.malformed
    assert [r.fragment for r in parsed.records] == [b"\x01\x02"]
    connection_id = bytes([0x3C]) + b"rest of it"
    parsed = parse_records(plain + connection_id)
    assert parsed.encrypted_skipped == 1 and len(parsed.records) == 1
    assert parse_records(bytes([0x28, 0x05]) + b"to the end").encrypted_skipped == 1
    assert parse_records(plain[:-1]).malformed
    assert parse_records(b"\x17\x03\x03\x00\x01x").malformed  # a TLS, not DTLS, version


def test_hostile_datagrams_never_raise():
    fixture, keys = load(FIXTURES[0])
    seeds = [bytes.fromhex(d["hex"]) for d in fixture["datagrams"]]
    rng = random.Random(5)
    tracker = DtlsTracker()
    for n in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 5)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data) + 1) :]
        done = tracker.datagram((b"\x7f\0\0\1", n % 7), (b"\x7f\0\0\2", 9), bytes(data))
        if done is not None:
            candidate_materials(done, keys)
