"""Cloud Identity-Aware Proxy API v1 (discovery REST, as ``googleapiclient.discovery.build("iap", "v1")`` sends
it) for Cloud Run services, and the emulated Google sign-in page IAP sends browsers to.

Cloud Run's direct IAP integration (``Service.iapEnabled``) needs no load balancer: the IAP resource of a
service is ``projects/PROJECT_NUMBER/iap_web/cloud_run-REGION/services/SERVICE`` (magic-modules
mmv1/products/iap/CloudRunService.yaml; gcloud --log-http shows the number). On it:

- ``getIamPolicy``/``setIamPolicy``/``testIamPermissions`` (``v1/{+resource}:...``, all POST): the policy store of
  ``core/iam.py``, with its etags (a stale etag is 409 ABORTED) and member checks (a service account that does
  not exist -- the IAP service agent before ``generateServiceIdentity`` -- is 400). Access is
  ``roles/iap.httpsResourceAccessor``.
- ``getIapSettings``/``updateIapSettings`` (``GET``/``PATCH v1/{+name}:iapSettings``): an ``IapSettings`` (iap v1
  discovery document; unknown fields refused). PATCH "replaces all fields unless the update_mask is set"
  (discovery document); with ``updateMask`` only the named paths change. ``clientSecret`` is input only: the
  stored settings keep ``clientSecretSha256``.

The project may be given by id or number; answers name the resource by number. A service that Cloud Run does
not have is 404; the API must be enabled (SERVICE_DISABLED otherwise). Deleting the Cloud Run service deletes
its IAP policy and settings (:meth:`IapApi.service_deleted`).

What IAP does with these at a service's front end is in ``run/iapgate.py``; the sign-in page is
``/_emulator/iap/signin`` (standing for accounts.google.com; see :meth:`IapApi.admin`).
"""

from __future__ import annotations

import copy
import hashlib
import html
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from werkzeug.wrappers import Request, Response

from ..core.errors import GcpError, invalid
from ..core.http import ApiModule, ApiRequest, json_response, route
from ..core.iam import PolicyMethods
from ..core.validation import discovery_document, validate_discovery

if TYPE_CHECKING:
    from ..core.world import World

#: The role that lets a principal through IAP ("IAP-secured Web App User").
ACCESSOR = "roles/iap.httpsResourceAccessor"
_IAM = PolicyMethods("iap.", version_message="Invalid requested policy version {requested}.")
_CLOUD_RUN = re.compile(r"^cloud_run-(?P<region>[a-z]+-[a-z]+\d+)$")
_RESOURCE = "/v1/projects/{project}/iap_web/{web}/services/{service}"
#: How long a sign-in code (from the sign-in page to the service's callback) stays good.
_CODE_SECONDS = 300


def _camel(path: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path)


class IapApi(ApiModule):
    prefix = "/iap"
    service = "iap.googleapis.com"
    title = "Cloud Identity-Aware Proxy API"

    SETTINGS_KIND = "iap.settings"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.Lock()
        # One-time sign-in codes: code -> (email, service name, expiry). In memory: a sign-in under way
        # when the emulator stops starts again, as a lost Google session would.
        self._codes: dict[str, tuple[str, str, float]] = {}

    def reset(self) -> None:
        with self._lock:
            self._codes.clear()

    # --- names ------------------------------------------------------------------------------------

    def _resolve(self, req: ApiRequest) -> tuple[str, dict[str, Any]]:
        """(IAP resource name by number, the Cloud Run service) a request names; 404 when either is unknown."""
        project = self.world.project(req["project"])
        number = project["name"].split("/")[1]
        m = _CLOUD_RUN.match(req["web"])
        name = f"projects/{number}/iap_web/{req['web']}/services/{req['service']}"
        run = self.world.apis.get("run")
        svc = None
        if m is not None and run is not None:
            run_name = f"projects/{project['projectId']}/locations/{m['region']}/services/{req['service']}"
            svc = run.find_service(run_name)  # type: ignore[attr-defined]
        if svc is None:
            # The exact message of IAP's 404 is not recorded.
            raise GcpError(404, f"Resource {name} not found.", "NOT_FOUND")
        return name, svc

    def resource_for(self, run_service: str) -> str:
        """The IAP resource of a Cloud Run service (``projects/ID/locations/REGION/services/S``)."""
        parts = run_service.split("/")
        number = self.world.project(parts[1])["name"].split("/")[1]
        return f"projects/{number}/iap_web/cloud_run-{parts[3]}/services/{parts[5]}"

    @staticmethod
    def agent(project_number: str) -> str:
        """IAP's service agent, which must hold roles/run.invoker on the service (Cloud Run IAP docs)."""
        return f"service-{project_number}@gcp-sa-iap.iam.gserviceaccount.com"

    # --- what the front end asks ------------------------------------------------------------------

    def settings(self, resource: str) -> dict[str, Any]:
        return {"name": resource, **(self.world.store.get(self.SETTINGS_KIND, resource) or {})}

    def _oauth(self, resource: str) -> dict[str, Any]:
        return self.settings(resource).get("accessSettings", {}).get("oauthSettings", {})

    def browser_client(self, resource: str) -> str:
        """The OAuth client of the browser sign-in: the custom one in ``oauthSettings.clientId``, else a
        Google-managed client (its id is the emulator's own invention)."""
        number = resource.split("/")[1]
        return self._oauth(resource).get("clientId") or f"{number}-iap-google-managed.apps.googleusercontent.com"

    def programmatic_audiences(self, resource: str) -> set[str]:
        """The ``aud`` values IAP takes in a program's ID token: the allowlist ``programmaticClients`` ("with the
        Google-managed OAuth client, programmatic access is blocked by default. You need to add the OAuth 2.0
        client to an allowlist", IAP programmatic-authentication docs) and a custom OAuth client's own id."""
        oauth = self._oauth(resource)
        audiences = set(oauth.get("programmaticClients") or [])
        if oauth.get("clientId"):
            audiences.add(oauth["clientId"])
        return audiences

    @staticmethod
    def cookie_name(resource: str) -> str:
        """IAP's session cookie is named ``GCP_IAP_AUTH_TOKEN_<suffix>``; the suffix here is per resource."""
        return "GCP_IAP_AUTH_TOKEN_" + hashlib.sha256(resource.encode()).hexdigest()[:16].upper()

    def allows(self, resource: str, project_id: str, email: str) -> bool:
        """Does ``email`` hold roles/iap.httpsResourceAccessor on the resource or its project, as ``user:`` (or
        ``serviceAccount:``), through a ``group:`` it belongs to (control setting ``groups``), its email's
        ``domain:``, or ``allAuthenticatedUsers``/``allUsers``? (Basic roles do not include IAP access.)"""
        email = email.lower()
        kind = "serviceAccount" if email.endswith(".gserviceaccount.com") else "user"
        members = [f"{kind}:{email}", f"domain:{email.rsplit('@', 1)[-1]}", "allAuthenticatedUsers", "allUsers"]
        for group, group_members in self.world.control.settings.groups.items():
            if email in {m.lower() for m in group_members}:
                members.append(f"group:{group.lower()}")
        resources = [resource, f"projects/{project_id}"]
        return any(self.world.iam.has_role(resources, m, ACCESSOR) for m in members)

    def service_deleted(self, run_service: str) -> None:
        """The Cloud Run service is gone: so are its IAP resource's policy and settings."""
        if self.world.find_project(run_service.split("/")[1]) is None:
            return
        resource = self.resource_for(run_service)
        self.world.iam.delete(resource)
        self.world.store.delete(self.SETTINGS_KIND, resource)

    # --- IAM policy -------------------------------------------------------------------------------

    @route("POST", _RESOURCE + ":getIamPolicy", name="v1.getIamPolicy", mutating=False)
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iap", "v1", "GetIamPolicyRequest")
        requested = str((body.get("options") or {}).get("requestedPolicyVersion", 0))
        if requested not in ("0", "1", "3"):
            raise invalid(_IAM.version_message.format(requested=requested))
        name, _ = self._resolve(req)
        return _IAM.get(self.world, name)

    @route("POST", _RESOURCE + ":setIamPolicy", name="v1.setIamPolicy")
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iap", "v1", "SetIamPolicyRequest")
        name, _ = self._resolve(req)
        return _IAM.set(self.world, name, body.get("policy") or {})

    @route("POST", _RESOURCE + ":testIamPermissions", name="v1.testIamPermissions", mutating=False)
    def test_iam_permissions(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iap", "v1", "TestIamPermissionsRequest")
        self._resolve(req)
        return _IAM.test(body.get("permissions") or [])

    # --- settings ---------------------------------------------------------------------------------

    @route("GET", _RESOURCE + ":iapSettings", name="v1.getIapSettings")
    def get_settings(self, req: ApiRequest) -> dict[str, Any]:
        name, _ = self._resolve(req)
        return self.settings(name)

    @route("PATCH", _RESOURCE + ":iapSettings", name="v1.updateIapSettings")
    def update_settings(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iap", "v1", "IapSettings")
        name, _ = self._resolve(req)
        given = {k: v for k, v in body.items() if k != "name"}
        _hash_secret(given)
        mask = [_camel(p.strip()) for p in req.args.get("updateMask", "").split(",") if p.strip()]
        for path in mask:
            _check_path(path)
        # The secret is kept as its hash (see _hash_secret): a mask naming one names the other.
        mask = [p + "Sha256" if p.endswith("oauthSettings.clientSecret") else p for p in mask]
        with self.world.store.lock:
            current = self.world.store.get(self.SETTINGS_KIND, name) or {}
            if mask:
                updated = copy.deepcopy(current)
                for path in mask:
                    _copy_path(given, updated, path)
            else:
                updated = given
            self.world.store.put(self.SETTINGS_KIND, name, _prune(updated))
        return self.settings(name)

    # --- control plane: IAP's keys and the emulated Google sign-in ---------------------------------

    def admin(self, request: Request, subpath: str) -> Response:
        """``/_emulator/iap/verify/public_key`` -> IAP's keys; ``/_emulator/iap/assertion`` ``{email, audience}`` ->
        ``{"assertion"}`` signed as IAP signs one; ``/_emulator/iap/signin?continue=URL`` -> the sign-in page."""
        identity = self.world.identity
        if subpath == "/verify/public_key" and request.method == "GET":
            return json_response(identity.iap_public_keys())
        if subpath == "/assertion" and request.method == "POST":
            body = request.get_json(silent=True) or {}
            email, audience = body.get("email"), body.get("audience")
            if not isinstance(email, str) or "@" not in email or not isinstance(audience, str) or not audience:
                return json_response({"error": {"code": 400, "message": "email and audience are required"}}, 400)
            return json_response({"assertion": identity.iap_assertion(email, audience)})
        if subpath == "/signin":
            return self._signin(request)
        return json_response({"error": {"code": 404, "message": f"no admin endpoint /iap{subpath}"}}, 404)

    def _service_at(self, url: str) -> dict[str, Any] | None:
        """The Cloud Run service whose front end serves ``url``."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        run = self.world.apis.get("run")
        return run.service_at(origin) if run is not None else None  # type: ignore[attr-defined]

    def _signin(self, request: Request) -> Response:
        """GET: a form asking for an email (standing for Google's sign-in). POST: the account chosen, back to
        the service's ``/_gcp_iap/callback`` with a one-time code, which its front end redeems."""
        target = request.values.get("continue", "")
        svc = self._service_at(target)
        if svc is None:
            return Response("continue must be the URL of a Cloud Run service.", status=400, mimetype="text/plain")
        if request.method == "GET":
            return Response(_SIGNIN_PAGE.format(target=html.escape(target, quote=True)), mimetype="text/html")
        email = request.form.get("email", "").strip()
        if "@" not in email:
            return Response("An email address is required.", status=400, mimetype="text/plain")
        code = os.urandom(18).hex()
        with self._lock:
            now = time.monotonic()
            self._codes = {c: v for c, v in self._codes.items() if v[2] > now}
            self._codes[code] = (email, svc["name"], now + _CODE_SECONDS)
        parts = urlsplit(target)
        back = parts.path or "/"
        if parts.query:
            back += "?" + parts.query
        location = f"{parts.scheme}://{parts.netloc}/_gcp_iap/callback?" + urlencode({"code": code, "continue": back})
        return Response("", status=302, headers={"Location": location})

    def signin_url(self, target: str) -> str:
        return f"{self.world.base_url}/_emulator/iap/signin?continue={quote(target, safe='')}"

    def redeem(self, code: str, run_service: str) -> str | None:
        """The email a sign-in code was issued for, once, if it was issued for this service."""
        with self._lock:
            entry = self._codes.pop(code, None)
        if entry is None or entry[1] != run_service or entry[2] < time.monotonic():
            return None
        return entry[0]


__all__ = ["ACCESSOR", "IapApi"]


_SIGNIN_PAGE = """<!doctype html>
<html><head><title>Sign in - Google Accounts (emulated)</title></head>
<body>
<h1>Sign in</h1>
<p>to continue to the Identity-Aware Proxy protected service</p>
<form method="post" action="/_emulator/iap/signin">
<input type="hidden" name="continue" value="{target}">
<label>Email <input type="email" name="email" autofocus required></label>
<button type="submit">Next</button>
</form>
</body></html>
"""


# --- updateMask over the IapSettings schema ---------------------------------------------------------------


def _check_path(path: str) -> None:
    """Refuse a mask path that names no field of IapSettings (the exact message of IAP is not recorded)."""
    schemas = discovery_document("iap", "v1")["schemas"]
    spec: dict[str, Any] = schemas["IapSettings"]
    for key in path.split("."):
        props = spec.get("properties", {})
        if key not in props or key == "name":
            raise invalid(f"Invalid update mask path: {path}.")
        spec = props[key]
        if "$ref" in spec:
            spec = schemas[spec["$ref"]]


def _copy_path(src: dict[str, Any], dst: dict[str, Any], path: str) -> None:
    """Apply one mask path from ``src`` onto ``dst``: set when ``src`` has it, cleared otherwise."""
    keys = path.split(".")
    s: Any = src
    d = dst
    for k in keys[:-1]:
        s = s.get(k, {}) if isinstance(s, dict) else {}
        d = d.setdefault(k, {})
    last = keys[-1]
    if isinstance(s, dict) and last in s:
        d[last] = copy.deepcopy(s[last])
    else:
        d.pop(last, None)


def _prune(value: dict[str, Any]) -> dict[str, Any]:
    """Drop emptied messages and lists, as proto3 JSON leaves them out."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict):
            v = _prune(v)
        if v == {} or v == []:
            continue
        out[k] = v
    return out


def _hash_secret(settings: dict[str, Any]) -> None:
    """``oauthSettings.clientSecret`` is input only; the settings keep its ``clientSecretSha256``."""
    oauth = settings.get("accessSettings", {}).get("oauthSettings")
    if isinstance(oauth, dict):
        oauth.pop("clientSecretSha256", None)
        secret = oauth.pop("clientSecret", None)
        if secret:
            oauth["clientSecretSha256"] = hashlib.sha256(secret.encode()).hexdigest()
