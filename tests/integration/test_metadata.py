"""Manifest metadata shared through Redis (Dragonfly's protocol): several Berth
processes with their own cache dirs and one real redis-server in front of the real
registry. The registry's access log counts what reached the upstream."""

import concurrent.futures
import json
import os
import signal
import threading
import time

import pytest

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_binary, berth_config, write_docker_config

INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
CONTAINERD_ACCEPT = harness.CONTAINERD_ACCEPT


@pytest.fixture
def redis(tmp_path):
    r = harness.RedisServer(str(tmp_path / "redis")).start()
    yield r
    r.stop(sig=9)


@pytest.fixture
def nodes(world, tmp_path):
    """Starts Berth processes ("nodes") with their own cache dirs and the given
    metadata section; stops them all at the end, also on failure."""
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    started = []

    def start(n, metadata):
        out = []
        for _ in range(n):
            d = tmp_path / f"node{len(started)}"
            extra = f"cache:\n  dir: {d / 'cache'}\n  max_size: 1GiB\nmetadata:\n{metadata}"
            b = harness.Berth(berth_binary(), str(d), berth_config(world, str(secret), extra_top=extra)).start()
            started.append(b)
            out.append(b)
        return out

    yield start
    for b in started:
        b.stop()
        assert world["robot_password"] not in b.log()


def request(node, path, method="GET", accept=CONTAINERD_ACCEPT):
    sep = "&" if "?" in path else "?"
    return harness.http_request(f"{node.url}{path}{sep}ns={REGISTRY_NAME}", method=method,
                                headers={"Accept": accept} if accept else {})


def containerd_pull(node, repo, tag):
    return harness.resolve_like_containerd(node.url, repo, tag, REGISTRY_NAME)


def manifest_requests(registry, repo):
    """Manifest requests the registry answered (not the 401 challenges), by reference."""
    out = {}
    for method, uri, status in registry.settled_requests():
        prefix = f"/v2/{repo}/manifests/"
        if uri.startswith(prefix) and status != 401:
            ref = uri[len(prefix):].split("?")[0]
            out.setdefault(ref, []).append(method)
    return out


def delta(before, after):
    return {k: len(v) - len(before.get(k, [])) for k, v in after.items() if len(v) != len(before.get(k, []))}


@pytest.mark.parametrize("count", [2, 5])
def test_nodes_pulling_a_cold_tag_at_once_ask_the_upstream_once(world, redis, nodes, count):
    cluster = nodes(count, f"  redis: {redis.url}\n  tag_ttl: 10m\n")
    registry = world["registry"]
    before = manifest_requests(registry, "library/app")
    start = threading.Barrier(count)

    def pull(node):
        start.wait()
        return containerd_pull(node, "library/app", "v1")

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(pull, cluster))
    assert all(r == results[0] for r in results), results
    index, child = results[0]
    seen = delta(before, manifest_requests(registry, "library/app"))
    # One tag request for the cluster; it brought the index's bytes, so the index
    # digest needs no request; the amd64 manifest is fetched once.
    assert seen.get("v1", 0) == 1, seen
    assert seen.get(index, 0) == 0, seen
    assert seen.get(child, 0) == 1, seen
    coalesced = sum(n.metric("berth_metadata_lookups_total", outcome="coalesced") +
                    n.metric("berth_metadata_lookups_total", outcome="shared_hit") for n in cluster)
    assert coalesced >= count - 1


def test_redis_killed_and_restarted_pulls_keep_working(world, redis, nodes):
    # A short TTL so that pulls keep touching the backend and the upstream.
    a, b = nodes(2, f"  redis: {redis.url}\n  tag_ttl: 200ms\n")
    failures, done = [], threading.Event()
    pulls = [0]

    def loop():
        while not done.is_set():
            for node in (a, b):
                try:
                    containerd_pull(node, "library/app", "v1")
                    pulls[0] += 1
                except Exception as e:  # noqa: BLE001 - any failure fails the test below
                    failures.append(repr(e))
            time.sleep(0.02)

    t = threading.Thread(target=loop)
    t.start()
    try:
        harness.wait_for(lambda: a.metric("berth_metadata_backend_up") == 1 and pulls[0] >= 4, what="warm-up")
        port = redis.port
        redis.stop(sig=9)
        harness.wait_for(lambda: a.metric("berth_metadata_backend_up") == 0 and b.metric("berth_metadata_backend_up") == 0,
                         timeout=10, what="the gauge to go down")
        during = pulls[0]
        time.sleep(1.0)
        assert pulls[0] > during, "pulls stalled while redis was down"
        restarted = harness.RedisServer(os.path.dirname(redis.log_path), port=port).start()
        try:
            harness.wait_for(lambda: a.metric("berth_metadata_backend_up") == 1 and
                             b.metric("berth_metadata_backend_up") == 1, timeout=15, what="the gauge to come back")
            after = pulls[0]
            harness.wait_for(lambda: pulls[0] >= after + 4, what="pulls after the restart")
            # Shared again: answers land in the new server.
            harness.wait_for(lambda: restarted.command("KEYS", "berth:tag:*"), what="answers shared again")
        finally:
            done.set()
            t.join()
            restarted.stop(sig=9)
    finally:
        done.set()
        t.join()
    assert not failures, failures[:5]


def test_corrupt_manifest_in_redis_is_detected_and_not_served(world, redis, nodes):
    (a,) = nodes(1, f"  redis: {redis.url}\n")
    index, child = containerd_pull(a, "library/app", "v1")
    key = f"berth:manifest:{child}"
    good = redis.command("GET", key)
    assert good and good.startswith(OCI_MANIFEST.encode() + b"\n")
    # Still valid JSON with the right media type, but not the bytes the digest names.
    redis.command("SET", key, good + b" ")
    # A node with no copy of its own reads the shared one, finds it does not hash to
    # its digest, drops it and asks the upstream.
    (b,) = nodes(1, f"  redis: {redis.url}\n")
    s, h, body = request(b, f"/v2/library/app/manifests/{child}", accept=f"{OCI_MANIFEST}, */*")
    assert s == 200 and h["Docker-Content-Digest"] == child
    assert body == good.split(b"\n", 1)[1]
    assert b.metric("berth_metadata_corrupt_total", tier="shared") == 1
    assert redis.command("GET", key) == good  # replaced by the verified copy


def test_webhook_for_a_re_pushed_tag_reaches_every_node(world, redis, nodes, tmp_path):
    secret = tmp_path / "webhook-secret"
    secret.write_text(harness.generate_password() + "\n")
    a, b = nodes(2, f"  redis: {redis.url}\n  tag_ttl: 1h\n  webhook_secret_file: {secret}\n")
    host = f"127.0.0.1:{world['registry'].port}"
    first = harness.make_small_image(str(tmp_path / "first"), seed=4001)
    harness.skopeo_push(str(tmp_path / "first"), f"docker://{host}/library/hook:v1", world["pusher_creds"])
    for node in (a, b):
        assert containerd_pull(node, "library/hook", "v1") == [first["manifest"]]
    second = harness.make_small_image(str(tmp_path / "second"), seed=4002)
    harness.skopeo_push(str(tmp_path / "second"), f"docker://{host}/library/hook:v1", world["pusher_creds"])
    # Within the TTL both nodes still answer the old digest...
    for node in (a, b):
        assert containerd_pull(node, "library/hook", "v1") == [first["manifest"]]
    event = {"type": "PUSH_ARTIFACT", "occur_at": int(time.time()), "operator": "ci",
             "event_data": {"resources": [{"digest": second["manifest"], "tag": "v1",
                                           "resource_url": f"{REGISTRY_NAME}/library/hook:v1"}],
                            "repository": {"name": "hook", "namespace": "library", "repo_full_name": "library/hook",
                                           "repo_type": "private"}}}
    hook = f"http://127.0.0.1:{a.admin_port}/webhooks/harbor"
    body = json.dumps(event).encode()
    s, _, _ = post(hook, body, "wrong")
    assert s == 401
    assert containerd_pull(b, "library/hook", "v1") == [first["manifest"]]
    s, _, reply = post(hook, body, secret.read_text().strip())
    assert s == 200, reply
    assert json.loads(reply) == {"invalidated": 2, "cluster_wide": True}
    # ...and after the webhook, every node serves the new one on its next request.
    harness.wait_for(lambda: b.metric("berth_metadata_invalidations_total", source="peer") >= 1, timeout=5,
                     what="node b to hear the invalidation")
    for node in (a, b):
        assert containerd_pull(node, "library/hook", "v1") == [second["manifest"]]
    assert a.metric("berth_metadata_webhook_requests_total", result="invalidated") == 1
    assert a.metric("berth_metadata_webhook_requests_total", result="unauthorized") == 1
    # Garbage is refused with a reason; a pull event changes nothing.
    s, _, reply = post(hook, b"{not json", secret.read_text().strip())
    assert s == 400 and b"JSON" in reply
    pull_event = dict(event, type="PULL_ARTIFACT")
    s, _, reply = post(hook, json.dumps(pull_event).encode(), secret.read_text().strip())
    assert s == 200 and json.loads(reply)["invalidated"] == 0


def post(url, body, auth):
    return harness.http_request(url, method="POST", data=body,
                                headers={"Authorization": auth, "Content-Type": "application/json"})


def test_accept_classes_never_mix(world, redis, nodes):
    (a,) = nodes(1, f"  redis: {redis.url}\n  tag_ttl: 10m\n")
    # An OCI index cached for containerd's Accept...
    s, h, _ = request(a, "/v2/library/app/manifests/v1")
    assert s == 200 and h["Content-Type"] == INDEX
    # ...is not what a Docker-schema-2-only client gets: the registry says 404 to it.
    s, h, body = request(a, "/v2/library/app/manifests/v1", accept=DOCKER_MANIFEST)
    assert s == 404 and h.get("Content-Type") != INDEX, body
    # A Docker list: the narrow client gets the amd64 child, with the child's digest.
    s, h, lst = request(a, "/v2/library/app-docker/manifests/v1")
    assert s == 200 and h["Content-Type"] == DOCKER_LIST
    list_digest = h["Docker-Content-Digest"]
    for _ in range(2):  # the second time from the cache
        s, h, child = request(a, "/v2/library/app-docker/manifests/v1", accept=DOCKER_MANIFEST)
        assert s == 200 and h["Content-Type"] == DOCKER_MANIFEST, (s, h)
        assert h["Docker-Content-Digest"] != list_digest
        assert json.loads(child)["mediaType"] == DOCKER_MANIFEST
    # And the full Accept still gets the list (PROTOCOL.md test 3).
    s, h, again = request(a, "/v2/library/app-docker/manifests/v1")
    assert s == 200 and h["Content-Type"] == DOCKER_LIST and again == lst
    # Two classes, two shared answers for the tag.
    fields = redis.command("HKEYS", f"berth:tag:{REGISTRY_NAME}/library/app-docker:v1")
    assert len(fields) == 2


def test_a_paused_redis_never_stalls_pulls_past_the_bounds(world, redis, nodes):
    """redis-server SIGSTOPped mid-run, then resumed: the commands Berth gave up on
    (SET NX of the cluster lock among them) are applied when it resumes, leaving locks
    nobody works under. No pull may wait longer than one command timeout plus
    metadata.lock_wait for any of it."""
    a, b = nodes(2, f"  redis: {redis.url}\n  tag_ttl: 100ms\n  timeout: 300ms\n  lock_wait: 1s\n")
    failures, durations, done = [], [], threading.Event()

    def loop(node):
        while not done.is_set():
            started = time.monotonic()
            try:
                containerd_pull(node, "library/app", "v1")
            except Exception as e:  # noqa: BLE001 - any failure fails the test below
                failures.append(repr(e))
            durations.append(time.monotonic() - started)
            time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(n,)) for n in (a, b, a, b)]
    for t in threads:
        t.start()
    try:
        harness.wait_for(lambda: len(durations) >= 8, what="warm-up")
        redis.proc.send_signal(signal.SIGSTOP)
        time.sleep(3)
        redis.proc.send_signal(signal.SIGCONT)
        resumed = len(durations)
        time.sleep(4)
        assert len(durations) > resumed + 8, "pulls went on after the resume"
    finally:
        redis.proc.send_signal(signal.SIGCONT)
        done.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    # Each pull is three requests; each may pay one command timeout and one lock wait.
    assert max(durations) < 3 * (0.3 + 1.0) + 1.0, f"slowest pull {max(durations):.1f}s"


def test_signed_entries_cannot_be_forged_or_moved(world, redis, nodes, tmp_path):
    """With metadata.secret_file every node signs what it writes to the backend and
    ignores what lacks this cluster's signature: a tag answer written by anyone with
    write access to Dragonfly, a genuine answer copied to another tag, an unsigned
    invalidation. A node without the secret serves the same forgery (the control)."""
    secret_file = tmp_path / "cluster-secret"
    secret_file.write_text(harness.generate_password() + "\n")
    signed = f"  redis: {redis.url}\n  secret_file: {secret_file}\n"
    (a,) = nodes(1, signed)
    index, child = containerd_pull(a, "library/app", "v1")
    group, field = f"berth:tag:{REGISTRY_NAME}/library/app:v1", "31"  # containerd's accept class
    genuine = redis.command("HGET", group, field)
    assert genuine and b" hmac=" in genuine
    child_size = len(request(a, f"/v2/library/app/manifests/{child}", accept=f"{OCI_MANIFEST}, */*")[2])
    forged = f"v1 {int(time.time() * 1000)} 1 {child_size} {child} {OCI_MANIFEST}"

    redis.command("HSET", group, field, forged)  # the tag now names the amd64 child
    redis.command("HSET", f"berth:tag:{REGISTRY_NAME}/library/app:gone", field, genuine)  # v1's answer, moved
    (b,) = nodes(1, signed)
    s, h, _ = request(b, "/v2/library/app/manifests/v1", method="HEAD")
    assert (s, h["Docker-Content-Digest"]) == (200, index), "the forgery was ignored; the upstream was asked"
    s, _, _ = request(b, "/v2/library/app/manifests/gone", method="HEAD")
    assert s == 404, "a genuine answer moved to another tag is not that tag's answer"
    assert b.metric("berth_metadata_signature_failures_total") == 2
    redis.command("PUBLISH", "berth:invalidate", f"tag:{REGISTRY_NAME}/library/app:v1")
    harness.wait_for(lambda: b.metric("berth_metadata_signature_failures_total") == 3, what="the unsigned message")
    assert b.metric("berth_metadata_invalidations_total", source="peer") == 0

    # The control: a node without the secret believes the same forgery.
    redis.command("HSET", group, field, forged)
    (c,) = nodes(1, f"  redis: {redis.url}\n")
    s, h, _ = request(c, "/v2/library/app/manifests/v1", method="HEAD")
    assert (s, h["Docker-Content-Digest"]) == (200, child)
    assert "metadata_unsigned" in c.log()
