import harness
from conftest import REGISTRY_NAME


def test_manifest_by_tag(world, berth):
    status, headers, body = harness.http_request(
        f"{berth.url}/v2/library/app/manifests/v1?ns={REGISTRY_NAME}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    assert status == 200, body
    assert headers["Docker-Content-Digest"] == world["image"]["index"]
