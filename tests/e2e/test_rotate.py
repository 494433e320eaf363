"""`mlflow-gcp rotate-password`, end to end: the real CLI, the emulator, real PostgreSQL and a real `mlflow server`.

A client logs metrics at a steady rate during every rotation and must see no failed request and lose no value;
afterwards the old credentials are refused (by PostgreSQL, by MLflow) and the new ones work. A rotation killed
after any of its mutating requests finishes when run again. All tests share one deployment (each rotation costs
a revision start, `up` from nothing costs more), in file order.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import requests

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.e2e.conftest import Cli, kill_after, make_cli, mutations_during

#: Mutating requests of an uninterrupted rotation (checked below): the DB rotation's secretmanager addVersion,
#: sqladmin users.update (new user), run services.update, sqladmin users.update (old user retired),
#: secretmanager disable, destroy; the admin rotation's addVersion, services.update, disable, destroy (its
#: password change goes to MLflow, not to a Google API).
MUTATIONS = {"db": 6, "admin": 4}
KILL_POINTS = [(credential, k) for credential, n in MUTATIONS.items() for k in range(1, n + 1)]
#: Where each rotation's services.update is: killed there, the rerun meets a rollout still going.
DEPLOY_POINT = {"db": 3, "admin": 2}
#: The default run covers the deploy point and one seeded other point of each rotation; `pytest -m slow` all.
_rng = random.Random(20261127)
SAMPLE = {(c, DEPLOY_POINT[c]) for c in MUTATIONS} | {
    (c, _rng.choice([k for k in range(1, n + 1) if k != DEPLOY_POINT[c]])) for c, n in MUTATIONS.items()
}
LOAD_USER = "load-tester"


# --- the load client -----------------------------------------------------------------------------------------


@dataclass
class Load:
    """Logs one metric value every ``period`` seconds from a thread, with no retries, and records every outcome:
    a failed request is a failure, whatever the reason."""

    url: str
    auth: tuple[str, str]
    run_id: str
    period: float = 0.1
    sent: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        session = requests.Session()  # keep-alive, as MLflow's client does
        step = len(self.sent) + 10_000 * random.randint(1, 10_000)
        while not self._stop.is_set():
            step += 1
            body = {"run_id": self.run_id, "key": "load", "value": step * 0.5, "timestamp": int(time.time() * 1000),
                    "step": step}  # fmt: skip
            try:
                r = session.post(f"{self.url}/api/2.0/mlflow/runs/log-metric", json=body, auth=self.auth, timeout=60)
                if r.status_code == 200:
                    self.sent.append(step)
                else:
                    self.failures.append(f"step {step}: {r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(f"step {step}: {type(exc).__name__}: {exc}")
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)

    def check(self) -> None:
        """No request failed, and every value logged is read back."""
        assert self.failures == [], self.failures[:5]
        assert len(self.sent) >= 20, "the load client hardly ran"
        r = requests.get(
            f"{self.url}/api/2.0/mlflow/metrics/get-history",
            params={"run_id": self.run_id, "metric_key": "load", "max_results": 100_000},
            auth=self.auth,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        stored = {int(m["step"]): m["value"] for m in r.json().get("metrics", [])}
        missing = [s for s in self.sent if stored.get(s) != s * 0.5]
        assert missing == [], f"{len(missing)} of {len(self.sent)} logged values are lost"

    def rate(self, seconds: float) -> float:
        return len(self.sent) / seconds if seconds else 0.0


# --- the deployment ------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    cli: Cli
    emulator: Emulator
    clients: Clients
    load_user: tuple[str, str] | None = None
    load_run: str | None = None

    def state(self) -> dict[str, Any]:
        return json.loads(next(self.cli.state_dir.glob("*.json")).read_text())

    def creds(self) -> dict[str, str]:
        return self.cli("env", "--json").json()

    @property
    def url(self) -> str:
        return self.state()["resources"]["run"]["url"].rstrip("/")

    def admin_auth(self) -> tuple[str, str]:
        creds = self.creds()
        return creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]

    def secret_path(self, which: str) -> str:
        return f"projects/{self.cli.project}/secrets/mlflow-dev-{which}"

    def secret(self, which: str, version: str) -> str:
        sm = self.clients.secret_manager()
        return sm.access_secret_version(name=f"{self.secret_path(which)}/versions/{version}").payload.data.decode()

    def pinned(self, which: str) -> str:
        return str(self.state()["resources"][f"secret:{which}"]["version"])

    def versions(self, which: str) -> dict[str, str]:
        sm = self.clients.secret_manager()
        return {v.name.rsplit("/", 1)[1]: v.state.name for v in sm.list_secret_versions(parent=self.secret_path(which))}

    def db_login(self) -> tuple[str, str]:
        """The database user the server logs in as now, and its password, as the state and the secret say."""
        return self.state().get("db_user", "mlflow_a"), self.secret("db-password", self.pinned("db-password"))

    def pg_connect(self, user: str, password: str, dbname: str = "mlflow") -> psycopg.Connection[Any]:
        connection = f"{self.cli.project}:us-central1:mlflow-dev-db"
        socket_dir = self.emulator.world.api("sqladmin").socket_dir(connection)
        return psycopg.connect(
            host=str(socket_dir), user=user, password=password, dbname=dbname, autocommit=True, connect_timeout=10
        )

    def regular_user(self) -> tuple[tuple[str, str], str]:
        """A regular (non-admin) MLflow user, made through MLflow's API as the admin, and a run of its own."""
        if self.load_user is None or self.load_run is None:
            password = f"Load-{uuid.uuid4().hex}"
            r = requests.post(
                f"{self.url}/api/2.0/mlflow/users/create",
                json={"username": LOAD_USER, "password": password},
                auth=self.admin_auth(),
                timeout=60,
            )
            assert r.status_code == 200, r.text
            self.load_user = (LOAD_USER, password)
            self.load_run = self.create_run(self.load_user, "load")
        return self.load_user, self.load_run

    def create_run(self, auth: tuple[str, str], name: str) -> str:
        api = f"{self.url}/api/2.0/mlflow"
        r = requests.post(f"{api}/experiments/create", json={"name": f"{name}-{uuid.uuid4().hex[:6]}"}, auth=auth,
                          timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        r = requests.post(
            f"{api}/runs/create", json={"experiment_id": r.json()["experiment_id"]}, auth=auth, timeout=60
        )
        assert r.status_code == 200, r.text
        return r.json()["run"]["info"]["run_id"]

    def mlflow_status(self, auth: tuple[str, str]) -> int:
        r = requests.get(f"{self.url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth,
                         timeout=60)  # fmt: skip
        return r.status_code

    # --- what must hold after a rotation ---

    def assert_db_rotated(self, before: tuple[str, str]) -> None:
        user, password = self.db_login()
        assert user != before[0] and password != before[1]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            self.pg_connect(*before)
        for dbname in ("mlflow", "mlflow_auth"):
            with self.pg_connect(user, password, dbname) as conn:
                # Its sessions act as the owner role, which owns every table MLflow made (both databases).
                assert conn.execute("SELECT current_user").fetchone() == ("mlflow_owner",)
                owners = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
                assert [row[0] for row in owners] == ["mlflow_owner"]
        self.assert_only_pinned_version("db-password")
        self.assert_status_ok()

    def assert_admin_rotated(self, before: tuple[str, str]) -> None:
        now = self.admin_auth()
        assert now[0] == before[0] and now[1] != before[1]
        assert self.mlflow_status(before) == 401
        assert self.mlflow_status(now) == 200
        self.assert_only_pinned_version("admin-password")
        self.assert_status_ok()

    def assert_only_pinned_version(self, which: str) -> None:
        pinned = self.pinned(which)
        versions = self.versions(which)
        assert versions.pop(pinned) == "ENABLED"
        assert set(versions.values()) == {"DESTROYED"}, versions

    def assert_status_ok(self) -> None:
        status = self.cli("status", "--json", check=False)
        assert status.code == 0, status.stdout + status.stderr
        assert "rotation" not in self.state()


@pytest.fixture(scope="module")
def deployment(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    cli = make_cli(emulator, tmp_path_factory.mktemp("rotate"))
    cli("up")
    yield Deployment(cli, emulator, Clients(emulator.base_url))


def _no_secret_in_state_or_output(d: Deployment, *values: str) -> None:
    state_text = "".join(p.read_text() for p in d.cli.state_dir.glob("*.json"))
    transcript = "".join(t for t in d.cli.transcript if "MLFLOW_TRACKING_PASSWORD" not in t)  # `env` prints it
    for value in values:
        assert value not in state_text and value not in transcript


# --- tests ---------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_steps_and_changes_nothing(deployment: Deployment, admin: EmulatorAdmin):
    d = deployment
    out: dict[str, Any] = {}
    assert mutations_during(admin, lambda: out.update(db=d.cli("rotate-password", "--dry-run"))) == []
    assert mutations_during(admin, lambda: out.update(admin=d.cli("rotate-password", "--admin", "--dry-run"))) == []
    assert "users.update" in out["db"].stdout and "mlflow_b" in out["db"].stdout
    assert "update-password" in out["admin"].stdout
    status = d.cli("status", "--json").json()
    assert status["rotations"]["db"]["last_rotated"] is None and status["rotations"]["admin"]["last_rotated"] is None


def test_db_rotation_under_load(deployment: Deployment, admin: EmulatorAdmin):
    d = deployment
    auth = d.admin_auth()
    load = Load(d.url, auth, d.create_run(auth, "db-rotation"))
    before = d.db_login()
    assert before[0] == "mlflow_a"
    load.start()
    time.sleep(1)
    start = len(admin.requests())
    t0 = time.monotonic()
    result = d.cli("rotate-password", "--json")
    wall = time.monotonic() - t0
    mutations = admin.mutations(start)
    time.sleep(1)
    load.stop()
    print(f"\nDB rotation: {wall:.1f}s; load client: {len(load.sent)} requests, {load.rate(wall + 2):.1f}/s")
    assert [m["route"] for m in mutations] == [
        "versions.add", "users.update", "services.update", "users.update", "versions.disable",
        "versions.destroy",
    ], [m["route"] for m in mutations]  # fmt: skip
    assert len(mutations) == MUTATIONS["db"]
    load.check()
    assert result.json()["user"] == "mlflow_b"
    d.assert_db_rotated(before)
    rotations = d.cli("status", "--json").json()["rotations"]
    assert rotations["db"]["user"] == "mlflow_b" and rotations["db"]["last_rotated"]
    _no_secret_in_state_or_output(d, before[1], d.db_login()[1])


def test_admin_rotation_under_load(deployment: Deployment, admin: EmulatorAdmin):
    d = deployment
    user, run_id = d.regular_user()
    before = d.admin_auth()
    load = Load(d.url, user, run_id).start()
    time.sleep(1)
    start = len(admin.requests())
    t0 = time.monotonic()
    d.cli("rotate-password", "--admin")
    wall = time.monotonic() - t0
    mutations = admin.mutations(start)
    time.sleep(1)
    load.stop()
    print(f"\nadmin rotation: {wall:.1f}s; load client: {len(load.sent)} requests, {load.rate(wall + 2):.1f}/s")
    assert len(mutations) == MUTATIONS["admin"], [m["route"] for m in mutations]
    load.check()
    d.assert_admin_rotated(before)
    _no_secret_in_state_or_output(d, before[1], d.admin_auth()[1])


def test_a_failed_revision_leaves_traffic_and_credentials_in_place(deployment: Deployment, admin: EmulatorAdmin):
    """Someone with database access took the LOGIN right from the standby user, so the new revision cannot log
    in: traffic stays on the old one, the old credentials keep working, nothing is retired, the command fails
    saying so. Once repaired, running it again finishes."""
    d = deployment
    user, run_id = d.regular_user()
    before = d.db_login()
    old_version = d.pinned("db-password")
    standby = next(u for u in ("mlflow_a", "mlflow_b") if u != before[0])

    def set_login(allowed: bool) -> None:
        with d.pg_connect(*before) as conn:
            conn.execute("SET ROLE NONE")  # as the login itself (CREATEROLE), not the owner role
            conn.execute(f"ALTER ROLE {standby} {'LOGIN' if allowed else 'NOLOGIN'}")

    load = Load(d.url, user, run_id).start()
    set_login(False)
    failed = d.cli("rotate-password", check=False)
    assert failed.code == 1, failed.stderr
    assert "Traffic stays on the current revision" in failed.stderr and "nothing was retired" in failed.stderr
    # Why, in the server's own words: the last lines the new revision logged, and where to see more.
    tail = failed.stderr.split("last lines it logged:", 1)[-1]
    assert f"the database refuses the login of {standby}" in tail and "mlflow-gcp logs --revision " in tail
    assert d.state()["rotation"]["phase"] == "set-password"
    # Nothing retired: the server and the old login work, the old version is still the enabled, pinned one.
    assert d.db_login() == before
    with d.pg_connect(*before) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert d.versions("db-password")[old_version] == "ENABLED"
    assert d.mlflow_status(d.admin_auth()) == 200
    refused = d.cli("up", check=False)  # `up` would deploy the old credentials over half a rotation
    assert refused.code == 1 and "rotate-password" in refused.stderr

    set_login(True)
    d.cli("rotate-password")
    load.stop()
    load.check()
    d.assert_db_rotated(before)


def _killed_after(d: Deployment, admin: EmulatorAdmin, flags: list[str], k: int) -> None:
    """Run rotate-password and have the emulator SIGKILL it right after its k-th mutating request."""
    kill_after(d.cli, admin, k, "rotate-password", *flags)
    rotation = d.state().get("rotation")
    assert rotation is not None and rotation["credential"] == ("admin" if flags else "db")


@pytest.mark.parametrize(
    ("credential", "k"),
    [pytest.param(c, k, id=f"{c}-{k}", marks=() if (c, k) in SAMPLE else pytest.mark.slow) for c, k in KILL_POINTS],
)
def test_a_killed_rotation_finishes_when_run_again(deployment: Deployment, admin: EmulatorAdmin, credential, k):
    """SIGKILL right after the k-th mutating request, then the same command again (with --break-lock, since the
    killed run's lock stays): it resumes, finishes, and a client logging meanwhile sees no failure."""
    d = deployment
    flags = ["--admin"] if credential == "admin" else []
    before = d.admin_auth() if credential == "admin" else d.db_login()
    user, run_id = d.regular_user()
    load = Load(d.url, user, run_id).start()
    _killed_after(d, admin, flags, k)
    assert "rotation" in d.state()
    rerun = d.cli("rotate-password", *flags, "--break-lock")
    assert "Resuming" in rerun.stderr
    # Killed once the deploy was asked for, the rerun waits for that rollout instead of starting another.
    deployed = "Deploying a new revision" in rerun.stderr
    assert deployed == (k < DEPLOY_POINT[credential]), rerun.stderr
    load.stop()
    load.check()
    if credential == "admin":
        d.assert_admin_rotated(before)
    else:
        d.assert_db_rotated(before)
