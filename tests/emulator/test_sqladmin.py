"""Cloud SQL Admin v1 through googleapiclient, and the real PostgreSQL server behind each instance through psycopg
over its unix socket."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from googleapiclient.errors import HttpError

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.conftest import enable

ROOT_PASSWORD = "root-" + uuid.uuid4().hex


def wait(sql: Any, project: str, op: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Poll a sql#operation to DONE, as a client would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = sql.operations().get(project=project, operation=op["name"]).execute()
        if op["status"] == "DONE":
            return op
        time.sleep(0.05)
    raise TimeoutError(op["name"])


def done(sql: Any, project: str, op: dict[str, Any]) -> dict[str, Any]:
    op = wait(sql, project, op)
    assert "error" not in op, op
    return op


def error_of(exc: HttpError) -> dict[str, Any]:
    return json.loads(exc.content)["error"]


def connect(emulator: Emulator, connection_name: str, user: str, password: str, dbname: str) -> psycopg.Connection:
    socket_dir = emulator.world.api("sqladmin").socket_dir(connection_name)
    return psycopg.connect(
        host=str(socket_dir), port=5432, user=user, password=password, dbname=dbname, autocommit=True
    )


def postgres_15(name: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "databaseVersion": "POSTGRES_15",
        "rootPassword": ROOT_PASSWORD,
        "settings": {"tier": "db-f1-micro", "edition": "ENTERPRISE", **settings},
    }


# --- one project and one instance shared by the module: each initdb costs a second or two ----------------


@pytest.fixture(scope="module")
def created(sql: Any, sql_project: str) -> Iterator[dict[str, Any]]:
    """The main instance: the operation insert answered, and the operation once DONE. Deleted afterwards, which
    also removes its cluster from disk."""
    first = sql.instances().insert(project=sql_project, body=postgres_15("main")).execute()
    yield {"first": first, "done": done(sql, sql_project, first)}
    wait(sql, sql_project, sql.instances().delete(project=sql_project, instance="main").execute())


@pytest.fixture
def main(sql: Any, sql_project: str, created: dict[str, Any]) -> dict[str, Any]:
    return sql.instances().get(project=sql_project, instance="main").execute()


def test_insert_answers_a_pending_operation_that_ends_runnable(emulator, sql, sql_project, created, main):
    first, finished = created["first"], created["done"]
    assert first["kind"] == "sql#operation" and first["status"] == "PENDING"
    assert first["operationType"] == "CREATE" and first["targetId"] == "main"
    assert first["targetProject"] == sql_project and "insertTime" in first
    assert finished["status"] == "DONE" and {"startTime", "endTime"} <= finished.keys()
    assert main["state"] == "RUNNABLE"
    assert main["connectionName"] == f"{sql_project}:us-central1:main"
    assert main["settings"]["settingsVersion"] == "1" and main["settings"]["edition"] == "ENTERPRISE"
    assert main["settings"]["deletionProtectionEnabled"] is False
    assert "rootPassword" not in main
    module = emulator.world.api("sqladmin")
    assert module.instance_by_connection_name(main["connectionName"])["name"] == "main"
    # A short directory per instance, whatever the length of its names (unix socket paths hold 107 bytes).
    assert module.socket_dir(main["connectionName"]).parent == module.socket_root
    assert (module.socket_dir(main["connectionName"]) / ".s.PGSQL.5432").exists()
    listed = sql.operations().list(project=sql_project, instance="main").execute()["items"]
    assert finished["name"] in {op["name"] for op in listed}


def test_database_and_user_are_real(emulator, sql, sql_project, main):
    done(
        sql, sql_project, sql.databases().insert(project=sql_project, instance="main", body={"name": "appdb"}).execute()
    )
    body = {"name": "app", "password": "app-password-1"}
    done(sql, sql_project, sql.users().insert(project=sql_project, instance="main", body=body).execute())
    with connect(emulator, main["connectionName"], "app", "app-password-1", "appdb") as conn:
        conn.execute("CREATE TABLE runs (id int PRIMARY KEY)")
        conn.execute("INSERT INTO runs VALUES (1)")
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        # Cloud SQL's role model: API databases belong to cloudsqlsuperuser, API users are members of it.
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'").fetchone()
        assert owner == ("cloudsqlsuperuser",)
        assert conn.execute("SELECT pg_has_role('app', 'cloudsqlsuperuser', 'MEMBER')").fetchone() == (True,)
        assert conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'app'"
        ).fetchone() == (
            False,
            True,
            True,
        )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(emulator, main["connectionName"], "app", "wrong", "appdb")
    got = sql.databases().get(project=sql_project, instance="main", database="appdb").execute()
    assert got["kind"] == "sql#database" and got["charset"] == "UTF8"
    with pytest.raises(HttpError) as err:
        sql.databases().insert(project=sql_project, instance="main", body={"name": "appdb"}).execute()
    assert err.value.resp.status == 400 and 'database "appdb" already exists' in error_of(err.value)["message"]


def test_postgres_user_has_the_root_password(emulator, main):
    with connect(emulator, main["connectionName"], "postgres", ROOT_PASSWORD, "postgres") as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        assert conn.execute("SELECT pg_has_role('postgres', 'cloudsqlsuperuser', 'MEMBER')").fetchone() == (True,)


def test_users_update_changes_the_password(emulator, sql, sql_project, main):
    users = sql.users()
    done(
        sql,
        sql_project,
        users.insert(project=sql_project, instance="main", body={"name": "rotating", "password": "old-pw-1"}).execute(),
    )
    op = users.update(project=sql_project, instance="main", name="rotating", body={"password": "new-pw-2"}).execute()
    assert op["operationType"] == "UPDATE_USER"
    done(sql, sql_project, op)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(emulator, main["connectionName"], "rotating", "old-pw-1", "postgres")
    with connect(emulator, main["connectionName"], "rotating", "new-pw-2", "postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("rotating",)


def test_passwords_are_never_returned_or_stored(emulator, sql, sql_project, main):
    secret = "never-shown-" + uuid.uuid4().hex
    done(
        sql,
        sql_project,
        sql.users().insert(project=sql_project, instance="main", body={"name": "quiet", "password": secret}).execute(),
    )
    listed = sql.users().list(project=sql_project, instance="main").execute()
    assert "quiet" in {u["name"] for u in listed["items"]}
    assert all("password" not in u for u in listed["items"])
    assert {"cloudsqladmin", "cloudsqlsuperuser"}.isdisjoint(u["name"] for u in listed["items"])
    got = sql.users().get(project=sql_project, instance="main", name="quiet").execute()
    seen = json.dumps([listed, got, sql.instances().list(project=sql_project).execute(), main])
    assert secret not in seen and ROOT_PASSWORD not in seen
    for path in (emulator.world.data_dir / "store.json", emulator.world.data_dir / "requests.jsonl"):
        assert secret not in path.read_text() and ROOT_PASSWORD not in path.read_text()
    server_log = emulator.world.data_dir / "sql" / sql_project / "main" / "server.log"
    assert secret not in server_log.read_text(errors="replace")


def test_a_second_operation_on_a_busy_instance_is_refused(sql, sql_project, main, admin):
    admin.settings(latency_profile="realistic", time_scale=0.2)  # a user takes 8 s * 0.2 on this profile
    op = (
        sql.users()
        .insert(project=sql_project, instance="main", body={"name": "busy", "password": "pw-busy-1"})
        .execute()
    )
    with pytest.raises(HttpError) as err:
        sql.databases().insert(project=sql_project, instance="main", body={"name": "second"}).execute()
    error = error_of(err.value)
    assert err.value.resp.status == 409
    assert error["errors"][0]["reason"] == "operationInProgress"
    assert error["message"] == "Operation failed because another operation was already in progress."
    assert sql.operations().get(project=sql_project, operation=op["name"]).execute()["status"] != "DONE"
    done(sql, sql_project, op)
    admin.settings(latency_profile="instant")
    done(
        sql,
        sql_project,
        sql.databases().insert(project=sql_project, instance="main", body={"name": "second"}).execute(),
    )


def test_max_connections_follows_the_tier_and_stale_settings_are_refused(emulator, sql, sql_project, main):
    def max_connections() -> str:
        with connect(emulator, main["connectionName"], "postgres", ROOT_PASSWORD, "postgres") as conn:
            return conn.execute("SHOW max_connections").fetchone()[0]

    assert max_connections() == "25"  # db-f1-micro
    instances = sql.instances()
    done(
        sql,
        sql_project,
        instances.patch(project=sql_project, instance="main", body={"settings": {"tier": "db-g1-small"}}).execute(),
    )
    assert max_connections() == "50"
    got = instances.get(project=sql_project, instance="main").execute()
    assert got["settings"]["settingsVersion"] == "2" and got["settings"]["tier"] == "db-g1-small"
    stale = {"settings": {"settingsVersion": "1", "tier": "db-custom-2-7680"}}
    with pytest.raises(HttpError) as err:
        instances.patch(project=sql_project, instance="main", body=stale).execute()
    assert err.value.resp.status == 412 and error_of(err.value)["errors"][0]["reason"] == "staleData"
    fresh = {"settings": {"settingsVersion": "2", "tier": "db-custom-2-7680"}}  # 7.5 GiB
    done(sql, sql_project, instances.patch(project=sql_project, instance="main", body=fresh).execute())
    assert max_connections() == "400"
    flags = {"settings": {"databaseFlags": [{"name": "max_connections", "value": "40"}]}}
    done(sql, sql_project, instances.patch(project=sql_project, instance="main", body=flags).execute())
    assert max_connections() == "40"
    back = {"settings": {"tier": "db-f1-micro", "databaseFlags": []}}
    done(sql, sql_project, instances.patch(project=sql_project, instance="main", body=back).execute())
    assert max_connections() == "25"


def test_a_stopped_instance_refuses_database_calls(sql, sql_project, main):
    instances = sql.instances()
    done(
        sql,
        sql_project,
        instances.patch(
            project=sql_project, instance="main", body={"settings": {"activationPolicy": "NEVER"}}
        ).execute(),
    )
    with pytest.raises(HttpError) as err:
        sql.databases().list(project=sql_project, instance="main").execute()
    assert err.value.resp.status == 400
    assert error_of(err.value)["message"] == "Invalid request: Invalid request since instance is not running."
    done(
        sql,
        sql_project,
        instances.patch(
            project=sql_project, instance="main", body={"settings": {"activationPolicy": "ALWAYS"}}
        ).execute(),
    )
    assert "postgres" in {
        d["name"] for d in sql.databases().list(project=sql_project, instance="main").execute()["items"]
    }


def test_a_user_owning_objects_cannot_be_deleted(emulator, sql, sql_project, main):
    done(
        sql,
        sql_project,
        sql.users()
        .insert(project=sql_project, instance="main", body={"name": "owner", "password": "owner-pw-1"})
        .execute(),
    )
    with connect(emulator, main["connectionName"], "owner", "owner-pw-1", "postgres") as conn:
        conn.execute("CREATE TABLE owned (x int)")
    with pytest.raises(HttpError) as err:
        sql.users().delete(project=sql_project, instance="main", name="owner").execute()
    assert err.value.resp.status == 400
    assert "cannot be dropped because some objects depend on it" in error_of(err.value)["message"]
    with connect(emulator, main["connectionName"], "owner", "owner-pw-1", "postgres") as conn:
        conn.execute("DROP TABLE owned")
    op = sql.users().delete(project=sql_project, instance="main", name="owner").execute()
    assert op["operationType"] == "DELETE_USER"
    done(sql, sql_project, op)
    with pytest.raises(psycopg.OperationalError):
        connect(emulator, main["connectionName"], "owner", "owner-pw-1", "postgres")


def test_database_delete_drops_it(sql, sql_project, main):
    databases = sql.databases()
    done(sql, sql_project, databases.insert(project=sql_project, instance="main", body={"name": "scratch"}).execute())
    op = databases.delete(project=sql_project, instance="main", database="scratch").execute()
    assert op["operationType"] == "DELETE_DATABASE"
    done(sql, sql_project, op)
    with pytest.raises(HttpError) as err:
        databases.get(project=sql_project, instance="main", database="scratch").execute()
    assert err.value.resp.status == 404


# --- validation, without creating instances ----------------------------------------------------------------


def test_enterprise_plus_is_the_default_on_postgres_16_and_refuses_shared_core(sql, sql_project):
    body = {"name": "plus", "databaseVersion": "POSTGRES_16", "settings": {"tier": "db-f1-micro"}}
    with pytest.raises(HttpError) as err:
        sql.instances().insert(project=sql_project, body=body).execute()
    assert err.value.resp.status == 400
    assert error_of(err.value)["message"] == (
        "Invalid request: Invalid Tier (db-f1-micro) for (ENTERPRISE_PLUS) Edition. Use a predefined Tier like "
        "db-perf-optimized-N-* instead. Learn more at "
        "https://cloud.google.com/sql/docs/postgres/create-instance#machine-types."
    )
    for edition, tier in (("ENTERPRISE_PLUS", "db-custom-2-7680"), ("ENTERPRISE", "db-perf-optimized-N-2")):
        body["settings"] = {"tier": tier, "edition": edition}
        with pytest.raises(HttpError, match=f"Invalid Tier \\({tier}\\) for \\({edition}\\) Edition"):
            sql.instances().insert(project=sql_project, body=body).execute()
    with pytest.raises(HttpError) as err:
        sql.instances().get(project=sql_project, instance="plus").execute()
    assert err.value.resp.status == 404


def test_instance_settings_cloud_sql_refuses(sql, sql_project):
    cases = [
        ({"ipConfiguration": {"ipv4Enabled": False}}, "At least one of Public IP or Private IP or PSC connectivity"),
        ({"backupConfiguration": {"enabled": True, "transactionLogRetentionDays": 8}}, "between 1 and 7"),
        ({"tier": "db-custom-1-1024"}, "Invalid Tier (db-custom-1-1024) for (ENTERPRISE) Edition"),
    ]
    for settings, message in cases:
        with pytest.raises(HttpError) as err:
            sql.instances().insert(project=sql_project, body=postgres_15("refused", **settings)).execute()
        assert err.value.resp.status == 400 and message in error_of(err.value)["message"]
    with pytest.raises(HttpError) as err:
        sql.instances().insert(project=sql_project, body=postgres_15("Bad_Name")).execute()
    assert err.value.resp.status == 400 and "instance name (Bad_Name)" in error_of(err.value)["message"]
    without_version = {"name": "unpinned", "settings": {"tier": "db-f1-micro"}}
    with pytest.raises(HttpError) as err:
        sql.instances().insert(project=sql_project, body=without_version).execute()
    assert err.value.resp.status == 501 and "MySQL" in error_of(err.value)["message"]


def test_unknown_body_fields_are_rejected(emulator, sql_project):
    url = f"{emulator.base_url}/sqladmin/v1/projects/{sql_project}/instances"
    for body, name in (
        ({**postgres_15("unknown"), "bogus": 1}, "bogus"),
        (postgres_15("unknown", tierr="db-f1-micro"), "tierr"),
    ):
        r = requests.post(url, json=body, timeout=10)
        assert r.status_code == 400
        assert f'Unknown name "{name}"' in r.json()["error"]["message"]


def test_missing_instance(sql, sql_project):
    with pytest.raises(HttpError) as err:
        sql.instances().get(project=sql_project, instance="nowhere").execute()
    error = error_of(err.value)
    assert err.value.resp.status == 404 and error["errors"][0]["reason"] == "instanceDoesNotExist"
    assert error["message"] == "The Cloud SQL instance does not exist."
    with pytest.raises(HttpError) as err:
        sql.databases().list(project=sql_project, instance="nowhere").execute()
    assert err.value.resp.status == 403 and error_of(err.value)["errors"][0]["reason"] == "notAuthorized"


def test_service_disabled_before_enabling(clients, project):
    with pytest.raises(HttpError) as err:
        clients.sqladmin().instances().list(project=project).execute()
    error = error_of(err.value)
    assert err.value.resp.status == 403
    assert error["details"][0]["reason"] == "SERVICE_DISABLED"
    assert "Cloud SQL Admin API has not been used in project" in error["message"]


# --- instances created and deleted here --------------------------------------------------------------------


def test_deletion_protection_then_name_reuse(emulator, sql, sql_project, admin):
    name = f"victim-{uuid.uuid4().hex[:6]}"
    instances = sql.instances()
    done(
        sql,
        sql_project,
        instances.insert(project=sql_project, body=postgres_15(name, deletionProtectionEnabled=True)).execute(),
    )
    with pytest.raises(HttpError) as err:
        instances.delete(project=sql_project, instance=name).execute()
    assert err.value.resp.status == 400 and "protected from deletion" in error_of(err.value)["message"]
    off = {"settings": {"deletionProtectionEnabled": False}}
    done(sql, sql_project, instances.patch(project=sql_project, instance=name, body=off).execute())
    connection_name = f"{sql_project}:us-central1:{name}"
    socket_dir = emulator.world.api("sqladmin").socket_dir(connection_name)
    assert socket_dir.exists()
    op = instances.delete(project=sql_project, instance=name).execute()
    assert op["operationType"] == "DELETE"
    done(sql, sql_project, op)
    assert not socket_dir.exists()
    assert not (emulator.world.data_dir / "sql" / sql_project / name).exists()
    with pytest.raises(HttpError) as err:
        instances.get(project=sql_project, instance=name).execute()
    assert err.value.resp.status == 404
    with pytest.raises(HttpError) as err:
        instances.insert(project=sql_project, body=postgres_15(name)).execute()
    assert err.value.resp.status == 409
    assert "can't reuse the name of the deleted instance until one week" in error_of(err.value)["message"]
    admin.settings(sql_name_reuse_blocked=False)
    done(sql, sql_project, instances.insert(project=sql_project, body=postgres_15(name)).execute())
    done(sql, sql_project, instances.delete(project=sql_project, instance=name).execute())


def _postmaster_pid(data_dir: Path, project: str, name: str) -> int:
    return int((data_dir / "sql" / project / name / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def own_emulator_dir() -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="mge-", dir="/tmp"))
    yield data_dir
    shutil.rmtree(data_dir, ignore_errors=True)


def test_servers_stop_with_the_emulator_come_back_on_restart_and_go_on_reset(own_emulator_dir):
    emu = Emulator(own_emulator_dir).start()
    try:
        clients = Clients(emu.base_url)
        EmulatorAdmin(emu.base_url).add_project("life")
        enable(clients, "life", "sqladmin.googleapis.com")
        sql = clients.sqladmin()
        done(sql, "life", sql.instances().insert(project="life", body=postgres_15("keep")).execute())
        done(sql, "life", sql.databases().insert(project="life", instance="keep", body={"name": "kept"}).execute())
        with connect(emu, "life:us-central1:keep", "postgres", ROOT_PASSWORD, "kept") as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (42)")
        pid = _postmaster_pid(own_emulator_dir, "life", "keep")
    finally:
        emu.stop()
    assert not _alive(pid)

    emu = Emulator(own_emulator_dir).start()
    try:
        sql = Clients(emu.base_url).sqladmin()
        assert sql.instances().get(project="life", instance="keep").execute()["state"] == "RUNNABLE"
        with connect(emu, "life:us-central1:keep", "postgres", ROOT_PASSWORD, "kept") as conn:
            assert conn.execute("SELECT x FROM t").fetchone() == (42,)
        pid = _postmaster_pid(own_emulator_dir, "life", "keep")
        EmulatorAdmin(emu.base_url).reset()
        assert not _alive(pid)
        assert not (own_emulator_dir / "sql").exists() and not (own_emulator_dir / "cloudsql").exists()
    finally:
        emu.stop()
