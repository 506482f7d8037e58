"""Pass-through relay benchmark: a blob pulled directly from the registry vs the
same blob pulled through Berth (no cache), interleaved in one run on this machine.

Reports per configuration: median wall time, GB/s, Berth's and the registry's CPU
seconds per GB served, and Berth's peak RSS. The machine is shared and noisy: read
the ratios, not the absolute numbers.

    BERTH_BIN=build/proxy/berth python3 bench/relay.py [--rounds 5] [--streams 1,4] [--mb 200]
"""

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import harness  # noqa: E402

ROBOT = "robot$cluster-pull"
NAME = "registry.example.internal"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def curl(url, headers, cafile=None):
    argv = ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url]
    for h in headers:
        argv += ["-H", h]
    if cafile:
        argv += ["--cacert", cafile]
    r = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    binary = os.environ.get("BERTH_BIN", "build/proxy/berth")
    work = tempfile.mkdtemp(prefix="berth-bench-")
    stop = []
    try:
        harbor = harness.StandInHarbor(work, args.mb)
        stop.append(harbor.stop)
        pki, registry, image = harbor.pki, harbor.registry, harbor.image
        secret = harbor.robot_secret(os.path.join(work, "robot.json"), NAME)
        berth = harness.Berth(binary, os.path.join(work, "berth"), f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: false
registries:
  - names: [{NAME}]
    endpoint: {registry.endpoint}
    credentials: {secret}
    ca_file: {pki.ca_file}
""").start()
        stop.append(berth.stop)
        token = harbor.robot_token()
        blob = image["big_layer"]
        direct = (f"{registry.endpoint}/v2/library/app/blobs/{blob}", [f"Authorization: Bearer {token}"], pki.ca_file)
        through = (f"{berth.url}/v2/library/app/blobs/{blob}?ns={NAME}", [], None)
        registry_pid = registry.proc.pid
        berth_pid = berth.proc.pid
        # Warm the page cache and the connection pool.
        size = curl(*direct)
        curl(*through)
        subprocess.run(["sync"])

        results = {}
        for streams in [int(s) for s in args.streams.split(",")]:
            for rnd in range(args.rounds):
                for label, target in (("direct", direct), ("berth", through)):
                    c0 = (cpu_seconds(registry_pid), cpu_seconds(berth_pid))
                    t0 = time.monotonic()
                    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
                        got = list(pool.map(lambda _: curl(*target), range(streams)))
                    wall = time.monotonic() - t0
                    c1 = (cpu_seconds(registry_pid), cpu_seconds(berth_pid))
                    assert all(g == size for g in got)
                    gb = size * streams / 1e9
                    results.setdefault((streams, label), []).append(
                        (wall, (c1[0] - c0[0]) / gb, (c1[1] - c0[1]) / gb, gb / wall))
        print(f"blob {size / 1e6:.0f} MB, {args.rounds} interleaved rounds, medians; Berth peak RSS "
              f"{peak_rss_mb(berth_pid):.0f} MB")
        print("| streams | path | GB/s | registry CPU s/GB | Berth CPU s/GB | time vs direct |")
        print("|---|---|---|---|---|---|")
        for streams in [int(s) for s in args.streams.split(",")]:
            base = statistics.median(r[0] for r in results[(streams, "direct")])
            for label in ("direct", "berth"):
                rows = results[(streams, label)]
                wall = statistics.median(r[0] for r in rows)
                print(f"| {streams} | {label} | {statistics.median(r[3] for r in rows):.2f} | "
                      f"{statistics.median(r[1] for r in rows):.2f} | "
                      f"{statistics.median(r[2] for r in rows) if label == 'berth' else 0:.2f} | {wall / base:.2f}x |")
    finally:
        for fn in reversed(stop):
            fn()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
