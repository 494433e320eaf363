"""Identity-Aware Proxy in front of Cloud Run, through the official clients: the iap v1 discovery client (IAM policy,
iapSettings), Service Usage v1beta1's generateServiceIdentity, google-auth's credentials, and plain HTTP (httpx)
at the service's front end -- with a container that echoes what reached it."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import google.auth
import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions
from google.api_core.future import polling
from google.auth import crypt, jwt
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import Request
from google.cloud import artifactregistry_v1, run_v2
from google.oauth2 import id_token
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from mlflow_gcp.emulator.apis.oauth2 import ADC_CLIENT_ID
from mlflow_gcp.emulator.core.images import ImageRecord
from mlflow_gcp.emulator.testing import EmulatorAdmin
from tests.conftest import enable

LOCATION = "us-central1"
POLL = polling.DEFAULT_POLLING.with_delay(initial=0.1, maximum=0.5, multiplier=1.5).with_timeout(120)
ACCESSOR = "roles/iap.httpsResourceAccessor"
GENERATED = "x-goog-iap-generated-response"

# Answers every request with the headers and cookies that reached it, and the seams of its environment.
ECHO = r"""
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "certs_url": os.environ.get("MLFLOW_GCP_IAP_CERTS_URL"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


# --- helpers -------------------------------------------------------------------------------------------


def _iap(emulator):
    return build(
        "iap",
        "v1",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"{emulator.base_url}/iap/"},
        static_discovery=True,
        cache_discovery=False,
    ).v1()


def _serviceusage(emulator):
    return build(
        "serviceusage",
        "v1beta1",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"{emulator.base_url}/serviceusage/"},
        static_discovery=True,
        cache_discovery=False,
    )


def _number(clients, project: str) -> str:
    return clients.projects().get_project(name=f"projects/{project}").name.split("/")[1]


def _image(emulator, clients, project: str) -> str:
    ar = clients.artifact_registry()
    ar.create_repository(
        parent=f"projects/{project}/locations/{LOCATION}",
        repository_id="apps",
        repository=artifactregistry_v1.Repository(format_=artifactregistry_v1.Repository.Format.DOCKER),
    ).result(timeout=60)
    rootfs = Path(tempfile.mkdtemp(prefix="iap-img-"))
    (rootfs / "app").mkdir()
    (rootfs / "app" / "echo.py").write_text(ECHO)
    uri = f"{LOCATION}-docker.pkg.dev/{project}/apps/echo:v1"
    record = ImageRecord(
        uri=uri,
        digest="sha256:" + hashlib.sha256(ECHO.encode()).hexdigest(),
        rootfs=rootfs,
        entrypoint=["python", "/app/echo.py"],
        workdir="/app",
    )
    emulator.world.api("artifactregistry").register_image(record, ["v1"])
    return uri


def _deploy(clients, project: str, image: str, *, iap: bool, sid: str = "mlflow") -> run_v2.Service:
    service = run_v2.Service(
        template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)]), iap_enabled=iap
    )
    op = clients.run_services().create_service(
        parent=f"projects/{project}/locations/{LOCATION}", service=service, service_id=sid
    )
    return op.result(polling=POLL)


def _grant_run_invoker(clients, service: str, member: str) -> None:
    run = clients.run_services()
    policy = run.get_iam_policy(request={"resource": service})
    policy.bindings.add(role="roles/run.invoker", members=[member])
    run.set_iam_policy(request={"resource": service, "policy": policy})


def _grant(emulator, resource: str, *members: str, role: str = ACCESSOR) -> dict:
    iap = _iap(emulator)
    policy = iap.getIamPolicy(resource=resource, body={"options": {"requestedPolicyVersion": 3}}).execute()
    policy.setdefault("bindings", []).append({"role": role, "members": list(members)})
    return iap.setIamPolicy(resource=resource, body={"policy": policy}).execute()


def _agent(emulator, project: str) -> str:
    op = (
        _serviceusage(emulator)
        .services()
        .generateServiceIdentity(parent=f"projects/{project}/services/iap.googleapis.com")
        .execute()
    )
    assert op["done"] is True
    return op["response"]["email"]


def _id_token(emulator, email: str, audience: str = ADC_CLIENT_ID) -> str:
    return EmulatorAdmin(emulator.base_url).id_token(email, audience)


def _seen(response: httpx.Response) -> dict[str, list[str]]:
    """The headers the container received, by lower-case name."""
    out: dict[str, list[str]] = {}
    for k, v in response.json()["headers"]:
        out.setdefault(k, []).append(v)
    return out


class Stack:
    """A project with an IAP-enabled service whose agent may invoke it and whose programmatic clients
    include the ADC login client (what the tool sets up)."""

    def __init__(self, emulator, clients, project: str, *, agent_invoker: bool = True) -> None:
        enable(clients, project, "iap.googleapis.com")
        self.emulator, self.project = emulator, project
        self.number = _number(clients, project)
        self.svc = _deploy(clients, project, _image(emulator, clients, project), iap=True)
        self.resource = f"projects/{self.number}/iap_web/cloud_run-{LOCATION}/services/mlflow"
        self.audience = f"/projects/{self.number}/locations/{LOCATION}/services/mlflow"
        self.agent = _agent(emulator, project)
        if agent_invoker:
            _grant_run_invoker(clients, self.svc.name, f"serviceAccount:{self.agent}")
        _iap(emulator).updateIapSettings(
            name=self.resource,
            updateMask="accessSettings.oauthSettings.programmaticClients",
            body={"accessSettings": {"oauthSettings": {"programmaticClients": [ADC_CLIENT_ID]}}},
        ).execute()

    def get(self, path: str = "/", token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(self.svc.uri + path, headers=headers, timeout=30)


@pytest.fixture
def stack(emulator, clients, enabled_project) -> Stack:
    return Stack(emulator, clients, enabled_project)


def _iap_refusal(r: httpx.Response, status: int, text: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers.get(GENERATED) == "true"
    assert text in r.text


# --- the front end -------------------------------------------------------------------------------------


def test_without_iap_the_invoker_check_is_unchanged(emulator, clients, enabled_project):
    svc = _deploy(clients, enabled_project, _image(emulator, clients, enabled_project), iap=False)
    assert not clients.run_services().get_service(name=svc.name).iap_enabled
    r = httpx.get(svc.uri, timeout=30)
    assert r.status_code == 403 and GENERATED not in r.headers
    _grant_run_invoker(clients, svc.name, "user:ana@example.com")
    token = _id_token(emulator, "ana@example.com", "anything")
    forged = {"X-Goog-Authenticated-User-Email": "accounts.google.com:forged@example.com"}
    r = httpx.get(svc.uri, headers={"Authorization": f"Bearer {token}", **forged}, timeout=30)
    assert r.status_code == 200
    seen = _seen(r)
    # No IAP: the caller's credentials and headers reach the container as sent, and nothing is added.
    assert seen["authorization"] == [f"Bearer {token}"]
    assert seen["x-goog-authenticated-user-email"] == ["accounts.google.com:forged@example.com"]
    assert "x-goog-iap-jwt-assertion" not in seen


def test_iap_enabled_is_kept_on_the_service(stack, clients):
    run = clients.run_services()
    assert run.get_service(name=stack.svc.name).iap_enabled
    svc = run.get_service(name=stack.svc.name)
    svc.iap_enabled = False
    run.update_service(service=svc).result(polling=POLL)
    assert not run.get_service(name=stack.svc.name).iap_enabled
    # IAP off, invoker IAM on: the front end is back to Cloud Run's own check.
    r = stack.get()
    assert r.status_code == 403 and GENERATED not in r.headers


def test_requests_without_valid_credentials_are_refused(stack, emulator):
    _grant(emulator, stack.resource, "user:ana@example.com")
    _iap_refusal(stack.get(), 401, "Invalid IAP credentials: empty token")
    _iap_refusal(stack.get(token="ya29.an-access-token"), 401, "Invalid IAP credentials: Unable to parse JWT")

    # A browser is sent to sign in instead.
    r = stack.get("/x?y=1", Accept="text/html,application/xhtml+xml")
    assert r.status_code == 302 and r.headers[GENERATED] == "true"
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{emulator.base_url}/_emulator/iap/signin"
    assert parse_qs(location.query)["continue"] == [f"{stack.svc.uri}/x?y=1"]

    # Signed by a key that is not Google's.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    now = int(time.time())
    claims = {"iss": "https://accounts.google.com", "aud": ADC_CLIENT_ID, "email": "ana@example.com"}
    forged = jwt.encode(crypt.RSASigner.from_string(pem, "k"), {**claims, "iat": now, "exp": now + 600}).decode()
    _iap_refusal(stack.get(token=forged), 401, "Invalid IAP credentials")

    # Google's, but for an audience IAP does not take (not allowlisted in programmaticClients).
    other = _id_token(emulator, "ana@example.com", "https://mlflow.example.com")
    _iap_refusal(stack.get(token=other), 401, "Invalid IAP credentials: Invalid JWT audience")

    # Valid, but not granted.
    _iap_refusal(stack.get(token=_id_token(emulator, "eve@example.com")), 403, "access")
    assert stack.get(token=_id_token(emulator, "ana@example.com")).status_code == 200


def test_the_iap_service_agent_needs_run_invoker(emulator, clients, enabled_project):
    stack = Stack(emulator, clients, enabled_project, agent_invoker=False)
    _grant(emulator, stack.resource, "user:ana@example.com")
    r = stack.get(token=_id_token(emulator, "ana@example.com"))
    # Cloud Run refuses IAP's call: its own page, not IAP's.
    assert r.status_code == 403 and GENERATED not in r.headers
    assert "Your client does not have permission" in r.text
    _grant_run_invoker(clients, stack.svc.name, f"serviceAccount:{stack.agent}")
    assert stack.get(token=_id_token(emulator, "ana@example.com")).status_code == 200


def test_a_granted_user_reaches_the_container_with_iaps_identity(stack, emulator, tmp_path):
    _grant(emulator, stack.resource, "user:ana@example.com")
    # The user's own ADC, as the tool's users have it: an authorized_user file refreshed by google-auth.
    info = EmulatorAdmin(emulator.base_url).identity_file("ana@example.com")
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(info))
    creds, _ = google.auth.load_credentials_from_file(str(path))
    creds = creds.with_token_uri(info["token_uri"])
    creds.refresh(Request())

    forged = {
        "X-Goog-Authenticated-User-Email": "accounts.google.com:admin@example.com",
        "X-Goog-IAP-JWT-Assertion": "forged",
        "Cookie": "theme=dark",
    }
    r = stack.get("/api?q=1", token=creds.id_token, **forged)
    assert r.status_code == 200, r.text
    body = r.json()
    seen = _seen(r)
    assert body["path"] == "/api?q=1"
    assert "authorization" not in seen and "proxy-authorization" not in seen
    assert seen["x-goog-authenticated-user-email"] == ["accounts.google.com:ana@example.com"]
    assert seen["cookie"] == ["theme=dark"]
    (assertion,) = seen["x-goog-iap-jwt-assertion"]
    keys = requests.get(body["certs_url"], timeout=10).json()
    assert body["certs_url"] == f"{emulator.base_url}/_emulator/iap/verify/public_key"
    claims = jwt.decode(assertion, certs=keys, audience=stack.audience)
    assert jwt.decode_header(assertion)["alg"] == "ES256"
    assert claims["iss"] == "https://cloud.google.com/iap" and claims["email"] == "ana@example.com"
    assert claims["exp"] - claims["iat"] == 600 and claims["identity_source"] == "GOOGLE"
    user_id = claims["sub"].split(":", 1)[1]
    assert claims["sub"] == f"accounts.google.com:{user_id}"
    assert seen["x-goog-authenticated-user-id"] == [f"accounts.google.com:{user_id}"]

    # In Proxy-Authorization, the token leaves Authorization to the application.
    r = httpx.get(
        stack.svc.uri,
        headers={"Proxy-Authorization": f"Bearer {creds.id_token}", "Authorization": "Basic YWRtaW46cHc="},
        timeout=30,
    )
    assert r.status_code == 200
    seen = _seen(r)
    assert seen["authorization"] == ["Basic YWRtaW46cHc="] and "proxy-authorization" not in seen
    assert seen["x-goog-authenticated-user-email"] == ["accounts.google.com:ana@example.com"]


def test_a_service_account_passes_with_its_own_id_token(stack, emulator, clients, tmp_path, monkeypatch):
    body = {"accountId": "ci-runner", "serviceAccount": {}}
    sa = clients.iam().projects().serviceAccounts().create(name=f"projects/{stack.project}", body=body).execute()
    info = requests.post(
        f"{emulator.base_url}/_emulator/identities",
        json={"email": sa["email"], "type": "service_account"},
        timeout=30,
    ).json()
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    token = id_token.fetch_id_token(Request(), ADC_CLIENT_ID)
    _iap_refusal(stack.get(token=token), 403, "access")
    _grant(emulator, stack.resource, f"serviceAccount:{sa['email']}")
    r = stack.get(token=token)
    assert r.status_code == 200
    assert _seen(r)["x-goog-authenticated-user-email"] == [f"accounts.google.com:{sa['email']}"]


def test_group_and_domain_members(stack, emulator, admin):
    admin.settings(groups={"ml-team@example.com": ["bo@example.com"]})
    _grant(emulator, stack.resource, "group:ml-team@example.com", "domain:partner.example")
    assert stack.get(token=_id_token(emulator, "bo@example.com")).status_code == 200
    assert stack.get(token=_id_token(emulator, "zoe@partner.example")).status_code == 200
    assert stack.get(token=_id_token(emulator, "cy@example.com")).status_code == 403
    # A grant on the project counts too; basic roles do not include IAP access.
    rm = stack.emulator.base_url + f"/resourcemanager/v1/projects/{stack.project}"
    policy = requests.post(f"{rm}:getIamPolicy", json={}, timeout=10).json()
    policy["bindings"] = [*policy.get("bindings", []), {"role": "roles/owner", "members": ["user:cy@example.com"]}]
    requests.post(f"{rm}:setIamPolicy", json={"policy": policy}, timeout=10).raise_for_status()
    assert stack.get(token=_id_token(emulator, "cy@example.com")).status_code == 403
    policy = requests.post(f"{rm}:getIamPolicy", json={}, timeout=10).json()
    policy["bindings"].append({"role": ACCESSOR, "members": ["user:cy@example.com"]})
    requests.post(f"{rm}:setIamPolicy", json={"policy": policy}, timeout=10).raise_for_status()
    assert stack.get(token=_id_token(emulator, "cy@example.com")).status_code == 200


def test_browser_sign_in(stack, emulator):
    _grant(emulator, stack.resource, "user:ana@example.com")
    browser = httpx.Client(timeout=30, headers={"Accept": "text/html"})
    first = browser.get(f"{stack.svc.uri}/experiments?id=7")
    assert first.status_code == 302
    page = browser.get(first.headers["Location"])
    assert page.status_code == 200 and 'name="email"' in page.text
    submitted = browser.post(
        f"{emulator.base_url}/_emulator/iap/signin",
        data={"email": "ana@example.com", "continue": f"{stack.svc.uri}/experiments?id=7"},
    )
    assert submitted.status_code == 302
    callback = submitted.headers["Location"]
    assert callback.startswith(f"{stack.svc.uri}/_gcp_iap/callback?")
    back = browser.get(callback)
    assert back.status_code == 302 and back.headers["Location"] == "/experiments?id=7"
    cookie = back.headers["Set-Cookie"]
    assert cookie.startswith("GCP_IAP_AUTH_TOKEN_") and "HttpOnly" in cookie
    # A code is good once.
    assert browser.get(callback).status_code == 401

    r = browser.get(f"{stack.svc.uri}/experiments?id=7")
    assert r.status_code == 200, r.text
    seen = _seen(r)
    assert seen["x-goog-authenticated-user-email"] == ["accounts.google.com:ana@example.com"]
    assert "GCP_IAP_AUTH_TOKEN_" not in " ".join(seen.get("cookie", []))

    # The whole chain, as a browser follows it; an ungranted account gets IAP's access-denied page.
    other = httpx.Client(timeout=30, headers={"Accept": "text/html"}, follow_redirects=True)
    form = other.get(f"{stack.svc.uri}/")
    assert 'name="email"' in form.text
    denied = other.post(
        f"{emulator.base_url}/_emulator/iap/signin", data={"email": "eve@example.com", "continue": f"{stack.svc.uri}/"}
    )
    assert denied.status_code == 403 and denied.headers[GENERATED] == "true"
    assert "eve@example.com" in denied.text and "access" in denied.text

    # Signing out clears the cookie.
    out = browser.get(f"{stack.svc.uri}/_gcp_iap/clear_login_cookie")
    assert out.status_code == 200 and "Max-Age=0" in out.headers["Set-Cookie"]
    assert browser.get(f"{stack.svc.uri}/").status_code == 302


# --- the IAP API ---------------------------------------------------------------------------------------


def test_iam_policy_etags_and_members(stack, emulator, clients):
    iap = _iap(emulator)
    policy = iap.getIamPolicy(resource=stack.resource, body={}).execute()
    stale = json.loads(json.dumps(policy))
    updated = _grant(emulator, stack.resource, "user:ana@example.com")
    assert updated["etag"] != policy["etag"]
    assert iap.getIamPolicy(resource=stack.resource, body={}).execute() == updated
    stale["bindings"] = [{"role": ACCESSOR, "members": ["user:bob@example.com"]}]
    with pytest.raises(HttpError) as err:
        iap.setIamPolicy(resource=stack.resource, body={"policy": stale}).execute()
    assert err.value.status_code == 409
    # The project may be named by id; the resource keeps its number.
    by_id = stack.resource.replace(stack.number, stack.project, 1)
    assert iap.getIamPolicy(resource=by_id, body={}).execute()["etag"] == updated["etag"]
    got = iap.testIamPermissions(
        resource=stack.resource, body={"permissions": ["iap.webServiceVersions.accessViaIAP", "run.services.get"]}
    ).execute()
    assert got == {"permissions": ["iap.webServiceVersions.accessViaIAP"]}
    with pytest.raises(HttpError) as err:
        iap.getIamPolicy(resource=stack.resource.replace("/mlflow", "/nope"), body={}).execute()
    assert err.value.status_code == 404
    with pytest.raises(HttpError) as err:
        _grant(emulator, stack.resource, "serviceAccount:ghost@nowhere.iam.gserviceaccount.com")
    assert err.value.status_code == 400 and "does not exist" in str(err.value)


def test_the_iap_agent_exists_once_generated(emulator, clients, enabled_project):
    enable(clients, enabled_project, "iap.googleapis.com")
    svc = _deploy(clients, enabled_project, _image(emulator, clients, enabled_project), iap=True)
    number = _number(clients, enabled_project)
    agent = f"service-{number}@gcp-sa-iap.iam.gserviceaccount.com"
    with pytest.raises(exceptions.BadRequest, match="does not exist"):
        _grant_run_invoker(clients, svc.name, f"serviceAccount:{agent}")
    first = (
        _serviceusage(emulator)
        .services()
        .generateServiceIdentity(parent=f"projects/{enabled_project}/services/iap.googleapis.com")
        .execute()
    )
    again = (
        _serviceusage(emulator)
        .services()
        .generateServiceIdentity(parent=f"projects/{number}/services/iap.googleapis.com")
        .execute()
    )
    assert first["done"] and again["done"]
    assert first["response"] == again["response"]
    assert first["response"]["@type"] == "type.googleapis.com/google.api.serviceusage.v1beta1.ServiceIdentity"
    assert first["response"]["email"] == agent and first["response"]["uniqueId"].isdigit()
    polled = _serviceusage(emulator).operations().get(name=first["name"]).execute()
    assert polled["response"] == first["response"]
    _grant_run_invoker(clients, svc.name, f"serviceAccount:{agent}")


def test_iap_settings_get_and_patch_with_a_mask(stack, emulator):
    iap = _iap(emulator)
    got = iap.getIapSettings(name=stack.resource.replace(stack.number, stack.project, 1)).execute()
    assert got == {
        "name": stack.resource,
        "accessSettings": {"oauthSettings": {"programmaticClients": [ADC_CLIENT_ID]}},
    }
    hint = iap.updateIapSettings(
        name=stack.resource,
        updateMask="access_settings.oauth_settings.login_hint",
        body={"accessSettings": {"oauthSettings": {"loginHint": "example.com", "programmaticClients": ["x"]}}},
    ).execute()
    # Only the masked path changed.
    assert hint["accessSettings"]["oauthSettings"] == {
        "loginHint": "example.com",
        "programmaticClients": [ADC_CLIENT_ID],
    }
    assert iap.getIapSettings(name=stack.resource).execute() == hint
    # No mask: every field replaced.
    replaced = iap.updateIapSettings(
        name=stack.resource, body={"applicationSettings": {"cookieDomain": "example.com"}}
    ).execute()
    assert replaced == {"name": stack.resource, "applicationSettings": {"cookieDomain": "example.com"}}
    for bad in (
        {"updateMask": "accessSettings.nope", "body": {}},
        {"body": {"accessSettings": {"unknownField": 1}}},
    ):
        with pytest.raises(HttpError) as err:
            iap.updateIapSettings(name=stack.resource, **bad).execute()
        assert err.value.status_code == 400
    with pytest.raises(HttpError) as err:
        iap.getIapSettings(name=stack.resource.replace("/mlflow", "/nope")).execute()
    assert err.value.status_code == 404


def test_the_iap_api_must_be_enabled(emulator, clients, enabled_project):
    number = _number(clients, enabled_project)
    with pytest.raises(HttpError) as err:
        _iap(emulator).getIapSettings(name=f"projects/{number}/iap_web/cloud_run-{LOCATION}/services/mlflow").execute()
    assert err.value.status_code == 403 and err.value.error_details[0]["reason"] == "SERVICE_DISABLED"


def test_deleting_the_service_forgets_its_iap_resource(stack, emulator, clients):
    # Not recorded on GCP: the IAP resource is the service's, so it goes with it here.
    _grant(emulator, stack.resource, "user:ana@example.com")
    clients.run_services().delete_service(name=stack.svc.name).result(polling=POLL)
    with pytest.raises(HttpError) as err:
        _iap(emulator).getIamPolicy(resource=stack.resource, body={}).execute()
    assert err.value.status_code == 404
    image = stack.svc.template.containers[0].image
    _deploy(clients, stack.project, image, iap=True)
    assert not _iap(emulator).getIamPolicy(resource=stack.resource, body={}).execute().get("bindings")
    assert _iap(emulator).getIapSettings(name=stack.resource).execute() == {"name": stack.resource}
