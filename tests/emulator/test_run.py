"""Cloud Run Admin v2 through the official GAPIC client (REST): deploys run the image for real, behind a
local front end, with secrets, Cloud SQL links, rolling updates, probes, body limits and IAM."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from google.api import launch_stage_pb2
from google.api_core import exceptions
from google.api_core.future import polling
from google.cloud import artifactregistry_v1, run_v2
from google.iam.v1 import policy_pb2

from mlflow_gcp.emulator.core.images import ImageRecord
from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.conftest import enable

LOCATION = "us-central1"
POLL = polling.DEFAULT_POLLING.with_delay(initial=0.1, maximum=0.5, multiplier=1.5).with_timeout(120)

ECHO_SERVER = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.environ.get("EXIT_CODE"):
    print("exiting as asked", flush=True)
    sys.exit(int(os.environ["EXIT_CODE"]))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            failing = os.environ.get("HEALTH") == "fail"
            return self._send(500 if failing else 200, {"ok": not failing})
        if path == "/cloudsql":
            d = os.environ.get("MLFLOW_GCP_CLOUDSQL_DIR")
            links = {n: os.readlink(os.path.join(d, n)) for n in sorted(os.listdir(d))} if d else None
            return self._send(200, {"dir": d, "links": links})
        if path == "/":
            return self._send(200, {
                "greeting": os.environ.get("GREETING"),
                "secret": os.environ.get("DB_PASSWORD"),
                "image_var": os.environ.get("IMAGE_VAR"),
                "k_service": os.environ.get("K_SERVICE"),
                "k_revision": os.environ.get("K_REVISION"),
                "k_configuration": os.environ.get("K_CONFIGURATION"),
                "port": os.environ.get("PORT"),
                "host": self.headers.get("Host"),
                "path": self.path,
                "cwd": os.getcwd(),
                "pid": os.getpid(),
                "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            })
        self._send(404, {"error": "not found"})

    def do_POST(self):
        received = 0
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                while size:
                    piece = self.rfile.read(min(size, 1 << 16))
                    received += len(piece)
                    size -= len(piece)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", 0))
            while left:
                piece = self.rfile.read(min(left, 1 << 16))
                received += len(piece)
                left -= len(piece)
        self._send(200, {"received": received, "protocol": self.request_version})


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# End-to-end HTTP/2 without TLS (prior knowledge), written on the `h2` library.
H2C_SERVER = r"""
import json, os, socket, threading
import h2.config, h2.connection, h2.events


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    received = {}
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    received[event.stream_id] = 0
                elif isinstance(event, h2.events.DataReceived):
                    received[event.stream_id] += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    body = json.dumps({"received": received.pop(event.stream_id), "protocol": "h2c"}).encode()
                    conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                        ("content-length", str(len(body)))])
                    conn.send_data(event.stream_id, body, end_stream=True)
            sock.sendall(conn.data_to_send())
    except Exception:
        pass
    finally:
        sock.close()


listener = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    client, _ = listener.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
"""

# A real ASGI server speaking h2c, as the MLflow image does (hypercorn), with a large GET.
H2C_HYPERCORN = r"""
import asyncio, os
from hypercorn.asyncio import serve
from hypercorn.config import Config

BIG = b"z" * (4 * 1024 * 1024)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            done = "lifespan.startup.complete" if message["type"] == "lifespan.startup" else None
            await send({"type": done or "lifespan.shutdown.complete"})
            if not done:
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(BIG))]})
    for i in range(0, len(BIG), 1 << 16):
        await send({"type": "http.response.body", "body": BIG[i : i + (1 << 16)], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


config = Config()
config.bind = [f"127.0.0.1:{os.environ['PORT']}"]
asyncio.run(serve(app, config))
"""

# --- helpers -------------------------------------------------------------------------------------------


def _wait(op):
    return op.result(polling=POLL)


def _number(clients: Clients, project: str) -> str:
    return clients.projects().get_project(name=f"projects/{project}").name.split("/")[1]


def _compute_sa(clients: Clients, project: str) -> str:
    return f"{_number(clients, project)}-compute@developer.gserviceaccount.com"


def _image(emulator: Emulator, clients: Clients, project: str, tag: str = "v1") -> str:
    """Create an Artifact Registry repository and put the test image in it; returns its URI."""
    ar = clients.artifact_registry()
    parent = f"projects/{project}/locations/{LOCATION}"
    try:
        ar.create_repository(
            parent=parent,
            repository_id="apps",
            repository=artifactregistry_v1.Repository(format_=artifactregistry_v1.Repository.Format.DOCKER),
        ).result(timeout=60)
    except exceptions.Conflict:
        pass
    rootfs = Path(tempfile.mkdtemp(prefix="run-img-"))
    (rootfs / "app").mkdir()
    (rootfs / "app" / "server.py").write_text(ECHO_SERVER)
    (rootfs / "app" / "h2c_server.py").write_text(H2C_SERVER)
    (rootfs / "app" / "h2c_hypercorn.py").write_text(H2C_HYPERCORN)
    uri = f"{LOCATION}-docker.pkg.dev/{project}/apps/echo:{tag}"
    record = ImageRecord(
        uri=uri,
        digest="sha256:" + hashlib.sha256((ECHO_SERVER + H2C_SERVER + H2C_HYPERCORN + tag).encode()).hexdigest(),
        rootfs=rootfs,
        entrypoint=["python", "/app/server.py"],
        env={"IMAGE_VAR": "from-image"},
        workdir="/app",
    )
    emulator.world.api("artifactregistry").register_image(record, [tag])
    return uri


def _service(image: str, *, env: dict[str, str] | None = None, public: bool = True, **fields) -> run_v2.Service:
    container = run_v2.Container(
        image=image, env=[run_v2.EnvVar(name=k, value=v) for k, v in (env or {}).items()], **fields
    )
    return run_v2.Service(
        template=run_v2.RevisionTemplate(containers=[container]), invoker_iam_disabled=public, client="pytest"
    )


def _deploy(clients: Clients, project: str, service: run_v2.Service, sid: str = "echo") -> run_v2.Service:
    op = clients.run_services().create_service(
        parent=f"projects/{project}/locations/{LOCATION}", service=service, service_id=sid
    )
    return _wait(op)


def _grant_project(clients: Clients, project: str, member: str, role: str, add: bool = True) -> None:
    rm = clients.projects()
    policy = rm.get_iam_policy(request={"resource": f"projects/{project}"})
    if add:
        policy.bindings.add(role=role, members=[member])
    else:
        for b in policy.bindings:
            if b.role == role and member in b.members:
                b.members.remove(member)
    rm.set_iam_policy(request={"resource": f"projects/{project}", "policy": policy})


def _secret(clients: Clients, project: str, secret_id: str, *payloads: bytes) -> str:
    import google_crc32c

    sm = clients.secret_manager()
    secret = sm.create_secret(
        parent=f"projects/{project}", secret_id=secret_id, secret={"replication": {"automatic": {}}}
    )
    for data in payloads:
        sm.add_secret_version(parent=secret.name, payload={"data": data, "data_crc32c": google_crc32c.value(data)})
    return secret.name


def _grant_secret(clients: Clients, secret: str, member: str) -> None:
    sm = clients.secret_manager()
    policy = sm.get_iam_policy(request={"resource": secret})
    policy.bindings.add(role="roles/secretmanager.secretAccessor", members=[member])
    sm.set_iam_policy(request={"resource": secret, "policy": policy})


def _secret_env(name: str, secret: str, version: str) -> run_v2.EnvVar:
    return run_v2.EnvVar(
        name=name,
        value_source=run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=version)),
    )


def _until(check, timeout: float = 15.0):
    """Poll ``check`` until it returns something truthy (eventual state, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- tests ---------------------------------------------------------------------------------------------


def test_create_polls_an_operation_then_serves_the_revision(emulator, clients, enabled_project, admin):
    uri = _image(emulator, clients, enabled_project)
    run = clients.run_services()
    op = run.create_service(
        parent=f"projects/{enabled_project}/locations/{LOCATION}",
        service=_service(uri, env={"GREETING": "hello"}),
        service_id="echo",
    )
    name = f"projects/{enabled_project}/locations/{LOCATION}/services/echo"
    assert op.metadata.name == name  # metadata is the Service
    svc = _wait(op)
    assert svc.name == name and svc.uid and svc.etag and svc.create_time and svc.update_time
    assert svc.generation == 1 and svc.observed_generation == 1 and not svc.reconciling
    assert svc.creator and svc.last_modifier and svc.client == "pytest"
    assert svc.launch_stage == launch_stage_pb2.GA and svc.ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL
    assert re.fullmatch(rf"{name}/revisions/echo-00001-[a-z0-9]{{3}}", svc.latest_ready_revision)
    assert svc.latest_created_revision == svc.latest_ready_revision
    assert svc.terminal_condition.type_ == "Ready"
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert {c.type_: c.state.name for c in svc.conditions} == {
        "RoutesReady": "CONDITION_SUCCEEDED",
        "ConfigurationsReady": "CONDITION_SUCCEEDED",
    }
    latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    assert [(t.type_, t.percent) for t in svc.traffic] == [(latest, 100)]
    # A LATEST target's status names no revision (recorded: tests/golden/recordings/run-service.tf.yaml).
    assert [(t.type_, t.percent, t.revision) for t in svc.traffic_statuses] == [(latest, 100, "")]
    # Cloud Run's defaults are filled in.
    container = svc.template.containers[0]
    assert svc.template.service_account == _compute_sa(clients, enabled_project)
    assert (container.ports[0].name, container.ports[0].container_port) == ("http1", 8080)
    assert container.startup_probe.tcp_socket.port == 8080 and container.startup_probe.timeout_seconds == 240
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", svc.uri) and list(svc.urls) == [svc.uri]

    r = requests.get(svc.uri + "/?q=1", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    revision = svc.latest_ready_revision.rsplit("/", 1)[1]
    assert body["greeting"] == "hello" and body["image_var"] == "from-image"
    assert (body["k_service"], body["k_revision"], body["k_configuration"]) == ("echo", revision, "echo")
    assert body["path"] == "/?q=1" and body["host"] == svc.uri.removeprefix("http://")
    assert body["port"] != "8080" and body["cwd"].endswith("/app")
    assert body["x_forwarded_for"] == "203.0.113.9, 127.0.0.1"  # the caller's address is appended

    assert run.get_service(name=name).latest_ready_revision == svc.latest_ready_revision
    assert [s.name for s in run.list_services(parent=f"projects/{enabled_project}/locations/{LOCATION}")] == [name]
    revisions = list(clients.run_revisions().list_revisions(parent=name))
    assert [r.name for r in revisions] == [svc.latest_ready_revision]
    assert revisions[0].service_account == svc.template.service_account
    assert {c.type_: c.state.name for c in revisions[0].conditions}["Ready"] == "CONDITION_SUCCEEDED"
    with pytest.raises(exceptions.Conflict, match="already exists"):
        _deploy(clients, enabled_project, _service(uri))


def test_googles_public_sample_image_is_served(emulator, clients, enabled_project):
    # GCP deploys and serves gcr.io/cloudrun/hello (recorded: tests/golden/recordings/run-service.tf.yaml);
    # the emulator runs a built-in stand-in for it, behind the service's front end.
    run = clients.run_services()
    op = run.create_service(
        parent=f"projects/{enabled_project}/locations/{LOCATION}",
        service=_service("gcr.io/cloudrun/hello"),
        service_id="hello",
    )
    first = op.metadata  # the service as accepted: no status yet
    assert first.reconciling and first.terminal_condition.state == run_v2.Condition.State.CONDITION_PENDING
    assert not first.uri and not first.latest_created_revision and not first.conditions
    svc = _wait(op)
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert op.metadata.observed_generation == 1 and op.metadata.latest_ready_revision == svc.latest_ready_revision
    r = requests.get(svc.uri, timeout=10)
    assert r.status_code == 200 and "It's running!" in r.text
    assert svc.latest_ready_revision.rsplit("/", 1)[1] in r.text

    deleting = run.delete_service(name=svc.name)
    assert deleting.metadata.generation == 2 and deleting.metadata.delete_time and deleting.metadata.expire_time
    deleted = _wait(deleting)
    assert deleted.observed_generation == 2 and not deleted.reconciling


def test_missing_image_fails_the_deploy(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    missing = uri.replace(":v1", ":nope")
    with pytest.raises(exceptions.FailedPrecondition) as err:
        _deploy(clients, enabled_project, _service(missing))
    assert f"is not ready and cannot serve traffic. Image '{missing}' not found." in err.value.message
    name = f"projects/{enabled_project}/locations/{LOCATION}/services/echo"
    svc = clients.run_services().get_service(name=name)
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert svc.latest_created_revision and not svc.latest_ready_revision
    assert requests.get(svc.uri, timeout=10).status_code == 503


def test_secret_env_is_resolved_at_its_pinned_version(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    secret = _secret(clients, enabled_project, "db-password", b"first-value", b"second-value")
    _grant_secret(clients, secret, f"serviceAccount:{_compute_sa(clients, enabled_project)}")
    service = _service(uri)
    service.template.containers[0].env.append(_secret_env("DB_PASSWORD", "db-password", "1"))
    svc = _deploy(clients, enabled_project, service)
    assert requests.get(svc.uri, timeout=10).json()["secret"] == "first-value"


def test_deploy_fails_until_the_runtime_account_may_read_the_secret(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    account = (
        clients.iam()
        .projects()
        .serviceAccounts()
        .create(name=f"projects/{enabled_project}", body={"accountId": "mlflow-runner"})
        .execute()["email"]
    )
    secret = _secret(clients, enabled_project, "db-password", b"hunter2-secret")
    service = _service(uri)
    service.template.service_account = account
    service.template.containers[0].env.append(_secret_env("DB_PASSWORD", secret, "latest"))
    with pytest.raises(exceptions.FailedPrecondition) as err:
        _deploy(clients, enabled_project, service)
    message = err.value.message
    assert (
        "spec.template.spec.containers[0].env[0].value_from.secret_key_ref.name: Permission denied on secret: "
        f"{secret}/versions/latest for Revision service account {account}. The service account used must be "
        "granted the 'Secret Manager Secret Accessor' role (roles/secretmanager.secretAccessor) at the secret, "
        "project or higher level."
    ) in message
    assert "hunter2" not in message

    _grant_secret(clients, secret, f"serviceAccount:{account}")
    service.template.labels["attempt"] = "2"  # a template change makes a new revision
    run = clients.run_services()
    service.name = f"projects/{enabled_project}/locations/{LOCATION}/services/echo"
    svc = _wait(run.update_service(service=service))
    assert "/revisions/echo-00002-" in svc.latest_ready_revision
    assert requests.get(svc.uri, timeout=10).json()["secret"] == "hunter2-secret"


def test_a_missing_user_managed_runtime_account_is_refused(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    service = _service(uri)
    service.template.service_account = f"ghost@{enabled_project}.iam.gserviceaccount.com"
    with pytest.raises(exceptions.Forbidden, match=r"iam\.serviceaccounts\.actAs"):
        _deploy(clients, enabled_project, service)


def test_cloudsql_directory_holds_links_only_with_cloudsql_client(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    conn = f"{enabled_project}:{LOCATION}:mlflow-db"
    service = _service(uri)
    service.template.volumes.append(
        run_v2.Volume(name="cloudsql", cloud_sql_instance=run_v2.CloudSqlInstance(instances=[conn]))
    )
    service.template.containers[0].volume_mounts.append(run_v2.VolumeMount(name="cloudsql", mount_path="/cloudsql"))
    svc = _deploy(clients, enabled_project, service)

    first = requests.get(svc.uri + "/cloudsql", timeout=10).json()
    assert first["links"] == {}
    # A socket under the directory fits a unix socket path.
    assert len(f"{first['dir']}/{conn}/.s.PGSQL.5432".encode()) <= 107

    member = f"serviceAccount:{_compute_sa(clients, enabled_project)}"
    _grant_project(clients, enabled_project, member, "roles/cloudsql.client")
    expected = {conn: str(emulator.world.api("sqladmin").socket_dir(conn))}
    linked = _until(lambda: requests.get(svc.uri + "/cloudsql", timeout=10).json()["links"] == expected)
    assert linked
    _grant_project(clients, enabled_project, member, "roles/cloudsql.client", add=False)
    assert _until(lambda: requests.get(svc.uri + "/cloudsql", timeout=10).json()["links"] == {})


def test_update_rolls_out_with_no_failed_request(emulator, clients, enabled_project, admin):
    uri = _image(emulator, clients, enabled_project)
    svc = _deploy(clients, enabled_project, _service(uri, env={"GREETING": "one"}))
    old_pid = requests.get(svc.uri, timeout=10).json()["pid"]
    run = clients.run_services()

    # Labels alone do not make a revision.
    labelled = run.get_service(name=svc.name)
    labelled.labels["team"] = "ml"
    after_labels = _wait(run.update_service(service=labelled))
    assert after_labels.generation == 2 and after_labels.latest_ready_revision == svc.latest_ready_revision
    assert after_labels.etag != svc.etag

    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.get(svc.uri, timeout=10)
                    seen.append((r.status_code, r.json().get("greeting") if r.status_code == 200 else None))
                except requests.RequestException as exc:
                    seen.append((0, repr(exc)))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        _until(lambda: len(seen) > 20)
        update = run.get_service(name=svc.name)
        update.template.containers[0].env[0].value = "two"
        updated = _wait(run.update_service(service=update))
        _until(lambda: any(g == "two" for _, g in seen[-5:]) and len(seen) > 40)
    finally:
        stop.set()
        thread.join()
    assert [s for s in seen if s[0] != 200] == []
    greetings = [g for _, g in seen]
    first_two = greetings.index("two")
    assert set(greetings[:first_two]) == {"one"} and set(greetings[first_two:]) == {"two"}
    assert updated.generation == 3 and updated.latest_ready_revision != svc.latest_ready_revision
    assert "-00002-" in updated.latest_ready_revision
    assert len(list(clients.run_revisions().list_revisions(parent=svc.name))) == 2
    # The old revision's process is stopped once it drained.
    assert _until(lambda: not _pid_alive(old_pid))
    assert {r for r in admin.run_processes() if r.startswith(svc.name + "/")} == {updated.latest_ready_revision}


def test_failing_revision_leaves_traffic_on_the_previous_one(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    svc = _deploy(clients, enabled_project, _service(uri, env={"GREETING": "stable"}))
    run = clients.run_services()

    probed = run.get_service(name=svc.name)
    container = probed.template.containers[0]
    container.env.append(run_v2.EnvVar(name="HEALTH", value="fail"))
    container.startup_probe = run_v2.Probe(
        http_get=run_v2.HTTPGetAction(path="/health"), period_seconds=1, timeout_seconds=1, failure_threshold=2
    )
    with pytest.raises(exceptions.FailedPrecondition) as err:
        _wait(run.update_service(service=probed))
    assert "is not ready and cannot serve traffic. The user-provided container failed the configured startup probe" in (
        err.value.message
    )
    after = run.get_service(name=svc.name)
    assert after.latest_ready_revision == svc.latest_ready_revision
    assert after.latest_created_revision != svc.latest_ready_revision
    assert after.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert "failed the configured startup probe" in after.terminal_condition.message
    failed = clients.run_revisions().get_revision(name=after.latest_created_revision)
    assert {c.type_: c.state.name for c in failed.conditions}["Ready"] == "CONDITION_FAILED"
    assert requests.get(svc.uri, timeout=10).json()["greeting"] == "stable"

    crashing = run.get_service(name=svc.name)
    crashing.template.containers[0].env.append(run_v2.EnvVar(name="EXIT_CODE", value="3"))
    with pytest.raises(exceptions.FailedPrecondition) as err:
        _wait(run.update_service(service=crashing))
    assert (
        "The user-provided container failed to start and listen on the port defined provided by the PORT=8080 "
        "environment variable within the allocated timeout."
    ) in err.value.message
    log = Path(re.search(r"Logs URL: file://(\S+)", err.value.message).group(1))
    assert "Container called exit(3)." in log.read_text()
    assert requests.get(svc.uri, timeout=10).json()["greeting"] == "stable"


def test_a_crashed_instance_is_started_again(emulator, clients, enabled_project, admin):
    uri = _image(emulator, clients, enabled_project)
    svc = _deploy(clients, enabled_project, _service(uri, env={"GREETING": "again"}))
    pid = requests.get(svc.uri, timeout=10).json()["pid"]
    os.kill(pid, signal.SIGKILL)

    def answered_by_a_new_instance() -> bool:
        r = requests.get(svc.uri, timeout=10)
        return r.status_code == 200 and r.json()["pid"] != pid

    assert _until(answered_by_a_new_instance)
    assert requests.get(svc.uri, timeout=10).json()["greeting"] == "again"
    log = Path(admin.run_processes()[svc.latest_ready_revision]["log"])
    assert "Container terminated on signal 9." in log.read_text()


def test_body_limit_413_and_h2c_end_to_end(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    big = b"x" * (33 * 1024 * 1024)
    svc = _deploy(clients, enabled_project, _service(uri))
    assert requests.post(svc.uri, data=b"y" * (1024 * 1024), timeout=30).json()["received"] == 1024 * 1024
    assert requests.post(svc.uri, data=big, timeout=60).status_code == 413

    def chunks():
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    assert requests.post(svc.uri, data=chunks(), timeout=60).status_code == 413
    small_chunked = requests.post(svc.uri, data=iter([b"a" * 1000, b"b" * 24]), timeout=30)
    assert small_chunked.json() == {"received": 1024, "protocol": "HTTP/1.1"}

    h2c = _service(
        uri, command=["python", "/app/h2c_server.py"], ports=[run_v2.ContainerPort(name="h2c", container_port=8080)]
    )
    h2 = _deploy(clients, enabled_project, h2c, sid="echo-h2c")
    r = requests.post(h2.uri, data=big, timeout=60)
    assert r.status_code == 200 and r.json() == {"received": len(big), "protocol": "h2c"}

    # A container that only speaks HTTP/1 behind an h2c port cannot answer.
    http1_behind_h2c = _service(uri, ports=[run_v2.ContainerPort(name="h2c", container_port=8080)])
    broken = _deploy(clients, enabled_project, http1_behind_h2c, sid="echo-broken")
    assert requests.get(broken.uri, timeout=30).status_code == 502


def test_downloads_abandoned_mid_body_do_not_stall_other_h2c_requests(emulator, clients, enabled_project):
    """A browser leaving a page drops its half-read downloads; the requests after it must still be answered
    (a front end that multiplexed them on one HTTP/2 connection without resetting the dropped streams stalled
    or failed them with 502)."""
    uri = _image(emulator, clients, enabled_project)
    container = _service(
        uri, command=["python", "/app/h2c_hypercorn.py"], ports=[run_v2.ContainerPort(name="h2c", container_port=8080)]
    )
    svc = _deploy(clients, enabled_project, container, sid="big-h2c")
    size = 4 * 1024 * 1024
    workers = 8
    start = threading.Barrier(workers)
    outcomes: list[str] = []

    def browse() -> None:
        start.wait(timeout=60)
        for _ in range(3):
            with requests.get(svc.uri, stream=True, timeout=30) as dropped:
                next(dropped.iter_content(1 << 16))  # read a little, then leave
            try:
                whole = requests.get(svc.uri, timeout=30)
                outcomes.append(f"{whole.status_code} {len(whole.content)}")
            except requests.RequestException as exc:
                outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=browse) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert outcomes == [f"200 {size}"] * (workers * 3)


def test_front_end_counts_requests_by_status(emulator, clients, enabled_project, admin):
    uri = _image(emulator, clients, enabled_project)
    svc = _deploy(clients, enabled_project, _service(uri))
    for _ in range(3):
        assert requests.get(svc.uri, timeout=10).status_code == 200
    assert requests.get(svc.uri + "/missing", timeout=10).status_code == 404
    assert admin.run_stats(svc.name) == {"requests": 4, "by_status": {"200": 3, "404": 1}}
    with pytest.raises(requests.HTTPError):
        admin.run_stats(svc.name + "-nope")


def test_iam_policy_etags_and_the_invoker_check(emulator, clients, enabled_project, admin):
    uri = _image(emulator, clients, enabled_project)
    svc = _deploy(clients, enabled_project, _service(uri, public=False))
    page = requests.get(svc.uri, timeout=10)
    assert page.status_code == 403 and "Your client does not have permission" in page.text

    run = clients.run_services()
    policy = run.get_iam_policy(request={"resource": svc.name})
    stale = policy_pb2.Policy()
    stale.CopyFrom(policy)
    policy.bindings.add(role="roles/run.invoker", members=["allUsers"])
    updated = run.set_iam_policy(request={"resource": svc.name, "policy": policy})
    assert updated.etag != policy.etag
    assert run.get_iam_policy(request={"resource": svc.name}).etag == updated.etag
    assert requests.get(svc.uri, timeout=10).status_code == 200
    # IAM changes do not make a revision.
    assert run.get_service(name=svc.name).latest_ready_revision == svc.latest_ready_revision

    stale.bindings.add(role="roles/run.invoker", members=["user:bob@example.com"])
    with pytest.raises(exceptions.Conflict, match="concurrent policy changes"):
        run.set_iam_policy(request={"resource": svc.name, "policy": stale})

    admin.settings(domain_restricted_sharing=True)
    current = run.get_iam_policy(request={"resource": svc.name})
    del current.bindings[:]
    current.bindings.add(role="roles/run.invoker", members=["allUsers"])
    with pytest.raises(exceptions.BadRequest, match="permitted customer"):
        run.set_iam_policy(request={"resource": svc.name, "policy": current})

    got = run.test_iam_permissions(
        request={"resource": svc.name, "permissions": ["run.services.get", "storage.buckets.get"]}
    )
    assert list(got.permissions) == ["run.services.get"]
    with pytest.raises(exceptions.NotFound, match="of kind 'SERVICE'"):
        run.get_iam_policy(request={"resource": svc.name + "x"})


def test_invalid_requests_are_refused(emulator, clients, enabled_project):
    uri = _image(emulator, clients, enabled_project)
    base = f"{emulator.base_url}/run/v2/projects/{enabled_project}/locations/{LOCATION}/services"
    r = requests.post(
        base, params={"serviceId": "echo"}, json={"template": {"containers": [{"image": uri}]}, "bogus": 1}, timeout=10
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and 'Unknown name "bogus"' in err["message"]

    for bad in ("Echo", "1echo", "echo-", "e" * 50, "echo_1"):
        with pytest.raises(exceptions.BadRequest, match=r"Violation in CreateServiceRequest\.service_id"):
            _deploy(clients, enabled_project, _service(uri), sid=bad)
    with pytest.raises(exceptions.BadRequest, match="reserved env names were provided: PORT"):
        _deploy(clients, enabled_project, _service(uri, env={"PORT": "9000"}))
    with pytest.raises(exceptions.BadRequest, match="Expected an image path like"):
        _deploy(clients, enabled_project, _service("ghcr.io/someone/echo:v1"))
    with pytest.raises(exceptions.NotFound, match="Resource 'nope' of kind 'SERVICE'"):
        clients.run_services().get_service(name=f"projects/{enabled_project}/locations/{LOCATION}/services/nope")


def test_delete_stops_the_process_and_the_front_end(emulator, clients, enabled_project, admin):
    uri = _image(emulator, clients, enabled_project)
    svc = _deploy(clients, enabled_project, _service(uri))
    pid = requests.get(svc.uri, timeout=10).json()["pid"]
    deleted = _wait(clients.run_services().delete_service(name=svc.name))
    assert deleted.name == svc.name
    with pytest.raises(requests.ConnectionError):
        requests.get(svc.uri, timeout=5)
    assert not _pid_alive(pid)
    assert svc.latest_ready_revision not in admin.run_processes()
    with pytest.raises(exceptions.NotFound):
        clients.run_services().get_service(name=svc.name)


def test_a_restarted_emulator_serves_the_same_uri():
    data_dir = Path(tempfile.mkdtemp(prefix="mge-", dir="/tmp"))
    first = Emulator(data_dir).start()
    try:
        c = Clients(first.base_url)
        EmulatorAdmin(first.base_url).add_project("restart-proj")
        enable(c, "restart-proj", "artifactregistry.googleapis.com", "run.googleapis.com")
        uri = _image(first, c, "restart-proj")
        svc = _deploy(c, "restart-proj", _service(uri, env={"GREETING": "persisted"}))
        pid = requests.get(svc.uri, timeout=10).json()["pid"]
    finally:
        first.stop()
    # Nothing outlives the emulator.
    assert not _pid_alive(pid)
    second = Emulator(data_dir).start()
    try:
        assert _until(lambda: requests.get(svc.uri, timeout=10).status_code == 200)
        assert requests.get(svc.uri, timeout=10).json()["greeting"] == "persisted"
        again = Clients(second.base_url).run_services().get_service(name=svc.name)
        assert again.uri == svc.uri and again.latest_ready_revision == svc.latest_ready_revision
    finally:
        second.stop()
