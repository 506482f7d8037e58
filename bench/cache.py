"""Blob cache benchmark, all peers in one interleaved run on this machine:

hit path, one blob served to 1 and to N parallel clients by
  - Berth serving a cache hit (sendfile, and read+write with zero_copy: false),
  - nginx serving the same file (sendfile on; sendfile off with output_buffers 2 1m),
  - the CNCF registry serving it from its own storage, and in proxy mode (cached);
cold path, the same blob not yet cached (on loopback and behind a throttled link):
  - one client through Berth vs one client straight from the upstream registry,
    for a repository whose token Berth has and for one it has not (the direct
    client then asks for its token too),
  - 50 concurrent clients through Berth vs one.

Reports GB/s, server CPU seconds per GB and peak RSS (medians of interleaved
rounds). The machine is shared and noisy: compare within a run, read the ratios.

    BERTH_BIN=build/proxy/berth python3 bench/cache.py [--rounds 3] [--streams 1,32] [--mb 200]
        [--hit-only | --cold-only] [--link-mbps 400]
"""

import argparse
import json
import os
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


def tree(pid):
    """pid and all its descendants."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    out += tree(int(child))
    except OSError:
        pass
    return out


def cpu_seconds(pid):
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def peak_rss_mb(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def fetch(url, headers=(), cafile=None, timed=False):
    """Downloads with curl; returns the size, or with `timed` (size, seconds of the
    body transfer itself as curl measured it: first byte to last, no process start-up)."""
    argv = ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_starttransfer} %{time_total}", url]
    for h in headers:
        argv += ["-H", h]
    if cafile:
        argv += ["--cacert", cafile]
    size, first, total = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return (int(size), float(total) - float(first)) if timed else int(size)


def parallel(n, fn):
    results = [None] * n

    def run(i):
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0, results


def timed_get(url, headers=(), cafile=None, user=None):
    """One request with curl: (size, seconds) where the seconds are curl's own, from
    starting to connect to the last byte (no process start-up)."""
    argv = ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    for h in headers:
        argv += ["-H", h]
    if cafile:
        argv += ["--cacert", cafile]
    if user:
        argv += ["-u", user]
    size, total = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return int(size), float(total)


def cold_path(args, harbor, berth, blob, size, work, stop):
    """The blob not yet cached: through a fresh Berth against straight from the
    registry, each timed by curl itself. Berth first asks for library/app's manifest,
    as containerd does before any layer, so its upstream connection and the realm are
    known (a running node's state); the layer then comes from library/app (token
    cached) or from library/other, a repository this Berth has no token for yet. The
    direct client's counterpart for a new repository: its token request, then the blob."""
    pki, registry, issuer = harbor.pki, harbor.registry, harbor.issuer
    harness.skopeo_push(os.path.join(work, "layout"), f"docker://127.0.0.1:{registry.port}/library/other:v1",
                        f"admin:{harbor.admin_password}")
    robot = f"{harbor.ROBOT}:{harbor.robot_password}"

    def direct(endpoint, repo):
        token_url = f"{issuer.realm}?service={issuer.service}&scope=repository:{repo}:pull"
        r = subprocess.run(["curl", "-sf", "--cacert", pki.ca_file, "-u", robot, "-w", "\n%{time_total}", token_url],
                           capture_output=True, text=True, check=True)
        body, token_s = r.stdout.rsplit("\n", 1)
        token = json.loads(body)["token"]
        got, blob_s = timed_get(f"{endpoint}/v2/{repo}/blobs/{blob}", [f"Authorization: Bearer {token}"], pki.ca_file)
        assert got == size
        return blob_s, float(token_s) + blob_s

    def through_berth(tag, endpoint, repo, clients):
        b = berth(tag, endpoint=endpoint)
        subprocess.run(["curl", "-sf", "-o", "/dev/null", "-I", "-H", f"Accept: {harness.CONTAINERD_ACCEPT}",
                        f"{b.url}/v2/library/app/manifests/v1?ns={NAME}"], check=True)
        wall, got = parallel(clients, lambda: timed_get(f"{b.url}/v2/{repo}/blobs/{blob}?ns={NAME}"))
        assert all(g[0] == size for g in got)
        b.stop()
        shutil.rmtree(os.path.join(work, tag), ignore_errors=True)
        return got[0][1] if clients == 1 else wall

    def run(upstream, endpoint, rounds):
        t = {k: [] for k in ("direct", "direct_new", "berth", "berth_new", "berth50")}
        for rnd in range(rounds):
            known, new = direct(endpoint, "library/app")
            t["direct"].append(known)
            t["direct_new"].append(direct(endpoint, "library/other")[1])
            t["berth"].append(through_berth(f"cold-{upstream}-{rnd}", endpoint, "library/app", 1))
            t["berth_new"].append(through_berth(f"coldnew-{upstream}-{rnd}", endpoint, "library/other", 1))
            t["berth50"].append(through_berth(f"cold50-{upstream}-{rnd}", endpoint, "library/app", 50))
        m = {k: statistics.median(v) for k, v in t.items()}
        print(f"| {upstream} | direct from the registry, token in hand, 1 client | {m['direct']:.3f} | 1.00 |")
        print(f"| {upstream} | through Berth, cold, 1 client | {m['berth']:.3f} | {m['berth'] / m['direct']:.2f}x direct |")
        print(f"| {upstream} | direct, new repository (token request + blob) | {m['direct_new']:.3f} | 1.00 |")
        print(f"| {upstream} | through Berth, cold, new repository, 1 client | {m['berth_new']:.3f} | "
              f"{m['berth_new'] / m['direct_new']:.2f}x direct |")
        print(f"| {upstream} | through Berth, cold, 50 concurrent clients | {m['berth50']:.3f} | "
              f"{m['berth50'] / m['berth']:.2f}x one client |")

    print(f"\n## Cold path: {size / 1e6:.0f} MB blob, medians of {args.rounds} (seconds as curl measured them)\n")
    print("| upstream | case | seconds | ratio |")
    print("|---|---|---|---|")
    run("loopback", registry.endpoint, args.rounds)
    if args.link_mbps > 0:
        # The upstream behind a link of link_mbps, as Harbor is across the network.
        link = harness.FaultProxy(registry.port, rate=args.link_mbps * 1e6 / 8)
        stop.append(link.stop)
        run(f"{args.link_mbps:.0f} Mbit/s", f"https://127.0.0.1:{link.port}", max(1, args.rounds // 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", default="1,32")
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--hit-only", action="store_true", help="measure the hit path only")
    ap.add_argument("--cold-only", action="store_true", help="measure the cold path only")
    ap.add_argument("--link-mbps", type=float, default=400,
                    help="also run the cold path with the upstream throttled to this many megabits/s (0: skip)")
    args = ap.parse_args()
    binary = os.environ.get("BERTH_BIN", "build/proxy/berth")
    work = tempfile.mkdtemp(prefix="berth-bench-")
    os.chmod(work, 0o755)  # nginx's workers (www-data) read the blob file from here
    stop = []
    try:
        harbor = harness.StandInHarbor(work, args.mb)
        stop.append(harbor.stop)
        pki, issuer, registry, storage, image = harbor.pki, harbor.issuer, harbor.registry, harbor.storage, harbor.image
        pw = harbor.robot_password
        blob = image["big_layer"]
        blob_file = harness.blob_data_path(storage, blob)
        size = os.path.getsize(blob_file)
        secret = harbor.robot_secret(os.path.join(work, "robot.json"), NAME)

        def berth(tag, extra="", endpoint=None, exe=None):
            b = harness.Berth(exe or binary, os.path.join(work, tag), f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: false
registries:
  - names: [{NAME}]
    endpoint: {endpoint or registry.endpoint}
    credentials: {secret}
    ca_file: {pki.ca_file}
cache:
  dir: {os.path.join(work, tag, 'cache')}
{extra}""").start()
            stop.append(b.stop)
            return b

        if args.cold_only:
            cold_path(args, harbor, berth, blob, size, work, stop)
            return
        # Peers for the hit path.
        servers = {}
        b_sf = berth("berth-sendfile")
        b_cp = berth("berth-copy", "  zero_copy: false\n")
        servers["berth hit (sendfile)"] = (b_sf.proc.pid, f"{b_sf.url}/v2/library/app/blobs/{blob}?ns={NAME}")
        servers["berth hit (read+write)"] = (b_cp.proc.pid, f"{b_cp.url}/v2/library/app/blobs/{blob}?ns={NAME}")
        # Another build of Berth in the same run (a regression check): BERTH_BASELINE_BIN.
        if os.environ.get("BERTH_BASELINE_BIN"):
            base = os.environ["BERTH_BASELINE_BIN"]
            o_sf = berth("baseline-sendfile", exe=base)
            o_cp = berth("baseline-copy", "  zero_copy: false\n", exe=base)
            servers["baseline berth hit (sendfile)"] = (o_sf.proc.pid, f"{o_sf.url}/v2/library/app/blobs/{blob}?ns={NAME}")
            servers["baseline berth hit (read+write)"] = (o_cp.proc.pid,
                                                          f"{o_cp.url}/v2/library/app/blobs/{blob}?ns={NAME}")
        rel = os.path.relpath(blob_file, storage)
        for label, conf in (("nginx sendfile on", "sendfile on;"),
                            ("nginx sendfile off, 2x1m buffers", "sendfile off; output_buffers 2 1m;")):
            d = os.path.join(work, label.replace(" ", "_").replace(",", ""))
            os.makedirs(os.path.join(d, "logs"))
            port = harness.free_port()
            with open(os.path.join(d, "nginx.conf"), "w") as f:
                f.write(f"""worker_processes auto; daemon off; pid {d}/nginx.pid; error_log {d}/logs/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; {conf} tcp_nopush on; keepalive_timeout 60;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen 127.0.0.1:{port}; root {storage}; }} }}
""")
            p = harness.Process("nginx", ["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")],
                                os.path.join(d, "out.log")).start()
            stop.append(p.stop)
            harness.wait_for(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/{rel}"]).returncode == 0,
                             what="nginx")
            servers[label] = (p.proc.pid, f"http://127.0.0.1:{port}/{rel}")
        # The CNCF registry from its own storage (no auth, plain HTTP) and in proxy mode.
        for label, extra in (("registry, own storage", ""),
                             ("registry proxy mode, cached", f"proxy:\n  remoteurl: {registry.endpoint}\n  username: {ROBOT}\n  password: {pw}\n")):
            d = os.path.join(work, label.split(",")[0].replace(" ", "_") + str(len(servers)))
            os.makedirs(d)
            port = harness.free_port()
            root = storage if not extra else os.path.join(d, "storage")
            with open(os.path.join(d, "config.yml"), "w") as f:
                f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                        f"    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}")
            env = dict(os.environ, SSL_CERT_FILE=pki.ca_file)
            p = harness.Process("registry", ["docker-registry", "serve", os.path.join(d, "config.yml")],
                                os.path.join(d, "out.log"), env=env).start()
            stop.append(p.stop)
            url = f"http://127.0.0.1:{port}/v2/library/app/blobs/{blob}"
            harness.wait_for(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode == 0,
                             timeout=60, what=label)
            servers[label] = (p.proc.pid, url)
        for _, (_, url) in servers.items():  # warm every cache and the page cache
            assert fetch(url) == size
        subprocess.run(["sync"])

        rows = {}
        for streams in [int(s) for s in args.streams.split(",")]:
            for _ in range(args.rounds):
                for label, (pid, url) in servers.items():
                    c0 = cpu_seconds(pid)
                    wall, got = parallel(streams, lambda: fetch(url, timed=True))
                    c1 = cpu_seconds(pid)
                    assert all(g[0] == size for g in got), label
                    gb = size * streams / 1e9
                    # One stream: curl's own transfer time (a 200 MB body takes ~50 ms
                    # here, as long as starting curl). Many: all bytes over the wall clock.
                    rate = size / 1e9 / got[0][1] if streams == 1 else gb / wall
                    rows.setdefault((label, streams), []).append((rate, (c1 - c0) / gb))
        print(f"## Hit path: {size / 1e6:.0f} MB blob, {args.rounds} interleaved rounds, medians\n")
        print("| server | streams | GB/s | server CPU s/GB | peak RSS MB |")
        print("|---|---|---|---|---|")
        for streams in [int(s) for s in args.streams.split(",")]:
            for label, (pid, _) in servers.items():
                r = rows[(label, streams)]
                print(f"| {label} | {streams} | {statistics.median(x[0] for x in r):.2f} | "
                      f"{statistics.median(x[1] for x in r):.2f} | {peak_rss_mb(pid):.0f} |")

        if args.hit_only:
            return
        cold_path(args, harbor, berth, blob, size, work, stop)
    finally:
        for fn in reversed(stop):
            try:
                fn()
            except Exception:  # noqa: BLE001 - keep tearing down
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
