"""Cloud SQL backups and point-in-time recovery through googleapiclient, on real PostgreSQL: base backups, archived
WAL replayed to a time, data checked through psycopg over each instance's unix socket."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from googleapiclient.errors import HttpError

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.conftest import enable
from tests.emulator.test_sqladmin import done, error_of

ROOT_PASSWORD = "root-" + uuid.uuid4().hex
APP_PASSWORD = "app-" + uuid.uuid4().hex


def instance_body(name: str, root_password: str = ROOT_PASSWORD, **backup: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"tier": "db-f1-micro", "edition": "ENTERPRISE", "userLabels": {"app": "mlflow"}}
    if backup:
        settings["backupConfiguration"] = backup
    return {"name": name, "databaseVersion": "POSTGRES_15", "rootPassword": root_password, "settings": settings}


def connect(
    emulator: Emulator,
    project: str,
    instance: str,
    user: str = "app",
    password: str = APP_PASSWORD,
    dbname: str = "mlflow",
) -> psycopg.Connection:
    socket_dir = emulator.world.api("sqladmin").socket_dir(f"{project}:us-central1:{instance}")
    return psycopg.connect(
        host=str(socket_dir), port=5432, user=user, password=password, dbname=dbname, autocommit=True
    )


def commit(emulator: Emulator, project: str, name: str) -> datetime:
    """Insert the row ``name`` into the source and return the server's clock once it is committed."""
    with connect(emulator, project, "source") as conn:
        conn.execute("INSERT INTO runs (name) VALUES (%s)", (name,))
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def rows(emulator: Emulator, project: str, instance: str) -> set[str]:
    with connect(emulator, project, instance) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM runs")}


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def postmaster_pid(emulator: Emulator, project: str, name: str) -> int:
    pidfile = emulator.world.data_dir / "sql" / project / name / "pgdata" / "postmaster.pid"
    return int(pidfile.read_text().splitlines()[0])


def runs_of(sql: Any, project: str, instance: str, **kwargs: Any) -> list[dict[str, Any]]:
    return sql.backupRuns().list(project=project, instance=instance, **kwargs).execute().get("items", [])


# --- one source instance with backups and PITR, shared by the module ----------------------------------------


@pytest.fixture(scope="module")
def source(emulator: Emulator, sql: Any, sql_project: str) -> dict[str, Any]:
    """POSTGRES_15 with automated backups and point-in-time recovery, a database and a user owning a table."""
    body = instance_body("source", enabled=True, pointInTimeRecoveryEnabled=True, transactionLogRetentionDays=3)
    done(sql, sql_project, sql.instances().insert(project=sql_project, body=body).execute())
    database = sql.databases().insert(project=sql_project, instance="source", body={"name": "mlflow"})
    done(sql, sql_project, database.execute())
    user = {"name": "app", "password": APP_PASSWORD}
    done(sql, sql_project, sql.users().insert(project=sql_project, instance="source", body=user).execute())
    with connect(emulator, sql_project, "source") as conn:
        conn.execute("CREATE TABLE runs (name text PRIMARY KEY)")
    return sql.instances().get(project=sql_project, instance="source").execute()


@pytest.fixture(scope="module")
def target(sql: Any, sql_project: str, source: dict[str, Any]) -> str:
    """A second instance of the same version, without backups, and another root password."""
    body = instance_body("target", root_password="other-root-password")
    done(sql, sql_project, sql.instances().insert(project=sql_project, body=body).execute())
    return "target"


@pytest.fixture(scope="module")
def on_demand(emulator: Emulator, sql: Any, sql_project: str, source: dict[str, Any]) -> dict[str, Any]:
    """An on-demand backup of the source taken between the rows "before" and "after"."""
    commit(emulator, sql_project, "before")
    body = {"description": "before the upgrade", "type": "AUTOMATED"}  # the type is ignored on insert
    op = sql.backupRuns().insert(project=sql_project, instance="source", body=body).execute()
    finished = done(sql, sql_project, op)
    commit(emulator, sql_project, "after")
    return {"op": op, "done": finished, "id": op["backupContext"]["backupId"]}


# --- backup runs ------------------------------------------------------------------------------------------------


def test_automated_backups_on_means_a_base_backup_and_an_archiving_server(emulator, sql, sql_project, source):
    runs = runs_of(sql, sql_project, "source")
    assert [(r["type"], r["status"]) for r in runs] == [("AUTOMATED", "SUCCESSFUL")]
    run = runs[0]
    assert run["kind"] == "sql#backupRun" and run["id"].isdigit() and run["instance"] == "source"
    assert run["enqueuedTime"] <= run["startTime"] <= run["endTime"]
    assert run["windowStartTime"].endswith("T12:00:00.000Z")  # the backup window opens at startTime "12:00"
    assert run["location"] == "us" and run["backupKind"] == "SNAPSHOT" and run["databaseVersion"] == "POSTGRES_15"
    assert int(run["maxChargeableBytes"]) > 1_000_000 and "description" not in run
    assert run["selfLink"].endswith(f"/projects/{sql_project}/instances/source/backupRuns/{run['id']}")
    assert sql.backupRuns().get(project=sql_project, instance="source", id=run["id"]).execute() == run
    with connect(emulator, sql_project, "source") as conn:
        assert conn.execute("SHOW archive_mode").fetchone() == ("on",)
    with pytest.raises(HttpError) as err:
        sql.backupRuns().get(project=sql_project, instance="source", id="12345").execute()
    assert err.value.resp.status == 404 and error_of(err.value)["errors"][0]["reason"] == "backupRunDoesNotExist"


def test_on_demand_backup_is_an_operation_and_listed_newest_first(sql, sql_project, on_demand):
    op = on_demand["op"]
    assert op["kind"] == "sql#operation" and op["operationType"] == "BACKUP_VOLUME" and op["status"] == "PENDING"
    assert op["targetId"] == "source" and op["backupContext"]["kind"] == "sql#backupContext"
    assert on_demand["done"]["backupContext"]["backupId"] == on_demand["id"]
    run = sql.backupRuns().get(project=sql_project, instance="source", id=on_demand["id"]).execute()
    assert run["type"] == "ON_DEMAND" and run["status"] == "SUCCESSFUL" and run["description"] == "before the upgrade"
    listed = runs_of(sql, sql_project, "source")
    assert [r["type"] for r in listed[:2]] == ["ON_DEMAND", "AUTOMATED"]
    first = sql.backupRuns().list(project=sql_project, instance="source", maxResults=1).execute()
    assert [r["id"] for r in first["items"]] == [on_demand["id"]]
    second = runs_of(sql, sql_project, "source", maxResults=1, pageToken=first["nextPageToken"])
    assert [r["id"] for r in second] == [listed[1]["id"]]
    everywhere = runs_of(sql, sql_project, "-")
    assert on_demand["id"] in {r["id"] for r in everywhere}


def test_restore_backup_into_another_instance_brings_the_data_and_users(emulator, sql, sql_project, on_demand, target):
    context = {"backupRunId": on_demand["id"], "instanceId": "source", "project": sql_project}
    op = sql.instances().restoreBackup(project=sql_project, instance=target, body={"restoreBackupContext": context})
    op = op.execute()
    assert op["operationType"] == "RESTORE_VOLUME" and op["targetId"] == target
    done(sql, sql_project, op)
    assert rows(emulator, sql_project, target) == {"before"}  # "after" was written after the backup
    # Users come with the data: the source's root password now opens the target, its own no longer does.
    with connect(emulator, sql_project, target, "postgres", ROOT_PASSWORD) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(emulator, sql_project, target, "postgres", "other-root-password")
    assert sql.instances().get(project=sql_project, instance=target).execute()["settings"]["tier"] == "db-f1-micro"


def test_restore_backup_refuses_a_missing_backup_and_another_version(sql, sql_project, on_demand, target):
    body = {"restoreBackupContext": {"backupRunId": "12345", "instanceId": "source"}}
    with pytest.raises(HttpError) as err:
        sql.instances().restoreBackup(project=sql_project, instance=target, body=body).execute()
    assert err.value.resp.status == 400 and error_of(err.value)["errors"][0]["reason"] == "errorBackupNotFound"
    upgrade = {"databaseVersion": "POSTGRES_16"}
    done(sql, sql_project, sql.instances().patch(project=sql_project, instance=target, body=upgrade).execute())
    body = {"restoreBackupContext": {"backupRunId": on_demand["id"], "instanceId": "source"}}
    with pytest.raises(HttpError) as err:
        sql.instances().restoreBackup(project=sql_project, instance=target, body=body).execute()
    assert err.value.resp.status == 400
    assert error_of(err.value)["message"] == (
        "Invalid request: Database type of target instance and backup differ. Instance database type: POSTGRES_16, "
        "Backup database type: POSTGRES_15."
    )


# --- clone ----------------------------------------------------------------------------------------------------


def test_clone_to_a_point_in_time_has_exactly_the_commits_before_it(emulator, sql, sql_project, source, on_demand):
    committed = commit(emulator, sql_project, "a-second-before")
    point = committed + timedelta(seconds=1)
    while datetime.now(UTC) < point + timedelta(seconds=1):
        time.sleep(0.05)
    commit(emulator, sql_project, "a-second-after")
    context = {"destinationInstanceName": "pitr", "pointInTime": rfc3339(point)}
    op = sql.instances().clone(project=sql_project, instance="source", body={"cloneContext": context}).execute()
    assert op["operationType"] == "CLONE" and op["status"] == "PENDING" and op["targetId"] == "pitr"
    assert op["targetLink"].endswith(f"/projects/{sql_project}/instances/pitr")
    done(sql, sql_project, op)
    assert rows(emulator, sql_project, "pitr") == {"before", "after", "a-second-before"}
    clone = sql.instances().get(project=sql_project, instance="pitr").execute()
    assert clone["state"] == "RUNNABLE" and clone["connectionName"] == f"{sql_project}:us-central1:pitr"
    for field in ("tier", "backupConfiguration", "userLabels", "edition", "ipConfiguration"):
        assert clone["settings"][field] == source["settings"][field], field
    assert clone["settings"]["settingsVersion"] == "1" and clone["databaseVersion"] == "POSTGRES_15"
    # Reachable as an instance made by insert: found by connection name, its socket where Cloud Run links it.
    module = emulator.world.api("sqladmin")
    assert module.instance_by_connection_name(clone["connectionName"])["name"] == "pitr"
    assert (module.socket_dir(clone["connectionName"]) / ".s.PGSQL.5432").exists()
    assert [r["type"] for r in runs_of(sql, sql_project, "pitr")] == ["AUTOMATED"]  # its own base for PITR
    times = sql.projects().instances().getLatestRecoveryTime(project=sql_project, instance="source").execute()
    assert times["kind"] == "sql#getLatestRecoveryTime"
    assert times["earliestRecoveryTime"] <= rfc3339(point) <= times["latestRecoveryTime"]


def test_clone_without_a_point_in_time_is_the_current_state(emulator, sql, sql_project, source, on_demand):
    commit(emulator, sql_project, "just-now")
    context = {"destinationInstanceName": "copy", "preferredZone": "us-central1-a"}
    op = sql.instances().clone(project=sql_project, instance="source", body={"cloneContext": context}).execute()
    done(sql, sql_project, op)
    assert "just-now" in rows(emulator, sql_project, "copy")
    copy = sql.instances().get(project=sql_project, instance="copy").execute()
    assert copy["gceZone"] == "us-central1-a" and copy["settings"]["locationPreference"]["zone"] == "us-central1-a"
    with connect(emulator, sql_project, "copy") as conn:
        conn.execute("INSERT INTO runs (name) VALUES ('only-in-the-copy')")
    assert "only-in-the-copy" not in rows(emulator, sql_project, "source")
    done(sql, sql_project, sql.instances().delete(project=sql_project, instance="copy").execute())


def test_clone_errors(sql, sql_project, source, target):
    def clone(instance: str, **context: Any) -> dict[str, Any]:
        body = {"cloneContext": {"destinationInstanceName": "never", **context}}
        with pytest.raises(HttpError) as err:
            sql.instances().clone(project=sql_project, instance=instance, body=body).execute()
        return {"status": err.value.resp.status, **error_of(err.value)}

    too_early = clone("source", pointInTime=rfc3339(datetime.now(UTC) - timedelta(hours=1)))
    assert too_early["status"] == 400 and too_early["errors"][0]["reason"] == "errorBackupNotFound"
    assert too_early["message"] == (
        "A successful backup that's required for carrying out the CLONE operation can't be found, or a backup that "
        "was created before the restored timestamp can't be found. Modify the ID or timestamp for the backup."
    )
    future = clone("source", pointInTime=rfc3339(datetime.now(UTC) + timedelta(hours=1)))
    assert future["status"] == 400 and "later than the latest recovery time" in future["message"]
    pitr_off = clone(target, pointInTime=rfc3339(datetime.now(UTC)))
    assert pitr_off["status"] == 400 and "Point-in-time recovery is not enabled" in pitr_off["message"]
    taken = clone("source", destinationInstanceName=target)
    assert taken["status"] == 409 and taken["errors"][0]["reason"] == "instanceAlreadyExists"
    missing = clone("nowhere")
    assert missing["status"] == 404 and missing["errors"][0]["reason"] == "instanceDoesNotExist"
    with pytest.raises(HttpError) as err:
        sql.instances().get(project=sql_project, instance="never").execute()
    assert err.value.resp.status == 404


# --- PITR on and off, deletion ------------------------------------------------------------------------------


def test_turning_pitr_on_restarts_the_server_archives_and_takes_a_base(emulator, sql, sql_project, target):
    def patch(**backup: Any) -> None:
        body = {"settings": {"backupConfiguration": backup}}
        done(sql, sql_project, sql.instances().patch(project=sql_project, instance=target, body=body).execute())

    def archive_mode() -> str:
        with connect(emulator, sql_project, target, "postgres", ROOT_PASSWORD) as conn:
            return conn.execute("SHOW archive_mode").fetchone()[0]

    pid = postmaster_pid(emulator, sql_project, target)
    one_kept = {"retentionUnit": "COUNT", "retainedBackups": 1}
    patch(enabled=True, pointInTimeRecoveryEnabled=True, backupRetentionSettings=one_kept)
    assert postmaster_pid(emulator, sql_project, target) != pid and archive_mode() == "on"
    [first] = runs_of(sql, sql_project, target)
    assert (first["type"], first["status"]) == ("AUTOMATED", "SUCCESSFUL")
    archive = emulator.world.data_dir / "sql" / sql_project / target / "wal"
    assert archive.is_dir()
    patch(pointInTimeRecoveryEnabled=False)
    assert archive_mode() == "off" and not archive.exists()
    with pytest.raises(HttpError) as err:
        sql.projects().instances().getLatestRecoveryTime(project=sql_project, instance=target).execute()
    assert err.value.resp.status == 400
    # On again: a fresh log and a fresh base; one automated backup kept, so the first one is gone.
    patch(pointInTimeRecoveryEnabled=True)
    [second] = runs_of(sql, sql_project, target)
    assert second["id"] != first["id"] and archive_mode() == "on"
    times = sql.projects().instances().getLatestRecoveryTime(project=sql_project, instance=target).execute()
    assert times["earliestRecoveryTime"] == second["endTime"]


def test_deleting_a_backup_run_and_an_instance_deletes_their_backups(emulator, sql, sql_project, on_demand):
    backups = emulator.world.data_dir / "sql" / sql_project / "source" / "backups"
    assert (backups / on_demand["id"] / "pgdata" / "PG_VERSION").exists()
    op = sql.backupRuns().delete(project=sql_project, instance="source", id=on_demand["id"]).execute()
    assert op["operationType"] == "DELETE_VOLUME"
    done(sql, sql_project, op)
    assert not (backups / on_demand["id"]).exists()
    with pytest.raises(HttpError) as err:
        sql.backupRuns().get(project=sql_project, instance="source", id=on_demand["id"]).execute()
    assert err.value.resp.status == 404
    with pytest.raises(HttpError) as err:  # a final backup would outlive the instance: not emulated
        sql.instances().delete(project=sql_project, instance="pitr", enableFinalBackup=True).execute()
    assert err.value.resp.status == 501
    done(sql, sql_project, sql.instances().delete(project=sql_project, instance="pitr").execute())
    assert not (emulator.world.data_dir / "sql" / sql_project / "pitr").exists()
    assert "pitr" not in {r["instance"] for r in runs_of(sql, sql_project, "-")}


# --- an emulator restart keeps backups ------------------------------------------------------------------------


@pytest.fixture
def own_emulator_dir() -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="mge-", dir="/tmp"))
    yield data_dir
    shutil.rmtree(data_dir, ignore_errors=True)


def test_backups_outlive_an_emulator_restart_and_restore_onto_their_own_instance(own_emulator_dir):
    def root(emu: Emulator) -> psycopg.Connection:
        return connect(emu, "keep", "db", "postgres", ROOT_PASSWORD, "postgres")

    emu = Emulator(own_emulator_dir).start()
    try:
        EmulatorAdmin(emu.base_url).add_project("keep")
        enable(Clients(emu.base_url), "keep", "sqladmin.googleapis.com")
        sql = Clients(emu.base_url).sqladmin()
        done(sql, "keep", sql.instances().insert(project="keep", body=instance_body("db")).execute())
        with root(emu) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        op = sql.backupRuns().insert(project="keep", instance="db", body={}).execute()
        backup_id = done(sql, "keep", op)["backupContext"]["backupId"]
    finally:
        emu.stop()
    emu = Emulator(own_emulator_dir).start()
    try:
        sql = Clients(emu.base_url).sqladmin()
        assert [r["id"] for r in runs_of(sql, "keep", "db")] == [backup_id]
        with root(emu) as conn:
            conn.execute("INSERT INTO kept VALUES (2)")
        body = {"restoreBackupContext": {"backupRunId": backup_id}}  # instanceId: the target itself
        done(sql, "keep", sql.instances().restoreBackup(project="keep", instance="db", body=body).execute())
        with root(emu) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]
    finally:
        emu.stop()
    assert (own_emulator_dir / "sql" / "keep" / "db" / "backups" / backup_id / "pgdata").is_dir()
