"""Operating Berth: its CLI, credential rotation, a dead upstream, shutdown."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_binary, berth_config, write_docker_config

INDEX = "application/vnd.oci.image.index.v1+json"


def run(*args, env=None):
    return subprocess.run([berth_binary(), *args], capture_output=True, text=True, timeout=30, env=env)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("berth ")


def test_check_config_prints_effective_config_without_secrets(world, tmp_path):
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    cfg = tmp_path / "berth.yaml"
    cfg.write_text(berth_config(world, str(secret)))
    env = dict(os.environ, BERTH_LOG_LEVEL="debug")
    r = run("check-config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert "log_level: debug" in r.stdout  # environment overrides applied
    assert f"credentials: {secret}" in r.stdout
    assert "credentials loaded (password redacted)" in r.stdout
    assert world["robot_password"] not in r.stdout + r.stderr


def test_check_config_names_file_line_and_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listen: 127.0.0.1:5050\nregistries:\n  - names: [r.example]\n    endpoint: ftp://r.example\n")
    r = run("check-config", str(cfg))
    assert r.returncode != 0
    assert f"{cfg}:4:15: registries[0].endpoint:" in r.stderr
    r = run("serve", "--config", str(cfg))
    assert r.returncode != 0 and "registries[0].endpoint" in r.stderr
    r = run("check-config", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "missing.yaml: cannot be read" in r.stderr


def test_check_config_rejects_a_broken_secret(world, tmp_path):
    secret = tmp_path / "dockerconfigjson"
    secret.write_text('{"auths": {"x": {"password": "hunter2-not-real"}}}')
    cfg = tmp_path / "berth.yaml"
    cfg.write_text(berth_config(world, str(secret)))
    r = run("check-config", str(cfg))
    assert r.returncode == 1
    assert "registries[0].credentials" in r.stderr
    assert "hunter2-not-real" not in r.stderr + r.stdout


def test_rotated_credentials_are_picked_up_without_restart(world, tmp_path):
    secret_dir = tmp_path / "secret"
    (secret_dir / "v1").mkdir(parents=True)
    (secret_dir / "v2").mkdir()
    write_docker_config(str(secret_dir / "v1" / ".dockerconfigjson"), REGISTRY_NAME, ROBOT, "wrong-" + harness.generate_password())
    write_docker_config(str(secret_dir / "v2" / ".dockerconfigjson"), REGISTRY_NAME, ROBOT, world["robot_password"])
    os.symlink("v1", secret_dir / "..data")
    os.symlink("..data/.dockerconfigjson", secret_dir / ".dockerconfigjson")
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), berth_config(world, str(secret_dir / ".dockerconfigjson"))).start()
    try:
        url = f"{b.url}/v2/library/app/manifests/v1?ns={REGISTRY_NAME}"
        s, h, body = harness.http_request(url, headers={"Accept": INDEX})
        assert s == 401, body  # the token service refuses the old password
        assert "WWW-Authenticate" not in h
        # Kubernetes swaps the ..data symlink atomically.
        os.symlink("v2", secret_dir / "..data_tmp")
        os.rename(secret_dir / "..data_tmp", secret_dir / "..data")
        harness.wait_for(lambda: harness.http_request(url, headers={"Accept": INDEX})[0] == 200, timeout=10,
                         what="the rotated secret to be used")
        assert b.metric("berth_credentials_loads_total", result="ok") >= 2
    finally:
        b.stop()
    assert world["robot_password"] not in b.log()


def test_unreachable_upstream_fails_fast(world, tmp_path):
    dead = harness.dead_port()
    cfg = f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
registries:
  - names: [dead.example.internal]
    endpoint: https://127.0.0.1:{dead}
default_registry: dead.example.internal
"""
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), cfg).start()
    try:
        t = time.monotonic()
        s, _, body = harness.http_request(f"{b.url}/v2/library/app/manifests/v1")
        assert time.monotonic() - t < 2
        assert s == 502 and b'"UNAVAILABLE"' in body
        assert b.metric("berth_upstream_errors_total", reason="connect") >= 1
    finally:
        b.stop()


def test_stalled_upstream_times_out(world, tmp_path):
    # A server that accepts and never answers.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    cfg = f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream:
  response_timeout: 1s
registries:
  - names: [slow.example.internal]
    endpoint: http://127.0.0.1:{port}
default_registry: slow.example.internal
"""
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), cfg).start()
    try:
        t = time.monotonic()
        s, _, body = harness.http_request(f"{b.url}/v2/library/app/manifests/v1")
        took = time.monotonic() - t
        assert s == 504 and b'"UNAVAILABLE"' in body
        assert 0.9 < took < 3, took
    finally:
        b.stop()
        stop.set()
        srv.close()
        for c in held:
            c.close()


def test_sigterm_lets_in_flight_responses_finish(world, tmp_path):
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), berth_config(world, str(secret))).start()
    big = world["image"]["big_layer"]
    sock = socket.create_connection(("127.0.0.1", b.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET /v2/library/app/blobs/{big}?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    b.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # New connections are refused while the download goes on...
    try:
        socket.create_connection(("127.0.0.1", b.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused, "Berth still accepts connections after SIGTERM"
    # ...and the download completes, slowly read.
    header, _, body = first.partition(b"\r\n\r\n")
    length = int([l for l in header.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    received = len(body)
    import hashlib

    h = hashlib.sha256(body)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        received += len(chunk)
    sock.close()
    assert received == length
    assert "sha256:" + h.hexdigest() == big
    assert b.proc.wait(timeout=30) == 0
    assert '"event":"shutting_down"' in b.log()
    assert '"event":"shutdown_complete"' in b.log()


def test_tags_list_link_is_rewritten_to_the_proxy(tmp_path):
    """distribution 2.8 does not paginate tags, so a minimal upstream that does
    (as Harbor and distribution 3 do) stands in for it here."""
    import http.server

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            body = b'{"name":"library/app","tags":["a"]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Link", f'<http://127.0.0.1:{port}/v2/library/app/tags/list?last=a&n=1>; rel="next"')
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
registries:
  - names: [paged.example.internal]
    endpoint: http://127.0.0.1:{port}
"""
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"), cfg).start()
    try:
        s, h, body = harness.http_request(f"{b.url}/v2/library/app/tags/list?n=1&ns=paged.example.internal")
        assert s == 200 and body == b'{"name":"library/app","tags":["a"]}'
        assert h["Link"] == '</v2/library/app/tags/list?last=a&n=1&ns=paged.example.internal>; rel="next"'
        assert seen[0][0] == "/v2/library/app/tags/list?n=1"
    finally:
        b.stop()
        srv.shutdown()


def test_sigterm_drain_readyz_idle_connections_and_the_deadline(world, tmp_path):
    """During the drain /readyz says 503 (so the Service stops sending), idle
    keep-alive connections are closed at once, and a client that never reads does not
    hold Berth past shutdown_timeout."""
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    b = harness.Berth(berth_binary(), str(tmp_path / "berth"),
                      berth_config(world, str(secret), extra_top="shutdown_timeout: 2s\n")).start()
    admin = f"http://127.0.0.1:{b.admin_port}"
    assert harness.http_request(admin + "/readyz")[0] == 200
    # An idle keep-alive connection: one request answered, then nothing.
    idle = socket.create_connection(("127.0.0.1", b.port), timeout=10)
    idle.sendall(f"GET /v2/?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    # A download whose client stops reading after the first bytes.
    big = world["image"]["big_layer"]
    stuck = socket.create_connection(("127.0.0.1", b.port), timeout=30)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /v2/library/app/blobs/{big}?ns={REGISTRY_NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert stuck.recv(4096).startswith(b"HTTP/1.1 200")
    signalled = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    harness.wait_for(lambda: harness.http_request(admin + "/readyz", timeout=2)[0] == 503, timeout=2,
                     what="/readyz to turn 503 while draining")
    idle.settimeout(2)
    assert idle.recv(1) == b"", "the idle connection is closed at the start of the drain"
    code = b.proc.wait(timeout=10)
    took = time.monotonic() - signalled
    assert code == 0
    assert 1.5 < took < 4.5, f"the drain lasted {took:.1f}s for a 2s shutdown_timeout"
    stopped = [json.loads(l) for l in b.log().splitlines() if '"event":"stopped"' in l]
    assert stopped and stopped[0]["open_connections"] == 1, "stopped by the deadline, the stuck download still open"
    # The stuck download was closed and the runtime torn down in order, not abandoned.
    assert '"event":"shutdown_complete"' in b.log() and "shutdown_forced" not in b.log()
    idle.close()
    stuck.close()
