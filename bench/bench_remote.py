"""SSH costs the orchestrator pays per batch, over a real sshd on 127.0.0.1.

    .venv/bin/python bench/bench_remote.py [--mib 64] [--rounds 20]

Prints: connect time, command round trip, heartbeat round trip, and verified upload and
download throughput (SFTP + SHA-256 on both sides) against LocalTransport's verified copy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remote.hosts import Host  # noqa: E402
from remote.ssh import SSHConnection, SSHSettings  # noqa: E402
from remote.transport import LocalTransport, SSHTransport  # noqa: E402
from tests.sshd_support import SSHServer  # noqa: E402


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        server = SSHServer(d / "sshd").start()
        try:
            kh = server.write_known_hosts(d / "known_hosts")
            root = d / "wroot"
            root.mkdir()
            host = server.host(root=str(root))
            med, worst = timed(lambda: SSHConnection(host, kh, SSHSettings()).connect().close(),
                               5)
            print(f"connect (key exchange + auth): median {med * 1000:.0f} ms, max "
                  f"{worst * 1000:.0f} ms")
            conn = SSHConnection(host, kh, SSHSettings()).connect()
            med, worst = timed(lambda: conn.run("true"), args.rounds)
            print(f"command round trip (`true`): median {med * 1000:.0f} ms, max "
                  f"{worst * 1000:.0f} ms")
            med, worst = timed(conn.heartbeat, args.rounds)
            print(f"heartbeat round trip: median {med * 1000:.1f} ms, max {worst * 1000:.1f} ms")
            src = d / "batch.bin"
            src.write_bytes(os.urandom(args.mib << 20))
            ssh = SSHTransport(host, kh, connection=conn)
            local = LocalTransport(Host(name="local", local=True, root=str(root)))
            for name, t in (("ssh", ssh), ("local", local)):
                start = time.perf_counter()
                t.put_file(src, t.join("up.bin"))
                up = time.perf_counter() - start
                start = time.perf_counter()
                t.get_file(t.join("up.bin"), d / "down.bin")
                down = time.perf_counter() - start
                print(f"{name:5} verified upload {args.mib} MiB: {up:.2f} s "
                      f"({args.mib / up:.0f} MiB/s); download {down:.2f} s "
                      f"({args.mib / down:.0f} MiB/s)")
            conn.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
