"""The Kubernetes examples (examples/kubernetes): every profile renders into a pod with KubeSpawner, with DRA
(Tenstorrent's tt-dra-driver, values-dra.yaml) and with a community device plugin's extended resources
(values.yaml).

No cluster here: KubeSpawner builds the pod manifest offline (it needs a kubeconfig to exist, not to
answer), and the manifest is what Kubernetes would be sent. The claim templates are read back through
the Kubernetes client's own models of their API version (resource.k8s.io/v1 for Kubernetes 1.34 and
later, v1beta2 for 1.33). What a pod then sees of the cards is
tested in test_inventory.py (a container given some nodes) and test_cli.py (a plugin's TT_VISIBLE_DEVICES).
"""

import asyncio
import json
import types
from pathlib import Path

import pytest
import yaml
from traitlets.config import PyFileConfigLoader

from jupyter_tt.devices import CARD_TYPES

EXAMPLE = Path(__file__).parent.parent / "examples/kubernetes"
VALUES = yaml.safe_load((EXAMPLE / "values.yaml").read_text())["singleuser"]
PROFILES = VALUES["profileList"]
DRA_VALUES = yaml.safe_load((EXAMPLE / "values-dra.yaml").read_text())["singleuser"]
DRA_PROFILES = DRA_VALUES["profileList"]
TEMPLATES = list(yaml.safe_load_all((EXAMPLE / "dra-claim-templates.yaml").read_text()))
#: The same templates for Kubernetes 1.33, whose DRA API is resource.k8s.io/v1beta2 (1.34 serves v1).
TEMPLATES_1_33 = list(yaml.safe_load_all((EXAMPLE / "dra-claim-templates-v1beta2.yaml").read_text()))
#: 1 GiB hugepages per card, as Tenstorrent's hugepages-setup.sh reserves them on a host.
HUGEPAGES_PER_CARD = 4


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


def hub_config(values_file="values-dra.yaml", monkeypatch=None):
    if monkeypatch:
        monkeypatch.setenv("JUPYTER_TT_K8S_VALUES", values_file)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(EXAMPLE)).load_config()


def test_the_plain_kubespawner_config_serves_the_helm_values_profiles_dra_first(monkeypatch):
    monkeypatch.delenv("JUPYTER_TT_K8S_VALUES", raising=False)
    config = hub_config()
    assert config.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert config.KubeSpawner.profile_list == DRA_PROFILES
    assert config.KubeSpawner.environment == {"JUPYTER_TT_INVENTORY": "sysfs"}
    assert hub_config("values.yaml", monkeypatch).KubeSpawner.profile_list == PROFILES
    assert [p["slug"] for p in PROFILES] == [p["slug"] for p in DRA_PROFILES] == ["n150", "n300", "loudbox"]


def render(profile, config) -> dict:
    """The pod manifest KubeSpawner would send for ``profile``, as JSON."""
    from kubernetes_asyncio.client import ApiClient
    from kubespawner import KubeSpawner

    async def manifest():
        spawner = KubeSpawner(_mock=True, config=config)
        spawner.user_options = {"profile": profile["slug"]}
        await spawner.load_user_options()
        async with ApiClient() as api:  # the body the API server would be sent
            return api.sanitize_for_serialization(await spawner.get_pod_manifest())

    return asyncio.run(manifest())


def as_model(document: dict, model: str):
    """``document`` read by the Kubernetes client as ``model``: unknown or misspelt fields do not survive."""
    from kubernetes_asyncio.client import ApiClient

    async def read():
        async with ApiClient() as api:
            parsed = api.deserialize(types.SimpleNamespace(data=json.dumps(document)), model)
            return parsed, api.sanitize_for_serialization(parsed)

    return asyncio.run(read())


@pytest.mark.parametrize(("templates", "api_version", "model"), [
    (TEMPLATES, "resource.k8s.io/v1", "V1ResourceClaimTemplate"),
    (TEMPLATES_1_33, "resource.k8s.io/v1beta2", "V1beta2ResourceClaimTemplate"),
], ids=["kubernetes-1.34", "kubernetes-1.33"])
def test_each_dra_claim_template_is_a_resource_claim_template_for_whole_cards_of_one_board(kubeconfig, templates,
                                                                                         api_version, model):
    # kubeconfig: kubernetes_asyncio reads KUBECONFIG once, when first imported
    assert [t["metadata"]["name"] for t in templates] == ["tt-n150-x1", "tt-n300-x1", "tt-n300-x4"]
    for document in templates:
        template, round_trip = as_model(document, model)
        assert round_trip == document  # every field is one the API knows, spelt as it spells it
        assert (template.api_version, template.kind) == (api_version, "ResourceClaimTemplate")
        [request] = template.spec.spec.devices.requests
        exact = request.exactly
        assert exact.device_class_name == "tenstorrent.com" and exact.allocation_mode == "ExactCount"
        board, count = document["metadata"]["name"].split("-")[1], int(document["metadata"]["name"].split("-x")[1])
        assert exact.count == count and board in CARD_TYPES
        [selector] = exact.selectors
        # Guarded: a driver release that publishes no boardName (one device per chip) matches nothing.
        attribute = 'device.attributes["tenstorrent.com"].boardName'
        assert selector.cel.expression == f'has({attribute}) && {attribute} == "{board}"'
    assert [{**t, "apiVersion": None} for t in templates] == [{**t, "apiVersion": None} for t in TEMPLATES]


@pytest.mark.parametrize("profile", DRA_PROFILES, ids=[p["slug"] for p in DRA_PROFILES])
def test_each_dra_profile_renders_a_pod_that_claims_its_cards_from_a_template_and_requests_their_hugepages(
        profile, kubeconfig, monkeypatch):
    pod = render(profile, hub_config("values-dra.yaml", monkeypatch))
    [claim] = pod["spec"]["resourceClaims"]
    assert claim["resourceClaimTemplateName"] in {t["metadata"]["name"] for t in TEMPLATES}
    [container] = pod["spec"]["containers"]
    assert container["resources"]["claims"] == [{"name": claim["name"]}]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert not any(k.startswith("tenstorrent.com/") for k in {**limits, **requests})  # the claim, not a count
    # The driver mounts the hugepage filesystem through CDI, but kubelet's hugetlb limit is 0 for a page
    # size the pod does not request: four 1 GiB pages per card, requested and limited alike.
    [template] = [t for t in TEMPLATES if t["metadata"]["name"] == claim["resourceClaimTemplateName"]]
    cards = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"]
    assert limits["hugepages-1Gi"] == requests["hugepages-1Gi"] == f"{HUGEPAGES_PER_CARD * cards}Gi"
    assert "/dev/hugepages-1G" not in [m["mountPath"] for m in container.get("volumeMounts", [])]
    assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
    assert {e["name"]: e.get("value") for e in container["env"]}["JUPYTER_TT_INVENTORY"] == "sysfs"
    as_model(pod, "V1Pod")  # a pod the client can read back


@pytest.mark.parametrize("profile", PROFILES, ids=[p["slug"] for p in PROFILES])
def test_each_device_plugin_profile_renders_a_pod_with_whole_cards_huge_pages_and_memlock(profile, kubeconfig,
                                                                                          monkeypatch):
    pod = render(profile, hub_config("values.yaml", monkeypatch))
    [container] = pod["spec"]["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    cards = {k.split("/")[1]: int(v) for k, v in limits.items() if k.startswith("tenstorrent.com/")}
    assert len(cards) == 1 and set(cards) <= set(CARD_TYPES)
    [count] = cards.values()
    assert limits["hugepages-1Gi"] == requests["hugepages-1Gi"] == f"{HUGEPAGES_PER_CARD * count}Gi"
    assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/hugepages-1G"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "HugePages-1Gi"
    assert {e["name"]: e.get("value") for e in container["env"]}["JUPYTER_TT_INVENTORY"] == "sysfs"
    assert container["image"] == f"{VALUES['image']['name']}:{VALUES['image']['tag']}"
