"""The Kubernetes example (examples/kubernetes): every profile renders into a pod with KubeSpawner.

No cluster here: KubeSpawner builds the pod manifest offline (it needs a kubeconfig to exist, not to
answer), and the manifest is what Kubernetes would be sent. What a pod then sees of the cards is
tested in test_inventory.py (a container given some nodes) and test_cli.py (a plugin's TT_VISIBLE_DEVICES).
"""

import asyncio
from pathlib import Path

import pytest
import yaml
from traitlets.config import PyFileConfigLoader

from jupyter_tt.devices import CARD_TYPES

EXAMPLE = Path(__file__).parent.parent / "examples/kubernetes"
VALUES = yaml.safe_load((EXAMPLE / "values.yaml").read_text())["singleuser"]
PROFILES = VALUES["profileList"]


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "users": [{"name": "none", "user": {"token": "none"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def hub_config():
    return PyFileConfigLoader("jupyterhub_config.py", path=str(EXAMPLE)).load_config()


def test_the_plain_kubespawner_config_serves_the_helm_values_profiles():
    config = hub_config()
    assert config.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert config.KubeSpawner.profile_list == PROFILES
    assert config.KubeSpawner.environment == {"JUPYTER_TT_INVENTORY": "sysfs"}
    assert [p["slug"] for p in PROFILES] == ["n150", "n300", "loudbox"]


@pytest.mark.parametrize("profile", PROFILES, ids=[p["slug"] for p in PROFILES])
def test_each_profile_renders_a_pod_with_whole_cards_huge_pages_and_memlock(profile, kubeconfig):
    from kubernetes_asyncio.client import ApiClient
    from kubespawner import KubeSpawner

    async def manifest():
        spawner = KubeSpawner(_mock=True, config=hub_config())
        spawner.user_options = {"profile": profile["slug"]}
        await spawner.load_user_options()
        async with ApiClient() as api:  # the body the API server would be sent
            return api.sanitize_for_serialization(await spawner.get_pod_manifest())

    pod = asyncio.run(manifest())
    [container] = pod["spec"]["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    cards = {k.split("/")[1]: int(v) for k, v in limits.items() if k.startswith("tenstorrent.com/")}
    assert len(cards) == 1 and set(cards) <= set(CARD_TYPES)
    [count] = cards.values()
    assert limits["hugepages-1Gi"] == requests["hugepages-1Gi"] == f"{4 * count}Gi"
    assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/hugepages-1G"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "HugePages-1Gi"
    assert {e["name"]: e.get("value") for e in container["env"]}["JUPYTER_TT_INVENTORY"] == "sysfs"
    assert container["image"] == f"{VALUES['image']['name']}:{VALUES['image']['tag']}"
