"""Session fixtures: one token issuer, registries, storage server and pushed image,
shared by the tests; each is stopped at the end even when tests fail."""

import os
import shutil
import tempfile

import pytest

import harness

REGISTRY_NAME = "registry.example.internal"
REDIRECT_NAME = "redirect.example.internal"
ROBOT = "robot$cluster-pull"
PUSHER = "admin"


_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session, exitstatus):
    """In CI (CI=true) a skipped test is a failure: every skip reason here is one CI
    can fix (a package to install, root to run as). BERTH_ALLOW_SKIPS=1 opts out,
    e.g. for a sanitizer run whose RSS checks cannot mean anything.

    A sanitizer report in any Berth's log (a leak at exit, a memory error, undefined
    behaviour: the CI runs this suite against an ASan+UBSan build with leak checks on)
    fails the session too, whichever test started that Berth."""
    if _skipped and os.environ.get("CI") == "true" and os.environ.get("BERTH_ALLOW_SKIPS") != "1":
        print("\nCI=true and tests were skipped (set BERTH_ALLOW_SKIPS=1 to allow):\n  " + "\n  ".join(_skipped))
        session.exitstatus = 1
    findings = list(harness.SANITIZER_FINDINGS)
    base = session.config._tmp_path_factory.getbasetemp()
    for root, _, files in os.walk(base):
        for name in files:
            if name == "berth.log" and (found := harness.sanitizer_findings_in(os.path.join(root, name))):
                findings.append(f"{os.path.join(root, name)}: {found}")
    if findings:
        print("\nsanitizer reports in Berth logs:\n  " + "\n  ".join(sorted(set(findings))))
        session.exitstatus = 1


def berth_binary():
    path = os.environ.get("BERTH_BIN")
    if not path or not os.path.exists(path):
        pytest.exit("BERTH_BIN must name the built berth binary", returncode=2)
    return path


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="berth-it-")
    yield d
    if os.environ.get("BERTH_KEEP_TMP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def world(workdir):
    """The stand-in Harbor: token issuer + registry (+ a redirecting twin) with the
    test image pushed as library/app:v1 (OCI index) and library/app-docker:v1
    (Docker schema 2 list)."""
    stop = []
    try:
        pki = harness.Pki(os.path.join(workdir, "pki"))
        robot_password = harness.generate_password()
        pusher_password = harness.generate_password()
        issuer = harness.TokenIssuer(
            os.path.join(workdir, "issuer"),
            pki,
            {
                ROBOT: (robot_password, {"library/": ["pull"], "platform/": ["pull"]}),
                PUSHER: (pusher_password, {"": ["pull", "push", "delete"]}),
                "": (None, {"public/": ["pull"]}),  # anonymous: Harbor's public projects
            },
        ).start()
        stop.append(issuer.stop)
        storage_root = os.path.join(workdir, "storage")
        registry = harness.Registry(os.path.join(workdir, "registry"), pki, issuer, storage_root).start()
        stop.append(registry.stop)
        storage = harness.StorageServer(storage_root).start()
        stop.append(storage.stop)
        redirecting = harness.Registry(os.path.join(workdir, "registry-redirect"), pki, issuer, storage_root,
                                       redirect_base=storage.base_url).start()
        stop.append(redirecting.stop)

        cache = os.environ.get("BERTH_TEST_IMAGE_CACHE", os.path.join(workdir, "image"))
        big_mb = int(os.environ.get("BERTH_TEST_BIG_LAYER_MB", "200"))
        image = harness.make_test_image(os.path.join(cache, "layout"), big_layer_mb=big_mb)
        host = f"127.0.0.1:{registry.port}"
        creds = f"{PUSHER}:{pusher_password}"
        harness.skopeo_push(os.path.join(cache, "layout"), f"docker://{host}/library/app:v1", creds)
        harness.skopeo_push(os.path.join(cache, "layout"), f"docker://{host}/library/app-docker:v1", creds, fmt="v2s2")
        harness.skopeo_push(os.path.join(cache, "layout"), f"docker://{host}/private/secret:v1", creds)
        public = harness.make_small_image(os.path.join(cache, "public"), seed=9090)
        harness.skopeo_push(os.path.join(cache, "public"), f"docker://{host}/public/app:v1", creds)
        docker_list = harness.skopeo_inspect_raw(f"docker://{host}/library/app-docker:v1", creds=creds)

        yield {
            "pki": pki,
            "issuer": issuer,
            "registry": registry,
            "redirecting": redirecting,
            "storage": storage,
            "image": image,
            "public_image": public,
            "docker_list": docker_list,
            "robot_password": robot_password,
            "pusher_creds": creds,
            "workdir": workdir,
        }
    finally:
        for fn in reversed(stop):
            fn()


def write_docker_config(path, registry_host, username, password):
    import base64
    import json

    with open(path, "w") as f:
        json.dump({"auths": {registry_host: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}}}, f)
    os.chmod(path, 0o600)


def berth_config(world, secret_path, extra_registry="", extra_top=""):
    reg = world["registry"]
    red = world["redirecting"]
    return f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
threads: 2
log_level: info
registries:
  - names: [{REGISTRY_NAME}]
    endpoint: {reg.endpoint}
    credentials: {secret_path}
    repositories: ["library/*", "platform/**", "private/*"]
    ca_file: {world['pki'].ca_file}
{extra_registry}  - names: [{REDIRECT_NAME}]
    endpoint: {red.endpoint}
    credentials: {secret_path}
    ca_file: {world['pki'].ca_file}
    redirect_hosts: ["{world['storage'].host}:{world['storage'].port}"]
default_registry: {REGISTRY_NAME}
{extra_top}"""


def berth_at(world, directory, endpoint, ca_file=None, cache_dir=None, extra="", prefix=(), cache_extra="",
             registry_extra=""):
    """A started Berth for REGISTRY_NAME at `endpoint` (a fault or throttling proxy in
    front of the registry, say), with the robot's credentials and, given a
    `cache_dir`, a blob cache; `extra` is appended to its config. The caller stops it."""
    os.makedirs(directory, exist_ok=True)
    secret = os.path.join(directory, "dockerconfigjson")
    write_docker_config(secret, REGISTRY_NAME, ROBOT, world["robot_password"])
    cache = f"cache:\n  dir: {cache_dir}\n{cache_extra}" if cache_dir else ""
    return harness.Berth(berth_binary(), os.path.join(directory, "berth"), f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
registries:
  - names: [{REGISTRY_NAME}]
    endpoint: {endpoint}
    credentials: {secret}
    ca_file: {ca_file or world['pki'].ca_file}
{registry_extra}default_registry: {REGISTRY_NAME}
{cache}{extra}""", prefix=prefix).start()


@pytest.fixture(scope="session")
def berth(world, workdir):
    d = os.path.join(workdir, "berth")
    os.makedirs(d, exist_ok=True)
    secret = os.path.join(d, "dockerconfigjson")
    write_docker_config(secret, REGISTRY_NAME, ROBOT, world["robot_password"])
    b = harness.Berth(berth_binary(), d, berth_config(world, secret)).start()
    yield b
    b.stop()
    assert world["robot_password"] not in b.log(), "the robot password leaked into Berth's log"
