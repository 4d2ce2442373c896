"""Record protection: every tag, MAC and padding failure is caught; nothing unauthenticated
comes out.  Records are sealed here with pyca/cryptography directly, the way RFC 5246/5288/
7366/7905/8446 describe, so the decryptors are checked against the specs' constructions."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from captagent_tls.tls.keyschedule import SSL3, TLS10, TLS12, TLS13
from captagent_tls.tls.protection import RecordAuthError, make_decryptor
from captagent_tls.tls.suites import lookup

APP = 23


def aad12(seq: int, ctype: int, version: int, length: int) -> bytes:
    return struct.pack("!QBHH", seq, ctype, version, length)


def flip(data: bytes, index: int = -1) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def seal_gcm12(key, salt, seq, plaintext, explicit=None):
    explicit = explicit if explicit is not None else struct.pack("!Q", seq)
    sealed = AESGCM(key).encrypt(salt + explicit, plaintext, aad12(seq, APP, TLS12, len(plaintext)))
    return explicit + sealed


def test_aes_gcm_tls12_opens_in_sequence_and_rejects_tampering():
    suite = lookup(0x009C)
    key, salt = os.urandom(16), os.urandom(4)
    dec = make_decryptor(suite, TLS12, key, salt, b"")
    # stacks may use any explicit nonce: it is read from the record, not assumed
    records = [seal_gcm12(key, salt, i, b"message %d" % i, os.urandom(8)) for i in range(3)]
    assert dec.open(APP, TLS12, records[0]) == (APP, b"message 0")
    with pytest.raises(RecordAuthError):
        dec.open(APP, TLS12, flip(records[1]))
    assert dec.seq == 1  # a failed record does not move the sequence number by itself
    dec.seq += 1  # the connection accounts for the dropped record
    assert dec.open(APP, TLS12, records[2]) == (APP, b"message 2")


def test_aes_gcm_wrong_sequence_number_fails_the_tag():
    suite = lookup(0x009D)
    key, salt = os.urandom(32), os.urandom(4)
    dec = make_decryptor(suite, TLS12, key, salt, b"")
    with pytest.raises(RecordAuthError):
        dec.open(APP, TLS12, seal_gcm12(key, salt, 5, b"x"))


def test_chacha20_tls12_nonce_is_iv_xor_sequence():
    suite = lookup(0xCCA8)
    key, iv = os.urandom(32), os.urandom(12)
    dec = make_decryptor(suite, TLS12, key, iv, b"")
    for seq in range(3):
        nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
        body = b"chacha %d" % seq
        record = ChaCha20Poly1305(key).encrypt(nonce, body, aad12(seq, APP, TLS12, len(body)))
        assert dec.open(APP, TLS12, record) == (APP, body)


def test_ccm8_tag_length():
    suite = lookup(0xC0A0)  # TLS_RSA_WITH_AES_128_CCM_8
    key, salt = os.urandom(16), os.urandom(4)
    dec = make_decryptor(suite, TLS12, key, salt, b"")
    explicit = struct.pack("!Q", 0)
    record = explicit + AESCCM(key, tag_length=8).encrypt(
        salt + explicit, b"ccm", aad12(0, APP, TLS12, 3)
    )
    assert len(record) == 8 + 3 + 8
    assert dec.open(APP, TLS12, record) == (APP, b"ccm")


def test_tls13_inner_content_type_and_padding():
    suite = lookup(0x1301)
    key, iv = os.urandom(16), os.urandom(12)
    dec = make_decryptor(suite, TLS13, key, iv, b"")
    inner = b"SIP/2.0 200 OK\r\n\r\n" + bytes([22]) + b"\x00" * 7  # handshake type, padded
    length = len(inner) + 16
    header = struct.pack("!BHH", APP, 0x0303, length)
    record = AESGCM(key).encrypt(iv, inner, header)
    assert dec.open(APP, 0x0303, record) == (22, b"SIP/2.0 200 OK\r\n\r\n")


def test_tls13_record_of_only_zeros_is_rejected():
    suite = lookup(0x1301)
    key, iv = os.urandom(16), os.urandom(12)
    dec = make_decryptor(suite, TLS13, key, iv, b"")
    header = struct.pack("!BHH", APP, 0x0303, 8 + 16)
    with pytest.raises(RecordAuthError):
        dec.open(APP, 0x0303, AESGCM(key).encrypt(iv, b"\x00" * 8, header))


def mac(hash_alg, key: bytes, seq: int, ctype: int, version: int, data: bytes) -> bytes:
    h = hmac.HMAC(key, hash_alg)
    h.update(aad12(seq, ctype, version, len(data)) + data)
    return h.finalize()


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def pad(data: bytes, block: int = 16, extra_blocks: int = 0) -> bytes:
    n = block - (len(data) + 1) % block + extra_blocks * block
    return data + bytes([n]) * (n + 1)


def test_cbc_mac_then_encrypt_tls12():
    suite = lookup(0x002F)  # AES_128_CBC_SHA
    key, mac_key = os.urandom(16), os.urandom(20)
    dec = make_decryptor(suite, TLS12, key, b"", mac_key)
    content = b"REGISTER sip:x SIP/2.0\r\n\r\n"
    iv = os.urandom(16)
    record = iv + cbc_encrypt(
        key, iv, pad(content + mac(hashes.SHA1(), mac_key, 0, APP, TLS12, content), extra_blocks=2)
    )
    assert dec.open(APP, TLS12, record) == (APP, content)
    with pytest.raises(RecordAuthError):
        dec.open(APP, TLS12, flip(record, 20))  # second block garbles the MAC


def test_cbc_bad_padding_is_rejected():
    suite = lookup(0x002F)
    key, mac_key = os.urandom(16), os.urandom(20)
    dec = make_decryptor(suite, TLS12, key, b"", mac_key)
    content = b"x" * 10
    body = content + mac(hashes.SHA1(), mac_key, 0, APP, TLS12, content)  # 30 bytes
    iv = os.urandom(16)
    bad = body + b"\x00" + b"\x01"  # pad length 1, but the pad byte is 0
    with pytest.raises(RecordAuthError):
        dec.open(APP, TLS12, iv + cbc_encrypt(key, iv, bad))


def test_cbc_tls10_chains_the_iv_across_records():
    suite = lookup(0x0035)  # AES_256_CBC_SHA
    key, mac_key, iv = os.urandom(32), os.urandom(20), os.urandom(16)
    dec = make_decryptor(suite, TLS10, key, iv, mac_key)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    for seq, content in enumerate([b"first record", b"second record"]):
        record = enc.update(pad(content + mac(hashes.SHA1(), mac_key, seq, APP, TLS10, content)))
        assert dec.open(APP, TLS10, record) == (APP, content)


def test_encrypt_then_mac_checks_the_mac_before_decrypting():
    suite = lookup(0x003C)  # AES_128_CBC_SHA256
    key, mac_key = os.urandom(16), os.urandom(32)
    dec = make_decryptor(suite, TLS12, key, b"", mac_key, encrypt_then_mac=True)
    content = b"INVITE"
    iv = os.urandom(16)
    body = iv + cbc_encrypt(key, iv, pad(content))
    record = body + mac(hashes.SHA256(), mac_key, 0, APP, TLS12, body)
    assert dec.open(APP, TLS12, record) == (APP, content)
    with pytest.raises(RecordAuthError):
        dec.open(APP, TLS12, flip(record))


def test_null_cipher_still_checks_its_mac():
    suite = lookup(0x0002)  # RSA_WITH_NULL_SHA
    mac_key = os.urandom(20)
    dec = make_decryptor(suite, TLS12, b"", b"", mac_key)
    content = b"plain but authenticated"
    record = content + mac(hashes.SHA1(), mac_key, 0, APP, TLS12, content)
    assert dec.open(APP, TLS12, record) == (APP, content)
    with pytest.raises(RecordAuthError):
        dec.open(APP, TLS12, flip(record, 0))


def test_ssl3_mac():
    suite = lookup(0x0005)  # RC4_128_SHA
    key, mac_key = os.urandom(16), os.urandom(20)
    dec = make_decryptor(suite, SSL3, key, b"", mac_key)
    content = b"GET / HTTP/1.0\r\n\r\n"
    inner = hashes.Hash(hashes.SHA1())
    inner.update(mac_key + b"\x36" * 40 + struct.pack("!QBH", 0, APP, len(content)) + content)
    outer = hashes.Hash(hashes.SHA1())
    outer.update(mac_key + b"\x5c" * 40 + inner.finalize())
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4

    stream = Cipher(ARC4(key), mode=None).encryptor()
    record = stream.update(content + outer.finalize())
    assert dec.open(APP, SSL3, record) == (APP, content)
