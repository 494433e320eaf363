"""mlflow-gcp as users install it: a wheel built by the standard build front end (`python -m build`), installed with
`pipx install <wheel>[server]` into a fresh virtualenv outside the checkout, run from a temporary directory with the
checkout nowhere on sys.path.

The first tests run the whole user path with the wheel's own emulator daemon (`up --local` starts it): each builder
(docker, cloudbuild) deploys, a real mlflow client logs a run, `status` passes, a second `up` mutates nothing, a
changed byte of the shipped entrypoint makes exactly one build and one revision, and `down` removes it all. The
others run the installed CLI against the session's emulator, whose controls (kills, IAM propagation) they need:
Cloud Build failures leave the previous revision serving and the next `up` converges; a kill during the build is
finished by the next run without a second build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mlflow_gcp import __version__
from mlflow_gcp.emulator.daemon import find_running
from mlflow_gcp.emulator.imagebuild import CACHE_ENV
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin

from .conftest import REPO, Cli, kill_after, make_cli

SOURCES = REPO / "src" / "mlflow_gcp" / "server_image"


def _clean_env(**extra: str) -> dict[str, str]:
    """The user's environment: nothing pointing into the checkout, no emulator of the tests' unless given."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "MLFLOW_GCP_", "VIRTUAL_ENV", "PYTEST_", "GOOGLE_CLOUD_PROJECT"))
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO)))
    return {**env, "CI": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the files git knows (so the checkout is not written to, and nothing untracked leaks
    into the distribution)."""
    source = tmp_path_factory.mktemp("source")
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (REPO / name).is_file():  # deleted in the work tree but not yet in the index: listed, not there
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def pipx_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pipx install <wheel>[server]`, as README says, with pipx's homes in a temporary directory."""
    root = tmp_path_factory.mktemp("pipx")
    homes = {"PIPX_HOME": str(root / "home"), "PIPX_BIN_DIR": str(root / "bin"), "PIPX_MAN_DIR": str(root / "man")}
    proc = subprocess.run([sys.executable, "-m", "pipx", "install", f"{wheel}[server]"], env=_clean_env(**homes),
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def venv(pipx_bin: Path) -> Path:
    """The virtualenv pipx made (outside the checkout)."""
    return pipx_bin / "home" / "venvs" / "mlflow-gcp"


@pytest.fixture(scope="module")
def package_dir(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = "import json, sys, mlflow_gcp; print(json.dumps([mlflow_gcp.__file__, sys.path]))"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=tmp_path_factory.mktemp("elsewhere"),
                           env=_clean_env(), capture_output=True, text=True, check=True)  # fmt: skip
    module_file, path = json.loads(probe.stdout)
    assert module_file.startswith(str(venv)), module_file
    assert not any(p and (p == str(REPO) or p.startswith(str(REPO) + os.sep)) for p in path), path
    return Path(module_file).parent


def _files(directory: Path) -> dict[str, bytes]:
    """The package's files, less the bytecode Python caches beside a module it imports: pipx 1.18 installs with uv
    when uv is at hand (the [server] extra brings it), and uv, unlike pip, does not compile at install time."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


class Edited:
    """A file of the installed package changed for one test and restored after it."""

    def __init__(self, path: Path) -> None:
        self.path, self.original = path, path.read_bytes()

    def write(self, data: bytes) -> None:
        self.path.write_bytes(data)

    def restore(self) -> None:
        self.path.write_bytes(self.original)


# --- the distribution ----------------------------------------------------------------------------------


def test_the_wheel_ships_the_image_sources_and_nothing_of_the_tests(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        prefix = "mlflow_gcp/server_image/"
        shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
        assert shipped == {
            "Dockerfile",
            "entrypoint.py",
            "mlflow_gcp_config.py",
            "mlflow_gcp_serve.py",
            "mlflow_gcp_iap.py",
            "mlflow_gcp_artifacts.py",
            "mlflow_gcp_schema.py",
            "requirements.txt",
            ".dockerignore",
        }
        for name in shipped:
            assert z.read(f"mlflow_gcp/server_image/{name}") == (SOURCES / name).read_bytes()
    assert not [n for n in names if n.startswith("tests/") or "golden" in n or n.endswith((".log", ".yaml"))]
    assert all(n.startswith(("mlflow_gcp/", "mlflow_gcp-")) for n in names)
    assert wheel.name == f"mlflow_gcp-{__version__}-py3-none-any.whl"
    print(f"wheel: {wheel.name}, {wheel.stat().st_size} bytes, {len(names)} files")


def test_version_names_the_tool_and_the_mlflow_the_image_pins(pipx_bin: Path, tmp_path: Path):
    # The command pipx put on the PATH.
    out = subprocess.run([str(pipx_bin / "bin" / "mlflow-gcp"), "--version"], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    pin = next(
        line.split("==")[1].strip()
        for line in (SOURCES / "requirements.txt").read_text().splitlines()
        if line.startswith("mlflow[")
    )
    assert out.strip() == f"mlflow-gcp {__version__} (server image: MLflow {pin})"


# --- the user's path, with the wheel's own emulator --------------------------------------------------------


@pytest.fixture(scope="module")
def home(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A working directory and an environment with the emulator's data where README says MLFLOW_GCP_EMULATOR_DIR
    puts it; the daemon `up --local` starts is stopped at the end."""
    # Under /tmp, not pytest's 0700 tree: the emulated Cloud SQL runs PostgreSQL as `postgres`, which must reach it.
    cwd = Path(tempfile.mkdtemp(prefix="mge-wheel-", dir="/tmp"))
    cwd.chmod(0o755)
    # The one thing shared with the suite: the Python environments image builds install (a cache of what PyPI
    # serves, keyed by the requirements; tests/conftest.py), else this emulator would install the server's again.
    env = _clean_env(MLFLOW_GCP_EMULATOR_DIR=str(cwd / "emulator"), **{CACHE_ENV: os.environ[CACHE_ENV]})
    yield cwd, env
    subprocess.run([str(venv / "bin" / "mlflow-gcp"), "emulator", "stop"], cwd=cwd, env=env, capture_output=True)
    shutil.rmtree(cwd, ignore_errors=True)


def _mlflow_logs_a_run(venv: Path, creds: dict[str, str], cwd: Path) -> None:
    script = (
        "import mlflow\n"
        "mlflow.set_experiment('from-the-wheel')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_metric('x', 1.5)\n"
        "got = mlflow.MlflowClient().get_run(run.info.run_id)\n"
        "assert got.data.metrics == {'x': 1.5}, got.data.metrics\n"
        "print(run.info.run_id)\n"
    )
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=cwd, env={**_clean_env(), **creds},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def _calls(entries: list[dict[str, Any]], api: str, route: str) -> int:
    return sum(1 for e in entries if e["api"] == api and e["route"] == route and e["status"] < 400)


BUILD_CALL = {"docker": ("docker", "build"), "cloudbuild": ("cloudbuild", "builds.create")}


@pytest.mark.parametrize("builder", ["docker", "cloudbuild"])
def test_up_local_from_the_installed_wheel(
    builder: str, venv: Path, package_dir: Path, home: tuple[Path, dict[str, str]]
):
    cwd, env = home
    before = _files(package_dir)
    name = {"docker": "dk", "cloudbuild": "cb"}[builder]

    def tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(venv / "bin" / "mlflow-gcp"), *args, "--local", "--name", name], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert not check or proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        return proc

    up = tool("up", "--builder", builder)
    assert {"docker": "built with a local Docker daemon", "cloudbuild": "built with Cloud Build"}[builder] in up.stderr
    info = find_running(Path(env["MLFLOW_GCP_EMULATOR_DIR"]))
    assert info is not None, "up --local started no emulator where MLFLOW_GCP_EMULATOR_DIR says"
    admin = EmulatorAdmin(info["base_url"])
    creds = json.loads(tool("env", "--json").stdout)
    _mlflow_logs_a_run(venv, creds, cwd)
    status = json.loads(tool("status", "--json").stdout)
    assert status["ok"] and status["image"]["built_with"] == builder

    start = len(admin.requests())
    tool("up", "--builder", builder)
    again = admin.requests(start)
    assert [f"{e['method']} {e['path']}" for e in again if e["mutating"]] == []
    assert _calls(again, *BUILD_CALL[builder]) == 0

    entrypoint = Edited(package_dir / "server_image" / "entrypoint.py")
    try:
        entrypoint.write(entrypoint.original + b"#")  # one byte more: a comment
        start = len(admin.requests())
        tool("up", "--builder", builder)
        changed = admin.requests(start)
        assert _calls(changed, *BUILD_CALL[builder]) == 1
        assert _calls(changed, "run", "services.update") == 1
        assert _calls(changed, "run", "services.create") == 0
        _mlflow_logs_a_run(venv, creds, cwd)
    finally:
        entrypoint.restore()
    tool("down", "--delete-data", "--yes")
    assert tool("status", check=False).returncode == 7  # all of it is gone
    # Nothing was written next to the package (state and emulator data live in the working directory).
    assert _files(package_dir).keys() == before.keys()
    assert (cwd / ".mlflow-gcp").is_dir()


# --- failures and kills, against the session's emulator ---------------------------------------------------


@pytest.fixture
def wheel_cli(emulator: Any, tmp_path: Path, venv: Path) -> Cli:
    cli = make_cli(emulator, tmp_path)
    cli.command = (str(venv / "bin" / "mlflow-gcp"),)
    cli.cwd = tmp_path
    cli.env = _clean_env(MLFLOW_GCP_EMULATOR_URL=emulator.base_url)
    return cli


def _serving_revision(clients: Clients, project: str) -> str:
    service = clients.run_services().get_service(name=f"projects/{project}/locations/us-central1/services/mlflow-dev")
    return service.latest_ready_revision


def _authenticated_ok(cli: Cli) -> bool:
    creds = cli("env", "--json").json()
    url = f"{creds['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    auth = (creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"])
    return requests.get(url, auth=auth, timeout=30).status_code == 200


def _check_build_identity_and_staging(clients: Clients, project: str) -> None:
    """The staging bucket is locked down and self-cleaning; the build account holds exactly its three roles; the
    builds ran as it, logging to Cloud Logging."""
    email = f"mlflow-dev-build@{project}.iam.gserviceaccount.com"
    member = f"serviceAccount:{email}"
    bucket = clients.storage(project).get_bucket(f"{project}-mlflow-dev-build")
    assert bucket.iam_configuration.uniform_bucket_level_access_enabled
    assert bucket.iam_configuration.public_access_prevention == "enforced"
    assert bucket.labels["managed-by"] == "mlflow-gcp"
    assert [dict(r) for r in bucket.lifecycle_rules] == [
        {"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefix": ["source/"]}}
    ]
    repo = f"projects/{project}/locations/us-central1/repositories/mlflow-dev"
    held = {(repo, b.role) for b in clients.artifact_registry().get_iam_policy(request={"resource": repo}).bindings
            if member in b.members}  # fmt: skip
    held |= {(f"projects/{project}", b.role)
             for b in clients.projects().get_iam_policy(request={"resource": f"projects/{project}"}).bindings
             if member in b.members}  # fmt: skip
    held |= {(bucket.name, b["role"]) for b in bucket.get_iam_policy(requested_policy_version=3).bindings
             if member in b["members"]}  # fmt: skip
    assert held == {
        (repo, "roles/artifactregistry.writer"),
        (f"projects/{project}", "roles/logging.logWriter"),
        (bucket.name, "roles/storage.objectViewer"),
    }
    builds = list(clients.cloud_build().list_builds(request={"parent": f"projects/{project}/locations/us-central1"}))
    assert builds and {b.service_account for b in builds} == {f"projects/{project}/serviceAccounts/{email}"}
    assert {b.options.logging.name for b in builds} == {"CLOUD_LOGGING_ONLY"}


def test_a_broken_dockerfile_fails_the_cloud_build_with_its_log_and_the_fixed_one_converges(
    wheel_cli: Cli, clients: Clients, package_dir: Path
):
    cli = wheel_cli
    cli("up", "--builder", "cloudbuild")
    _check_build_identity_and_staging(clients, cli.project)
    serving = _serving_revision(clients, cli.project)
    dockerfile = Edited(package_dir / "server_image" / "Dockerfile")
    try:
        dockerfile.write(dockerfile.original + b"COPY no-such-file.txt /app/\n")
        failed = cli("up", "--builder", "cloudbuild", check=False)
        assert failed.code == 1, failed.stderr
        assert "ended FAILURE" in failed.stderr
        assert "failing step #0: gcr.io/cloud-builders/docker build -t" in failed.stderr
        assert "last lines of its log:" in failed.stderr and "no-such-file.txt" in failed.stderr
        assert "full log: https://console.cloud.google.com/cloud-build/builds" in failed.stderr
        assert "Traceback" not in failed.stderr
        # The previous revision keeps serving.
        assert _serving_revision(clients, cli.project) == serving and _authenticated_ok(cli)
        dockerfile.write(dockerfile.original + b"LABEL fixed=yes\n")  # the fix makes a new image
        cli("up", "--builder", "cloudbuild")
        assert _serving_revision(clients, cli.project) != serving
        assert cli("status").code == 0
    finally:
        dockerfile.restore()


def test_a_build_account_without_its_registry_role_fails_the_push_and_up_converges_once_it_holds_it(
    wheel_cli: Cli, admin: EmulatorAdmin, clients: Clients, package_dir: Path
):
    """The role is removed behind mlflow-gcp's back; `up` grants it again, but IAM has not propagated it when the
    build pushes (eventual consistency on, grants taking an hour): the build is retried while the grant is young
    (MLFLOW_GCP_IAM_PROPAGATION_SECONDS), then `up` fails with the registry's refusal and the log tail."""
    cli = wheel_cli
    cli("up", "--builder", "cloudbuild")
    serving = _serving_revision(clients, cli.project)
    repo = f"projects/{cli.project}/locations/us-central1/repositories/mlflow-dev"
    ar = clients.artifact_registry()
    policy = ar.get_iam_policy(request={"resource": repo})
    member = f"serviceAccount:mlflow-dev-build@{cli.project}.iam.gserviceaccount.com"
    for binding in policy.bindings:
        if member in binding.members:
            binding.members.remove(member)
    ar.set_iam_policy(request={"resource": repo, "policy": policy})
    entrypoint = Edited(package_dir / "server_image" / "entrypoint.py")
    try:
        entrypoint.write(entrypoint.original + b"#")
        admin.settings(consistency=True, iam_propagation_seconds=3600)
        cli.env["MLFLOW_GCP_IAM_PROPAGATION_SECONDS"] = "2"
        failed = cli("-v", "up", "--builder", "cloudbuild", check=False)
        assert failed.code == 1, failed.stderr
        assert "roles/artifactregistry.writer for " + member in failed.stderr  # the drift was repaired first
        assert 'denied: Permission "artifactregistry.repositories.uploadArtifacts"' in failed.stderr
        assert "trying again" in failed.stderr  # retried while the grant was young
        assert "IAM may still be propagating" in failed.stderr
        assert _serving_revision(clients, cli.project) == serving and _authenticated_ok(cli)
        admin.settings(consistency=False)  # the grant has propagated
        cli("up", "--builder", "cloudbuild")
        assert _serving_revision(clients, cli.project) != serving
    finally:
        entrypoint.restore()


def test_a_kill_during_the_cloud_build_is_finished_by_the_next_run_with_one_build(
    wheel_cli: Cli, admin: EmulatorAdmin, clients: Clients, package_dir: Path
):
    cli = wheel_cli
    cli("up", "--builder", "cloudbuild")
    entrypoint = Edited(package_dir / "server_image" / "entrypoint.py")
    try:
        entrypoint.write(entrypoint.original + b"#")
        # Builds take a while (90 s on GCP, scaled), so the next run finds this one still working.
        admin.settings(latency_profile="realistic", time_scale=0.05)
        start = len(admin.requests())
        # With everything else in place, the image step mutates first: the source upload (1), builds.create (2).
        kill_after(cli, admin, 2, "up", "--builder", "cloudbuild")
        killed = admin.requests(start)
        assert [e["route"] for e in killed if e.get("kill") == "kill"] == ["builds.create"]
        start = len(admin.requests())
        rerun = cli("-v", "up", "--builder", "cloudbuild", "--break-lock")
        finished = admin.requests(start)
        assert _calls(finished, "cloudbuild", "builds.create") == 0
        assert "adopting build" in rerun.stderr
        assert cli("status").code == 0  # (with the changed entrypoint the stack was deployed from)
    finally:
        entrypoint.restore()
        admin.settings(latency_profile="instant")
    repo = f"projects/{cli.project}/locations/us-central1/repositories/mlflow-dev"
    images = list(clients.artifact_registry().list_docker_images(parent=repo))
    assert len(images) == 2, [i.uri for i in images]  # the first up's and the one build of the killed run
    build_bucket = clients.storage(cli.project).bucket(f"{cli.project}-mlflow-dev-build")
    assert [b.name for b in build_bucket.list_blobs()] == []  # the adopted build's source is deleted after it
