"""The whole stack provisioned by hand through the official clients (no mlflow-gcp code), as a user of the emulator
would: Cloud SQL instance + database + user, a bucket, secrets, a service account with its roles, the server image
built with the docker SDK and pushed, and a Cloud Run service whose container runs `mlflow server` against that real
PostgreSQL and that bucket. Then the real `mlflow` client logs a run with an artifact and reads it back."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import google_crc32c
from google.cloud import run_v2

from tests.conftest import enable

REPO = Path(__file__).parents[2]
REGION = "us-central1"


def _sql_wait(sql, project: str, op: dict) -> None:
    deadline = time.monotonic() + 300
    while op["status"] != "DONE":
        assert time.monotonic() < deadline, op
        time.sleep(0.2)
        op = sql.operations().get(project=project, operation=op["name"]).execute()
    assert "error" not in op, op["error"]


def test_mlflow_on_cloud_run_provisioned_by_hand(clients, project, tmp_path, monkeypatch):
    enable(
        clients, project, "sqladmin.googleapis.com", "secretmanager.googleapis.com", "iam.googleapis.com",
        "artifactregistry.googleapis.com", "run.googleapis.com",
    )  # fmt: skip
    suffix = uuid.uuid4().hex[:6]

    # Cloud SQL: instance, two databases, a user.
    sql = clients.sqladmin()
    instance = f"db-{suffix}"
    body = {
        "name": instance,
        "region": REGION,
        "databaseVersion": "POSTGRES_16",
        "settings": {"tier": "db-f1-micro", "edition": "ENTERPRISE"},
    }
    _sql_wait(sql, project, sql.instances().insert(project=project, body=body).execute())
    for db in ("mlflow", "mlflow_auth"):
        _sql_wait(sql, project, sql.databases().insert(project=project, instance=instance, body={"name": db}).execute())
    db_password = uuid.uuid4().hex
    user = {"name": "mlflow", "password": db_password}
    _sql_wait(sql, project, sql.users().insert(project=project, instance=instance, body=user).execute())
    connection = sql.instances().get(project=project, instance=instance).execute()["connectionName"]

    # Bucket.
    bucket = clients.storage(project).create_bucket(f"{project}-artifacts", location=REGION)

    # Secrets, each pinned to the version we add.
    sm = clients.secret_manager()
    values = {
        "db-password": db_password,
        "admin-username": "admin",
        "admin-password": uuid.uuid4().hex,
        "flask-key": uuid.uuid4().hex,
    }
    versions = {}
    for name, value in values.items():
        sm.create_secret(
            request={"parent": f"projects/{project}", "secret_id": name, "secret": {"replication": {"automatic": {}}}}
        )
        data = value.encode()
        added = sm.add_secret_version(
            request={
                "parent": f"projects/{project}/secrets/{name}",
                "payload": {"data": data, "data_crc32c": google_crc32c.value(data)},
            }
        )
        versions[name] = added.name.rsplit("/", 1)[1]

    # The runtime service account and its roles.
    iam = clients.iam()
    account = (
        iam.projects()
        .serviceAccounts()
        .create(name=f"projects/{project}", body={"accountId": f"run-{suffix}"})
        .execute()["email"]
    )
    member = f"serviceAccount:{account}"
    for name in values:
        resource = f"projects/{project}/secrets/{name}"
        policy = sm.get_iam_policy(request={"resource": resource})
        policy.bindings.add(role="roles/secretmanager.secretAccessor", members=[member])
        sm.set_iam_policy(request={"resource": resource, "policy": policy})
    rm = clients.projects()
    policy = rm.get_iam_policy(request={"resource": f"projects/{project}"})
    policy.bindings.add(role="roles/cloudsql.client", members=[member])
    rm.set_iam_policy(request={"resource": f"projects/{project}", "policy": policy})

    # The server image: a repository, then docker build + push.
    ar = clients.artifact_registry()
    ar.create_repository(
        parent=f"projects/{project}/locations/{REGION}", repository={"format_": "DOCKER"}, repository_id="mlflow"
    ).result(timeout=60)
    image = f"{REGION}-docker.pkg.dev/{project}/mlflow/server"
    docker = clients.docker()
    docker.images.build(path=str(REPO / "src" / "mlflow_gcp" / "server_image"), tag=f"{image}:v1")
    pushed = list(
        docker.images.push(image, tag="v1", auth_config={"username": "oauth2accesstoken", "password": "t"},
                           stream=True, decode=True)
    )  # fmt: skip
    assert not [line for line in pushed if "errorDetail" in line], pushed

    # The Cloud Run service.
    def secret_env(env: str, name: str) -> run_v2.EnvVar:
        ref = run_v2.SecretKeySelector(secret=name, version=versions[name])
        return run_v2.EnvVar(name=env, value_source=run_v2.EnvVarSource(secret_key_ref=ref))

    plain = {
        "MLFLOW_GCP_DB_USER": "mlflow",
        "MLFLOW_GCP_CLOUDSQL_CONNECTION": connection,
        "MLFLOW_GCP_ARTIFACTS_DESTINATION": f"gs://{bucket.name}/artifacts",
        "MLFLOW_GCP_MAX_INSTANCES": "1",
        "MLFLOW_GCP_DB_MAX_CONNECTIONS": "25",
        "MLFLOW_GCP_WORKERS": "1",
    }
    container = run_v2.Container(
        image=f"{image}:v1",
        ports=[run_v2.ContainerPort(name="h2c", container_port=8080)],
        env=[run_v2.EnvVar(name=k, value=v) for k, v in plain.items()]
        + [
            secret_env("MLFLOW_GCP_DB_PASSWORD", "db-password"),
            secret_env("MLFLOW_GCP_ADMIN_USERNAME", "admin-username"),
            secret_env("MLFLOW_GCP_ADMIN_PASSWORD", "admin-password"),
            secret_env("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-key"),
        ],
        volume_mounts=[run_v2.VolumeMount(name="cloudsql", mount_path="/cloudsql")],
        startup_probe=run_v2.Probe(
            http_get=run_v2.HTTPGetAction(path="/health"), period_seconds=2, failure_threshold=90
        ),
    )
    service = run_v2.Service(
        template=run_v2.RevisionTemplate(
            service_account=account,
            containers=[container],
            volumes=[
                run_v2.Volume(name="cloudsql", cloud_sql_instance=run_v2.CloudSqlInstance(instances=[connection]))
            ],
        )
    )
    services = clients.run_services()
    created = services.create_service(
        parent=f"projects/{project}/locations/{REGION}", service=service, service_id="mlflow"
    ).result(timeout=300)
    policy = services.get_iam_policy(request={"resource": created.name})
    policy.bindings.add(role="roles/run.invoker", members=["allUsers"])
    services.set_iam_policy(request={"resource": created.name, "policy": policy})

    # The real MLflow client, through the service's URL.
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", values["admin-password"])
    client = mlflow.MlflowClient(created.uri)
    run = client.create_run(client.create_experiment("by-hand"))
    client.log_param(run.info.run_id, "lr", "0.01")
    client.log_metric(run.info.run_id, "acc", 0.9)
    payload = os.urandom(256 * 1024)
    (tmp_path / "model.bin").write_bytes(payload)
    client.log_artifact(run.info.run_id, str(tmp_path / "model.bin"))
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.01"} and got.data.metrics == {"acc": 0.9}
    assert Path(client.download_artifacts(run.info.run_id, "model.bin", str(tmp_path))).read_bytes() == payload
    stored = [b.name for b in clients.storage(project).list_blobs(bucket.name)]
    assert any(n.endswith("/model.bin") for n in stored), stored

    services.delete_service(name=created.name).result(timeout=120)
