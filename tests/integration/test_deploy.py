"""deploy/: the Kustomize base and overlays render, lint, carry a valid Berth
config and the DaemonSet properties the cluster relies on; `berth containerd
install` makes a real containerd pull through Berth; the image builds and runs."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_binary, berth_config, write_docker_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")


def kustomize(path):
    r = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return list(yaml.safe_load_all(r.stdout))


def by_kind(docs, kind):
    return [d for d in docs if d and d.get("kind") == kind]


@pytest.fixture(scope="module", params=["kubernetes/base", "kubernetes/overlays/example", "flux"])
def rendered(request, tmp_path_factory):
    if shutil.which("kubectl") is None:
        # Debian does not package kubectl; CI's machine image ships it.
        pytest.skip("kubectl (with kustomize) is not installed: deploy/ rendering not checked")
    if request.param == "flux":
        # The Flux app points at Berth's base by Git URL; render it against this checkout.
        app = tmp_path_factory.mktemp("flux") / "app"
        shutil.copytree(os.path.join(DEPLOY, "flux/kubernetes/apps/harbor/berth/app"), app)
        k = (app / "kustomization.yaml").read_text()
        remote = [l.strip()[2:] for l in k.splitlines() if "//deploy/kubernetes/base" in l][0]
        local = os.path.relpath(os.path.join(DEPLOY, "kubernetes/base"), app)  # kustomize wants a relative path
        (app / "kustomization.yaml").write_text(k.replace(remote, local))
        return kustomize(str(app))
    return kustomize(os.path.join(DEPLOY, request.param))


def test_yamllint_passes():
    r = subprocess.run(["yamllint", "-s", "-c", os.path.join(ROOT, ".yamllint"), DEPLOY, os.path.join(ROOT, "config")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_renders_every_object(rendered):
    kinds = {d["kind"] for d in rendered if d}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service", "ServiceMonitor"} <= kinds


def test_rendered_config_passes_check_config(rendered, tmp_path):
    cm = by_kind(rendered, "ConfigMap")[0]
    cfg = tmp_path / "berth.yaml"
    # The cluster secret is mounted from the berth-cluster Secret; here, a stand-in.
    secret = tmp_path / "cluster-secret"
    secret.write_text(harness.generate_password() + "\n")
    cfg.write_text(cm["data"]["berth.yaml"].replace("/etc/berth/cluster/secret", str(secret)))
    ds = by_kind(rendered, "DaemonSet")[0]
    # The environment the DaemonSet gives Berth, with a node IP put in for $(HOST_IP)
    # and the pod IP for $(POD_IP) (check-config binds nothing).
    berth = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "berth"][0]
    env = dict(os.environ)
    for e in berth["env"]:
        if "value" in e:
            env[e["name"]] = e["value"].replace("$(HOST_IP)", "10.1.2.3").replace("$(POD_IP)", "10.244.0.7")
    r = subprocess.run([berth_binary(), "check-config", str(cfg)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "listen: 127.0.0.1:5050" in r.stdout  # the mirror stays on the node's loopback
    # Blob sharing on, on the node's IP: the cluster secret signs requests between nodes.
    shown = yaml.safe_load(r.stdout)
    assert shown["peers"]["listen"] == "10.1.2.3:5051", r.stdout
    assert shown["peers"]["secret_file"] == str(secret)
    # Without the DaemonSet's environment, sharing is off and the config still valid.
    r = subprocess.run([berth_binary(), "check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # The DaemonSet mounts exactly the (hashed) ConfigMap that was rendered.
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert vols["config"]["configMap"]["name"] == cm["metadata"]["name"]


def test_daemonset_properties(rendered):
    ds = by_kind(rendered, "DaemonSet")[0]
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    # Upgrades never leave a node without a serving Berth: the new pod starts beside
    # the old one (surge), takes its sockets, and only then is the old one deleted.
    assert spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["updateStrategy"]["rollingUpdate"]["maxSurge"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["automountServiceAccountToken"] is False
    berth = [c for c in pod["containers"] if c["name"] == "berth"][0]
    assert berth["args"][:1] == ["serve"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert berth[probe]["httpGet"]["path"] == path
        assert berth[probe]["httpGet"]["port"] == 9095
    # No declared ports: with hostNetwork each would be a hostPort, and the surge pod
    # could not be scheduled beside the old one.
    assert "ports" not in berth and all("ports" not in c for c in pod["initContainers"])
    # The pod's uid, so that a restarted container of a pod that handed over stays out.
    env = {e["name"]: e for e in berth["env"]}
    assert env["BERTH_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    # Other nodes reach the peer endpoint on this node's IP (the downward API), on a
    # port of its own, never the mirror's loopback one.
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["BERTH_PEERS_LISTEN"]["value"] == "$(HOST_IP):5051"
    names = [e["name"] for e in berth["env"]]
    assert names.index("HOST_IP") < names.index("BERTH_PEERS_LISTEN")  # $(VAR) sees only earlier ones
    res = berth["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    sc = berth["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    # Graceful shutdown: the grace period outlasts Berth's shutdown_timeout.
    cm = by_kind(rendered, "ConfigMap")[0]
    timeout = yaml.safe_load(cm["data"]["berth.yaml"]).get("shutdown_timeout", "25s")
    assert pod["terminationGracePeriodSeconds"] > int(timeout.rstrip("s"))
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["cache"]["hostPath"]["path"] == "/var/lib/berth"
    mounts = {m["name"]: m for m in berth["volumeMounts"]}
    assert mounts["cache"]["mountPath"] == "/var/lib/berth"
    # The hand-over socket lives in the cache hostPath, which both pods mount.
    cfg = yaml.safe_load(cm["data"]["berth.yaml"])
    assert cfg["cache"]["dir"] == "/var/lib/berth" and cfg.get("handover_socket", "") == ""
    # The Secret is mounted as a directory (no subPath), so rotations reach Berth.
    assert vols["harbor-pull"]["secret"]["secretName"] == "harbor-pull"
    assert "subPath" not in mounts["harbor-pull"]
    # Manifest metadata shared through the cluster's Dragonfly, reachable from the host network.
    config = yaml.safe_load(cm["data"]["berth.yaml"])
    assert config["metadata"]["redis"].startswith("redis://harbor-redis.harbor.svc")
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # The webhook secret is optional and, like the robot's, mounted as a directory.
    assert vols["webhook"]["secret"] == {"secretName": "berth-webhook", "optional": True}
    assert config["metadata"]["webhook_secret_file"].startswith(mounts["webhook"]["mountPath"] + "/")
    # The cluster secret that signs Dragonfly entries is required, never optional.
    assert vols["cluster-secret"]["secret"] == {"secretName": "berth-cluster"}
    assert config["metadata"]["secret_file"].startswith(mounts["cluster-secret"]["mountPath"] + "/")
    assert config["peers"]["secret_file"].startswith(mounts["cluster-secret"]["mountPath"] + "/")
    init = [c for c in pod["initContainers"] if c["name"] == "containerd-hosts"][0]
    assert init["args"][:2] == ["containerd", "install"]
    certs = [m for m in init["volumeMounts"] if m["name"] == "containerd-certs"][0]
    assert vols["containerd-certs"]["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert any(a == f"--certs-dir={certs['mountPath']}" for a in init["args"])
    assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_dashboard_uses_only_metrics_berth_exports():
    import json
    import re

    dash = json.load(open(os.path.join(DEPLOY, "grafana", "berth.json")))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"\bberth_[a-z_]+", e)}
    # Every metric is declared once, in proxy/metrics/metrics.cpp (families with labels
    # appear in /metrics only after their first sample, so the source is the reference).
    exported = set(re.findall(r'\.Name\("(berth_[a-z_]+)"\)', open(os.path.join(ROOT, "proxy/metrics/metrics.cpp")).read()))
    assert names and names <= exported, sorted(names - exported)
    titles = " ".join(p["title"] for p in dash["panels"])
    for needed in ("hit ratio", "Harbor", "latency", "errors", "Cache fill", "Dragonfly"):
        assert needed.lower() in titles.lower(), needed


def test_containerd_install_then_a_real_pull_then_uninstall_restores(world, berth, tmp_path):
    certs = tmp_path / "certs.d"
    d = certs / REGISTRY_NAME
    d.mkdir(parents=True)
    other_host = f"http://127.0.0.1:{harness.dead_port()}"
    original = (f'# the node\'s own file\nserver = "http://127.0.0.1:{harness.dead_port()}"\n\n'
                f'[host."{other_host}"]\n  capabilities = ["pull"]\n').encode()
    (d / "hosts.toml").write_bytes(original)
    r = subprocess.run([berth_binary(), "containerd", "install", "--registry", REGISTRY_NAME, "--mirror", berth.url,
                        "--certs-dir", str(certs)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("updated"), r.stderr
    text = (d / "hosts.toml").read_text()
    # containerd tries hosts in file order: Berth first, then the node's own mirror.
    assert text.index(f'[host."{berth.url}"]') < text.index(f'[host."{other_host}"]')
    assert "# the node's own file" in text and 'capabilities = ["pull", "resolve"]' in text
    r = harness.pull_with_fresh_containerd(tmp_path / "containerd", certs, f"{REGISTRY_NAME}/library/app:v1")
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([berth_binary(), "containerd", "uninstall", "--registry", REGISTRY_NAME, "--mirror", berth.url,
                        "--certs-dir", str(certs)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("restored"), r.stdout + r.stderr
    assert (d / "hosts.toml").read_bytes() == original
    assert sorted(os.listdir(d)) == ["hosts.toml"]


def test_containerd_print_writes_nothing(tmp_path):
    r = subprocess.run([berth_binary(), "containerd", "print", "--registry", "r.example", "--mirror",
                        "http://127.0.0.1:5050", "--certs-dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and '[host."http://127.0.0.1:5050"]' in r.stdout
    assert os.listdir(tmp_path) == []


def test_image_builds_from_scratch_and_runs(tmp_path):
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed (bash .ci/dev deps installs it)")
    store = tmp_path / "buildah"
    image = "localhost/berth:test"
    r = subprocess.run([os.path.join(DEPLOY, "image", "build-scratch.sh"), berth_binary(), image, str(store)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    b = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "vfs"]
    ctr = subprocess.run(b + ["from", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        run = b + ["run", "--isolation", "chroot", ctr, "--", "/usr/local/bin/berth", "--version"]
        r = subprocess.run(run, capture_output=True, text=True, timeout=120)
        if r.returncode != 0 and "sealing memfd copy" in r.stderr:
            # buildah re-executes itself from a sealed memfd; F_ADD_SEALS fails with EBUSY
            # now and then on this kernel (a transient page pin: flatpak/flatpak#3409).
            # Nothing to do with the image: once more.
            r = subprocess.run(run, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("berth "), r.stdout + r.stderr
        cfg = subprocess.run(b + ["inspect", "--format", "{{.OCIv1.Config.User}}", image], capture_output=True, text=True)
        assert cfg.stdout.strip() == "65532:65532"
    finally:
        subprocess.run(b + ["rm", ctr], capture_output=True)
        subprocess.run(b + ["rmi", "--all", "--force"], capture_output=True)


def test_containerd_falls_back_to_the_registry_with_its_ca_when_berth_is_down(world, tmp_path):
    """`berth containerd install --config` writes the registry's endpoint as `server`
    and its CA as `ca`; with Berth not running (connection refused) containerd falls
    back to the registry over TLS with that CA only (it is not in the system store) and
    pulls a public image anonymously. Without the `ca` line the same pull fails."""
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    port = harness.dead_port()  # Berth's address, with no Berth listening
    cfg = tmp_path / "berth.yaml"
    cfg.write_text(berth_config(world, str(secret)).replace("listen: 127.0.0.1:0\n", f"listen: 127.0.0.1:{port}\n", 1))
    certs = tmp_path / "certs.d"
    r = subprocess.run([berth_binary(), "containerd", "install", "--config", str(cfg), "--certs-dir", str(certs)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (certs / REGISTRY_NAME / "hosts.toml").read_text()
    assert f'server = "{world["registry"].endpoint}"' in text, text
    assert 'ca = "berth-ca.crt"' in text, text
    assert (certs / REGISTRY_NAME / "berth-ca.crt").read_bytes() == open(world["pki"].ca_file, "rb").read()
    ref = f"{REGISTRY_NAME}/public/app:v1"
    r = harness.pull_with_fresh_containerd(tmp_path / "containerd", certs, ref)
    assert r.returncode == 0, r.stdout + r.stderr
    # The control: the same file without `ca` cannot reach the registry.
    (certs / REGISTRY_NAME / "hosts.toml").write_text(text.replace('ca = "berth-ca.crt"\n', ""))
    r = harness.pull_with_fresh_containerd(tmp_path / "containerd-no-ca", certs, ref)
    assert r.returncode != 0
    assert "certificate" in (r.stdout + r.stderr).lower()


def test_fallback_credentials_let_containerd_pull_a_private_image_while_berth_is_down(world, tmp_path):
    """`install --fallback-credentials` gives the fallback `server` the robot's Basic
    credentials in hosts.toml's own [header] table. Harbor accepts Basic on /v2/
    (PROTOCOL.md §3); the stand-in is the same registry storage served with htpasswd
    auth. With Berth not running, containerd pulls the private image through the
    fallback; without the flag the same pull is refused. The file is root's alone, and
    `print` never shows the secret."""
    basic = harness.Registry(str(tmp_path / "registry-basic"), world["pki"], None, world["registry"].storage_root,
                             basic_auth={ROBOT: world["robot_password"]}).start()
    try:
        secret = tmp_path / "dockerconfigjson"
        write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
        port = harness.dead_port()  # Berth's address, with no Berth listening
        cfg = tmp_path / "berth.yaml"
        cfg.write_text(berth_config(world, str(secret))
                       .replace("listen: 127.0.0.1:0\n", f"listen: 127.0.0.1:{port}\n", 1)
                       .replace(world["registry"].endpoint, basic.endpoint))
        certs = tmp_path / "certs.d"
        install = [berth_binary(), "containerd", "install", "--config", str(cfg), "--certs-dir", str(certs)]
        ref = f"{REGISTRY_NAME}/library/app:v1"

        r = subprocess.run(install, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = harness.pull_with_fresh_containerd(tmp_path / "containerd-anonymous", certs, ref)
        assert r.returncode != 0, "the control: an anonymous fallback must be refused"
        # It did reach the registry, and was refused there (ctr reports the mirror's error).
        refused = [st for (_, uri, st) in basic.settled_requests() if "/library/app/manifests/v1" in uri]
        assert refused and set(refused) == {401}, refused
        seen = len(basic.settled_requests())

        r = subprocess.run(install + ["--fallback-credentials"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        path = certs / REGISTRY_NAME / "hosts.toml"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert "[header]" in path.read_text()
        assert world["robot_password"] not in r.stdout + r.stderr
        shown = subprocess.run([berth_binary(), "containerd", "print", "--config", str(cfg), "--certs-dir",
                                str(tmp_path / "elsewhere"), "--fallback-credentials"], capture_output=True, text=True)
        assert shown.returncode == 0 and "[header]" in shown.stdout, shown.stdout + shown.stderr
        assert "Basic <the robot's credentials>" in shown.stdout
        import base64
        basic_value = base64.b64encode(f"{ROBOT}:{world['robot_password']}".encode()).decode()
        assert basic_value not in shown.stdout and world["robot_password"] not in shown.stdout

        r = harness.pull_with_fresh_containerd(tmp_path / "containerd-robot", certs, ref)
        assert r.returncode == 0, r.stdout + r.stderr
        # Every request the fallback made was the robot's: none came without credentials.
        statuses = [st for (_, uri, st) in basic.settled_requests()[seen:] if "/library/app/" in uri]
        assert statuses and all(st in (200, 307) for st in statuses), statuses

        # Without --config there is no robot to give.
        r = subprocess.run([berth_binary(), "containerd", "install", "--registry", REGISTRY_NAME, "--mirror",
                            f"http://127.0.0.1:{port}", "--certs-dir", str(certs), "--fallback-credentials"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "--config" in r.stderr, r.stderr
    finally:
        basic.stop()


def test_alert_rules_check_and_fire_when_they_should(rendered, tmp_path):
    """The PrometheusRule's groups pass `promtool check rules`, and
    tests/alerts/berth_test.yaml fires and clears each alert with promtool."""
    rules = by_kind(rendered, "PrometheusRule")
    assert len(rules) == 1
    with open(tmp_path / "rules.yaml", "w") as f:
        yaml.safe_dump(rules[0]["spec"], f)
    r = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.copy(os.path.join(ROOT, "tests", "alerts", "berth_test.yaml"), tmp_path)
    r = subprocess.run(["promtool", "test", "rules", str(tmp_path / "berth_test.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # Every alert has a test, and every metric an alert reads is one Berth exports.
    tested = set(re.findall(r"alertname: (\w+)", open(tmp_path / "berth_test.yaml").read()))
    alerts = {r["alert"] for g in rules[0]["spec"]["groups"] for r in g["rules"]}
    assert alerts == tested, (alerts, tested)
    exported = set(re.findall(r'\.Name\("(berth_[a-z_]+)"\)', open(os.path.join(ROOT, "proxy/metrics/metrics.cpp")).read()))
    used = {m for g in rules[0]["spec"]["groups"] for r in g["rules"] for m in re.findall(r"berth_[a-z_]+", r["expr"])}
    assert used and used <= exported, sorted(used - exported)
