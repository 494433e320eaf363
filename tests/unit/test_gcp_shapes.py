"""The tool against the shapes real Google Cloud answers in, as recorded by Config Connector (tests/golden/recordings/),
not the emulator's: error envelopes by API family, `deleted:` policy members, policy versions, traffic statuses and
operations. Bodies are excerpts of the recordings (the file is named with each); pure logic, no server."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httplib2
import pytest
import requests
from google.api_core import exceptions
from googleapiclient.errors import HttpError

from mlflow_gcp import retry
from mlflow_gcp.permissions import denied_permission
from mlflow_gcp.resources._common import is_not_found

# --- error envelopes -------------------------------------------------------------------------------------------


def _discovery_error(status: int, body: dict[str, Any]) -> HttpError:
    """What googleapiclient (sqladmin, iam) raises for this answer."""
    return HttpError(httplib2.Response({"status": status}), json.dumps(body).encode(), uri="https://x.googleapis.com/")


def _rest_error(status: int, body: dict[str, Any]) -> exceptions.GoogleAPICallError:
    """What google-api-core raises for this answer (GAPIC REST transports and google-cloud-storage alike)."""
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.request = requests.Request("GET", "https://x.googleapis.com/v1/thing").prepare()
    return exceptions.from_http_response(response)


# sql-instance-postgres-minimal.log: instances.get of a missing instance. Legacy: errors[], no status.
SQL_404 = {"error": {"code": 404, "errors": [{"domain": "global", "message": "The Cloud SQL instance does not exist.",
                                              "reason": "instanceDoesNotExist"}],
                     "message": "The Cloud SQL instance does not exist."}}  # fmt: skip
# storage-bucket.log: buckets.get of a missing bucket. Legacy.
GCS_404 = {"error": {"code": 404, "errors": [{"domain": "global", "message": "The specified bucket does not exist.",
                                              "reason": "notFound"}],
                     "message": "The specified bucket does not exist."}}  # fmt: skip
# secretmanager-secret.log: secrets.get of a missing secret. google.rpc.Status: status, no errors[].
SM_404 = {"error": {"code": 404, "message": "Secret [projects/1/secrets/s] not found.", "status": "NOT_FOUND"}}
# iam-serviceaccount.log: serviceAccounts.get of a missing account. IAM v1: both.
IAM_404 = {"error": {"code": 404, "errors": [{"domain": "global", "message": "Unknown service account",
                                              "reason": "notFound"}],
                     "message": "Unknown service account", "status": "NOT_FOUND"}}  # fmt: skip
# serviceusage-service.log: Resource Manager refusing. Status, no details.
RM_403 = {"error": {"code": 403, "message": "The caller does not have permission", "status": "PERMISSION_DENIED"}}
# Cloud SQL's second operation on a busy instance, in its family's (legacy) envelope, without the usual wording.
SQL_BUSY = {"error": {"code": 409, "errors": [{"domain": "global", "message": "Operation in progress.",
                                               "reason": "operationInProgress"}],
                      "message": "Operation in progress."}}  # fmt: skip


def _front_end_service_disabled(*, details: bool = True) -> dict[str, Any]:
    """Google's front end (API not enabled) sends both envelopes; ``details=False``: only the legacy part."""
    error: dict[str, Any] = {
        "code": 403,
        "message": "Cloud SQL Admin API is disabled for this project.",
        "errors": [{"domain": "usageLimits", "message": "Access Not Configured.", "reason": "accessNotConfigured"}],
    }
    if details:
        error["status"] = "PERMISSION_DENIED"
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "console", "url": "u"}]},
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
             "domain": "googleapis.com", "metadata": {"service": "sqladmin.googleapis.com"}},
        ]  # fmt: skip
    return {"error": error}


def _front_end_permission_denied() -> dict[str, Any]:
    return {"error": {
        "code": 403,
        "message": "Permission 'iam.serviceAccounts.create' denied on resource (or it may not exist).",
        "status": "PERMISSION_DENIED",
        "errors": [{"domain": "global", "message": "Permission denied.", "reason": "forbidden"}],
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                     "domain": "iam.googleapis.com", "metadata": {"permission": "iam.serviceAccounts.create"}}],
    }}  # fmt: skip


@pytest.mark.parametrize(
    ("make", "body", "reasons"),
    [
        (_discovery_error, SQL_404, ["instanceDoesNotExist"]),
        (_discovery_error, IAM_404, ["notFound"]),
        (_rest_error, GCS_404, ["notFound"]),
        (_rest_error, SM_404, []),
    ],
)
def test_a_404_is_absent_whatever_the_envelope(make: Any, body: dict[str, Any], reasons: list[str]) -> None:
    exc = make(404, body)
    assert retry.http_status(exc) == 404
    assert is_not_found(exc)
    assert retry.error_reasons(exc) == reasons


def test_google_api_core_keeps_no_reason_of_a_legacy_envelope_but_we_read_it() -> None:
    exc = _rest_error(404, GCS_404)
    assert isinstance(exc, exceptions.NotFound)
    assert exc.reason is None  # only an ErrorInfo gives google-api-core a reason
    assert retry.error_reason(exc) == "notFound"


def test_cloud_sql_busy_is_retried_by_its_legacy_reason() -> None:
    exc = _discovery_error(409, SQL_BUSY)
    assert retry.has_reason(exc, "operationInProgress")
    assert retry.is_eventually_consistent(exc)


@pytest.mark.parametrize("make", [_discovery_error, _rest_error])
@pytest.mark.parametrize("details", [True, False])
def test_service_disabled_from_either_part_of_the_front_ends_envelope(make: Any, details: bool) -> None:
    exc = make(403, _front_end_service_disabled(details=details))
    assert retry.is_service_disabled(exc)
    if details:
        assert retry.error_reasons(exc) == ["SERVICE_DISABLED", "accessNotConfigured"]


@pytest.mark.parametrize("make", [_discovery_error, _rest_error])
def test_a_plain_refusal_is_not_service_disabled(make: Any) -> None:
    exc = make(403, RM_403)
    assert retry.http_status(exc) == 403
    assert not retry.is_service_disabled(exc)
    assert not retry.is_eventually_consistent(exc)
    assert retry.error_reasons(exc) == []
    assert denied_permission(exc) is None


@pytest.mark.parametrize("make", [_discovery_error, _rest_error])
def test_the_denied_permission_comes_from_the_error_info_in_both_families(make: Any) -> None:
    assert denied_permission(make(403, _front_end_permission_denied())) == "iam.serviceAccounts.create"


def test_an_operation_error_without_a_body_has_no_reason() -> None:
    """A failed long-running operation: google-api-core builds the exception from a google.rpc.Status proto."""
    from google.rpc import status_pb2

    exc = exceptions.from_grpc_status(9, "Revision 'x' is not ready.", errors=[status_pb2.Status(code=9)])
    assert retry.error_reasons(exc) == []
    assert not retry.is_service_disabled(exc)


# --- Cloud Run: operations and traffic ----------------------------------------------------------------------

# run-service.tf.yaml: the service once its first rollout finished (excerpt).
REV = "projects/example-project/locations/us-central1/services/runservice-1w5ax8rh1otic/revisions/"
RUN_DONE = {
    "name": "projects/example-project/locations/us-central1/services/runservice-1w5ax8rh1otic",
    "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
    "observedGeneration": "1",
    "terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"},
    "latestReadyRevision": REV + "runservice-1w5ax8rh1otic-00001-8bw",
    "latestCreatedRevision": REV + "runservice-1w5ax8rh1otic-00001-8bw",
    "trafficStatuses": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
    "uri": "https://runservice-1w5ax8rh1otic-7id3oidh4q-uc.a.run.app",
}
# run-service.tf.yaml: the metadata of the create operation as first answered.
RUN_PENDING = {
    "name": "projects/example-project/locations/us-central1/services/runservice-1w5ax8rh1otic",
    "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
    "terminalCondition": {"state": "CONDITION_PENDING"},
    "reconciling": True,
}


def _service(body: dict[str, Any]) -> Any:
    from google.cloud import run_v2

    return run_v2.Service.from_json(json.dumps(body), ignore_unknown_fields=True)


def test_latest_traffic_goes_to_the_latest_ready_revision() -> None:
    from mlflow_gcp.resources.run import serving_revisions

    service = _service(RUN_DONE)
    assert service.traffic_statuses[0].revision == ""  # real GCP names none for a LATEST target
    assert serving_revisions(service) == {"runservice-1w5ax8rh1otic-00001-8bw"}


def test_pinned_and_zero_percent_targets() -> None:
    from mlflow_gcp.resources.run import serving_revisions

    body = {**RUN_DONE, "trafficStatuses": [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "runservice-1w5ax8rh1otic-00002-dlq",
         "percent": 100},
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 0},
    ]}  # fmt: skip
    assert serving_revisions(_service(body)) == {"runservice-1w5ax8rh1otic-00002-dlq"}


def test_a_pending_service_serves_nothing_yet_and_has_no_uri() -> None:
    from mlflow_gcp.resources.run import serving_revisions

    service = _service(RUN_PENDING)
    assert service.reconciling and not service.uri and not service.latest_ready_revision
    assert serving_revisions(service) == set()


def test_an_operation_without_done_is_not_done() -> None:
    """Proto3 JSON leaves a false `done` out (run-service.tf.yaml, serviceusage-service.log); the operation
    machinery Context.wait relies on reads its absence as "not done"."""
    from google.longrunning import operations_pb2
    from google.protobuf import json_format

    op = json_format.Parse(json.dumps({"name": "operations/x"}), operations_pb2.Operation())
    assert op.done is False


# --- Cloud SQL ----------------------------------------------------------------------------------------------

# sql-user.log: users.insert's operation as first answered, then polled.
SQL_OP_PENDING = {"kind": "sql#operation", "name": "op-1", "operationType": "CREATE_USER", "status": "PENDING",
                  "targetId": "i", "targetProject": "p"}  # fmt: skip
SQL_OP_DONE = {**SQL_OP_PENDING, "status": "DONE", "endTime": "2024-04-01T12:34:56.123456Z"}


class _SqlCtx:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        answers = list(answers)
        request = SimpleNamespace(execute=lambda: answers.pop(0))
        operations = SimpleNamespace(get=lambda **_: request)
        self.clients = SimpleNamespace(sqladmin=SimpleNamespace(operations=lambda: operations))
        self.names = SimpleNamespace(project="p")
        self.deadline = 30.0

    def api(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def test_a_sql_operation_is_polled_to_done(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_gcp.resources import sql

    monkeypatch.setattr("time.sleep", lambda _s: None)
    ctx = _SqlCtx([{**SQL_OP_PENDING, "status": "RUNNING"}, SQL_OP_DONE])
    assert sql.wait_operation(ctx, SQL_OP_PENDING, "Creating")["status"] == "DONE"


def test_a_failed_sql_operation_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_gcp.errors import MlflowGcpError
    from mlflow_gcp.resources import sql

    monkeypatch.setattr("time.sleep", lambda _s: None)
    failed = {**SQL_OP_DONE, "error": {"kind": "sql#operationErrors", "errors": [
        {"kind": "sql#operationError", "code": "ERROR_RDBMS", "message": "role \"u\" already exists"}]}}  # fmt: skip
    with pytest.raises(MlflowGcpError, match="already exists"):
        sql.wait_operation(_SqlCtx([failed]), SQL_OP_PENDING, "Creating")


def test_users_are_found_by_name_alone() -> None:
    """sql-instance-postgres-minimal.log: the built-in user has no `type`; items carry etag, iamStatus, ..."""
    from mlflow_gcp.resources.sql import StandbyUser, User

    listed = {"kind": "sql#usersList", "items": [
        {"etag": "abcdef0123A=", "host": "", "iamStatus": "IAM_STATUS_UNSPECIFIED", "instance": "i", "kind": "sql#user",
         "name": "postgres", "passwordPolicy": {"status": {}}, "project": "p"},
        {"etag": "abcdef0123A=", "host": "", "iamStatus": "IAM_STATUS_UNSPECIFIED", "instance": "i", "kind": "sql#user",
         "name": "mlflow_a", "passwordPolicy": {"status": {}}, "project": "p", "type": "BUILT_IN"},
    ]}  # fmt: skip
    request = SimpleNamespace(execute=lambda: listed)
    users = SimpleNamespace(list=lambda **_: request)
    ctx = SimpleNamespace(
        clients=SimpleNamespace(sqladmin=SimpleNamespace(users=lambda: users)),
        names=SimpleNamespace(project="p", instance="i", db_users=("mlflow_a", "mlflow_b")),
        state=SimpleNamespace(data={}),
        api=lambda what, fn, *a, **k: fn(*a, **k),
    )
    assert User(ctx).find()["name"] == "mlflow_a"
    assert StandbyUser(ctx).find() is None


# --- IAM policies -------------------------------------------------------------------------------------------

OURS = "serviceAccount:mlflow-run@p.iam.gserviceaccount.com"
# project-iam-and-serviceaccount.log: a project policy after one of the accounts it named was deleted; written
# with version 3, read back as version 1.
DELETED = "deleted:serviceAccount:sa-ulpzmj22am62wyi@p.iam.gserviceaccount.com?uid=112011146970661392355"
OURS_DELETED = "deleted:serviceAccount:mlflow-run@p.iam.gserviceaccount.com?uid=112011146970661392356"
PROJECT_POLICY = {
    "bindings": [
        {"members": [DELETED, "serviceAccount:sa-basic@p.iam.gserviceaccount.com"], "role": "roles/composer.worker"},
        {"members": [OURS_DELETED], "role": "roles/cloudsql.client"},
    ],
    "etag": "BwYAAAAAAAA=",
    "version": 1,
}


class _PolicyStore:
    """get/setIamPolicy over a google.iam.v1 Policy message, counting writes."""

    def __init__(self, body: dict[str, Any]) -> None:
        from google.iam.v1 import policy_pb2
        from google.protobuf import json_format

        self.policy = json_format.ParseDict(body, policy_pb2.Policy())
        self.writes = 0

    def get_iam_policy(self, request: Any) -> Any:
        from google.iam.v1 import policy_pb2

        copy = policy_pb2.Policy()
        copy.CopyFrom(self.policy)
        return copy

    def set_iam_policy(self, request: Any) -> Any:
        self.writes += 1
        self.policy = request["policy"]
        return self.policy

    def members(self, role: str) -> list[str]:
        return sorted(m for b in self.policy.bindings if b.role == role for m in b.members)


def _project_bindings(store: _PolicyStore) -> Any:
    from mlflow_gcp.resources.iam import ProjectBindings

    ctx = SimpleNamespace(
        names=SimpleNamespace(project="p", runtime_account=OURS.split(":", 1)[1]),
        clients=SimpleNamespace(projects=store),
        api=lambda what, fn, *a, retry_on=None, **k: fn(*a, **k),
        fact=lambda key, name, default=None: default,  # nothing recorded yet
        builder="docker",  # (Cloud Build's account is not in this policy)
        granted=lambda member: None,
    )
    return ProjectBindings(ctx)


def test_a_deleted_namesake_does_not_count_as_granted() -> None:
    store = _PolicyStore(PROJECT_POLICY)
    bindings = _project_bindings(store)
    assert [c.field for c in bindings.diff(bindings.find())] == [f"roles/cloudsql.client for {OURS}"]
    bindings.update(bindings.find(), [])
    assert store.members("roles/cloudsql.client") == sorted([OURS, OURS_DELETED])
    assert store.members("roles/composer.worker") == sorted(PROJECT_POLICY["bindings"][0]["members"])
    assert bindings.diff(bindings.find()) == []


def test_revoking_removes_ours_and_leaves_deleted_members() -> None:
    store = _PolicyStore(PROJECT_POLICY)
    bindings = _project_bindings(store)
    bindings.update(bindings.find(), [])
    bindings.delete(bindings.find())
    assert store.members("roles/cloudsql.client") == [OURS_DELETED]
    assert DELETED in store.members("roles/composer.worker")


def test_revoking_when_only_a_deleted_form_remains_writes_nothing() -> None:
    store = _PolicyStore(PROJECT_POLICY)
    bindings = _project_bindings(store)
    bindings.delete(bindings.find())
    assert store.writes == 0
    assert store.members("roles/cloudsql.client") == [OURS_DELETED]


def test_a_policy_read_back_as_version_1_causes_no_write() -> None:
    """Written with version 3 and no conditions, it comes back as version 1: that is no change of ours."""
    granted = [PROJECT_POLICY["bindings"][0], {"members": [OURS_DELETED, OURS], "role": "roles/cloudsql.client"}]
    store = _PolicyStore({**PROJECT_POLICY, "bindings": granted})
    bindings = _project_bindings(store)
    assert store.policy.version == 1
    bindings.update(bindings.find(), [])
    assert store.writes == 0


@pytest.mark.parametrize("grant", [True, False])
def test_toggle_leaves_deleted_members_alone(grant: bool) -> None:
    from mlflow_gcp.resources.iam import SECRET_ROLE, _toggle

    store = _PolicyStore({"bindings": [{"role": SECRET_ROLE, "members": [OURS_DELETED]}], "etag": "CAE=", "version": 1})
    policy = store.get_iam_policy({})
    assert _toggle(policy, SECRET_ROLE, OURS, grant) is grant
    expected = sorted([OURS, OURS_DELETED]) if grant else [OURS_DELETED]
    assert sorted(m for b in policy.bindings for m in b.members) == expected


def test_bucket_policy_with_a_deleted_member() -> None:
    """The same through google-cloud-storage's Policy (members as sets)."""
    from google.api_core.iam import Policy

    from mlflow_gcp.resources.iam import BUCKET_RUNTIME_ROLE, BucketBindings

    body = {"bindings": [{"role": BUCKET_RUNTIME_ROLE, "members": [OURS_DELETED, OURS]}], "etag": "CAE=",
            "version": 1}  # fmt: skip
    written: list[dict[str, Any]] = []
    bucket = SimpleNamespace(
        get_iam_policy=lambda **_: Policy.from_api_repr(json.loads(json.dumps(body))),
        set_iam_policy=lambda policy: written.append(policy.to_api_repr()),
    )
    ctx = SimpleNamespace(
        names=SimpleNamespace(bucket="b", runtime_account=OURS.split(":", 1)[1], client_account="c@p"),
        config=SimpleNamespace(artifacts=SimpleNamespace(users=[]), create_client_key=False),
        clients=SimpleNamespace(storage=SimpleNamespace(bucket=lambda _name: bucket)),
        api=lambda what, fn, *a, retry_on=None, **k: fn(*a, **k),
        fact=lambda key, name, default=None: default,  # nothing recorded yet
    )
    bindings = BucketBindings(ctx)
    assert bindings.diff(bindings.find()) == []
    bindings.delete(bindings.find())
    assert written == [{"bindings": [{"role": BUCKET_RUNTIME_ROLE, "members": [OURS_DELETED]}], "etag": "CAE=",
                        "version": 1}]  # fmt: skip
