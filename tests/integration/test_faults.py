"""The fault table (tests/README.md): a hostile upstream, a damaged disk, a wedged
worker. A FaultyUpstream stands between Berth and the real registry; every test
asserts the bytes each client received (hash and whether the body arrived whole)
and what the cache holds afterwards."""

import base64
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_at, berth_binary, write_docker_config

REPO = "library/faults"


@pytest.fixture(scope="module")
def faulty(world):
    up = harness.FaultyUpstream(world["registry"].port, world["pki"].ca_file)
    yield up
    up.stop()


@pytest.fixture(scope="module")
def image(world, tmp_path_factory):
    layout = tmp_path_factory.mktemp("faults-image")
    img = harness.make_small_image(str(layout), seed=424242)
    harness.skopeo_push(str(layout), f"docker://127.0.0.1:{world['registry'].port}/{REPO}:v1", world["pusher_creds"])
    return img


@pytest.fixture
def start_berth(world, faulty, tmp_path):
    """Starts Berths whose upstream is the FaultyUpstream; stops them at the end."""
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    started = []
    faulty.clear()

    def start(cache=True, cache_dir=None, extra_top="", upstream=None, env=None, wait=True):
        cache_dir = cache_dir or tmp_path / "cache"
        up = {"response_timeout": "5s", "read_timeout": "5s", **(upstream or {})}
        up_lines = "".join(f"  {k}: {v}\n" for k, v in up.items())
        cfg = f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
threads: 2
registries:
  - names: [{REGISTRY_NAME}]
    endpoint: {faulty.endpoint}
    credentials: {secret}
    ca_file: {world['pki'].ca_file}
default_registry: {REGISTRY_NAME}
upstream:
{up_lines}{f"cache:{chr(10)}  dir: {cache_dir}{chr(10)}" if cache else ""}{extra_top}"""
        b = harness.Berth(berth_binary(), str(tmp_path / f"berth{len(started)}"), cfg, env=env)
        b.cache_dir = str(cache_dir)
        started.append(b)
        return b.start() if wait else b

    yield start
    for b in started:
        b.stop()
    faulty.clear()


def blob_target(digest, repo=REPO):
    return f"/v2/{repo}/blobs/{digest}?ns={REGISTRY_NAME}"


def cached_file(b, digest):
    hexd = digest.split(":", 1)[1]
    return os.path.join(b.cache_dir, "blobs", "sha256", hexd[:2], hexd)


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_gets(faulty, digest):
    return faulty.count("GET", f"/blobs/{digest}$", status=200)


def assert_never_whole_and_wrong(status, body, complete, size, digest):
    """The promise: a client never receives the whole of a wrong blob."""
    if status == 200 and complete:
        assert sha(body) == digest, "a complete 200 must carry the right bytes"
    else:
        # Cut short by its own framing (the client knows it is incomplete), or an error.
        assert not complete or status >= 500


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_blob_without_length_is_streamed_and_verified_without_cache(start_berth, faulty, image, framing):
    b = start_berth(cache=False)
    faulty.add("GET", f"/blobs/{image['layer']}$", framing=framing)
    status, hdrs, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete) == (200, True)
    assert sha(body) == image["layer"]
    assert "content-length" not in hdrs  # passed on as it came: chunked


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_flipped_byte_in_a_blob_without_length_never_arrives_whole(start_berth, faulty, image, framing):
    b = start_berth(cache=False)
    faulty.add("GET", f"/blobs/{image['layer']}$", framing=framing, flip=image["layer_size"] - 10)
    for _ in range(3):
        status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
        assert status == 200 and not complete, "the cut must come before the body ends"
        assert len(body) < image["layer_size"]
        assert_never_whole_and_wrong(status, body, complete, image["layer_size"], image["layer"])
    assert b.metric("berth_digest_mismatches_total", kind="blob") == 3


def test_chunked_blob_is_cached_verified_and_then_a_hit(start_berth, faulty, image):
    b = start_berth()
    faulty.add("GET", f"/blobs/{image['layer']}$", framing="chunked")
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") == 1, what="the fill")
    assert sha(open(cached_file(b, image["layer"]), "rb").read()) == image["layer"]
    before = blob_gets(faulty, image["layer"])
    status, hdrs, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert hdrs["content-length"] == str(image["layer_size"])  # a hit knows its size
    assert blob_gets(faulty, image["layer"]) == before, "a hit asks the upstream for no bytes"


def test_flipped_byte_in_a_chunked_blob_is_never_cached(start_berth, faulty, image):
    b = start_berth()
    faulty.add("GET", f"/blobs/{image['layer']}$", framing="chunked", flip=1000)
    for _ in range(2):
        status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
        assert_never_whole_and_wrong(status, body, complete, image["layer_size"], image["layer"])
        assert status == 502 or not complete  # failed before the answer began, or cut short
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="failed_digest_mismatch") == 2,
                     what="both fills to fail")
    assert not os.path.exists(cached_file(b, image["layer"]))
    assert os.listdir(os.path.join(b.cache_dir, "tmp")) == []


def fill_cache(b, faulty, image):
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="completed") >= 1, what="the fill")


def flip_on_disk(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("zero_copy", [True, False])
def test_damaged_cache_file_is_detected_dropped_and_refilled(start_berth, faulty, image, zero_copy):
    b = start_berth(extra_top=f"  zero_copy: {'true' if zero_copy else 'false'}\n")
    fill_cache(b, faulty, image)
    gets = blob_gets(faulty, image["layer"])
    flip_on_disk(cached_file(b, image["layer"]), image["layer_size"] // 2)
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert status == 200 and not complete, "a damaged file must not be served whole"
    assert_never_whole_and_wrong(status, body, complete, image["layer_size"], image["layer"])
    assert b.metric("berth_digest_mismatches_total", registry="cache", kind="damaged") == 1
    # Dropped from the index at once; the file goes on the store's disk thread.
    harness.wait_for(lambda: not os.path.exists(cached_file(b, image["layer"])), timeout=5,
                     what="the damaged file to be dropped")
    # The next request refills it from the upstream, and the cache holds good bytes again.
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert blob_gets(faulty, image["layer"]) == gets + 1
    harness.wait_for(lambda: os.path.exists(cached_file(b, image["layer"])), what="the refill")
    assert sha(open(cached_file(b, image["layer"]), "rb").read()) == image["layer"]


def test_damaged_cache_file_is_caught_after_a_restart(start_berth, faulty, image):
    b = start_berth()
    fill_cache(b, faulty, image)
    b.stop()
    flip_on_disk(cached_file(b, image["layer"]), 7)
    b2 = start_berth()
    status, _, body, complete = harness.raw_get(b2.port, blob_target(image["layer"]))
    assert status == 200 and not complete
    assert_never_whole_and_wrong(status, body, complete, image["layer_size"], image["layer"])
    status, _, body, complete = harness.raw_get(b2.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])


def test_an_untouched_file_is_trusted_after_a_restart_and_a_touched_one_is_proven_once(start_berth, faulty, image):
    b = start_berth()
    fill_cache(b, faulty, image)
    b.stop()
    b2 = start_berth()
    status, _, body, complete = harness.raw_get(b2.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert '"cache_blob_proven"' not in b2.log(), "an unchanged file needs no hashing"
    os.chmod(cached_file(b2, image["layer"]), 0o600)  # changes the ctime, not the bytes
    for _ in range(2):
        status, _, body, complete = harness.raw_get(b2.port, blob_target(image["layer"]))
        assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert b2.log().count('"cache_blob_proven"') == 1, "hashed once, then trusted again"


def test_truncated_cache_file_is_a_miss_and_refilled(start_berth, faulty, image):
    b = start_berth()
    fill_cache(b, faulty, image)
    gets = blob_gets(faulty, image["layer"])
    os.truncate(cached_file(b, image["layer"]), image["layer_size"] // 3)
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"]), "caught on open: the client never notices"
    assert b.metric("berth_digest_mismatches_total", registry="cache", kind="damaged") == 1
    assert blob_gets(faulty, image["layer"]) == gets + 1
    harness.wait_for(lambda: os.path.getsize(cached_file(b, image["layer"])) == image["layer_size"],
                     what="the refill")


def test_manifest_by_tag_with_wrong_bytes_is_retried_then_refused(start_berth, faulty, image):
    b = start_berth()
    tag = f"/v2/{REPO}/manifests/v1?ns={REGISTRY_NAME}"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    faulty.add("GET", "/manifests/v1$", times=1, flip=20)
    status, hdrs, body, complete = harness.raw_get(b.port, tag, accept)
    assert (status, complete) == (200, True)
    assert sha(body) == hdrs["docker-content-digest"] == image["manifest"], "retried once: the right bytes"
    assert faulty.count("GET", "/manifests/v1$", status=200) == 2

    b2 = start_berth(cache_dir=None, cache=False)
    faulty.add("GET", "/manifests/v1$", flip=20)
    status, hdrs, body, _ = harness.raw_get(b2.port, tag, accept)
    assert status == 502 and b"DIGEST_INVALID" in body
    faulty.clear()
    status, hdrs, body, complete = harness.raw_get(b2.port, tag, accept)
    assert (status, complete) == (200, True), "nothing wrong was remembered"
    assert sha(body) == hdrs["docker-content-digest"] == image["manifest"]


def test_trickling_upstream_makes_the_fill_resume_from_a_fresh_connection(start_berth, faulty, image):
    b = start_berth(upstream={"min_rate": "64KiB", "min_rate_period": "1s"})
    faulty.add("GET", f"/blobs/{image['layer']}$", times=1, trickle=4096)
    started = time.monotonic()
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert time.monotonic() - started < 20, "at 4 KiB/s the layer would take a minute"
    ranges = [r for _, _, r, _ in faulty.requests("GET", f"/blobs/{image['layer']}$", status=206)]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and not ranges[0].startswith("bytes=0-")
    assert b.metric("berth_cache_resumes_total", result="ok") == 1
    harness.wait_for(lambda: os.path.exists(cached_file(b, image["layer"])), what="the fill to publish")
    assert sha(open(cached_file(b, image["layer"]), "rb").read()) == image["layer"]


def test_a_token_service_that_does_not_answer_gets_504(start_berth, faulty, image):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the kernel), never answers
    try:
        b = start_berth(cache=False, upstream={"response_timeout": "1s"})
        faulty.add("GET", "/manifests/", realm=f"http://127.0.0.1:{silent.getsockname()[1]}/service/token")
        started = time.monotonic()
        status, _, body, _ = harness.raw_get(b.port, f"/v2/{REPO}/manifests/v1?ns={REGISTRY_NAME}")
        assert status == 504, body
        assert time.monotonic() - started < 5
        assert b.metric("berth_token_fetches_total", result="timeout") >= 1
    finally:
        silent.close()


def test_read_only_cache_directory_starts_degraded(start_berth, faulty, image, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        (mnt / "cache").mkdir()
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        b = start_berth(cache_dir=mnt / "cache")
        assert b.metric("berth_cache_up") == 0
        assert '"cache_unavailable"' in b.log()
        status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
        assert (status, complete, sha(body)) == (200, True, image["layer"])
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_deleting_the_index_does_not_let_a_second_berth_into_the_cache(start_berth, faulty, image):
    a = start_berth(upstream={"min_rate": "0"})
    faulty.add("GET", f"/blobs/{image['layer']}$", times=1, trickle=64 * 1024)
    result = {}
    t = threading.Thread(target=lambda: result.update(
        r=harness.raw_get(a.port, blob_target(image["layer"]))))
    t.start()
    tmp = os.path.join(a.cache_dir, "tmp")
    harness.wait_for(lambda: os.listdir(tmp), what="a fill under way")
    in_flight = os.listdir(tmp)
    subprocess.run(["rm", "-rf", os.path.join(a.cache_dir, "index")], check=True)
    b = start_berth(cache_dir=a.cache_dir)
    assert b.metric("berth_cache_up") == 0, "the second Berth must not open a cache in use"
    assert "in use by another Berth" in b.log()
    assert os.listdir(tmp) == in_flight, "the first Berth's temp file is untouched"
    t.join(timeout=60)
    status, _, body, complete = result["r"]
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert a.metric("berth_cache_up") == 1


def test_watchdog_exits_a_wedged_berth_and_the_next_run_reports_it(start_berth, faulty, image):
    env = {"BERTH_DEBUG_HOOKS": "1"}
    b = start_berth(extra_top="watchdog_timeout: 2s\n", env=env)
    admin = f"http://127.0.0.1:{b.admin_port}"
    assert urllib.request.urlopen(admin + "/healthz", timeout=5).status == 200
    req = urllib.request.Request(admin + "/debug/block?loop=1&ms=60000", method="POST")
    assert urllib.request.urlopen(req, timeout=5).status == 200
    started = time.monotonic()

    def unhealthy():
        try:
            urllib.request.urlopen(admin + "/healthz", timeout=1)
            return False
        except urllib.error.HTTPError as e:
            return e.code == 503
        except OSError:
            return not b.alive()  # already gone is fine too

    harness.wait_for(unhealthy, timeout=5, what="/healthz to report the stuck loop")
    harness.wait_for(lambda: not b.alive(), timeout=8, what="the watchdog to end Berth")
    assert time.monotonic() - started < 6
    assert b.proc.wait() == 70
    assert '"watchdog_exit"' in b.log()
    b2 = start_berth(extra_top="watchdog_timeout: 2s\n")
    assert b2.metric("berth_watchdog_exits_total", reason="stuck_loop") == 1
    status, _, body, complete = harness.raw_get(b2.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])


@pytest.mark.parametrize("delta", [+100, -100])
def test_a_wrong_content_length_never_yields_a_whole_wrong_blob(start_berth, faulty, image, delta):
    b = start_berth(upstream={"read_timeout": "1s"})
    faulty.add("GET", f"/blobs/{image['layer']}$", length_delta=delta)
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert_never_whole_and_wrong(status, body, complete, image["layer_size"], image["layer"])
    assert not (status == 200 and complete)
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="failed_digest_mismatch")
                     + b.metric("berth_cache_fills_total", result="failed_upstream_broken") == 1, what="the fill to fail")
    assert not os.path.exists(cached_file(b, image["layer"]))
    faulty.clear()
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"])


def test_an_upstream_that_cuts_every_time_fails_the_fill_and_caches_nothing(start_berth, faulty, image):
    b = start_berth()
    faulty.add("GET", f"/blobs/{image['layer']}$", cut_after=50000)  # 4 x 50 kB < the layer
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert status == 200 and not complete
    assert len(body) < image["layer_size"]
    assert b.metric("berth_cache_resumes_total", result="ok") == 3, "three resumes, each cut again"
    harness.wait_for(lambda: b.metric("berth_cache_fills_total", result="failed_upstream_broken") == 1,
                     what="the fill to give up")
    assert not os.path.exists(cached_file(b, image["layer"]))
    assert os.listdir(os.path.join(b.cache_dir, "tmp")) == []


@pytest.mark.parametrize("code", [503, 429])
def test_blob_errors_pass_through_and_are_not_cached(start_berth, faulty, image, code):
    b = start_berth()
    faulty.add("GET", f"/blobs/{image['layer']}$", status=code)
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert status == code and complete
    assert b"errors" in body
    faulty.clear()
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    assert (status, complete, sha(body)) == (200, True, image["layer"]), "the error was not remembered"


def test_a_token_service_answering_garbage_is_a_clear_502(start_berth, faulty, image):
    class Garbage(harness.http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            body = b"<html>this is not a token</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = harness.http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        b = start_berth(cache=False)
        faulty.add("GET", "/manifests/", realm=f"http://127.0.0.1:{srv.server_address[1]}/service/token")
        status, _, body, complete = harness.raw_get(b.port, f"/v2/{REPO}/manifests/v1?ns={REGISTRY_NAME}")
        assert status == 502 and complete, body
        assert b"UNAVAILABLE" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_registry_with_the_wrong_tls_certificate_fails_fast(world, tmp_path, image):
    other = harness.Pki(str(tmp_path / "other-ca"))  # a CA that did not sign the registry's certificate
    b = berth_at(world, str(tmp_path), world["registry"].endpoint, ca_file=other.ca_file, cache_dir=tmp_path / "cache")
    try:
        started = time.monotonic()
        status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
        assert status == 502 and complete
        assert b"TLS" in body
        assert time.monotonic() - started < 5
        assert b.metric("berth_upstream_errors_total", reason="tls") >= 1
    finally:
        b.stop()
    assert world["robot_password"] not in b.log()


def test_a_client_of_a_denied_repository_joining_a_fill_gets_no_byte(world, start_berth, faulty, image):
    """A fill for library/faults is under way (trickled); a client asks for the same
    digest under private/faults, which the upstream denies the robot. It joins the
    fill by digest, so the join must ask the upstream first: not one byte for it."""
    b = start_berth(upstream={"min_rate": "0"})
    faulty.add("GET", f"/v2/{REPO}/blobs/{image['layer']}$", times=1, trickle=64 * 1024)
    first = {}
    t = threading.Thread(target=lambda: first.update(r=harness.raw_get(b.port, blob_target(image["layer"]))))
    t.start()
    harness.wait_for(lambda: os.listdir(os.path.join(b.cache_dir, "tmp")), what="the fill to be under way")
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"], repo="private/faults"))
    assert status in (401, 403, 404), (status, body[:200])
    assert body.startswith(b'{"errors":') and len(body) < 1024, "an OCI error, no blob bytes"
    assert b.metric("berth_cache_requests_total", result="coalesced") == 1, "it joined the fill under way"
    assert b.metric("berth_cache_requests_total", result="denied") == 1
    assert faulty.count("HEAD", f"/v2/private/faults/blobs/{image['layer']}$") >= 1, "the upstream was asked"
    assert os.listdir(os.path.join(b.cache_dir, "tmp")), "the fill was still under way when it was refused"
    t.join(timeout=60)
    status, _, body, complete = first["r"]
    assert (status, complete, sha(body)) == (200, True, image["layer"])


def test_a_very_slow_reader_does_not_hold_back_a_fast_one(start_berth, faulty, image):
    """Two clients follow one fill (the upstream sends 128 KiB/s): one reads at 16 KiB/s,
    one as fast as it can. The fast one finishes with the fill; the slow one gets the
    whole right blob later, from a file already published."""
    b = start_berth(upstream={"min_rate": "0"})
    faulty.add("GET", f"/blobs/{image['layer']}$", times=1, trickle=128 * 1024)
    slow = {}

    def slow_client():
        with socket.create_connection(("127.0.0.1", b.port), timeout=60) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET {blob_target(image['layer'])} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(2048):
                data += chunk
                time.sleep(2048 / (16 * 1024))
        head, _, body = data.partition(b"\r\n\r\n")
        slow.update(head=head, body=body, done=time.monotonic())

    t = threading.Thread(target=slow_client)
    t.start()
    harness.wait_for(lambda: os.listdir(os.path.join(b.cache_dir, "tmp")), what="the fill to start")
    started = time.monotonic()
    status, _, body, complete = harness.raw_get(b.port, blob_target(image["layer"]))
    fast_done = time.monotonic()
    assert (status, complete, sha(body)) == (200, True, image["layer"])
    assert fast_done - started < 6, "the fast client kept pace with the fill, not with the slow reader"
    harness.wait_for(lambda: os.path.exists(cached_file(b, image["layer"])), what="the blob to be published")
    assert t.is_alive(), "the slow reader is still reading after the blob was published"
    t.join(timeout=60)
    assert slow["head"].startswith(b"HTTP/1.1 200")
    assert sha(slow["body"]) == image["layer"], "the slow reader got the whole right blob"
    assert b.metric("berth_cache_requests_total", result="coalesced") + b.metric(
        "berth_cache_requests_total", result="miss") == 2


def test_a_clients_authorization_never_reaches_the_upstream(world, start_berth, faulty, image):
    """The FaultyUpstream records every Authorization header it receives: the client's
    never arrives, Berth's own tokens do (so the check can fail)."""
    b = start_berth()
    client_token = "client-" + harness.generate_password()
    client_basic = base64.b64encode(f"someone:{harness.generate_password()}".encode()).decode()
    for auth in (f"Bearer {client_token}", f"Basic {client_basic}"):
        for target in (f"/v2/{REPO}/manifests/v1?ns={REGISTRY_NAME}", blob_target(image["layer"]),
                       f"/v2/{REPO}/tags/list?ns={REGISTRY_NAME}"):
            status, _, _, _ = harness.raw_get(b.port, target, {"Authorization": auth, "Accept": harness.CONTAINERD_ACCEPT})
            assert status == 200, target
    seen = [a for a in faulty.authorizations if a]
    assert any(a.startswith("Bearer ") for a in seen), "Berth's own token reached the upstream"
    assert not any(client_token in a or client_basic in a for a in seen), "a client's Authorization was forwarded"


def test_sigterm_with_a_fill_under_way_tears_everything_down_in_order(start_berth, faulty, image):
    """The drain deadline passes with a client downloading a blob that is still being
    filled from a trickling upstream. Berth closes the client, cancels the fill (its
    upstream connection is closed), lets every worker run dry and tears the runtime
    down: exit 0 soon after the deadline, `shutdown_complete` logged, no temp file left."""
    b = start_berth(extra_top="shutdown_timeout: 1s\n")
    faulty.add("GET", f"/blobs/{image['layer']}$", times=1, trickle=4096)
    sock = socket.create_connection(("127.0.0.1", b.port), timeout=30)
    sock.sendall(f"GET {blob_target(image['layer'])} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    tmp = os.path.join(b.cache_dir, "tmp")
    assert os.listdir(tmp), "the fill is under way"
    signalled = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    code = b.proc.wait(timeout=15)
    took = time.monotonic() - signalled
    sock.close()
    assert code == 0
    assert took < 4, f"{took:.1f}s from SIGTERM to exit with a 1s shutdown_timeout"
    log = b.log()
    assert '"event":"shutdown_complete"' in log and "shutdown_forced" not in log, log[-2000:]
    assert os.listdir(tmp) == [], "the cancelled fill's temp file was removed"
    assert not os.path.exists(cached_file(b, image["layer"])), "nothing unverified was published"
