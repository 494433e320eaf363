"""Cloud Build v1 through the official GAPIC client: builds from a GCS tarball with docker builder steps,
operations carrying the build, failures as GCP reports them, and images pushed to Artifact Registry."""

from __future__ import annotations

import io
import tarfile

import pytest
import requests
from google.api_core import exceptions
from google.cloud import artifactregistry_v1 as ar
from google.cloud.devtools import cloudbuild_v1 as cb

LOCATION = "us-central1"
DOCKER = "gcr.io/cloud-builders/docker"
DOCKERFILE = b"""\
FROM python:3.11-slim
WORKDIR /srv
COPY . .
ENV APP_MODE=server
ENTRYPOINT ["python", "/srv/main.py"]
"""


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _upload(clients, project: str, files: dict[str, bytes]) -> cb.Source:
    bucket = clients.storage(project).create_bucket(f"{project}-build-src")
    bucket.blob("source/app.tgz").upload_from_string(_tarball(files), content_type="application/gzip")
    return cb.Source(storage_source=cb.StorageSource(bucket=bucket.name, object_="source/app.tgz"))


def _repo(clients, project: str) -> None:
    clients.artifact_registry().create_repository(
        parent=f"projects/{project}/locations/{LOCATION}",
        repository_id="images",
        repository=ar.Repository(format_=ar.Repository.Format.DOCKER),
    ).result(timeout=30)


def _build_and_push(image: str) -> list[cb.BuildStep]:
    return [
        cb.BuildStep(name=DOCKER, args=["build", "-t", image, "."]),
        cb.BuildStep(name=DOCKER, args=["push", image]),
    ]


def test_build_from_a_gcs_tarball_pushes_to_artifact_registry(clients, enabled_project, emulator, admin):
    _repo(clients, enabled_project)
    source = _upload(
        clients,
        enabled_project,
        {
            "Dockerfile": DOCKERFILE,
            "main.py": b"print('hi')\n",
            "notes/secret.txt": b"not for the image",
            ".dockerignore": b"notes\n",
        },
    )
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:$BUILD_ID"
    admin.settings(min_pending_polls=1)
    op = clients.cloud_build().create_build(
        project_id=enabled_project,
        build=cb.Build(
            source=source, steps=[cb.BuildStep(name=DOCKER, args=["build", "-t", image, "."])], images=[image]
        ),
    )
    assert op.operation.name.startswith(f"operations/build/{enabled_project}/")
    build = op.result(timeout=60)
    assert build.status == cb.Build.Status.SUCCESS
    assert op.metadata.build.status == cb.Build.Status.SUCCESS
    assert build.steps[0].status == cb.Build.Status.SUCCESS
    [pushed] = build.results.images
    assert pushed.name == image.replace("$BUILD_ID", build.id)
    assert pushed.digest.startswith("sha256:")

    got = clients.cloud_build().get_build(project_id=enabled_project, id=build.id)
    assert got.status == cb.Build.Status.SUCCESS and got.results.images[0].digest == pushed.digest
    assert got.name.endswith(f"/locations/global/builds/{build.id}")

    record = emulator.world.api("artifactregistry").resolve_image(pushed.name)
    assert record is not None and record.digest == pushed.digest
    assert (record.rootfs / "srv" / "main.py").read_text() == "print('hi')\n"
    assert not (record.rootfs / "srv" / "notes").exists()
    assert record.command() == ["python", str(record.rootfs / "srv" / "main.py")]
    assert record.env == {"APP_MODE": "server"}

    log = requests.get(f"{emulator.base_url}/_emulator/cloudbuild/builds/{build.id}/log", timeout=10).text
    assert "Step #0: Successfully tagged" in log and "DONE" in log


def test_a_failing_step_fails_the_build(clients, enabled_project):
    source = _upload(clients, enabled_project, {"Dockerfile": b"FROM python:3.11-slim\nCOPY missing.py /srv/\n"})
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:v1"
    op = clients.cloud_build().create_build(
        project_id=enabled_project, build=cb.Build(source=source, steps=_build_and_push(image), images=[image])
    )
    with pytest.raises(exceptions.GoogleAPICallError, match="Build failed; check build logs for details"):
        op.result(timeout=60)
    build = clients.cloud_build().get_build(project_id=enabled_project, id=op.metadata.build.id)
    assert build.status == cb.Build.Status.FAILURE
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.USER_BUILD_STEP
    assert build.status_detail == (
        f'Build step failure: build step 0 "{DOCKER}" failed: step exited with non-zero status: 1'
    )
    # The push step never ran.
    assert [s.status for s in build.steps] == [cb.Build.Status.FAILURE, cb.Build.Status.QUEUED]


def test_pushing_to_a_missing_repository_fails_the_step(clients, enabled_project, emulator):
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:v1"
    op = clients.cloud_build().create_build(
        project_id=enabled_project, build=cb.Build(source=source, steps=_build_and_push(image))
    )
    with pytest.raises(exceptions.GoogleAPICallError):
        op.result(timeout=60)
    build_id = op.metadata.build.id
    log = requests.get(f"{emulator.base_url}/_emulator/cloudbuild/builds/{build_id}/log", timeout=10).text
    assert 'Step #1: name unknown: Repository "images" not found' in log


def test_a_missing_source_object_fails_the_fetch(clients, enabled_project):
    clients.storage(enabled_project).create_bucket(f"{enabled_project}-empty")
    op = clients.cloud_build().create_build(
        project_id=enabled_project,
        build=cb.Build(
            source=cb.Source(storage_source=cb.StorageSource(bucket=f"{enabled_project}-empty", object_="nope.tgz")),
            steps=[cb.BuildStep(name=DOCKER, args=["build", "-t", "x", "."])],
        ),
    )
    with pytest.raises(exceptions.GoogleAPICallError):
        op.result(timeout=60)
    build = clients.cloud_build().get_build(project_id=enabled_project, id=op.metadata.build.id)
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
    assert f"gs://{enabled_project}-empty/nope.tgz" in build.status_detail


def test_images_must_be_built_by_a_step(clients, enabled_project):
    _repo(clients, enabled_project)
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    never = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/never-built:v1"
    op = clients.cloud_build().create_build(
        project_id=enabled_project,
        build=cb.Build(
            source=source, steps=[cb.BuildStep(name=DOCKER, args=["build", "-t", "local/x", "."])], images=[never]
        ),
    )
    with pytest.raises(exceptions.GoogleAPICallError):
        op.result(timeout=60)
    build = clients.cloud_build().get_build(project_id=enabled_project, id=op.metadata.build.id)
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.PUSH_IMAGE_NOT_FOUND
    assert never in build.failure_info.detail
    assert build.steps[0].status == cb.Build.Status.SUCCESS


def test_regional_builds_and_operations(clients, enabled_project):
    _repo(clients, enabled_project)
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:v2"
    op = clients.cloud_build().create_build(
        request=cb.CreateBuildRequest(
            parent=f"projects/{enabled_project}/locations/{LOCATION}",
            project_id=enabled_project,
            build=cb.Build(source=source, steps=_build_and_push(image)),
        )
    )
    build = op.result(timeout=60)
    assert build.status == cb.Build.Status.SUCCESS
    assert f"/locations/{LOCATION}/builds/" in build.name
    got = clients.cloud_build().get_build(
        request=cb.GetBuildRequest(name=f"projects/{enabled_project}/locations/{LOCATION}/builds/{build.id}")
    )
    assert got.id == build.id


@pytest.mark.parametrize(
    ("substitutions", "arg", "message"),
    [
        ({}, "$_TAG", 'key in the template "_TAG" is not matched in the substitution list'),
        ({}, "$COMMIT_SHA", 'key in the template "COMMIT_SHA" is not a valid built-in substitution'),
        ({"_UNUSED": "x"}, "plain", 'key "_UNUSED" in the substitution data is not matched in the template'),
    ],
)
def test_substitution_errors_are_400(clients, enabled_project, substitutions, arg, message):
    with pytest.raises(exceptions.BadRequest, match=message):
        clients.cloud_build().create_build(
            project_id=enabled_project,
            build=cb.Build(
                steps=[cb.BuildStep(name=DOCKER, args=["build", "-t", arg, "."])], substitutions=substitutions
            ),
        )


def test_calls_are_refused_until_the_api_is_enabled(clients, project):
    with pytest.raises(exceptions.Forbidden) as err:
        clients.cloud_build().create_build(
            project_id=project, build=cb.Build(steps=[cb.BuildStep(name=DOCKER, args=["version"])])
        )
    assert err.value.reason == "SERVICE_DISABLED"
    assert "Cloud Build API has not been used in project" in err.value.message


def test_a_build_needs_steps_and_unknown_builds_are_404(clients, enabled_project):
    with pytest.raises(exceptions.BadRequest, match="at least one step"):
        clients.cloud_build().create_build(project_id=enabled_project, build=cb.Build())
    with pytest.raises(exceptions.NotFound):
        clients.cloud_build().get_build(project_id=enabled_project, id="00000000-0000-0000-0000-000000000000")
