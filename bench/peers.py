"""Blob sharing between nodes (issue #13): a rollout of one image to N nodes at once.

The stand-in Harbor (the CNCF registry, TLS, token auth, a pull-only robot) sits behind
a throttled link, a TCP proxy on loopback that stands in for the network to Harbor and
counts every byte the upstream sends through it. N nodes pull a 4-layer image (one big
layer, three of 1-5 MB) at once, as containerd does: HEAD the tag, GET the manifest,
then GET the config and every layer (3 at a time per node, containerd's default)
through the node's mirror port with `?ns=<registry>`. Every body is hashed and checked
against its digest. The configurations, interleaved for each N:

  - peers:    Berth with `peers.listen` on 127.0.0.(10+i), one redis-server as the
              directory (and the shared metadata backend);
  - berth:    the same nodes without the `peers` section (Berth as before #13);
  - registry: one CNCF registry per node in proxy mode (proxy.remoteurl through the
              link, the robot's username and password).

Measured per run: bytes the upstream sent through the link (TLS records included) as a
multiple of the image's size, the upstream's blob GETs (its access log), and the
rollout time: from the common start barrier of the N client threads to the last node
having every blob, as a ratio to N=1 of the same configuration. Every node gets new,
empty cache directories for every run.

The link is shared by default: --link-mbps is the upstream's whole egress, split
between its connections as TCP would split one bottleneck. (harness.FaultProxy's own
`rate` is per connection, so N nodes without sharing would each get the full rate.)
--link-per-connection uses that instead.

    BERTH_BIN=build/proxy/berth /usr/bin/python3 bench/peers.py [--nodes 1,5,10,20] [--mb 200] \
        [--link-mbps 400] [--rounds 1] [--out bench/peers]

writes <out>.json, <out>.csv and <out>.png (matplotlib: `apt-get install -y python3-matplotlib`;
if the running interpreter has none, /usr/bin/python3 draws the chart).
"""

import argparse
import csv
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402

ROBOT = "robot$cluster-pull"
NAME = "registry.example.internal"
REPO = "library/app"
CONFIGS = ("peers", "berth", "registry")
LABELS = {"peers": "Berth, peers", "berth": "Berth, no peers", "registry": "CNCF registry, proxy mode"}
SMALL_LAYERS_MB = (1, 3, 5)
BLOB_WORKERS = 3  # containerd's max_concurrent_downloads


# ---------------------------------------------------------------------------
# The link to the upstream


class _Counted:
    """The upstream side of one link connection: counts what it receives and, on a
    shared link, paces it against the link's one budget."""

    def __init__(self, sock, link):
        self._sock = sock
        self._link = link

    def recv(self, n):
        data = self._sock.recv(n)
        if data:
            self._link._account(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._sock, name)


class Link(harness.FaultProxy):
    """harness.FaultProxy with a byte counter; with `shared`, `rate` bytes/s is the
    budget of all connections together (a virtual clock: each chunk is forwarded once
    the link would have carried everything before it)."""

    def __init__(self, target_port, rate, shared=True):
        super().__init__(target_port, rate=None if shared else rate)
        self.shared_rate = rate if shared else None
        self.bytes = 0
        self._count_lock = threading.Lock()
        self._free_at = 0.0

    def _account(self, n):
        with self._count_lock:
            self.bytes += n
            if not self.shared_rate:
                return
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + n / self.shared_rate
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)

    def _pump(self, src, dst, from_upstream):
        super()._pump(_Counted(src, self) if from_upstream else src, dst, from_upstream)


# ---------------------------------------------------------------------------
# The image


def make_image(layout, big_mb, seed=20261213):
    """A linux/amd64 OCI image tagged v1: a config, three small layers and one big one.
    Returns {"manifest": digest, "blobs": {digest: size}, "size": bytes of manifest + blobs}."""
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    rng = random.Random(seed)
    layers, diffs = [], []
    for i, mb in enumerate((*SMALL_LAYERS_MB[:1], big_mb, *SMALL_LAYERS_MB[1:])):
        data, diff = harness._gzip_tar([(f"layer{i}/data.bin", rng.randbytes(int(mb * 1024 * 1024)))])
        layers.append(harness._put_blob(layout, data))
        diffs.append(diff)
        del data
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": diffs}}, sort_keys=True).encode()
    cdesc = harness._put_blob(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **d} for d in layers],
    }, sort_keys=True).encode()
    mdesc = harness._put_blob(layout, manifest)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                      **mdesc, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    blobs = {d["digest"]: d["size"] for d in [cdesc, *layers]}
    return {"manifest": mdesc["digest"], "blobs": blobs, "size": mdesc["size"] + sum(blobs.values()),
            "big_layer": layers[1]["digest"]}


# ---------------------------------------------------------------------------
# The upstream's access log


_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)')


def upstream_requests(registry, offset):
    """(method, path, status, body bytes) the registry logged after byte `offset` of its
    log, once everything answered before this call is logged (a marker request)."""
    marker = f"/v2/__berth_marker_{uuid.uuid4().hex}/tags/list"
    ctx = ssl.create_default_context(cafile=registry.ca_file)
    try:
        urllib.request.urlopen(registry.endpoint + marker, context=ctx, timeout=5)
    except urllib.error.HTTPError:
        pass
    harness.wait_for(lambda: marker in registry.log(), timeout=10, what="the registry to log the marker")
    with open(registry.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out = []
    for line in text.splitlines():
        m = _ACCESS.search(line)
        if m and not line.startswith("{") and "/__berth_marker_" not in m.group(2):
            out.append((m.group(1), m.group(2), int(m.group(3)), 0 if m.group(4) == "-" else int(m.group(4))))
    return out


# ---------------------------------------------------------------------------
# A containerd-like client per node


class PullError(Exception):
    pass


def _get(conn, target, headers, method="GET", sink=None):
    """One request on a keep-alive connection. With `sink` (a hashlib object) the body
    is streamed into it; returns (status, headers, body or its length)."""
    conn.request(method, target, headers=headers)
    resp = conn.getresponse()
    hdrs = {k.lower(): v for k, v in resp.getheaders()}
    if sink is None or resp.status != 200:
        return resp.status, hdrs, resp.read()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while True:
        n = resp.readinto(buf)
        if not n:
            break
        sink.update(view[:n])
        total += n
    return resp.status, hdrs, total


def pull(host, port, image, timeout):
    """Pulls the image as containerd does; returns seconds from the call to the last
    verified body. Raises PullError on any wrong answer."""
    started = time.monotonic()
    q = f"?ns={NAME}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        status, hdrs, _ = _get(conn, f"/v2/{REPO}/manifests/v1{q}", {"Accept": harness.CONTAINERD_ACCEPT}, "HEAD")
        if status != 200 or hdrs.get("docker-content-digest") != image["manifest"]:
            raise PullError(f"HEAD tag: {status} {hdrs.get('docker-content-digest')}")
        status, hdrs, body = _get(conn, f"/v2/{REPO}/manifests/{image['manifest']}{q}",
                                  {"Accept": f"{hdrs['content-type']}, */*"})
        if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != image["manifest"]:
            raise PullError(f"GET manifest: {status}")
    finally:
        conn.close()
    doc = json.loads(body)
    todo = [doc["config"]["digest"]] + [layer["digest"] for layer in doc["layers"]]
    lock = threading.Lock()
    errors = []

    def worker():
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            while True:
                with lock:
                    if not todo or errors:
                        return
                    digest = todo.pop(0)
                h = hashlib.sha256()
                try:
                    status, _, got = _get(c, f"/v2/{REPO}/blobs/{digest}{q}", {"Accept-Encoding": "gzip"}, sink=h)
                except (OSError, http.client.HTTPException) as e:
                    raise PullError(f"GET {digest[:19]}: {e!r}") from e
                if status != 200 or got != image["blobs"][digest] or "sha256:" + h.hexdigest() != digest:
                    raise PullError(f"GET {digest[:19]}: status {status}, {got} bytes, digest "
                                    f"{'ok' if 'sha256:' + h.hexdigest() == digest else 'WRONG'}")
        except Exception as e:  # noqa: BLE001 - reported by pull()
            with lock:
                errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(BLOB_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0] if isinstance(errors[0], PullError) else PullError(repr(errors[0]))
    return time.monotonic() - started


def proc_cpu(pid):
    """CPU seconds (user + system, every thread) a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rollout(targets, image, timeout):
    """All nodes pull at once from one barrier. Returns (rollout seconds, per-node
    seconds, errors)."""
    n = len(targets)
    t0 = []
    barrier = threading.Barrier(n, action=lambda: t0.append(time.monotonic()))
    done = [None] * n
    errors = []

    def node(i):
        barrier.wait()
        try:
            pull(*targets[i], image, timeout)
            done[i] = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported in the results
            errors.append(f"node {i}: {e}")

    threads = [threading.Thread(target=node, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_node = [d - t0[0] for d in done if d is not None]
    return (max(per_node) if per_node and not errors else None), per_node, errors


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="1,5,10,20")
    ap.add_argument("--mb", type=float, default=200, help="size of the big layer, MiB of random data")
    ap.add_argument("--link-mbps", type=float, default=400, help="the upstream link, megabits/s")
    ap.add_argument("--link-per-connection", action="store_true",
                    help="--link-mbps per connection (harness.FaultProxy's rate), not shared by all")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="a subset of " + ",".join(CONFIGS))
    ap.add_argument("--out", default=os.path.join(HERE, "peers"), help="writes OUT.json, OUT.csv and OUT.png")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one request may take")
    ap.add_argument("--plot-only", metavar="JSON", help="draw OUT.png from an earlier run's JSON and exit")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            plot(json.load(f), args.out + ".png")
        return
    nodes = [int(s) for s in args.nodes.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    assert set(configs) <= set(CONFIGS) and configs, args.configs
    assert max(nodes) <= 200, "nodes live on 127.0.0.10 and up"
    binary = os.path.abspath(os.environ.get("BERTH_BIN", "build/proxy/berth"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"BERTH_BIN={binary} is not an executable")

    # SIGTERM/SIGHUP tear down like Ctrl-C.
    def interrupted(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    work = tempfile.mkdtemp(prefix="berth-bench-peers-")
    stop = []  # the run's long-lived parts
    running = []  # the current run's nodes
    results = []
    try:
        pki = harness.Pki(os.path.join(work, "pki"))
        pw, admin_pw = harness.generate_password(), harness.generate_password()
        issuer = harness.TokenIssuer(os.path.join(work, "issuer"), pki, {
            ROBOT: (pw, {"library/": ["pull"]}), "admin": (admin_pw, {"": ["pull", "push"]})}).start()
        stop.append(issuer.stop)
        registry = harness.Registry(os.path.join(work, "registry"), pki, issuer, os.path.join(work, "storage")).start()
        stop.append(registry.stop)
        t = time.monotonic()
        image = make_image(os.path.join(work, "layout"), args.mb)
        harness.skopeo_push(os.path.join(work, "layout"), f"docker://127.0.0.1:{registry.port}/{REPO}:v1",
                            f"admin:{admin_pw}")
        shutil.rmtree(os.path.join(work, "layout"))
        print(f"image: {len(image['blobs']) - 1} layers + config, {image['size'] / 1e6:.1f} MB "
              f"(made and pushed in {time.monotonic() - t:.0f} s)", file=sys.stderr)
        rate = args.link_mbps * 1e6 / 8
        link = Link(registry.port, rate, shared=not args.link_per_connection)
        stop.append(link.stop)
        endpoint = f"https://127.0.0.1:{link.port}"
        redis = harness.RedisServer(os.path.join(work, "redis")).start()
        stop.append(redis.stop)
        secret_file = os.path.join(work, "peer-secret")
        with open(secret_file, "w") as f:
            f.write(harness.generate_password(32) + "\n")
        dockercfg = os.path.join(work, "dockerconfigjson")
        harness.write_dockerconfigjson(dockercfg, NAME, ROBOT, pw)

        def start_berth(d, i, peers, prefix):
            host = f"127.0.0.{10 + i}"
            extra = f"""metadata:
  redis: {redis.url}
  key_prefix: "{prefix}"
"""
            if peers:
                extra += f"""peers:
  listen: {host}:{harness.free_port(host)}
  secret_file: {secret_file}
"""
            b = harness.Berth(binary, d, f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: false
registries:
  - names: [{NAME}]
    endpoint: {endpoint}
    credentials: {dockercfg}
    ca_file: {pki.ca_file}
default_registry: {NAME}
cache:
  dir: {os.path.join(d, 'cache')}
{extra}""")
            running.append(b)
            b.start()
            return ("127.0.0.1", b.port)

        def start_registry(d, i):
            os.makedirs(d)
            host = f"127.0.0.{10 + i}"
            port = harness.free_port(host)
            cfg = os.path.join(d, "config.yml")
            with open(cfg, "w") as f:
                f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {os.path.join(d, 'storage')}
http:
  addr: {host}:{port}
proxy:
  remoteurl: {endpoint}
  username: {ROBOT}
  password: {pw}
""")
            p = harness.Process("registry", ["docker-registry", "serve", cfg], os.path.join(d, "registry.log"),
                                env=dict(os.environ, SSL_CERT_FILE=pki.ca_file))
            running.append(p)
            p.start()

            def up():
                if not p.alive():
                    raise RuntimeError("registry exited:\n" + p.log())
                with urllib.request.urlopen(f"http://{host}:{port}/v2/", timeout=2) as r:
                    return r.status == 200

            harness.wait_for(up, timeout=60, what="a proxy-mode registry")
            return (host, port)

        def measure(rnd, cfg, n):
            run_dir = os.path.join(work, f"r{rnd}-{cfg}-{n}")
            redis.command("FLUSHALL")
            prefix = f"b{rnd}{cfg}{n}:"
            targets = []
            for i in range(n):
                d = os.path.join(run_dir, f"node{i}")
                targets.append(start_registry(d, i) if cfg == "registry" else start_berth(d, i, cfg == "peers", prefix))
            log_offset = os.path.getsize(registry.log_path)
            bytes0 = link.bytes
            # CPU used during the rollout: the nodes, the upstream registry, and this
            # process (the N containerd-like clients hashing every body, the link and
            # the token issuer). On one machine the nodes share its cores: the total
            # over the cores is a floor under the rollout time that a real cluster,
            # one machine per node, does not have.
            cpu0 = {id(p): proc_cpu(p.proc.pid) for p in running}
            up0 = proc_cpu(registry.proc.pid)
            self0 = os.times()
            wall, per_node, errors = rollout(targets, image, args.timeout)
            self1 = os.times()
            cpu_nodes = sum(proc_cpu(p.proc.pid) - cpu0[id(p)] for p in running)
            cpu_up = proc_cpu(registry.proc.pid) - up0
            cpu_bench = (self1.user - self0.user) + (self1.system - self0.system)
            # Whatever the upstream still sends (nothing, normally) counts too.
            last, settled = link.bytes, time.monotonic()
            while time.monotonic() - settled < 1.0:
                time.sleep(0.2)
                if link.bytes != last:
                    last, settled = link.bytes, time.monotonic()
            wire = link.bytes - bytes0
            seen = upstream_requests(registry, log_offset)
            blob_gets = [r for r in seen if r[0] == "GET" and "/blobs/" in r[1] and r[2] in (200, 206)]
            row = {
                "round": rnd, "config": cfg, "nodes": n,
                "rollout_s": wall, "node_s": sorted(per_node), "errors": errors,
                "upstream_wire_bytes": wire, "upstream_x_image": wire / image["size"],
                "upstream_blob_gets": len(blob_gets),
                "upstream_big_layer_gets": sum(1 for r in blob_gets if image["big_layer"] in r[1]),
                "upstream_ranged_gets": sum(1 for r in blob_gets if r[2] == 206),
                "upstream_blob_body_bytes": sum(r[3] for r in blob_gets),
                "upstream_blob_heads": sum(1 for r in seen if r[0] == "HEAD" and "/blobs/" in r[1]),
                "upstream_manifest_requests": sum(1 for r in seen if "/manifests/" in r[1] and r[2] != 401),
                "upstream_requests": len(seen),
                "cpu_nodes_s": cpu_nodes, "cpu_upstream_s": cpu_up, "cpu_clients_s": cpu_bench,
                "cpu_floor_s": (cpu_nodes + cpu_up + cpu_bench) / (os.cpu_count() or 1),
            }
            if cfg != "registry":
                row["fill_bytes_peer"] = sum(b.metric("berth_fill_bytes_total", source="peer") for b in running)
                row["fill_bytes_upstream"] = sum(b.metric("berth_fill_bytes_total", source="upstream")
                                                 for b in running)
                row["peer_fetches"] = {o: sum(b.metric("berth_peer_fetches_total", outcome=o) for b in running)
                                       for o in ("ok", "busy", "refused", "broken", "stalled", "wrong_bytes",
                                                 "unreachable")}
            for p in running:
                p.stop()
            running.clear()
            shutil.rmtree(run_dir, ignore_errors=True)
            shown = f"{wall:.2f} s" if wall is not None else "FAILED"
            print(f"round {rnd} {cfg:8} N={n:<3} rollout {shown}, upstream {row['upstream_x_image']:.2f}x image, "
                  f"{row['upstream_blob_gets']} blob GETs, nodes' CPU {cpu_nodes:.1f} s, CPU floor "
                  f"{row['cpu_floor_s']:.1f} s" + (f"; errors: {errors}" if errors else ""),
                  file=sys.stderr)
            return row

        for rnd in range(args.rounds):
            for n in nodes:
                order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
                for cfg in order:
                    results.append(measure(rnd, cfg, n))
    finally:
        for p in running:
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - keep tearing down
                pass
        for fn in reversed(stop):
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(work, ignore_errors=True)

    meta = {"date": time.strftime("%Y-%m-%d"), "nodes": nodes, "mb": args.mb, "link_mbps": args.link_mbps,
            "link": "per-connection" if args.link_per_connection else "shared", "rounds": args.rounds,
            "image_bytes": image["size"], "blobs": image["blobs"], "cpus": os.cpu_count(),
            "berth": binary}
    summary = summarize(results, nodes, configs)
    doc = {"meta": meta, "summary": summary, "runs": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(args.out + ".csv", "w", newline="") as f:
        cols = ["round", "config", "nodes", "rollout_s", "cpu_nodes_s", "cpu_upstream_s", "cpu_clients_s",
                "cpu_floor_s", "upstream_wire_bytes", "upstream_x_image",
                "upstream_blob_gets", "upstream_big_layer_gets", "upstream_ranged_gets", "upstream_blob_body_bytes",
                "upstream_blob_heads", "upstream_manifest_requests", "upstream_requests", "fill_bytes_peer",
                "fill_bytes_upstream", "errors"]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({**r, "errors": "; ".join(r["errors"])})
    print_table(meta, summary)
    plot(doc, args.out + ".png")
    print(f"\nwrote {args.out}.json, {args.out}.csv, {args.out}.png", file=sys.stderr)
    if any(r["errors"] for r in results):
        sys.exit(1)


def summarize(results, nodes, configs):
    """Medians over rounds per (config, N); the rollout also as a ratio to the
    smallest N of the same configuration (N=1 when it was run)."""
    out = []
    for cfg in configs:
        base = None
        for n in nodes:
            rows = [r for r in results if r["config"] == cfg and r["nodes"] == n]
            ok = [r["rollout_s"] for r in rows if r["rollout_s"] is not None]
            s = {"config": cfg, "nodes": n, "runs": len(rows), "failed": len(rows) - len(ok),
                 "rollout_s": statistics.median(ok) if ok else None,
                 "upstream_x_image": statistics.median(r["upstream_x_image"] for r in rows),
                 "upstream_blob_gets": statistics.median(r["upstream_blob_gets"] for r in rows),
                 "upstream_big_layer_gets": statistics.median(r["upstream_big_layer_gets"] for r in rows),
                 "slowest_first_node_s": max((r["node_s"][0] for r in rows if r["node_s"]), default=None),
                 "cpu_nodes_s": statistics.median(r["cpu_nodes_s"] for r in rows),
                 "cpu_floor_s": statistics.median(r["cpu_floor_s"] for r in rows)}
            if base is None and s["rollout_s"] is not None:
                base = s["rollout_s"]
            s["rollout_vs_1"] = s["rollout_s"] / base if base and s["rollout_s"] is not None else None
            out.append(s)
    return out


def print_table(meta, summary):
    link = f"{meta['link_mbps']:.0f} Mbit/s {meta['link']}"
    print(f"## Rollout of a {meta['image_bytes'] / 1e6:.0f} MB image (4 layers) to N nodes at once, upstream behind "
          f"{link}; medians of {meta['rounds']} round(s)\n")
    print("| N | configuration | upstream bytes (x image) | upstream blob GETs (big layer) | rollout s | "
          "rollout vs N=1 | nodes' CPU s | CPU floor s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in meta["nodes"]:
        for s in (s for s in summary if s["nodes"] == n):
            roll = f"{s['rollout_s']:.2f}" if s["rollout_s"] is not None else "failed"
            ratio = f"{s['rollout_vs_1']:.2f}x" if s["rollout_vs_1"] is not None else "-"
            print(f"| {n} | {LABELS[s['config']]} | {s['upstream_x_image']:.2f} | {s['upstream_blob_gets']:g} "
                  f"({s['upstream_big_layer_gets']:g}) | {roll} | {ratio} | {s['cpu_nodes_s']:.1f} | "
                  f"{s['cpu_floor_s']:.1f} |")


def plot(doc, path):
    try:
        import matplotlib
    except ImportError:
        # pyenv's python has no matplotlib; Debian's python3-matplotlib is /usr/bin/python3's.
        if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(doc, f)
            try:
                r = subprocess.run(["/usr/bin/python3", os.path.abspath(__file__), "--plot-only", f.name,
                                    "--out", path[:-len(".png")]])
            finally:
                os.unlink(f.name)
            if r.returncode == 0:
                return
        print("no matplotlib (apt-get install -y python3-matplotlib): no chart drawn", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, summary = doc["meta"], doc["summary"]
    fig, (up, roll) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"peers": ("tab:green", "o"), "berth": ("tab:blue", "s"), "registry": ("tab:red", "^")}
    for cfg in CONFIGS:
        rows = [s for s in summary if s["config"] == cfg]
        if not rows:
            continue
        color, marker = styles[cfg]
        up.plot([s["nodes"] for s in rows], [s["upstream_x_image"] for s in rows], marker=marker, color=color,
                label=LABELS[cfg])
        ok = [s for s in rows if s["rollout_vs_1"] is not None]
        roll.plot([s["nodes"] for s in ok], [s["rollout_vs_1"] for s in ok], marker=marker, color=color,
                  label=LABELS[cfg])
        if cfg == "peers" and ok and ok[0]["rollout_s"]:
            base = ok[0]["rollout_s"]
            roll.plot([s["nodes"] for s in ok], [s["cpu_floor_s"] / base for s in ok], linestyle="--", color=color,
                      label="Berth, peers: this machine's CPU floor")
    up.set_title("Bytes from the upstream")
    up.set_ylabel("x image size")
    roll.set_title("Rollout time (last node done)")
    roll.set_ylabel("x one node alone")
    for ax in (up, roll):
        ax.set_xlabel("nodes pulling at once")
        ax.set_xticks(meta["nodes"])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{meta['image_bytes'] / 1e6:.0f} MB image, upstream link {meta['link_mbps']:.0f} Mbit/s "
                 f"({meta['link']}), {meta['date']}, {meta['cpus']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
