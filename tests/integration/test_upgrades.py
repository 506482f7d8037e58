"""Upgrades and restarts (issue #16): a new Berth takes the listening sockets of the
one it replaces on the same ports, as a DaemonSet update with maxSurge: 1 starts it,
and no client request fails or gets a wrong byte on the way."""

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_binary, write_docker_config

NS = urllib.parse.quote(REGISTRY_NAME)


def node_config(world, directory, port, admin_port, cache_dir, extra=""):
    secret = os.path.join(directory, "dockerconfigjson")
    os.makedirs(directory, exist_ok=True)
    write_docker_config(secret, REGISTRY_NAME, ROBOT, world["robot_password"])
    return f"""listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
threads: 2
registries:
  - names: [{REGISTRY_NAME}]
    endpoint: {world['registry'].endpoint}
    credentials: {secret}
    ca_file: {world['pki'].ca_file}
default_registry: {REGISTRY_NAME}
cache:
  dir: {cache_dir}
{extra}"""


def a_node(world, tmp_path, extra=""):
    """Ports chosen now and a cache directory, as one node's: (port, admin_port,
    cache, config). Every Berth started with `config` is that node's."""
    port, admin_port = harness.free_port(), harness.free_port()
    cache = str(tmp_path / "cache")
    return port, admin_port, cache, node_config(world, str(tmp_path / "secrets"), port, admin_port, cache, extra)


class PullLoop(threading.Thread):
    """A containerd-like client on one keep-alive connection: HEAD the tag, GET the
    index and the amd64 manifest by digest, GET blobs; every body is hashed against
    its digest. As Go's transport (containerd's) does, a request is sent again on a
    new connection only when a *reused* connection is closed before any byte of the
    answer (the server closed it while idle, RFC 9112 §9.3.1); anything else, a
    refused or reset new connection, a status other than 200, a short or wrong body,
    is a failure. `rate` (bytes/s) slows the reading, so a big blob spans the
    hand-over."""

    def __init__(self, port, image, blobs, rate=None, rounds=None):
        super().__init__(daemon=True)
        self.port, self.image, self.blobs, self.rate, self.rounds = port, image, blobs, rate, rounds
        self.stop = threading.Event()
        self.failures, self.requests, self.retries = [], 0, 0
        self.conn = None

    def _exchange(self, method, path, accept):
        fresh = self.conn is None or self.conn.sock is None
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request(method, path, headers={"Accept": accept} if accept else {})
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            self.conn.close()
            if fresh:
                raise AssertionError(f"{method} {path}: a new connection failed: {e!r}") from e
            self.retries += 1
            self.conn.request(method, path, headers={"Accept": accept} if accept else {})
            r = self.conn.getresponse()
        h = hashlib.sha256()
        got = 0
        started = time.monotonic()
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
            if self.rate:
                ahead = got / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
        length = r.getheader("Content-Length")
        if method == "GET" and length is not None and int(length) != got:
            raise AssertionError(f"{method} {path}: {got} bytes of {length}")
        self.requests += 1
        return r.status, r, "sha256:" + h.hexdigest()

    def one_round(self):
        base = "/v2/library/app"
        s, r, _ = self._exchange("HEAD", f"{base}/manifests/v1?ns={NS}", harness.CONTAINERD_ACCEPT)
        assert s == 200, f"HEAD tag: {s}"
        index = r.getheader("Docker-Content-Digest")
        assert index == self.image["index"], index
        for digest in (index, self.image["manifests"]["amd64"]):
            s, _, got = self._exchange("GET", f"{base}/manifests/{digest}?ns={NS}", harness.CONTAINERD_ACCEPT)
            assert s == 200 and got == digest, f"GET {digest}: {s} {got}"
        for digest in self.blobs:
            s, _, got = self._exchange("GET", f"{base}/blobs/{digest}?ns={NS}", None)
            assert s == 200 and got == digest, f"GET blob {digest}: {s} {got}"

    def run(self):
        done = 0
        while not self.stop.is_set() and (self.rounds is None or done < self.rounds):
            try:
                self.one_round()
            except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                self.failures.append(repr(e))
                if self.conn:
                    self.conn.close()
                self.conn = None
            done += 1


def small_blobs(image):
    return [b for b in image["blobs"] if b != image["big_layer"]]


def wait_in_log(b, event, timeout=30.0):
    harness.wait_for(lambda: f'"event":"{event}"' in b.log(), timeout=timeout, what=f"{event} in {b.log_path}")


def test_a_successor_takes_over_the_ports_without_a_failed_request(world, tmp_path):
    image = world["image"]
    port, admin_port, cache, config = a_node(world, tmp_path)
    old = harness.Berth(berth_binary(), str(tmp_path / "old"), config).start()
    new = None
    loops = []
    try:
        # Warm the cache through the old one: after the hand-over, the new one serves
        # the same blobs from the cache it took over.
        warm = PullLoop(port, image, image["blobs"], rounds=1)
        warm.run()
        assert warm.failures == []
        harness.wait_for(lambda: old.metric("berth_cache_objects") >= len(image["blobs"]), what="blobs published")

        loops = [PullLoop(port, image, small_blobs(image)) for _ in range(3)]
        # One slow reader of the 200 MB layer: its transfer runs across the hand-over
        # and must finish from the old process while the new one takes new requests.
        slow = PullLoop(port, image, [image["big_layer"]], rate=40 << 20)
        loops.append(slow)
        for loop in loops:
            loop.start()
        time.sleep(1.5)
        before = sum(loop.requests for loop in loops)

        new = harness.Berth(berth_binary(), str(tmp_path / "new"), config).start()
        assert new.port == port and new.admin_port == admin_port
        wait_in_log(old, "handed_over")
        assert '"event":"handover_received"' in new.log()
        # The old one drains (the slow transfer included), closes its cache, and waits.
        wait_in_log(old, "handed_over_waiting", timeout=40)
        wait_in_log(new, "cache_attached", timeout=10)
        assert old.alive(), "exited before its SIGTERM: the kubelet would restart it"
        # The DaemonSet controller deletes the old pod once the new one is ready.
        assert old.stop(timeout=10) == 0
        time.sleep(2.0)
        after_attach = sum(loop.requests for loop in loops)
        time.sleep(1.5)
    finally:
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.join(timeout=60)
        if old.alive() and (new is None or not new.alive()):
            old.stop()  # the test failed early: never leave a Berth behind
    try:
        failures = [f for loop in loops for f in loop.failures]
        print(f"requests {sum(loop.requests for loop in loops)} (before the successor {before}), "
              f"sent again after an idle close {sum(loop.retries for loop in loops)}, failed {len(failures)}")
        assert failures == [], failures
        total = sum(loop.requests for loop in loops)
        assert before > 20 and total > after_attach > before, (before, after_attach, total)
        assert slow.requests >= 2, "the slow reader's transfer did not complete"
        served_old = len(old.access_log())
        served_new = len(new.access_log())
        assert served_old > 0 and served_new > 0, (served_old, served_new)
        # The new one serves from the cache it took over: hits, no upstream fetch.
        assert new.metric("berth_cache_up") == 1
        assert new.metric("berth_cache_requests_total", result="hit") > 0
        assert new.metric("berth_cache_requests_total", result="miss") == 0
        # Admin requests reach the new process only.
        s, _, body = harness.http_request(f"http://127.0.0.1:{admin_port}/readyz")
        assert s == 200, body
        assert new.metric("berth_starts_total", previous="handover") == 1
        assert new.metric("berth_handovers_total", result="taken") == 1
        assert new.metric("berth_unserved_seconds") == 0
    finally:
        old.stop()  # already stopped unless the test failed early
        assert new.stop() == 0
    # The cache is intact: every blob rehashes to its digest.
    r = subprocess.run([berth_binary(), "cache", "verify", "-c", new.config_path], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"checked {len(image['blobs'])} blobs" in r.stdout and ", 0 bad" in r.stdout, r.stdout


def test_a_successor_that_never_accepts_leaves_the_runner_serving(world, tmp_path):
    """Whoever connects to the hand-over socket and takes the descriptors, but never
    says it accepts on them (a successor that crashes during start-up), changes
    nothing: the runner keeps accepting and a later successor can still take over."""
    image = world["image"]
    port, admin_port, cache, config = a_node(world, tmp_path)
    b = harness.Berth(berth_binary(), str(tmp_path / "b"), config).start()
    try:
        path = os.path.join(cache, "handover.sock")
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        msg, fds, _, _ = socket.recv_fds(s, 4096, 8)
        assert msg.startswith(b"berth-handover 1\n") and len(fds) == 2, msg
        for fd in fds:
            os.close(fd)
        s.close()  # gone without "accepting"
        wait_in_log(b, "handover_abandoned", timeout=10)
        assert b.metric("berth_handovers_total", result="abandoned") == 1
        loop = PullLoop(port, image, small_blobs(image), rounds=2)
        loop.run()
        assert loop.failures == [] and loop.requests > 0
        assert '"event":"shutting_down"' not in b.log()
        # And the next one is still offered the listeners.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        msg, fds, _, _ = socket.recv_fds(s, 4096, 8)
        assert len(fds) == 2
        for fd in fds:
            os.close(fd)
        s.close()
    finally:
        assert b.stop() == 0


def test_after_a_crash_the_stale_handover_socket_is_replaced(world, tmp_path):
    image = world["image"]
    port, admin_port, cache, config = a_node(world, tmp_path)
    first = harness.Berth(berth_binary(), str(tmp_path / "first"), config).start()
    first.stop(sig=signal.SIGKILL)
    assert os.path.exists(os.path.join(cache, "handover.sock"))  # left behind
    time.sleep(1.2)
    second = harness.Berth(berth_binary(), str(tmp_path / "second"), config).start()
    try:
        assert '"event":"handover_received"' not in second.log()
        assert second.metric("berth_cache_up") == 1
        # The record beside the cache says the first run did not end cleanly, and for
        # how long the node had no Berth (its last touch, up to a second before the kill).
        assert second.metric("berth_starts_total", previous="crash") == 1
        assert 1.0 <= second.metric("berth_unserved_seconds") < 10
        loop = PullLoop(port, image, small_blobs(image), rounds=1)
        loop.run()
        assert loop.failures == []
    finally:
        assert second.stop() == 0


def test_a_clean_stop_is_told_from_a_crash(world, tmp_path):
    port, admin_port, cache, config = a_node(world, tmp_path)
    first = harness.Berth(berth_binary(), str(tmp_path / "first"), config).start()
    assert first.metric("berth_starts_total", previous="first") == 1
    assert first.stop() == 0
    time.sleep(0.5)
    second = harness.Berth(berth_binary(), str(tmp_path / "second"), config).start()
    try:
        assert second.metric("berth_starts_total", previous="clean") == 1
        assert second.metric("berth_starts_total", previous="crash") == 0
        assert 0.4 <= second.metric("berth_unserved_seconds") < 10
        assert second.metric("berth_start_time_seconds") > time.time() - 60
    finally:
        assert second.stop() == 0


def test_a_berth_killed_mid_pull_is_back_at_once_and_the_next_pull_succeeds(world, tmp_path):
    """SIGKILL while containerd pulls the 200 MB layer through Berth (the registry
    behind a 50 MB/s link, so the fill is under way), then a new Berth on the same
    ports and cache, as the kubelet restarts it. The bound stated in the README: the new
    one listens within 5 s of the kill here (bench/restart.py measures it), the
    half-written fill is cleared, and a fresh containerd's pull then succeeds, every
    digest checked by containerd."""
    link = harness.FaultProxy(world["registry"].port, rate=50e6)
    port, admin_port, cache, config = a_node(world, tmp_path)
    config = config.replace(world["registry"].endpoint, f"https://127.0.0.1:{link.port}")
    certs = tmp_path / "certs.d"
    harness.write_hosts_toml(str(certs), REGISTRY_NAME, f"http://127.0.0.1:{port}", harness.dead_port())
    ref = f"{REGISTRY_NAME}/library/app:v1"
    first = harness.Berth(berth_binary(), str(tmp_path / "first"), config).start()
    second = None
    ctd = harness.Containerd(str(tmp_path / "containerd-1")).start()
    try:
        pulled = {}
        t = threading.Thread(target=lambda: pulled.update(r=ctd.pull(ref, certs)))
        t.start()
        tmp = os.path.join(cache, "tmp")
        harness.wait_for(lambda: first.metric("berth_cache_temp_bytes") > 30e6, timeout=60,
                         what="the big layer's fill to be under way")
        killed = time.monotonic()
        first.stop(sig=signal.SIGKILL)
        assert os.listdir(tmp), "a half-written fill is left behind, as after a crash"
        second = harness.Berth(berth_binary(), str(tmp_path / "second"), config).start()
        back = time.monotonic() - killed
        assert back < 5.0, f"listening {back:.2f} s after the kill"
        assert second.metric("berth_starts_total", previous="crash") == 1
        opened = [json.loads(l) for l in second.log().splitlines() if '"event":"cache_opened"' in l]
        assert opened and opened[0]["temp_files_removed"] >= 1
        t.join(timeout=300)
        ctd.stop()
        # Whatever the interrupted pull did (containerd resumes a broken body on the
        # first host, which may be the new Berth), a new pull now succeeds.
        r = harness.pull_with_fresh_containerd(tmp_path / "containerd-2", certs, ref)
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"listening again {back * 1000:.0f} ms after SIGKILL; interrupted pull rc={pulled['r'].returncode}")
    finally:
        ctd.stop()
        first.stop()
        if second is not None:
            second.stop()
        link.stop()


def fake_successor(cache):
    """Takes the runner's listeners, says it accepts, and dies: a new Berth that
    crashes right after its hand-over."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(os.path.join(cache, "handover.sock"))
    _, fds, _, _ = socket.recv_fds(s, 4096, 8)
    s.send(b"accepting\n")
    for fd in fds:
        os.close(fd)
    return s


def test_a_successor_that_dies_after_accepting_is_replaced_by_the_old_one(world, tmp_path):
    image = world["image"]
    port, admin_port, cache, config = a_node(world, tmp_path)
    b = harness.Berth(berth_binary(), str(tmp_path / "b"), config).start()
    try:
        channel = fake_successor(cache)
        wait_in_log(b, "handed_over_waiting", timeout=30)
        channel.close()  # the successor is gone, and with it every copy of the sockets
        died = time.monotonic()
        wait_in_log(b, "successor_gone", timeout=15)
        # The same process (execv keeps the pid) starts again and binds the ports.
        harness.wait_for(lambda: b.log().count('"event":"listening"') == 2, timeout=15, what="listening again")
        back = time.monotonic() - died
        loop = PullLoop(port, image, small_blobs(image), rounds=1)
        loop.run()
        assert loop.failures == [] and loop.requests > 0
        assert b.alive()
        print(f"serving again {back:.1f} s after the successor died")
        assert back < 10
    finally:
        assert b.stop() == 0


def test_a_restarted_container_of_a_retired_pod_does_not_take_the_sockets_back(world, tmp_path):
    """The old pod's container crashes after its hand-over and the kubelet restarts it
    before the pod is deleted: the restarted Berth sees its pod recorded as retired
    and waits for SIGTERM; the new Berth keeps serving throughout."""
    image = world["image"]
    port, admin_port, cache, config = a_node(world, tmp_path)
    old = harness.Berth(berth_binary(), str(tmp_path / "old"), config, env={"BERTH_POD_UID": "old-pod"}).start()
    new = harness.Berth(berth_binary(), str(tmp_path / "new"), config, env={"BERTH_POD_UID": "new-pod"}).start()
    restarted = None
    try:
        wait_in_log(old, "handed_over_waiting", timeout=30)
        wait_in_log(new, "cache_attached", timeout=10)
        old.stop(sig=signal.SIGKILL)
        restarted = harness.Berth(berth_binary(), str(tmp_path / "restarted"), config, env={"BERTH_POD_UID": "old-pod"})
        harness.Process.start(restarted)  # it never listens: no "listening" to wait for
        wait_in_log(restarted, "retired", timeout=15)
        time.sleep(1.5)
        assert '"event":"handover_received"' not in restarted.log()
        assert '"event":"handed_over"' not in new.log()
        loop = PullLoop(port, image, small_blobs(image), rounds=1)
        loop.run()
        assert loop.failures == []
        assert restarted.stop() == 0  # the pod's deletion
        time.sleep(0.5)
        loop = PullLoop(port, image, small_blobs(image), rounds=1)
        loop.run()
        assert loop.failures == [], "the node lost its Berth with the retired pod"
    finally:
        old.stop()
        if restarted is not None:
            restarted.stop()
        assert new.stop() == 0


def test_sigterm_during_start_up_is_not_lost(world, tmp_path):
    """A SIGTERM that arrives while Berth is still starting (here: waiting 5 s on a
    hand-over socket that never answers) ends it once it has started."""
    port, admin_port, cache, config = a_node(world, tmp_path)
    os.makedirs(cache)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.bind(os.path.join(cache, "handover.sock"))
    silent.listen(1)
    b = harness.Berth(berth_binary(), str(tmp_path / "b"), config)
    harness.Process.start(b)
    try:
        time.sleep(0.5)
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(timeout=30) == 0
        assert '"event":"shutting_down"' in b.log() and '"event":"shutdown_complete"' in b.log()
    finally:
        b.stop()
        silent.close()


def test_a_successor_started_while_the_runner_drains_waits_for_the_ports(world, tmp_path):
    """The old Berth got its SIGTERM first (no surge: the pod deleted, then recreated)
    and drains a slow transfer; a new one started meanwhile is refused the hand-over,
    waits for the ports instead of exiting, and serves once the old one is gone."""
    image = world["image"]
    port, admin_port, cache, config = a_node(world, tmp_path)
    old = harness.Berth(berth_binary(), str(tmp_path / "old"), config).start()
    slow = PullLoop(port, image, [image["big_layer"]], rate=60 << 20, rounds=1)
    new = None
    try:
        slow.start()
        harness.wait_for(lambda: slow.requests >= 3, what="the slow transfer to start")
        time.sleep(0.5)
        old.proc.send_signal(signal.SIGTERM)
        wait_in_log(old, "shutting_down")
        new = harness.Berth(berth_binary(), str(tmp_path / "new"), config)
        harness.Process.start(new)
        wait_in_log(new, "waiting_for_address", timeout=15)
        slow.join(timeout=60)
        assert slow.failures == [], slow.failures
        assert old.proc.wait(timeout=40) == 0
        wait_in_log(new, "listening", timeout=15)
        loop = PullLoop(port, image, small_blobs(image), rounds=1)
        loop.run()
        assert loop.failures == []
    finally:
        old.stop()
        if new is not None:
            assert new.stop() == 0
