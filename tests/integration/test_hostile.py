"""Hostile input and resource limits (#10): what a client on the cluster network, or
an upstream that misbehaves, can throw at Berth. Each test tries to exhaust, crash
or confuse it, then checks that it still answers correctly and accounts for
everything (metrics, logs, gauges)."""

import hashlib
import json
import os
import re
import socket
import time

import pytest

import harness
from conftest import REGISTRY_NAME, berth_at


def series(b, name):
    return sum(1 for line in b.metrics().splitlines() if line.startswith(name + "{"))


def exchange(port, data, timeout=5):
    """Sends raw bytes, returns what comes back until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            pass
        return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def containerd_get(b, path, **kw):
    return harness.raw_get(b.port, f"{path}?ns={REGISTRY_NAME}", {"Accept": harness.CONTAINERD_ACCEPT}, **kw)


def blob_path(world, digest):
    return harness.blob_data_path(world["registry"].storage_root, digest)


def small_blob(world):
    return min(world["image"]["blobs"], key=lambda d: os.path.getsize(blob_path(world, d)))


@pytest.fixture
def faulty(world):
    up = harness.FaultyUpstream(world["registry"].port, world["pki"].ca_file)
    yield up
    up.stop()


def test_hostile_methods_and_upstream_statuses_add_no_metric_series(world, faulty, tmp_path):
    b = berth_at(world, str(tmp_path), faulty.endpoint)
    try:
        containerd_get(b, "/v2/library/app/manifests/v1")
        before_http, before_up = series(b, "berth_http_requests_total"), series(b, "berth_upstream_requests_total")
        for i in range(300):
            answer = exchange(b.port, f"M{i}X /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 405"), answer[:100]
        for status in range(430, 530):
            faulty.add("GET", f"/manifests/s{status}$", status=status)
            containerd_get(b, f"/v2/library/app/manifests/s{status}")
        grown_http = series(b, "berth_http_requests_total") - before_http
        grown_up = series(b, "berth_upstream_requests_total") - before_up
        assert grown_http <= 30, f"300 methods and 100 statuses added {grown_http} request series"
        assert grown_up <= 30, f"100 upstream statuses added {grown_up} series"
        assert 'method="other"' in b.metrics()
    finally:
        b.stop()


def webhook_berth(world, tmp_path, extra=""):
    secret = harness.generate_password()
    (tmp_path / "webhook-secret").write_text(secret + "\n")
    b = berth_at(world, str(tmp_path / "b"), world["registry"].endpoint,
                 extra=f"metadata:\n  webhook_secret_file: {tmp_path / 'webhook-secret'}\n{extra}")
    return b, secret


def test_the_admin_port_refuses_a_body_before_reading_it(world, tmp_path):
    """Without the webhook secret no body is read: the refusal comes while the client
    has sent only headers announcing 1 MiB, and 80 such connections cost no memory."""
    b, secret = webhook_berth(world, tmp_path)
    try:
        announce = (b"POST /webhooks/harbor HTTP/1.1\r\nHost: x\r\nAuthorization: not-the-secret\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
        assert exchange(b.admin_port, announce).startswith(b"HTTP/1.1 401"), "refused without the body"
        other = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
        assert exchange(b.admin_port, other).startswith(b"HTTP/1.1 413")
        # With the secret: a body larger than an event needs is refused for its size...
        big = (f"POST /webhooks/harbor HTTP/1.1\r\nHost: x\r\nAuthorization: {secret}\r\n"
               f"Content-Length: {200 * 1024}\r\n\r\n").encode() + b"x" * (200 * 1024)
        assert exchange(b.admin_port, big).startswith(b"HTTP/1.1 413")
        # ...and a small one is read and judged.
        small = (f"POST /webhooks/harbor HTTP/1.1\r\nHost: x\r\nAuthorization: {secret}\r\nConnection: close\r\n"
                 f"Content-Length: 2\r\n\r\n{{}}").encode()
        assert exchange(b.admin_port, small).startswith(b"HTTP/1.1 400")

        base = rss_kib(b.proc.pid)
        socks = []
        body = b"x" * (1 << 20)
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", b.admin_port), timeout=10)
            s.sendall(announce)
            try:
                s.sendall(body)  # as much as Berth takes
            except OSError:
                pass
            socks.append(s)
        grown = (rss_kib(b.proc.pid) - base) / 1024
        for s in socks:
            s.close()
        assert grown < 16, f"80 unauthenticated 1 MiB bodies grew Berth by {grown:.0f} MiB"
        assert harness.http_request(f"http://127.0.0.1:{b.admin_port}/metrics")[0] == 200
    finally:
        b.stop()


def test_admin_connections_are_capped_and_the_longest_idle_goes_first(world, tmp_path):
    b, _ = webhook_berth(world, tmp_path, extra="clients:\n  admin_max_connections: 4\n")
    try:
        idle = [socket.create_connection(("127.0.0.1", b.admin_port)) for _ in range(10)]
        # A scrape still gets through: each new connection closed the longest idle one.
        assert harness.http_request(f"http://127.0.0.1:{b.admin_port}/metrics")[0] == 200
        assert b.metric("berth_http_connections_shed_total", listener="admin", action="closed_idle") >= 7
        assert idle[0].recv(1) == b"", "the oldest idle connection was closed"
        for s in idle:
            s.close()
    finally:
        b.stop()


def berth_at_prlimit(world, tmp_path, nofile, extra=""):
    """A Berth with a cache, started under prlimit --nofile=SOFT:HARD."""
    return berth_at(world, str(tmp_path / "b"), world["registry"].endpoint, cache_dir=str(tmp_path / "cache"),
                    extra=extra, prefix=("prlimit", f"--nofile={nofile}", "--"))


def test_descriptor_exhaustion_never_aborts_and_pulls_go_on(world, tmp_path):
    """RLIMIT_NOFILE 256 (no room to raise it) and 400 idle connections: Berth fits its
    connection limit to the descriptors, closes the longest idle connections, and a
    pull that comes meanwhile is answered in full, at once."""
    b = berth_at_prlimit(world, tmp_path, "256:256", extra="threads: 4\n")  # workers that have not run yet
    try:
        assert '"nofile":256' in b.log()
        idle = []
        for _ in range(400):
            try:
                idle.append(socket.create_connection(("127.0.0.1", b.port), timeout=5))
            except OSError:
                break
        assert b.alive(), b.log()[-2000:]
        # Answered at once, not when the idle connections time out.
        status, _, body, complete = containerd_get(b, "/v2/library/app/manifests/v1", timeout=10)
        assert (status, complete) == (200, True)
        layer = small_blob(world)
        for _ in range(2):  # a fill, then a hit
            status, _, body, complete = containerd_get(b, f"/v2/library/app/blobs/{layer}", timeout=10)
            assert (status, complete) == (200, True) and "sha256:" + hashlib.sha256(body).hexdigest() == layer
        for s in idle:
            s.close()
        assert b.alive()
        assert b.metric("berth_http_connections_shed_total", listener="mirror", action="closed_idle") > 0
    finally:
        b.stop()


def test_the_descriptor_limit_is_raised_to_the_hard_limit(world, tmp_path):
    b = berth_at_prlimit(world, tmp_path, "256:4096")
    try:
        line = next(json.loads(x) for x in b.log().splitlines() if '"event":"listening"' in x)
        assert line["nofile"] == 4096
        assert line["max_connections"] > 256 // 3
    finally:
        b.stop()


def test_when_every_connection_is_busy_a_new_one_is_refused_readably(world, tmp_path):
    b = berth_at(world, str(tmp_path / "b"), world["registry"].endpoint, extra="clients:\n  max_connections: 3\n")
    big = max(world["image"]["blobs"], key=lambda d: os.path.getsize(blob_path(world, d)))
    busy = []
    try:
        for _ in range(3):  # each asks for the big blob and reads nothing: busy writing
            s = socket.create_connection(("127.0.0.1", b.port))
            s.sendall(f"GET /v2/library/app/blobs/{big}?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            busy.append(s)
        # Three busy requests, and the scrape that reads the gauge.
        harness.wait_for(lambda: b.metric("berth_http_requests_in_flight") == 3 + 1, what="three busy requests")
        answer = exchange(b.port, f"GET /v2/?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"UNAVAILABLE" in answer and b"Retry-After: 1" in answer
        assert b.metric("berth_http_connections_shed_total", listener="mirror", action="refused") == 1
        for s in busy:
            s.close()
        harness.wait_for(lambda: containerd_get(b, "/v2/library/app/manifests/v1")[0] == 200, what="room again")
    finally:
        for s in busy:
            s.close()
        b.stop()


def test_a_huge_upstream_header_is_dropped_not_relayed(world, faulty, tmp_path):
    b = berth_at(world, str(tmp_path / "b"), faulty.endpoint)
    try:
        link = "</v2/library/app/tags/list?n=1&last=" + "a" * 20000 + '>; rel="next"'
        faulty.add("GET", "/tags/list", add_headers={"Link": link})
        status, headers, body, complete = harness.raw_get(b.port, f"/v2/library/app/tags/list?ns={REGISTRY_NAME}")
        assert (status, complete) == (200, True) and "v1" in json.loads(body)["tags"]
        assert "link" not in headers
        assert "upstream_header_dropped" in b.log()
    finally:
        b.stop()


def test_bytes_that_are_not_utf8_keep_the_access_log_json(world, tmp_path):
    b = berth_at(world, str(tmp_path / "b"), world["registry"].endpoint)
    try:
        for target in (b"/v2/\xff\xfe/manifests/v1", b"/v2/library/app/manifests/\xc0\xaf", b"/v2/\xed\xa0\x80"):
            answer = exchange(b.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
        harness.wait_for(lambda: b.log().count('"event":"request"') >= 3, what="three access-log lines")
        with open(b.log_path, "rb") as f:
            raw = f.read()
        for line in raw.splitlines():
            if line.startswith(b"{"):
                json.loads(line.decode("utf-8"))  # strict: raises on a byte that is not UTF-8
        assert "\ufffd" in raw.decode("utf-8")
    finally:
        b.stop()


def test_a_cached_blob_is_confirmed_again_after_authorization_ttl(world, faulty, tmp_path):
    """Revoking the robot's access to a project in Harbor reaches cached blobs: the
    upstream's word holds for cache.authorization_ttl, then the next hit asks again
    (one HEAD). A refusal removes the repository; an upstream that cannot answer
    leaves the last confirmation standing."""
    b = berth_at(world, str(tmp_path / "b"), faulty.endpoint, cache_dir=str(tmp_path / "cache"),
                 cache_extra="  authorization_ttl: 1s\n")
    layer = small_blob(world)
    path = f"/library/app/blobs/{layer}$"
    try:
        def pull():
            status, _, body, complete = containerd_get(b, f"/v2/library/app/blobs/{layer}")
            return status, complete and "sha256:" + hashlib.sha256(body).hexdigest() == layer

        assert pull() == (200, True)  # filled: library/app confirmed now
        faulty.add("HEAD", path, status=403)  # the grant is revoked in Harbor
        assert pull() == (200, True), "within the TTL the confirmation holds"
        assert faulty.count("HEAD", path) == 0
        time.sleep(1.2)
        status, _ = pull()
        assert status == 403, "past the TTL the upstream is asked, and refuses"
        assert faulty.count("HEAD", path) == 1
        assert b.metric("berth_cache_requests_total", result="denied") == 1
        faulty.clear()
        assert pull() == (200, True), "granted again: confirmed again with one HEAD"
        assert faulty.count("HEAD", path, status=200) == 1
        time.sleep(1.2)
        faulty.add("HEAD", path, status=503)  # Harbor is down
        assert pull() == (200, True), "an upstream that cannot answer does not revoke"
        assert "authorization_stale" in b.log()
    finally:
        b.stop()


def test_redirects_to_internal_addresses_are_refused_unless_listed(world, tmp_path):
    """The redirecting registry sends blobs to storage on a loopback address (as a
    compromised upstream could send Berth to its own admin port, or to 169.254.169.254).
    Not followed unless registries[].redirect_hosts names it."""
    big = max(world["image"]["blobs"], key=lambda d: os.path.getsize(blob_path(world, d)))
    storage = world["storage"]
    b = berth_at(world, str(tmp_path / "open"), world["redirecting"].endpoint)
    try:
        status, _, body, _ = containerd_get(b, f"/v2/library/app/blobs/{big}")
        assert status == 502 and b"redirect" in body, body
        assert "upstream_redirect_refused" in b.log()
    finally:
        b.stop()
    elsewhere = berth_at(world, str(tmp_path / "elsewhere"), world["redirecting"].endpoint,
                         registry_extra='    redirect_hosts: ["storage.example.internal"]\n')
    try:
        assert containerd_get(elsewhere, f"/v2/library/app/blobs/{big}")[0] == 502, "not listed: refused"
    finally:
        elsewhere.stop()
    listed = berth_at(world, str(tmp_path / "listed"), world["redirecting"].endpoint,
                      registry_extra=f'    redirect_hosts: ["{storage.host}:{storage.port}"]\n')
    try:
        status, _, body, complete = containerd_get(listed, f"/v2/library/app/blobs/{big}")
        assert (status, complete) == (200, True) and "sha256:" + hashlib.sha256(body).hexdigest() == big
    finally:
        listed.stop()


def test_realm_hosts_name_where_the_credentials_may_go(world, faulty, tmp_path):
    """A realm on another port of the endpoint's host gets the robot's credentials by
    default (Harbor's and the registry's token services live there); with realm_hosts
    naming only other places it gets none (Berth asks anonymously)."""
    import http.server
    import threading

    seen = []

    class Realm(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    realm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    threading.Thread(target=realm.serve_forever, daemon=True).start()
    try:
        faulty.add("GET", "/manifests/", realm=f"http://127.0.0.1:{realm.server_address[1]}/service/token")
        for name, extra, credentials in (("default", "", True),
                                         ("strict", '    realm_hosts: ["127.0.0.1:1"]\n', False),
                                         ("listed", f'    realm_hosts: ["127.0.0.1:{realm.server_address[1]}"]\n',
                                          True)):
            seen.clear()
            b = berth_at(world, str(tmp_path / name), faulty.endpoint, registry_extra=extra)
            try:
                assert containerd_get(b, "/v2/library/app/manifests/v1")[0] != 200
                assert seen, name
                assert all(bool(a and a.startswith("Basic ")) == credentials for a in seen), (name, seen)
                assert ("token_realm_untrusted" in b.log()) != credentials
            finally:
                b.stop()
    finally:
        realm.shutdown()
        realm.server_close()


def test_the_connection_limit_holds_against_pipelining_clients(world, tmp_path):
    """Clients that keep their connections busy with pipelined requests: a connection
    picked to make room while busy closes after its reply, so the listener never
    holds many more than max_connections (it once held 525 with a limit of 2)."""
    import threading
    import time

    b = berth_at(world, str(tmp_path / "b"), world["registry"].endpoint, extra="clients:\n  max_connections: 2\n")
    request = f"GET /v2/?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    live, lock, stop, peak = set(), threading.Lock(), threading.Event(), [0]

    def hammer(s):
        try:
            while not stop.is_set():
                s.sendall(request * 20)
                buf = b""
                while buf.count(b"HTTP/1.1 200") < 20:
                    d = s.recv(65536)
                    if not d or b" 503 " in buf:
                        raise ConnectionError
                    buf += d
        except OSError:
            pass
        with lock:
            live.discard(s)
        s.close()

    threads = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 4:
            s = socket.create_connection(("127.0.0.1", b.port), timeout=3)
            s.sendall(request)
            try:
                first = s.recv(4096)
            except OSError:
                first = b""
            if first.startswith(b"HTTP/1.1 200"):
                with lock:
                    live.add(s)
                    peak[0] = max(peak[0], len(live))
                threads.append(threading.Thread(target=hammer, args=(s,)))
                threads[-1].start()
            else:
                s.close()
        # The clients notice a close a little late (more so under ASan): a few over the
        # limit at a moment is that lag, hundreds (as before) a limit that does not hold.
        assert peak[0] <= 2 + 6, f"{peak[0]} connections served at once with max_connections 2"
    finally:
        stop.set()
        for t in threads:
            t.join()
        b.stop()


def test_bodies_that_never_come_do_not_lock_the_port(world, tmp_path):
    """Connections that announce a body and never send it are not busy: they can be
    closed to make room, so a handful of them cannot turn every client away."""
    b = berth_at(world, str(tmp_path / "b"), world["registry"].endpoint, extra="clients:\n  max_connections: 2\n")
    stalled = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", b.port))
            s.sendall(f"GET /v2/?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode())
            stalled.append(s)
        status = containerd_get(b, "/v2/library/app/manifests/v1", timeout=10)[0]
        assert status == 200
    finally:
        for s in stalled:
            s.close()
        b.stop()


def test_endless_chunk_extensions_and_trailers_are_cut_off(world, tmp_path):
    """Beast limits neither a chunk-size line nor the trailers: one connection once
    grew Berth to 3 GB in 8 s. The read buffer is capped; the client gets 431."""
    b = berth_at(world, str(tmp_path / "b"), world["registry"].endpoint)
    try:
        base = rss_kib(b.proc.pid)
        for preamble in (b"1;a=", b"0\r\nX-Trailer: "):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=10)
            s.sendall(f"GET /v2/?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                      + preamble)
            answer = b""
            try:
                for _ in range(64):  # up to 64 MiB, unless Berth answers first
                    s.sendall(b"a" * (1 << 20))
            except OSError:
                pass
            try:
                answer = s.recv(4096)
            except OSError:
                pass
            s.close()
            assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:100]
        assert (rss_kib(b.proc.pid) - base) / 1024 < 16
        assert b.alive()
    finally:
        b.stop()
