"""No secret ever leaves Berth: the robot's password (plain and as the Basic
`user:password` in base64), the tokens the token service issued to it, the Redis
password and the webhook secret are searched in every output Berth has: its stdout
and stderr at debug level, every response body and header (successes, upstream
refusals, Berth's own errors, the webhook's answers), /metrics, and check-config."""

import base64
import json
import os
import subprocess
import urllib.request

import harness
from conftest import REGISTRY_NAME, ROBOT, berth_binary, berth_config, write_docker_config


def test_no_secret_in_any_output(world, tmp_path):
    redis_password = harness.generate_password()
    webhook_secret = harness.generate_password()
    redis = harness.RedisServer(str(tmp_path / "redis"), password=redis_password).start()
    try:
        secret = tmp_path / "dockerconfigjson"
        write_docker_config(str(secret), REGISTRY_NAME, ROBOT, world["robot_password"])
        (tmp_path / "redis-password").write_text(redis_password + "\n")
        (tmp_path / "webhook-secret").write_text(webhook_secret + "\n")
        extra = (f"log_level: debug\ncache:\n  dir: {tmp_path / 'cache'}\nmetadata:\n  redis: {redis.url}\n"
                 f"  password_file: {tmp_path / 'redis-password'}\n  webhook_secret_file: {tmp_path / 'webhook-secret'}\n")
        cfg = berth_config(world, str(secret), extra_top=extra).replace("log_level: info\n", "")
        b = harness.Berth(berth_binary(), str(tmp_path / "berth"), cfg).start()
        outputs = []
        try:
            def request(path, method="GET", headers=None, data=None, base=None):
                s, h, body = harness.http_request((base or b.url) + path, method=method, headers=headers, data=data)
                outputs.append(f"{s} {dict(h)} ".encode() + body)
                return s

            layer = world["image"]["blobs"][0]
            assert request(f"/v2/library/app/manifests/v1?ns={REGISTRY_NAME}",
                           headers={"Accept": harness.CONTAINERD_ACCEPT}) == 200
            assert request(f"/v2/library/app/blobs/{layer}?ns={REGISTRY_NAME}") == 200
            assert request(f"/v2/library/app/blobs/{layer}?ns={REGISTRY_NAME}", method="HEAD") == 200
            # Through the registry that redirects blobs to a storage host (a debug line each).
            assert request(f"/v2/library/app/blobs/{layer}?ns=redirect.example.internal") == 200
            # Refusals: the upstream denies the robot, Berth refuses the request itself.
            assert request(f"/v2/private/secret/manifests/v1?ns={REGISTRY_NAME}") in (401, 403)
            assert request(f"/v2/private/secret/blobs/{layer}?ns={REGISTRY_NAME}") in (401, 403)
            assert request(f"/v2/library/app/manifests/v1?ns=elsewhere.example.internal") == 404
            assert request(f"/v2/library/app/manifests/v1?ns={REGISTRY_NAME}", method="DELETE") == 405
            assert request(f"/v2/library/app/manifests/nope?ns={REGISTRY_NAME}") == 404
            admin = f"http://127.0.0.1:{b.admin_port}"
            event = json.dumps({"type": "PUSH_ARTIFACT", "occur_at": 1, "event_data": {
                "resources": [{"digest": "sha256:" + "a" * 64, "tag": "v1",
                               "resource_url": f"{REGISTRY_NAME}/library/app:v1"}],
                "repository": {"name": "app", "namespace": "library", "repo_full_name": "library/app"}}}).encode()
            assert request("/webhooks/harbor", "POST", {"Authorization": "wrong"}, event, base=admin) == 401
            assert request("/webhooks/harbor", "POST", {"Authorization": webhook_secret}, event, base=admin) == 200
            assert request("/webhooks/harbor", "POST", {"Authorization": webhook_secret}, b"{", base=admin) == 400
            with urllib.request.urlopen(admin + "/metrics", timeout=5) as r:
                outputs.append(r.read())
        finally:
            b.stop()
        outputs.append(b.log().encode())
        assert '"event":"upstream_response"' in b.log() and '"event":"upstream_redirect"' in b.log(), \
            "the log was searched at debug level"
        check = subprocess.run([berth_binary(), "check-config", b.config_path], capture_output=True)
        assert check.returncode == 0, check.stderr
        outputs += [check.stdout, check.stderr]
        # A password written into the Redis URL itself is masked by check-config too.
        inline = tmp_path / "inline.yaml"
        inline.write_text(cfg.replace(f"redis: {redis.url}", f"redis: redis://:{redis_password}@127.0.0.1:{redis.port}/0")
                          .replace(f"  password_file: {tmp_path / 'redis-password'}\n", ""))
        check = subprocess.run([berth_binary(), "check-config", str(inline)], capture_output=True)
        assert check.returncode == 0, check.stderr
        outputs += [check.stdout, check.stderr]
    finally:
        redis.stop(sig=9)

    tokens = [t for subject, t in world["issuer"].issued if subject == ROBOT]
    assert tokens, "the token service issued the robot tokens during the test"
    forms = {
        "robot password": world["robot_password"],
        "robot Basic credentials": base64.b64encode(f"{ROBOT}:{world['robot_password']}".encode()).decode(),
        "Redis password": redis_password,
        "webhook secret": webhook_secret,
    }
    for i, t in enumerate(tokens):
        forms[f"issued token {i}"] = t
        forms[f"issued token {i} signature"] = t.rsplit(".", 1)[1]
    everything = b"\n".join(outputs)
    leaks = [name for name, value in forms.items() if value.encode() in everything]
    assert not leaks, f"secrets found in Berth's outputs: {leaks}"
