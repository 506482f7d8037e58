"""Manifest metadata benchmark, all peers in one interleaved run on this machine.

1. Warm manifest requests by tag, 64 keep-alive connections, requests/s and p99
   latency: HEAD (containerd's resolve request) with bench/loadgen.cpp, because
   wrk 4.1 cannot do HEAD (its parser waits for the body that the HEAD answer's
   Content-Length announces, and every request times out); GET with wrk. For
     - Berth, embedded metadata (no backend),
     - Berth with a redis-server backend,
     - the CNCF registry in proxy mode (which asks its upstream about the tag on
       every request).
2. A cluster simulation: 1, 5 and 20 Berth processes with one redis-server, all
   resolving and fetching the same image's manifests at once (containerd's
   requests), counting the manifest requests that reach the upstream registry;
   the same without a backend (embedded) for contrast.

The machine is shared and noisy (and wrk shares its two cores): compare within a
run, read the ratios.

    BERTH_BIN=build/proxy/berth python3 bench/meta.py [--rounds 3] [--seconds 8] [--warm-only]

BERTH_BASELINE_BIN=<another build> adds that build (embedded, 1 thread) to the same
interleaved rounds: a regression check of a change, like with like.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import harness  # noqa: E402

ROBOT = "robot$cluster-pull"
NAME = "registry.example.internal"
ACCEPT = harness.CONTAINERD_ACCEPT


def loadgen(binary, url, seconds, connections):
    out = subprocess.run([binary, "--url", url, "--method", "HEAD", "--connections", str(connections), "--threads", "2",
                          "--seconds", str(seconds), "--header", f"Accept: {ACCEPT}"],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return r["rps"], r["p99_ms"]


def wrk(url, seconds, connections, script):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if rps == 0:
        raise RuntimeError(f"{url}: no answers\n{out}")
    m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")
    return rps, p99_ms


def upstream_manifest_requests(registry):
    return sum(1 for _, uri, status in registry.requests_seen() if "/manifests/" in uri and status != 401)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--nodes", default="1,5,20")
    ap.add_argument("--warm-only", action="store_true", help="skip the cluster simulation")
    args = ap.parse_args()
    binary = os.environ.get("BERTH_BIN", "build/proxy/berth")
    load = os.environ.get("BERTH_LOADGEN", os.path.join(os.path.dirname(binary), "..", "bench", "berth_loadgen"))
    work = tempfile.mkdtemp(prefix="berth-bench-meta-")
    stop = []
    try:
        harbor = harness.StandInHarbor(work, 1)
        stop.append(harbor.stop)
        registry, pki = harbor.registry, harbor.pki
        secret = harbor.robot_secret(os.path.join(work, "robot.json"), NAME)
        redis = harness.RedisServer(os.path.join(work, "redis")).start()
        stop.append(redis.stop)

        def berth(tag, metadata="", threads=0, exe=binary):
            b = harness.Berth(exe, os.path.join(work, tag), f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: false
threads: {threads}
registries:
  - names: [{NAME}]
    endpoint: {registry.endpoint}
    credentials: {secret}
    ca_file: {pki.ca_file}
cache:
  dir: {os.path.join(work, tag, 'cache')}
metadata:
  tag_ttl: 10m
{metadata}""").start()
            stop.append(b.stop)
            return b

        # 1. Warm requests by tag.
        script = os.path.join(work, "get.lua")
        with open(script, "w") as f:
            f.write(f'wrk.headers["Accept"] = "{ACCEPT}"\n')
        # The load generator needs a core of this 2-core machine: Berth runs on one
        # thread (threads: 1) beside it, and with its default (one per core) for contrast.
        peers = {}
        b = berth("embedded", threads=1)
        peers["Berth, embedded, 1 thread"] = f"{b.url}/v2/library/app/manifests/v1?ns={NAME}"
        b = berth("redis", f"  redis: {redis.url}\n", threads=1)
        peers["Berth, redis-server backend, 1 thread"] = f"{b.url}/v2/library/app/manifests/v1?ns={NAME}"
        if os.environ.get("BERTH_BASELINE_BIN"):
            b = berth("baseline", threads=1, exe=os.environ["BERTH_BASELINE_BIN"])
            peers["Berth baseline build, embedded, 1 thread"] = f"{b.url}/v2/library/app/manifests/v1?ns={NAME}"
        b = berth("embedded-default")
        peers["Berth, embedded, default threads"] = f"{b.url}/v2/library/app/manifests/v1?ns={NAME}"
        d = os.path.join(work, "registry-proxy")
        os.makedirs(d)
        port = harness.free_port()
        with open(os.path.join(d, "config.yml"), "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {d}/storage\nhttp:\n  addr: 127.0.0.1:{port}\n"
                    f"proxy:\n  remoteurl: {registry.endpoint}\n  username: {ROBOT}\n  password: {harbor.robot_password}\n")
        p = harness.Process("registry", ["docker-registry", "serve", os.path.join(d, "config.yml")],
                            os.path.join(d, "out.log"), env=dict(os.environ, SSL_CERT_FILE=pki.ca_file)).start()
        stop.append(p.stop)
        peers["CNCF registry, proxy mode"] = f"http://127.0.0.1:{port}/v2/library/app/manifests/v1"
        for url in peers.values():
            harness.wait_for(lambda u=url: harness.http_request(u, method="HEAD", headers={"Accept": ACCEPT})[0] == 200,
                             timeout=60, what=url)
        rows = {}
        for _ in range(args.rounds):
            for label, url in peers.items():
                rows.setdefault(("HEAD", label), []).append(loadgen(load, url, args.seconds, args.connections))
                rows.setdefault(("GET", label), []).append(wrk(url, args.seconds, args.connections, script))
        print(f"## Warm manifest requests by tag: {args.connections} connections, {args.seconds}s x "
              f"{args.rounds} interleaved rounds, medians\n")
        print("| request | server | requests/s | p99 ms | vs registry proxy |")
        print("|---|---|---|---|---|")
        for method in ("HEAD", "GET"):
            base = statistics.median(r[0] for r in rows[(method, "CNCF registry, proxy mode")])
            for label in peers:
                r = rows[(method, label)]
                rps = statistics.median(x[0] for x in r)
                print(f"| {method} | {label} | {rps:,.0f} | {statistics.median(x[1] for x in r):.2f} | "
                      f"{rps / base:.1f}x |")

        # 2. Cluster simulation.
        if args.warm_only:
            return
        print("\n## Cluster simulation: N Berth processes pull library/app:v1's manifests at once\n")
        print("| nodes | upstream manifest requests, redis backend | upstream manifest requests, embedded |")
        print("|---|---|---|")
        for n in [int(x) for x in args.nodes.split(",")]:
            counts = []
            for mode in ("shared", "embedded"):
                redis.command("FLUSHALL")
                metadata = f"  redis: {redis.url}\n" if mode == "shared" else ""
                nodes = [berth(f"cluster-{mode}-{n}-{i}", metadata, threads=1) for i in range(n)]
                before = upstream_manifest_requests(registry)
                start = threading.Barrier(n)

                def pull(node):
                    start.wait()
                    return harness.resolve_like_containerd(node.url, "library/app", "v1", NAME)

                with concurrent.futures.ThreadPoolExecutor(n) as pool:
                    results = list(pool.map(pull, nodes))
                assert all(r == results[0] for r in results)
                harness.wait_for(lambda: upstream_manifest_requests(registry) >= before + 1, what="registry log")
                time.sleep(0.5)  # the registry writes its access log line after the response
                counts.append(upstream_manifest_requests(registry) - before)
                for node in nodes:
                    node.stop()
            print(f"| {n} | {counts[0]} | {counts[1]} |")
    finally:
        for fn in reversed(stop):
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
