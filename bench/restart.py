#!/usr/bin/env python3
"""How fast a killed Berth serves again (issue #16): SIGKILL, start, time until the
mirror port accepts, until /readyz answers 200, and until the cache's index has been
read in the background (berth_cache_objects is whole), with a cache of N blobs.

    bash .ci/dev build
    BERTH_BIN=build/proxy/berth python3 bench/restart.py --blobs 100000 --rounds 5

The cache is made once (small files with real digests under blobs/, adopted into the
index by a first run's reconcile, as after a crash between rename and index). Each
round kills the running Berth with SIGKILL, so the cache lock, the hand-over socket and
RocksDB are left as a crash leaves them, then starts a new one and polls both ports
every 2 ms. The times are from the new process's spawn; the kubelet's own restart delay
comes on top (none for the first restart, then its CrashLoopBackOff).
"""

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import harness  # noqa: E402


def make_blobs(cache, n):
    root = os.path.join(cache, "blobs", "sha256")
    for i in range(n):
        data = i.to_bytes(8, "big") * 8
        hexd = hashlib.sha256(data).hexdigest()
        d = os.path.join(root, hexd[:2])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, hexd), "wb") as f:
            f.write(data)


def metric(admin_port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
        return True
    except OSError:
        return False


def ready(admin_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=0.2) as r:
            return r.status == 200
    except OSError:
        return False


def start(binary, config, log):
    return subprocess.Popen([binary, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blobs", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = os.environ.get("BERTH_BIN", "build/proxy/berth")
    work = tempfile.mkdtemp(prefix="berth-restart-")
    try:
        cache = os.path.join(work, "cache")
        t0 = time.monotonic()
        make_blobs(cache, args.blobs)
        print(f"made {args.blobs} blob files in {time.monotonic() - t0:.1f} s")
        port, admin = harness.free_port(), harness.free_port()
        config = os.path.join(work, "berth.yaml")
        with open(config, "w") as f:
            f.write(f"""listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
access_log: false
registries:
  - names: [registry.example.internal]
    endpoint: http://127.0.0.1:{harness.dead_port()}
cache:
  dir: {cache}
""")
        log = open(os.path.join(work, "berth.log"), "ab")
        p = start(binary, config, log)
        harness.wait_for(lambda: ready(admin), what="first start")
        t0 = time.monotonic()
        harness.wait_for(lambda: metric(admin, "berth_cache_objects") >= args.blobs, timeout=600,
                         what="reconcile to adopt every blob")
        print(f"first run adopted {args.blobs} blobs into the index in {time.monotonic() - t0:.1f} s")
        to_accept, to_ready, to_whole = [], [], []
        for _ in range(args.rounds):
            time.sleep(1.0)  # let the previous run settle (its reconcile walks blobs/)
            p.send_signal(signal.SIGKILL)
            p.wait()
            began = time.monotonic()
            p = start(binary, config, log)
            accepted = None
            while True:
                now = time.monotonic()
                if accepted is None and accepts(port):
                    accepted = now - began
                if ready(admin):
                    to_ready.append(time.monotonic() - began)
                    break
                if now - began > 30:
                    raise SystemExit("not ready within 30 s")
                time.sleep(0.002)
            to_accept.append(accepted if accepted is not None else to_ready[-1])
            # The index is read in the background: the usage is whole a moment later.
            while metric(admin, "berth_cache_objects") != args.blobs:
                if time.monotonic() - began > 30:
                    raise SystemExit("the index read did not end within 30 s")
                time.sleep(0.002)
            to_whole.append(time.monotonic() - began)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        print(f"blobs {args.blobs}, {args.rounds} rounds after SIGKILL:")
        print(f"  mirror port accepting: median {statistics.median(to_accept) * 1000:.0f} ms, "
              f"max {max(to_accept) * 1000:.0f} ms")
        print(f"  /readyz 200:           median {statistics.median(to_ready) * 1000:.0f} ms, "
              f"max {max(to_ready) * 1000:.0f} ms")
        print(f"  index read, usage whole: median {statistics.median(to_whole) * 1000:.0f} ms, "
              f"max {max(to_whole) * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
