"""An MLflow tracking server a benchmark measures (ours behind the emulator's Cloud Run front end, or a stock
``mlflow server``), and the experiment and run each one is given so that both answer the same requests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import requests


@dataclass
class Target:
    """Where a server answers and whose credentials it takes; ``seed`` fills in ``experiment`` and ``run_id``."""

    name: str
    url: str
    auth: tuple[str, str] = field(repr=False)
    experiment: str = ""
    experiment_id: str = ""
    run_id: str = ""

    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs to reach this server (MLflow's own variable names)."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.auth[0],
            "MLFLOW_TRACKING_PASSWORD": self.auth[1],
        }

    def seed(self) -> Target:
        """An experiment (the one the UI benchmark waits for) and a run in it (the one metrics are logged to), made
        through MLflow's REST API as the admin."""
        self.experiment = f"bench-{uuid.uuid4().hex[:8]}"
        api = f"{self.url}/api/2.0/mlflow"
        r = requests.post(f"{api}/experiments/create", json={"name": self.experiment}, auth=self.auth, timeout=60)
        r.raise_for_status()
        self.experiment_id = r.json()["experiment_id"]
        r = requests.post(f"{api}/runs/create", json={"experiment_id": self.experiment_id}, auth=self.auth, timeout=60)
        r.raise_for_status()
        self.run_id = r.json()["run"]["info"]["run_id"]
        return self
