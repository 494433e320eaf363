"""Server cold start (issue 14, goal 1): from the revision's process start to the first authenticated 200, against
the import floor and a stock MLflow basic-auth server, side by side in one run.

    .venv/bin/python benchmarks/cold_start.py [-n 5] [--json] [--baseline-entrypoint PATH]

Each repetition runs, back to back (so the machine's load hits all of them alike):

- floor: ``python -c "import mlflow.server.auth"``, the least any MLflow basic-auth server can start in;
- stock: ``mlflow server --app-name basic-auth`` (SQLite, its default 4 uvicorn workers), process start to
  ``/health`` 200; on databases it already migrated once, as ours are (a restart, not a first install);
- ours: ``python server_image/entrypoint.py`` as Cloud Run starts it (and as tests/server do) on real PostgreSQL
  (the emulator's Cloud SQL) and Cloud Storage, process start to the first 200 of an authenticated
  ``/api/2.0/mlflow/experiments/search``: the moment the first user's request is answered (a user's, with the
  permission checks a user's request gets, not the admin's). Once with the image's default worker count and
  once with two workers. The databases
  were migrated by a first start that is reported apart (``first start``): it happens once per deployment, a
  cold start after scale-to-zero every time;
- baseline (``--baseline-entrypoint PATH``, e.g. the entrypoint of an earlier commit): another entrypoint file,
  timed as ours is.

Prints one table (median, min and max in seconds, and ours over the floor and over stock); ``--json`` prints the
same as JSON. :func:`measure` returns it, for benchmarks/run_all.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "src" / "mlflow_gcp" / "server_image" / "entrypoint.py"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
#: How often a start is polled: the resolution of every number below.
POLL_SECONDS = 0.02
START_TIMEOUT = 180.0
ADMIN = ("admin", f"bench-admin-{uuid.uuid4().hex[:12]}")
#: Who makes the timed request: a user, as the first person to open the UI after a quiet spell.
USER = ("bench-user", f"bench-user-{uuid.uuid4().hex[:12]}")


def _config_module() -> ModuleType:
    """The image's configuration (mlflow_gcp_config.py, next to the entrypoint), for its variable names (it is a file
    in the image, not a package module)."""
    spec = importlib.util.spec_from_file_location("mlflow_gcp_bench_config", ENTRYPOINT.parent / "mlflow_gcp_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # Nothing of this process's MLflow or pytest settings may leak into a server under test.
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_"))}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _time_until(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    ready: Callable[[], bool],
    then: Callable[[], None] | None = None,
) -> float:
    """Seconds from starting ``argv`` (its own process group) until ``ready()``; ``then()`` runs next, and the group
    is killed after."""
    with log.open("ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        while time.perf_counter() - started < START_TIMEOUT:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[1:3]} exited with {proc.returncode}; see {log}")
            if ready():
                seconds = time.perf_counter() - started
                if then is not None:
                    then()
                return seconds
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"{argv[1:3]} not ready in {START_TIMEOUT:.0f} s; see {log}")
    finally:
        _kill(proc)


def _answers(url: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return requests.get(url, auth=auth, timeout=5).status_code == 200
    except requests.RequestException:
        return False


# --- the three measurements -------------------------------------------------------------------------------------


#: The floor's command, plus a line that reports how long the import itself took (read on the process's own clock).
FLOOR = "import mlflow.server.auth"
FLOOR_TIMED = f"import time; started = time.perf_counter(); {FLOOR}; print(time.perf_counter() - started)"


def time_floor() -> tuple[float, float]:
    """``python -c "import mlflow.server.auth"``: its wall time, and the part of it the import takes. The rest is
    mostly the interpreter's exit, which tears MLflow's module graph down (about 1 s here), a cost no server pays
    on its way to its first answer."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_TIMED], env=_clean_env(), check=True, capture_output=True, text=True
    ).stdout
    return time.perf_counter() - started, float(out.strip().splitlines()[-1])


@dataclass
class Stock:
    """``mlflow server --app-name basic-auth`` as its docs start it: SQLite stores in a directory of its own."""

    workdir: Path

    def start_time(self) -> float:
        port = _free_port()
        env = {
            **_clean_env(),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        }
        argv = [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
            "--port", str(port), "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
        ]  # fmt: skip
        health = f"http://127.0.0.1:{port}/health"
        return _time_until(argv, env, self.workdir, self.workdir / "stock.log", lambda: _answers(health))


@dataclass
class Ours:
    """The image's entrypoint on the emulator's Cloud SQL and Cloud Storage, as tests/server start it."""

    env: dict[str, str]
    workdir: Path
    entrypoint: Path = ENTRYPOINT

    def start_time(self, **overrides: str) -> float:
        port = _free_port()
        env = {**self.env, "PORT": str(port), **overrides}
        search = f"http://127.0.0.1:{port}{SEARCH}"
        argv = [sys.executable, str(self.entrypoint)]
        return _time_until(argv, env, self.workdir, self.workdir / "ours.log", lambda: _answers(search, USER))

    def first_start_time(self) -> float:
        """The first start, which migrates the fresh databases (timed with the admin, the only user yet); it creates
        the user the other starts are timed with."""
        port = _free_port()
        base = f"http://127.0.0.1:{port}"

        def create_user() -> None:
            body = {"username": USER[0], "password": USER[1]}
            requests.post(f"{base}/api/2.0/mlflow/users/create", json=body, auth=ADMIN, timeout=30).raise_for_status()

        argv = [sys.executable, str(self.entrypoint)]
        return _time_until(
            argv, {**self.env, "PORT": str(port)}, self.workdir, self.workdir / "ours.log",
            lambda: _answers(base + SEARCH, ADMIN), create_user,
        )  # fmt: skip


@contextmanager
def cloud_sql() -> Iterator[tuple[dict[str, str], Path]]:
    """An emulator with a Cloud SQL instance (tracking and auth databases, a user) and a bucket, made through
    Google's clients; yields the server's environment (as Cloud Run would set it, minus PORT) and a work dir."""
    from mlflow_gcp.emulator.server import Emulator
    from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin, enable_services

    cfg = _config_module()
    data = Path(tempfile.mkdtemp(prefix="mgc-", dir="/tmp"))  # short: unix socket paths are limited to 107 bytes
    emulator = Emulator(data).start()
    try:
        clients = Clients(emulator.base_url)
        project = f"bench-{uuid.uuid4().hex[:8]}"
        EmulatorAdmin(emulator.base_url).add_project(project)
        enable_services(clients, project, "sqladmin.googleapis.com")
        sql = clients.sqladmin()

        def wait(op: dict[str, Any]) -> None:
            while op["status"] != "DONE":
                time.sleep(0.1)
                op = sql.operations().get(project=project, operation=op["name"]).execute()
            if "error" in op:
                raise RuntimeError(op["error"])

        body = {
            "name": "mlflow",
            "databaseVersion": "POSTGRES_15",
            "rootPassword": uuid.uuid4().hex,
            "settings": {"tier": "db-f1-micro", "edition": "ENTERPRISE"},
        }
        wait(sql.instances().insert(project=project, body=body).execute())
        connection = sql.instances().get(project=project, instance="mlflow").execute()["connectionName"]
        db_password = uuid.uuid4().hex
        user = {"name": "mlflow_a", "password": db_password}
        wait(sql.users().insert(project=project, instance="mlflow", body=user).execute())
        for name in ("mlflow", "mlflow_auth"):
            wait(sql.databases().insert(project=project, instance="mlflow", body={"name": name}).execute())
        bucket = clients.storage(project).create_bucket(f"bench-{uuid.uuid4().hex[:12]}", location="us-central1")
        # Cloud Run's /cloudsql mount: a short directory holding the connection name (as tests/server make it).
        mount = data / "cs"
        mount.mkdir()
        (mount / connection).symlink_to(emulator.world.api("sqladmin").socket_dir(connection))
        env = {
            **_clean_env(),
            "STORAGE_EMULATOR_HOST": emulator.base_url,
            cfg.ENV_DB_USER: "mlflow_a",
            cfg.ENV_DB_USERS: "mlflow_a,mlflow_b",
            cfg.ENV_DB_PASSWORD: db_password,
            cfg.ENV_CONNECTION: connection,
            cfg.ENV_CLOUDSQL_DIR: str(mount),
            cfg.ENV_ARTIFACTS: f"gs://{bucket.name}/artifacts",
            cfg.ENV_ALLOWED_HOSTS: "https://mlflow-bench-uc.a.run.app",
            cfg.ENV_ADMIN_USERNAME: ADMIN[0],
            cfg.ENV_ADMIN_PASSWORD: ADMIN[1],
            cfg.ENV_SECRET_KEY: uuid.uuid4().hex,
            cfg.ENV_MAX_INSTANCES: "1",
            cfg.ENV_MAX_CONNECTIONS: "25",
        }
        work = data / "work"
        work.mkdir()
        yield env, work
    finally:
        emulator.stop()
        shutil.rmtree(data, ignore_errors=True)


# --- the table ------------------------------------------------------------------------------------------------


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


def measure(repeats: int = 5, baseline_entrypoint: Path | None = None) -> dict[str, Any]:
    """Every measurement, ``repeats`` times each (interleaved); medians, spreads and the goal's ratios, in seconds.

    Keys: ``floor`` (the command's wall time, as the goal defines it), ``floor_import`` (the import inside it),
    ``stock``, ``ours`` (the image's default workers), ``ours_2_workers``, ``first_start`` (ours on fresh databases,
    once), optionally ``baseline`` (another entrypoint file, same conditions as ``ours``), and ``ratios``:
    ``ours/floor`` (goal: <= 1.5), ``ours/stock`` (goal: <= 0.35) and ``ours/import``, medians over medians.
    """
    cfg = _config_module()
    samples: dict[str, list[float]] = {"floor": [], "floor_import": [], "stock": [], "ours": [], "ours_2_workers": []}
    if baseline_entrypoint is not None:
        samples["baseline"] = []
    with cloud_sql() as (env, work):
        ours = Ours(env, work)
        baseline = Ours(env, work, baseline_entrypoint) if baseline_entrypoint is not None else None
        stock_dir = work / "stock"
        stock_dir.mkdir()
        stock = Stock(stock_dir)
        first_start = ours.first_start_time()  # migrates both databases: once per deployment
        stock.start_time()  # the same for stock's SQLite files
        for _ in range(repeats):
            wall, imported = time_floor()
            samples["floor"].append(wall)
            samples["floor_import"].append(imported)
            samples["stock"].append(stock.start_time())
            samples["ours"].append(ours.start_time())
            samples["ours_2_workers"].append(ours.start_time(**{cfg.ENV_WORKERS: "2"}))
            if baseline is not None:
                samples["baseline"].append(baseline.start_time())
    result: dict[str, Any] = {name: _summary(values) for name, values in samples.items()}
    result["first_start"] = _summary([first_start])
    result["repeats"] = repeats
    result["load_average"] = os.getloadavg()
    ours_median = result["ours"]["median"]
    result["ratios"] = {
        "ours/floor": ours_median / result["floor"]["median"],
        "ours/stock": ours_median / result["stock"]["median"],
        "ours/import": ours_median / result["floor_import"]["median"],
    }
    return result


LABELS = {
    "floor": 'floor: python -c "import mlflow.server.auth"',
    "floor_import": "the import alone, without the interpreter's exit",
    "stock": "stock: mlflow server --app-name basic-auth, to /health",
    "ours": "ours: entrypoint, default workers, to authenticated 200",
    "ours_2_workers": "ours: entrypoint, 2 workers, to authenticated 200",
    "baseline": "baseline entrypoint, default workers",
    "first_start": "ours: first start (migrates fresh databases), once",
}


def table(result: dict[str, Any]) -> str:
    floor, stock = result["floor"]["median"], result["stock"]["median"]
    lines = [f"{'cold start (seconds)':<58} {'median':>7} {'min':>7} {'max':>7} {'/floor':>7} {'/stock':>7}"]
    for key, label in LABELS.items():
        if key not in result:
            continue
        s = result[key]
        lines.append(
            f"{label:<58} {s['median']:7.2f} {s['min']:7.2f} {s['max']:7.2f} "
            f"{s['median'] / floor:7.2f} {s['median'] / stock:7.2f}"
        )
    r = result["ratios"]
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    lines.append(
        f"goal 1: ours/floor {r['ours/floor']:.2f} (<= 1.5), ours/stock {r['ours/stock']:.2f} (<= 0.35); "
        f"ours / the import alone {r['ours/import']:.2f}"
    )
    lines.append(f"{result['repeats']} repeats, load average {load}, {os.cpu_count()} CPUs")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--baseline-entrypoint", type=Path, help="another entrypoint.py to time as ours is")
    args = parser.parse_args()
    result = measure(args.repeats, args.baseline_entrypoint)
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
