"""Artifact Registry v1 through the official GAPIC client: repositories as operations, docker images,
errors as GCP answers them, and the registry side used by pushes and Cloud Run."""

from __future__ import annotations

import pytest
import requests
from google.api_core import exceptions
from google.cloud import artifactregistry_v1 as ar

from tests.conftest import enable

LOCATION = "us-central1"


def _create(clients, project: str, repo_id: str = "images", **fields) -> ar.Repository:
    fields.setdefault("format_", ar.Repository.Format.DOCKER)
    op = clients.artifact_registry().create_repository(
        parent=f"projects/{project}/locations/{LOCATION}", repository_id=repo_id, repository=ar.Repository(**fields)
    )
    return op.result(timeout=30)


def _push(clients, tmp_path, uri: str, content: str = "v1") -> str:
    """Build a one-file image with the docker SDK and push it with credentials; returns the digest."""
    (tmp_path / "app.txt").write_text(content)
    (tmp_path / "Dockerfile").write_text(
        'FROM python:3.11-slim\nCOPY app.txt /srv/app.txt\nCMD ["cat", "/srv/app.txt"]\n'
    )
    docker = clients.docker()
    docker.images.build(path=str(tmp_path), tag=uri)
    events = list(
        docker.images.push(
            uri, auth_config={"username": "oauth2accesstoken", "password": "token"}, stream=True, decode=True
        )
    )
    aux = [e["aux"] for e in events if "aux" in e]
    assert aux, events
    return aux[-1]["Digest"]


def test_calls_are_refused_until_the_api_is_enabled(clients, project):
    with pytest.raises(exceptions.Forbidden) as err:
        clients.artifact_registry().list_repositories(parent=f"projects/{project}/locations/{LOCATION}")
    assert err.value.reason == "SERVICE_DISABLED"
    assert "Artifact Registry API has not been used in project" in err.value.message
    enable(clients, project, "artifactregistry.googleapis.com")
    assert list(clients.artifact_registry().list_repositories(parent=f"projects/{project}/locations/{LOCATION}")) == []


def test_repository_lifecycle_runs_operations(clients, enabled_project, admin):
    admin.settings(min_pending_polls=2)
    start = len(admin.requests())
    repo = _create(clients, enabled_project, description="MLflow images", labels={"app": "mlflow"})
    routes = [e["route"] for e in admin.requests(start)]
    assert routes[0] == "repositories.create" and routes.count("operations.get") >= 3
    name = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    assert repo.name == name
    assert repo.format_ == ar.Repository.Format.DOCKER
    assert repo.mode == ar.Repository.Mode.STANDARD_REPOSITORY
    # The operation's response has no registryUri nor times; GET has them
    # (recorded: tests/golden/recordings/artifactregistry-repository.log).
    assert repo.registry_uri == "" and not repo.create_time

    client = clients.artifact_registry()
    got = client.get_repository(name=name)
    assert got.description == "MLflow images" and dict(got.labels) == {"app": "mlflow"}
    assert got.create_time.timestamp() > 0
    assert got.registry_uri == f"{LOCATION}-docker.pkg.dev/{enabled_project}/images"
    assert [r.name for r in client.list_repositories(parent=f"projects/{enabled_project}/locations/{LOCATION}")] == [
        name
    ]
    assert list(client.list_repositories(parent=f"projects/{enabled_project}/locations/europe-west1")) == []

    client.delete_repository(name=name).result(timeout=30)
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        client.get_repository(name=name)
    with pytest.raises(exceptions.NotFound):
        client.delete_repository(name=name)


def test_repository_update_is_synchronous_and_honours_the_mask(clients, enabled_project):
    _create(clients, enabled_project, description="old", labels={"app": "mlflow"})
    client = clients.artifact_registry()
    name = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    before = client.get_repository(name=name)
    updated = client.update_repository(
        repository=ar.Repository(name=name, description="new", labels={"other": "x"}),
        update_mask={"paths": ["description"]},
    )
    assert updated.description == "new" and dict(updated.labels) == {"app": "mlflow"}
    assert updated.update_time >= before.update_time
    assert client.get_repository(name=name).description == "new"
    with pytest.raises(exceptions.BadRequest):
        client.update_repository(
            repository=ar.Repository(name=name, format_=ar.Repository.Format.MAVEN), update_mask={"paths": ["format"]}
        )
    with pytest.raises(exceptions.NotFound):
        client.update_repository(
            repository=ar.Repository(name=name + "-missing", description="x"), update_mask={"paths": ["description"]}
        )


def test_repositories_report_their_scanning_state(clients, enabled_project):
    # recorded: tests/golden/recordings/artifactregistry-repository.log
    standard = _create(clients, enabled_project)
    virtual = _create(
        clients,
        enabled_project,
        "virtual",
        mode=ar.Repository.Mode.VIRTUAL_REPOSITORY,
        virtual_repository_config=ar.VirtualRepositoryConfig(
            upstream_policies=[ar.UpstreamPolicy(id="up", repository=standard.name, priority=1)]
        ),
    )
    state = ar.Repository.VulnerabilityScanningConfig.EnablementState
    assert standard.satisfies_pzi and virtual.satisfies_pzi
    assert standard.vulnerability_scanning_config.enablement_state == state.SCANNING_DISABLED
    assert "containerscanning.googleapis.com is not enabled" in (
        standard.vulnerability_scanning_config.enablement_state_reason
    )
    assert virtual.vulnerability_scanning_config.enablement_state == state.SCANNING_UNSUPPORTED
    got = clients.artifact_registry().get_repository(name=virtual.name)
    assert got.virtual_repository_config.upstream_policies[0].repository == standard.name


def test_duplicate_repository_is_409(clients, enabled_project):
    _create(clients, enabled_project)
    with pytest.raises(exceptions.Conflict, match="the repository already exists"):
        _create(clients, enabled_project)


@pytest.mark.parametrize("repo_id", ["Images", "1images", "images_x", "images-", "a" * 64])
def test_invalid_repository_id_is_400(clients, enabled_project, repo_id):
    with pytest.raises(exceptions.BadRequest, match="Invalid repository ID"):
        _create(clients, enabled_project, repo_id)


def test_repository_needs_a_format(clients, enabled_project):
    with pytest.raises(exceptions.BadRequest, match="format"):
        _create(clients, enabled_project, format_=ar.Repository.Format.FORMAT_UNSPECIFIED)


def test_unknown_fields_are_rejected(emulator, enabled_project):
    r = requests.post(
        f"{emulator.base_url}/artifactregistry/v1/projects/{enabled_project}/locations/{LOCATION}/repositories",
        params={"repositoryId": "images"},
        json={"format": "DOCKER", "bogus": True},
        timeout=10,
    )
    assert r.status_code == 400
    assert 'Unknown name "bogus"' in r.json()["error"]["message"]


def test_pushed_images_are_listed_and_resolvable(clients, enabled_project, emulator, tmp_path):
    _create(clients, enabled_project)
    uri = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/team/mlflow:v1"
    digest = _push(clients, tmp_path, uri)
    parent = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    images = list(clients.artifact_registry().list_docker_images(parent=parent))
    assert len(images) == 1
    image = images[0]
    # Slashes in the image name are escaped in the resource name, not in the uri.
    assert image.name == f"{parent}/dockerImages/team%2Fmlflow@{digest}"
    assert image.uri == f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/team/mlflow@{digest}"
    assert list(image.tags) == ["v1"]
    assert image.image_size_bytes == 2
    assert image.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert image.upload_time.timestamp() > 0 and image.update_time.timestamp() > 0
    assert clients.artifact_registry().get_docker_image(name=image.name).uri == image.uri

    registry = emulator.world.api("artifactregistry")
    by_tag = registry.resolve_image(uri)
    by_digest = registry.resolve_image(f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/team/mlflow@{digest}")
    assert by_tag is not None and by_digest is not None
    assert by_tag.digest == by_digest.digest == digest
    assert (by_tag.rootfs / "srv" / "app.txt").read_text() == "v1"
    assert by_tag.command() == ["cat", str(by_tag.rootfs / "srv" / "app.txt")]
    assert registry.resolve_image(f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/team/mlflow:v2") is None
    assert registry.resolve_image(f"{LOCATION}-docker.pkg.dev/{enabled_project}/nope/team/mlflow:v1") is None


def test_a_tag_moves_to_the_newest_push(clients, enabled_project, emulator, tmp_path):
    _create(clients, enabled_project)
    uri = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:latest"
    first = _push(clients, tmp_path, uri, "one")
    second = _push(clients, tmp_path, uri, "two")
    assert first != second
    parent = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    tags = {
        i.uri.rsplit("@", 1)[1]: list(i.tags) for i in clients.artifact_registry().list_docker_images(parent=parent)
    }
    assert tags == {first: [], second: ["latest"]}
    assert emulator.world.api("artifactregistry").resolve_image(uri).digest == second


def test_missing_docker_image_is_404(clients, enabled_project):
    _create(clients, enabled_project)
    parent = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    with pytest.raises(exceptions.NotFound):
        clients.artifact_registry().get_docker_image(name=f"{parent}/dockerImages/mlflow@sha256:{'0' * 64}")
    with pytest.raises(exceptions.NotFound):
        list(clients.artifact_registry().list_docker_images(parent=parent.replace("/images", "/other")))


def test_deleting_a_repository_deletes_its_images(clients, enabled_project, emulator, tmp_path):
    _create(clients, enabled_project)
    uri = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:v1"
    _push(clients, tmp_path, uri)
    registry = emulator.world.api("artifactregistry")
    assert registry.resolve_image(uri) is not None
    name = f"projects/{enabled_project}/locations/{LOCATION}/repositories/images"
    clients.artifact_registry().delete_repository(name=name).result(timeout=30)
    assert registry.resolve_image(uri) is None
    _create(clients, enabled_project)
    assert list(clients.artifact_registry().list_docker_images(parent=name)) == []


def test_register_image_requires_the_repository(clients, enabled_project, emulator, tmp_path):
    from mlflow_gcp.emulator.core.errors import GcpError
    from mlflow_gcp.emulator.core.images import ImageRecord

    record = ImageRecord(
        uri=f"{LOCATION}-docker.pkg.dev/{enabled_project}/missing/mlflow:v1",
        digest="sha256:" + "1" * 64,
        rootfs=tmp_path,
    )
    with pytest.raises(GcpError) as err:
        emulator.world.api("artifactregistry").register_image(record, ["v1"])
    assert err.value.code == 404 and 'Repository "missing" not found' in err.value.message
