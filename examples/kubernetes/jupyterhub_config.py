"""JupyterHub with KubeSpawner, outside the Helm chart: the same profiles as the chart's values files.

    jupyterhub -f examples/kubernetes/jupyterhub_config.py

The profiles live once, in the values files (what zero-to-jupyterhub reads); this file loads one:
values-dra.yaml (Tenstorrent's DRA driver; apply dra-claim-templates.yaml first), or with
JUPYTER_TT_K8S_VALUES=values.yaml the variant for a community device plugin's extended resources.
"""

import os
from pathlib import Path

import yaml

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

values_file = Path(__file__).parent / os.environ.get("JUPYTER_TT_K8S_VALUES", "values-dra.yaml")
values = yaml.safe_load(values_file.read_text())["singleuser"]
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = f"{values['image']['name']}:{values['image']['tag']}"
c.KubeSpawner.environment = dict(values["extraEnv"])
c.KubeSpawner.profile_list = values["profileList"]
