"""The cost of what `up` plans or of what exists, and the one question `up` asks before it spends.

The engine's outcomes say what a plan creates or changes (or what `status` found); this module prices them with
:mod:`.pricing`, shows the estimate line by line, and decides whether to ask: on Google Cloud, when the plan creates a
billable resource or changes a field its price depends on, on a terminal, unless ``--yes``. A change nothing is billed
for (an IAM binding, a label, an environment variable) or a plan that changes nothing asks nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import pricing
from .errors import AbortedError
from .resources.secrets import ENABLED_VERSION, VALUE

if TYPE_CHECKING:
    from .config import Config
    from .context import Context
    from .engine import Outcome
    from .output import Terminal

#: Set to 1, `up --local` asks before "spending" as it does on Google Cloud: the tests' way to walk that path against
#: the emulator (nothing there is billed, so by default it never asks), and a way to see what `up` would ask.
CONFIRM_LOCAL_ENV = "MLFLOW_GCP_CONFIRM_LOCAL"

_BACKUP = "settings.backupConfiguration"  # resources.sql.BACKUP

#: The steps whose resources bill, with the owned fields their price depends on: creating one is billable, and so is
#: changing one of these fields; any other change is not. ``secrets`` stands for every ``secret:*`` step (a changed
#: version field adds a version); the image is a build (build-minutes) and registry storage.
_SQL_PRICED = frozenset(
    {
        "settings.tier", "settings.edition", "settings.availabilityType", "settings.dataDiskSizeGb",
        "settings.dataDiskType", f"{_BACKUP}.enabled", f"{_BACKUP}.pointInTimeRecoveryEnabled",
        f"{_BACKUP}.transactionLogRetentionDays",
    }
)  # fmt: skip
PRICED_FIELDS: dict[str, frozenset[str]] = {
    "sql:instance": _SQL_PRICED,
    "run": frozenset(
        {"template.scaling.min_instance_count", "container.resources.limits", "container.resources.cpu_idle"}
    ),
    "registry": frozenset(),
    "image": frozenset(),
    "bucket": frozenset(),
    "build-bucket": frozenset(),
    "secrets": frozenset({ENABLED_VERSION, VALUE}),
}
#: The priced parts (pricing.PARTS) each billable step bills through.
BILLS: dict[str, tuple[str, ...]] = {
    "sql:instance": ("sql:instance",),
    "run": ("run",),
    "registry": ("registry",),
    "image": ("registry", "builds"),
    "bucket": ("bucket",),
    "build-bucket": ("builds",),
    "secrets": ("secrets",),
}
_EXISTS = ("unchanged", "would update")


def _step(key: str) -> str:
    return "secrets" if key.startswith("secret:") else key


def billable(outcome: Outcome) -> bool:
    """Whether a planned outcome creates a billable resource or changes a field its price depends on."""
    fields = PRICED_FIELDS.get(_step(outcome.key))
    if fields is None:
        return False
    if outcome.action == "would create":
        return True
    return outcome.action == "would update" and any(c.field in fields for c in outcome.changes)


def billable_changes(outcomes: Iterable[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if billable(o)]


def asks(local: bool, yes: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `up` plans and prices before it changes anything, to ask: on Google Cloud unless ``--yes``; on the
    local emulator, where nothing is billed, only with ``MLFLOW_GCP_CONFIRM_LOCAL=1``. When it does not ask it does
    not plan either, so a `up` that asks nothing costs no extra API call."""
    environ = os.environ if environ is None else environ
    return not yes and (not local or environ.get(CONFIRM_LOCAL_ENV) == "1")


def _number(value: Any, default: float) -> float:
    """A live quantity as Cloud Run or Cloud SQL returns it ("20", 1, "1000m"), or ``default`` when there is none."""
    if value is None or value == "":
        return default
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def footprint(config: Config, builder: str, outcomes: Iterable[Outcome] | None = None) -> pricing.Footprint:
    """What the price depends on. Without ``outcomes``: the stack as `up` leaves it (the configuration). With a dry
    run's outcomes (what `status` found): only what exists, each drifted field priced as it is live."""
    from .resources.secrets import ALL

    db, server = config.database, config.server
    # Each secret the stack keeps has one active version: the one Cloud Run pins (rotation destroys the others).
    parts, versions, live = pricing.PARTS, len(ALL), {}
    if outcomes is not None:
        found = [o for o in outcomes if o.action in _EXISTS]
        parts = frozenset(p for o in found for p in BILLS.get(_step(o.key), ()))
        versions = sum(1 for o in found if o.key.startswith("secret:"))
        live = {c.field: c.current for o in found for c in o.changes}
    limits = live.get("container.resources.limits") or {}
    return pricing.Footprint(
        region=config.region,
        tier=live.get("settings.tier") or db.tier,
        disk_gb=int(_number(live.get("settings.dataDiskSizeGb"), db.disk_size_gb)),
        disk_type=live.get("settings.dataDiskType") or db.disk_type,
        backups=bool(live.get(f"{_BACKUP}.enabled", db.backups)),
        min_instances=int(_number(live.get("template.scaling.min_instance_count"), server.min_instances)),
        cpu=_number(limits.get("cpu"), float(server.cpu)),
        memory_gib=pricing.memory_gib(limits.get("memory") or server.memory),
        secret_versions=versions,
        builder=builder,
        bucket_location=config.bucket_location,
        parts=parts,
    )


def planned_estimate(ctx: Context) -> pricing.Estimate:
    """The estimate for the stack as `up` leaves it, built the way this run builds its image."""
    from . import builds

    return pricing.estimate(footprint(ctx.config, builds.resolve(ctx)))


def existing_estimate(ctx: Context, outcomes: Iterable[Outcome]) -> pricing.Estimate:
    """The estimate for what exists, from a dry run's outcomes (`status`)."""
    from . import builds

    return pricing.estimate(footprint(ctx.config, builds.resolve(ctx), outcomes))


def marks(outcomes: Iterable[Outcome]) -> dict[str, str]:
    """Per priced part, how a plan changes it: ``+`` created, ``~`` changed (billable outcomes only)."""
    out: dict[str, str] = {}
    for o in billable_changes(outcomes):
        for part in BILLS.get(_step(o.key), ()):
            out[part] = "+" if o.action == "would create" or out.get(part) == "+" else "~"
    return out


def usd(amount: float) -> str:
    return f"${amount:,.2f}"


def describe(estimate: pricing.Estimate, changes: Mapping[str, str] | None = None) -> list[str]:
    """The estimate as lines: a heading, one line per item (marked ``+``/``~`` where the plan creates or changes its
    part), the total."""
    changes = changes or {}
    width = max([len("total"), *(len(i.resource) for i in estimate.items)])
    lines = [
        f"Estimated cost a month in {estimate.region} (Google's list prices of {pricing.PRICES_AS_OF}, "
        f"{pricing.CURRENCY}; assumptions and free tiers as each line says):"
    ]
    for item in estimate.items:
        mark = changes.get(item.resource, " ")
        lines.append(f"  {mark} {item.resource:<{width}} {usd(item.monthly_usd):>10}  {item.what}")
    lines.append(f"    {'total':<{width}} {usd(estimate.total):>10}  a month")
    return lines


def confirm_spending(ctx: Context, term: Terminal, *, interactive: bool | None = None) -> dict[str, Any]:
    """`up`'s question. Plan (the engine's dry run, on a fork of the run's context), price it, and ask before
    anything billable changes. Returns when nothing billable changes or the answer is yes; raises AbortedError (exit
    9) when the answer is no, or when there is no terminal to ask on (``interactive``: stdin is a terminal).

    Returns the plan's reads (engine.Engine.found) when it asked nothing: made a moment ago, they are what the run
    converges from, so a `up` that plans first reads each resource once, as one without a plan does. After a question
    it returns none: a person may take minutes to answer, and the run reads again what it is about to change."""
    import click

    from .engine import Engine
    from .output import Terminal
    from .stack import resources

    plan_ctx = ctx.fork()
    term.line("Planning first: nothing billable changes without a yes")
    with Terminal(term.verbosity) as view:
        engine = Engine(plan_ctx, view)
        outcomes = engine.apply(resources(plan_ctx), dry_run=True)
    estimate = planned_estimate(ctx)
    changes = billable_changes(outcomes)
    if not changes:
        term.line(f"Nothing billable changes (the stack costs about {usd(estimate.total)} a month: see `status`).")
        return engine.found
    for line in describe(estimate, marks(changes)):
        term.line(line)
    which = ", ".join(o.key for o in changes)
    if not (sys.stdin.isatty() if interactive is None else interactive):
        raise AbortedError(
            f"`up` would create or change billable resources ({which}) and there is no terminal to ask on; "
            "nothing was changed.",
            hint="Pass --yes to go ahead without asking (`up --dry-run` shows the plan and its cost).",
        )
    if not click.confirm(f"Create or change these billable resources in {ctx.config.project}?", err=True):
        raise AbortedError("Not confirmed; nothing was changed.", hint="Pass --yes to go ahead without asking.")
    return {}
