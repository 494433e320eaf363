"""``mlflow-gcp status``: every resource, live, against what it should be; and whether the server serves."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import ExitCode
from .app import App, config_options, run_command

_STATE = {"unchanged": "ok", "would create": "missing", "would update": "drifted", "skipped": "skipped"}


@click.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
@run_command
def status(ctx: click.Context, **params: Any) -> None:
    """Report each resource as ok, missing or drifted (with the fields), the service URL, the pinned secret
    versions, and whether MLflow really serves. Exit code 0 only when all is well (7 otherwise)."""
    from .. import builds
    from ..engine import Engine, StepFailed
    from ..health import serving
    from ..rotation import LABEL, last_rotated
    from ..stack import resources

    app = App(params, {}, ctx.find_root().params.get("verbose", 0))
    with app.session("status", lock=False) as run_ctx:
        try:
            outcomes = Engine(run_ctx).apply(resources(run_ctx), dry_run=True)
        except StepFailed as exc:
            outcomes = exc.outcomes
        rows = [
            {
                "resource": o.key,
                "kind": o.kind,
                "id": o.id,
                "state": _STATE.get(o.action, "error"),
                "drifted_fields": [str(c) for c in o.changes],
                # A skipped step says why (an earlier step it needs failed); a failed one shows its error.
                "error": o.reason if o.action in ("failed", "skipped") else "",
                # IAM members someone else granted in the roles a step manages: left alone, never drift.
                "unmanaged": run_ctx.fact(o.key, "unmanaged", []) if o.action in ("unchanged", "would update") else [],
            }
            for o in outcomes
        ]
        service = next((o for o in outcomes if o.key == "run"), None)
        url = run_ctx.fact("run", "url") if service and service.action != "would create" else None
        health = None
        running: dict[str, Any] = {}
        if url:
            health = serving(run_ctx, url)
            from ..server_version import running as server_running

            running = server_running(run_ctx, url)  # what the server reports: its release and both schema revisions
        from ..image_source import pinned_mlflow_version

        mlflow_info = {**running, "deployed": run_ctx.mlflow_version, "default": pinned_mlflow_version()}
        secrets = {
            key.split(":", 1)[1]: facts.get("version")
            for key, facts in run_ctx.state.resources.items()
            if key.startswith("secret:")
        }
        rotations = last_rotated(run_ctx.state.data)
        granted = run_ctx.fact("iap:access", "granted") or {}
        access = {
            "mode": run_ctx.config.access.mode,
            # Who holds access now, as read from the IAP policy (members someone else added are listed as unmanaged).
            "members": sorted({pair.partition(" ")[2] for pairs in granted.values() for pair in pairs}),
        }
        image = {
            "uri": run_ctx.fact("image", "uri"),
            # Who built the image that exists (recorded), and who would build the next one (this run's choice).
            "built_with": run_ctx.fact("image", "builder"),
            "builder": builds.resolve(run_ctx),
            "builder_reason": run_ctx.builder_reason,
        }
        bucket = next((o for o in outcomes if o.key == "bucket"), None)
        artifacts = {
            "bucket": f"gs://{run_ctx.names.bucket}",
            # As the live bucket has it: how long a deleted or overwritten artifact stays restorable (soft delete).
            "soft_delete_days": run_ctx.fact("bucket", "soft_delete_days")
            if bucket and bucket.action in ("unchanged", "would update")
            else None,
        }
        from ..operations import in_progress, kept_instances

        database = {
            "instance": run_ctx.names.instance,
            # Instances a restore or a rollback moved the service off, with the data as it was (cleanup deletes them).
            "kept": kept_instances(run_ctx.state),
            "operation": in_progress(run_ctx.state),
        }
        from ..cost import describe, existing_estimate

        # What exists, priced: what is missing costs nothing; a drifted field is priced as it is live.
        estimate = existing_estimate(run_ctx, outcomes)
    healthy = all(r["state"] == "ok" for r in rows) and health is not None and health.ok and not database["operation"]
    if params["as_json"]:
        report = {
            "ok": healthy,
            "url": url,
            "image": image,
            "access": access,
            "artifacts": artifacts,
            "resources": rows,
            "server": health.as_dict() if health else None,
            "secret_versions": secrets,
            "rotations": rotations,
            "database": database,
            "mlflow": mlflow_info,
            "estimate": estimate.as_dict(),
        }
        click.echo(json.dumps(report, indent=2))
    else:
        width = max(len(r["resource"]) for r in rows)
        for r in rows:
            extra = "; ".join(r["drifted_fields"]) or r["error"]
            click.echo(f"{r['state']:<8} {r['resource']:<{width}}  {r['id']}" + (f"  ({extra})" if extra else ""))
            for member in r["unmanaged"]:
                click.echo(f"{'':<8} {'':<{width}}  not managed by mlflow-gcp: {member}")
        click.echo(f"URL: {url or '-'}")
        built = f", built with {image['built_with']}" if image["built_with"] else ""
        click.echo(f"Image: {image['uri'] or '-'}{built}; builder: {image['builder']} ({image['builder_reason']})")
        if access["mode"] == "iap":
            click.echo(f"Access: Identity-Aware Proxy; members: {', '.join(access['members']) or 'none'}")
        else:
            click.echo("Access: MLflow basic-auth accounts (the service is public at Cloud Run's front end)")
        if artifacts["soft_delete_days"] is not None:
            days = artifacts["soft_delete_days"]
            kept = f"deleted artifacts restorable for {days} days" if days else "deleted artifacts are gone at once"
            click.echo(f"Artifacts: {artifacts['bucket']}; {kept} (Cloud Storage soft delete)")
        if health:
            verdict = "serving" if health.ok else "NOT serving"
            click.echo(
                f"Server: {verdict} (/health {health.health}, authenticated API {health.authenticated}, "
                f"unauthenticated {health.unauthenticated}){': ' + health.detail if health.detail else ''}"
            )
        if running:
            version = running.get("mlflow_version") or "unknown"
            schemas = f"tracking schema {running.get('tracking_revision') or '?'}, auth schema " + (
                running.get("auth_revision") or "?"
            )
            click.echo(f"MLflow: {version} ({schemas}){': ' + running['detail'] if running.get('detail') else ''}")
        from packaging.version import Version

        if not run_ctx.config.server.image and Version(mlflow_info["default"]) > Version(run_ctx.mlflow_version):
            click.echo(f"This mlflow-gcp is tested with MLflow {mlflow_info['default']}: `mlflow-gcp upgrade` moves "
                       f"the server from {run_ctx.mlflow_version}.")  # fmt: skip
        click.echo("Pinned secret versions: " + ", ".join(f"{k}={v}" for k, v in sorted(secrets.items())))
        for credential, info in rotations.items():
            when = info["last_rotated"] or "never"
            extra = f" (now user {info['user']})" if info.get("user") else ""
            if info.get("in_progress"):
                extra += f"; a rotation is in progress at step {info['in_progress']['step']}: run rotate-password again"
            click.echo(f"Last rotated, {LABEL[credential]}: {when}{extra}")
        for k in database["kept"]:
            click.echo(f"Kept database instance: {k['instance']} (since {k['since']}, {k['why']}; "
                       "mlflow-gcp cleanup deletes it)")  # fmt: skip
        if database["operation"]:
            op = database["operation"]
            click.echo(f"A {op['kind']} is in progress (phase {op['phase']}, since {op['started']}): {op['command']}")
        for line in describe(estimate):
            click.echo(line)
    if not healthy:
        ctx.exit(int(ExitCode.UNHEALTHY))
