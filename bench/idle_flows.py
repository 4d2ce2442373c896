"""Memory with many idle TLS flows open: the agent's state after N full TLS 1.2 handshakes
(each followed by one SIP message) whose connections stay open.

The flows are copies of one real connection from a fixture capture, each with its own
client address and port, fed to the same pipeline the agent runs.  Reports the peak RSS of
this process and the flows/sessions the pipeline holds.

    python -m bench.idle_flows [--flows 100000]
"""

from __future__ import annotations

import argparse
import resource
import struct
import sys
import time

from bench.paths import FIXTURES, KEY
from captagent_tls.capture import Frame
from captagent_tls.capture.files import CaptureReader
from captagent_tls.keyfiles import load_rsa_keys
from captagent_tls.pipeline import Pipeline, PipelineOptions
from captagent_tls.tls.keys import KeyStore

CAPTURE = FIXTURES / "captures" / "tls12-aes128gcm-ems.pcap"
FIN = 0x01


def one_open_connection() -> list[Frame]:
    """The first connection of the capture, up to (not including) its first FIN."""
    frames = []
    client_port = None
    for frame in CaptureReader(str(CAPTURE)):
        data = bytes(frame.data)
        sport, dport = struct.unpack_from("!HH", data, 34)
        if client_port is None:
            client_port = sport
        if client_port not in (sport, dport):
            continue
        if data[47] & FIN:
            break
        frames.append(Frame(frame.ts_ns, frame.linktype, data))
    return frames


def copies(template: list[Frame], count: int):
    """The template connection again and again, each time from another client."""
    client_port = struct.unpack_from("!H", template[0].data, 34)[0]
    for n in range(count):
        address = struct.pack("!BBH", 10, 1, n // 60000)  # 10.1.x.y
        port = 1024 + n % 60000
        for frame in template:
            data = bytearray(frame.data)
            sport, dport = struct.unpack_from("!HH", data, 34)
            if sport == client_port:
                data[26:30] = address
                struct.pack_into("!H", data, 34, port)
            else:
                data[30:34] = address
                struct.pack_into("!H", data, 36, port)
            yield Frame(frame.ts_ns + n * 1000, frame.linktype, bytes(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument(
        "--rsa-threads",
        type=int,
        default=None,
        help="RSA decryption threads (default: as the agent; 0: none)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1000,
        help="connections that arrive before their RSA work is waited for: "
        "a file read flat out runs ahead of RSA, a live link does not, "
        "and what waits meanwhile is not what an idle session costs",
    )
    args = parser.parse_args()
    keys = KeyStore()
    for key in load_rsa_keys(str(KEY)):
        keys.add_rsa_key(key, str(KEY))
    template = one_open_connection()
    pipeline = Pipeline(keys, [], options=PipelineOptions(rsa_threads=args.rsa_threads))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    per_batch = args.batch * len(template)
    for index, frame in enumerate(copies(template, args.flows), 1):
        pipeline.frame(frame)
        if index % per_batch == 0:
            pipeline.settle_rsa()
    pipeline.settle_rsa()
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tls = pipeline.tls.stats
    print(
        f"flows open: {pipeline.tcp.active_flows}, TLS sessions: {tls.sessions_full} full, "
        f"SIP messages: {pipeline.stats.sip_messages}, in {elapsed:.1f} s"
    )
    print(
        f"peak RSS: {peak:.0f} MB (before the flows: {before:.0f} MB; "
        f"{(peak - before) * 1024 / max(1, args.flows):.2f} KB per flow)"
    )
    print(
        f"target: under 200 MB with 100,000 idle TLS flows: "
        f"{'met' if peak < 200 or args.flows < 100_000 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
