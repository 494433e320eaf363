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

from .errors import MlflowGcpError

if TYPE_CHECKING:
    from .context import Context
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


def refuse_if_in_progress(state: State, *, resuming: str | None = None) -> None:
    """Commands that would conflict with an unfinished operation refuse to start: `up` (it would deploy what the
    state recorded over half a switch), a rotation, another operation. ``resuming``: the kind the caller goes on
    with. `down` is never refused: removing the stack must always be possible."""
    op = in_progress(state)
    if op is None or op["kind"] == resuming:
        return
    raise MlflowGcpError(
        f"A {op['kind']} is in progress (phase {op['phase']}, since {op['started']}).",
        hint=f"Finish it first: {op['command']}",
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

    def __init__(self, ctx: Context, say: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.say = say or (lambda _text: None)

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
    """The operation in progress of this kind (to resume), or a new record from ``begin`` (not yet saved)."""
    state = operation.ctx.state
    from .rotation import refuse_if_in_progress as refuse_if_busy

    refuse_if_busy(state, operation=operation.kind)  # a rotation, or another operation
    current = in_progress(state)
    if current is not None:
        return current
    return {
        "kind": operation.kind,
        "command": operation.command,
        "started": now(),
        **operation.begin(),
        "phase": "",
    }
