"""Cloud Build v1 through the official GAPIC client: builds from a GCS tarball with docker builder steps,
operations carrying the build, failures as GCP reports them, and images pushed to Artifact Registry."""

from __future__ import annotations

import io
import tarfile
from contextlib import nullcontext

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


# --- builds run as a user-specified service account ----------------------------------------------------------

OBJECT_VIEWER = "roles/storage.objectViewer"
AR_WRITER = "roles/artifactregistry.writer"
LOG_WRITER = "roles/logging.logWriter"


def _account(clients, project: str, roles: list[str], account_id: str = "builder") -> str:
    """A service account holding ``roles`` on the project; its resource name."""
    email = (
        clients.iam()
        .projects()
        .serviceAccounts()
        .create(name=f"projects/{project}", body={"accountId": account_id})
        .execute()["email"]
    )
    if roles:
        rm = clients.projects()
        policy = rm.get_iam_policy(request={"resource": f"projects/{project}"})
        for role in roles:
            policy.bindings.add(role=role, members=[f"serviceAccount:{email}"])
        rm.set_iam_policy(request={"resource": f"projects/{project}", "policy": policy})
    return f"projects/{project}/serviceAccounts/{email}"


def _sa_build(clients, project: str, source: cb.Source, account: str, image: str, **options) -> cb.Build:
    """What the tool sends: a regional build as ``account``, logging to Cloud Logging only, one docker build
    step and ``images``."""
    op = clients.cloud_build().create_build(
        request=cb.CreateBuildRequest(
            parent=f"projects/{project}/locations/{LOCATION}",
            project_id=project,
            build=cb.Build(
                source=source,
                steps=[cb.BuildStep(name=DOCKER, args=["build", "-t", image, "."])],
                images=[image],
                service_account=account,
                tags=options.pop("tags", ["mlflow-gcp-test"]),
                options=cb.BuildOptions(logging=options.pop("logging", cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)),
            ),
        )
    )
    with pytest.raises(exceptions.GoogleAPICallError) if options.pop("fails", False) else nullcontext():
        op.result(timeout=60)
    return clients.cloud_build().get_build(
        request=cb.GetBuildRequest(name=f"projects/{project}/locations/{LOCATION}/builds/{op.metadata.build.id}")
    )


def _entries(clients, project: str, build_id: str, **body) -> list[dict]:
    logging = clients._discovery("logging", "v2", "logging")
    entries, token = [], None
    while True:
        request = {
            "resourceNames": [f"projects/{project}"],
            "filter": f'logName="projects/{project}/logs/cloudbuild" AND resource.type="build" '
            f'AND resource.labels.build_id="{build_id}"',
            **body,
            **({"pageToken": token} if token else {}),
        }
        answer = logging.entries().list(body=request).execute()
        entries += answer.get("entries", [])
        token = answer.get("nextPageToken")
        if not token or "pageSize" not in body:
            return entries


def test_a_service_account_build_logs_to_cloud_logging(clients, enabled_project):
    _repo(clients, enabled_project)
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    account = _account(clients, enabled_project, [AR_WRITER, LOG_WRITER])
    # Object read on the staging bucket only (the bucket's own policy).
    bucket = clients.storage(enabled_project).bucket(source.storage_source.bucket)
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": OBJECT_VIEWER, "members": {f"serviceAccount:{account.rsplit('/', 1)[1]}"}})
    bucket.set_iam_policy(policy)

    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:sa"
    build = _sa_build(clients, enabled_project, source, account, image)
    assert build.status == cb.Build.Status.SUCCESS, build.status_detail
    assert build.service_account == account
    assert build.results.images[0].name == image

    entries = _entries(clients, enabled_project, build.id)
    texts = [e.get("textPayload", "") for e in entries]  # an empty line has no payload, as proto3 JSON omits ""
    assert texts[0] == f'starting build "{build.id}"' and texts[-1] == "DONE"
    first = entries[0]
    assert first["logName"] == f"projects/{enabled_project}/logs/cloudbuild"
    assert first["resource"] == {
        "type": "build",
        "labels": {"build_id": build.id, "build_trigger_id": "", "project_id": enabled_project},
    }
    assert first["severity"] == "INFO" and first["labels"]["build_step"] == "MAIN"
    step_lines = [e for e in entries if e["labels"]["build_step"] == "Step #0"]
    assert any(e.get("textPayload", "").startswith("Successfully tagged") for e in step_lines)

    # Paging returns the same entries, in order; "timestamp desc" reverses them.
    paged = _entries(clients, enabled_project, build.id, pageSize=7)
    assert [e["insertId"] for e in paged] == [e["insertId"] for e in entries]
    newest = _entries(clients, enabled_project, build.id, orderBy="timestamp desc")
    assert [e["insertId"] for e in newest] == [e["insertId"] for e in reversed(entries)]
    # The tool's question on failure: the last lines of one step.
    tail = _entries(clients, enabled_project, f'{build.id}" AND labels.build_step="Step #0', orderBy="timestamp desc")
    assert tail and all(e["labels"]["build_step"] == "Step #0" for e in tail)


def test_a_service_account_build_must_keep_logs_out_of_the_default_bucket(clients, enabled_project):
    account = _account(clients, enabled_project, [])
    with pytest.raises(exceptions.BadRequest) as err:
        clients.cloud_build().create_build(
            project_id=enabled_project,
            build=cb.Build(steps=[cb.BuildStep(name=DOCKER, args=["version"])], service_account=account),
        )
    assert "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket'" in (
        err.value.message
    )
    # A logs bucket, or NONE, is enough.
    for build in (
        cb.Build(steps=[cb.BuildStep(name=DOCKER, args=["version"])], service_account=account, logs_bucket="gs://x"),
        cb.Build(
            steps=[cb.BuildStep(name=DOCKER, args=["version"])],
            service_account=account,
            options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.NONE),
        ),
    ):
        clients.cloud_build().create_build(project_id=enabled_project, build=build)


def test_a_service_account_must_exist_and_be_named_in_full(clients, enabled_project):
    cloud_logging = cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)
    for account in (
        f"projects/{enabled_project}/serviceAccounts/ghost@{enabled_project}.iam.gserviceaccount.com",
        f"ghost@{enabled_project}.iam.gserviceaccount.com",
    ):
        with pytest.raises(exceptions.BadRequest):
            clients.cloud_build().create_build(
                project_id=enabled_project,
                build=cb.Build(
                    steps=[cb.BuildStep(name=DOCKER, args=["version"])], service_account=account, options=cloud_logging
                ),
            )


def test_a_service_account_without_registry_write_fails_the_push(clients, enabled_project, emulator):
    _repo(clients, enabled_project)
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    account = _account(clients, enabled_project, [OBJECT_VIEWER, LOG_WRITER])
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:denied"
    build = _sa_build(clients, enabled_project, source, account, image, fails=True)
    denied = (
        'denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
        f'"projects/{enabled_project}/locations/{LOCATION}/repositories/images" (or it may not exist)'
    )
    assert build.status == cb.Build.Status.FAILURE
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.PUSH_FAILED
    assert denied in build.status_detail
    assert denied in [e.get("textPayload") for e in _entries(clients, enabled_project, build.id)]
    assert emulator.world.api("artifactregistry").resolve_image(image) is None


def test_a_service_account_without_object_read_cannot_fetch_the_source(clients, enabled_project):
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    account = _account(clients, enabled_project, [AR_WRITER, LOG_WRITER])
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:nofetch"
    build = _sa_build(clients, enabled_project, source, account, image, fails=True)
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
    email = account.rsplit("/", 1)[1]
    assert f"{email} does not have storage.objects.get access to the Google Cloud Storage object" in (
        build.status_detail
    )
    assert build.steps[0].status == cb.Build.Status.QUEUED


def test_a_service_account_without_log_writer_builds_but_logs_nothing(clients, enabled_project, emulator):
    _repo(clients, enabled_project)
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    account = _account(clients, enabled_project, [OBJECT_VIEWER, AR_WRITER])
    image = f"{LOCATION}-docker.pkg.dev/{enabled_project}/images/mlflow:quiet"
    build = _sa_build(clients, enabled_project, source, account, image)
    assert build.status == cb.Build.Status.SUCCESS
    assert _entries(clients, enabled_project, build.id) == []
    # The emulator's own copy of the log is still there.
    log = requests.get(f"{emulator.base_url}/_emulator/cloudbuild/builds/{build.id}/log", timeout=10).text
    assert "DONE" in log


def test_builds_list_filters_and_pages(clients, enabled_project):
    source = _upload(clients, enabled_project, {"Dockerfile": DOCKERFILE, "main.py": b""})
    ids = {}
    for tag in ("mlflow-gcp-abc123", "mlflow-gcp-other", "mlflow-gcp-third"):
        op = clients.cloud_build().create_build(
            project_id=enabled_project,
            build=cb.Build(source=source, steps=[cb.BuildStep(name=DOCKER, args=["build", "."])], tags=[tag]),
        )
        ids[tag] = op.result(timeout=60).id
    client = clients.cloud_build()

    def listed(filter_: str, **kw) -> list[str]:
        return [b.id for b in client.list_builds(project_id=enabled_project, filter=filter_, **kw)]

    assert listed('tags="mlflow-gcp-abc123"') == [ids["mlflow-gcp-abc123"]]
    assert listed('tags="mlflow-gcp-abc123" AND status="WORKING"') == []
    assert listed('tags="mlflow-gcp-abc123" AND status="SUCCESS"') == [ids["mlflow-gcp-abc123"]]
    assert sorted(listed('tags="mlflow-gcp-abc123" OR build_id="{}"'.format(ids["mlflow-gcp-other"]))) == sorted(
        [ids["mlflow-gcp-abc123"], ids["mlflow-gcp-other"]]
    )
    assert listed('NOT tags:"mlflow-gcp"') == []
    # Newest first, across pages of one.
    pages = list(client.list_builds(request=cb.ListBuildsRequest(project_id=enabled_project, page_size=1)).pages)
    assert [p.builds[0].id for p in pages] == [
        ids["mlflow-gcp-third"],
        ids["mlflow-gcp-other"],
        ids["mlflow-gcp-abc123"],
    ]
    with pytest.raises(exceptions.BadRequest, match="nonsense"):
        listed('nonsense="x"')
    with pytest.raises(exceptions.BadRequest, match="Unparseable filter"):
        listed('tags="x" AND')
