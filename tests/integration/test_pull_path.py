"""The pull path end to end: real registry with token auth, real skopeo and
containerd, Berth in between with the robot credentials."""

import concurrent.futures
import hashlib
import json
import os
import socket
import subprocess
import time

import pytest

import harness
from conftest import PUSHER, REDIRECT_NAME, REGISTRY_NAME, ROBOT

INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
CONTAINERD_ACCEPT = f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {INDEX}, */*"


def get(berth, path, ns=REGISTRY_NAME, method="GET", headers=None):
    sep = "&" if "?" in path else "?"
    url = berth.url + path + (f"{sep}ns={ns}" if ns else "")
    return harness.http_request(url, method=method, headers=headers)


def upstream_count(world):
    """Requests the upstream side has seen: both registries and the token issuer."""
    return (len(world["registry"].settled_requests()) + len(world["redirecting"].settled_requests())
            + len(world["issuer"].token_requests()))


def oci_error_code(body):
    return json.loads(body)["errors"][0]["code"]


# ---------------------------------------------------------------------------
# Real clients


def test_skopeo_pulls_oci_index_with_identical_digests(world, berth, tmp_path):
    out = tmp_path / "oci"
    subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", "--src-no-creds",
                    f"docker://127.0.0.1:{berth.port}/library/app:v1", f"oci:{out}:v1"],
                   check=True, capture_output=True, timeout=300)
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == world["image"]["index"]
    for digest in world["image"]["blobs"] + list(world["image"]["manifests"].values()):
        data = (out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest


def test_skopeo_pulls_docker_manifest_list_unchanged(world, berth):
    raw = harness.skopeo_inspect_raw(f"docker://127.0.0.1:{berth.port}/library/app-docker:v1")
    assert raw == world["docker_list"]
    assert json.loads(raw)["mediaType"] == DOCKER_LIST


def test_containerd_pulls_through_hosts_toml(world, berth, workdir):
    ctd = harness.Containerd(os.path.join(workdir, "containerd-pull")).start()
    try:
        certs = os.path.join(workdir, "containerd-pull", "certs.d")
        harness.write_hosts_toml(certs, REGISTRY_NAME, berth.url, harness.dead_port())
        for ref in (f"{REGISTRY_NAME}/library/app:v1", f"{REGISTRY_NAME}/library/app-docker:v1"):
            r = ctd.pull(ref, certs, namespace="test")
            assert r.returncode == 0, r.stdout + r.stderr
            assert "unpacking linux/amd64" in r.stdout
        listing = ctd.ctr("-n", "test", "images", "ls").stdout
        assert world["image"]["index"] in listing
    finally:
        ctd.stop()
    pulled = [r for r in berth.access_log() if r["ns"] == REGISTRY_NAME and r["path"].startswith("/v2/library/app/")]
    assert any(r["method"] == "HEAD" and r["route"] == "manifest" for r in pulled)
    assert any(r["route"] == "blob" and r["status"] == 200 and r["complete"] for r in pulled)
    assert all(r["status"] in (200,) for r in pulled), pulled


def test_token_issuer_saw_only_the_robot(world, berth):
    get(berth, "/v2/library/app/manifests/v1", headers={"Accept": INDEX})
    # The pusher's and containerd's own anonymous fallback pulls of public/ images
    # (test_deploy.py) are not Berth's.
    gets = [r for r in world["issuer"].token_requests()
            if r[1] != PUSHER and not any(s.startswith("repository:public/") for s in r[2])]
    assert gets, "Berth never asked the token service"
    assert all(r[0] == "GET" for r in gets), "Berth must use GET against a Harbor-style token service"
    assert {r[1] for r in gets} == {ROBOT}, f"token requests not from the robot: {gets}"
    assert any("repository:library/app:pull" in r[2] for r in gets)


def test_tokens_are_cached_and_fetched_once_under_load(world, berth):
    before = len([r for r in world["issuer"].token_requests(ROBOT) if "repository:platform/tools:pull" in r[2]])
    assert before == 0
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: get(berth, "/v2/platform/tools/manifests/v1", headers={"Accept": INDEX})[0],
                                range(100)))
    # platform/tools does not exist upstream: every answer is the upstream 404.
    assert set(results) == {404}
    fetched = [r for r in world["issuer"].token_requests(ROBOT) if "repository:platform/tools:pull" in r[2]]
    assert len(fetched) == 1, fetched


# ---------------------------------------------------------------------------
# Protocol details


def test_head_manifest_matches_get(world, berth):
    for path, accept in (("/v2/library/app/manifests/v1", CONTAINERD_ACCEPT),
                         (f"/v2/library/app/manifests/{world['image']['manifests']['amd64']}", OCI_MANIFEST),
                         ("/v2/library/app-docker/manifests/v1", CONTAINERD_ACCEPT)):
        hs, hh, hb = get(berth, path, method="HEAD", headers={"Accept": accept})
        gs, gh, gb = get(berth, path, headers={"Accept": accept})
        assert hs == gs == 200
        assert hb == b""
        assert hh["Content-Type"] == gh["Content-Type"]
        assert int(hh["Content-Length"]) == int(gh["Content-Length"]) == len(gb)
        assert hh["Docker-Content-Digest"] == gh["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(gb).hexdigest()
        assert gh["Docker-Distribution-API-Version"] == "registry/2.0"
        assert gh["OCI-Namespace"] == REGISTRY_NAME


def test_accept_is_forwarded(world, berth):
    # distribution answers an OCI index tag with 404 unless the index type is accepted.
    s, _, body = get(berth, "/v2/library/app/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert s == 404 and oci_error_code(body) == "MANIFEST_UNKNOWN"
    s, h, _ = get(berth, "/v2/library/app/manifests/v1", headers={"Accept": CONTAINERD_ACCEPT})
    assert s == 200 and h["Content-Type"] == INDEX and h["Docker-Content-Digest"] == world["image"]["index"]
    # Go clients send one Accept line per type: all of them must be forwarded.
    url = f"{berth.url}/v2/library/app/manifests/v1?ns={REGISTRY_NAME}"
    with socket.create_connection(("127.0.0.1", berth.port), timeout=10) as sock:
        sock.sendall((f"GET {url[len(berth.url):]} HTTP/1.1\r\nHost: x\r\nAccept: {DOCKER_MANIFEST}\r\n"
                      f"Accept: {INDEX}\r\nConnection: close\r\n\r\n").encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert world["image"]["index"].encode() in reply


def test_blob_get_head_and_range(world, berth):
    big = world["image"]["big_layer"]
    s, h, _ = get(berth, f"/v2/library/app/blobs/{big}", method="HEAD")
    assert s == 200 and h["Docker-Content-Digest"] == big
    size = int(h["Content-Length"])
    s, h, body = get(berth, f"/v2/library/app/blobs/{big}", headers={"Range": "bytes=1000-1999"})
    assert s == 206 and h["Content-Range"] == f"bytes 1000-1999/{size}" and len(body) == 1000
    with open(harness.blob_data_path(world["registry"].storage_root, big), "rb") as f:
        f.seek(1000)
        assert body == f.read(1000)
    s, _, _ = get(berth, f"/v2/library/app/blobs/{big}", headers={"Range": f"bytes={size}-"})
    assert s == 416


def test_blob_redirect_to_storage_drops_authorization(world, berth):
    storage = world["storage"]
    before = len(storage.requests)
    big = world["image"]["big_layer"]
    s, h, body = get(berth, f"/v2/library/app/blobs/{big}", ns=REDIRECT_NAME)
    assert s == 200, body[:300]
    assert "sha256:" + hashlib.sha256(body).hexdigest() == big
    s, h, body = get(berth, f"/v2/library/app/blobs/{big}", ns=REDIRECT_NAME, method="HEAD")
    assert s == 200 and int(h["Content-Length"]) == os.path.getsize(harness.blob_data_path(storage.root, big))
    seen = storage.requests[before:]
    assert [m for m, _, _ in seen] == ["GET", "HEAD"], seen
    assert not any(had_auth for _, _, had_auth in seen), "Authorization leaked to the storage host"


def test_tags_list_forwards_pagination(world, berth):
    s, h, body = get(berth, "/v2/library/app/tags/list?n=1&last=a")
    assert s == 200, body
    assert "v1" in json.loads(body)["tags"]
    uris = [u for _, u, _ in world["registry"].settled_requests() if "/tags/list" in u]
    assert any("n=1" in u and "last=a" in u for u in uris), uris


# ---------------------------------------------------------------------------
# Refusals


def test_bad_requests_never_reach_upstream(world, berth):
    before = upstream_count(world)
    digest_upper = "sha256:" + "A" * 64
    cases = [
        (f"/v2/library/app/manifests/v1?ns=evil.example", None, 404, "NAME_UNKNOWN"),
        (f"/v2/library/app/manifests/v1?ns=169.254.169.254", None, 404, "NAME_UNKNOWN"),
        ("/v2/Library/App/manifests/v1", REGISTRY_NAME, 400, "NAME_INVALID"),
        ("/v2/library/%2e%2e/app/manifests/v1", REGISTRY_NAME, 400, "NAME_INVALID"),
        ("/v2/library%2fapp/manifests/v1", REGISTRY_NAME, 400, "NAME_INVALID"),
        (f"/v2/library/app/blobs/{digest_upper}", REGISTRY_NAME, 400, "DIGEST_INVALID"),
        ("/v2/library/app/blobs/sha256:abc", REGISTRY_NAME, 400, "DIGEST_INVALID"),
        ("/v2/library/app/manifests/-bad", REGISTRY_NAME, 404, "MANIFEST_UNKNOWN"),
        ("/v2/other/app/manifests/v1", REGISTRY_NAME, 404, "NAME_UNKNOWN"),  # outside the allowlist
        ("/v2/" + "a" * 5000 + "/manifests/v1", REGISTRY_NAME, 414, "NAME_INVALID"),
    ]
    for path, ns, status, code in cases:
        s, h, body = get(berth, path, ns=ns)
        assert s == status, (path, s, body)
        assert oci_error_code(body) == code, (path, body)
        assert h["Content-Type"] == "application/json"
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        s, _, body = get(berth, "/v2/library/app/manifests/v1", method=method)
        assert s == 405 and oci_error_code(body) == "UNSUPPORTED"
    # Oversized headers.
    with socket.create_connection(("127.0.0.1", berth.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert upstream_count(world) == before, "a rejected request reached the upstream"


def test_robot_without_access_gets_a_clear_error_fast(world, berth):
    t = time.monotonic()
    s, h, body = get(berth, "/v2/private/secret/manifests/v1", headers={"Accept": CONTAINERD_ACCEPT})
    assert time.monotonic() - t < 5
    assert s in (401, 403)
    assert oci_error_code(body) in ("UNAUTHORIZED", "DENIED")
    assert "WWW-Authenticate" not in h, "the upstream's challenge must not reach the client"


def test_upstream_404_is_manifest_unknown(world, berth):
    s, _, body = get(berth, "/v2/library/app/manifests/nope", headers={"Accept": CONTAINERD_ACCEPT})
    assert s == 404 and oci_error_code(body) == "MANIFEST_UNKNOWN"
    s, _, body = get(berth, "/v2/library/app/blobs/sha256:" + "0" * 64)
    assert s == 404 and oci_error_code(body) == "BLOB_UNKNOWN"


# A client's Authorization never reaching the upstream is tested where the upstream's
# request headers can be seen: test_faults.py::test_a_clients_authorization_never_reaches_the_upstream.


# ---------------------------------------------------------------------------
# Verification


def test_tampered_manifest_and_blob_are_not_relayed(world, berth, tmp_path):
    img = harness.make_small_image(str(tmp_path / "tamper"), seed=4242)
    harness.skopeo_push(str(tmp_path / "tamper"), f"docker://127.0.0.1:{world['registry'].port}/library/tamper:v1",
                        world["pusher_creds"])
    root = world["registry"].storage_root
    # Same length, different bytes: the registry serves them without noticing.
    mpath = harness.blob_data_path(root, img["manifest"])
    data = open(mpath, "rb").read()
    tampered = data.replace(b'"schemaVersion": 2', b'"schemaVersion":2 ')
    assert tampered != data and len(tampered) == len(data)
    open(mpath, "wb").write(tampered)
    lpath = harness.blob_data_path(root, img["layer"])
    layer = bytearray(open(lpath, "rb").read())
    layer[-100] ^= 0xFF
    open(lpath, "wb").write(bytes(layer))
    mismatches = berth.metric("berth_digest_mismatches_total")

    s, _, body = get(berth, f"/v2/library/tamper/manifests/{img['manifest']}", headers={"Accept": OCI_MANIFEST})
    assert s == 502 and oci_error_code(body) == "DIGEST_INVALID"

    # The blob is cut short: the client never receives the whole of a wrong blob.
    url = f"/v2/library/tamper/blobs/{img['layer']}?ns={REGISTRY_NAME}"
    with socket.create_connection(("127.0.0.1", berth.port), timeout=10) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {img['layer_size']}".encode() in head
    assert len(body) < img["layer_size"]
    assert berth.metric("berth_digest_mismatches_total") >= mismatches + 2


# ---------------------------------------------------------------------------
# Operations


def test_admin_endpoints(world, berth):
    s, h, body = harness.http_request(f"http://127.0.0.1:{berth.admin_port}/healthz")
    assert s == 200
    s, _, _ = harness.http_request(f"http://127.0.0.1:{berth.admin_port}/readyz")
    assert s == 200
    metrics = berth.metrics()
    for family in ("berth_http_requests_total", "berth_http_request_duration_seconds", "berth_upstream_requests_total",
                   "berth_upstream_request_duration_seconds", "berth_token_fetches_total",
                   "berth_http_response_bytes_total", "berth_ready"):
        assert f"# TYPE {family}" in metrics, family
    assert berth.metric("berth_token_fetches_total", result="ok") >= 1
    assert berth.metric("berth_http_requests_total", route="manifest", status="200") >= 1
    assert world["robot_password"] not in metrics
    # The mirror port does not serve metrics.
    s, _, _ = harness.http_request(f"{berth.url}/metrics")
    assert s == 404


def test_access_log_is_structured(world, berth):
    # A tag never asked for, so the answer comes from the upstream (a cached one has upstream_status 0).
    tag = "never-" + os.urandom(4).hex()
    get(berth, f"/v2/library/app/manifests/{tag}", headers={"Accept": INDEX})
    def logged():
        return [r for r in berth.access_log() if r["path"].startswith(f"/v2/library/app/manifests/{tag}")]

    # The line is written once the response is out: the client may see the response first.
    harness.wait_for(logged, timeout=5, what="the access log line")
    rec = logged()[-1]
    for key in ("ts", "method", "path", "ns", "status", "bytes", "duration_ms", "upstream_status"):
        assert key in rec, key
    assert rec["status"] == 404 and rec["upstream_status"] == 404 and rec["ns"] == REGISTRY_NAME


def test_streaming_a_big_blob_keeps_memory_flat(world, berth):
    with open(f"/proc/{berth.proc.pid}/maps") as f:
        if "libasan" in f.read():
            pytest.skip("AddressSanitizer's quarantine and shadow memory make RSS meaningless")
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    assert size > 100 * 1024 * 1024
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda _: get(berth, f"/v2/library/app/blobs/{big}")[2], range(4)))
    assert all(len(b) == size for b in bodies)
    with open(f"/proc/{berth.proc.pid}/status") as f:
        hwm_kb = int([l for l in f if l.startswith("VmHWM:")][0].split()[1])
    # Four concurrent 200 MB streams; the peak resident size stays far below one blob.
    assert hwm_kb < 64 * 1024, f"peak RSS {hwm_kb} kB"
