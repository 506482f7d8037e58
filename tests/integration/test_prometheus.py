"""A real Prometheus scrapes real Berth nodes (one redis-server between them, sharing
blobs, traffic pulled through both): every expression of the Grafana dashboard and of the
PrometheusRule evaluates without error, and each one returns series whenever the
metrics it reads have samples. A metric that has none yet (a counter of faults that
did not happen) must still be one Berth exports, so no panel or alert refers to a
metric that does not exist."""

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_binary, berth_config, write_docker_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def dashboard_exprs():
    with open(os.path.join(ROOT, "deploy", "grafana", "berth.json")) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    assert out
    # Grafana's variables, as it would substitute them for "all nodes".
    return [e.replace("$__rate_interval", "1m").replace("$node", ".*") for e in out]


def rule_exprs():
    with open(os.path.join(ROOT, "deploy", "kubernetes", "base", "prometheusrule.yaml")) as f:
        spec = yaml.safe_load(f)["spec"]
    out = [r["expr"] for g in spec["groups"] for r in g["rules"]]
    assert out
    return out


def metric_names(expr):
    """The metric names an expression reads (histogram series by their family name)."""
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bberth_[a-z_]+", expr)} | (
        {"up"} if re.search(r"\bup\{", expr) else set())


class Prometheus(harness.Process):
    def __init__(self, directory, targets):
        os.makedirs(directory, exist_ok=True)
        self.port = harness.free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "berth",
                "static_configs": [{"targets": [t], "labels": {"node": n}} for n, t in targets],
            }],
        }
        with open(os.path.join(directory, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        super().__init__("prometheus", [
            "prometheus", f"--config.file={directory}/prometheus.yml", f"--storage.tsdb.path={directory}/data",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
        ], os.path.join(directory, "prometheus.log"))

    def query(self, expr):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad expression: 400 with the reason
            return json.loads(e.read())


@pytest.fixture
def scraped_nodes(world, tmp_path):
    redis = harness.RedisServer(str(tmp_path / "redis")).start()
    secret = tmp_path / "dockerconfigjson"
    write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
    peer_secret = tmp_path / "peer-secret"
    peer_secret.write_text(harness.generate_password(32) + "\n")
    nodes, prom = [], None
    try:
        for i in range(2):
            d = tmp_path / f"node{i}"
            # Sharing blobs: the second node's miss is filled from the first.
            extra = (f"cache:\n  dir: {d / 'cache'}\n  max_size: 1GiB\nmetadata:\n  redis: {redis.url}\n"
                     f"peers:\n  listen: 127.0.0.1:{harness.free_port()}\n  secret_file: {peer_secret}\n")
            nodes.append(harness.Berth(berth_binary(), str(d), berth_config(world, str(secret), extra_top=extra)).start())
        prom = Prometheus(str(tmp_path / "prometheus"),
                          [(f"n{i}", f"127.0.0.1:{b.admin_port}") for i, b in enumerate(nodes)]).start()
        yield prom, nodes
    finally:
        if prom:
            prom.stop()
        for b in nodes:
            b.stop()
        redis.stop(sig=9)


def test_every_dashboard_panel_and_alert_reads_metrics_berth_exports(world, scraped_nodes):
    prom, nodes = scraped_nodes
    # Traffic on both nodes: manifests (shared through redis), a blob missed then hit.
    config_digest = None
    for b in nodes:
        digests = harness.resolve_like_containerd(b.url, "library/app", "v1", REGISTRY_NAME)
        s, _, body = harness.http_request(f"{b.url}/v2/library/app/manifests/{digests[-1]}?ns={REGISTRY_NAME}",
                                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert s == 200
        config_digest = json.loads(body)["config"]["digest"]
        # A miss, then (once the fill is published) a hit.
        def hit():
            s, _, _ = harness.http_request(f"{b.url}/v2/library/app/blobs/{config_digest}?ns={REGISTRY_NAME}")
            assert s == 200
            return b.metric("berth_cache_requests_total", result="hit") >= 1

        harness.wait_for(hit, what="a cache hit")

    def value(expr):
        r = prom.query(expr)["data"]["result"]
        return float(r[0]["value"][1]) if r else None

    def scraped():
        r = prom.query('count by (__name__) ({job="berth"})')
        return r["status"] == "success" and {x["metric"]["__name__"] for x in r["data"]["result"]}

    # Both nodes scraped since the traffic, then two scrapes more so that rate() has
    # two samples of it.
    harness.wait_for(lambda: value('count(berth_cache_requests_total{job="berth", result="hit"} >= 1)') == 2,
                     timeout=60, what="prometheus to scrape both nodes after the traffic")
    time.sleep(2.5)
    have = {re.sub(r"_(bucket|sum|count)$", "", n) for n in scraped()} | {"up"}
    assert "berth_ready" in have and "berth_cache_requests_total" in have, sorted(have)
    exported = set()
    for b in nodes:
        exported |= set(re.findall(r"^# TYPE (berth_[a-z_]+) ", b.metrics(), re.M))

    failures = []
    for where, exprs in (("dashboard", dashboard_exprs()), ("rule", rule_exprs())):
        for expr in exprs:
            r = prom.query(expr)
            names = metric_names(expr)
            if r.get("status") != "success":
                failures.append(f"{where}: {expr}: {r.get('error')}")
                continue
            unknown = names - exported - {"up"}
            if unknown:
                failures.append(f"{where}: {expr}: reads {sorted(unknown)}, which Berth does not export")
            # A panel over metrics with samples shows something; an alert's expression
            # is empty while it does not fire, so only its metrics are checked.
            if where == "dashboard" and names <= have and not r["data"]["result"]:
                failures.append(f"dashboard: {expr}: no series although {sorted(names)} have samples")
    assert not failures, "\n".join(failures)
