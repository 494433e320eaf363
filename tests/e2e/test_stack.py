"""The story a user lives: `up` from nothing, use MLflow, run `up` again, break things, `status`, repair,
`down`. Everything through the real CLI, the emulator, real PostgreSQL and a real `mlflow server`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions

from tests.e2e.conftest import Cli, mutations_during

MB = 1024 * 1024


def mlflow_client(creds: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    import mlflow

    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(creds["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient(creds["MLFLOW_TRACKING_URI"])


def test_up_use_repair_down(cli: Cli, admin, clients, tmp_path: Path, monkeypatch):
    # --- from nothing -------------------------------------------------------------------------------------
    plan = mutations_during(admin, lambda: cli("up", "--dry-run", "--json"))
    assert plan == []
    out = cli("up", "--json").json()
    assert out["ok"] and out["url"]
    actions = {o["resource"]: o["action"] for o in out["outcomes"]}
    assert actions["run"] == "created" and actions["sql:instance"] == "created"

    # One worker per vCPU (1 by default), served from the process that migrated, which listens only once it is
    # ready: Cloud Run's TCP startup probe then follows the real start (README "What it deploys").
    deployed = clients.run_services().get_service(
        name=f"projects/{cli.project}/locations/us-central1/services/mlflow-dev"
    )
    container = deployed.template.containers[0]
    assert {e.name: e.value for e in container.env}["MLFLOW_GCP_WORKERS"] == "1"
    assert container.startup_probe.tcp_socket.port == 8080 and container.startup_probe.timeout_seconds == 240

    creds = cli("env", "--json").json()
    assert set(creds) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    client = mlflow_client(creds, monkeypatch)

    # --- MLflow works: params, metrics, a 5 MB artifact, read back ----------------------------------------
    experiment = client.create_experiment("e2e")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "alpha", "0.5")
    for step in range(5):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    payload = os.urandom(5 * MB)
    (tmp_path / "weights.bin").write_bytes(payload)
    client.log_artifact(run.info.run_id, str(tmp_path / "weights.bin"))
    fetched = client.get_run(run.info.run_id)
    assert fetched.data.params == {"alpha": "0.5"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    downloaded = Path(client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "dl")))
    assert downloaded.read_bytes() == payload
    bucket_objects = [b.name for b in clients.storage(cli.project).list_blobs(f"{cli.project}-mlflow-dev")]
    assert any(name.endswith("/weights.bin") for name in bucket_objects)

    # --- an artifact deleted by mistake comes back: the bucket keeps it soft-deleted (artifacts.soft_delete_days) --
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    MlflowArtifactsRepository(fetched.info.artifact_uri).delete_artifacts("weights.bin")  # through the server
    assert client.list_artifacts(run.info.run_id) == []
    bucket = clients.storage(cli.project).bucket(f"{cli.project}-mlflow-dev")
    [deleted] = bucket.list_blobs(soft_deleted=True, match_glob="**/weights.bin")
    bucket.restore_blob(deleted.name, generation=deleted.generation)
    restored = Path(client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "restored")))
    assert restored.read_bytes() == payload

    # --- the login protects it ----------------------------------------------------------------------------
    api = f"{creds['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(api, timeout=30).status_code == 401
    assert requests.get(api, auth=(creds["MLFLOW_TRACKING_USERNAME"], "wrong"), timeout=30).status_code == 401

    # --- a 100 MB model: over Cloud Run's 32 MiB HTTP/1 limit, so it needs the end-to-end HTTP/2 path -----
    big = os.urandom(100 * MB)
    (tmp_path / "model.bin").write_bytes(big)
    seq = len(admin.requests())
    client.log_artifact(run.info.run_id, str(tmp_path / "model.bin"), artifact_path="model")
    # Streamed to GCS in bounded chunks (server_image/mlflow_gcp_artifacts.py), not spooled and sent in 100 MiB ones.
    chunks = [e["request_bytes"] for e in admin.requests(seq) if e["method"] == "PUT" and "upload_id=" in e["path"]]
    assert len(chunks) >= 12 and max(chunks) <= 8 * MB, chunks
    got = Path(client.download_artifacts(run.info.run_id, "model/model.bin", str(tmp_path / "dl2")))
    assert got.stat().st_size == len(big) and got.read_bytes() == big
    del big

    # --- a second up changes nothing ----------------------------------------------------------------------
    second: dict = {}
    mutations = mutations_during(admin, lambda: second.update(cli("up", "--json").json()))
    assert mutations == [], mutations
    assert {o["action"] for o in second["outcomes"]} <= {"unchanged"}
    assert cli("status").code == 0

    # --- drift behind the tool's back: reported, then repaired --------------------------------------------
    run_api = clients.run_services()
    service = run_api.get_service(name=f"projects/{cli.project}/locations/us-central1/services/mlflow-dev")
    service.template.scaling.max_instance_count = 3
    run_api.update_service(service=service).result(timeout=300)
    sm = clients.secret_manager()
    sm.delete_secret(name=f"projects/{cli.project}/secrets/mlflow-dev-flask-secret-key")
    rm = clients.projects()
    policy = rm.get_iam_policy(request={"resource": f"projects/{cli.project}"})
    for binding in policy.bindings:
        if binding.role == "roles/cloudsql.client":
            binding.members.remove(f"serviceAccount:mlflow-dev-run@{cli.project}.iam.gserviceaccount.com")
    rm.set_iam_policy(request={"resource": f"projects/{cli.project}", "policy": policy})

    status = cli("status", "--json", check=False)
    assert status.code == 7
    report = {r["resource"]: r for r in status.json()["resources"]}
    assert report["secret:flask-secret-key"]["state"] == "missing"
    assert report["run"]["state"] == "drifted"
    assert any("scaling.max" in f for f in report["run"]["drifted_fields"])
    assert report["iam:project"]["state"] == "drifted"

    repaired = cli("up", "--json").json()
    actions = {o["resource"]: o["action"] for o in repaired["outcomes"]}
    assert actions["secret:flask-secret-key"] == "created"
    assert actions["iam:project"] == "updated" and actions["run"] == "updated"
    assert cli("status").code == 0
    creds = cli("env", "--json").json()
    client = mlflow_client(creds, monkeypatch)
    assert client.get_run(run.info.run_id).data.params == {"alpha": "0.5"}

    # --- no secret anywhere in the state file or the tool's output ----------------------------------------
    secret_values = [
        sm.access_secret_version(
            name=f"projects/{cli.project}/secrets/mlflow-dev-{s}/versions/latest"
        ).payload.data.decode()
        for s in ("db-password", "admin-password", "flask-secret-key")
    ]
    state_text = "".join(p.read_text() for p in cli.state_dir.glob("*.json"))
    # `env` prints the password by design: it is the one command whose output is the credential.
    transcript = "".join(t for t in cli.transcript if "MLFLOW_TRACKING_PASSWORD" not in t)
    for value in secret_values:
        assert value not in state_text and value not in transcript

    # --- down keeps the data; --delete-data removes everything; both twice ---------------------------------
    for _ in range(2):
        out = cli("down", "--yes", "--json").json()
    assert {o["resource"]: o["action"] for o in out["outcomes"]}["sql:instance"] == "kept"
    sql = clients.sqladmin()
    assert sql.instances().get(project=cli.project, instance="mlflow-dev-db").execute()["state"] == "RUNNABLE"
    assert clients.storage(cli.project).get_bucket(f"{cli.project}-mlflow-dev")
    with pytest.raises(exceptions.NotFound):
        run_api.get_service(name=f"projects/{cli.project}/locations/us-central1/services/mlflow-dev")
    kept = {s.name.rsplit("/", 1)[1] for s in sm.list_secrets(parent=f"projects/{cli.project}")}
    assert kept == {f"mlflow-dev-{s}" for s in ("db-password", "admin-username", "admin-password")}

    # --- up after down: the kept data, read back with the credentials `env` hands out ----------------------
    back = cli("up", "--json").json()
    assert {o["resource"]: o["action"] for o in back["outcomes"]}["sql:instance"] == "unchanged"
    client = mlflow_client(cli("env", "--json").json(), monkeypatch)
    assert client.get_run(run.info.run_id).data.params == {"alpha": "0.5"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 1 / 3, 0.25, 0.2]

    for _ in range(2):
        cli("down", "--delete-data", "--yes")
    with pytest.raises(exceptions.NotFound):
        clients.storage(cli.project).get_bucket(f"{cli.project}-mlflow-dev")
    assert list(sm.list_secrets(parent=f"projects/{cli.project}")) == []
    instances = sql.instances().list(project=cli.project).execute().get("items", [])
    assert instances == []

    # --- APIs on, data deleted: the plan sees everything absent (no permission error), changing nothing ------
    # (the project's policy stays with the project: only the binding in it is to be made again)
    plan: dict = {}
    assert mutations_during(admin, lambda: plan.update(cli("up", "--dry-run", "--json").json())) == []
    actions = {o["resource"]: o["action"] for o in plan["outcomes"] if o["resource"] != "apis"}
    assert actions.pop("iam:project") == "would update" and set(actions.values()) == {"would create"}, actions
    status = cli("status", "--json", check=False)
    assert status.code == 7
    states = {r["resource"]: r["state"] for r in status.json()["resources"] if r["resource"] != "apis"}
    assert states.pop("iam:project") == "drifted" and set(states.values()) == {"missing"}, states
