"""Configuration: defaults < config file < ``MLFLOW_GCP_*`` environment < flags, validated as a whole before any
API call. Every problem is reported at once, with where the value came from and what to change."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

DEFAULT_CONFIG_FILE = "mlflow-gcp.toml"
ENV_PREFIX = "MLFLOW_GCP_"
LOCAL_PROJECT = "mlflow-local"

# Regions where Cloud Run, Cloud SQL and Artifact Registry are all offered.
REGIONS = frozenset(
    [
        "africa-south1",
        "asia-east1",
        "asia-east2",
        "asia-northeast1",
        "asia-northeast2",
        "asia-northeast3",
        "asia-south1",
        "asia-south2",
        "asia-southeast1",
        "asia-southeast2",
        "australia-southeast1",
        "australia-southeast2",
        "europe-central2",
        "europe-north1",
        "europe-north2",
        "europe-southwest1",
        "europe-west1",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "europe-west6",
        "europe-west8",
        "europe-west9",
        "europe-west10",
        "europe-west12",
        "me-central1",
        "me-central2",
        "me-west1",
        "northamerica-northeast1",
        "northamerica-northeast2",
        "northamerica-south1",
        "southamerica-east1",
        "southamerica-west1",
        "us-central1",
        "us-east1",
        "us-east4",
        "us-east5",
        "us-south1",
        "us-west1",
        "us-west2",
        "us-west3",
        "us-west4",
    ]
)
POSTGRES_VERSIONS = ("POSTGRES_13", "POSTGRES_14", "POSTGRES_15", "POSTGRES_16", "POSTGRES_17")

_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_NAME = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_MEMORY = re.compile(r"^\d+(Mi|Gi)$")
_MEMBER = re.compile(r"^(user|group|serviceAccount|domain):[^\s]+$")
_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseConfig(_Section):
    #: Default: 1 vCPU / 3.75 GB, the smallest tier with Cloud SQL's SLA; about $49/month in us-central1 plus storage.
    tier: str = "db-custom-1-3840"
    #: Pinned: Google moves the default version.
    version: str = "POSTGRES_16"
    disk_size_gb: int = Field(10, ge=10, le=65536)
    disk_type: Literal["PD_SSD", "PD_HDD"] = "PD_SSD"
    backups: bool = True
    point_in_time_recovery: bool = True
    #: Enterprise edition keeps 1 to 7 days of transaction logs for point-in-time recovery.
    log_retention_days: int = Field(7, ge=1, le=7)
    deletion_protection: bool = True
    #: CIDR ranges allowed to reach the public IP (the seed's `vpn_to_access_db`); empty = none.
    authorized_networks: list[str] = []


def _shipped_mlflow_version() -> str:
    from .image_source import pinned_mlflow_version

    return pinned_mlflow_version()


class ServerConfig(_Section):
    #: A prebuilt server image; by default mlflow-gcp builds the image it ships and pushes it to Artifact Registry.
    image: str | None = None
    #: How the image is built: "docker" (a local daemon), "cloudbuild" (remotely, no local Docker), or "auto":
    #: docker when a daemon answers, else Cloud Build.
    builder: Literal["auto", "docker", "cloudbuild"] = "auto"
    max_instances: int = Field(10, ge=1, le=100)
    min_instances: int = Field(0, ge=0, le=100)
    cpu: Literal["1", "2", "4"] = "1"
    memory: str = "1Gi"
    #: Server worker processes per instance; default one per vCPU (``worker_count``). One worker is served from
    #: the process that imports MLflow and migrates the databases, so an instance starts in about one MLflow import
    #: (server_image/mlflow_gcp_serve.py); more workers are processes of their own that each import MLflow again.
    workers: int | None = Field(None, ge=1, le=8)
    auth_cache_ttl_seconds: int = Field(60, ge=1, le=3600)
    admin_username: str = "admin"
    #: The MLflow release the server image installs (its requirements.txt pin; the image tag covers it). Default: the
    #: one this release of mlflow-gcp is tested with, the pin shipped in server_image/requirements.txt. Releases
    #: outside image_source.SUPPORTED_MLFLOW are refused. Not used with a prebuilt `image`.
    mlflow_version: str = Field(default_factory=_shipped_mlflow_version)

    @property
    def worker_count(self) -> int:
        """``workers``, else one per vCPU. MLflow serves its Flask handlers from threads under one GIL, so a second
        process on one vCPU adds no throughput (measured: 1 and 2 workers on one CPU serve the same requests per
        second, within noise) while it doubles the instance's start and its database connections."""
        return self.workers or int(self.cpu)


class ArtifactsConfig(_Section):
    #: Default: "<project>-<name>-<env>".
    bucket: str | None = None
    #: Default: the region.
    location: str | None = None
    #: Principals that may read artifacts directly (`user:`, `group:`, `serviceAccount:`, `domain:`).
    users: list[str] = []
    #: How long a deleted or overwritten artifact stays restorable (the bucket's Cloud Storage soft delete): 7 to 90
    #: days as GCS allows, or 0 for none. Soft-deleted bytes are billed like live ones for that time.
    soft_delete_days: int = Field(7, ge=0, le=90)


#: The OAuth client of `gcloud auth application-default login`: the audience of a user's ADC ID token. IAP takes
#: ID tokens only for OAuth clients on the resource's allowlist ("programmatic access is blocked by default. You need
#: to add the OAuth 2.0 client to an allowlist": cloud.google.com/iap/docs/sharing-oauth-clients#programmatic_access),
#: so IAP mode allowlists this one: a laptop's ADC then works, and service accounts mint ID tokens for it too.
ADC_CLIENT_ID = "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"


class AccessConfig(_Section):
    #: "basic": MLflow's own accounts (the admin creates them), the service public at the front end. "iap": sign in
    #: with Google through Identity-Aware Proxy on the Cloud Run service; only `members` reach it.
    mode: Literal["basic", "iap"] = "basic"
    #: Who may reach the server in iap mode (`user:`, `group:`, `serviceAccount:`, `domain:`).
    members: list[str] = []
    #: Emails (or `user:`/`serviceAccount:` members) that are MLflow admins in iap mode.
    admins: list[str] = []
    #: What a user may do on experiments and models nobody granted them anything on (MLflow's default_permission).
    default_permission: Literal["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"] = "READ"
    #: OAuth client IDs whose ID tokens IAP accepts from programs, besides gcloud's ADC client (always allowed).
    programmatic_clients: list[str] = []

    @property
    def admin_emails(self) -> list[str]:
        return sorted({a.partition(":")[2] if ":" in a else a for a in self.admins})

    @property
    def audiences(self) -> list[str]:
        """The OAuth client IDs IAP accepts programmatic ID tokens for; the first is what programs ask for."""
        return list(dict.fromkeys([ADC_CLIENT_ID, *self.programmatic_clients]))


class Config(_Section):
    project: str
    region: str = "us-central1"
    name: str = "mlflow"
    env: str = "dev"
    #: A local directory or a gs://bucket/prefix URL for the state file.
    state: str = ".mlflow-gcp"
    #: Create a key for the client service account (off: many organizations forbid key creation).
    create_client_key: bool = False
    database: DatabaseConfig = DatabaseConfig()
    server: ServerConfig = ServerConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    access: AccessConfig = AccessConfig()

    @property
    def bucket_location(self) -> str:
        return (self.artifacts.location or self.region).upper()


SECTIONS: dict[str, type[_Section]] = {
    "database": DatabaseConfig,
    "server": ServerConfig,
    "artifacts": ArtifactsConfig,
    "access": AccessConfig,
}
TOP_LEVEL = [k for k in Config.model_fields if k not in SECTIONS]


def _env_var(section: str | None, key: str) -> str:
    return ENV_PREFIX + (f"{section}_{key}" if section else key).upper()


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``MLFLOW_GCP_PROJECT``, ``MLFLOW_GCP_DATABASE_TIER``, ...; lists are comma-separated."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    known = {_env_var(None, k): (None, k) for k in TOP_LEVEL}
    for section, model in SECTIONS.items():
        known.update({_env_var(section, k): (section, k) for k in model.model_fields})
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var in ("MLFLOW_GCP_EMULATOR_DIR",):
            continue
        if var not in known:
            continue  # other tools' MLFLOW_GCP_* variables are not ours to refuse
        section, key = known[var]
        model = SECTIONS[section] if section else Config
        annotation = str(model.model_fields[key].annotation)
        value: Any = [v.strip() for v in raw.split(",") if v.strip()] if "list" in annotation else raw
        if section:
            values.setdefault(section, {})[key] = value
        else:
            values[key] = value
        sources[f"{section}.{key}" if section else key] = f"environment variable {var}"
    return values, sources


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _flatten_sources(data: dict[str, Any], origin: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_sources(v, origin, key + "."))
        else:
            out[key] = origin
    return out


def read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.", hint="Copy config.example.toml to start.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None


def load(
    config_file: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    default_project: str | None = None,
) -> Config:
    """Assemble and validate the configuration. ``flags`` uses dotted keys (``database.tier``) for sections."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file():
        config_file = Path(DEFAULT_CONFIG_FILE)
    if config_file is not None:
        file_data = read_file(config_file)
        data = _merge(data, file_data)
        sources.update(_flatten_sources(file_data, f"config file {config_file}"))
    env_data, env_sources = _from_env(environ)
    data = _merge(data, env_data)
    sources.update(env_sources)
    flag_data: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        section, _, field = key.rpartition(".")
        (flag_data.setdefault(section, {}) if section else flag_data)[field] = value
        sources[key] = f"--{field.replace('_', '-')}"
    data = _merge(data, flag_data)
    if "project" not in data:
        project = environ.get("GOOGLE_CLOUD_PROJECT") or environ.get("CLOUDSDK_CORE_PROJECT") or default_project
        if project:
            data["project"] = project
            sources["project"] = "the Google Cloud environment"
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    problems = check(config)
    if problems:
        raise ConfigError("Invalid configuration:\n" + "\n".join(f"  - {_where(k, sources)}: {m}" for k, m in problems))
    return config


def _where(key: str, sources: dict[str, str]) -> str:
    return f"{key} (from {sources[key]})" if key in sources else key


def _describe(exc: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            parent = SECTIONS.get(loc[0]) if len(loc) > 1 else Config
            options = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(loc[-1], options, n=1)
            lines.append(
                f"  - {_where(key, sources)}: unknown setting"
                + (f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else "")
            )
        elif err["type"] == "missing" and key == "project":
            lines.append(
                "  - project: not set. Pass --project, set MLFLOW_GCP_PROJECT or GOOGLE_CLOUD_PROJECT, "
                'or put `project = "..."` in the config file.'
            )
        else:
            lines.append(f"  - {_where(key, sources)}: {err['msg']} (got {err.get('input')!r})")
    return "Invalid configuration:\n" + "\n".join(lines)


def check(config: Config) -> list[tuple[str, str]]:
    """Rules GCP would enforce, checked before any call so nothing is half-created."""
    from .naming import Names

    problems: list[tuple[str, str]] = []
    if not _PROJECT_ID.match(config.project):
        problems.append(
            ("project", f"{config.project!r} is not a project ID: 6-30 lowercase letters, digits or hyphens, "
             "starting with a letter (use the ID, not the display name or number)")
        )  # fmt: skip
    if config.region not in REGIONS:
        close = difflib.get_close_matches(config.region, sorted(REGIONS), n=1)
        problems.append(
            ("region", f"unknown region {config.region!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        )
    for key in ("name", "env"):
        value = getattr(config, key)
        if not _NAME.match(value):
            problems.append((key, f"{value!r} must be lowercase letters, digits and hyphens, starting with a letter"))
    if config.database.version not in POSTGRES_VERSIONS:
        problems.append(("database.version", f"must be one of {', '.join(POSTGRES_VERSIONS)}"))
    tier_problem = check_tier(config.database.tier)
    if tier_problem:
        problems.append(("database.tier", tier_problem))
    for cidr in config.database.authorized_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(("database.authorized_networks", f"{cidr!r} is not a CIDR range like 203.0.113.0/24"))
    if not _MEMORY.match(config.server.memory):
        problems.append(("server.memory", f"{config.server.memory!r} must look like 512Mi or 2Gi"))
    if config.server.min_instances > config.server.max_instances:
        problems.append(("server.min_instances", "must not exceed server.max_instances"))
    if len(config.server.admin_username) < 1 or not re.fullmatch(r"[\w.@-]+", config.server.admin_username):
        problems.append(("server.admin_username", "use letters, digits, '.', '@', '_' or '-'"))
    version_problem = _mlflow_version_problem(config.server.mlflow_version)
    if version_problem:
        problems.append(("server.mlflow_version", version_problem))
    for member in config.artifacts.users:
        if not _MEMBER.match(member):
            problems.append(
                ("artifacts.users", f"{member!r} needs a prefix: user:, group:, serviceAccount: or domain:")
            )
    access = config.access
    for member in access.members:
        if not _MEMBER.match(member):
            problems.append(("access.members", f"{member!r} needs a prefix: user:, group:, serviceAccount: or domain:"))
    for admin in access.admins:
        kind, _, email = admin.rpartition(":")
        if kind not in ("", "user", "serviceAccount") or not _EMAIL.match(email):
            problems.append(("access.admins", f"{admin!r} must be an email (optionally user: or serviceAccount:)"))
    if access.mode == "iap" and not access.members:
        problems.append(("access.members", "iap mode needs at least one member: nobody could reach the server"))
    if 0 < config.artifacts.soft_delete_days < 7:
        problems.append(
            ("artifacts.soft_delete_days", "Cloud Storage keeps deleted objects 7 to 90 days; 0 turns it off")
        )
    if config.artifacts.location and config.artifacts.location.lower() not in REGIONS | {"us", "eu", "asia"}:
        problems.append(("artifacts.location", f"unknown location {config.artifacts.location!r}"))
    if not problems and _NAME.match(config.name) and _NAME.match(config.env):
        problems += Names.from_config(config).problems()
    return problems


def _mlflow_version_problem(version: str) -> str | None:
    from .image_source import mlflow_version_problem

    return mlflow_version_problem(version)


def check_tier(tier: str) -> str | None:
    """Tiers Cloud SQL accepts for PostgreSQL in the ENTERPRISE edition (which mlflow-gcp sets explicitly)."""
    from .tiers import tier_problem

    return tier_problem(tier, "ENTERPRISE")
