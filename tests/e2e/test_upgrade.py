"""`mlflow-gcp upgrade` and `upgrade --rollback`, end to end: a stack deployed with an older MLflow release (its own
image, its own Python environment, as the emulator builds it), data of every kind logged with the real client, the
upgrade to the release this mlflow-gcp pins made while a client logs metrics without retries, then the rollback.

In file order, on one deployment (each step costs an image build or a restore and a revision start)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
import requests

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import EmulatorAdmin
from mlflow_gcp.image_source import pinned_mlflow_version
from mlflow_gcp.schemas import HEADS
from tests.e2e.conftest import Cli, kill_after, make_cli, mutations_during

OLD = "3.16.1"
NEW = pinned_mlflow_version()
ARTIFACT = os.urandom(3 * 1024 * 1024)


@dataclass
class Deployment:
    cli: Cli
    url: str
    creds: dict[str, str]
    notes: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def client(self) -> Iterator[Any]:
        import mlflow

        with mock.patch.dict(os.environ, self.creds):
            yield mlflow.MlflowClient(self.creds["MLFLOW_TRACKING_URI"])

    def auth(self) -> tuple[str, str]:
        return self.creds["MLFLOW_TRACKING_USERNAME"], self.creds["MLFLOW_TRACKING_PASSWORD"]

    def version(self) -> str:
        return requests.get(f"{self.url}/version", auth=self.auth(), timeout=30).text


def old_release(emulator: Emulator, tmp_path: Any) -> Deployment:
    cli = make_cli(emulator, tmp_path)
    cli.env["MLFLOW_GCP_SERVER_MLFLOW_VERSION"] = OLD
    cli("up")
    del cli.env["MLFLOW_GCP_SERVER_MLFLOW_VERSION"]  # from now on the state says which release serves
    creds = cli("env", "--json").json()
    return Deployment(cli, creds["MLFLOW_TRACKING_URI"], creds)


@pytest.fixture(scope="module")
def deployment(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return old_release(emulator, tmp_path_factory.mktemp("upgrade"))


@dataclass
class Load:
    """Logs a metric every 50 ms from a thread, without retries; every failed request is counted."""

    url: str
    auth: tuple[str, str]
    run_id: str
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        session = requests.Session()
        step = 0
        while not self._stop.is_set():
            step += 1
            body = {"run_id": self.run_id, "key": "steady", "value": step, "timestamp": int(time.time() * 1000),
                    "step": step}  # fmt: skip
            try:
                r = session.post(f"{self.url}/api/2.0/mlflow/runs/log-metric", json=body, auth=self.auth, timeout=60)
                if r.status_code == 200:
                    self.sent += 1
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)


def test_the_old_release_serves_and_status_says_so(deployment: Deployment):
    assert deployment.version() == OLD
    report = deployment.cli("status", "--json").json()
    assert report["mlflow"]["mlflow_version"] == OLD and report["mlflow"]["deployed"] == OLD
    assert report["mlflow"]["tracking_revision"] == HEADS[OLD][0]
    assert report["mlflow"]["auth_revision"] == HEADS[OLD][1]
    text = deployment.cli("status", check=False).stdout
    assert f"MLflow: {OLD} (tracking schema {HEADS[OLD][0]}" in text and "mlflow-gcp upgrade" in text


def test_up_does_not_change_the_release_and_says_how(deployment: Deployment, admin: EmulatorAdmin):
    deployment.cli.env["MLFLOW_GCP_SERVER_MLFLOW_VERSION"] = NEW
    try:
        refused = []
        mutating = mutations_during(admin, lambda: refused.append(deployment.cli("up", check=False)))
    finally:
        del deployment.cli.env["MLFLOW_GCP_SERVER_MLFLOW_VERSION"]
    assert refused[0].code == 3 and f"mlflow-gcp upgrade --to {NEW}" in refused[0].stderr, refused[0].stderr
    assert mutating == []
    again = deployment.cli("up", "--json").json()  # without the setting: the release that serves stays
    assert {o["action"] for o in again["outcomes"]} == {"unchanged"}


def test_dry_run_shows_the_versions_and_the_migrations(deployment: Deployment, admin: EmulatorAdmin):
    shown = []
    mutating = mutations_during(admin, lambda: shown.append(deployment.cli("upgrade", "--dry-run")))
    plan = shown[0].stdout
    assert mutating == []
    assert f"Upgrading MLflow {OLD} to {NEW}" in plan, plan
    assert f"the tracking schema migrates from {HEADS[OLD][0]} to {HEADS[NEW][0]} (2 migrations)" in plan, plan
    assert f"the auth schema stays at {HEADS[OLD][1]}" in plan


def test_an_upgrade_that_cannot_finish_is_abandoned_and_the_old_release_serves(deployment: Deployment):
    broken = deployment.cli("upgrade", "--to", "3.99.0", check=False)  # no such release: the image build fails
    assert broken.code != 0 and "3.99.0" in broken.stderr and "Traceback" not in broken.stderr, broken.stderr
    refused = deployment.cli("up", check=False)
    assert refused.code != 0 and "upgrade is in progress" in refused.stderr and "--abandon" in refused.stderr
    other = deployment.cli("upgrade", "--to", NEW, check=False)
    assert other.code == 3 and "3.99.0 is in progress" in other.stderr, other.stderr
    deployment.cli("upgrade", "--abandon")
    assert deployment.version() == OLD
    report = deployment.cli("status", "--json").json()
    assert report["ok"] and report["database"]["operation"] is None and report["mlflow"]["deployed"] == OLD


def test_upgrade_keeps_every_kind_of_data_and_a_steady_client_sees_no_failure(
    deployment: Deployment, admin: EmulatorAdmin
):
    from mlflow.entities import Metric, Param

    people = deployment.cli("users", "add", "bea").stdout.strip()
    with deployment.client() as client:
        exp = client.create_experiment("before-the-upgrade")
        run = client.create_run(exp)
        metrics = [Metric("loss", 1.0 / s, int(time.time() * 1000), s) for s in range(1, 50)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param("lr", "0.1")])
        path = f"/tmp/upgrade-artifact-{os.getpid()}.bin"
        with open(path, "wb") as f:
            f.write(ARTIFACT)
        client.log_artifact(run.info.run_id, path)
        client.create_registered_model("kept-model")
        client.create_model_version("kept-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
        steady = client.create_run(exp).info.run_id
    deployment.cli("users", "grant", "bea", "before-the-upgrade", "EDIT")
    deployment.notes.update(run=run.info.run_id, experiment=exp, bea=people)

    with Load(deployment.url, deployment.auth(), steady) as load:
        time.sleep(1)
        started = time.monotonic()
        replies: list[Any] = []
        mutating = mutations_during(admin, lambda: replies.append(deployment.cli("upgrade", "--json")))
        result = replies[0].json()
        deployment.notes["upgrade_seconds"] = time.monotonic() - started
        time.sleep(1)
    deployment.notes["load"] = (load.sent, load.failures)
    print(f"upgrade {OLD} -> {NEW}: {deployment.notes['upgrade_seconds']:.1f} s; steady client: {load.sent} "
          f"requests, {len(load.failures)} failed {load.failures[:3]}")  # fmt: skip
    assert result["from"] == OLD and result["to"] == NEW and result["backup"]
    calls = [f"{e['method']} {e['path'].split('?')[0].rsplit('/', 1)[-1]}" for e in mutating]
    assert calls == list(UPGRADE_CALLS), calls
    assert load.sent > 20 and load.failures == [], load.failures

    assert deployment.version() == NEW
    with deployment.client() as client:
        got = client.get_run(deployment.notes["run"])
        assert got.data.params == {"lr": "0.1"}
        assert [m.value for m in client.get_metric_history(got.info.run_id, "loss")] == [1.0 / s for s in range(1, 50)]
        local = client.download_artifacts(got.info.run_id, os.path.basename(path), f"/tmp/dl-{os.getpid()}")
        with open(local, "rb") as f:
            assert f.read() == ARTIFACT
        assert client.get_model_version("kept-model", "1").run_id == got.info.run_id
        assert len(client.get_metric_history(steady, "steady")) == load.sent
    bea = {"MLFLOW_TRACKING_USERNAME": "bea", "MLFLOW_TRACKING_PASSWORD": deployment.notes["bea"]}
    with mock.patch.dict(os.environ, {**deployment.creds, **bea}):
        import mlflow

        bea_client = mlflow.MlflowClient(deployment.url)
        bea_client.set_experiment_tag(deployment.notes["experiment"], "by", "bea")  # EDIT, granted before

    report = deployment.cli("status", "--json").json()
    assert report["ok"] and report["mlflow"]["tracking_revision"] == HEADS[NEW][0]
    logs = deployment.cli("logs", "--since", "1h").stdout
    assert logs.count(f"tracking schema migrated from {HEADS[OLD][0]} to {HEADS[NEW][0]}") == 1, logs[-3000:]
    again = deployment.cli("up", "--json").json()
    assert {o["action"] for o in again["outcomes"]} == {"unchanged"}


def test_rollback_brings_the_old_release_and_the_old_data_back(deployment: Deployment, admin: EmulatorAdmin):
    with deployment.client() as client:
        client.create_experiment("after-the-upgrade")
    refused = deployment.cli("upgrade", "--rollback", check=False)
    assert refused.code == 9 and "Pass --yes" in refused.stderr
    started = time.monotonic()
    replies: list[Any] = []
    rollback = ("upgrade", "--rollback", "--yes", "--json")
    mutating = mutations_during(admin, lambda: replies.append(deployment.cli(*rollback)))
    deployment.notes["rollback_seconds"] = time.monotonic() - started
    result = replies[0].json()
    assert len(mutating) == ROLLBACK_MUTATIONS, [f"{e['method']} {e['path']}" for e in mutating]
    assert result["version"] == OLD
    assert deployment.version() == OLD
    with deployment.client() as client:
        assert client.get_experiment_by_name("after-the-upgrade") is None
        assert client.get_run(deployment.notes["run"]).data.params == {"lr": "0.1"}
    report = deployment.cli("status", "--json").json()
    assert report["ok"] and report["mlflow"]["tracking_revision"] == HEADS[OLD][0], report
    assert [k["instance"] for k in report["database"]["kept"]] == ["mlflow-dev-db"]
    print(f"rollback: {deployment.notes['rollback_seconds']:.1f} s")


# --- kill points ---------------------------------------------------------------------------------------------

#: The mutating requests of an upgrade on the emulator (checked above): the backup run, the image built by the local
#: Docker daemon (the emulator's) and pushed to Artifact Registry, the service updated. The default run kills after
#: the backup and one seeded other point; `pytest -m slow` every point.
UPGRADE_CALLS = ("POST backupRuns", "POST build", "POST push", "PATCH mlflow-dev")
UPGRADE_MUTATIONS = len(UPGRADE_CALLS)
_rng = random.Random(20261130)
SAMPLED = sorted({1, _rng.choice(range(2, UPGRADE_MUTATIONS + 1))})


def _killed_upgrade_converges(emulator: Emulator, tmp_path: Any, k: int) -> None:
    d = old_release(emulator, tmp_path)
    admin = EmulatorAdmin(emulator.base_url)
    kill_after(d.cli, admin, k, "upgrade")
    refused = d.cli("up", "--break-lock", check=False)
    assert refused.code != 0 and "upgrade is in progress" in refused.stderr, refused.stderr
    d.cli("upgrade")
    assert d.version() == NEW
    # One backup before the upgrade, whatever the kill interrupted (a resumed run finds the one it started).
    described = [b for b in d.cli("backups", "--json").json()["backups"] if "before the upgrade" in b["description"]]
    assert len(described) == 1, described
    report = d.cli("status", "--json").json()
    assert report["ok"] and report["database"]["operation"] is None and report["mlflow"]["deployed"] == NEW
    d.cli("down", "--delete-data", "--yes")


@pytest.mark.parametrize("k", SAMPLED)
def test_a_killed_upgrade_finishes_when_run_again(emulator: Emulator, tmp_path: Any, k: int):
    _killed_upgrade_converges(emulator, tmp_path, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", [k for k in range(1, UPGRADE_MUTATIONS + 1) if k not in SAMPLED])
def test_an_upgrade_killed_at_every_mutation_finishes_when_run_again(emulator: Emulator, tmp_path: Any, k: int):
    _killed_upgrade_converges(emulator, tmp_path, k)


#: The mutating requests of a rollback: those of a restore from a backup (the new instance, the backup restored into
#: it, the two users' passwords, the service switched); the previous release's image is still in Artifact Registry.
ROLLBACK_MUTATIONS = 5
ROLLBACK_SAMPLED = [ROLLBACK_MUTATIONS]  # the switch: killed there, the rerun meets a rollout still going


def _killed_rollback_converges(emulator: Emulator, tmp_path: Any, k: int) -> None:
    d = old_release(emulator, tmp_path)
    admin = EmulatorAdmin(emulator.base_url)
    with d.client() as client:
        client.create_experiment("before")
    d.cli("upgrade")
    with d.client() as client:
        client.create_experiment("after")
    mutating = mutations_during(admin, lambda: kill_after(d.cli, admin, k, "upgrade", "--rollback", "--yes"))
    assert len(mutating) == k
    d.cli("upgrade", "--rollback", "--yes", "--break-lock")
    assert d.version() == OLD
    with d.client() as client:
        assert client.get_experiment_by_name("before") and client.get_experiment_by_name("after") is None
    report = d.cli("status", "--json").json()
    assert report["ok"] and report["database"]["operation"] is None and report["mlflow"]["deployed"] == OLD
    assert [k["instance"] for k in report["database"]["kept"]] == ["mlflow-dev-db"]
    d.cli("down", "--delete-data", "--yes")


@pytest.mark.parametrize("k", ROLLBACK_SAMPLED)
def test_a_killed_rollback_finishes_when_run_again(emulator: Emulator, tmp_path: Any, k: int):
    _killed_rollback_converges(emulator, tmp_path, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", [k for k in range(1, ROLLBACK_MUTATIONS + 1) if k not in ROLLBACK_SAMPLED])
def test_a_rollback_killed_at_every_mutation_finishes_when_run_again(emulator: Emulator, tmp_path: Any, k: int):
    _killed_rollback_converges(emulator, tmp_path, k)
