"""Cloud SQL for PostgreSQL: the instance, the tracking and auth databases, and the application user.

Cloud SQL answers mutations with a `sql#operation` that must be polled, and refuses a second operation on an
instance while one runs (operationInProgress), so the database and user steps run one after another."""

from __future__ import annotations

from typing import Any

from .. import fields, reads
from ..engine import Change, Resource
from ..errors import MlflowGcpError
from ..fields import Owned, reader
from ..retry import http_status, wait_until
from ._common import get_or_none

SSL_MODE = "ENCRYPTED_ONLY"
BACKUP = "settings.backupConfiguration"
IP = "settings.ipConfiguration"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def wait_operation(ctx: Any, op: dict[str, Any], what: str, timeout: float | None = None) -> dict[str, Any]:
    """Poll a sql#operation to DONE with api-core's backoff; its errors become one clear exception."""
    sql = ctx.clients.sqladmin
    if op.get("status") != "DONE":
        # Cloud SQL answers a database or user call already DONE (recorded: tests/golden/recordings/sql-*.log).
        op = wait_until(
            f"{what} (operation {op.get('name')})",
            lambda: ctx.api(
                "sqladmin.operations.get",
                sql.operations().get(project=ctx.names.project, operation=op["name"]).execute,
            ),
            lambda polled: polled.get("status") == "DONE",
            timeout or ctx.deadline,
        )
    errors = (op.get("error") or {}).get("errors") or []
    if errors:
        raise MlflowGcpError(f"{what} failed: " + "; ".join(e.get("message", e.get("code", "?")) for e in errors))
    return op


def _get_or_none(ctx: Any, what: str, request: Any, *, on_instance: bool = False) -> Any | None:
    """GET, with NOT_FOUND as None. Calls on an instance that does not exist answer 403 notAuthorized, not 404:
    for those (``on_instance``) a 403 means absent only if the instance itself is confirmed absent."""
    from googleapiclient.errors import HttpError

    try:
        return get_or_none(ctx, what, request.execute)
    except HttpError as exc:
        if on_instance and http_status(exc) == 403 and not _instance_exists(ctx):
            return None
        raise


def _get_instance(ctx: Any) -> Any | None:
    """instances.get, or None; in the read wave one call answers the instance step and every step that must tell a
    missing instance from a refusal (reads.py)."""
    n = ctx.names

    def read() -> Any | None:
        request = ctx.clients.sqladmin.instances().get(project=n.project, instance=n.instance)
        return _get_or_none(ctx, "sqladmin.instances.get", request)

    return reads.shared("sqladmin.instances.get", f"projects/{n.project}/instances/{n.instance}", read)


def _instance_exists(ctx: Any) -> bool:
    return _get_instance(ctx) is not None


def _listed(ctx: Any, collection: str) -> list[dict[str, Any]]:
    """The instance's databases or users (``collection``), in one list call (neither list pages: Cloud SQL answers
    all items at once); in the read wave that one call answers both database steps, or both login-role steps
    (reads.py). Empty when the instance does not exist (Cloud SQL answers 403, not 404, for its collections)."""
    n = ctx.names
    what = f"sqladmin.{collection}.list"

    def read() -> list[dict[str, Any]]:
        request = getattr(ctx.clients.sqladmin, collection)().list(project=n.project, instance=n.instance)
        listed = _get_or_none(ctx, what, request, on_instance=True) or {}
        return list(listed.get("items", []))

    return reads.shared(what, f"projects/{n.project}/instances/{n.instance}", read)


class Instance(Resource):
    key = "sql:instance"
    kind = "Cloud SQL instance"
    depends_on = ("apis",)
    holds_data = True

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/instances/{self.ctx.names.instance}"

    def find(self) -> Any | None:
        return _get_instance(self.ctx)

    def owned_fields(self) -> list[Owned]:
        db, n = self.ctx.config.database, self.ctx.names

        def field(path: str, desired: Any, **kw: Any) -> Owned:
            return Owned(path, desired, reader(path), **kw)

        never = "mlflow-gcp never recreates a database."
        return [
            field(
                "region",
                n.region,
                mode="refuse",
                refusal=f"The Cloud SQL instance {n.instance} is in another region than {n.region}; {never}",
                hint="Set region to match, or use another env.",
            ),
            field(
                "databaseVersion",
                db.version,
                mode="refuse",
                refusal=f"The Cloud SQL instance runs another PostgreSQL version than {db.version}; {never}",
                hint="Upgrade it in place with `gcloud sql instances patch --database-version` after a backup, "
                "or set database.version to match.",
            ),
            field("settings.tier", db.tier),
            # PostgreSQL 16+ defaults to ENTERPRISE_PLUS, which rejects the small tiers: say it explicitly.
            field("settings.edition", "ENTERPRISE"),
            field("settings.availabilityType", "ZONAL"),
            field("settings.dataDiskSizeGb", str(db.disk_size_gb), mode="grow_only", normalize=_int),
            field(
                "settings.dataDiskType",
                db.disk_type,
                mode="refuse",
                refusal=f"The Cloud SQL instance's disk is not {db.disk_type}; a disk type is chosen at "
                f"creation. {never}",
                hint="Set database.disk_type to match.",
            ),
            field("settings.storageAutoResize", True, normalize=bool),
            field("settings.deletionProtectionEnabled", db.deletion_protection, normalize=bool),
            field(f"{BACKUP}.enabled", db.backups, normalize=bool),
            field(f"{BACKUP}.pointInTimeRecoveryEnabled", db.backups and db.point_in_time_recovery, normalize=bool),
            field(f"{BACKUP}.transactionLogRetentionDays", db.log_retention_days),
            field(f"{BACKUP}.startTime", "03:00"),
            field(f"{IP}.ipv4Enabled", True, normalize=bool),
            field(f"{IP}.sslMode", SSL_MODE),
            field(
                f"{IP}.authorizedNetworks",
                [{"name": f"mlflow-gcp-{i}", "value": cidr} for i, cidr in enumerate(db.authorized_networks)],
                normalize=lambda nets: sorted(net.get("value") for net in nets or []),
            ),
            field("settings.userLabels", n.labels, mode="labels"),
        ]

    def create(self) -> Any:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        body = {"name": n.instance, **fields.body(self.owned_fields())}
        from googleapiclient.errors import HttpError

        try:
            op = self.ctx.api("sqladmin.instances.insert", sql.instances().insert(project=n.project, body=body).execute)
        except HttpError as exc:
            if http_status(exc) != 409:
                raise
            existing = self.find()
            if existing is None:
                raise MlflowGcpError(
                    f"Cloud SQL refuses the instance name {n.instance!r}: a deleted instance's name cannot be reused "
                    "for about a week.",
                    hint="Choose another env or name, or wait.",
                ) from None
            return self.settle(existing)  # created by a run that died before recording it
        # Creating an instance takes ~10 minutes on GCP (7-25 reported).
        wait_operation(self.ctx, op, f"Creating Cloud SQL instance {n.instance}", timeout=max(self.ctx.deadline, 2400))
        return self.find()

    def settle(self, actual: Any) -> Any | None:
        """Wait out an instance still being created (a run that died mid-create leaves one PENDING_CREATE)."""
        busy = ("PENDING_CREATE", "MAINTENANCE")
        if actual is None or actual.get("state") not in busy:
            return actual
        return wait_until(
            f"Cloud SQL instance {self.ctx.names.instance} to leave {actual.get('state')}",
            self.find,
            lambda i: i is None or i.get("state") not in busy,
            max(self.ctx.deadline, 2400),
        )

    def update(self, actual: Any, changes: list[Change]) -> Any:
        owned = self.owned_fields()
        paths = {c.field for c in changes}
        # A patch replaces a nested settings object whole: send all we own of each one touched.
        for group in (BACKUP, IP):
            if any(p.startswith(group + ".") for p in paths):
                paths |= {f.path for f in owned if f.path.startswith(group + ".")}
        body = fields.apply(
            owned, {"settings": {"userLabels": dict(fields.get(actual, "settings.userLabels") or {})}}, only=paths
        )
        if "settings.userLabels" not in paths:
            body["settings"].pop("userLabels")
        body["settings"]["settingsVersion"] = actual["settings"]["settingsVersion"]
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        op = self.ctx.api(
            "sqladmin.instances.patch",
            sql.instances().patch(project=n.project, instance=n.instance, body=body).execute,
        )
        wait_operation(self.ctx, op, f"Updating Cloud SQL instance {n.instance}")
        return self.find()

    def delete(self, actual: Any) -> None:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        if actual.get("settings", {}).get("deletionProtectionEnabled"):
            op = self.ctx.api(
                "sqladmin.instances.patch (deletion protection off)",
                sql.instances()
                .patch(project=n.project, instance=n.instance, body={"settings": {"deletionProtectionEnabled": False}})
                .execute,
            )
            wait_operation(self.ctx, op, "Lifting deletion protection")
        op = self.ctx.api(
            "sqladmin.instances.delete", sql.instances().delete(project=n.project, instance=n.instance).execute
        )
        wait_operation(self.ctx, op, f"Deleting Cloud SQL instance {n.instance}")

    def facts(self, actual: Any) -> dict[str, Any]:
        return {
            "id": self.id(),
            "connection_name": actual.get("connectionName", self.ctx.names.connection_name),
            "tier": actual.get("settings", {}).get("tier"),
            "database_version": actual.get("databaseVersion"),
        }

    def planned_facts(self) -> dict[str, Any]:
        return {
            "id": self.id(),
            "connection_name": self.ctx.names.connection_name,
            "tier": self.ctx.config.database.tier,
        }


class Database(Resource):
    kind = "Cloud SQL database"
    holds_data = True
    deleted_with = "sql:instance"
    database: str

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/instances/{self.ctx.names.instance}/databases/{self.database}"

    def find(self) -> Any | None:
        # The list's items are the resources databases.get answers (sql#database, with charset and collation).
        return next((d for d in _listed(self.ctx, "databases") if d.get("name") == self.database), None)

    def owned_fields(self) -> list[Owned]:
        return [
            Owned(
                name,
                value,
                reader(name),
                mode="refuse",
                refusal=f"Database {self.database} has {name} other than {value}; mlflow-gcp never recreates a "
                "database.",
                hint="Keep the database as it is: MLflow works with it only as created.",
            )
            for name, value in (("charset", "UTF8"), ("collation", "en_US.UTF8"))
        ]

    def create(self) -> Any:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        body = {"name": self.database, **fields.body(self.owned_fields())}
        op = self.ctx.api(
            f"sqladmin.databases.insert {self.database}",
            sql.databases().insert(project=n.project, instance=n.instance, body=body).execute,
        )
        wait_operation(self.ctx, op, f"Creating database {self.database}")
        return self.find()

    def delete(self, actual: Any) -> None:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        op = self.ctx.api(
            f"sqladmin.databases.delete {self.database}",
            sql.databases().delete(project=n.project, instance=n.instance, database=self.database).execute,
        )
        wait_operation(self.ctx, op, f"Deleting database {self.database}")


class TrackingDatabase(Database):
    key = "sql:db-tracking"
    depends_on = ("sql:instance",)
    database = "mlflow"


class AuthDatabase(Database):
    key = "sql:db-auth"
    # One operation at a time per instance: after the tracking database.
    depends_on = ("sql:instance", "sql:db-tracking")
    database = "mlflow_auth"


def active_db_user(ctx: Any) -> str:
    """The login role the server uses now (password rotation alternates between ``Names.db_users``)."""
    return ctx.state.data.get("db_user") or ctx.names.db_users[0]


class _LoginRole(Resource):
    kind = "Cloud SQL user"
    # Kept with the data: the only ways into the kept database (the tables belong to a role both are members of).
    holds_data = True
    deleted_with = "sql:instance"

    def __init__(self, ctx: Any, user: str | None = None) -> None:
        """``user`` names the role explicitly (password rotation addresses both roles by name: which one is active
        flips when it commits); without it, the role this step stands for now."""
        super().__init__(ctx)
        self._user = user

    @property
    def user(self) -> str:
        return self._user or self._current()

    def _current(self) -> str:
        raise NotImplementedError

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/instances/{self.ctx.names.instance}/users/{self.user}"

    def _insert(self, password: str) -> bool:
        """users.insert; False if the role already exists (made by a run that died before recording it)."""
        from googleapiclient.errors import HttpError

        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        body = {"name": self.user, "password": password}
        try:
            op = self.ctx.api(
                f"sqladmin.users.insert {self.user}",
                sql.users().insert(project=n.project, instance=n.instance, body=body).execute,
            )
            wait_operation(self.ctx, op, f"Creating database user {self.user}")
        except (HttpError, MlflowGcpError) as exc:
            if "already exists" not in str(exc):
                raise
            return False
        return True

    def find(self) -> Any | None:
        return next((u for u in _listed(self.ctx, "users") if u.get("name") == self.user), None)

    def set_password(self, password: str) -> None:
        """``users.update`` (a Cloud SQL operation, waited for). PostgreSQL keeps one password per role."""
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        body = {"name": self.user, "password": password}
        op = self.ctx.api(
            f"sqladmin.users.update {self.user}",
            sql.users().update(project=n.project, instance=n.instance, name=self.user, body=body).execute,
        )
        wait_operation(self.ctx, op, f"Setting the password of database user {self.user}")

    def delete(self, actual: Any) -> None:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        op = self.ctx.api(
            f"sqladmin.users.delete {self.user}",
            sql.users().delete(project=n.project, instance=n.instance, name=self.user).execute,
        )
        wait_operation(self.ctx, op, f"Deleting database user {self.user}")


class User(_LoginRole):
    """The login role the server uses; its password comes from the db-password secret's pinned version, and is
    set again whenever that version changes."""

    key = "sql:user"
    depends_on = ("sql:instance", "sql:db-auth", "secret:db-password")

    def __init__(self, ctx: Any, user: str | None = None, password_version: str | None = None) -> None:
        """Explicit ``user`` and ``password_version``: the role a rotation makes the active one, with its new
        password's version; without them, what the state and this run say."""
        super().__init__(ctx, user)
        self._password_version = password_version

    def _current(self) -> str:
        return active_db_user(self.ctx)

    @property
    def password_version(self) -> Any:
        """The db-password secret's version that holds this role's password."""
        return self._password_version or self.ctx.fact("secret:db-password", "version")

    def owned_fields(self) -> list[Owned]:
        # Cloud SQL never shows a password: the version last set is what this step recorded, for this role on this
        # instance (a restored instance holds the password its backup had, whatever was set on the old one since).
        return [
            Owned(
                "password (secret version)",
                self.password_version,
                lambda _: (
                    self.ctx.fact(self.key, "password_version") if self.ctx.fact(self.key, "id") == self.id() else None
                ),
            )
        ]

    def _password(self) -> str:
        from .secrets import read_secret

        return read_secret(self.ctx, "db-password", self.password_version)

    def create(self) -> Any:
        if not self._insert(self._password()):
            return self.update({"name": self.user}, [])
        return self.find()

    def update(self, actual: Any, changes: list[Change]) -> Any:
        self.set_password(self._password())
        return self.find()

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "user": self.user, "password_version": self.password_version}


class StandbyUser(_LoginRole):
    """The other login role: password rotation moves the server to it (mlflow-gcp rotate-password). It exists from
    the start so that the server, at its next start, makes it a member of the role that owns the tables. Until a
    rotation gives it one, its password is random and kept nowhere: nobody can log in as it."""

    key = "sql:standby-user"
    # One operation at a time per instance: after the active user.
    depends_on = ("sql:instance", "sql:user")

    def _current(self) -> str:
        active = active_db_user(self.ctx)
        return next(u for u in self.ctx.names.db_users if u != active)

    def create(self) -> Any:
        import secrets

        self._insert(secrets.token_urlsafe(32))
        return self.find()

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "user": self.user}
