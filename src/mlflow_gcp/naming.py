"""Resource names, all derived from ``name`` and ``env`` so several environments share one project (the seed
guide's fixed secret ids collide)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

MANAGED_BY = "mlflow-gcp"

# Services `up` enables, in one batchEnable call (the API takes at most 20).
BUILD_SERVICES = (
    "cloudbuild.googleapis.com",
    # Cloud Build writes the build's log there (CLOUD_LOGGING_ONLY); a failed build's last lines are read back.
    "logging.googleapis.com",
)
# Identity-Aware Proxy, in access.mode = "iap" only.
IAP_SERVICES = ("iap.googleapis.com",)
SERVICES = (
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "iam.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
)


@dataclass(frozen=True)
class Names:
    project: str
    region: str
    name: str
    env: str
    bucket: str
    #: The Cloud SQL instance that serves, when a restore or a rollback moved the service to a new one (the state
    #: records it: ``database.live``); otherwise the instance ``up`` creates, ``<name>-<env>-db``.
    database_instance: str = ""

    @classmethod
    def from_config(cls, config: Config) -> Names:
        return cls(
            project=config.project,
            region=config.region,
            name=config.name,
            env=config.env,
            bucket=config.artifacts.bucket or f"{config.project}-{config.name}-{config.env}",
        )

    @property
    def prefix(self) -> str:
        return f"{self.name}-{self.env}"

    @property
    def labels(self) -> dict[str, str]:
        return {"managed-by": MANAGED_BY, "mlflow-gcp-env": self.env, "mlflow-gcp-name": self.name}

    # Artifact Registry
    @property
    def repository(self) -> str:
        return self.prefix

    @property
    def registry_host(self) -> str:
        return f"{self.region}-docker.pkg.dev"

    @property
    def image_repo(self) -> str:
        return f"{self.registry_host}/{self.project}/{self.repository}/mlflow-server"

    # Cloud SQL
    @property
    def first_instance(self) -> str:
        return f"{self.prefix}-db"

    @property
    def instance(self) -> str:
        return self.database_instance or self.first_instance

    def restored_instance(self, when: str) -> str:
        """A new instance for a restore or rollback started at ``when`` (UTC, ``YYYYmmddHHMMSS``): a name never used
        before, since Cloud SQL refuses a deleted instance's name for about a week."""
        return f"{self.first_instance}-r{when}"

    @property
    def connection_name(self) -> str:
        return f"{self.project}:{self.region}:{self.instance}"

    tracking_database = "mlflow"
    auth_database = "mlflow_auth"
    #: Two login roles alternate on password rotation; the first is created by `up`.
    db_users = ("mlflow_a", "mlflow_b")

    # Secret Manager
    @property
    def secrets(self) -> dict[str, str]:
        return {
            "db-password": f"{self.prefix}-db-password",
            "admin-username": f"{self.prefix}-admin-username",
            "admin-password": f"{self.prefix}-admin-password",
            "flask-secret-key": f"{self.prefix}-flask-secret-key",
        }

    # IAM
    @property
    def runtime_account_id(self) -> str:
        return f"{self.prefix}-run"

    @property
    def runtime_account(self) -> str:
        return f"{self.runtime_account_id}@{self.project}.iam.gserviceaccount.com"

    @property
    def build_account_id(self) -> str:
        return f"{self.prefix}-build"

    @property
    def build_account(self) -> str:
        return f"{self.build_account_id}@{self.project}.iam.gserviceaccount.com"

    @property
    def build_bucket(self) -> str:
        """Where Cloud Build's source archives are staged (a bucket of their own, so a lifecycle rule can empty it)."""
        return f"{self.bucket}-build"

    @property
    def client_account_id(self) -> str:
        return f"{self.prefix}-client"

    @property
    def client_account(self) -> str:
        return f"{self.client_account_id}@{self.project}.iam.gserviceaccount.com"

    # Cloud Run
    @property
    def service(self) -> str:
        return self.prefix

    @property
    def service_path(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/services/{self.service}"

    def problems(self) -> list[tuple[str, str]]:
        """Names over GCP's limits, reported against the settings that produce them."""
        out: list[tuple[str, str]] = []
        limits = [
            ("service account id", self.client_account_id, 6, 30),
            ("Cloud Run service", self.service, 1, 49),
            # With the suffix a restore adds, so that a restore can never be refused for its name.
            ("Cloud SQL instance", self.restored_instance("0" * 14), 1, 98),
            ("Artifact Registry repository", self.repository, 1, 63),
        ]
        for what, value, low, high in limits:
            if not low <= len(value) <= high:
                out.append(("name", f"{what} name {value!r} must be {low}-{high} characters: shorten name or env"))
        if not 3 <= len(self.bucket) <= 63:
            out.append(
                ("artifacts.bucket", f"bucket name {self.bucket!r} must be 3-63 characters: set artifacts.bucket")
            )
        if self.bucket.startswith("goog") or "google" in self.bucket:
            out.append(("artifacts.bucket", f"bucket name {self.bucket!r} may not contain 'google' or start 'goog'"))
        return out
