"""An instance's settings: the defaults Cloud SQL fills in and what it refuses (tier by edition, connectivity, backup
and transaction log retention, labels, database flags), for instances.insert, patch and update."""

from __future__ import annotations

import functools
import ipaddress
import re
import subprocess
from typing import Any

from .... import tiers
from ...core.errors import GcpError
from .common import _invalid
from .postgres import find_binaries
from .versions import _is_mysql, _major

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
#: Server settings the emulator owns (socket, logging, durability): Cloud SQL does not let flags set these.
MANAGED_FLAGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_permissions",
        "unix_socket_group",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "cluster_name",
        "logging_collector",
        "log_statement",
        "log_min_error_statement",
        "fsync",
        "ssl",
        "shared_preload_libraries",
        # backups and point-in-time recovery (walarchive.py)
        "wal_level",
        "archive_mode",
        "archive_command",
        "archive_library",
        "restore_command",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_action",
        "recovery_target_name",
        "recovery_target_lsn",
        "recovery_target_xid",
        "recovery_target_inclusive",
        "recovery_target_timeline",
    }
)
#: Settings whose change restarts the server (instances.patch and update).
_RESTART_SETTINGS = ("tier", "databaseFlags", "activationPolicy")


@functools.cache
def _known_server_settings() -> frozenset[str] | None:
    """PostgreSQL's setting names (``postgres --describe-config``), for checking databaseFlags; None when no
    server is installed (the create operation then fails with the install hint)."""
    binaries = find_binaries()
    if binaries is None:
        return None
    try:
        out = subprocess.run(
            [binaries.path("postgres"), "--describe-config"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return frozenset(line.split("\t", 1)[0].lower() for line in out.splitlines() if line)


def validate_settings(instance: dict[str, Any], given: dict[str, Any]) -> None:
    """Fill Cloud SQL's defaults into ``instance['settings']`` and refuse what Cloud SQL refuses. ``given`` is
    what the caller sent (to tell defaults from choices)."""
    settings = instance["settings"]
    major = _major(instance["databaseVersion"])
    settings["kind"] = "sql#settings"
    edition = settings.get("edition")
    if not edition or edition == "EDITION_UNSPECIFIED":
        edition = "ENTERPRISE_PLUS" if major >= 16 else "ENTERPRISE"
    settings["edition"] = edition
    tier = settings.get("tier")
    if not tier:
        raise GcpError(400, "Missing parameter: Tier.", "INVALID_ARGUMENT", reason="required")
    if not tiers.tier_allowed(tier, edition):
        message = f"Invalid Tier ({tier}) for ({edition}) Edition."
        if edition == "ENTERPRISE_PLUS":
            message += (
                " Use a predefined Tier like db-perf-optimized-N-* instead. Learn more at "
                "https://cloud.google.com/sql/docs/postgres/create-instance#machine-types."
            )
        raise _invalid(message)
    for field, default in (
        ("availabilityType", "ZONAL"),
        ("pricingPlan", "PER_USE"),
        ("replicationType", "SYNCHRONOUS"),
        ("activationPolicy", "ALWAYS"),
        ("dataDiskType", "PD_SSD"),
        ("dataDiskSizeGb", "10"),
        ("storageAutoResize", True),
        ("storageAutoResizeLimit", "0"),
        ("deletionProtectionEnabled", False),
        ("connectorEnforcement", "NOT_REQUIRED"),
        ("authorizedGaeApplications", []),  # recorded: tests/golden/recordings/sql-instance-postgres.log
    ):
        settings.setdefault(field, default)
    if settings["activationPolicy"] == "ON_DEMAND":
        raise _invalid("The ON_DEMAND activation policy is not supported for PostgreSQL instances.")
    settings["locationPreference"] = {
        "kind": "sql#locationPreference",
        "zone": f"{instance['region']}-c",
        **settings.get("locationPreference", {}),
    }
    # IP: public by default; sslMode wins over the legacy requireSsl, and each is derived from the other.
    ip = {
        "ipv4Enabled": True,
        "authorizedNetworks": [],  # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log
        **settings.get("ipConfiguration", {}),
    }
    given_ip = given.get("ipConfiguration", {})
    if "sslMode" not in given_ip and "requireSsl" in given_ip:
        ip["sslMode"] = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" if ip["requireSsl"] else "ALLOW_UNENCRYPTED_AND_ENCRYPTED"
    ip.setdefault("sslMode", "ALLOW_UNENCRYPTED_AND_ENCRYPTED")
    if "requireSsl" not in given_ip:
        ip["requireSsl"] = ip["sslMode"] == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    if not ip["ipv4Enabled"] and not ip.get("privateNetwork") and not ip.get("pscConfig", {}).get("pscEnabled"):
        raise _invalid("At least one of Public IP or Private IP or PSC connectivity must be enabled.")
    for acl in ip.get("authorizedNetworks", []):
        try:
            ipaddress.ip_network(acl.get("value", ""), strict=False)
        except ValueError:
            raise _invalid(f"Invalid authorized network value ({acl.get('value', '')}).") from None
        acl.setdefault("kind", "sql#aclEntry")
    settings["ipConfiguration"] = ip
    # Backups: off unless asked (through the API), PITR needs backups, log retention by edition.
    # recorded: tests/golden/recordings/sql-instance-postgres-minimal.log (ENTERPRISE: no PITR field unless
    # set, log storage state unspecified), sql-instance-postgres.log (replication log archiving with backups)
    backup = {
        "kind": "sql#backupConfiguration",
        "enabled": False,
        "startTime": "12:00",
        "transactionLogRetentionDays": 14 if edition == "ENTERPRISE_PLUS" else 7,
        "backupRetentionSettings": {
            "retentionUnit": "COUNT",
            "retainedBackups": 15 if edition == "ENTERPRISE_PLUS" else 7,
        },
        "transactionalLogStorageState": (
            "CLOUD_STORAGE" if edition == "ENTERPRISE_PLUS" else "TRANSACTIONAL_LOG_STORAGE_STATE_UNSPECIFIED"
        ),
        **settings.get("backupConfiguration", {}),
    }
    if not _is_mysql(instance) and "binaryLogEnabled" in backup:
        # Binary logs are MySQL's: for PostgreSQL the flag is kept as replication log archiving (recorded:
        # tests/golden/recordings/sql-instance-pitr.log, created with binaryLogEnabled false).
        backup["replicationLogArchivingEnabled"] = bool(backup.pop("binaryLogEnabled"))
    if backup["enabled"]:
        backup.setdefault("replicationLogArchivingEnabled", False)
    days = int(backup["transactionLogRetentionDays"])
    limit = 35 if edition == "ENTERPRISE_PLUS" else 7
    if not 1 <= days <= limit:
        raise _invalid(f"The number of transaction log retention days must be between 1 and {limit}.")
    if backup.get("pointInTimeRecoveryEnabled") and not backup["enabled"]:
        raise _invalid("Point-in-time recovery requires automated backups to be enabled.")
    settings["backupConfiguration"] = backup
    for key, value in settings.get("userLabels", {}).items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
            raise _invalid(
                f"Invalid label ({key}: {value}): keys start with a lowercase letter; keys and values "
                "have at most 63 lowercase letters, digits, '_' or '-'."
            )
    known = None if _is_mysql(instance) else _known_server_settings()
    for flag in settings.get("databaseFlags", []):
        name = str(flag.get("name", "")).lower()
        if not name:
            raise _invalid("Missing parameter: flag name.")
        if name in MANAGED_FLAGS or (known is not None and "." not in name and name not in known):
            raise _invalid(f"Invalid flag name: {flag.get('name')}.")
        if name == "max_connections" and not str(flag.get("value", "")).isdigit():
            raise _invalid(f"Invalid value for flag max_connections: {flag.get('value')}.")
        flag["name"] = name
