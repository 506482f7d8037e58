"""Blob sharing between nodes (issue #13), with real Berth processes on loopback
addresses 127.0.0.x (one per node), one real redis-server as the directory and the
real registry as Harbor: one upstream fetch per layer for the whole cluster, every
byte verified, a peer never deciding who may read what."""

import datetime
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

import harness
from conftest import REGISTRY_NAME, berth_at, berth_binary

BIG_REPO = "library/app"
CHUNK = 4 * 1024 * 1024  # core::k_chunk_bytes


def sign(secret, method, digest, t=None):
    t = int(time.time()) if t is None else t
    key = hmac.new(secret.encode(), b"berth-peer-key-v1", hashlib.sha256).hexdigest()
    mac = hmac.new(key.encode(), f"berth-peer-v1\n{method}\n{digest}\n{t}".encode(), hashlib.sha256).hexdigest()
    return f"Berth-Peer t={t}, sig={mac}"


def peer_request(node, target, headers=None, method="GET"):
    host, port = node.peer.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, target, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    hdrs = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return resp.status, hdrs, body


def blob_gets(world, digest):
    """The registry's GETs of a blob that sent bytes (200 or 206)."""
    return [r for r in world["registry"].settled_requests()
            if r[0] == "GET" and r[1].split("?")[0].endswith(f"/blobs/{digest}") and r[2] in (200, 206)]


def curl_sha256(url):
    out = subprocess.run(f"curl -sf '{url}' | sha256sum", shell=True, capture_output=True, text=True, timeout=600)
    return out.stdout.split()[0]


def blob_url(node, digest, repo=BIG_REPO):
    return f"{node.url}/v2/{repo}/blobs/{digest}?ns={REGISTRY_NAME}"


def pull_at_once(nodes, digest):
    """Every node pulls `digest` at the same moment; each body must hash right."""
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n.peer, curl_sha256(blob_url(n, digest))))
               for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[n.peer] == digest.split(":")[1] for n in nodes), results


def small_layer(world):
    """The image's smallest layer that is not the big one (a few hundred KiB)."""
    root = world["registry"].storage_root
    sizes = {d: os.path.getsize(harness.blob_data_path(root, d)) for d in world["image"]["blobs"]}
    layers = [d for d in sizes if sizes[d] > 100 * 1024 and d != world["image"]["big_layer"]]
    return min(layers, key=lambda d: sizes[d])


@pytest.fixture
def cluster(world, tmp_path):
    """Starts nodes that share one redis-server and one cluster secret; stops them all."""
    redis = harness.RedisServer(str(tmp_path / "redis")).start()
    secret = harness.generate_password(32)
    secret_file = tmp_path / "peer-secret"
    secret_file.write_text(secret + "\n")
    prefix = f"t{os.getpid()}{int(time.time() * 1000) % 100000}:"
    nodes = []

    class Cluster:
        def __init__(self):
            self.redis = redis
            self.secret = secret
            self.prefix = prefix
            self.nodes = nodes

        def start(self, endpoint=None, advertise_proxy=False, stall="2s", max_uploads=16, allow=None, tls=None):
            i = len(nodes)
            host = f"127.0.0.{10 + i}"
            port = harness.free_port(host)
            proxy = None
            advertise = ""
            if advertise_proxy:
                # Other nodes reach this one through a proxy (that may corrupt bytes).
                proxy = harness.FaultProxy(port, host=f"127.0.0.{100 + i}", target_host=host)
                advertise = f"  advertise: {proxy.host}:{proxy.port}\n"
            d = tmp_path / f"node{i}"
            extra = f"""metadata:
  redis: {redis.url}
  key_prefix: "{prefix}"
peers:
  listen: {host}:{port}
  secret_file: {secret_file}
  stall_timeout: {stall}
  max_uploads: {max_uploads}
{advertise}"""
            if allow is not None:
                extra += f"  allow: [{', '.join(allow)}]\n"
            if tls is not None:
                extra += f"  tls: {{cert: {tls['cert']}, key: {tls['key']}, ca: {tls['ca']}}}\n"
            node = berth_at(world, str(d), endpoint or world["registry"].endpoint, cache_dir=str(d / "cache"),
                            extra=extra)
            node.peer = f"{host}:{port}"
            node.advertised = f"{proxy.host}:{proxy.port}" if proxy else node.peer
            node.proxy = proxy
            node.cache_dir = str(d / "cache")
            nodes.append(node)
            return node

        def holders(self, digest):
            return {m.decode() for m in redis.command("SMEMBERS", f"{prefix}blob:{digest}") or []}

        def filler(self, digest):
            v = redis.command("GET", f"{prefix}fill:{digest}")
            return v.decode() if v else None

    try:
        yield Cluster()
    finally:
        for n in nodes:
            if n.proxy:
                n.proxy.stop()
            try:
                os.kill(n.proc.pid, signal.SIGCONT)
            except (ProcessLookupError, AttributeError):
                pass
            n.stop()
        redis.stop()


def test_peer_endpoint_serves_only_signed_requests_for_blobs_it_holds(world, cluster):
    a = cluster.start()
    layer = small_layer(world)
    assert curl_sha256(blob_url(a, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: a.peer in cluster.holders(layer), what="the node to announce what it holds")
    with open(harness.blob_data_path(world["registry"].storage_root, layer), "rb") as f:
        data = f.read()
    target = f"/peer/blobs/{layer}"
    ok = sign(cluster.secret, "GET", layer)

    # Signed: the blob, a range of it, its head.
    status, hdrs, body = peer_request(a, target, {"Authorization": ok})
    assert status == 200 and body == data and hdrs["docker-content-digest"] == layer
    status, hdrs, body = peer_request(a, target, {"Authorization": ok, "Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and hdrs["content-range"] == f"bytes 100-199/{len(data)}"
    status, hdrs, body = peer_request(a, target, {"Authorization": sign(cluster.secret, "HEAD", layer)}, method="HEAD")
    assert status == 200 and int(hdrs["content-length"]) == len(data) and body == b""

    # Everything else: refused, and nothing of the blob in the answer.
    refused = {
        "no signature": (target, {}),
        "wrong secret": (target, {"Authorization": sign("not-the-cluster-secret-at-all", "GET", layer)}),
        "expired": (target, {"Authorization": sign(cluster.secret, "GET", layer, t=int(time.time()) - 120)}),
        "from the future": (target, {"Authorization": sign(cluster.secret, "GET", layer, t=int(time.time()) + 120)}),
        "signed for another blob": (target, {"Authorization": sign(cluster.secret, "GET", "sha256:" + "0" * 64)}),
        "signed for HEAD": (target, {"Authorization": sign(cluster.secret, "HEAD", layer)}),
        "garbled": (target, {"Authorization": "Berth-Peer t=abc, sig=zz"}),
        "bearer": (target, {"Authorization": "Bearer " + ok}),
    }
    for why, (t, h) in refused.items():
        status, _, body = peer_request(a, t, h)
        assert status == 401, why
        assert data[:64] not in body, why
    for t in ("/v2/", f"/v2/{BIG_REPO}/blobs/{layer}?ns={REGISTRY_NAME}", "/peer/blobs/latest",
              f"/peer/blobs/{layer}?x=1", f"/peer/blobs/{layer}/../{layer}", "/peer/manifests/" + layer, "/metrics"):
        status, _, body = peer_request(a, t, {"Authorization": ok})
        assert status == 404, t
        assert data[:64] not in body
    status, _, _ = peer_request(a, target, {"Authorization": ok}, method="DELETE")
    assert status == 405
    # A blob it does not hold, signed: unknown here, and no fill is started for it.
    other = world["image"]["big_layer"]
    before = len(blob_gets(world, other))
    status, _, _ = peer_request(a, f"/peer/blobs/{other}", {"Authorization": sign(cluster.secret, "GET", other)})
    assert status == 404
    time.sleep(0.5)
    assert len(blob_gets(world, other)) == before
    assert a.metric("berth_peer_uploads_total", outcome="unauthorized") == len(refused)
    assert a.metric("berth_peer_uploads_total", outcome="hit") == 3
    # The mirror port knows nothing of /peer.
    s, _, _ = harness.http_request(f"{a.url}/peer/blobs/{layer}", headers={"Authorization": ok})
    assert s == 404


def raw_exchange(source, dest, request):
    """Sends `request` from address `source` to "host:port" `dest`; returns what came
    back before the server closed (b"" when it closed without a word)."""
    host, port = dest.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(10)
    try:
        s.bind((source, 0))
        s.connect((host, int(port)))
        try:
            s.sendall(request)
        except OSError:
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def test_peer_port_closes_connections_from_outside_peers_allow(world, cluster):
    """peers.allow: a connection from an address outside it is closed before a byte is
    read, signed or not; one from inside gets the endpoint's answers. A node whose
    holder refuses it goes to the upstream: nothing fails."""
    layer = small_layer(world)
    # Nodes' requests to 127.0.0.x leave from 127.0.0.1 (the loopback route's source).
    holder = cluster.start(allow=["127.0.0.1/32", "10.0.0.0/8"])
    assert curl_sha256(blob_url(holder, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: holder.peer in cluster.holders(layer), what="the holder's announcement")
    request = (f"GET /peer/blobs/{layer} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: {sign(cluster.secret, 'GET', layer)}\r\nConnection: close\r\n\r\n").encode()
    inside = raw_exchange("127.0.0.1", holder.peer, request)
    assert inside.startswith(b"HTTP/1.1 200"), inside[:200]
    # A pod (or anything) from another address: the same signed request gets nothing.
    assert raw_exchange("127.0.0.77", holder.peer, request) == b""
    assert holder.metric("berth_http_connections_shed_total", listener="peer", action="not_allowed") >= 1
    # Another node's asks are admitted from the allowed address: the blob comes from the holder.
    asker = cluster.start()
    before = len(blob_gets(world, layer))
    assert curl_sha256(blob_url(asker, layer)) == layer.split(":")[1]
    assert len(blob_gets(world, layer)) == before
    assert asker.metric("berth_peer_fetches_total", outcome="ok") == 1
    # A holder that allows only other addresses: the asker is turned away and goes to the upstream.
    strict = cluster.start(allow=["10.20.0.0/16"])
    other = small_layer_other(world, layer)
    assert curl_sha256(blob_url(strict, other)) == other.split(":")[1]
    harness.wait_for(lambda: strict.peer in cluster.holders(other), what="the strict holder's announcement")
    before = len(blob_gets(world, other))
    late = cluster.start()
    assert curl_sha256(blob_url(late, other)) == other.split(":")[1]
    assert late.metric("berth_peer_fetches_total", outcome="unreachable") >= 1
    assert len(blob_gets(world, other)) == before + 1
    assert strict.metric("berth_http_connections_shed_total", listener="peer", action="not_allowed") >= 1


def peer_pki(directory, name="berth-peer"):
    """A CA and the cluster's one peer certificate (DNS name `name`, server and client
    use), as cert-manager would issue them. Returns {cert, key, ca} file paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"peer CA {os.path.basename(directory)}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = {k: os.path.join(directory, f) for k, f in (("cert", "tls.crt"), ("key", "tls.key"), ("ca", "ca.crt"))}
    with open(out["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(out["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(out["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return out


def tls_exchange(dest, request, ca, client=None, server_name="berth-peer"):
    """Sends `request` over TLS to "host:port" `dest`, checking the server's certificate
    against `ca` and `server_name`, presenting `client` ({cert, key}) if given. Returns
    the answer's bytes, or the exception that ended the exchange."""
    host, port = dest.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    if client:
        ctx.load_cert_chain(client["cert"], client["key"])
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name) as s:
                s.sendall(request)
                out = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return out
                    out += chunk
    except (ssl.SSLError, OSError) as e:
        return e


def test_peers_speak_mutual_tls_and_refuse_anyone_without_the_cluster_certificate(world, cluster, tmp_path):
    """peers.tls: blobs move between nodes over TLS; the peer port takes no plain HTTP,
    no client without a certificate, none from another CA; a node with the wrong
    certificate is refused and goes to the upstream, and pulls never fail."""
    pki = peer_pki(str(tmp_path / "pki"))
    stranger = peer_pki(str(tmp_path / "other"))
    layer = small_layer(world)
    holder = cluster.start(tls=pki)
    assert curl_sha256(blob_url(holder, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: holder.peer in cluster.holders(layer), what="the holder's announcement")
    request = (f"GET /peer/blobs/{layer} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: {sign(cluster.secret, 'GET', layer)}\r\nConnection: close\r\n\r\n").encode()
    with open(harness.blob_data_path(world["registry"].storage_root, layer), "rb") as f:
        data = f.read()
    # The cluster's certificate: the blob, over TLS, from a server that proved it is a peer.
    good = tls_exchange(holder.peer, request, pki["ca"], client=pki)
    assert isinstance(good, bytes) and good.startswith(b"HTTP/1.1 200"), good
    assert good.split(b"\r\n\r\n", 1)[1] == data
    # Plain HTTP to the TLS port: no answer in HTTP.
    plain = raw_exchange("127.0.0.1", holder.peer, request)
    assert not plain.startswith(b"HTTP"), plain[:100]
    # TLS without a client certificate, or with one from another CA: refused.
    for who in (None, stranger):
        refused = tls_exchange(holder.peer, request, pki["ca"], client=who)
        assert not (isinstance(refused, bytes) and refused.startswith(b"HTTP")), refused
    # A server certificate from another CA is not believed by a client either.
    assert isinstance(tls_exchange(holder.peer, request, stranger["ca"], client=pki), ssl.SSLError)
    harness.wait_for(lambda: holder.metric("berth_http_connections_shed_total", listener="peer",
                                           action="tls_failed") >= 3, what="the refused handshakes counted")
    # Another node with the cluster's certificate gets the blob from the holder, over TLS.
    asker = cluster.start(tls=pki)
    before = len(blob_gets(world, layer))
    assert curl_sha256(blob_url(asker, layer)) == layer.split(":")[1]
    assert len(blob_gets(world, layer)) == before
    assert asker.metric("berth_peer_fetches_total", outcome="ok") == 1
    assert asker.metric("berth_fill_bytes_total", source="peer") == len(data)
    # A node holding another CA's certificate: refused by the holders, the blob comes from the upstream.
    outsider = cluster.start(tls=stranger)
    assert curl_sha256(blob_url(outsider, layer)) == layer.split(":")[1]
    assert outsider.metric("berth_peer_fetches_total", outcome="unreachable") >= 1
    assert outsider.metric("berth_fill_bytes_total", source="peer") == 0
    assert len(blob_gets(world, layer)) == before + 1


def test_silent_connections_cannot_lock_a_tls_peer_port_and_do_not_hold_up_a_stop(world, cluster, tmp_path):
    """A client that connects to the TLS peer port and says nothing: 60 of them (over the
    listener's 64 places) do not keep a real peer out (handshakes give way oldest first,
    and are cut after 3 s), and a SIGTERM with handshakes under way stops Berth cleanly
    and at once (no forced shutdown, no crash record)."""
    pki = peer_pki(str(tmp_path / "pki"))
    layer = small_layer(world)
    holder = cluster.start(tls=pki)
    assert curl_sha256(blob_url(holder, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: holder.peer in cluster.holders(layer), what="the holder's announcement")
    host, port = holder.peer.rsplit(":", 1)
    silent = []
    try:
        for _ in range(60):
            s = socket.create_connection((host, int(port)), timeout=10)
            silent.append(s)
        request = (f"GET /peer/blobs/{layer} HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: {sign(cluster.secret, 'GET', layer)}\r\nConnection: close\r\n\r\n").encode()
        got = tls_exchange(holder.peer, request, pki["ca"], client=pki)
        assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200"), got
        assert holder.metric("berth_http_connections_shed_total", listener="peer", action="closed_handshake") >= 20
        # A silent connection is closed within the handshake's 3 s.
        started = time.monotonic()
        last = silent[-1]
        last.settimeout(10)
        assert last.recv(1) == b""
        assert time.monotonic() - started < 5
        # Handshakes under way, then SIGTERM: a clean, prompt stop.
        for _ in range(10):
            silent.append(socket.create_connection((host, int(port)), timeout=10))
        started = time.monotonic()
        rc = holder.stop()
        assert rc == 0 and time.monotonic() - started < 8, rc
        log = holder.log()
        assert '"shutdown_complete"' in log and '"shutdown_forced"' not in log
    finally:
        for s in silent:
            s.close()


def test_a_start_that_fails_to_bind_the_peer_port_exits_cleanly(world, cluster, tmp_path):
    """The peer address is taken: Berth says so and exits, without touching a store it
    has already closed (the blob directory's re-announcement reads the store)."""
    host = "127.0.0.60"
    taken = socket.socket()
    taken.bind((host, 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        d = tmp_path / "failed-start"
        os.makedirs(d)
        secret = d / "dockerconfigjson"
        harness.write_dockerconfigjson(str(secret), REGISTRY_NAME, "robot$cluster-pull", "an-obviously-fake-pw")
        cfg = d / "berth.yaml"
        cfg.write_text(f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
shutdown_timeout: 1s
registries:
  - names: [{REGISTRY_NAME}]
    endpoint: {world["registry"].endpoint}
    credentials: {secret}
    ca_file: {world['pki'].ca_file}
default_registry: {REGISTRY_NAME}
cache:
  dir: {d / 'cache'}
metadata:
  redis: {cluster.redis.url}
  key_prefix: "{cluster.prefix}"
peers:
  listen: {host}:{port}
  secret_file: {tmp_path / 'peer-secret'}
""")
        r = subprocess.run([berth_binary(), "serve", "--config", str(cfg)], capture_output=True, text=True,
                           timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert f"cannot listen on {host}:{port}" in out, out
        assert "Sanitizer" not in out and "Segmentation" not in out, out
    finally:
        taken.close()


def small_layer_other(world, than):
    """A small layer other than `than` and the big one."""
    root = world["registry"].storage_root
    sizes = {d: os.path.getsize(harness.blob_data_path(root, d)) for d in world["image"]["blobs"]}
    layers = [d for d in sizes if d not in (than, world["image"]["big_layer"])]
    return min(layers, key=lambda d: sizes[d])


def test_herd_of_ten_nodes_makes_one_upstream_fetch(world, cluster):
    big = world["image"]["big_layer"]
    # Harbor across a network: 100 MB/s, so the nodes really follow a fill under way.
    link = harness.FaultProxy(world["registry"].port, rate=100e6)
    try:
        nodes = [cluster.start(endpoint=f"https://127.0.0.1:{link.port}") for _ in range(10)]
        before = len(blob_gets(world, big))
        pull_at_once(nodes, big)
        gets = blob_gets(world, big)[before:]
        assert len(gets) == 1, f"one upstream fetch for ten nodes, got {gets}"
        harness.wait_for(lambda: cluster.holders(big) == {n.peer for n in nodes}, what="every node to be a holder")
        size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
        harness.wait_for(lambda: sum(n.metric("berth_fill_bytes_total", source="peer") for n in nodes) == 9 * size,
                         what="nine nodes to have filled from peers")
        assert sum(n.metric("berth_fill_bytes_total", source="upstream") for n in nodes) == size
        # Every chunk from a peer was checked against its hash before release, growing
        # fills' included (their lists grow as their chunks end), and none was wrong.
        chunks = -(-size // CHUNK)
        unchecked = {n.peer: n.metric("berth_peer_chunk_checks_total", result="unchecked") for n in nodes}
        why = [line for n in nodes if unchecked[n.peer] for line in n.log().splitlines() if "chunk_list" in line]
        # A list request that times out twice on a loaded machine (the sanitizer build)
        # leaves that one chunk unchecked, retried at the next: never more than a stray one.
        assert sum(unchecked.values()) <= 2 and max(unchecked.values()) <= 1, (unchecked, why[:5])
        assert sum(n.metric("berth_peer_chunk_checks_total", result="mismatch") for n in nodes) == 0
        assert sum(n.metric("berth_peer_chunk_checks_total", result="match") for n in nodes) >= 9 * chunks - sum(
            unchecked.values())
    finally:
        link.stop()


def test_a_busy_filler_is_relayed_by_its_followers_not_bypassed_to_the_upstream(world, cluster):
    """Each node may send to two peers at once: eight nodes still make one upstream
    fetch, the nodes turned away by the filler following the ones that follow it."""
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    link = harness.FaultProxy(world["registry"].port, rate=60e6)
    try:
        nodes = [cluster.start(endpoint=f"https://127.0.0.1:{link.port}", max_uploads=2) for _ in range(8)]
        before = len(blob_gets(world, big))
        pull_at_once(nodes, big)
        gets = blob_gets(world, big)[before:]
        assert len(gets) == 1, f"one upstream fetch although the filler was busy, got {gets}"
        filler = [n for n in nodes if n.metric("berth_fill_bytes_total", source="upstream") > 0]
        assert len(filler) == 1
        assert filler[0].metric("berth_fill_bytes_total", source="upstream") == size
        # The filler turned some away; others served them from their own growing fills.
        assert sum(n.metric("berth_peer_fetches_total", outcome="busy") for n in nodes) >= 1
        relayed = sum(n.metric("berth_peer_uploads_total", outcome="filling") for n in nodes if n is not filler[0])
        assert relayed >= 1, "a follower relayed the blob onward"
        assert sum(n.metric("berth_peer_directory_operations_total", op="relay", result="ok") for n in nodes) >= 1
        harness.wait_for(lambda: sum(n.metric("berth_fill_bytes_total", source="peer") for n in nodes) == 7 * size,
                         what="seven nodes to have filled from peers")
        harness.wait_for(lambda: cluster.holders(big) == {n.peer for n in nodes}, what="every node to be a holder")
        # A relay is unlisted once its copy is published.
        harness.wait_for(lambda: not cluster.redis.command("SMEMBERS", f"{cluster.prefix}relay:{big}"),
                         what="the relay listing to empty")
    finally:
        link.stop()


def test_filler_killed_midway_the_others_finish_without_a_herd(world, cluster):
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    link = harness.FaultProxy(world["registry"].port, rate=40e6)
    try:
        nodes = [cluster.start(endpoint=f"https://127.0.0.1:{link.port}") for _ in range(4)]
        before = len(blob_gets(world, big))
        # One node starts the fill; the others join it once it is under way.
        first = nodes[0]
        results = {}
        threads = [threading.Thread(target=lambda: results.__setitem__("first", curl_sha256(blob_url(first, big))))]
        threads[0].start()
        harness.wait_for(lambda: cluster.filler(big) == first.peer,
                         what="the first node to claim the fill")
        rest = nodes[1:]
        for n in rest:
            t = threading.Thread(target=lambda n=n: results.__setitem__(n.peer, curl_sha256(blob_url(n, big))))
            t.start()
            threads.append(t)
        tmp = os.path.join(first.cache_dir, "tmp")

        def filled():
            return sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) if os.path.isdir(tmp) else 0

        harness.wait_for(lambda: filled() >= 0.4 * size, timeout=60, what="the fill to reach 40%")
        first.proc.kill()
        for t in threads:
            t.join()
        for n in rest:
            assert results[n.peer] == big.split(":")[1], n.peer
        gets = blob_gets(world, big)[before:]
        ranged = [g for g in gets if g[2] == 206]
        assert len(gets) <= 2, f"the killed filler's work resumed once, not once per node: {gets}"
        assert len(gets) == 1 or ranged, gets
    finally:
        link.stop()


def test_peer_sending_wrong_bytes_of_a_small_blob_the_client_gets_one_whole_right_body(world, cluster):
    """A blob of one chunk has no chunk list: its digest is its check, before the last
    byte goes out. A wrong copy is dropped unseen and the fill starts again elsewhere."""
    layer = small_layer(world)
    holder = cluster.start(advertise_proxy=True)
    assert curl_sha256(blob_url(holder, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: holder.advertised in cluster.holders(layer), what="the holder's announcement")
    holder.proxy.flip_at = 4096  # every byte stream through it has one byte inverted (past the headers)
    asker = cluster.start()
    before = len(blob_gets(world, layer))
    status, _, body, complete = harness.raw_get(asker.port, f"/v2/{BIG_REPO}/blobs/{layer}?ns={REGISTRY_NAME}")
    assert holder.proxy.flips >= 1, "the bytes did come through the corrupting link"
    assert status == 200 and complete, "one body, not a cut one to retry"
    assert hashlib.sha256(body).hexdigest() == layer.split(":")[1]
    assert asker.metric("berth_peer_fetches_total", outcome="wrong_bytes") == 1
    assert asker.metric("berth_peer_chunk_checks_total", result="mismatch") == 1
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, layer))
    harness.wait_for(lambda: asker.metric("berth_fill_bytes_total", source="upstream") == size,
                     what="the blob to come from the upstream instead")
    assert len(blob_gets(world, layer)) == before + 1, "the upstream's one GET"
    harness.wait_for(lambda: cluster.holders(layer) == {asker.peer}, what="the bad copy unlisted, the good one listed")
    cached = os.path.join(asker.cache_dir, "blobs", "sha256", layer.split(":")[1][:2], layer.split(":")[1])
    harness.wait_for(lambda: os.path.exists(cached), what="the asker's copy to be published")
    with open(cached, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == layer.split(":")[1]
    # The next pull is a hit: nothing more from anyone.
    assert curl_sha256(blob_url(asker, layer)) == layer.split(":")[1]
    assert len(blob_gets(world, layer)) == before + 1


def test_peer_sending_wrong_bytes_mid_blob_the_client_gets_one_whole_right_body(world, cluster):
    """The bytes of a layer of many chunks are checked chunk by chunk: a node whose
    bytes go wrong is dropped at the end of that chunk, before any client has a byte of
    it, and the fill goes on from the chunk's first byte elsewhere (here the upstream,
    with Range). The client's one body is whole and right: no retry."""
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    holder = cluster.start(advertise_proxy=True)
    assert curl_sha256(blob_url(holder, big)) == big.split(":")[1]
    harness.wait_for(lambda: holder.advertised in cluster.holders(big), what="the holder's announcement")
    # One byte inverted in the third chunk of every stream through the holder's link
    # (past the headers; the chunk list, a few kB, passes untouched).
    holder.proxy.flip_at = 2 * CHUNK + 100000
    asker = cluster.start()
    before = len(blob_gets(world, big))
    out = subprocess.run(f"curl -sS --fail-with-body -o /dev/stdout '{blob_url(asker, big)}' | sha256sum",
                         shell=True, capture_output=True, text=True, timeout=600)
    assert out.stdout.split()[0] == big.split(":")[1], f"one body, whole and right ({out.stderr})"
    assert holder.proxy.flips >= 1, "the bytes did come through the corrupting link"
    assert asker.metric("berth_peer_fetches_total", outcome="wrong_bytes") == 1
    assert asker.metric("berth_peer_chunk_checks_total", result="mismatch") == 1
    assert asker.metric("berth_peer_chunk_checks_total", result="match") == 2, "two good chunks, then the bad one"
    assert asker.metric("berth_cache_resumes_total", result="ok") >= 1
    # The peer gave three chunks (the third wrong); the upstream the rest, from the third's first byte.
    harness.wait_for(lambda: asker.metric("berth_fill_bytes_total", source="upstream") == size - 2 * CHUNK,
                     what="the upstream to send the blob from the third chunk on")
    assert asker.metric("berth_fill_bytes_total", source="peer") == 3 * CHUNK
    gets = blob_gets(world, big)[before:]
    assert [g[2] for g in gets] == [206], f"one ranged GET, not the whole blob again: {gets}"
    cached = os.path.join(asker.cache_dir, "blobs", "sha256", big.split(":")[1][:2], big.split(":")[1])
    harness.wait_for(lambda: os.path.exists(cached), what="the asker's copy to be published")
    h = hashlib.sha256()
    with open(cached, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    assert h.hexdigest() == big.split(":")[1]
    harness.wait_for(lambda: holder.advertised not in cluster.holders(big), what="the lying holder unlisted")


def test_chunk_lists_are_signed_and_every_node_cuts_a_blob_alike(world, cluster):
    big = world["image"]["big_layer"]
    size = os.path.getsize(harness.blob_data_path(world["registry"].storage_root, big))
    a = cluster.start()
    assert curl_sha256(blob_url(a, big)) == big.split(":")[1]
    harness.wait_for(lambda: a.peer in cluster.holders(big), what="the holder's announcement")
    b = cluster.start()
    assert curl_sha256(blob_url(b, big)) == big.split(":")[1]
    chunks = -(-size // CHUNK)
    assert b.metric("berth_peer_chunk_checks_total", result="match") == chunks, "every chunk from a was checked"
    assert b.metric("berth_fill_bytes_total", source="upstream") == 0
    harness.wait_for(lambda: b.peer in cluster.holders(big), what="b's announcement")
    target = f"/peer/chunks/{big}"
    lists = []
    for node in (a, b):  # a filled from the upstream, b from a: the same list
        status, hdrs, body = peer_request(node, target, {"Authorization": sign(cluster.secret, "CHUNKS", big)})
        assert status == 200 and hdrs["content-type"] == "application/json", body
        doc = json.loads(body)
        assert doc["chunk_size"] == CHUNK and doc["from"] == 0
        assert len(doc["chunks"]) == 32 * chunks
        lists.append(doc["chunks"])
    assert lists[0] == lists[1]
    status, _, body = peer_request(a, target + "?from=5", {"Authorization": sign(cluster.secret, "CHUNKS", big)})
    assert status == 200 and json.loads(body) == {"chunk_size": CHUNK, "from": 5, "chunks": lists[0][5 * 32:]}
    for query in ("?from=", "?from=x", "?from=-1", "?from=1&x=2", "?to=3", "?from=99999999999"):
        status, _, _ = peer_request(a, target + query, {"Authorization": sign(cluster.secret, "CHUNKS", big)})
        assert status == 404, query
    for why, headers, method, t in [
        ("no signature", {}, "GET", target),
        ("a blob's signature", {"Authorization": sign(cluster.secret, "GET", big)}, "GET", target),
        ("wrong secret", {"Authorization": sign("not-the-cluster-secret-at-all", "CHUNKS", big)}, "GET", target),
        ("a chunk list's signature for the blob", {"Authorization": sign(cluster.secret, "CHUNKS", big)}, "GET",
         f"/peer/blobs/{big}"),
    ]:
        status, _, body = peer_request(a, t, headers, method=method)
        assert status == 401, why
        assert lists[0].encode() not in body, why
    status, _, _ = peer_request(a, target, {"Authorization": sign(cluster.secret, "CHUNKS", big)}, method="HEAD")
    assert status == 405
    # A blob of one chunk keeps no list: its digest checks it at the same point.
    layer = small_layer(world)
    assert curl_sha256(blob_url(a, layer)) == layer.split(":")[1]
    status, _, _ = peer_request(a, f"/peer/chunks/{layer}", {"Authorization": sign(cluster.secret, "CHUNKS", layer)})
    assert status == 404
    assert a.metric("berth_peer_uploads_total", outcome="chunk_list") >= 2


def test_repository_the_upstream_denies_is_not_served_from_a_peer(world, cluster):
    layer = small_layer(world)
    a = cluster.start()
    assert curl_sha256(blob_url(a, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: a.peer in cluster.holders(layer), what="the holder's announcement")
    b = cluster.start()
    # The same blob is in private/secret, which the robot may not pull.
    status, _, body, _ = harness.raw_get(b.port, f"/v2/private/secret/blobs/{layer}?ns={REGISTRY_NAME}")
    assert status in (401, 403, 404), status
    with open(harness.blob_data_path(world["registry"].storage_root, layer), "rb") as f:
        assert f.read(64) not in body
    assert a.metric("berth_peer_uploads_total", outcome="hit") == 0, "the holder was never even asked"
    # Allowed repository: served from the peer.
    assert curl_sha256(blob_url(b, layer)) == layer.split(":")[1]
    assert a.metric("berth_peer_uploads_total", outcome="hit") == 1


def test_stalled_peer_is_dropped_within_the_stall_timeout(world, cluster):
    layer = small_layer(world)
    a = cluster.start()
    assert curl_sha256(blob_url(a, layer)) == layer.split(":")[1]
    harness.wait_for(lambda: a.peer in cluster.holders(layer), what="the holder's announcement")
    b = cluster.start(stall="1s")
    os.kill(a.proc.pid, signal.SIGSTOP)  # alive to the kernel (connections are accepted), silent to peers
    try:
        started = time.monotonic()
        assert curl_sha256(blob_url(b, layer)) == layer.split(":")[1]
        took = time.monotonic() - started
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert b.metric("berth_peer_fetches_total", outcome="unreachable") == 1
    assert took < 1 + 5, f"switched to the upstream within the stall timeout (took {took:.1f}s)"


def test_directory_down_mid_rollout_pulls_come_from_the_upstream(world, cluster):
    layer = small_layer(world)
    a = cluster.start()
    b = cluster.start()
    assert curl_sha256(blob_url(a, layer)) == layer.split(":")[1]
    cluster.redis.stop()
    before = len(blob_gets(world, layer))
    assert curl_sha256(blob_url(b, layer)) == layer.split(":")[1]
    assert len(blob_gets(world, layer)) == before + 1
    assert b.metric("berth_peer_directory_operations_total", op="lookup", result="error") >= 1
