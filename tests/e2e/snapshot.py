"""Everything in a project, read back through the official clients and normalised, so two end states can be
compared: same resources (no duplicates, no orphans) with the same settings. Volatile fields (times, etags, ids,
URLs, revision names) are left out or normalised; nothing else is."""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions

from mlflow_gcp.emulator.testing import Clients

REGION = "us-central1"


def snapshot(clients: Clients, project: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    su = clients.service_usage()
    out["services"] = sorted(
        s.config.name for s in su.list_services(request={"parent": f"projects/{project}", "filter": "state:ENABLED"})
    )

    ar = clients.artifact_registry()
    parent = f"projects/{project}/locations/{REGION}"
    repos = list(ar.list_repositories(parent=parent))
    out["repositories"] = {
        r.name.rsplit("/", 1)[1]: {
            "format": int(r.format_),
            "labels": dict(r.labels),
            "images": sorted(tag for i in ar.list_docker_images(parent=r.name) for tag in i.tags),
        }
        for r in repos
    }

    sql = clients.sqladmin()
    instances = sql.instances().list(project=project).execute().get("items", [])
    out["sql"] = {}
    for inst in instances:
        name = inst["name"]
        settings = inst["settings"]
        out["sql"][name] = {
            "version": inst["databaseVersion"],
            "state": inst["state"],
            "tier": settings["tier"],
            "edition": settings.get("edition"),
            "backup": {
                k: settings.get("backupConfiguration", {}).get(k) for k in ("enabled", "pointInTimeRecoveryEnabled")
            },
            "sslMode": settings.get("ipConfiguration", {}).get("sslMode"),
            "deletionProtection": settings.get("deletionProtectionEnabled"),
            "labels": settings.get("userLabels"),
            "databases": sorted(
                d["name"] for d in sql.databases().list(project=project, instance=name).execute().get("items", [])
            ),
            "users": sorted(
                u["name"] for u in sql.users().list(project=project, instance=name).execute().get("items", [])
            ),
        }

    sm = clients.secret_manager()
    out["secrets"] = {}
    for secret in sm.list_secrets(parent=f"projects/{project}"):
        short = secret.name.rsplit("/", 1)[1]
        versions = list(sm.list_secret_versions(parent=secret.name))
        policy = sm.get_iam_policy(request={"resource": secret.name})
        out["secrets"][short] = {
            "labels": dict(secret.labels),
            "automatic": "automatic" in type(secret).to_dict(secret).get("replication", {}),
            "enabled_versions": sum(v.state == 1 for v in versions),
            "bindings": sorted((b.role, m.replace(project, "P")) for b in policy.bindings for m in b.members),
        }

    iam = clients.iam()
    accounts = iam.projects().serviceAccounts().list(name=f"projects/{project}").execute().get("accounts", [])
    out["service_accounts"] = sorted((a["email"].replace(project, "P"), a.get("displayName")) for a in accounts)

    rm = clients.projects()
    number = rm.get_project(name=f"projects/{project}").name.rsplit("/", 1)[1]
    policy = rm.get_iam_policy(request={"resource": f"projects/{project}"})
    out["project_bindings"] = sorted((b.role, m.replace(project, "P")) for b in policy.bindings for m in b.members)

    storage = clients.storage(project)
    out["buckets"] = {}
    for bucket in storage.list_buckets():
        bucket_policy = bucket.get_iam_policy(requested_policy_version=3)
        out["buckets"][bucket.name.replace(project, "P")] = {
            "location": bucket.location,
            "ubla": bucket.iam_configuration.uniform_bucket_level_access_enabled,
            "pap": bucket.iam_configuration.public_access_prevention,
            "labels": dict(bucket.labels),
            "bindings": sorted(
                (b["role"], m.replace(project, "P")) for b in bucket_policy.bindings for m in b["members"]
            ),
        }

    run = clients.run_services()
    out["run"] = {}
    for service in run.list_services(parent=parent):
        from mlflow_gcp.resources.run import Service

        owned = Service.owned(service)
        owned["image"] = owned["image"].replace(project, "P") if owned["image"] else None
        # The service's own URL (the emulator's has a random port) is one of the hosts the server must accept.
        owned["env"] = {
            k: v.replace(service.uri, "URI").replace(project, "P").replace(number, "N") for k, v in owned["env"].items()
        }
        owned["serviceAccount"] = owned["serviceAccount"].replace(project, "P")
        owned["cloudsql"] = [c.replace(project, "P") for c in owned["cloudsql"]]
        try:
            service_policy = run.get_iam_policy(request={"resource": service.name})
            owned["bindings"] = sorted((b.role, m) for b in service_policy.bindings for m in b.members)
        except exceptions.NotFound:
            owned["bindings"] = None
        owned["labels"] = dict(service.labels)
        out["run"][service.name.rsplit("/", 1)[1]] = owned
    return out
