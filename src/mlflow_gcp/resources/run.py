"""The Cloud Run v2 service running the MLflow server (docker/entrypoint.py reads the environment set here).

Secrets reach the container as env vars resolved from Secret Manager at *pinned* versions (never `latest`, which
converges lazily and would make revisions differ), so rotating a credential means a new revision."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .. import __version__, fields
from ..engine import Change, Resource
from ..fields import Owned
from ..retry import wait_until
from ..tiers import max_connections
from ._common import get_or_none

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


#: The Cloud SQL volume and mount we own, by name (others' volumes and mounts stay).
VOLUME = "cloudsql"
#: Environment variables with this prefix in our container are ours: those the server no longer needs go.
OUR_ENV = "MLFLOW_"
UNUSED_ENV = "env (no longer used)"


def _set(attribute: str) -> Any:
    return lambda obj, value: setattr(obj, attribute, value)


def _template_field(path: str, desired: Any) -> Owned:
    """A field of the revision template, by its dotted path under ``template``."""
    *parents, leaf = path.split(".")

    def holder(service: Any) -> Any:
        obj = service.template
        for p in parents:
            obj = getattr(obj, p)
        return obj

    return Owned(
        f"template.{path}",
        desired,
        lambda s: getattr(holder(s), leaf),
        write=lambda s, v: setattr(holder(s), leaf, v),
    )


def _container(service: Any, create: bool = False) -> Any:
    """Our container: the one that takes requests (Cloud Run lets one container have a port), else the first;
    sidecars others add are not ours."""
    from google.cloud import run_v2

    containers = service.template.containers
    ours = next((c for c in containers if c.ports), containers[0] if containers else None)
    if ours is None and create:
        containers.append(run_v2.Container())
        ours = containers[0]
    return ours


def _container_field(path: str, desired: Any, read: Any, write: Any) -> Owned:
    return Owned(
        f"container.{path}",
        desired,
        lambda s: read(c) if (c := _container(s)) is not None else None,
        write=lambda s, v: write(_container(s, create=True), v),
        mask="template.containers",
    )


def _secret_ref(env: Any) -> str | None:
    ref = env.value_source.secret_key_ref if env.value_source else None
    return f"secret:{ref.secret}@{ref.version}" if ref and ref.secret else None


def _env_reader(name: str) -> Any:
    def read(container: Any) -> str | None:
        e = next((e for e in container.env if e.name == name), None)
        return None if e is None else _secret_ref(e) or e.value

    return read


def _env_writer(name: str) -> Any:
    def write(container: Any, value: str) -> None:
        from google.cloud import run_v2

        if value.startswith("secret:"):
            secret, _, version = value[len("secret:") :].rpartition("@")
            ref = run_v2.SecretKeySelector(secret=secret, version=version)
            var = run_v2.EnvVar(name=name, value_source=run_v2.EnvVarSource(secret_key_ref=ref))
        else:
            var = run_v2.EnvVar(name=name, value=value)
        env = [e for e in container.env if e.name != name] + [var]
        container.env = sorted(env, key=lambda e: e.name)

    return write


def _drop_env(container: Any, wanted: dict[str, str]) -> None:
    container.env = [e for e in container.env if not e.name.startswith(OUR_ENV) or e.name in wanted]


def _cloudsql_instances(service: Any) -> list[str] | None:
    volume = next((v for v in service.template.volumes if v.name == VOLUME), None)
    return sorted(volume.cloud_sql_instance.instances) if volume is not None else None


def _set_cloudsql(service: Any, instances: list[str]) -> None:
    from google.cloud import run_v2

    volume = run_v2.Volume(name=VOLUME, cloud_sql_instance=run_v2.CloudSqlInstance(instances=instances))
    service.template.volumes = [v for v in service.template.volumes if v.name != VOLUME] + [volume]


def _set_mount(container: Any, path: str) -> None:
    from google.cloud import run_v2

    mounts = [m for m in container.volume_mounts if m.name != VOLUME]
    container.volume_mounts = [*mounts, run_v2.VolumeMount(name=VOLUME, mount_path=path)]


@dataclass(frozen=True)
class Credentials:
    """What the server logs in with: the database user, and the secret versions its database and admin passwords
    are pinned to. `up` deploys the ones the state and this run's steps say (:meth:`current`); a password rotation
    deploys the ones it switches to, explicitly."""

    db_user: str
    db_password_version: str
    admin_password_version: str

    @classmethod
    def current(cls, ctx: Any) -> Credentials:
        return cls(
            db_user=ctx.fact("sql:user", "user") or ctx.names.db_users[0],
            db_password_version=str(ctx.fact("secret:db-password", "version")),
            admin_password_version=str(ctx.fact("secret:admin-password", "version")),
        )


def recorded_url(state: Any) -> str | None:
    """The service URL the last run recorded (with the service's other facts)."""
    return (state.get("run") or {}).get("url")


def service_url(ctx: Any) -> str:
    """The service URL for a command that reaches MLflow (`env`, `open`, `users`): the recorded one, else the live
    service's (a state written elsewhere or lost); an error saying to run `up` when there is no service."""
    from ..errors import MlflowGcpError
    from ..retry import is_service_disabled

    url = recorded_url(ctx.state)
    if not url:
        try:
            service = Service(ctx).find()
        except Exception as exc:
            if not is_service_disabled(exc):
                raise
            service = None  # the Cloud Run API is not even enabled: nothing was deployed here
        url = service.uri if service is not None else None
    if not url:
        raise MlflowGcpError("No MLflow service found for this environment.", hint="Run `mlflow-gcp up` first.")
    return str(url)


def serving_revisions(service: Any) -> set[str]:
    """Short names of the revisions that take traffic, from a live run_v2.Service.

    Real Cloud Run names no revision in the traffic status of a LATEST allocation: it reports
    ``{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}`` (recorded:
    tests/golden/recordings/run-service.tf.yaml), and that traffic goes to ``latestReadyRevision``. Only
    revision-pinned targets carry ``revision``."""
    from google.cloud import run_v2

    latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    serving: set[str] = set()
    for t in service.traffic_statuses:
        if t.percent <= 0:
            continue
        revision = t.revision or (service.latest_ready_revision if t.type_ == latest else "")
        if revision:
            serving.add(revision.rsplit("/", 1)[-1])
    return serving


class Service(Resource):
    key = "run"
    kind = "Cloud Run service"
    depends_on = (
        "image", "sql:user", "sql:standby-user", "sql:db-tracking", "sql:db-auth", "bucket",
        "iam:project", "iam:secrets", "iam:bucket",
    )  # fmt: skip

    def __init__(self, ctx: Any, credentials: Credentials | None = None) -> None:
        """``credentials``: deploy these (password rotation) instead of the current ones."""
        super().__init__(ctx)
        self._credentials = credentials

    def id(self) -> str:
        return self.ctx.names.service_path

    # --- what it should be --------------------------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        # Read when needed, not when made: `up` makes this step before the steps whose facts it reads have run.
        return self._credentials or Credentials.current(self.ctx)

    def plain_env(self, uri: str | None = None) -> dict[str, str]:
        c, n = self.ctx.config, self.ctx.names
        return {
            "MLFLOW_GCP_DB_USER": self.credentials.db_user,
            # Both login roles password rotation alternates between: the server makes them share table ownership.
            "MLFLOW_GCP_DB_USERS": ",".join(n.db_users),
            "MLFLOW_GCP_DB_NAME": n.tracking_database,
            "MLFLOW_GCP_AUTH_DB_NAME": n.auth_database,
            "MLFLOW_GCP_CLOUDSQL_CONNECTION": n.connection_name,
            "MLFLOW_GCP_ARTIFACTS_DESTINATION": f"gs://{n.bucket}/artifacts",
            "MLFLOW_GCP_ALLOWED_HOSTS": ",".join(self.allowed_hosts(uri)),
            "MLFLOW_GCP_WORKERS": str(c.server.worker_count),
            "MLFLOW_GCP_MAX_INSTANCES": str(c.server.max_instances),
            "MLFLOW_GCP_DB_MAX_CONNECTIONS": str(max_connections(c.database.tier)),
            "MLFLOW_GCP_AUTH_CACHE_TTL": str(c.server.auth_cache_ttl_seconds),
            "MLFLOW_GCP_HTTP2": "1",
            "MLFLOW_GCP_DEFAULT_PERMISSION": c.access.default_permission,
            **self.iap_env(),
        }

    def iap_env(self) -> dict[str, str]:
        """What the server needs in iap mode to trust IAP's signed assertion (server_image/mlflow_gcp_iap.py);
        nothing in basic mode, where the variables' absence means basic."""
        from .iap import audience

        access = self.ctx.config.access
        if access.mode != "iap":
            return {}
        env = {"MLFLOW_GCP_AUTH_MODE": "iap", "MLFLOW_GCP_IAP_AUDIENCE": audience(self.ctx)}
        if access.admin_emails:
            env["MLFLOW_GCP_IAP_ADMINS"] = ",".join(access.admin_emails)
        return env

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
        """The secret version each secret variable is pinned to, by variable."""
        creds = self.credentials
        pinned = {"db-password": creds.db_password_version, "admin-password": creds.admin_password_version}
        return {
            env: pinned.get(which) or str(self.ctx.fact(f"secret:{which}", "version"))
            for env, which in SECRET_ENV.items()
        }

    def env(self, uri: str | None = None) -> dict[str, str]:
        """Our container's environment as it should be (secret references as ``secret:NAME@VERSION``)."""
        n = self.ctx.names
        env = dict(self.plain_env(uri))
        for name, version in self.secret_versions().items():
            env[name] = f"secret:{n.secrets[SECRET_ENV[name]]}@{version}"
        return env

    def owned_fields(self, uri: str | None = None) -> list[Owned]:
        """Every field we set, declared once; ``uri`` is the live service's (None before it exists). Fields of our
        container and our volume are written into the live template, so a sidecar, another volume, a custom
        audience or another team's labels survive our updates (each goes with an update mask)."""
        from google.cloud import run_v2

        c, n = self.ctx.config, self.ctx.names
        # Cloud Run routes to a new instance only once its startup probe passes, so the probe's cadence adds to every
        # cold start: it must follow the real start. With one worker the server listens only once the databases
        # are migrated and the app is built (server_image/mlflow_gcp_serve.py serves from the process that did both), so
        # an open port means ready: Cloud Run's own default startup probe, TCP with timeoutSeconds 240,
        # periodSeconds 240, failureThreshold 1 ("Default TCP startup probe", cloud.google.com/run/docs/
        # configuring/healthchecks), connects as soon as the port opens, with no period to wait out, and gives a
        # first start's migrations 4 minutes (measured with benchmarks/run_all.py: an HTTP probe every second
        # added about 1 s to a 3.2 s start). With more workers hypercorn's parent listens before its workers have
        # imported MLflow, so /health is asked instead, every second (a startup probe's period is 1-240 s and at
        # least its timeout; failureThreshold x periodSeconds at most 240 s: Cloud Run Admin API v2 Probe), 180
        # times: the same 3 minutes as before for the migrations.
        if c.server.worker_count == 1:
            probe = run_v2.Probe(
                tcp_socket=run_v2.TCPSocketAction(port=CONTAINER_PORT),
                initial_delay_seconds=0,
                period_seconds=240,
                timeout_seconds=240,
                failure_threshold=1,
            )
        else:
            probe = run_v2.Probe(
                http_get=run_v2.HTTPGetAction(path="/health", port=CONTAINER_PORT),
                initial_delay_seconds=0,
                period_seconds=1,
                timeout_seconds=1,
                failure_threshold=180,
            )
        template = _template_field
        owned = [
            Owned("labels", n.labels, lambda s: dict(s.labels), mode="labels", write=_set("labels")),
            Owned("client", "mlflow-gcp", lambda s: s.client, write=_set("client")),
            # Cloud Run's direct IAP integration (GA; magic-modules ec55feb9c0 "Implement Cloud Run IAP GA features"
            # dropped the launch stage it needed before): IAP in front of the service, no load balancer.
            Owned("iap_enabled", c.access.mode == "iap", lambda s: bool(s.iap_enabled), write=_set("iap_enabled")),
            Owned("client_version", __version__, lambda s: s.client_version, write=_set("client_version")),
            Owned(
                "ingress",
                int(run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL),
                lambda s: int(s.ingress),
                write=_set("ingress"),
            ),
            template("service_account", n.runtime_account),
            template("scaling.min_instance_count", c.server.min_instances),
            template("scaling.max_instance_count", c.server.max_instances),
            Owned(
                "template.labels",
                n.labels,
                lambda s: dict(s.template.labels),
                mode="labels",
                write=lambda s, v: setattr(s.template, "labels", v),
            ),
            Owned(
                f"template.volumes[{VOLUME}]",
                [n.connection_name],
                _cloudsql_instances,
                write=_set_cloudsql,
                mask="template.volumes",
            ),
            _container_field("image", self.ctx.fact("image", "uri"), lambda k: k.image, _set("image")),
            _container_field(
                "resources.limits",
                {"cpu": c.server.cpu, "memory": c.server.memory},
                lambda k: dict(k.resources.limits),
                lambda k, v: setattr(k.resources, "limits", v),
            ),
            _container_field(
                "resources.cpu_idle",
                True,
                lambda k: bool(k.resources.cpu_idle),
                lambda k, v: setattr(k.resources, "cpu_idle", v),
            ),
            _container_field(
                "resources.startup_cpu_boost",
                True,
                lambda k: bool(k.resources.startup_cpu_boost),
                lambda k, v: setattr(k.resources, "startup_cpu_boost", v),
            ),
            _container_field(
                "ports",
                [(PORT_NAME, CONTAINER_PORT)],
                lambda k: [(p.name, p.container_port) for p in k.ports],
                lambda k, v: setattr(k, "ports", [run_v2.ContainerPort(name=a, container_port=b) for a, b in v]),
            ),
            _container_field(
                f"volume_mounts[{VOLUME}]",
                CLOUDSQL_MOUNT,
                lambda k: next((m.mount_path for m in k.volume_mounts if m.name == VOLUME), None),
                _set_mount,
            ),
            _container_field(
                "startup_probe",
                run_v2.Probe.to_dict(probe),
                lambda k: run_v2.Probe.to_dict(k.startup_probe),
                lambda k, v: setattr(k, "startup_probe", run_v2.Probe(v)),
            ),
        ]
        want_env = self.env(uri)
        for name in sorted(want_env):
            owned.append(_container_field(f"env.{name}", want_env[name], _env_reader(name), _env_writer(name)))
        # Variables of ours (by prefix) the server no longer needs are removed; others' stay.
        owned.append(
            _container_field(
                UNUSED_ENV,
                [],
                lambda k: sorted(e.name for e in k.env if e.name.startswith(OUR_ENV) and e.name not in want_env),
                lambda k, v: _drop_env(k, want_env),
            )
        )
        return owned

    @staticmethod
    def owned(service: Any) -> dict[str, Any]:
        """What a service runs, in a comparable form (for test snapshots and rotation's checks)."""
        k = _container(service)
        return {
            "image": k.image if k else None,
            "env": {e.name: _env_reader(e.name)(k) for e in k.env} if k else {},
            "serviceAccount": service.template.service_account,
            "scaling": (service.template.scaling.min_instance_count, service.template.scaling.max_instance_count),
            "cloudsql": _cloudsql_instances(service),
            "client": service.client,
        }

    # --- the surface --------------------------------------------------------------------------------------

    def find(self) -> Any | None:
        return get_or_none(self.ctx, "run.services.get", self.ctx.clients.run_services.get_service, name=self.id())

    def settle(self, actual: Any) -> Any | None:
        """Wait out a rollout or deletion still running (a run that died mid-deploy leaves one going on)."""
        if actual is None or not actual.reconciling:
            return actual
        return wait_until(
            f"the rollout of Cloud Run service {self.ctx.names.service} to finish",
            self.find,
            lambda s: s is None or not s.reconciling,
            self.ctx.deadline,
        )

    def diff(self, actual: Any) -> list[Change]:
        changes = fields.changes(self.owned_fields(actual.uri), actual)
        if not actual.reconciling and actual.latest_created_revision != actual.latest_ready_revision:
            # Our template, but its revision never became ready: the server is not running what it should.
            created = actual.latest_created_revision.rsplit("/", 1)[-1]
            changes.append(Change(READY, f"{created} failed", "ready"))
        return changes

    def create(self) -> Any:
        from google.api_core import exceptions
        from google.cloud import run_v2

        run = self.ctx.clients.run_services
        n = self.ctx.names
        try:
            op = self.ctx.api(
                "run.services.create",
                run.create_service,
                parent=f"projects/{n.project}/locations/{n.region}",
                service=fields.apply(self.owned_fields(), run_v2.Service()),
                service_id=n.service,
            )
        except exceptions.Conflict:  # created by a run that died before recording it
            actual = self.settle(self.find())
            changes = self.diff(actual)
            return self.update(actual, changes) if changes else actual
        return self._after_deploy(self._deployed(op))

    def update(self, actual: Any, changes: list[Change]) -> Any:
        from google.cloud import run_v2

        run = self.ctx.clients.run_services
        owned = self.owned_fields(actual.uri)
        paths = {c.field for c in changes}
        service = run_v2.Service(run_v2.Service.pb(actual).__deepcopy__())
        fields.apply(owned, service, only=paths)
        mask = {f.mask or f.path for f in owned if f.path in paths}
        new_template = any(m.startswith("template.") for m in mask)
        if READY in paths and not new_template:
            # An unchanged template makes no new revision; an explicit, unused revision name does.
            service.template.revision = f"{self.ctx.names.service}-{secrets.token_hex(3)}"
            mask.add("template.revision")
        elif service.template.revision and new_template:
            # The name a forced revision left in the template would name this new one too, and it is taken
            # (409): cleared, Cloud Run names the revision.
            service.template.revision = ""
            mask.add("template.revision")
        service.etag = ""  # the mask names what we change; others' concurrent edits elsewhere stay theirs
        op = self.ctx.api(
            "run.services.update",
            run.update_service,
            request={"service": service, "update_mask": {"paths": sorted(mask)}},
        )
        return self._after_deploy(self._deployed(op))

    def _deployed(self, op: Any) -> Any:
        """The service once its deploy finished. A revision that did not become ready fails with what a person
        needs to fix it: the failing condition, the last lines the revision logged and the command that shows more
        (server_logs.RevisionFailed), instead of Cloud Run's bare error."""
        from google.api_core import exceptions

        from ..server_logs import failed_revision

        try:
            return self.ctx.wait(op, self.kind)
        except exceptions.GoogleAPICallError:
            failed = failed_revision(self.ctx, self.find())
            if failed is None:
                raise
            raise failed from None

    def _after_deploy(self, service: Any) -> Any:
        """If the server must also accept a host only known now (its URL), roll once more."""
        changes = [c for c in self.diff(service) if c.field != READY]
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
