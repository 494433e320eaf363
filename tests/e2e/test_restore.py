"""`mlflow-gcp backup`, `backups`, `restore` and `cleanup`, end to end: the real CLI, the emulator's Cloud SQL on
real PostgreSQL (base backups, write-ahead log archiving, recovery to a target time), a real `mlflow server` and the
real mlflow client.

The story of the issue, on one deployment, in file order: 100 runs are logged, a backup is taken, the time is
noted, more runs are logged, then the experiment is deleted with the client; `restore --to-time` brings every run
and metric back and not the runs logged after that time; the same again from the backup's id. Each restore fills a
new instance and keeps the previous one, which `cleanup` deletes. A restore killed after any of its mutating
requests finishes when run again (a seeded sample here; every point under ``pytest -m slow``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.e2e.conftest import Cli, kill_after, make_cli, mutations_during

RUNS = 100
#: The mutating requests of an uninterrupted restore to a time (the kill points below are each of them): the clone,
#: the standby user's password retired, the active user's password set from the current secret (the restored data
#: holds the one of its time), the service switched to the new instance.
RESTORE_CALLS = (
    "POST instances/mlflow-dev-db/clone",
    "PUT instances/{target}/users",
    "PUT instances/{target}/users",
    "PATCH locations/us-central1/services/mlflow-dev",
)


@dataclass
class Restored:
    cli: Cli
    url: str
    creds: dict[str, str]
    #: What the story logged: experiment name -> run ids.
    logged: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def client(self) -> Iterator[Any]:
        import mlflow

        with mock.patch.dict(os.environ, self.creds):
            yield mlflow.MlflowClient(self.creds["MLFLOW_TRACKING_URI"])

    def log_runs(self, experiment: str, n: int) -> list[str]:
        from mlflow.entities import Metric, Param

        ids = []
        with self.client() as client:
            exp = client.create_experiment(experiment)
            for i in range(n):
                run = client.create_run(exp)
                now = int(time.time() * 1000)
                metrics = [Metric("loss", 1.0 / (i + 1), now, step) for step in range(3)]
                client.log_batch(run.info.run_id, metrics=metrics, params=[Param("i", str(i))])
                client.set_terminated(run.info.run_id)
                ids.append(run.info.run_id)
        self.logged[experiment] = ids
        return ids

    def delete(self, experiment: str) -> None:
        with self.client() as client:
            exp = client.get_experiment_by_name(experiment)
            for run_id in self.logged[experiment]:
                client.delete_run(run_id)
            client.delete_experiment(exp.experiment_id)

    def active_runs(self, experiment: str) -> dict[str, dict[str, Any]]:
        """The experiment's active runs with their loss history and params; {} if the experiment is not active."""
        from mlflow.entities import ViewType

        with self.client() as client:
            exp = client.get_experiment_by_name(experiment)
            if exp is None or exp.lifecycle_stage != "active":
                return {}
            runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
            return {
                r.info.run_id: {
                    "params": r.data.params,
                    "loss": [m.value for m in client.get_metric_history(r.info.run_id, "loss")],
                }
                for r in runs
            }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def story(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Restored:
    cli = make_cli(emulator, tmp_path_factory.mktemp("restore"))
    up = cli("up", "--json").json()
    creds = cli("env", "--json").json()
    return Restored(cli, up["url"], creds)


def _call(entry: dict[str, Any]) -> str:
    """``METHOD path`` of a logged request, the path from below the project."""
    return f"{entry['method']} {entry['path'].split('?')[0].split('/projects/')[1].split('/', 1)[1]}"


def _instances(clients: Clients, project: str) -> set[str]:
    listed = clients.sqladmin().instances().list(project=project).execute()
    return {i["name"] for i in listed.get("items", [])}


def test_backup_is_listed_with_its_kind_time_and_size(story: Restored):
    story.log_runs("precious", RUNS)
    taken = story.cli("backup", "--label", "before the mistake", "--json").json()
    listed = story.cli("backups", "--json").json()
    mine = [b for b in listed["backups"] if b["id"] == taken["id"]]
    assert mine and mine[0]["kind"] == "on demand" and mine[0]["status"] == "SUCCESSFUL", listed
    assert mine[0]["description"] == "mlflow-gcp: before the mistake" and mine[0]["time"]
    assert mine[0]["bytes"] and mine[0]["bytes"] > 0
    table = story.cli("backups").stdout
    assert taken["id"] in table and "on demand" in table
    story.notes["backup"] = taken["id"]


def test_restore_to_a_time_brings_back_what_was_deleted_and_not_what_came_later(
    story: Restored, clients: Clients, admin: EmulatorAdmin
):
    before = story.active_runs("precious")
    assert len(before) == RUNS
    time.sleep(1.5)
    story.notes["time"] = when = _now()
    time.sleep(1.5)
    story.log_runs("later", 5)
    story.delete("precious")
    assert story.active_runs("precious") == {}

    plan = story.cli("restore", "--to-time", when, "--dry-run")
    assert "Clone" in plan.stdout and when in plan.stdout
    started = time.monotonic()
    replies: list[Any] = []
    mutating = mutations_during(
        admin, lambda: replies.append(story.cli("restore", "--to-time", when, "--yes", "--json"))
    )
    story.notes["pitr_seconds"] = time.monotonic() - started
    result = replies[0].json()
    target = replies[0].json()["target"]
    assert [_call(e) for e in mutating] == [c.format(target=target) for c in RESTORE_CALLS]
    assert result["ok"] and result["source"] == "mlflow-dev-db" and result["target"].startswith("mlflow-dev-db-r")
    story.notes["first_target"] = result["target"]

    assert story.active_runs("precious") == before  # every run, every value of every metric, every param
    assert story.active_runs("later") == {}
    instances = _instances(clients, story.cli.project)
    assert {result["source"], result["target"]} <= instances
    status = story.cli("status", "--json").json()
    assert status["ok"], status
    assert status["database"]["instance"] == result["target"]
    assert [k["instance"] for k in status["database"]["kept"]] == [result["source"]]
    # The same time again: it is before the switch, so only the kept instance's log holds it: the plan clones that.
    again = story.cli("restore", "--to-time", when, "--dry-run").stdout
    assert f"Clone Cloud SQL instance {result['source']} as it was at" in again, again


def test_restore_from_a_backup_id(story: Restored, admin: EmulatorAdmin):
    story.log_runs("after-first-restore", 3)
    story.delete("precious")
    # The backup holds the login roles as they were: after a rotation the server logs in as the other role, whose
    # password in the backup nobody knows. The restore gives it the current one.
    story.cli("rotate-password")
    started = time.monotonic()
    replies: list[Any] = []
    restore = ("restore", "--backup", story.notes["backup"], "--yes", "--json")
    mutating = mutations_during(admin, lambda: replies.append(story.cli(*restore)))
    story.notes["backup_restore_seconds"] = time.monotonic() - started
    result = replies[0].json()
    target = result["target"]
    calls = [_call(e) for e in mutating]
    later = [c.format(target=target) for c in RESTORE_CALLS[1:]]
    assert calls == ["POST instances", f"POST instances/{target}/restoreBackup", *later], calls
    assert len(calls) == BACKUP_RESTORE_MUTATIONS
    assert result["backup"] == story.notes["backup"] and result["backup_instance"] == "mlflow-dev-db"
    assert len(story.active_runs("precious")) == RUNS
    assert story.active_runs("after-first-restore") == {}
    assert story.active_runs("later") == {}
    # The backup was of the first instance; the instance serving before this restore is kept too.
    kept = [k["instance"] for k in story.cli("status", "--json").json()["database"]["kept"]]
    assert kept == ["mlflow-dev-db", story.notes["first_target"]]
    # `up` changes nothing: the stack stands on the restored instance.
    again = story.cli("up", "--json").json()
    assert {o["action"] for o in again["outcomes"]} == {"unchanged"}, again


def test_refusals_change_nothing_and_have_their_exit_codes(story: Restored, admin: EmulatorAdmin):
    start = len(admin.requests())
    cases = [
        (("restore", "--to-time", "yesterday", "--yes"), 3, "is not a time"),
        (("restore", "--to-time", "2026-01-01T00:00:00", "--yes"), 3, "no time zone"),
        (("restore", "--to-time", "2999-01-01T00:00:00Z", "--yes"), 3, "in the future"),
        (("restore", "--to-time", "2020-01-01T00:00:00Z", "--yes"), 3, "outside what"),
        (("restore", "--yes"), 3, "--backup ID or --to-time"),
        (("restore", "--backup", "4242", "--yes"), 10, "No backup 4242"),
        (("restore", "--to-time", _now()), 9, "Pass --yes"),
    ]
    for args, code, says in cases:
        result = story.cli(*args, check=False)
        assert result.code == code and says in result.stderr, (args, result.code, result.stderr)
        assert "Traceback" not in result.stderr
    assert not [e for e in admin.requests(start) if e["mutating"]]


def test_an_abandoned_restore_leaves_the_stack_as_it_was(story: Restored, clients: Clients, admin: EmulatorAdmin):
    before = _instances(clients, story.cli.project)
    kept = story.cli("status", "--json").json()["database"]["kept"]
    kill_after(story.cli, admin, 1, "restore", "--to-time", _now(), "--yes")  # killed once the clone was asked for
    other = story.cli("restore", "--backup", story.notes["backup"], "--yes", "--break-lock", check=False)
    assert other.code == 3 and "restore --abandon" in other.stderr, other.stderr  # not silently the one in progress
    story.cli("restore", "--abandon")
    assert _instances(clients, story.cli.project) == before  # the clone it made is deleted
    status = story.cli("status", "--json").json()
    assert status["ok"] and status["database"]["operation"] is None and status["database"]["kept"] == kept
    assert len(story.active_runs("precious")) == RUNS


def test_cleanup_deletes_the_kept_instances(story: Restored, clients: Clients):
    print(f"restore to a time: {story.notes['pitr_seconds']:.1f} s; from a backup: "
          f"{story.notes['backup_restore_seconds']:.1f} s")  # fmt: skip
    kept = [k["instance"] for k in story.cli("status", "--json").json()["database"]["kept"]]
    assert len(kept) == 2
    story.cli("cleanup", "--yes")
    assert not set(kept) & _instances(clients, story.cli.project)
    status = story.cli("status", "--json").json()
    assert status["database"]["kept"] == [] and status["ok"]
    assert len(story.active_runs("precious")) == RUNS


# --- kill points -------------------------------------------------------------------------------------------------

#: Mutating requests of a restore from a backup: the new instance, the backup restored into it, then as a restore to
#: a time (the two users' passwords, the service).
BACKUP_RESTORE_MUTATIONS = len(RESTORE_CALLS) + 1
POINTS = [("time", k) for k in range(1, len(RESTORE_CALLS) + 1)] + [
    ("backup", k) for k in range(1, BACKUP_RESTORE_MUTATIONS + 1)
]
#: The default run kills each kind after its first call (the rerun meets an instance still being made) and one
#: seeded other point; `pytest -m slow` every point.
_rng = random.Random(20261130)
SAMPLED = sorted({("time", 1), ("backup", 1), _rng.choice([p for p in POINTS if p[1] > 1])})


def _killed_restore_converges(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory, kind: str, k: int) -> None:
    cli = make_cli(emulator, tmp_path_factory.mktemp(f"restore-kill-{kind}-{k}"))
    admin = EmulatorAdmin(emulator.base_url)
    cli("up")
    creds = cli("env", "--json").json()
    story = Restored(cli, creds["MLFLOW_TRACKING_URI"], creds)
    story.log_runs("kept", 3)
    if kind == "backup":
        restore = ("restore", "--backup", cli("backup", "--json").json()["id"], "--yes")
    else:
        time.sleep(1.5)
        restore = ("restore", "--to-time", _now(), "--yes")
        time.sleep(1.5)
    story.log_runs("gone", 1)
    kill_after(cli, admin, k, *restore)
    # `up` refuses meanwhile (once past the killed run's lock); running the restore again finishes it.
    refused = cli("up", "--break-lock", check=False)
    assert refused.code != 0 and "restore is in progress" in refused.stderr, refused.stderr
    done = cli(*restore, "--json").json()
    assert len(story.active_runs("kept")) == 3 and story.active_runs("gone") == {}
    status = cli("status", "--json").json()
    assert status["ok"] and status["database"]["operation"] is None, status
    assert [k["instance"] for k in status["database"]["kept"]] == ["mlflow-dev-db"]
    # One new instance, whatever the kill interrupted (a clone or an insert asked for twice would be a second).
    assert _instances(Clients(emulator.base_url), cli.project) == {"mlflow-dev-db", done["target"]}
    cli("down", "--delete-data", "--yes")


@pytest.mark.parametrize(("kind", "k"), SAMPLED)
def test_a_killed_restore_finishes_when_run_again(emulator: Emulator, tmp_path_factory, kind: str, k: int):
    _killed_restore_converges(emulator, tmp_path_factory, kind, k)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "k"), [p for p in POINTS if p not in SAMPLED])
def test_a_restore_killed_at_every_mutation_finishes_when_run_again(emulator, tmp_path_factory, kind: str, k: int):
    _killed_restore_converges(emulator, tmp_path_factory, kind, k)


def test_down_during_a_restore_deletes_the_instance_it_was_making(emulator: Emulator, tmp_path_factory, clients):
    cli = make_cli(emulator, tmp_path_factory.mktemp("restore-down"))
    cli("up")
    kill_after(cli, EmulatorAdmin(emulator.base_url), 1, "restore", "--to-time", _now(), "--yes")
    assert len(_instances(clients, cli.project)) == 2
    cli("down", "--delete-data", "--yes", "--break-lock")
    assert _instances(clients, cli.project) == set()
    assert "operation" not in json.loads(next((cli.state_dir).glob("*.json")).read_text())


def test_down_delete_data_deletes_the_live_and_kept_instances(story: Restored, clients: Clients):
    story.cli("down", "--delete-data", "--yes")
    assert not {i for i in _instances(clients, story.cli.project) if i.startswith("mlflow-dev-db")}
