"""``RUN pip install`` for real (emulator/imagebuild/pythonenv.py): a virtualenv per requirements hash, built once
(a file lock), reused by every image and revision with the same requirements; a pin that does not exist fails the
build as `docker build` fails; revisions run with their image's interpreter, so two MLflow versions serve side by
side."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
import requests
from google.api_core import exceptions
from google.api_core.future import polling
from google.cloud import artifactregistry_v1, run_v2

from mlflow_gcp import image_source
from mlflow_gcp.emulator.imagebuild import InstallFailed, PythonEnvironments, python_envs
from mlflow_gcp.emulator.imagebuild.pythonenv import pip_install

LOCATION = "us-central1"
AUTH = {"username": "oauth2accesstoken", "password": "ya29.not-a-real-token"}
POLL = polling.DEFAULT_POLLING.with_delay(initial=0.2, maximum=1.0, multiplier=1.5).with_timeout(300)
SMALL_PIN = "six==1.17.0\n"
# An MLflow other than the default the image pins: the older release of the upgrade test (3.16.1 -> 3.17.2 runs
# tracking migrations 75868b020152 and dc11669786a5; the auth schema is the same).
OLDER_MLFLOW = "3.16.1"

DOCKERFILE = """\
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check -r /app/requirements.txt && echo installed
"""
# MLflow's own server on its own sqlite file: GET /version answers the MLflow the image installed.
MLFLOW_CMD = 'CMD exec mlflow server --host 127.0.0.1 --port "$PORT" --workers 1 --backend-store-uri "sqlite:///$DB"\n'


@pytest.fixture(autouse=True)
def _no_docker_config(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))


def _context(tmp_path: Path, requirements: str, dockerfile: str = DOCKERFILE) -> Path:
    ctx = tmp_path / uuid.uuid4().hex[:8]
    ctx.mkdir()
    (ctx / "requirements.txt").write_text(requirements)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def _log_lines(logs) -> list[str]:
    return [e["stream"] for e in logs if "stream" in e]


# --- what a RUN installs ---------------------------------------------------------------------------------------


def test_the_server_images_run_step_installs_its_requirements_and_nothing_else():
    command = (
        "pip install --no-cache-dir --disable-pip-version-check -r /app/requirements.txt "
        "&& useradd --system --uid 10001 mlflow"
    )
    files = {"/app/requirements.txt": "# pinned\nmlflow[auth]==3.17.2  # the server\npsycopg2-binary==2.9.13\n"}
    assert pip_install(command, files.__getitem__) == "mlflow[auth]==3.17.2\npsycopg2-binary==2.9.13\n"
    assert pip_install("apt-get update && useradd x", files.__getitem__) is None
    given = pip_install("python -m pip install -q six==1.17.0 'attrs>=23'", files.__getitem__)
    assert given == "six==1.17.0\nattrs>=23\n"
    # Comments and blank lines do not make another environment: only what is installed names it.
    same = pip_install("pip install -r /app/requirements.txt", {"/app/requirements.txt": "mlflow[auth]==3.17.2\n"
                       "psycopg2-binary==2.9.13\n"}.__getitem__)  # fmt: skip
    assert PythonEnvironments.key(same or "") == PythonEnvironments.key(pip_install(command, files.__getitem__) or "")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("pip install --target /opt/x six", "cannot honour --target"),
        ("pip install --user six", "cannot honour --user"),
        ("pip install -r missing.txt", "Could not open requirements file"),
    ],
)
def test_a_pip_install_the_emulator_cannot_reproduce_is_refused(command, message):
    from mlflow_gcp.emulator.imagebuild import BuildStepError

    def read(path: str) -> str:
        raise OSError(path)

    with pytest.raises(BuildStepError, match=message):
        pip_install(command, read)


def test_an_environment_is_built_once_under_concurrent_builds_and_then_reused(tmp_path):
    """Two builds of the same requirements at once (a barrier releases them together): one installs, the other waits
    for it and reuses its environment; a third ask is instant. Without the lock both would install."""
    envs = PythonEnvironments(tmp_path / "envs")
    requirements = SMALL_PIN
    barrier = threading.Barrier(2)
    logs: list[list[str]] = [[], []]
    results: list[Path | None] = [None, None]

    def build(i: int) -> None:
        barrier.wait()
        results[i] = envs.ensure(requirements, logs[i].append)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    cold = time.monotonic() - started
    installs = [line for log in logs for line in log if line.startswith("installing requirements (hash cp")]
    assert len(installs) == 1, installs
    assert results[0] == results[1] == envs.path(requirements) / "bin"
    marker = envs.path(requirements) / ".mlflow-gcp-complete"
    built_at = marker.stat().st_mtime_ns
    started = time.monotonic()
    assert envs.ensure(requirements, logs[0].append) == results[0]
    warm = time.monotonic() - started
    assert marker.stat().st_mtime_ns == built_at
    assert warm < 0.05, warm
    print(f"small environment: cold {cold:.2f} s (one install for two concurrent builds), reused in {warm:.4f} s")
    # Its interpreter has what it installed and nothing of the host's (mlflow_gcp, pytest).
    probe = "import importlib.util as u; print([m for m in ('six', 'mlflow_gcp', 'pytest') if u.find_spec(m)])"
    out = subprocess.run([str(results[0] / "python"), "-c", probe], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "['six']"


def test_a_failed_install_leaves_nothing_behind(tmp_path):
    envs = PythonEnvironments(tmp_path / "envs")
    lines: list[str] = []
    with pytest.raises(InstallFailed):
        envs.ensure("six==0.0.999\n", lines.append)
    assert "six==0.0.999" in "".join(lines)
    assert envs.ready("six==0.0.999\n") is None and not envs.path("six==0.0.999\n").exists()


# --- through the Docker Engine API -----------------------------------------------------------------------------


def test_a_pin_that_does_not_exist_fails_the_build_with_the_installers_error(clients, tmp_path):
    ctx = _context(tmp_path, "six==0.0.999\n")
    with pytest.raises(docker.errors.BuildError) as err:
        clients.docker().images.build(path=str(ctx), tag="broken-pin:1")
    # The classic builder's error line, after the step's own output (the installer naming the missing version).
    assert err.value.msg == (
        "The command '/bin/sh -c pip install --no-cache-dir --disable-pip-version-check -r /app/requirements.txt "
        "&& echo installed' returned a non-zero code: 1"
    )
    output = "".join(_log_lines(err.value.build_log))
    assert "six==0.0.999" in output and ("No solution found" in output or "No matching distribution" in output)
    with pytest.raises(docker.errors.ImageNotFound):
        clients.docker().images.get("broken-pin:1")


def test_a_second_build_of_the_same_requirements_does_not_install_again(clients, tmp_path, emulator):
    client = clients.docker()
    first_started = time.monotonic()
    first, _ = client.images.build(path=str(_context(tmp_path, SMALL_PIN)), tag="pinned:1")
    first_took = time.monotonic() - first_started
    env = python_envs(emulator.world.data_dir).path(SMALL_PIN)
    built_at = (env / ".mlflow-gcp-complete").stat().st_mtime_ns
    # Another context (another image) with the same requirements: the same environment, not installed again.
    second_started = time.monotonic()
    second, second_logs = client.images.build(
        path=str(_context(tmp_path, SMALL_PIN, DOCKERFILE + "LABEL other=yes\n")), tag="pinned:2"
    )
    second_took = time.monotonic() - second_started
    assert second.id != first.id
    assert not [line for line in _log_lines(second_logs) if line.startswith("installing requirements")]
    assert (env / ".mlflow-gcp-complete").stat().st_mtime_ns == built_at
    print(f"first build {first_took:.2f} s, second (environment reused) {second_took:.2f} s")


def test_two_mlflow_versions_serve_side_by_side(clients, tmp_path, emulator, enabled_project):
    """The server image's requirements rendered for two MLflow versions (the environments the stack and upgrade tests
    use too), each image deployed as a Cloud Run service: GET /version on each answers its own version."""
    ar = clients.artifact_registry()
    try:
        ar.create_repository(
            parent=f"projects/{enabled_project}/locations/{LOCATION}",
            repository_id="side",
            repository=artifactregistry_v1.Repository(format_=artifactregistry_v1.Repository.Format.DOCKER),
        ).result(timeout=60)
    except exceptions.Conflict:
        pass
    client = clients.docker()
    run = clients.run_services()
    services = {}
    for version in (image_source.pinned_mlflow_version(), OLDER_MLFLOW):
        requirements = dict(image_source.context_files(version))["requirements.txt"].decode()
        started = time.monotonic()
        _image, logs = client.images.build(
            path=str(_context(tmp_path, requirements, DOCKERFILE + MLFLOW_CMD)), tag=f"side:{version}"
        )
        took = time.monotonic() - started
        installed = [line.strip() for line in _log_lines(logs) if line.startswith("installing requirements")]
        print(f"MLflow {version}: build {took:.1f} s {installed or '(environment reused)'}")
        repository = f"{LOCATION}-docker.pkg.dev/{enabled_project}/side/mlflow"
        client.images.get(f"side:{version}").tag(repository, version)
        pushed = list(client.images.push(repository, tag=version, auth_config=AUTH, stream=True, decode=True))
        assert "aux" in pushed[-1], pushed[-3:]
        sid = "mlflow-" + version.replace(".", "-")
        container = run_v2.Container(
            image=f"{repository}:{version}", env=[run_v2.EnvVar(name="DB", value=str(tmp_path / f"{sid}.db"))]
        )
        service = run_v2.Service(
            template=run_v2.RevisionTemplate(containers=[container]), invoker_iam_disabled=True, client="pytest"
        )
        operation = run.create_service(
            parent=f"projects/{enabled_project}/locations/{LOCATION}", service=service, service_id=sid
        )
        services[version] = operation
    answers = {}
    for version, operation in services.items():
        uri = operation.result(polling=POLL).uri
        answers[version] = requests.get(f"{uri}/version", timeout=60).text.strip()
    assert answers == {v: v for v in services}
