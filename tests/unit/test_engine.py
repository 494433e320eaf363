"""The engine's scheduling and bookkeeping, with in-memory resources (pure logic; the real resources are tested
end to end against the emulator)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mlflow_gcp.engine import Change, Engine, Resource, StepFailed, order
from mlflow_gcp.state import LocalBackend, State


class World:
    def __init__(self) -> None:
        self.things: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        #: Steps made with ``meet=True`` wait here for each other: they pass only if the engine runs them at once.
        self.barrier = threading.Barrier(2, timeout=10)
        #: Each step's reads (``find``), in order; steps made with ``wave`` wait for that many finds to meet.
        self.finds: list[str] = []
        self.wave: threading.Barrier | None = None


class FakeContext:
    def __init__(self, tmp: Path) -> None:
        self.state = State(LocalBackend(tmp, "t"), {"project": "p"})
        self.facts: dict[str, dict[str, Any]] = {}

    def publish(self, key: str, facts: dict[str, Any]) -> None:
        self.facts[key] = facts


def make(
    key: str, deps: tuple[str, ...] = (), *, fail: bool = False, data: bool = False, size: int = 1, meet: bool = False
):
    class Thing(Resource):
        kind = "thing"
        depends_on = deps
        holds_data = data

        def id(self) -> str:
            return key

        def find(self) -> Any:
            with WORLD.lock:
                WORLD.finds.append(key)
            if WORLD.wave is not None:
                WORLD.wave.wait()  # BrokenBarrierError after 10 s unless every step reads at once
            return WORLD.things.get(key)

        def diff(self, actual: Any) -> list[Change]:
            return [] if actual["size"] == size else [Change("size", actual["size"], size)]

        def create(self) -> Any:
            with WORLD.lock:
                WORLD.active += 1
                WORLD.max_active = max(WORLD.max_active, WORLD.active)
                WORLD.calls.append(f"create {key}")
            if meet:
                WORLD.barrier.wait()  # BrokenBarrierError after 10 s if the other step is not running meanwhile
            with WORLD.lock:
                WORLD.active -= 1
            if fail:
                raise RuntimeError(f"{key} broke")
            WORLD.things[key] = {"size": size}
            return WORLD.things[key]

        def update(self, actual: Any, changes: list[Change]) -> Any:
            WORLD.calls.append(f"update {key}")
            actual["size"] = size
            return actual

        def delete(self, actual: Any) -> None:
            WORLD.calls.append(f"delete {key}")
            del WORLD.things[key]

    Thing.key = key
    return Thing


WORLD = World()


@pytest.fixture(autouse=True)
def fresh_world():
    global WORLD
    WORLD = World()


def run(tmp_path, classes, **kw):
    ctx = FakeContext(tmp_path)
    return ctx, Engine(ctx).apply([c(ctx) for c in classes], **kw)  # type: ignore[arg-type]


def test_dependencies_first_and_independent_steps_concurrently(tmp_path):
    classes = [make("a", meet=True), make("b", meet=True), make("c", ("a", "b")), make("d", ("c",))]
    _, outcomes = run(tmp_path, classes)
    assert [o.action for o in outcomes] == ["created"] * 4
    calls = WORLD.calls
    assert calls.index("create c") > max(calls.index("create a"), calls.index("create b"))
    assert calls.index("create d") > calls.index("create c")
    assert WORLD.max_active == 2  # a and b together


def test_second_run_changes_nothing_and_repairs_drift(tmp_path):
    classes = [make("a"), make("b", ("a",))]
    run(tmp_path, classes)
    WORLD.calls.clear()
    _, outcomes = run(tmp_path, classes)
    assert [o.action for o in outcomes] == ["unchanged", "unchanged"] and WORLD.calls == []
    WORLD.things["b"]["size"] = 5
    _, outcomes = run(tmp_path, classes)
    assert [(o.key, o.action) for o in outcomes] == [("a", "unchanged"), ("b", "updated")]
    assert outcomes[1].changes == [Change("size", 5, 1)]


def test_dry_run_makes_no_changes(tmp_path):
    classes = [make("a"), make("b", ("a",))]
    ctx, outcomes = run(tmp_path, classes, dry_run=True)
    assert [o.action for o in outcomes] == ["would create", "would create"]
    assert WORLD.calls == [] and ctx.state.resources == {}


def test_failure_skips_dependents_but_not_independent_steps(tmp_path):
    classes = [make("a", fail=True), make("b", ("a",)), make("c")]
    with pytest.raises(StepFailed) as err:
        run(tmp_path, classes)
    actions = {o.key: o.action for o in err.value.outcomes}
    assert actions == {"a": "failed", "b": "skipped", "c": "created"}
    assert "a broke" in str(err.value)


def test_state_records_each_step(tmp_path):
    ctx, _ = run(tmp_path, [make("a"), make("b", ("a",))])
    reread = LocalBackend(tmp_path, "t").read()
    assert set(reread["resources"]) == {"a", "b"}
    assert ctx.facts["a"]["id"] == "a"


def test_destroy_runs_in_reverse_and_keeps_data(tmp_path):
    classes = [make("db", data=True), make("svc", ("db",)), make("front", ("svc",))]
    ctx, _ = run(tmp_path, classes)
    WORLD.calls.clear()
    outcomes = Engine(ctx).destroy([c(ctx) for c in classes], delete_data=False)  # type: ignore[arg-type]
    assert WORLD.calls == ["delete front", "delete svc"]
    assert {o.key: o.action for o in outcomes} == {"front": "deleted", "svc": "deleted", "db": "kept"}
    outcomes = Engine(ctx).destroy([c(ctx) for c in classes], delete_data=True)  # type: ignore[arg-type]
    assert {o.key: o.action for o in outcomes} == {"front": "absent", "svc": "absent", "db": "deleted"}


def test_order_refuses_cycles():
    ctx = object()
    a, b = make("a", ("b",)), make("b", ("a",))
    with pytest.raises(ValueError, match="cycle"):
        order([a(ctx), b(ctx)])  # type: ignore[arg-type]


def test_a_standing_resource_is_never_created(tmp_path):
    from mlflow_gcp.engine import Standing
    from mlflow_gcp.errors import MlflowGcpError

    class Policy(Standing):
        key = "policy"
        kind = "IAM policy"
        absent = "it is the policy of the bucket, which is gone"

        def id(self) -> str:
            return "gs://b"

        def find(self) -> Any:
            return None

    _, outcomes = run(tmp_path, [Policy], dry_run=True)
    assert [o.action for o in outcomes] == ["would create"]
    with pytest.raises(StepFailed) as err:
        run(tmp_path, [Policy])
    failure = err.value.failures["policy"]
    assert isinstance(failure, MlflowGcpError) and "which is gone" in str(failure)


def test_a_refused_change_stops_before_any_update(tmp_path):
    from mlflow_gcp.errors import MlflowGcpError
    from mlflow_gcp.fields import Owned

    class Bucket(make("bucket")):  # type: ignore[misc]
        diff = Resource.diff  # derived from the owned fields, as in every real resource

        def owned_fields(self) -> list[Owned]:
            return [Owned("location", "EU", lambda b: b["location"], mode="refuse", refusal="a bucket cannot move",
                          hint="Set artifacts.location to match.")]  # fmt: skip

    WORLD.things["bucket"] = {"size": 1, "location": "US"}
    with pytest.raises(StepFailed) as err:
        run(tmp_path, [Bucket])
    failure = err.value.failures["bucket"]
    assert isinstance(failure, MlflowGcpError) and str(failure).startswith("a bucket cannot move")
    assert failure.hint == "Set artifacts.location to match." and WORLD.calls == []


def test_a_converged_stack_is_read_in_one_wave_and_nothing_more(tmp_path):
    classes = [make("a"), make("b", ("a",)), make("c", ("b",)), make("d")]
    run(tmp_path, classes)
    WORLD.finds.clear()
    WORLD.calls.clear()
    WORLD.wave = threading.Barrier(4, timeout=10)  # the chain a -> b -> c is read at once too
    _, outcomes = run(tmp_path, classes)
    assert [o.action for o in outcomes] == ["unchanged"] * 4
    assert sorted(WORLD.finds) == ["a", "b", "c", "d"] and WORLD.calls == []


def test_only_steps_downstream_of_a_change_read_again(tmp_path):
    classes = [make("a", size=2), make("b", ("a",)), make("c", ("b",)), make("d")]
    WORLD.things.update({k: {"size": 1} for k in "bcd"})
    _, outcomes = run(tmp_path, classes)
    # a changed: b (after it) and c (after b) read again, since their wave reads came before the change; d did not.
    assert {o.key: o.action for o in outcomes} == {"a": "created", "b": "unchanged", "c": "unchanged", "d": "unchanged"}
    assert sorted(WORLD.finds) == ["a", "b", "b", "c", "c", "d"]


def test_a_plans_reads_serve_the_run_after_it(tmp_path):
    classes = [make("a"), make("b", ("a",), size=2)]
    run(tmp_path, classes)
    WORLD.things["b"]["size"] = 5
    ctx = FakeContext(tmp_path)
    plan = Engine(ctx)  # type: ignore[arg-type]
    assert [o.action for o in plan.apply([c(ctx) for c in classes], dry_run=True)] == ["unchanged", "would update"]
    WORLD.finds.clear()
    outcomes = Engine(ctx).apply([c(ctx) for c in classes], known=plan.found)  # type: ignore[arg-type]
    assert [o.action for o in outcomes] == ["unchanged", "updated"] and WORLD.finds == []
    assert WORLD.calls[-1] == "update b"
