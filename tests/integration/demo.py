"""Berth's self-contained demo (run by `bash .ci/dev demo`).

1. Starts a stand-in Harbor on loopback: a Harbor-like token service and the CNCF
   registry with token auth, and pushes a sample multi-arch image to it.
2. Writes a robot-account Secret file and a Berth config, and starts Berth.
3. Starts a private containerd pointed at Berth through hosts.toml and pulls the
   image with no credentials of its own.
4. Shows what Berth logged and a few of its metrics, then stops everything.
"""

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REGISTRY = "registry.example.internal"
ROBOT = harness.StandInHarbor.ROBOT


def step(text):
    print(f"\n--- {text}", flush=True)


def main():
    binary = os.environ.get("BERTH_BIN")
    if not binary or not os.path.exists(binary):
        sys.exit("BERTH_BIN must name the built berth binary")
    work = tempfile.mkdtemp(prefix="berth-demo-")
    stop = []
    try:
        step("starting a stand-in Harbor (token service + CNCF registry, TLS, token auth)")
        harbor = harness.StandInHarbor(work, int(os.environ.get("BERTH_DEMO_LAYER_MB", "32")))
        stop.append(harbor.stop)
        pki, issuer, registry, image = harbor.pki, harbor.issuer, harbor.registry, harbor.image
        print(f"registry {registry.endpoint}, token realm {issuer.realm}")
        print(f"pushed a sample two-platform image as library/app:v1, index digest {image['index']}")

        step("starting Berth with the robot account's dockerconfigjson Secret")
        secret = harbor.robot_secret(os.path.join(work, "harbor-pull", ".dockerconfigjson"), REGISTRY)
        config = f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
registries:
  - names: [{REGISTRY}]
    endpoint: {registry.endpoint}
    credentials: {secret}
    repositories: ["library/*"]
    ca_file: {pki.ca_file}
default_registry: {REGISTRY}
cache:
  dir: {os.path.join(work, "cache")}
  max_size: 1GiB
"""
        print(config)
        berth = harness.Berth(binary, os.path.join(work, "berth"), config).start()
        stop.append(berth.stop)
        print(f"Berth serves the mirror on {berth.url}, metrics on http://127.0.0.1:{berth.admin_port}/metrics")

        certs = os.path.join(work, "certs.d")
        harness.write_hosts_toml(certs, REGISTRY, berth.url, harness.dead_port())
        with open(os.path.join(certs, REGISTRY, "hosts.toml")) as f:
            print(f"{certs}/{REGISTRY}/hosts.toml:\n{f.read()}")
        blob_fetches = []
        for attempt in ("first", "second"):
            step(f"{attempt} pull of {REGISTRY}/library/app:v1 by a fresh containerd through Berth (no credentials)")
            ctd = harness.Containerd(os.path.join(work, f"containerd-{attempt}")).start()
            stop.append(ctd.stop)
            seen = registry.settled_requests()
            before = len([r for r in seen if "/blobs/" in r[1] and r[2] == 200])
            manifests_before = len([r for r in seen if "/manifests/" in r[1] and r[2] == 200])
            started = time.monotonic()
            r = ctd.pull(f"{REGISTRY}/library/app:v1", certs, namespace="demo")
            print("\n".join(line for line in r.stdout.splitlines() if "done:" in line or "unpacking" in line))
            if r.returncode != 0:
                print(r.stdout, r.stderr)
                sys.exit("the pull through Berth failed")
            seen = registry.settled_requests()
            fetched = len([r for r in seen if "/blobs/" in r[1] and r[2] == 200]) - before
            manifests = len([r for r in seen if "/manifests/" in r[1] and r[2] == 200]) - manifests_before
            blob_fetches.append(fetched + manifests)
            print(f"pulled in {time.monotonic() - started:.1f}s; fetched from the stand-in Harbor: {manifests} manifest(s), "
                  f"{fetched} blob(s)")
            ctd.stop()

        step("Berth's access log (one JSON line per request)")
        for rec in berth.access_log():
            print(f"{rec['method']:4} {rec['status']} {rec['bytes']:>10} B {rec['duration_ms']:8.1f} ms  {rec['path'][:100]}")

        step("a few of Berth's metrics")
        for line in berth.metrics().splitlines():
            if line.startswith(("berth_http_requests_total", "berth_token_fetches_total", "berth_upstream_requests_total",
                                "berth_http_response_bytes_total", "berth_cache_requests_total",
                                "berth_cache_served_bytes_total", "berth_cache_size_bytes", "berth_metadata_lookups_total",
                                "berth_ready")):
                print(line)
        robot_fetches = len(issuer.token_requests(ROBOT))
        print(f"\nthe token service issued {robot_fetches} token(s) to {ROBOT}; containerd sent no credentials")
        if blob_fetches[1] != 0:
            sys.exit(f"the second pull fetched {blob_fetches[1]} manifests/blobs upstream; the caches should have served them")
        print("the second pull was served from Berth's caches (metadata within tag_ttl, blobs on disk): "
              "nothing went to the stand-in Harbor")
        print("\ndemo passed")
    finally:
        for fn in reversed(stop):
            fn()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
