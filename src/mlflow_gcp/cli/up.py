"""``mlflow-gcp up``: provision (or repair) the whole stack, idempotently."""

from __future__ import annotations

import json
from typing import Any

import click

from .app import App, config_options, describe_builder, run_command


@click.command()
@config_options
@click.option("--image", default=None, help="Use this prebuilt server image instead of building one.")
@click.option(
    "--builder",
    type=click.Choice(["auto", "docker", "cloudbuild"]),
    default=None,
    help="Build the server image with a local Docker daemon or remotely with Cloud Build [default: auto: docker "
    "when a daemon answers, else cloudbuild].",
)
@click.option("--tier", "tier", default=None, help="Cloud SQL tier [default: db-custom-1-3840].")
@click.option("--max-instances", type=int, default=None, help="Cloud Run max instances [default: 10].")
@click.option("--create-client-key", is_flag=True, default=None, help="Also create a client service account key.")
@click.option(
    "--dry-run", is_flag=True, help="Show what would be created or changed, and its monthly cost, changing nothing."
)
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask before creating or changing billable resources (for scripts)."
)
@click.option("--break-lock", is_flag=True, help="Remove a lock left by a run that died, then proceed.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
@run_command
def up(ctx: click.Context, **params: Any) -> None:
    """Create or repair the MLflow stack: APIs, registry, image, Cloud SQL, secrets, service account, bucket,
    IAM and the Cloud Run service. Running it again changes nothing that is already right."""
    from ..engine import Engine, StepFailed, summarize
    from ..operations import refuse_if_in_progress
    from ..stack import resources

    flags = {
        "server.image": params["image"],
        "server.builder": params["builder"],
        "database.tier": params["tier"],
        "server.max_instances": params["max_instances"],
        "create_client_key": params["create_client_key"],
    }
    app = App(params, flags, ctx.find_root().params.get("verbose", 0))
    dry_run = params["dry_run"]
    term = app.terminal
    # The clients every `up` reads through (the discovery-based ones are built per thread: this imports their library).
    app.clients.warm("service_usage", "secrets", "artifact_registry", "run_services", "storage", "sqladmin")
    with app.session("up", lock=not dry_run, break_lock=params["break_lock"]) as run_ctx:
        if not dry_run:
            refuse_if_in_progress(run_ctx.state)
        from ..upgrade import record_deployed, refuse_version_change

        refuse_version_change(run_ctx)
        what = "Planning" if dry_run else "Provisioning"
        term.line(f"{what} {app.names.prefix} in {app.config.project} ({app.config.region})")
        term.line(describe_builder(run_ctx))
        from ..cost import asks, confirm_spending

        # The plan's reads, when it asked nothing: the run converges from them instead of reading everything again.
        planned = confirm_spending(run_ctx, term) if not dry_run and asks(app.local, params["yes"]) else {}
        with term:
            try:
                outcomes = Engine(run_ctx, term).apply(resources(run_ctx), dry_run=dry_run, known=planned)
            except StepFailed as exc:
                if params["as_json"]:
                    click.echo(json.dumps({"ok": False, "outcomes": [o.as_dict() for o in exc.outcomes]}, indent=2))
                raise
        from ..resources.run import recorded_url

        url = recorded_url(run_ctx.state)
        if url and not dry_run:
            from .. import identity
            from ..health import require_serving

            if run_ctx.config.access.mode == "iap":
                identity.register(url, run_ctx.config.access.audiences[0])
            else:
                identity.unregister(url)
            health = require_serving(run_ctx, url, "The stack is provisioned")
            record_deployed(run_ctx)
    counts = summarize(outcomes)
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    term.line(f"{'Plan' if dry_run else 'Done'}: {summary} in {term.elapsed():.1f}s")
    estimate = None
    if dry_run:
        from ..cost import describe, marks, planned_estimate

        estimate = planned_estimate(run_ctx)
        for line in describe(estimate, marks(outcomes)):
            term.line(line)
    if url and not dry_run:
        term.line(f"MLflow is at {url}")
        env_command = "mlflow-gcp env" + (" --local" if app.local else "")
        if app.config.access.mode == "iap":
            term.line(f"Sign-in: Identity-Aware Proxy, for {', '.join(app.config.access.members)}")
            if health.authenticated is None:
                term.line(f"Not checked with a signed-in request: {health.detail}")
            term.line(f'Clients: eval "$({env_command})", then MLflow signs in with your Google credentials (ADC)')
        else:
            term.line(f"Credentials for clients: {env_command}")
    if params["as_json"]:
        report: dict[str, Any] = {"ok": True, "url": url, "outcomes": [o.as_dict() for o in outcomes]}
        if estimate is not None:
            report["estimate"] = estimate.as_dict()
        click.echo(json.dumps(report, indent=2))
