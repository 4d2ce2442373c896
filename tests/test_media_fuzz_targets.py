"""The media fuzz targets (fuzz/targets/sdp.py, rtcp.py, srtcp.py, dtls.py): their seeds pass,
and their oracles fail when the product breaks what they check."""

from __future__ import annotations

import importlib

import pytest

from fuzz.oracle import OracleFailure

TARGETS = ("sdp", "rtcp", "srtcp", "dtls")


@pytest.mark.parametrize("name", TARGETS)
def test_every_seed_passes(name):
    target = importlib.import_module(f"fuzz.targets.{name}")
    seeds = target.seeds()
    assert seeds
    for data in seeds:
        assert len(data) <= target.MAX_LEN
        target.one_input(data)


def test_the_srtcp_oracle_sees_a_tag_that_is_not_checked(monkeypatch):
    from captagent_tls.media import srtp
    from fuzz.targets import srtcp

    seed = next(s for s in srtcp.seeds() if s[0] == 2)  # AES_192_CM_HMAC_SHA1_32, RTCP
    monkeypatch.setattr(srtp._hmac, "compare_digest", lambda a, b: True)
    with pytest.raises(OracleFailure, match="srtp-"):
        srtcp.one_input(seed)


def test_the_rtcp_oracle_sees_a_wrong_type(monkeypatch):
    from captagent_tls.media import rtcp as product
    from fuzz.targets import rtcp

    seed = rtcp.seeds()[0]
    rtcp.one_input(seed)
    real = product.hep_json
    monkeypatch.setattr(product, "hep_json", lambda p: real(p).replace('"type":200', '"type":202'))
    with pytest.raises(OracleFailure, match="rtcp-json-values"):
        rtcp.one_input(seed)


def test_the_sdp_oracle_sees_an_invented_key(monkeypatch):
    from captagent_tls.media import sdp as product
    from fuzz.targets import sdp

    seed = sdp.seeds()[0]
    real = product.parse_key_param

    def wrong(text: str):  # type: ignore[no-untyped-def]
        found = real(text)
        return found._replace(key_salt=b"\xff" * 30) if found else found

    monkeypatch.setattr(product, "parse_key_param", wrong)
    with pytest.raises(OracleFailure, match="sdp-key-invented"):
        sdp.one_input(seed)


def test_the_dtls_oracle_sees_material_of_the_wrong_length(monkeypatch):
    from captagent_tls.media import dtls as product
    from fuzz.targets import dtls

    seed = dtls.seeds()[0]
    dtls.one_input(seed)
    real = product.split_keying_material

    def short(material: bytes, suite):  # type: ignore[no-untyped-def]
        keys = real(material, suite)
        return product.SrtpKeyMaterial(keys.suite, keys.client._replace(key=b"x"), keys.server)

    monkeypatch.setattr(product, "split_keying_material", short)
    with pytest.raises(OracleFailure, match="dtls-material"):
        dtls.one_input(seed)
