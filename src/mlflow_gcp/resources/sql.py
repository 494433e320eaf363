"""Cloud SQL for PostgreSQL: the instance, the tracking and auth databases, and the application user.

Cloud SQL answers mutations with a `sql#operation` that must be polled, and refuses a second operation on an
instance while one runs (operationInProgress), so the database and user steps run one after another."""

from __future__ import annotations

import time
from typing import Any

from ..engine import Change, Resource
from ..errors import MlflowGcpError
from ..retry import http_status
from ._common import field_change, get_or_none, label_changes, merged_labels

SSL_MODE = "ENCRYPTED_ONLY"


def wait_operation(ctx: Any, op: dict[str, Any], what: str, timeout: float | None = None) -> dict[str, Any]:
    """Poll a sql#operation to DONE with backoff; its errors become one clear exception."""
    sql = ctx.clients.sqladmin
    deadline = time.monotonic() + (timeout or ctx.deadline)
    delay = 0.2
    while op.get("status") != "DONE":
        if time.monotonic() > deadline:
            raise MlflowGcpError(f"{what} did not finish in time (operation {op.get('name')}); run the command again.")
        time.sleep(delay)
        delay = min(delay * 1.5, 10.0)
        op = ctx.api(
            "sqladmin.operations.get",
            sql.operations().get(project=ctx.names.project, operation=op["name"]).execute,
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


def _instance_exists(ctx: Any) -> bool:
    sql = ctx.clients.sqladmin
    n = ctx.names
    return (
        _get_or_none(ctx, "sqladmin.instances.get", sql.instances().get(project=n.project, instance=n.instance))
        is not None
    )


class Instance(Resource):
    key = "sql:instance"
    kind = "Cloud SQL instance"
    depends_on = ("apis",)
    holds_data = True

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/instances/{self.ctx.names.instance}"

    def find(self) -> Any | None:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        return _get_or_none(
            self.ctx, "sqladmin.instances.get", sql.instances().get(project=n.project, instance=n.instance)
        )

    def desired_settings(self) -> dict[str, Any]:
        db = self.ctx.config.database
        return {
            "tier": db.tier,
            # PostgreSQL 16+ defaults to ENTERPRISE_PLUS, which rejects the small tiers: say it explicitly.
            "edition": "ENTERPRISE",
            "availabilityType": "ZONAL",
            "dataDiskSizeGb": str(db.disk_size_gb),
            "dataDiskType": db.disk_type,
            "storageAutoResize": True,
            "deletionProtectionEnabled": db.deletion_protection,
            "backupConfiguration": {
                "enabled": db.backups,
                "pointInTimeRecoveryEnabled": db.backups and db.point_in_time_recovery,
                "transactionLogRetentionDays": db.log_retention_days,
                "startTime": "03:00",
            },
            "ipConfiguration": {
                "ipv4Enabled": True,
                "sslMode": SSL_MODE,
                "authorizedNetworks": [
                    {"name": f"mlflow-gcp-{i}", "value": cidr} for i, cidr in enumerate(db.authorized_networks)
                ],
            },
            "userLabels": self.ctx.names.labels,
        }

    def diff(self, actual: Any) -> list[Change]:
        want = self.desired_settings()
        have = actual.get("settings", {})
        backup, want_backup = have.get("backupConfiguration", {}), want["backupConfiguration"]
        ip, want_ip = have.get("ipConfiguration", {}), want["ipConfiguration"]
        changes = [
            *field_change("databaseVersion", actual.get("databaseVersion"), self.ctx.config.database.version),
            *field_change("settings.tier", have.get("tier"), want["tier"]),
            *field_change("settings.edition", have.get("edition"), want["edition"]),
            *field_change(
                "settings.deletionProtectionEnabled",
                bool(have.get("deletionProtectionEnabled")),
                want["deletionProtectionEnabled"],
            ),
            *field_change("backupConfiguration.enabled", bool(backup.get("enabled")), want_backup["enabled"]),
            *field_change(
                "backupConfiguration.pointInTimeRecoveryEnabled",
                bool(backup.get("pointInTimeRecoveryEnabled")),
                want_backup["pointInTimeRecoveryEnabled"],
            ),
            *field_change("ipConfiguration.sslMode", ip.get("sslMode"), want_ip["sslMode"]),
            *field_change(
                "ipConfiguration.authorizedNetworks",
                sorted(n.get("value") for n in ip.get("authorizedNetworks", [])),
                sorted(n["value"] for n in want_ip["authorizedNetworks"]),
            ),
            *label_changes(have.get("userLabels"), self.ctx.names.labels, "settings.userLabels"),
        ]
        if int(have.get("dataDiskSizeGb", 0)) < self.ctx.config.database.disk_size_gb:
            changes.append(Change("settings.dataDiskSizeGb", have.get("dataDiskSizeGb"), want["dataDiskSizeGb"]))
        return changes

    def create(self) -> Any:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        body = {
            "name": n.instance,
            "region": n.region,
            "databaseVersion": self.ctx.config.database.version,
            "settings": self.desired_settings(),
        }
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
        deadline = time.monotonic() + max(self.ctx.deadline, 2400)
        while actual is not None and actual.get("state") in ("PENDING_CREATE", "MAINTENANCE"):
            if time.monotonic() > deadline:
                break
            time.sleep(2)
            actual = self.find()
        return actual

    def update(self, actual: Any, changes: list[Change]) -> Any:
        fields = {c.field for c in changes}
        if "databaseVersion" in fields:
            raise MlflowGcpError(
                f"The Cloud SQL instance runs {actual.get('databaseVersion')}, the configuration says "
                f"{self.ctx.config.database.version}. mlflow-gcp never recreates a database.",
                hint="Upgrade it in place with `gcloud sql instances patch --database-version` after a backup, "
                "or set database.version to match.",
            )
        want = self.desired_settings()
        settings: dict[str, Any] = {"settingsVersion": actual["settings"]["settingsVersion"]}
        for change in changes:
            top = change.field.split(".")[0] if not change.field.startswith("settings.") else change.field.split(".")[1]
            source = {"backupConfiguration": "backupConfiguration", "ipConfiguration": "ipConfiguration"}.get(top, top)
            settings[source] = want[source]
        if "userLabels" in settings:
            settings["userLabels"] = merged_labels(actual["settings"].get("userLabels"), self.ctx.names.labels)
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        op = self.ctx.api(
            "sqladmin.instances.patch",
            sql.instances().patch(project=n.project, instance=n.instance, body={"settings": settings}).execute,
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
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        return _get_or_none(
            self.ctx,
            f"sqladmin.databases.get {self.database}",
            sql.databases().get(project=n.project, instance=n.instance, database=self.database),
            on_instance=True,
        )

    def create(self) -> Any:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        body = {"name": self.database, "charset": "UTF8", "collation": "en_US.UTF8"}
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

    @property
    def user(self) -> str:
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
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        listed = self.ctx.api("sqladmin.users.list", sql.users().list(project=n.project, instance=n.instance).execute)
        for user in listed.get("items", []):
            if user.get("name") == self.user:
                return user
        return None

    def delete(self, actual: Any) -> None:
        sql = self.ctx.clients.sqladmin
        n = self.ctx.names
        op = self.ctx.api(
            f"sqladmin.users.delete {self.user}",
            sql.users().delete(project=n.project, instance=n.instance, name=self.user).execute,
        )
        wait_operation(self.ctx, op, f"Deleting database user {self.user}")


def set_user_password(ctx: Any, user: str, password: str) -> None:
    """``users.update`` (a Cloud SQL operation, waited for). PostgreSQL keeps one password per role."""
    sql = ctx.clients.sqladmin
    n = ctx.names
    op = ctx.api(
        f"sqladmin.users.update {user}",
        sql.users()
        .update(project=n.project, instance=n.instance, name=user, body={"name": user, "password": password})
        .execute,
    )
    wait_operation(ctx, op, f"Setting the password of database user {user}")


class User(_LoginRole):
    """The login role the server uses; its password comes from the db-password secret's pinned version, and is
    set again whenever that version changes."""

    key = "sql:user"
    depends_on = ("sql:instance", "sql:db-auth", "secret:db-password")

    @property
    def user(self) -> str:
        return active_db_user(self.ctx)

    def diff(self, actual: Any) -> list[Change]:
        pinned = self.ctx.fact("secret:db-password", "version")
        applied = self.ctx.fact(self.key, "password_version")
        return field_change("password (secret version)", applied, pinned)

    def _password(self) -> str:
        from .secrets import read_secret

        return read_secret(self.ctx, "db-password", self.ctx.fact("secret:db-password", "version"))

    def create(self) -> Any:
        if not self._insert(self._password()):
            return self.update({"name": self.user}, [])
        return self.find()

    def update(self, actual: Any, changes: list[Change]) -> Any:
        set_user_password(self.ctx, self.user, self._password())
        return self.find()

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "user": self.user, "password_version": self.ctx.fact("secret:db-password", "version")}


class StandbyUser(_LoginRole):
    """The other login role: password rotation moves the server to it (mlflow-gcp rotate-password). It exists from
    the start so that the server, at its next start, makes it a member of the role that owns the tables. Until a
    rotation gives it one, its password is random and kept nowhere: nobody can log in as it."""

    key = "sql:standby-user"
    # One operation at a time per instance: after the active user.
    depends_on = ("sql:instance", "sql:user")

    @property
    def user(self) -> str:
        active = active_db_user(self.ctx)
        return next(u for u in self.ctx.names.db_users if u != active)

    def create(self) -> Any:
        import secrets

        self._insert(secrets.token_urlsafe(32))
        return self.find()

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "user": self.user}
