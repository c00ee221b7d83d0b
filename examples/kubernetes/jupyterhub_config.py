"""JupyterHub with KubeSpawner, outside the Helm chart: the same profiles as values.yaml.

    jupyterhub -f examples/kubernetes/jupyterhub_config.py

The profiles live once, in values.yaml (what zero-to-jupyterhub reads); this file loads them.
"""

from pathlib import Path

import yaml

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

values = yaml.safe_load((Path(__file__).parent / "values.yaml").read_text())["singleuser"]
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = f"{values['image']['name']}:{values['image']['tag']}"
c.KubeSpawner.environment = dict(values["extraEnv"])
c.KubeSpawner.profile_list = values["profileList"]
