"""The engine: runs resource steps by their declared dependencies, independent ones concurrently, and says
what happened to each as one record (the progress view, the summary, ``--json`` and the tests all read it).

A resource module has one small surface (see :class:`Step`): ``find`` (only NOT_FOUND means absent),
``diff`` (only the fields we own), ``create`` / ``update`` / ``delete``. Dry runs call ``find`` and ``diff``
and nothing else.

`up` reads before it converges: every step's ``find`` at once, in one wave (reads.py shares a read two steps make),
so a stack that is already right costs one round trip of reads and nothing after it. A step then converges on its
wave read unless something it waits for (directly or through other steps) was created, updated or waited out in this
run, or its wave read failed: then it reads again, since an answer given before its dependencies changed is stale
(a database listed before its instance was created, a policy read before its secret existed).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from . import fields, reads

if TYPE_CHECKING:
    from .context import Context
    from .fields import Owned
    from .operations import Operation

Action = Literal[
    "created", "updated", "unchanged", "deleted", "absent", "kept",
    "would create", "would update", "would delete", "failed", "skipped",
]  # fmt: skip

MUTATING_ACTIONS = ("created", "updated", "deleted")


@dataclass(frozen=True)
class Change:
    field: str
    current: Any
    desired: Any
    #: Set when the field cannot change in place (see fields.py, mode "refuse"): `up` stops with it.
    refusal: str = field(default="", compare=False)
    hint: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.field}: {self.current!r} -> {self.desired!r}"


@dataclass
class Outcome:
    key: str
    kind: str
    id: str
    action: Action
    changes: list[Change] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.key,
            "kind": self.kind,
            "id": self.id,
            "action": self.action,
            "changed_fields": [{"field": c.field, "current": c.current, "desired": c.desired} for c in self.changes],
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
        }


class Step(ABC):
    """One GCP resource (or part of one) the stack sets: a :class:`Resource` mlflow-gcp creates, or a
    :class:`Standing` one that exists without it."""

    key: ClassVar[str]
    kind: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: Holds user data (database, artifacts): `down` keeps it unless told to delete data.
    holds_data: ClassVar[bool] = False
    #: Shared with things outside the stack (enabled APIs): `down` never removes it.
    kept_on_down: ClassVar[str] = ""
    #: Goes away with this other resource (a database with its instance): when both are deleted, only that one is.
    deleted_with: ClassVar[str] = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @abstractmethod
    def id(self) -> str:
        """The resource's full name or URI (for the state file and messages)."""

    @abstractmethod
    def find(self) -> Any | None:
        """The live resource, or None if (and only if) GCP says NOT_FOUND."""

    def owned_fields(self) -> list[Owned]:
        """The fields this resource sets, declared once (fields.py): create, diff and update derive from them."""
        return []

    def diff(self, actual: Any) -> list[Change]:
        """Fields we own that differ between ``actual`` and what they should be."""
        return fields.changes(self.owned_fields(), actual)

    def settle(self, actual: Any) -> Any | None:
        """Wait until a found resource is usable (e.g. still being created by a run that died); return it, or
        None if it went away meanwhile (a deletion a killed `down` started)."""
        return actual

    def update(self, actual: Any, changes: list[Change]) -> Any:
        """Make the owned fields right; return the live resource."""
        raise NotImplementedError(f"{self.kind} cannot be updated in place")

    def delete(self, actual: Any) -> None:
        """Delete it (already known to exist)."""
        raise NotImplementedError(f"{self.kind} is never deleted")

    def facts(self, actual: Any) -> dict[str, Any]:
        """Non-secret facts recorded in the state file and shared with dependent steps."""
        return {"id": self.id()}

    def planned_facts(self) -> dict[str, Any]:
        """Facts a dry run assumes for a resource that does not exist yet."""
        return {"id": self.id()}


class Resource(Step):
    """A GCP resource mlflow-gcp creates (and, unless it holds data or is shared, deletes)."""

    @abstractmethod
    def create(self) -> Any:
        """Create it; return the live resource."""


class Standing(Step):
    """Something that exists without mlflow-gcp, whose fields it sets: a project's enabled APIs, the IAM policy of
    a project, secret, bucket or service. It is never created; when it is not there, ``absent`` says why."""

    absent: ClassVar[str] = "it comes with its project"


class Reporter:
    """Receives progress events; the CLI's terminal view implements it."""

    def started(self, resource: Step, verb: str) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...

    def failed(self, resource: Step, error: BaseException) -> None: ...


class StepFailed(Exception):
    def __init__(self, failures: dict[str, BaseException], outcomes: list[Outcome]) -> None:
        super().__init__("; ".join(f"{k}: {e}" for k, e in failures.items()))
        self.failures = failures
        self.outcomes = outcomes


def order(resources: Sequence[Step]) -> list[Step]:
    """Topological order (stable), refusing unknown or cyclic dependencies."""
    by_key = {r.key: r for r in resources}
    done: list[Step] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(r: Step) -> None:
        if r.key in seen:
            return
        if r.key in visiting:
            raise ValueError(f"dependency cycle at {r.key}")
        visiting.add(r.key)
        for dep in r.depends_on:
            if dep in by_key:
                visit(by_key[dep])
        visiting.discard(r.key)
        seen.add(r.key)
        done.append(r)

    for r in resources:
        visit(r)
    return done


def upstream(resources: Sequence[Step]) -> dict[str, set[str]]:
    """Every step each step waits for, directly or through others (among ``resources``)."""
    by_key = {r.key: r for r in resources}
    found: dict[str, set[str]] = {}
    for r in order(resources):  # dependencies first: theirs are known
        found[r.key] = set()
        for d in r.depends_on:
            if d in by_key:
                found[r.key] |= {d} | found[d]
    return found


class Engine:
    def __init__(self, ctx: Context, reporter: Reporter | None = None, max_workers: int = 6) -> None:
        self.ctx = ctx
        self.reporter = reporter or Reporter()
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        #: What each step's converge started from: the live resource its read answered (None: absent). After a dry
        #: run, nothing has changed since: `up`'s plan hands these to the run that follows it (``apply(known=)``).
        self.found: dict[str, Any] = {}
        self._wave: dict[str, Future[Any]] = {}
        #: Steps that changed something live in this run (created, updated, or waited out by ``settle``).
        self._moved: set[str] = set()
        self._upstream: dict[str, set[str]] = {}

    # --- up ---------------------------------------------------------------------------------------------

    def apply(
        self, resources: Sequence[Step], *, dry_run: bool = False, known: Mapping[str, Any] | None = None
    ) -> list[Outcome]:
        """Converge (or, ``dry_run``, plan) every step. ``known``: reads already made of some steps (a dry run's
        :attr:`found`, made a moment ago), used instead of reading them again; the others are read in the wave."""
        ordered = order(resources)
        self._upstream, self._moved, self.found = upstream(ordered), set(), {}
        known = dict(known or {})
        wave = reads.Wave()

        def read(r: Step) -> Any:
            with reads.within(wave):
                return r.find()

        unread = [r for r in ordered if r.key not in known]
        with ThreadPoolExecutor(max_workers=max(1, min(len(unread), 32)), thread_name_prefix="read") as pool:
            self._wave = {r.key: pool.submit(read, r) for r in unread}
            for key, actual in known.items():
                given: Future[Any] = Future()
                given.set_result(actual)
                self._wave[key] = given
            return self._run(ordered, lambda r: self._converge(r, dry_run), reverse=False)

    def _read(self, r: Step) -> Any:
        """The step's wave read if it still holds (see the module's docstring), else a new ``find``."""
        with self._lock:
            stale = bool(self._upstream.get(r.key, set()) & self._moved)
        read = self._wave.get(r.key)
        if read is not None and not stale:
            try:
                return read.result()
            except Exception:  # read again: the steps before it may have removed the cause (an API now enabled)
                pass
        return r.find()

    def _converge(self, r: Step, dry_run: bool) -> Outcome:
        started = time.monotonic()
        self.reporter.started(r, "checking")
        try:
            actual = self._read(r)
        except Exception as exc:
            from .retry import is_service_disabled

            if not (dry_run and is_service_disabled(exc)):
                raise
            # Its API is off, so nothing of it can be seen: it would be created once `up` enables the API.
            self.ctx.publish(r.key, r.planned_facts())
            return Outcome(r.key, r.kind, r.id(), "would create", reason="its API is not enabled",
                           seconds=time.monotonic() - started)  # fmt: skip
        with self._lock:
            self.found[r.key] = actual
        if actual is not None and not dry_run:
            settled = r.settle(actual)
            if settled is not actual:  # it waited out a change (a rollout, a creation): what reads it read again
                self._moved_on(r)
            actual = settled
        if actual is None:
            if dry_run:
                self.ctx.publish(r.key, r.planned_facts())
                return Outcome(r.key, r.kind, r.id(), "would create", seconds=time.monotonic() - started)
            if not isinstance(r, Resource):
                from .errors import MlflowGcpError

                raise MlflowGcpError(f"{r.kind} {r.id()} is not there, and mlflow-gcp does not create it: {r.absent}.")
            self.reporter.started(r, "creating")
            self._moved_on(r)
            actual = r.create()
            action: Action = "created"
            changes: list[Change] = []
        else:
            changes = r.diff(actual)
            if not changes:
                action = "unchanged"
            elif dry_run:
                action = "would update"
            else:
                refused = [c for c in changes if c.refusal]
                if refused:
                    from .errors import MlflowGcpError

                    raise MlflowGcpError(refused[0].refusal, hint=refused[0].hint)
                self.reporter.started(r, "updating")
                self._moved_on(r)
                actual = r.update(actual, changes)
                action = "updated"
        facts = r.facts(actual)
        self.ctx.publish(r.key, facts)
        if not dry_run:
            self.ctx.state.record(r.key, facts)
        return Outcome(r.key, r.kind, r.id(), action, changes, seconds=time.monotonic() - started)

    def _moved_on(self, r: Step) -> None:
        """Mark ``r`` as changing something live: the steps after it do not trust their wave reads."""
        with self._lock:
            self._moved.add(r.key)

    # --- down -------------------------------------------------------------------------------------------

    def destroy(self, resources: Sequence[Step], *, delete_data: bool, dry_run: bool = False) -> list[Outcome]:
        self._keys = {r.key for r in resources}
        return self._run(order(resources), lambda r: self._remove(r, delete_data, dry_run), reverse=True)

    def _remove(self, r: Step, delete_data: bool, dry_run: bool) -> Outcome:
        started = time.monotonic()
        if r.kept_on_down:
            return Outcome(r.key, r.kind, r.id(), "kept", reason=r.kept_on_down)
        if r.holds_data and not delete_data:
            return Outcome(r.key, r.kind, r.id(), "kept", reason="holds data; pass --delete-data to delete it")
        if r.deleted_with and delete_data and r.deleted_with in self._keys:
            if not dry_run:
                self.ctx.state.forget(r.key)
            return Outcome(r.key, r.kind, r.id(), "would delete" if dry_run else "deleted",
                           reason=f"with {r.deleted_with}")  # fmt: skip
        self.reporter.started(r, "checking")
        actual = r.find()
        if actual is not None and not dry_run:
            actual = r.settle(actual)
        if actual is None:
            if not dry_run:
                self.ctx.state.forget(r.key)
            return Outcome(r.key, r.kind, r.id(), "absent", seconds=time.monotonic() - started)
        if dry_run:
            return Outcome(r.key, r.kind, r.id(), "would delete")
        self.reporter.started(r, "deleting")
        try:
            r.delete(actual)
        except Exception as exc:
            from .retry import http_status

            if http_status(exc) != 404:  # gone already: a deletion another run started finished first
                raise
        self.ctx.state.forget(r.key)
        return Outcome(r.key, r.kind, r.id(), "deleted", seconds=time.monotonic() - started)

    # --- scheduling -------------------------------------------------------------------------------------

    def _run(self, ordered: list[Step], step: Callable[[Step], Outcome], *, reverse: bool) -> list[Outcome]:
        """Run ``step`` on each resource once all it waits for are done: its dependencies (or, in reverse,
        its dependents). A failure skips what waits on it; independent steps go on."""
        keys = {r.key for r in ordered}
        waits_for: dict[str, set[str]] = {r.key: {d for d in r.depends_on if d in keys} for r in ordered}
        if reverse:
            flipped: dict[str, set[str]] = {k: set() for k in waits_for}
            for k, deps in waits_for.items():
                for d in deps:
                    flipped[d].add(k)
            waits_for = flipped
        by_key = {r.key: r for r in ordered}
        position = {r.key: i for i, r in enumerate(ordered)}
        outcomes: dict[str, Outcome] = {}
        failures: dict[str, BaseException] = {}
        pending = set(by_key)
        running: dict[Future[Outcome], str] = {}

        def blocked(k: str) -> bool:
            return any(d in failures or (outcomes.get(d) and outcomes[d].action == "skipped") for d in waits_for[k])

        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="step") as pool:
            while pending or running:
                ready = sorted(
                    (k for k in pending if all(d in outcomes or d in failures for d in waits_for[k])),
                    key=position.__getitem__,
                )
                for k in ready:
                    pending.discard(k)
                    r = by_key[k]
                    if blocked(k):
                        outcomes[k] = Outcome(k, r.kind, r.id(), "skipped", reason="an earlier step failed")
                        self.reporter.finished(outcomes[k])
                        continue
                    running[pool.submit(step, r)] = k
                if not running:
                    if pending and not ready:
                        raise RuntimeError(f"unschedulable steps: {sorted(pending)}")
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    k = running.pop(fut)
                    try:
                        outcomes[k] = fut.result()
                        self.reporter.finished(outcomes[k])
                    except Exception as exc:
                        failures[k] = exc
                        self.reporter.failed(by_key[k], exc)
        result = [outcomes[r.key] for r in ordered if r.key in outcomes]
        if reverse:
            result.reverse()
        if failures:
            for k in failures:
                r = by_key[k]
                result.append(Outcome(k, r.kind, r.id(), "failed", reason=str(failures[k])))
            raise StepFailed(failures, result)
        return result


def summarize(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    return counts


# --- day-two operations -----------------------------------------------------------------------------------


def perform(operation: Operation, record: dict[str, Any], reporter: Callable[[str], None]) -> dict[str, Any]:
    """Run an operation's phases from the one its record names (operations.py), writing the record to the state
    before each phase starts and clearing it, with what the operation leaves behind, in one write at the end. A
    phase that fails leaves the record at that phase: the same command resumes there."""
    from .operations import STATE_KEY, now

    state = operation.ctx.state
    phases = operation.phases(record)
    names = [p.name for p in phases]
    if record.get("phase") and record["phase"] not in names:
        raise RuntimeError(f"the {operation.kind} record names an unknown phase {record['phase']!r}")
    start = names.index(record["phase"]) if record.get("phase") else 0
    if record.get("phase"):
        reporter(f"Resuming the {operation.kind} at phase {record['phase']} (started {record['started']}).")
    for number, phase in enumerate(phases[start:], start=start + 1):
        record = {**record, "phase": phase.name, "updated": now()}
        state.set(STATE_KEY, record)
        reporter(f"[{number}/{len(phases)}] {phase.says}")
        learnt = phase.run(record)
        if learnt:
            record = {**record, **learnt}
    state.update({STATE_KEY: None, **operation.finish(record)})
    return record
