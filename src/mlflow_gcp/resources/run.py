"""The Cloud Run v2 service running the MLflow server (docker/entrypoint.py reads the environment set here).

Secrets reach the container as env vars resolved from Secret Manager at *pinned* versions (never `latest`, which
converges lazily and would make revisions differ), so rotating a credential means a new revision."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..engine import Change, Resource
from ..tiers import max_connections
from ._common import field_change, get_or_none, label_changes

CONTAINER_PORT = 8080
# End-to-end HTTP/2: lifts Cloud Run's 32 MiB limit on HTTP/1 request bodies, so large model artifacts upload.
PORT_NAME = "h2c"
CLOUDSQL_MOUNT = "/cloudsql"
READY = "latest revision"

SECRET_ENV = {
    "MLFLOW_GCP_DB_PASSWORD": "db-password",
    "MLFLOW_GCP_ADMIN_USERNAME": "admin-username",
    "MLFLOW_GCP_ADMIN_PASSWORD": "admin-password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-key",
}


def recorded_url(state: Any) -> str | None:
    """The service URL the last run recorded (with the service's other facts)."""
    return (state.get("run") or {}).get("url")


class Service(Resource):
    key = "run"
    kind = "Cloud Run service"
    depends_on = (
        "image", "sql:user", "sql:standby-user", "sql:db-tracking", "sql:db-auth", "bucket",
        "iam:project", "iam:secrets", "iam:bucket",
    )  # fmt: skip

    def id(self) -> str:
        return self.ctx.names.service_path

    # --- what it should be --------------------------------------------------------------------------------

    def plain_env(self, uri: str | None = None) -> dict[str, str]:
        c, n = self.ctx.config, self.ctx.names
        return {
            "MLFLOW_GCP_DB_USER": self.ctx.fact("sql:user", "user") or n.db_users[0],
            # Both login roles password rotation alternates between: the server makes them share table ownership.
            "MLFLOW_GCP_DB_USERS": ",".join(n.db_users),
            "MLFLOW_GCP_DB_NAME": n.tracking_database,
            "MLFLOW_GCP_AUTH_DB_NAME": n.auth_database,
            "MLFLOW_GCP_CLOUDSQL_CONNECTION": n.connection_name,
            "MLFLOW_GCP_ARTIFACTS_DESTINATION": f"gs://{n.bucket}/artifacts",
            "MLFLOW_GCP_ALLOWED_HOSTS": ",".join(self.allowed_hosts(uri)),
            "MLFLOW_GCP_WORKERS": str(c.server.workers),
            "MLFLOW_GCP_MAX_INSTANCES": str(c.server.max_instances),
            "MLFLOW_GCP_DB_MAX_CONNECTIONS": str(max_connections(c.database.tier)),
            "MLFLOW_GCP_AUTH_CACHE_TTL": str(c.server.auth_cache_ttl_seconds),
            "MLFLOW_GCP_HTTP2": "1",
        }

    def allowed_hosts(self, uri: str | None) -> list[str]:
        """The service's URLs, for MLflow's Host and CORS checks. Cloud Run's deterministic URL is known before
        the service exists; the ``uri`` it reports (legacy hashed, or the emulator's) only after the first deploy,
        so it is read from the live service, never from state a killed run may not have written."""
        n = self.ctx.names
        urls = []
        number = self.ctx.fact("project", "number")
        if number:
            urls.append(f"https://{n.service}-{number}.{n.region}.run.app")
        # The server admits local hosts anyway (docker/entrypoint.py), so the emulator's URL needs no revision.
        if uri and urlsplit(uri).hostname not in ("localhost", "127.0.0.1", "::1") and uri.rstrip("/") not in urls:
            urls.append(uri.rstrip("/"))
        return urls

    def secret_versions(self) -> dict[str, str]:
        return {env: str(self.ctx.fact(f"secret:{which}", "version")) for env, which in SECRET_ENV.items()}

    def desired(self, uri: str | None = None) -> Any:
        """The service as it should be; ``uri`` is the live service's (None before it exists)."""
        from google.cloud import run_v2

        c, n = self.ctx.config, self.ctx.names
        env = [run_v2.EnvVar(name=k, value=v) for k, v in sorted(self.plain_env(uri).items())]
        for name, which in sorted(SECRET_ENV.items()):
            env.append(
                run_v2.EnvVar(
                    name=name,
                    value_source=run_v2.EnvVarSource(
                        secret_key_ref=run_v2.SecretKeySelector(
                            secret=n.secrets[which], version=str(self.ctx.fact(f"secret:{which}", "version"))
                        )
                    ),
                )
            )
        container = run_v2.Container(
            image=self.ctx.fact("image", "uri"),
            ports=[run_v2.ContainerPort(name=PORT_NAME, container_port=CONTAINER_PORT)],
            env=env,
            resources=run_v2.ResourceRequirements(
                limits={"cpu": c.server.cpu, "memory": c.server.memory}, cpu_idle=True, startup_cpu_boost=True
            ),
            volume_mounts=[run_v2.VolumeMount(name="cloudsql", mount_path=CLOUDSQL_MOUNT)],
            startup_probe=run_v2.Probe(
                http_get=run_v2.HTTPGetAction(path="/health", port=CONTAINER_PORT),
                initial_delay_seconds=0,
                period_seconds=5,
                timeout_seconds=4,
                failure_threshold=36,  # 3 minutes: the first start runs the database migrations
            ),
        )
        template = run_v2.RevisionTemplate(
            service_account=n.runtime_account,
            scaling=run_v2.RevisionScaling(
                min_instance_count=c.server.min_instances, max_instance_count=c.server.max_instances
            ),
            volumes=[
                run_v2.Volume(
                    name="cloudsql", cloud_sql_instance=run_v2.CloudSqlInstance(instances=[n.connection_name])
                )
            ],
            containers=[container],
            labels=n.labels,
        )
        return run_v2.Service(
            labels=n.labels,
            client="mlflow-gcp",
            client_version=__version__,
            ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL,
            template=template,
        )

    @staticmethod
    def owned(service: Any) -> dict[str, Any]:
        """The fields we own, in a comparable form."""
        t = service.template
        c = t.containers[0] if t.containers else None
        env: dict[str, str] = {}
        for e in c.env if c else []:
            ref = e.value_source.secret_key_ref if e.value_source else None
            env[e.name] = f"secret:{ref.secret}@{ref.version}" if ref and ref.secret else e.value
        probe = c.startup_probe.http_get.path if c and c.startup_probe and c.startup_probe.http_get else None
        return {
            "image": c.image if c else None,
            "env": env,
            "serviceAccount": t.service_account,
            "scaling.max": t.scaling.max_instance_count,
            "scaling.min": t.scaling.min_instance_count,
            "resources": dict(c.resources.limits) if c else {},
            "cpuIdle": bool(c.resources.cpu_idle) if c else None,
            "port": (c.ports[0].name, c.ports[0].container_port) if c and c.ports else None,
            "cloudsql": sorted(i for v in t.volumes if v.cloud_sql_instance for i in v.cloud_sql_instance.instances),
            "startupProbe": probe,
            "client": service.client,
        }

    # --- the surface --------------------------------------------------------------------------------------

    def find(self) -> Any | None:
        return get_or_none(self.ctx, "run.services.get", self.ctx.clients.run_services.get_service, name=self.id())

    def settle(self, actual: Any) -> Any | None:
        """Wait out a rollout or deletion still running (a run that died mid-deploy leaves one going on)."""
        deadline = time.monotonic() + self.ctx.deadline
        while actual is not None and actual.reconciling and time.monotonic() < deadline:
            time.sleep(1.0)
            actual = self.find()
        return actual

    def _template_changes(self, actual: Any) -> list[Change]:
        have, want = self.owned(actual), self.owned(self.desired(actual.uri))
        changes = [c for k in want for c in field_change(k, have[k], want[k]) if k != "env"]
        for name in sorted(set(have["env"]) | set(want["env"])):
            changes += field_change(f"env.{name}", have["env"].get(name), want["env"].get(name))
        return changes

    def diff(self, actual: Any) -> list[Change]:
        changes = self._template_changes(actual) + label_changes(actual.labels, self.ctx.names.labels)
        if not actual.reconciling and actual.latest_created_revision != actual.latest_ready_revision:
            # Our template, but its revision never became ready: the server is not running what it should.
            created = actual.latest_created_revision.rsplit("/", 1)[-1]
            changes.append(Change(READY, f"{created} failed", "ready"))
        return changes

    def create(self) -> Any:
        from google.api_core import exceptions

        run = self.ctx.clients.run_services
        n = self.ctx.names
        try:
            op = self.ctx.api(
                "run.services.create",
                run.create_service,
                parent=f"projects/{n.project}/locations/{n.region}",
                service=self.desired(),
                service_id=n.service,
            )
        except exceptions.Conflict:  # created by a run that died before recording it
            actual = self.settle(self.find())
            changes = self.diff(actual)
            return self.update(actual, changes) if changes else actual
        service = self.ctx.wait(op, self.kind)
        return self._after_deploy(service)

    def update(self, actual: Any, changes: list[Change]) -> Any:
        run = self.ctx.clients.run_services
        service = self.desired(actual.uri)
        service.name = self.id()
        labels = dict(actual.labels)
        labels.update(service.labels)
        service.labels = labels
        fields = {c.field for c in changes}
        if READY in fields and fields <= {READY, "labels"}:
            # An unchanged template makes no new revision; an explicit, unused revision name does.
            service.template.revision = f"{self.ctx.names.service}-{secrets.token_hex(3)}"
        op = self.ctx.api("run.services.update", run.update_service, service=service)
        return self._after_deploy(self.ctx.wait(op, self.kind))

    def _after_deploy(self, service: Any) -> Any:
        """If the server must also accept a host only known now (its URL), roll once more."""
        changes = self._template_changes(service)
        if changes and all(c.field == "env.MLFLOW_GCP_ALLOWED_HOSTS" for c in changes):
            return self.update(service, changes)
        return service

    def delete(self, actual: Any) -> None:
        run = self.ctx.clients.run_services
        op = self.ctx.api("run.services.delete", run.delete_service, name=self.id())
        self.ctx.wait(op, self.kind)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {
            "id": self.id(),
            "url": actual.uri,
            "revision": actual.latest_ready_revision.rsplit("/", 1)[-1] if actual.latest_ready_revision else None,
            "secret_versions": self.secret_versions(),
        }

    def planned_facts(self) -> dict[str, Any]:
        return {"id": self.id(), "url": None}
