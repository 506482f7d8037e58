"""Harbor behaviours the CNCF registry cannot produce: pull-policy 412s, 429 with
Retry-After, the proxy-cache project's 301 to library/, HEAD-blob 404 on proxy-cache
projects, and a revoked token. A small scripted upstream on loopback plays Harbor
here (PROTOCOL.md §3 describes each behaviour and its source)."""

import base64
import contextlib
import hashlib
import http.server
import json
import re
import socket
import threading
import time

import pytest

import harness
from conftest import berth_binary

ROBOT = "robot$cluster-pull"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "1" * 64, "size": 2},
                       "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
POLICY = (b'{"errors":[{"code":"PROJECTPOLICYVIOLATION","message":"current image with 3 vulnerabilities cannot be '
          b'pulled due to configured policy in \'Prevent images with vulnerability severity of \\"High\\" or higher '
          b'from running.\'"}]}')


def as_containerd(url, method="GET"):
    """A manifest request with containerd's Accept, as the pulls these tests model."""
    return harness.http_request(url, method=method, headers={"Accept": harness.CONTAINERD_ACCEPT})


class FakeHarbor:
    def __init__(self, password):
        self.password = password
        self.lock = threading.Lock()
        self.tokens = {}  # token -> scopes
        self.revoked = set()
        self.token_requests = []  # (user, scopes)
        self.requests = []  # (method, path, authorization)
        self.next_token = 0
        self.blocked = {"policy/app"}  # repositories whose manifests Harbor's policy refuses (412)
        self.missing = set()  # repositories whose manifests are gone (Harbor's 404 NOT_FOUND)
        self.failing = False  # answer 503 to everything (Harbor's core down behind its nginx)
        self.denied = {"private/secret"}  # repositories the robot may not pull: its token leaves them out
        harbor = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - /service/token is GET only
                self.send(405)

            def do_HEAD(self):  # noqa: N802
                self.do_GET()

            def do_GET(self):  # noqa: N802
                if harbor.server is None:  # stopped: kept-alive connections die too
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                path = self.path.split("?")[0]
                auth = self.headers.get("Authorization")
                with harbor.lock:
                    harbor.requests.append((self.command, self.path, auth))
                if harbor.failing:
                    return self.send(503, b"<html>503 Service Temporarily Unavailable</html>")
                if path == "/service/token":
                    return self.token()
                m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", path)
                if not m:
                    return self.send(404, b'{"errors":[{"code":"NOT_FOUND","message":"no such route"}]}')
                repo, kind, ref = m.groups()
                # Harbor's proxy-cache project: a Docker Hub name without a '/' gets a 301.
                if repo == "dockerhub/nginx":
                    return self.send(301, headers=[("Location", f"/v2/dockerhub/library/nginx/{kind}/{ref}")])
                scope = f"repository:{repo}:pull"
                token = auth[7:] if auth and auth.startswith("Bearer ") else None
                with harbor.lock:
                    ok = token in harbor.tokens and scope in harbor.tokens[token] and token not in harbor.revoked
                    revoked = token in harbor.revoked
                if not ok:
                    challenge = (f'Bearer realm="http://127.0.0.1:{harbor.port}/service/token",'
                                 f'service="harbor-registry",scope="{scope}"')
                    if revoked:
                        challenge += ',error="invalid_token"'
                    return self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}',
                                     [("WWW-Authenticate", challenge), ("Content-Type", "application/json")])
                if repo in harbor.missing and kind == "manifests":
                    return self.send(404, b'{"errors":[{"code":"NOT_FOUND","message":"artifact not found"}]}',
                                     [("Content-Type", "application/json")])
                if repo in harbor.blocked and kind == "manifests":
                    return self.send(412, POLICY, [("Content-Type", "application/json")])
                if repo == "limited/app":
                    return self.send(429, b'{"errors":[{"code":"TOO_MANY_REQUEST","message":"slow down"}]}',
                                     [("Retry-After", "7"), ("Content-Type", "application/json")])
                if kind == "manifests":
                    return self.send(200, MANIFEST, [("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
                                                     ("Docker-Content-Digest", MANIFEST_DIGEST)])
                if self.command == "HEAD" and repo.startswith("proxycache/"):
                    return self.send(404)  # Harbor proxy-cache: HEAD on an uncached blob
                return self.send(200, BLOB, [("Content-Type", "application/octet-stream")])

            def token(self):
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if user != ROBOT or pw != harbor.password:
                        return self.send(401)
                scopes = re.findall(r"scope=([^&]+)", self.path)
                scopes = [s.replace("%3A", ":").replace("%2F", "/") for s in scopes]
                with harbor.lock:
                    harbor.next_token += 1
                    token = f"tok-{harbor.next_token}"
                    harbor.tokens[token] = {s for s in scopes if s.split(":")[1] not in harbor.denied} if user else set()
                    harbor.token_requests.append((user, scopes))
                self.send(200, json.dumps({"token": token, "expires_in": 1800}).encode(),
                          [("Content-Type", "application/json")])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def revoke_all(self):
        with self.lock:
            self.revoked.update(self.tokens)

    def stop(self):
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def manifest_requests(self, repo):
        return [(m, p) for m, p, auth in self.requests if p.startswith(f"/v2/{repo}/manifests/") and auth]


@contextlib.contextmanager
def harbor_with_berth(tmp_path, extra=""):
    """FakeHarbor and a Berth in front of it; both stopped at the end, and Berth's
    log checked for the robot's password."""
    password = harness.generate_password()
    harbor = FakeHarbor(password)
    (tmp_path / "user").write_text(ROBOT + "\n")
    (tmp_path / "pass").write_text(password + "\n")
    cfg = f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
registries:
  - names: [harbor.example.internal]
    endpoint: http://127.0.0.1:{harbor.port}
    username_file: {tmp_path / 'user'}
    password_file: {tmp_path / 'pass'}
default_registry: harbor.example.internal
{extra}"""
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), cfg).start()
    try:
        yield harbor, b
    finally:
        b.stop()
        harbor.stop()
        assert password not in b.log()


@pytest.fixture
def harbor_and_berth(tmp_path):
    with harbor_with_berth(tmp_path) as pair:
        yield pair


@pytest.fixture
def harbor_and_short_ttl_berth(tmp_path):
    """Tag and digest answers trusted for one second; stale ones served up to an hour."""
    with harbor_with_berth(tmp_path, "metadata:\n  tag_ttl: 1s\n  max_stale: 1h\n") as pair:
        yield pair


def test_policy_412_passes_through_intact(harbor_and_berth):
    harbor, b = harbor_and_berth
    s, h, body = as_containerd(f"{b.url}/v2/policy/app/manifests/v1")
    assert s == 412 and body == POLICY
    s, h, body = as_containerd(f"{b.url}/v2/policy/app/manifests/v1", method="HEAD")
    assert s == 412 and body == b""
    # Never cached: the next request asks Harbor again.
    before = len([r for r in harbor.requests if r[1].startswith("/v2/policy/")])
    as_containerd(f"{b.url}/v2/policy/app/manifests/v1")
    assert len([r for r in harbor.requests if r[1].startswith("/v2/policy/")]) == before + 1


def test_429_keeps_retry_after(harbor_and_berth):
    _, b = harbor_and_berth
    s, h, body = as_containerd(f"{b.url}/v2/limited/app/manifests/v1")
    assert s == 429 and h["Retry-After"] == "7"
    assert json.loads(body)["errors"][0]["code"] == "TOO_MANY_REQUEST"


def test_proxy_project_301_is_followed_with_a_rescoped_token(harbor_and_berth):
    harbor, b = harbor_and_berth
    s, h, body = as_containerd(f"{b.url}/v2/dockerhub/nginx/manifests/latest")
    assert s == 200 and body == MANIFEST and h["Docker-Content-Digest"] == MANIFEST_DIGEST
    scopes = [sc for _, scs in harbor.token_requests for sc in scs]
    assert "repository:dockerhub/library/nginx:pull" in scopes
    final = [r for r in harbor.requests if r[1].startswith("/v2/dockerhub/library/nginx/")]
    assert final[-1][2] and final[-1][2].startswith("Bearer "), "same-host redirect must keep Authorization"
    assert all(u == ROBOT for u, _ in harbor.token_requests)


def test_revoked_token_is_refetched_once(harbor_and_berth):
    harbor, b = harbor_and_berth
    # Blobs: without a blob cache each request goes upstream (manifests would be answered from the metadata cache).
    s, _, _ = harness.http_request(f"{b.url}/v2/library/app/blobs/{BLOB_DIGEST}")
    assert s == 200
    fetched = len(harbor.token_requests)
    harbor.revoke_all()
    s, _, body = harness.http_request(f"{b.url}/v2/library/app/blobs/{BLOB_DIGEST}")
    assert s == 200, body
    assert len(harbor.token_requests) == fetched + 1
    # Warm again: no further fetch.
    s, _, _ = harness.http_request(f"{b.url}/v2/library/app/blobs/{BLOB_DIGEST}")
    assert s == 200 and len(harbor.token_requests) == fetched + 1


def test_a_new_repository_costs_its_token_and_one_request_not_a_challenge_first(harbor_and_berth):
    """Once Berth knows the registry's realm, a repository it has no token for yet is
    two round trips (the token, the resource), as for a client that knows the realm."""
    harbor, b = harbor_and_berth

    def asked_since(n):
        return [(m, p.split("?")[0], (auth or "").split(" ")[0]) for m, p, auth in harbor.requests[n:]]

    # The very first request learns the realm from a challenge.
    assert harness.http_request(f"{b.url}/v2/library/app/blobs/{BLOB_DIGEST}")[0] == 200
    n = len(harbor.requests)
    s, _, body = harness.http_request(f"{b.url}/v2/library/other/blobs/{BLOB_DIGEST}")
    assert s == 200 and body == BLOB
    assert asked_since(n) == [("GET", "/service/token", "Basic"),
                              ("GET", f"/v2/library/other/blobs/{BLOB_DIGEST}", "Bearer")]
    assert harbor.token_requests[-1] == (ROBOT, ["repository:library/other:pull"])
    # A repository the robot may not pull: its token, then the refusal passed on; no
    # second token for a scope this very request was just given.
    n = len(harbor.requests)
    s, h, body = harness.http_request(f"{b.url}/v2/private/secret/blobs/{BLOB_DIGEST}")
    assert s == 401 and "WWW-Authenticate" not in h and b"UNAUTHORIZED" in body, (s, h, body)
    assert asked_since(n) == [("GET", "/service/token", "Basic"),
                              ("GET", f"/v2/private/secret/blobs/{BLOB_DIGEST}", "Bearer")]
    # Asked again, the cached token goes first; refused, it may have been revoked, so
    # one fresh token is tried, and its refusal is the answer. Never more than that.
    n = len(harbor.requests)
    assert harness.http_request(f"{b.url}/v2/private/secret/blobs/{BLOB_DIGEST}")[0] == 401
    assert asked_since(n) == [("GET", f"/v2/private/secret/blobs/{BLOB_DIGEST}", "Bearer"),
                              ("GET", "/service/token", "Basic"),
                              ("GET", f"/v2/private/secret/blobs/{BLOB_DIGEST}", "Bearer")]


def test_head_blob_on_a_proxy_cache_project_uses_get(harbor_and_berth):
    harbor, b = harbor_and_berth
    s, h, body = harness.http_request(f"{b.url}/v2/proxycache/app/blobs/{BLOB_DIGEST}", method="HEAD")
    assert s == 200 and body == b""
    assert int(h["Content-Length"]) == len(BLOB) and h["Docker-Content-Digest"] == BLOB_DIGEST
    methods = [m for m, p, auth in harbor.requests if p.startswith("/v2/proxycache/") and auth]
    assert methods[-2:] == ["HEAD", "GET"]


def test_warm_requests_reuse_the_token(harbor_and_berth):
    harbor, b = harbor_and_berth
    for _ in range(5):
        s, _, _ = harness.http_request(f"{b.url}/v2/library/app/blobs/{BLOB_DIGEST}")
        assert s == 200
    assert len(harbor.token_requests) == 1
    # One 401 in all: after it, every request carried the cached token.
    unauth = [r for r in harbor.requests if r[1].startswith("/v2/library/") and r[2] is None]
    assert len(unauth) == 1


def test_cached_tag_and_digest_are_blocked_once_the_policy_says_so(harbor_and_short_ttl_berth):
    harbor, b = harbor_and_short_ttl_berth
    for ref in ("v1", MANIFEST_DIGEST):
        s, _, body = as_containerd(f"{b.url}/v2/library/app/manifests/{ref}")
        assert s == 200 and body == MANIFEST
    # Within the TTL: answered from the cache, Harbor not asked.
    asked = len(harbor.manifest_requests("library/app"))
    assert as_containerd(f"{b.url}/v2/library/app/manifests/v1")[0] == 200
    assert len(harbor.manifest_requests("library/app")) == asked
    # A scan finds vulnerabilities; the project's policy now refuses the image. After
    # the TTL the cache asks again (a HEAD, with the robot's identity) and passes the 412 on.
    harbor.blocked.add("library/app")
    time.sleep(1.2)
    for ref in ("v1", MANIFEST_DIGEST):
        s, _, body = as_containerd(f"{b.url}/v2/library/app/manifests/{ref}")
        assert s == 412 and body == POLICY, (ref, s, body)
        s, _, body = as_containerd(f"{b.url}/v2/library/app/manifests/{ref}", method="HEAD")
        assert s == 412 and body == b""
    assert [m for m, _ in harbor.manifest_requests("library/app")[asked:]][:1] == ["HEAD"]
    # Nothing was evicted: once the policy allows it again, the same bytes come back.
    harbor.blocked.discard("library/app")
    s, h, body = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 200 and body == MANIFEST and h["Docker-Content-Digest"] == MANIFEST_DIGEST


def test_upstream_down_serves_known_tags_stale_and_fails_fast_on_new_ones(harbor_and_short_ttl_berth):
    harbor, b = harbor_and_short_ttl_berth
    s, _, _ = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 200
    # Harbor answers 503 (its core is down): the known tag is served stale.
    harbor.failing = True
    time.sleep(1.2)
    s, h, body = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 200 and body == MANIFEST and h["Docker-Content-Digest"] == MANIFEST_DIGEST
    # Harbor gone altogether (connection refused): still served, HEAD and GET.
    harbor.stop()
    s, h, _ = as_containerd(f"{b.url}/v2/library/app/manifests/v1", method="HEAD")
    assert s == 200 and h["Docker-Content-Digest"] == MANIFEST_DIGEST
    assert b.metric("berth_metadata_lookups_total", outcome="stale") >= 2
    assert '"event":"stale_served"' in b.log()
    # A tag never seen fails, and fast.
    started = time.monotonic()
    s, _, body = as_containerd(f"{b.url}/v2/library/app/manifests/never-seen")
    assert s == 502 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert time.monotonic() - started < 2


def test_a_404_is_remembered_briefly_and_never_papered_over(harbor_and_short_ttl_berth):
    harbor, b = harbor_and_short_ttl_berth
    s, _, _ = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 200
    # The tag is deleted in Harbor: after the TTL the 404 is passed on...
    harbor.missing.add("library/app")
    time.sleep(1.2)
    s, _, body = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 404 and json.loads(body)["errors"][0]["code"] == "NOT_FOUND"
    asked = len(harbor.manifest_requests("library/app"))
    # ...remembered for a short while (negative_ttl) without asking again...
    s, _, _ = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 404 and len(harbor.manifest_requests("library/app")) == asked
    # ...and an outage right after does not bring the old digest back.
    harbor.failing = True
    s, _, _ = as_containerd(f"{b.url}/v2/library/app/manifests/v1")
    assert s == 404
    assert b.metric("berth_metadata_lookups_total", outcome="stale") == 0
