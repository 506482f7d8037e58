"""The blob cache against the real registry: one upstream fetch per blob however
many clients want it, verified before it is ever a hit, served from disk after."""

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_at, berth_binary, berth_config, write_docker_config


@pytest.fixture
def cached_berth(world, tmp_path):
    """A Berth with an empty cache of its own (each test starts cold)."""
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    cache = tmp_path / "cache"
    started = []

    def start(max_size="2GiB"):
        b = harness.Berth(berth_binary(), str(tmp_path / f"berth{len(started)}"),
                          berth_config(world, str(secret), extra_top=f"cache:\n  dir: {cache}\n  max_size: {max_size}\n"))
        b.cache_dir = cache
        started.append(b.start())
        return b

    yield start
    for b in started:
        b.stop()


def blob_gets(world, digest):
    return [r for r in world["registry"].settled_requests()
            if r[0] == "GET" and r[1].endswith(f"/blobs/{digest}") and r[2] in (200, 206)]


def curl_sha256(url, extra=()):
    """Downloads with curl and hashes in C: cheap enough for 50 parallel 200 MB bodies."""
    out = subprocess.run(f"curl -sf {' '.join(extra)} '{url}' | sha256sum", shell=True, capture_output=True,
                         text=True, timeout=600)
    return out.stdout.split()[0]


def test_fifty_concurrent_cold_gets_cause_one_upstream_fetch(world, cached_berth):
    b = cached_berth()
    big = world["image"]["big_layer"]
    before = len(blob_gets(world, big))
    url = f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}"
    results = []
    threads = [threading.Thread(target=lambda: results.append(curl_sha256(url))) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50
    assert set(results) == {big.split(":")[1]}, "every client must receive the verified blob"
    assert len(blob_gets(world, big)) == before + 1, "exactly one upstream GET"
    assert b.metric("berth_cache_requests_total", result="miss") == 1
    assert b.metric("berth_cache_requests_total", result="coalesced") + b.metric(
        "berth_cache_requests_total", result="hit") == 49
    # Clients get the last byte once it is verified; the fill then fsyncs and publishes.
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, timeout=30,
                     what="the fill to be published")
    # Now a hit: served from disk, no upstream traffic.
    assert curl_sha256(url) == big.split(":")[1]
    assert len(blob_gets(world, big)) == before + 1


def test_second_containerd_pull_fetches_no_blob_upstream(world, cached_berth, workdir, tmp_path):
    b = cached_berth()
    certs = tmp_path / "certs.d"
    harness.write_hosts_toml(str(certs), REGISTRY_NAME, b.url, harness.dead_port())
    counts = []
    for attempt in range(2):
        before = [r for r in world["registry"].settled_requests() if "/blobs/" in r[1] and r[0] == "GET" and r[2] == 200]
        r = harness.pull_with_fresh_containerd(tmp_path / f"containerd{attempt}", certs,
                                               f"{REGISTRY_NAME}/library/app:v1")
        assert r.returncode == 0, r.stdout + r.stderr
        after = [r for r in world["registry"].settled_requests() if "/blobs/" in r[1] and r[0] == "GET" and r[2] == 200]
        counts.append(len(after) - len(before))
    assert counts[0] >= 3  # config + two layers, fetched once
    assert counts[1] == 0, "the second pull must be served from the cache"
    assert b.metric("berth_cache_requests_total", result="hit") >= 3


def test_a_client_that_leaves_early_does_not_stop_the_fill(world, cached_berth):
    b = cached_berth()
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    before = len(blob_gets(world, big))
    with socket.create_connection(("127.0.0.1", b.port), timeout=30) as sock:
        sock.sendall(f"GET /v2/library/app/blobs/{big}?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < size // 10:
            got += len(sock.recv(1 << 20))
    # The client is gone at ~10%; the fill goes on and publishes the blob.
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, timeout=60,
                     what="the fill to complete")
    assert curl_sha256(f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}") == big.split(":")[1]
    assert len(blob_gets(world, big)) == before + 1


def test_wrong_bytes_leave_nothing_in_the_cache(world, cached_berth, tmp_path):
    b = cached_berth()
    img = harness.make_small_image(str(tmp_path / "bad"), seed=777)
    harness.skopeo_push(str(tmp_path / "bad"), f"docker://127.0.0.1:{world['registry'].port}/library/badcache:v1",
                        world["pusher_creds"])
    path = harness.blob_data_path(world["registry"].storage_root, img["layer"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    url = f"/v2/library/badcache/blobs/{img['layer']}?ns={REGISTRY_NAME}"
    for attempt in range(2):
        with socket.create_connection(("127.0.0.1", b.port), timeout=30) as sock:
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(1 << 16):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        # Either the fill failed before the answer began (a 502), or the body is cut
        # short before its last byte: never the whole of a wrong blob.
        if head.startswith(b"HTTP/1.1 502"):
            assert b"digest_mismatch" in body
        else:
            assert head.startswith(b"HTTP/1.1 200")
            assert len(body) < img["layer_size"], "a wrong blob must never arrive whole"
    assert b.metric("berth_cache_fills_total", result="failed_digest_mismatch") == 2
    assert not os.path.exists(os.path.join(b.cache_dir, "blobs", "sha256", img["layer"][7:9], img["layer"][7:]))
    assert os.listdir(os.path.join(b.cache_dir, "tmp")) == []
    assert len(blob_gets(world, img["layer"])) == 2  # never a hit: each attempt went upstream


def test_range_on_cached_and_in_flight_blobs(world, tmp_path):
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    with open(harness.blob_data_path(world["registry"].storage_root, big), "rb") as f:
        f.seek(size - 1000)
        tail = f.read()
    # The upstream behind a 50 MB/s link: the fill takes seconds, so the range really
    # arrives while it is under way.
    link = harness.FaultProxy(world["registry"].port, rate=50e6)
    b = berth_at(world, str(tmp_path), f"https://127.0.0.1:{link.port}", cache_dir=tmp_path / "cache")
    try:
        url = f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}"
        before = len(blob_gets(world, big))
        results = {}
        t = threading.Thread(target=lambda: results.update(full=curl_sha256(url)))
        t.start()
        tmp = os.path.join(tmp_path, "cache", "tmp")
        harness.wait_for(lambda: os.path.isdir(tmp) and os.listdir(tmp), what="the fill to be under way")
        # In flight: a resume-style open range while the fill is still running.
        s, h, body = harness.http_request(url, headers={"Range": f"bytes={size - 1000}-"})
        assert s == 206 and h["Content-Range"] == f"bytes {size - 1000}-{size - 1}/{size}" and body == tail
        assert b.metric("berth_cache_requests_total", result="coalesced") == 1, "the range joined the fill under way"
        t.join()
        assert results["full"] == big.split(":")[1]
        harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, what="the publish")
        # Cached: exact ranges, and 416 past the end.
        s, h, body = harness.http_request(url, headers={"Range": "bytes=10-19"})
        assert s == 206 and h["Content-Range"] == f"bytes 10-19/{size}" and len(body) == 10
        s, h, _ = harness.http_request(url, headers={"Range": f"bytes={size}-"})
        assert s == 416 and h["Content-Range"] == f"bytes */{size}"
        assert b.metric("berth_cache_requests_total", result="hit") == 2
        assert len(blob_gets(world, big)) == before + 1, "one upstream fetch for the fill, the range and the hits"
    finally:
        b.stop()
        link.stop()


def test_head_on_a_hit_needs_no_upstream(world, cached_berth):
    b = cached_berth()
    layer = world["image"]["blobs"][0]
    url = f"{b.url}/v2/library/app/blobs/{layer}?ns={REGISTRY_NAME}"
    s, _, body = harness.http_request(url)
    assert s == 200
    # The publish follows the client's last byte on the store's disk thread; until it
    # is indexed a HEAD is a miss, asked upstream.
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, what="the publish")
    before = len(world["registry"].settled_requests())
    s, h, hb = harness.http_request(url, method="HEAD")
    assert s == 200 and hb == b"" and int(h["Content-Length"]) == len(body) and h["Docker-Content-Digest"] == layer
    assert len(world["registry"].settled_requests()) == before


def test_kill_9_mid_fill_never_serves_a_partial_blob(world, cached_berth):
    b = cached_berth()
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    client = subprocess.Popen(["curl", "-s", "-o", "/dev/null", f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}"])
    tmp = os.path.join(b.cache_dir, "tmp")

    def partly_written():
        names = os.listdir(tmp) if os.path.isdir(tmp) else []
        return any(0 < os.path.getsize(os.path.join(tmp, n)) < size for n in names)

    harness.wait_for(partly_written, timeout=30, what="a fill under way")
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    client.wait(timeout=30)
    assert os.listdir(tmp), "the killed fill left its temp file"
    b2 = cached_berth()  # same cache dir
    opened = [l for l in b2.log().splitlines() if '"event":"cache_opened"' in l][0]
    assert '"temp_files_removed":0' not in opened
    harness.wait_for(lambda: '"event":"cache_index_read"' in b2.log(), what="the cache index read")
    read = [l for l in b2.log().splitlines() if '"event":"cache_index_read"' in l][0]
    assert '"blobs":0' in read and '"complete":true' in read
    assert os.listdir(tmp) == []
    assert curl_sha256(f"{b2.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}") == big.split(":")[1]
    assert b2.metric("berth_cache_requests_total", result="miss") == 1


def test_eviction_spares_a_blob_being_read_and_then_keeps_the_limit(world, cached_berth):
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    limit = size + 1024 * 1024  # the big layer fits, the big layer plus the 2 MB shared layer does not
    b = cached_berth(max_size=str(limit))
    url = f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}"
    assert curl_sha256(url) == big.split(":")[1]
    # A slow reader holds the big blob open while another blob pushes the cache over its limit.
    slow = {}
    t = threading.Thread(target=lambda: slow.update(sha=curl_sha256(url, ["--limit-rate", "40M"])))
    t.start()
    # A hit, or (when it came before the publish on the disk thread was done) a follower
    # of the finished fill: either way a reader that eviction must spare.
    harness.wait_for(lambda: b.metric("berth_cache_requests_total", result="hit")
                     + b.metric("berth_cache_requests_total", result="coalesced") >= 1, what="the slow reader")
    root = world["registry"].storage_root
    others = sorted((d for d in world["image"]["blobs"] if d != big),
                    key=lambda d: os.path.getsize(harness.blob_data_path(root, d)))
    shared = others[-1]  # the 2 MB layer: with it the cache is over its limit
    assert os.path.getsize(harness.blob_data_path(root, shared)) > 1024 * 1024
    assert harness.http_request(f"{b.url}/v2/library/app/blobs/{shared}?ns={REGISTRY_NAME}")[0] == 200
    assert t.is_alive(), "the reader was still reading when the cache went over its limit"
    t.join()
    assert slow["sha"] == big.split(":")[1], "eviction must not break a reader"
    hexd = big.split(":")[1]
    assert os.path.exists(os.path.join(b.cache_dir, "blobs", "sha256", hexd[:2], hexd)), \
        "the blob being read must stay cached (eviction took another)"
    # With the reader gone, the next fill evicts the least recently used blobs.
    other = others[0]
    assert harness.http_request(f"{b.url}/v2/library/app/blobs/{other}?ns={REGISTRY_NAME}")[0] == 200
    # Publishing and evicting run on the store's disk thread, after the client's last byte.
    harness.wait_for(lambda: b.metric("berth_cache_evictions_total") >= 1, timeout=10, what="an eviction")
    harness.wait_for(lambda: b.metric("berth_cache_size_bytes") <= limit, timeout=10, what="the cache within its limit")


def test_an_upstream_that_breaks_mid_blob_is_resumed(world, tmp_path):
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    proxy = harness.FaultProxy(world["registry"].port, cut_after=int(size * 0.3))
    b = berth_at(world, str(tmp_path), f"https://127.0.0.1:{proxy.port}", cache_dir=tmp_path / "cache")
    try:
        before = len([r for r in world["registry"].settled_requests() if r[2] == 206 and big in r[1]])
        got = curl_sha256(f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}")
        assert proxy.cut_count == 1, "the fault proxy did not cut the transfer"
        assert got == big.split(":")[1], "the client must get the whole, right blob in one body"
        assert b.metric("berth_cache_resumes_total", result="ok") == 1
        harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, timeout=30,
                         what="the fill to be published")
        ranged = [r for r in world["registry"].settled_requests() if r[2] == 206 and big in r[1]]
        assert len(ranged) == before + 1, "the rest came with one Range request"
    finally:
        b.stop()
        proxy.stop()


def test_cache_cli_stats_ls_verify_gc(world, cached_berth, tmp_path):
    b = cached_berth()
    blobs = world["image"]["blobs"][:3]
    for d in blobs:
        assert harness.http_request(f"{b.url}/v2/library/app/blobs/{d}?ns={REGISTRY_NAME}")[0] == 200
    # A client has its last byte once the blob is verified; the publish (fsync, rename,
    # index) follows on the store's disk thread.
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 3, what="the publishes")
    cli = lambda *a: subprocess.run([berth_binary(), "cache", *a, "--config", b.config_path],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    # Read-only commands work while Berth runs; verify and gc refuse with a reason.
    r = cli("stats")
    assert r.returncode == 0 and "blobs: 3" in r.stdout, r.stdout + r.stderr
    r = cli("ls")
    assert r.returncode == 0 and sorted(l.split()[0] for l in r.stdout.splitlines()) == sorted(blobs)
    r = cli("verify")
    assert r.returncode != 0 and "stop it first" in r.stderr
    tmp_before = os.listdir(os.path.join(b.cache_dir, "tmp"))
    b.stop()
    # Corrupt one cached blob: verify finds and removes it.
    bad = blobs[1]
    path = os.path.join(b.cache_dir, "blobs", "sha256", bad[7:9], bad[7:])
    data = bytearray(open(path, "rb").read())
    data[0] ^= 0xFF
    open(path, "wb").write(bytes(data))
    r = cli("verify")
    assert r.returncode == 1 and f"removed {bad}: content hashes to" in r.stdout and "3 blobs" in r.stdout, r.stdout
    assert not os.path.exists(path)
    assert cli("verify").returncode == 0
    assert "blobs: 2" in cli("stats").stdout
    # gc: with a limit below what is cached, it evicts down to the low watermark.
    cfg = open(b.config_path).read().replace("max_size: 2GiB", "max_size: 100")  # below any blob
    open(b.config_path, "w").write(cfg)
    r = cli("gc")
    import re

    m = re.search(r"freed (\d+) bytes .*; (\d+) bytes in (\d+) blobs remain \(target (\d+)\)", r.stdout)
    assert r.returncode == 0 and m, r.stdout + r.stderr
    freed, remaining, count, target = map(int, m.groups())
    assert freed > 0 and remaining <= target == 85 and count == 0
    assert tmp_before == []


def test_a_hit_is_served_only_where_the_upstream_would_serve_it(world, cached_berth):
    """The same layer is in library/app and library/app-docker (the robot may read
    both) and in private/secret (it may not). Cached for one, it is served to another
    repository only after the upstream says that repository may have it."""
    b = cached_berth()
    layer = world["image"]["blobs"][0]

    def url(repo):
        return f"{b.url}/v2/{repo}/blobs/{layer}?ns={REGISTRY_NAME}"

    assert harness.http_request(url("library/app"))[0] == 200
    # Cached: published, not still being filled (a HEAD during the fill goes upstream).
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, what="the publish")
    for method in ("GET", "HEAD"):
        s, h, body = harness.http_request(url("private/secret"), method=method)
        assert s == 401, (method, s, body)
        assert "WWW-Authenticate" not in h
        if method == "GET":
            assert b'"UNAUTHORIZED"' in body and len(body) < 1000
    assert b.metric("berth_cache_requests_total", result="denied") == 2

    def upstream_for(repo):
        return [r for r in world["registry"].settled_requests() if r[1].startswith(f"/v2/{repo}/blobs/{layer}")]

    before = len(upstream_for("library/app-docker"))
    s, _, body = harness.http_request(url("library/app-docker"))
    assert s == 200 and hashlib.sha256(body).hexdigest() == layer.split(":")[1]
    asked = upstream_for("library/app-docker")[before:]
    assert [r[0] for r in asked if r[2] == 200] == ["HEAD"], asked  # one check, no second download
    assert harness.http_request(url("library/app-docker"))[0] == 200
    assert len(upstream_for("library/app-docker")) == before + len(asked)  # now remembered
    assert b.metric("berth_cache_requests_total", result="authorized") == 1


def test_a_full_cache_disk_still_serves_whole_verified_blobs(world, tmp_path):
    """The cache lives on a real 24 MB tmpfs: the 200 MB layer fills it mid-way."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    b = None
    try:
        secret = tmp_path / "dockerconfigjson"
        write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
        b = harness.Berth(berth_binary(), str(tmp_path / "berth"),
                          berth_config(world, str(secret), extra_top=f"cache:\n  dir: {mnt}/cache\n  max_size: 1GiB\n")).start()
        big = world["image"]["big_layer"]
        url = f"{b.url}/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}"
        results = []
        threads = [threading.Thread(target=lambda: results.append(curl_sha256(url))) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [big.split(":")[1]] * 5, "every client gets the whole, verified blob"
        assert b.metric("berth_cache_disk_errors_total") >= 1
        assert b.metric("berth_cache_disk_fallbacks_total") >= 5
        # While the disk is known full, new requests stream from upstream without caching.
        assert curl_sha256(url) == big.split(":")[1]
        assert b.metric("berth_cache_disk_fallbacks_total") >= 6
        assert os.listdir(mnt / "cache" / "tmp") == []
        assert b.log().count('"event":"cache_unwritable"') == 1  # logged once per outage
        # Stopping on the full disk: RocksDB writes nothing on close, so it cannot abort.
        assert b.stop() == 0
        assert '"event":"shutdown_complete"' in b.log(), b.log()[-3000:]
    finally:
        if b:
            b.stop()
        subprocess.run(["umount", str(mnt)])
