"""Side by side with the registry: for the protocol edges of issue #11, Berth's answer
and the registry's direct answer to the same request, compared where a client can
tell them apart (status, Content-Range, ETag, 304s, bodies)."""

import hashlib
import json
import http.client
import os
import socket
import ssl
import threading

import pytest

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_at, berth_binary, berth_config, write_docker_config

INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def direct(world):
    """The registry's own answer, with a robot token for library/app."""
    token = world["issuer"].make_token(ROBOT, [{"type": "repository", "name": "library/app", "actions": ["pull"]}])
    ctx = ssl.create_default_context(cafile=world["pki"].ca_file)

    def ask(path, method="GET", headers=None):
        conn = http.client.HTTPSConnection("127.0.0.1", world["registry"].port, context=ctx, timeout=60)
        conn.request(method, path, headers={"Authorization": f"Bearer {token}", **(headers or {})})
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
