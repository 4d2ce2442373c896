"""What the key-log preload library costs a TLS server: full TLS 1.3 handshakes per second in
one process (client and server through memory BIOs, so both sides' OpenSSL run under the
library: 10 key-log lines per handshake), without the library and with it set up four ways.

    python -m bench.keylog_preload [--handshakes 2000] [--runs 3]

Each run is a fresh process, the configurations taken in turn; the figure is the best of
--runs.  The UDP lines go to
a socket on loopback that this script reads and counts; the file is in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.paths import KEYS_DIR

HANDSHAKES = r"""
import ssl, sys, time
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(sys.argv[1], sys.argv[2])
client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client.check_hostname = False
client.verify_mode = ssl.CERT_NONE
client.minimum_version = ssl.TLSVersion.TLSv1_3

def handshake():
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    c = client.wrap_bio(pipes[0], pipes[1])
    s = server.wrap_bio(pipes[2], pipes[3], server_side=True)
    done = [False, False]
    while not all(done):
        for i, (me, out, peer_in) in enumerate(((c, pipes[1], pipes[2]), (s, pipes[3], pipes[0]))):
            if not done[i]:
                try:
                    me.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)

for _ in range(50):
    handshake()
count = int(sys.argv[3])
start = time.perf_counter()
for _ in range(count):
    handshake()
print(count / (time.perf_counter() - start))
"""


def run(env: dict[str, str], handshakes: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            HANDSHAKES,
            str(KEYS_DIR / "server-rsa2048.crt"),
            str(KEYS_DIR / "server-rsa2048.key"),
            str(handshakes),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from captagent_tls.preload import built_library

    library = built_library()
    if library is None:
        sys.exit("the library is not built: captagent-tls-keylog --build")
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_PRELOAD", "SSLKEYLOGFILE", "SSLKEYLOG_UDP")
    }
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    received = [0]

    def count() -> None:
        while True:
            try:
                sink.recv(4096)
            except OSError:
                return
            received[0] += 1

    threading.Thread(target=count, daemon=True).start()
    udp = f"127.0.0.1:{sink.getsockname()[1]}"
    with tempfile.TemporaryDirectory() as folder:
        keys = os.path.join(folder, "keys.log")
        configurations = {
            "no library": base,
            "library, no destination": {**base, "LD_PRELOAD": str(library)},
            "library, file": {**base, "LD_PRELOAD": str(library), "SSLKEYLOGFILE": keys},
            "library, UDP": {**base, "LD_PRELOAD": str(library), "SSLKEYLOG_UDP": udp},
            "library, file and UDP": {
                **base,
                "LD_PRELOAD": str(library),
                "SSLKEYLOGFILE": keys,
                "SSLKEYLOG_UDP": udp,
            },
        }
        rates: dict[str, list[float]] = {name: [] for name in configurations}
        for _ in range(args.runs):  # round robin: a busy moment of the machine hits them all
            for name, env in configurations.items():
                rates[name].append(run(env, args.handshakes))
        results = {name: max(values) for name, values in rates.items()}
        lines = len(Path(keys).read_text().splitlines()) if os.path.exists(keys) else 0
    sink.close()
    reference = results["no library"]
    print(
        f"{args.handshakes} TLS 1.3 handshakes per run (both sides in one process), "
        f"best of {args.runs}:"
    )
    for name, rate in results.items():
        print(f"  {name:<26} {rate:8.0f} handshakes/s  {100 * (rate / reference - 1):+6.1f}%")
    print(f"key-log lines written to the file: {lines}; UDP datagrams received: {received[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
