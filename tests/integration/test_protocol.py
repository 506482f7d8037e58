"""Side by side with the registry: for the protocol edges of issue #11, Berth's answer
and the registry's direct answer to the same request, compared where a client can
tell them apart (status, Content-Range, ETag, 304s, bodies)."""

import base64
import hashlib
import json
import http.client
import os
import socket
import ssl
import threading
import time

import pytest

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_at, berth_binary, berth_config, write_docker_config

INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFORMANCE = "library/conformance"


@pytest.fixture(scope="module")
def direct(world):
    """The registry's own answer, with a robot token for library/app and app-docker."""
    token = world["issuer"].make_token(ROBOT, [{"type": "repository", "name": name, "actions": ["pull"]}
                                               for name in ("library/app", "library/app-docker", CONFORMANCE)])
    ctx = ssl.create_default_context(cafile=world["pki"].ca_file)

    def ask(path, method="GET", headers=None, body=None):
        conn = http.client.HTTPSConnection("127.0.0.1", world["registry"].port, context=ctx, timeout=60)
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        r = conn.getresponse()
        try:
            body = r.read()
        except http.client.IncompleteRead as e:  # the registry's 416 announces the blob's length
            body = e.partial
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    return ask


@pytest.fixture
def cached(world, tmp_path):
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"),
                      berth_config(world, str(secret), extra_top=f"cache:\n  dir: {tmp_path / 'cache'}\n")).start()
    yield b
    b.stop()


def via(b, path, method="GET", headers=None):
    sep = "&" if "?" in path else "?"
    status, hdrs, body, complete = harness.raw_get(b.port, f"{path}{sep}ns={REGISTRY_NAME}", headers, method=method)
    assert complete or method == "HEAD" or status == 304
    return status, hdrs, body


def small_layer(world):
    root = world["registry"].storage_root
    return min((d for d in world["image"]["blobs"]), key=lambda d: os.path.getsize(harness.blob_data_path(root, d)))


def test_an_invalid_manifest_reference_is_404_like_the_registry_and_never_asked_upstream(world, cached, direct):
    refs = (".INVALID_MANIFEST_NAME", "-bad", "sha256:ABC")
    before = len(world["registry"].settled_requests())
    for method in ("GET", "HEAD"):
        for ref in refs:
            s, _, body = via(cached, f"/v2/library/app/manifests/{ref}", method)
            assert s == 404, (method, ref, s)
            if method == "GET":
                assert b'"MANIFEST_UNKNOWN"' in body
    assert len(world["registry"].settled_requests()) == before, "nothing was asked upstream"
    for method in ("GET", "HEAD"):
        for ref in refs[:2]:  # sha256:ABC: the registry answers with its own 500
            assert direct(f"/v2/library/app/manifests/{ref}", method)[0] == 404, (method, ref)


def test_tags_list_ignores_what_it_cannot_use_like_the_registry(world, cached, direct):
    for q in ("n=abc", "n=-1", "last=.bad"):
        s, _, body = via(cached, f"/v2/library/app/tags/list?{q}")
        ds, _, dbody = direct(f"/v2/library/app/tags/list?{q}")
        assert (s, body) == (ds, dbody), q


def test_the_base_endpoint_for_an_unknown_registry_says_so(cached):
    status, _, body, _ = harness.raw_get(cached.port, "/v2/?ns=elsewhere.example.internal")
    assert status == 404 and b'"NAME_UNKNOWN"' in body
    status, _, _, _ = harness.raw_get(cached.port, f"/v2/?ns={REGISTRY_NAME}")
    assert status == 200


def test_etags_and_if_none_match_like_the_registry(world, cached, direct):
    for ref in ("v1", world["image"]["index"]):
        s, h, _ = via(cached, f"/v2/library/app/manifests/{ref}", headers={"Accept": INDEX})
        ds, dh, _ = direct(f"/v2/library/app/manifests/{ref}", headers={"Accept": INDEX})
        assert s == ds == 200 and h["etag"] == dh["etag"] == f'"{dh["docker-content-digest"]}"', ref
        s, _, body = via(cached, f"/v2/library/app/manifests/{ref}", headers={"Accept": INDEX,
                                                                             "If-None-Match": h["etag"]})
        ds, _, _ = direct(f"/v2/library/app/manifests/{ref}", headers={"Accept": INDEX, "If-None-Match": h["etag"]})
        assert s == ds == 304 and body == b"", ref
    layer = small_layer(world)
    via(cached, f"/v2/library/app/blobs/{layer}")  # cached now
    harness.wait_for(lambda: cached.metric("berth_cache_fills_total", result="completed") >= 1, what="the fill")
    s, h, _ = via(cached, f"/v2/library/app/blobs/{layer}")
    ds, dh, _ = direct(f"/v2/library/app/blobs/{layer}")
    assert s == ds == 200 and h["etag"] == dh["etag"] == f'"{layer}"'
    s, _, body = via(cached, f"/v2/library/app/blobs/{layer}", headers={"If-None-Match": f'"{layer}"'})
    assert (s, body) == (direct(f"/v2/library/app/blobs/{layer}", headers={"If-None-Match": f'"{layer}"'})[0], b"")
    assert s == 304
    s, _, _ = via(cached, f"/v2/library/app/blobs/{layer}", headers={"If-None-Match": '"sha256:' + "0" * 64 + '"'})
    assert s == 200, "another tag is no match"


def test_suffix_ranges_from_the_cache_and_from_a_fill_under_way(world, cached, direct, tmp_path):
    layer = small_layer(world)
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, layer))
    via(cached, f"/v2/library/app/blobs/{layer}")
    harness.wait_for(lambda: cached.metric("berth_cache_fills_total", result="completed") >= 1, what="the fill")
    for rng in ("bytes=-1000", f"bytes=-{size + 10}", "bytes=10-"):
        s, h, body = via(cached, f"/v2/library/app/blobs/{layer}", headers={"Range": rng})
        ds, dh, dbody = direct(f"/v2/library/app/blobs/{layer}", headers={"Range": rng})
        assert (s, h["content-range"], body) == (ds, dh["content-range"], dbody), rng
    s, h, _ = via(cached, f"/v2/library/app/blobs/{layer}", headers={"Range": f"bytes={size}-"})
    ds, dh, _ = direct(f"/v2/library/app/blobs/{layer}", headers={"Range": f"bytes={size}-"})
    assert s == ds == 416 and h["content-range"] == dh["content-range"] == f"bytes */{size}"
    # A zero-length suffix is unsatisfiable (RFC 9110 14.1.1); Go's registry serves it.
    s, h, _ = via(cached, f"/v2/library/app/blobs/{layer}", headers={"Range": "bytes=-0"})
    assert s == 416 and h["content-range"] == f"bytes */{size}"
    # Several ranges: Berth serves the first alone (documented), where the registry
    # sends multipart/byteranges; the first range's bytes are the same.
    s, h, body = via(cached, f"/v2/library/app/blobs/{layer}", headers={"Range": "bytes=0-1,5-6"})
    assert s == 206 and h["content-range"] == f"bytes 0-1/{size}"
    assert body == direct(f"/v2/library/app/blobs/{layer}", headers={"Range": "bytes=0-1"})[2]

    # The same suffix from a fill still under way: the big layer behind a slow link.
    big = world["image"]["big_layer"]
    big_size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    link = harness.FaultProxy(world["registry"].port, rate=50e6)
    b = berth_at(world, str(tmp_path / "slow"), f"https://127.0.0.1:{link.port}", cache_dir=tmp_path / "slow-cache")
    try:
        t = threading.Thread(target=lambda: harness.raw_get(b.port, f"/v2/library/app/blobs/{big}?ns={REGISTRY_NAME}"))
        t.start()
        harness.wait_for(lambda: os.listdir(tmp_path / "slow-cache" / "tmp"), what="the fill to be under way")
        s, h, body = via(b, f"/v2/library/app/blobs/{big}", headers={"Range": "bytes=-4096"})
        ds, dh, dbody = direct(f"/v2/library/app/blobs/{big}", headers={"Range": "bytes=-4096"})
        assert (s, h["content-range"], body) == (ds, dh["content-range"], dbody)
        assert h["content-range"] == f"bytes {big_size - 4096}-{big_size - 1}/{big_size}"
        assert b.metric("berth_cache_requests_total", result="coalesced") == 1, "served from the fill under way"
        t.join()
    finally:
        b.stop()
        link.stop()


def test_an_upstream_416_keeps_its_content_range(world, tmp_path, direct):
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), berth_config(world, str(secret))).start()  # no cache
    try:
        layer = small_layer(world)
        s, h, _ = via(b, f"/v2/library/app/blobs/{layer}", headers={"Range": "bytes=999999999-"})
        ds, dh, _ = direct(f"/v2/library/app/blobs/{layer}", headers={"Range": "bytes=999999999-"})
        assert s == ds == 416 and h.get("content-range") == dh["content-range"]
    finally:
        b.stop()


@pytest.mark.parametrize("size", [10, 4 << 20])
def test_a_push_with_a_body_gets_a_readable_405(cached, size):
    """A real client sends its body right after the headers; it must read Berth's 405,
    not a reset connection."""
    body = os.urandom(size)
    conn = http.client.HTTPConnection("127.0.0.1", cached.port, timeout=30)
    conn.request("PUT", f"/v2/library/app/manifests/v1?ns={REGISTRY_NAME}", body=body,
                  headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    r = conn.getresponse()
    reply = r.read()
    conn.close()
    assert r.status == 405 and b'"UNSUPPORTED"' in reply


def test_q_zero_gets_what_the_registry_gives(world, cached, direct):
    # q=0 does not refuse a type to the registry, so neither to Berth.
    for accept in (f"{INDEX};q=0", f"application/vnd.docker.distribution.manifest.v2+json, {INDEX};q=0"):
        s, h, body = via(cached, "/v2/library/app/manifests/v1", headers={"Accept": accept})
        ds, dh, dbody = direct("/v2/library/app/manifests/v1", headers={"Accept": accept})
        assert (s, h.get("docker-content-digest"), body) == (ds, dh.get("docker-content-digest"), dbody), accept


def test_a_wildcard_alone_gets_what_the_registry_gives(world, cached, direct):
    """The registry gives none of the manifest types to a client that only sends a
    wildcard, by tag or by digest; Berth must not hand it a cached one either."""
    via(cached, "/v2/library/app/manifests/v1", headers={"Accept": harness.CONTAINERD_ACCEPT})  # cache the index
    for accept in ("*/*", "application/*"):
        for ref in ("v1", world["image"]["index"]):
            s, _, body = via(cached, f"/v2/library/app/manifests/{ref}", headers={"Accept": accept})
            ds, _, dbody = direct(f"/v2/library/app/manifests/{ref}", headers={"Accept": accept})
            # The same status and code; the message may be Berth's remembered 404's.
            code = json.loads(body)["errors"][0]["code"]
            assert (s, code) == (ds, json.loads(dbody)["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN"), (accept, ref)



def error_code(body):
    """The first OCI error code of a body; None for no body or one that is not JSON
    (the registry's router answers a path it cannot match with "404 page not found")."""
    try:
        return json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def same_answer(berth, direct_answer, what):
    (s, h, body), (ds, dh, dbody) = berth, direct_answer
    if ds == 200:
        assert (s, h.get("content-type"), h.get("docker-content-digest"), h.get("content-length")) == \
               (ds, dh.get("content-type"), dh.get("docker-content-digest"), dh.get("content-length")), what
        assert body == dbody, what
    else:
        assert (s, error_code(body)) == (ds, error_code(dbody)), (what, body, dbody)


def test_no_accept_gets_what_the_registry_gives(world, cached, direct):
    """A client that sends no Accept gets the registry's default answer (no OCI type;
    a Docker list or manifest only by digest), not containerd's, and not one Berth
    remembered for another class of client."""
    docker_list = json.loads(world["docker_list"])
    refs = {"library/app": ["v1", world["image"]["index"], *world["image"]["manifests"].values()],
            "library/app-docker": ["v1", "sha256:" + hashlib.sha256(world["docker_list"]).hexdigest(),
                                   *(m["digest"] for m in docker_list["manifests"])]}
    statuses = set()
    for repo, references in refs.items():
        for ref in references:
            path = f"/v2/{repo}/manifests/{ref}"
            via(cached, path, headers={"Accept": harness.CONTAINERD_ACCEPT})  # remembered for containerd
            for method in ("GET", "HEAD", "GET"):
                answer = via(cached, path, method=method)
                same_answer(answer, direct(path, method=method), (path, method))
                statuses.add(answer[0])
    assert statuses == {200, 400, 404}, statuses  # each of the registry's answers was compared


def schema1_payload(signed):
    """What a signed schema-1 manifest's signatures cover (libtrust's JWS), in Python."""
    def b64url(text):
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    payloads = set()
    for sig in json.loads(signed)["signatures"]:
        header = json.loads(b64url(sig["protected"]))
        payloads.add(signed[:header["formatLength"]] + b64url(header["formatTail"]))
    assert len(payloads) == 1
    return payloads.pop()


@pytest.fixture(scope="module")
def schema1_registry(world, tmp_path_factory):
    """The same storage behind a registry that converts to schema 1, as Harbor's does."""
    r = harness.Registry(str(tmp_path_factory.mktemp("schema1")), world["pki"], world["issuer"],
                         world["registry"].storage_root, schema1=True).start()
    layout = str(tmp_path_factory.mktemp("legacy"))
    harness.make_small_image(layout, seed=1961, history=True)
    harness.skopeo_push(layout, f"docker://127.0.0.1:{r.port}/library/legacy:v1", world["pusher_creds"], fmt="v2s2")
    yield r
    r.stop()


def test_schema1_conversions_are_relayed_with_the_registrys_digest(world, schema1_registry, tmp_path):
    """A registry converts a schema-2 manifest to signed schema 1 for a client that
    names no schema-2 type, by tag; its Docker-Content-Digest is the digest of the
    signed payload, not of the bytes. Berth relays it with that digest after checking
    the signatures' payload against it, remembers nothing (a GET by that digest is
    the registry's 404), and still refuses bytes whose payload does not match."""
    b = berth_at(world, str(tmp_path / "b"), schema1_registry.endpoint, cache_dir=str(tmp_path / "cache"))
    try:
        def ask_direct(path, method="GET", headers=None):
            return _direct_at(world, schema1_registry, path, method, headers)
        path = "/v2/library/legacy/manifests/v1"
        digests = set()
        for accept in (None, "application/vnd.oci.image.manifest.v1+json", "application/json, */*"):
            headers = {"Accept": accept} if accept else {}
            for method in ("GET", "GET", "HEAD"):
                s, h, body = via(b, path, method=method, headers=headers)
                ds, dh, dbody = ask_direct(path, method, headers)
                assert (s, ds) == (200, 200), (accept, method, body)
                assert h["content-type"] == dh["content-type"] == "application/vnd.docker.distribution.manifest.v1+prettyjws"
                assert h["docker-content-digest"] == dh["docker-content-digest"], accept
                digests.add(h["docker-content-digest"])
                if method == "GET":
                    assert "sha256:" + hashlib.sha256(schema1_payload(body)).hexdigest() == h["docker-content-digest"]
                    assert "sha256:" + hashlib.sha256(body).hexdigest() != h["docker-content-digest"]
        assert len(digests) == 1
        digest = digests.pop()
        # Nothing was remembered under the conversion's digest: the registry has no
        # manifest by that name, and neither does Berth.
        for accept in (None, harness.CONTAINERD_ACCEPT):
            headers = {"Accept": accept} if accept else {}
            s, _, body = via(b, f"/v2/library/legacy/manifests/{digest}", headers=headers)
            ds, _, dbody = ask_direct(f"/v2/library/legacy/manifests/{digest}", "GET", headers)
            assert (s, error_code(body)) == (ds, error_code(dbody)) == (404, "MANIFEST_UNKNOWN"), accept
        # containerd's class still gets the schema-2 manifest, as from the registry.
        s, h, _ = via(b, path, headers={"Accept": harness.CONTAINERD_ACCEPT})
        assert (s, h["content-type"]) == (200, "application/vnd.docker.distribution.manifest.v2+json")
    finally:
        b.stop()


def test_a_schema1_conversion_with_a_damaged_payload_is_refused(world, schema1_registry, tmp_path):
    faulty = harness.FaultyUpstream(schema1_registry.port, world["pki"].ca_file)
    b = berth_at(world, str(tmp_path / "b"), faulty.endpoint)
    try:
        faulty.add("GET", "/manifests/v1$", flip=40)  # inside the signed payload
        for accept in (None, "application/vnd.oci.image.manifest.v1+json"):
            s, _, body = via(b, "/v2/library/legacy/manifests/v1", headers={"Accept": accept} if accept else {})
            assert (s, error_code(body)) == (502, "DIGEST_INVALID"), accept
        faulty.clear()
        s, h, body = via(b, "/v2/library/legacy/manifests/v1")
        assert s == 200 and "sha256:" + hashlib.sha256(schema1_payload(body)).hexdigest() == h["docker-content-digest"]
    finally:
        b.stop()
        faulty.stop()


def test_a_tag_that_becomes_a_schema1_conversion_on_revalidation(world, schema1_registry, tmp_path):
    """A remembered OCI answer for an OCI-only client; the tag is pushed again as
    Docker schema 2, which that client can only get converted. The revalidation
    sees the conversion and relays it instead of remembering it (or a 404)."""
    b = berth_at(world, str(tmp_path / "b"), schema1_registry.endpoint, extra="metadata:\n  tag_ttl: 1s\n")
    try:
        layout = str(tmp_path / "layout")
        harness.make_small_image(layout, seed=1962, history=True)
        dest = f"docker://127.0.0.1:{schema1_registry.port}/library/moving:v1"
        harness.skopeo_push(layout, dest, world["pusher_creds"])
        oci_only = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        s, h, _ = via(b, "/v2/library/moving/manifests/v1", headers=oci_only)
        assert (s, h["content-type"]) == (200, "application/vnd.oci.image.manifest.v1+json")
        harness.skopeo_push(layout, dest, world["pusher_creds"], fmt="v2s2")
        time.sleep(1.5)  # past tag_ttl: the next request revalidates
        for method in ("GET", "HEAD", "GET"):
            s, h, body = via(b, "/v2/library/moving/manifests/v1", method=method, headers=oci_only)
            assert (s, h["content-type"]) == (200, "application/vnd.docker.distribution.manifest.v1+prettyjws"), body
            if method == "GET":
                assert "sha256:" + hashlib.sha256(schema1_payload(body)).hexdigest() == h["docker-content-digest"]
    finally:
        b.stop()


def _direct_at(world, registry, path, method="GET", headers=None):
    token = world["issuer"].make_token(ROBOT, [{"type": "repository", "name": "library/legacy", "actions": ["pull"]}])
    ctx = ssl.create_default_context(cafile=world["pki"].ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", registry.port, context=ctx, timeout=60)
    conn.request(method, path, headers={"Authorization": f"Bearer {token}", **(headers or {})})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


@pytest.fixture(scope="module")
def conformance_image(world, tmp_path_factory):
    layout = str(tmp_path_factory.mktemp("conformance"))
    img = harness.make_small_image(layout, seed=1111)
    harness.skopeo_push(layout, f"docker://127.0.0.1:{world['registry'].port}/{CONFORMANCE}:v1", world["pusher_creds"])
    return img


def test_the_oci_conformance_pull_checks_like_the_registry(world, cached, direct, conformance_image):
    """The pull and content-discovery checks of the OCI distribution-spec v1.1.1
    conformance suite, asked of Berth and of the registry behind it with the same
    content: the same status (and digest) for each, and each as the suite expects."""
    img = conformance_image
    dummy = "sha256:" + hashlib.sha256(b"hello world").hexdigest()
    base = f"/v2/{CONFORMANCE}"
    oci = {"Accept": OCI_MANIFEST}
    checks = [  # (method, path, headers, statuses the suite allows)
        ("HEAD", f"{base}/blobs/{dummy}", {}, {404}),
        ("HEAD", f"{base}/blobs/{img['config']}", {}, {200}),
        ("GET", f"{base}/blobs/{dummy}", {}, {404}),
        ("GET", f"{base}/blobs/{img['config']}", {}, {200}),
        ("GET", f"{base}/blobs/{img['layer']}", {}, {200}),
        ("HEAD", f"{base}/manifests/.INVALID_MANIFEST_NAME", {}, {404}),
        ("GET", f"{base}/manifests/.INVALID_MANIFEST_NAME", {}, {404}),
        ("HEAD", f"{base}/manifests/{img['manifest']}", oci, {200}),
        ("HEAD", f"{base}/manifests/v1", oci, {200}),
        ("GET", f"{base}/manifests/{img['manifest']}", oci, {200}),
        ("GET", f"{base}/manifests/v1", oci, {200}),
        ("GET", f"{base}/tags/list", {}, {200}),
        ("GET", f"{base}/tags/list?n=1", {}, {200}),
        ("GET", f"{base}/tags/list?n=1&last=v0", {}, {200}),
    ]
    for method, path, headers, allowed in checks:
        s, h, body = via(cached, path, method=method, headers=headers)
        ds, dh, dbody = direct(path, method=method, headers=headers)
        assert s == ds and s in allowed, (method, path, s, ds, body)
        if s == 200 and "/tags/" not in path:
            assert h.get("docker-content-digest") == dh.get("docker-content-digest"), (method, path)
        if s == 200 and method == "GET":
            assert body == dbody, (method, path)
        if s >= 400 and method == "GET":  # Berth always answers with an OCI error
            assert error_code(body) == (error_code(dbody) or "MANIFEST_UNKNOWN"), (method, path, body, dbody)
    # The suite's error-body check: a GET carrying a body, for a reference that is
    # neither tag nor digest, must be 400 with an OCI error, or 404. The registry
    # fails it (500 UNKNOWN); Berth reads and ignores the body and answers 404.
    def get_with_body(body):
        conn = http.client.HTTPConnection("127.0.0.1", cached.port, timeout=30)
        conn.request("GET", f"{base}/manifests/sha256:totallywrong?ns={REGISTRY_NAME}", body=body,
                     headers={"Content-Type": OCI_MANIFEST})
        r = conn.getresponse()
        answer = (r.status, error_code(r.read()))
        conn.close()
        return answer
    assert get_with_body(b"blablabla") == (404, "MANIFEST_UNKNOWN")
    ds, _, dbody = direct(f"{base}/manifests/sha256:totallywrong", body=b"blablabla", headers={"Content-Type": OCI_MANIFEST})
    assert (ds, error_code(dbody)) == (500, "UNKNOWN"), "the registry's answer changed: compare again"
    # A body larger than any GET needs is refused for its size, readably.
    assert get_with_body(b"x" * 100_000) == (413, "UNSUPPORTED")
