"""Day-two operations (restore, upgrade, rollback): a short sequence of phases, each offered by the resources it
touches (a Cloud SQL clone, a backup run, a rollout of the service) and run by the engine (:meth:`Engine.perform`).

An operation is resumable the way a rotation is: the state file records which phase runs next (``operation``:
its kind, its phase, and what it decided at the start: the new instance's name, the backup, the versions; never a
secret), written before that phase starts, and each phase is safe to run again. So a run killed at any point is
finished by running the same command again; `up` and other operations refuse to start meanwhile.

The state also says which Cloud SQL instance serves (``database.live``, absent while it is the first one, which
`up` created) and which earlier instances a restore or rollback kept (``database.kept``): those hold the data as it
was, until ``mlflow-gcp cleanup`` (or ``down --delete-data``) deletes them.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigError, MlflowGcpError

if TYPE_CHECKING:
    from .context import Context
    from .engine import Reporter
    from .state import State

#: The state's key for the operation in progress.
STATE_KEY = "operation"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def live_instance(state: State) -> str:
    """The Cloud SQL instance that serves, if a restore or a rollback moved the service off the first one."""
    return str((state.data.get("database") or {}).get("live") or "")


def kept_instances(state: State) -> list[dict[str, Any]]:
    """Instances a restore or a rollback left behind, with when and why: ``[{"instance", "since", "why"}]``."""
    return list((state.data.get("database") or {}).get("kept") or [])


def forget_deleted_instances(state: State, deleted_ids: list[str]) -> None:
    """After instances were deleted (``projects/P/instances/I`` ids): the state no longer names them."""
    gone = {i.rsplit("/", 1)[-1] for i in deleted_ids if "/instances/" in i and "/databases/" not in i
            and "/users/" not in i}  # fmt: skip
    database = dict(state.data.get("database") or {})
    if not database:
        return
    kept = [k for k in database.get("kept") or [] if k["instance"] not in gone]
    live = database.get("live") if database.get("live") not in gone else None
    state.set("database", {"live": live, "kept": kept} if (live or kept) else None)


def in_progress(state: State) -> dict[str, Any] | None:
    return state.data.get(STATE_KEY)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def refuse_if_in_progress(state: State, *, resuming: str | None = None) -> None:
    """The one guard for commands that would conflict with an unfinished change of credentials or data: `up` (it
    would deploy what the state recorded over half a switch), a rotation, a restore, an upgrade or a rollback.
    ``resuming``: what the caller goes on with (an operation's kind, or ``rotation:db`` / ``rotation:admin``). `down`
    is never refused: removing the stack must always be possible."""
    from .rotation import LABEL

    rot = state.data.get("rotation")
    if rot is not None and resuming != f"rotation:{rot['credential']}":
        flag = " --admin" if rot["credential"] == "admin" else ""
        raise MlflowGcpError(
            f"A rotation of the {LABEL[rot['credential']]} is in progress (step {rot['phase']}).",
            hint=f"Finish it first: mlflow-gcp rotate-password{flag}",
        )
    op = in_progress(state)
    if op is not None and op["kind"] != resuming:
        raise MlflowGcpError(
            f"{_a(op['kind']).capitalize()} is in progress (phase {op['phase']}, since {op['started']}).",
            hint=f"Finish it: {op['command']}; or give it up: {op['command']} --abandon",
        )


@dataclass(frozen=True)
class Phase:
    name: str
    #: One sentence for the plan (``--dry-run``).
    says: str
    #: Does the phase's work (safe to repeat) and returns what it learnt, merged into the record.
    run: Callable[[dict[str, Any]], dict[str, Any] | None]


class Operation(ABC):
    """What the engine needs of an operation: its record to start from, its phases, what it leaves in the state."""

    kind: ClassVar[str]

    def __init__(
        self, ctx: Context, say: Callable[[str], None] | None = None, reporter: Reporter | None = None
    ) -> None:
        self.ctx = ctx
        self.say = say or (lambda _text: None)
        #: Progress of the stack's steps when a phase converges it (the terminal view).
        self.reporter = reporter

    @property
    @abstractmethod
    def command(self) -> str:
        """The command that resumes it (in messages)."""

    @abstractmethod
    def begin(self) -> dict[str, Any]:
        """The record of a new operation: every decision made now (names, times, versions), checked against what
        exists, nothing changed yet. Bad input is refused here."""

    @abstractmethod
    def phases(self, record: dict[str, Any]) -> list[Phase]: ...

    def arguments(self) -> dict[str, Any]:
        """What the command was given that its record keeps (compared when it resumes); None: not given."""
        return {}

    @abstractmethod
    def abandon(self, record: dict[str, Any]) -> None:
        """Undo what the operation made that nothing uses yet, and put the stack back as the state says it is."""

    def finish(self, record: dict[str, Any]) -> dict[str, Any]:
        """Top-level state values written together with the operation's end (one atomic write)."""
        return {}

    def plan(self, record: dict[str, Any]) -> list[str]:
        """The phases as sentences, the one a run resumes at marked."""
        names = [p.name for p in self.phases(record)]
        at = names.index(record["phase"]) if record.get("phase") in names else 0
        lines = []
        for i, phase in enumerate(self.phases(record)):
            mark = "done" if i < at else ("next" if i == at and record.get("phase") else "")
            lines.append(f"  {i + 1}. {phase.says}" + (f"  [{mark}]" if mark else ""))
        return lines


def record_for(operation: Operation) -> dict[str, Any]:
    """The operation in progress of this kind (to resume), or a new record from ``begin`` (not yet saved). Arguments
    given to resume with must be the ones it started with: a restore to another time is another restore."""
    state = operation.ctx.state
    refuse_if_in_progress(state, resuming=operation.kind)
    current = in_progress(state)
    if current is None:
        return {"kind": operation.kind, "command": operation.command, "started": now(), **operation.begin(),
                "phase": ""}  # fmt: skip
    differ = {k: v for k, v in operation.arguments().items() if v is not None and current.get(k) != v}
    if differ:
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in differ.items())
        started = ", ".join(f"--{k.replace('_', '-')} {current.get(k)}" for k in differ)
        raise ConfigError(
            f"{_a(current['kind']).capitalize()} with {started} is in progress (since {current['started']}), not with "
            f"{given}.",
            hint=f"Finish it: {current['command']} (without arguments); or give it up: {current['command']} --abandon",
        )
    return current


def abandon(operation: Operation) -> dict[str, Any]:
    """Give up the operation in progress of this kind: undo what it made that nothing uses (operation.abandon), put
    the stack back as the state says it is, forget the record."""
    current = in_progress(operation.ctx.state)
    if current is None or current["kind"] != operation.kind:
        raise MlflowGcpError(f"No {operation.kind} is in progress: nothing to abandon.")
    operation.abandon(current)
    operation.ctx.state.set(STATE_KEY, None)
    return current
