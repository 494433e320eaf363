"""The Docker Engine API through the docker SDK: builds, inspect, tag, list, remove, and pushes to the
emulated Artifact Registry (denied pushes are errorDetail lines, as docker-py's push() does not raise)."""

from __future__ import annotations

import io
import tarfile
import uuid

import docker
import pytest
from google.cloud import artifactregistry_v1 as ar

from tests.conftest import enable

LOCATION = "us-central1"
AUTH = {"username": "oauth2accesstoken", "password": "ya29.not-a-real-token"}
SMALL_PIN = "six==1.17.0\n"

DOCKERFILE = """\
# syntax=docker/dockerfile:1
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
COPY server/ ./server/
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
ENV MLFLOW_PORT=5000 \\
    GREETING="hello world"
RUN pip install --no-cache-dir -r requirements.txt
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["--port", "5000"]
"""


@pytest.fixture(autouse=True)
def _no_docker_config(tmp_path_factory, monkeypatch):
    # docker-py falls back to ~/.docker/config.json credentials; a test about auth must not see any.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))


@pytest.fixture
def context(tmp_path):
    # RUN pip install runs for real (emulator/imagebuild/pythonenv.py): a small pin, installed once for the suite.
    (tmp_path / "requirements.txt").write_text(SMALL_PIN)
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "app.py").write_text("print('serving')\n")
    (tmp_path / "server" / "conf").mkdir()
    (tmp_path / "server" / "conf" / "settings.ini").write_text("[x]\n")
    # Tests share one daemon: a unique file keeps each test's image its own (equal contexts share an id).
    (tmp_path / "server" / "build-id.txt").write_text(uuid.uuid4().hex)
    (tmp_path / "entrypoint.sh").write_text('#!/bin/sh\nexec python /app/server/app.py "$@"\n')
    (tmp_path / "entrypoint.sh").chmod(0o755)
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    return tmp_path


def _repo(clients, project: str, repo_id: str = "images") -> None:
    clients.artifact_registry().create_repository(
        parent=f"projects/{project}/locations/{LOCATION}",
        repository_id=repo_id,
        repository=ar.Repository(format_=ar.Repository.Format.DOCKER),
    ).result(timeout=30)


def _errors(events: list[dict]) -> list[str]:
    return [e["errorDetail"]["message"] for e in events if "errorDetail" in e]


def test_ping_and_version(clients):
    client = clients.docker()
    assert client.ping() is True
    version = client.version()
    assert version["ApiVersion"] == "1.45" and version["Os"] == "linux"


def test_too_new_api_version_is_refused(clients):
    client = docker.DockerClient(base_url=clients.docker().api.base_url, version="1.99")
    with pytest.raises(docker.errors.APIError, match=r"client version 1\.99 is too new"):
        client.images.list()


def test_build_records_the_config_and_files(clients, context, emulator):
    client = clients.docker()
    image, logs = client.images.build(path=str(context), tag="mlflow-server:dev")
    streams = [e["stream"] for e in logs if "stream" in e]
    assert streams[0] == "Step 1/10 : FROM python:3.11-slim\n"
    assert any(s.startswith("Step 7/10 : RUN pip install") for s in streams)
    assert streams[-2:] == [f"Successfully built {image.id[7:19]}\n", "Successfully tagged mlflow-server:dev\n"]
    assert image.tags == ["mlflow-server:dev"]
    config = image.attrs["Config"]
    assert config["WorkingDir"] == "/app"
    assert config["Entrypoint"] == ["/usr/local/bin/entrypoint.sh"]
    assert config["Cmd"] == ["--port", "5000"]
    assert config["ExposedPorts"] == {"5000/tcp": {}}
    assert "MLFLOW_PORT=5000" in config["Env"] and "GREETING=hello world" in config["Env"]
    assert any(e.startswith("PATH=") for e in config["Env"])
    rootfs = emulator.world.data_dir / "docker" / "images" / image.id[7:] / "rootfs"
    assert (rootfs / "app" / "requirements.txt").read_text() == SMALL_PIN
    assert (rootfs / "app" / "server" / "conf" / "settings.ini").is_file()
    assert (rootfs / "usr" / "local" / "bin" / "entrypoint.sh").stat().st_mode & 0o111


def test_rebuilding_an_unchanged_context_gives_the_same_id(clients, context):
    client = clients.docker()
    first, _ = client.images.build(path=str(context), tag="same:1")
    again, _ = client.images.build(path=str(context), tag="same:2")
    assert again.id == first.id
    assert set(client.images.get(first.id).tags) == {"same:1", "same:2"}
    (context / "server" / "app.py").write_text("print('changed')\n")
    changed, _ = client.images.build(path=str(context), tag="same:3")
    assert changed.id != first.id


def test_a_custom_context_with_a_dockerfile_elsewhere(clients):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"build/Dockerfile.prod": b"FROM scratch\nCOPY a.txt /a.txt\n", "a.txt": b"a"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = clients.docker().images.build(
        fileobj=buf, custom_context=True, encoding="gzip", dockerfile="build/Dockerfile.prod", tag="custom:1"
    )
    assert image.attrs["Config"]["Cmd"] is None and image.attrs["Config"]["Env"] is None


def test_missing_copy_source_is_a_build_error(clients, context):
    (context / "Dockerfile").write_text("FROM python:3.11-slim\nWORKDIR /app\nCOPY missing.txt .\n")
    with pytest.raises(docker.errors.BuildError) as err:
        clients.docker().images.build(path=str(context), tag="broken:1")
    assert "COPY failed: file not found in build context" in err.value.msg
    log = list(err.value.build_log)
    assert log[0] == {"stream": "Step 1/3 : FROM python:3.11-slim\n"}
    assert "errorDetail" in log[-1]


def test_copy_may_not_leave_the_context(clients, context):
    (context / "Dockerfile").write_text("FROM python:3.11-slim\nCOPY ../secret /x\n")
    with pytest.raises(docker.errors.BuildError, match="forbidden path outside the build context"):
        clients.docker().images.build(path=str(context))


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("FROM python:3.11-slim\nCOPPY . /app\n", "dockerfile parse error line 2: unknown instruction: COPPY"),
        ("WORKDIR /app\nCOPY . .\n", "no build stage in current context"),
        ("FROM python:3.11-slim\nCOPY --frm=x a b\n", "unknown flag: frm"),
    ],
)
def test_unparsable_dockerfile_is_refused_before_the_build(clients, context, dockerfile, message):
    # The classic builder parses first and answers 400 before streaming anything; docker-py raises APIError
    # (not BuildError) for it, as it does against a real daemon.
    (context / "Dockerfile").write_text(dockerfile)
    with pytest.raises(docker.errors.APIError) as err:
        clients.docker().images.build(path=str(context))
    assert err.value.status_code == 400
    assert message in err.value.explanation


def test_inspect_tag_list_and_remove(clients, context):
    client = clients.docker()
    with pytest.raises(docker.errors.ImageNotFound, match="No such image: nothing-here:latest"):
        client.images.get("nothing-here")
    image, _ = client.images.build(path=str(context), tag="lifecycle:1")
    assert image.tag("lifecycle", "2") is True
    assert set(client.images.get("lifecycle:2").tags) == {"lifecycle:1", "lifecycle:2"}
    assert image.id in [i.id for i in client.images.list(name="lifecycle")]
    assert image.id not in [i.id for i in client.images.list(name="other-name")]
    client.images.remove("lifecycle:1")
    assert client.images.get(image.id).tags == ["lifecycle:2"]
    client.images.remove("lifecycle:2")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image.id)


def test_push_registers_the_image_in_artifact_registry(clients, context, enabled_project, emulator):
    _repo(clients, enabled_project)
    client = clients.docker()
    image, _ = client.images.build(path=str(context), tag="mlflow-server:dev")
    repository = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow"
    assert image.tag(repository, "v1")
    events = list(client.images.push(repository, tag="v1", auth_config=AUTH, stream=True, decode=True))
    assert events[0] == {"status": f"The push refers to repository [{repository}]"}
    assert not _errors(events)
    assert any(e.get("status") == "Pushed" for e in events)
    aux = events[-1]["aux"]
    assert aux["Tag"] == "v1" and aux["Digest"].startswith("sha256:")
    assert {"status": f"v1: digest: {aux['Digest']} size: {aux['Size']}"} in events
    assert client.images.get(image.id).attrs["RepoDigests"] == [f"{repository}@{aux['Digest']}"]

    parent = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    listed = list(clients.artifact_registry().list_docker_images(parent=parent))
    assert [(list(i.tags), i.uri) for i in listed] == [(["v1"], f"{repository}@{aux['Digest']}")]

    record = emulator.world.api("artifactregistry").resolve_image(f"{repository}:v1")
    assert record.digest == aux["Digest"]
    assert (record.rootfs / "app" / "server" / "app.py").read_text() == "print('serving')\n"
    assert record.command() == [str(record.rootfs / "usr/local/bin/entrypoint.sh"), "--port", "5000"]
    assert record.host_workdir() == record.rootfs / "app"
    assert record.env == {"MLFLOW_PORT": "5000", "GREETING": "hello world"}
    assert record.exposed_ports == [5000]

    # Pushing the same image again finds every layer in the registry and reports the same digest.
    again = list(client.images.push(repository, tag="v1", auth_config=AUTH, stream=True, decode=True))
    assert again[-1]["aux"]["Digest"] == aux["Digest"]
    assert all(e["status"] == "Layer already exists" for e in again if e.get("id") and e["status"] != "Preparing")


def test_push_to_a_missing_repository_is_denied_in_the_stream(clients, context, enabled_project):
    client = clients.docker()
    repository = f"{LOCATION}-docker.pkg.dev/{enabled_project}/nope/mlflow"
    client.images.build(path=str(context), tag=f"{repository}:v1")
    events = list(client.images.push(repository, tag="v1", auth_config=AUTH, stream=True, decode=True))
    assert _errors(events) == ['name unknown: Repository "nope" not found']
    assert not any("aux" in e for e in events)


def test_push_without_credentials_is_denied(clients, context, enabled_project, emulator):
    _repo(clients, enabled_project)
    client = clients.docker()
    repository = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow"
    client.images.build(path=str(context), tag=f"{repository}:v1")
    text = client.api.push(repository, tag="v1")  # the non-streaming form returns the raw lines
    assert "denied: Unauthenticated request. Unauthenticated requests do not have permission" in text
    assert emulator.world.api("artifactregistry").resolve_image(f"{repository}:v1") is None


def test_push_with_the_api_disabled_is_denied(clients, context, project):
    client = clients.docker()
    repository = f"{LOCATION}-docker.pkg.dev/{project}/images/mlflow"
    client.images.build(path=str(context), tag=f"{repository}:v1")
    events = list(client.images.push(repository, tag="v1", auth_config=AUTH, stream=True, decode=True))
    [error] = _errors(events)
    assert error.startswith("denied: Artifact Registry API has not been used in project")


def test_push_of_an_unknown_tag_and_to_other_registries(clients, context, enabled_project):
    client = clients.docker()
    repository = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow"
    client.images.build(path=str(context), tag=f"{repository}:v1")
    events = list(client.images.push(repository, tag="v2", auth_config=AUTH, stream=True, decode=True))
    assert _errors(events) == [f"tag does not exist: {repository}:v2"]
    client.images.build(path=str(context), tag="ghcr.io/someone/mlflow:v1")
    events = list(client.images.push("ghcr.io/someone/mlflow", tag="v1", auth_config=AUTH, stream=True, decode=True))
    assert "no such host" in _errors(events)[0]


def test_login_then_push_uses_the_stored_credentials(clients, context, project):
    enable(clients, project, "artifactregistry.googleapis.com")
    _repo(clients, project)
    client = clients.docker()
    registry = f"{LOCATION}-docker.pkg.dev"
    assert client.login(registry=registry, **AUTH)["Status"] == "Login Succeeded"
    repository = f"{registry}/{project}/images/mlflow"
    client.images.build(path=str(context), tag=f"{repository}:v1")
    events = list(client.images.push(repository, tag="v1", stream=True, decode=True))
    assert not _errors(events) and events[-1]["aux"]["Tag"] == "v1"
