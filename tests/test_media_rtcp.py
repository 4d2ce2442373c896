"""media/rtcp.py: compound RTCP parsing and heplify's HEP type 5 JSON."""

from __future__ import annotations

import json
import random
import struct

import pytest

from captagent_tls.media import rtcp
from captagent_tls.media.rtcp import (
    AppPacket,
    Dlrr,
    DlrrItem,
    ExtendedReport,
    Feedback,
    Goodbye,
    PacketReceiptTimes,
    ReceiverReferenceTime,
    ReceiverReport,
    ReportBlock,
    RleReport,
    RtcpError,
    SenderInfo,
    SenderReport,
    SourceDescription,
    StatisticsSummary,
    UnknownXrBlock,
    VoipMetrics,
    hep_json,
    heplify_mos,
    looks_like_rtcp,
    parse_compound,
    sender_ssrc,
)

# heplify v1.67.1 protos/rtcp_test.go: RR + SDES + BYE + PSFB (PLI) + RTPFB, and SR + SDES,
# with the JSON heplify 1.67.1 produced for them (TestUnmarshal).
HEPLIFY_RR_COMPOUND = bytes.fromhex(
    "81c90007902f9e2ebc5e9a4000000000000046e100000111 09f36432 00024a79".replace(" ", "")
    + "81ca000c902f9e2e0126"
    + b"{9c00eb92-1afb-9d49-a47d-91f64eee69f5}".hex()
    + "00000000"
    + "81cb0001902f9e2e"
    + "81ce0002902f9e2e902f9e2e"
    + "85cd0002902f9e2e902f9e2e"
)
HEPLIFY_RR_JSON = (
    '{"sender_information":{"ntp_timestamp_sec":0,"ntp_timestamp_usec":0,"rtp_timestamp":0,'
    '"packets":0,"octets":0},"ssrc":2419039790,"type":206,"report_count":1,"report_blocks":'
    '[{"source_ssrc":3160316480,"fraction_lost":0,"packets_lost":0,"highest_seq_no":18145,'
    '"ia_jitter":273,"lsr":166945842,"dlsr":150137}],"report_blocks_xr":{"type":0,"id":0,'
    '"fraction_lost":0,"fraction_discard":0,"burst_density":0,"gap_density":0,'
    '"burst_duration":0,"gap_duration":0,"round_trip_delay":0,"end_system_delay":0},'
    '"sdes_ssrc":2419039790}'
)
HEPLIFY_SR_COMPOUND = bytes(
    [0x81, 0xC8, 0x0, 0xC, 0x58, 0xF3, 0x3D, 0xEA, 0x0, 0x2, 0x4F, 0xFB, 0x82, 0x8F, 0x5B, 0x92,
     0x11, 0x4A, 0xC, 0x42, 0x0, 0x0, 0x2, 0xED, 0x0, 0x1, 0xCA, 0xCF, 0xD2, 0xBD, 0x4E, 0x3E,
     0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x2, 0x1, 0x0, 0x0, 0x0, 0x14, 0x86, 0xE9, 0xF, 0x9D, 0x0,
     0x3, 0x44, 0xDD, 0x81, 0xCA, 0x0, 0x8, 0x58, 0xF3, 0x3D, 0xEA, 0x1, 0x16, 0x41, 0x43, 0x4C,
     0x54, 0x50, 0x20, 0x43, 0x68, 0x61, 0x6E, 0x6E, 0x65, 0x6C, 0x48, 0x61, 0x6E, 0x64, 0x6C,
     0x65, 0x20, 0x33, 0x30, 0x0, 0x0, 0x0, 0x0]
)  # fmt: skip
HEPLIFY_SR_JSON = (
    '{"sender_information":{"ntp_timestamp_sec":151547,"ntp_timestamp_usec":2190433170,'
    '"rtp_timestamp":290065474,"packets":749,"octets":117455},"ssrc":1492336106,"type":202,'
    '"report_count":1,"report_blocks":[{"source_ssrc":3535621694,"fraction_lost":0,'
    '"packets_lost":0,"highest_seq_no":513,"ia_jitter":20,"lsr":2263420829,"dlsr":214237}],'
    '"report_blocks_xr":{"type":0,"id":0,"fraction_lost":0,"fraction_discard":0,'
    '"burst_density":0,"gap_density":0,"burst_duration":0,"gap_duration":0,'
    '"round_trip_delay":0,"end_system_delay":0},"sdes_ssrc":1492336106}'
)


def header(packet_type: int, count: int, body: bytes, padding: int = 0) -> bytes:
    total = len(body) + padding
    assert total % 4 == 0
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    first = 0x80 | (0x20 if padding else 0) | count
    return struct.pack("!BBH", first, packet_type, total // 4) + body + pad


def block(ssrc: int, fraction: int, lost: int, highest: int, jitter: int, lsr: int, dlsr: int):
    return struct.pack(
        "!IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF), highest, jitter, lsr, dlsr
    )


SR_ONE_BLOCK = header(
    200,
    1,
    struct.pack("!I", 0x11223344)
    + struct.pack("!IIIII", 3900000000, 2147483648, 160000, 500, 80000)
    + block(0x55667788, 26, 1234, 70000, 42, 0xABCD1234, 65536),
)


def test_heplify_1_67_sr_compound_renders_as_heplify_did_but_for_the_type():
    """Every field as heplify 1.67.1 wrote it, except ``type``: it wrote the last packet's
    type (202 for SR + SDES); we write the first's, as heplify 2.x and captagent do."""
    packets = parse_compound(HEPLIFY_SR_COMPOUND)
    assert [p.packet_type for p in packets] == [200, 202]
    assert hep_json(packets) == HEPLIFY_SR_JSON.replace('"type":202', '"type":200')


def test_heplify_1_67_rr_compound_with_feedback():
    packets = parse_compound(HEPLIFY_RR_COMPOUND)
    rr, sdes, bye, pli, rtpfb = packets
    assert isinstance(rr, ReceiverReport) and rr.ssrc == 0x902F9E2E
    assert rr.reports == (ReportBlock(0xBC5E9A40, 0, 0, 0x46E1, 273, 0x09F36432, 150137),)
    assert isinstance(sdes, SourceDescription)
    assert sdes.chunks[0].items == ((1, b"{9c00eb92-1afb-9d49-a47d-91f64eee69f5}"),)
    assert isinstance(bye, Goodbye) and bye.ssrcs == (0x902F9E2E,) and bye.reason == b""
    assert pli == Feedback(206, 1, 0x902F9E2E, 0x902F9E2E, b"")
    assert rtpfb == Feedback(205, 5, 0x902F9E2E, 0x902F9E2E, b"")
    # heplify 1.67.1 wrote type 206 (it stopped at the RTPFB, whose count 5 it took for
    # a bad report count); ours is the first packet's, RR
    assert hep_json(packets) == HEPLIFY_RR_JSON.replace('"type":206', '"type":201')


def test_one_sr_with_one_report_block_field_by_field():
    (sr,) = parse_compound(SR_ONE_BLOCK)
    assert sr == SenderReport(
        0x11223344,
        SenderInfo(3900000000, 2147483648, 160000, 500, 80000),
        (ReportBlock(0x55667788, 26, 1234, 70000, 42, 0xABCD1234, 65536),),
    )
    assert hep_json([sr]) == (
        '{"sender_information":{"ntp_timestamp_sec":3900000000,"ntp_timestamp_usec":2147483648,'
        '"rtp_timestamp":160000,"packets":500,"octets":80000},"ssrc":287454020,"type":200,'
        '"report_count":1,"report_blocks":[{"source_ssrc":1432778632,"fraction_lost":26,'
        '"packets_lost":1234,"highest_seq_no":70000,"ia_jitter":42,"lsr":2882343476,'
        '"dlsr":65536}],"report_blocks_xr":{"type":0,"id":0,"fraction_lost":0,'
        '"fraction_discard":0,"burst_density":0,"gap_density":0,"burst_duration":0,'
        '"gap_duration":0,"round_trip_delay":0,"end_system_delay":0},"sdes_ssrc":0}'
    )


def test_negative_cumulative_loss_is_signed_in_the_object_and_raw_in_the_json():
    rr = header(201, 1, struct.pack("!I", 1) + block(2, 0, -3, 10, 0, 0, 0))
    (packet,) = parse_compound(rr)
    assert isinstance(packet, ReceiverReport) and packet.reports[0].packets_lost == -3
    assert json.loads(hep_json([packet]))["report_blocks"][0]["packets_lost"] == 0xFFFFFD


def test_rr_without_blocks_renders_null_blocks_and_zero_sender_information():
    rr = header(201, 0, struct.pack("!I", 99))
    document = json.loads(hep_json(parse_compound(rr)))
    assert document["report_blocks"] is None and document["report_count"] == 0
    assert document["ssrc"] == 99 and document["type"] == 201
    assert document["sender_information"] == {
        "ntp_timestamp_sec": 0,
        "ntp_timestamp_usec": 0,
        "rtp_timestamp": 0,
        "packets": 0,
        "octets": 0,
    }


def test_report_blocks_of_every_sr_and_rr_of_the_compound():
    rr = header(
        201, 2, struct.pack("!I", 7) + block(8, 1, 1, 1, 1, 1, 1) + block(9, 2, 2, 2, 2, 2, 2)
    )
    sdes = header(202, 1, struct.pack("!I", 7) + b"\x01\x03abc\x00\x00\x00")
    document = json.loads(hep_json(parse_compound(SR_ONE_BLOCK + rr + sdes)))
    assert [b["source_ssrc"] for b in document["report_blocks"]] == [0x55667788, 8, 9]
    assert document["report_count"] == 3 and document["ssrc"] == 0x11223344
    assert document["sdes_ssrc"] == 7


def test_sdes_bye_app_and_padding():
    sdes = header(
        202,
        2,
        struct.pack("!I", 1) + b"\x01\x05alice\x02\x03Bob\x00\x00\x00\x00"  # 4 + 12 + 4
        + struct.pack("!I", 2) + b"\x00\x00\x00\x00",
    )  # fmt: skip
    bye = header(203, 2, struct.pack("!II", 1, 2) + b"\x07leaving", padding=4)
    app = header(204, 3, struct.pack("!I", 5) + b"TEST" + b"\x01\x02\x03\x04")
    packets = parse_compound(sdes + app + bye)
    assert packets[0] == SourceDescription(
        (rtcp.SdesChunk(1, ((1, b"alice"), (2, b"Bob"))), rtcp.SdesChunk(2, ()))
    )
    assert packets[1] == AppPacket(3, 5, b"TEST", b"\x01\x02\x03\x04")
    assert packets[2] == Goodbye((1, 2), b"leaving")
    assert sender_ssrc(packets) == 1
    # RFC 5506 reduced size: no SR or RR first; the type is the first packet's
    assert json.loads(hep_json(packets))["type"] == 202


def _xr_block(block_type: int, specific: int, data: bytes) -> bytes:
    return struct.pack("!BBH", block_type, specific, len(data) // 4) + data


def test_every_rfc_3611_block_type():
    voip = (
        struct.pack("!I", 0xAABBCCDD)
        + bytes([10, 5, 30, 2])
        + struct.pack("!HHHH", 120, 3000, 45, 60)
        + struct.pack("!bb", -20, -70)
        + bytes([25, 16, 85, 127, 41, 38, 0x55, 0])
        + struct.pack("!HHH", 40, 80, 120)
    )
    body = struct.pack("!I", 0x01020304) + b"".join(
        (
            _xr_block(1, 0x02, struct.pack("!IHH", 9, 100, 200) + struct.pack("!HH", 0xC00F, 0)),
            _xr_block(2, 0x00, struct.pack("!IHH", 9, 100, 200) + struct.pack("!HH", 0x4001, 7)),
            _xr_block(3, 0x01, struct.pack("!IHHII", 9, 5, 7, 1000, 1160)),
            _xr_block(4, 0, struct.pack("!II", 3900000000, 1 << 31)),
            _xr_block(5, 0, struct.pack("!IIIIII", 9, 111, 222, 10, 333, 444)),
            _xr_block(
                6,
                0xE8,  # loss, duplicates, jitter; TTL (01) in bits 4-3
                struct.pack("!IHHII", 9, 1, 500, 3, 1)
                + struct.pack("!IIII", 1, 9, 4, 2)
                + bytes([60, 64, 63, 1]),
            ),
            _xr_block(7, 0, voip),
            _xr_block(42, 0x11, b"\x00\x01\x02\x03"),
        )
    )
    (xr,) = parse_compound(header(207, 0, body))
    assert isinstance(xr, ExtendedReport) and xr.ssrc == 0x01020304
    loss, dup, times, ref, dlrr, stats, metrics, unknown = xr.blocks
    assert loss == RleReport(1, 2, 9, 100, 200, (0xC00F,))
    assert dup == RleReport(2, 0, 9, 100, 200, (0x4001, 7))
    assert times == PacketReceiptTimes(1, 9, 5, 7, (1000, 1160))
    assert ref == ReceiverReferenceTime(3900000000, 1 << 31)
    assert dlrr == Dlrr((DlrrItem(9, 111, 222), DlrrItem(10, 333, 444)))
    assert stats == StatisticsSummary(
        9, 1, 500, True, True, True, 1, 3, 1, 1, 9, 4, 2, 60, 64, 63, 1
    )
    assert metrics == VoipMetrics(
        0xAABBCCDD, 10, 5, 30, 2, 120, 3000, 45, 60, -20, -70, 25, 16, 85, 127, 41, 38, 0x55,
        40, 80, 120,
    )  # fmt: skip
    assert unknown == UnknownXrBlock(42, 0x11, b"\x00\x01\x02\x03")
    document = json.loads(hep_json([xr]))
    assert document["ssrc"] == 0x01020304 and document["type"] == 207
    assert document["report_blocks_xr"] == {
        "type": 7,
        "id": 0xAABBCCDD,
        "fraction_lost": 10,
        "fraction_discard": 5,
        "burst_density": 30,
        "gap_density": 2,
        "burst_duration": 120,
        "gap_duration": 3000,
        "round_trip_delay": 45,
        "end_system_delay": 60,
    }
    vm = document["voip_metrics"]
    # MOS-LQ and MOS-CQ where RFC 3611 §4.7 puts them (heplify 2.x swaps the two)
    assert (vm["mos_lq"], vm["mos_cq"], vm["signal_level"], vm["noise_level"]) == (
        4.1,
        3.8,
        -20,
        -70,
    )
    assert (vm["rx_config"], vm["jb_nominal"], vm["jb_maximum"], vm["jb_abs_max"]) == (
        0x55,
        40,
        80,
        120,
    )
    assert list(document)[-2:] == ["voip_metrics", "sdes_ssrc"]
    assert heplify_mos([xr]) == 380  # MOS-CQ 3.8, as heplify computes it


def test_go_writes_whole_floats_as_integers_and_omits_empty_jitter_buffer_fields():
    voip = struct.pack("!I", 1) + bytes(12) + bytes([0, 0, 0, 0, 0, 0, 40, 50]) + bytes(8)
    xr = header(207, 0, struct.pack("!I", 1) + _xr_block(7, 0, voip))
    text = hep_json(parse_compound(xr))
    assert '"mos_cq":5,"mos_lq":4}' in text  # no rx_config, jb_* (omitempty)
    assert heplify_mos(parse_compound(xr)) == 500


def test_heplify_mos_from_fraction_lost():
    def mos(fraction: int) -> int:
        rr = header(201, 1, struct.pack("!I", 1) + block(2, fraction, 0, 0, 0, 0, 0))
        return heplify_mos(parse_compound(rr))

    assert [mos(f) for f in (0, 9, 10, 24, 25, 49, 50, 99, 100, 255)] == [
        450, 450, 400, 400, 350, 350, 300, 300, 250, 250
    ]  # fmt: skip
    assert heplify_mos(parse_compound(header(201, 0, struct.pack("!I", 1)))) == 0


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\xc8", "shorter"),
        (header(201, 0, struct.pack("!I", 1))[:6], "claims"),
        (b"\x40\xc9\x00\x01\x00\x00\x00\x01", "version 1"),
        (header(201, 1, struct.pack("!I", 1)), "report blocks do not fit"),
        (header(200, 0, bytes(20)), "SR shorter"),
        (header(201, 0, struct.pack("!I", 1), padding=4) + header(201, 0, bytes(4)), "padding"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x00", "padding count 0"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x09", "padding count 9"),
        (header(202, 1, struct.pack("!I", 1) + b"\x01\x09abcdef"), "SDES item longer"),
        (header(202, 2, struct.pack("!I", 1) + b"\x00\x00\x00\x00"), "SDES chunk beyond"),
        (header(203, 3, struct.pack("!II", 1, 2)), "BYE of 3"),
        (header(203, 1, struct.pack("!I", 1) + b"\x09abcdefg"), "reason"),
        (header(204, 0, b"abcd"), "APP"),
        (header(207, 0, struct.pack("!I", 1) + b"\x07\x00\x00\x08"), "longer than the packet"),
        (header(207, 0, struct.pack("!I", 1) + _xr_block(7, 0, bytes(8))), "VoIP"),
        (header(201, 0, struct.pack("!I", 1)) + b"\x80\xc9", "after the last packet"),
        (header(201, 0, struct.pack("!I", 1)) * (rtcp.MAX_PACKETS + 1), "more than"),
    ],
)
def test_invalid_compounds_are_refused_with_a_reason(data, message):
    with pytest.raises(RtcpError, match=message):
        parse_compound(data)


def test_hostile_bytes_raise_only_rtcp_error():
    rng = random.Random(11)
    seeds = [HEPLIFY_SR_COMPOUND, HEPLIFY_RR_COMPOUND, SR_ONE_BLOCK]
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            what = rng.randrange(3)
            if what == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif what == 1:
                del data[rng.randrange(len(data) + 1) :]
            else:
                data[2:4] = struct.pack("!H", rng.randrange(65536))
        try:
            packets = parse_compound(bytes(data))
        except RtcpError:
            continue
        json.loads(hep_json(packets))


def test_looks_like_rtcp_is_rfc_5761():
    assert looks_like_rtcp(SR_ONE_BLOCK)
    assert not looks_like_rtcp(b"\x80\x00" + bytes(10))  # RTP, PT 0
    assert looks_like_rtcp(b"\x80\xc0" + bytes(6)) and not looks_like_rtcp(b"\x80\xe0" + bytes(6))
    assert not looks_like_rtcp(b"\x40\xc8" + bytes(6))
