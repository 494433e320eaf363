"""IAM v1 (discovery REST, as ``googleapiclient.discovery.build("iam", "v1")`` sends it): service accounts,
their keys and their own IAM policies.

Behaviour kept from GCP:

- Emails are ``<accountId>@<projectId>.iam.gserviceaccount.com``; account ids are 6–30 characters matching
  ``[a-z]([-a-z0-9]*[a-z0-9])``; a duplicate is 409 ALREADY_EXISTS.
- A service account is addressed by email or unique id, under its project or the ``-`` wildcard. Under the
  wildcard an unknown account is 403, not 404 (the discovery document warns about exactly this).
- Eventual consistency: while ``consistency`` is on, a new account is invisible for
  ``service_account_invisible_seconds``: calls on it answer 403 (not 404), it is missing from lists, and IAM
  policy writes naming it fail with 400 "Service account ... does not exist." (``core/iam.py`` asks
  :meth:`IamApi.service_account_visible`).
- Key creation returns the only copy of the private key (a JSON key file, base64); the emulator keeps just
  the public certificate, which the emulator's token endpoint checks a key file's signed assertions against
  (:meth:`IamApi.key_certificate`). At most 10 user-managed keys per account.
- Google-managed accounts (service agents ``service-NUMBER@gcp-sa-*``, the Compute default and legacy Cloud
  Build accounts) exist with their project, except the service agents that GCP creates only on request: the
  IAP service agent ``service-NUMBER@gcp-sa-iap.iam.gserviceaccount.com`` exists once Service Usage's
  ``generateServiceIdentity`` made it (:meth:`IamApi.generate_service_agent`); until then a policy naming it
  is refused like one naming any missing account (400 "Service account ... does not exist.").
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..core.errors import GcpError, aborted, failed_precondition, invalid, permission_denied
from ..core.http import ApiModule, ApiRequest, route
from ..core.iam import PolicyMethods, new_etag
from ..core.paging import page
from ..core.validation import validate_discovery

if TYPE_CHECKING:
    from ..core.world import World

_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
_IAM_DOMAIN = ".iam.gserviceaccount.com"
#: A service account's own policy (who may act as it).
_IAM = PolicyMethods("iam.", version_message="Invalid requested policy version {requested}: must be 0, 1 or 3.")
# Google-managed accounts that exist as soon as their project does (service agents, Compute default,
# legacy Cloud Build): they are never created through this API.
_SERVICE_AGENT = re.compile(r"^service-(\d+)@[a-z0-9-]+\.iam\.gserviceaccount\.com$")
_GOOGLE_MANAGED = re.compile(r"^(\d+)(?:-compute@developer|@cloudbuild)\.gserviceaccount\.com$")
#: Service agents that do not come with the project: created by ``generateServiceIdentity`` (IAP's: "gcloud
#: beta services identity create --service=iap.googleapis.com", Cloud Run's IAP documentation).
_ON_REQUEST_AGENTS = frozenset({"gcp-sa-iap"})
#: Service agents not named ``gcp-sa-<service>`` (https://cloud.google.com/iam/docs/service-agents).
_AGENT_DOMAINS = {"run.googleapis.com": "serverless-robot-prod", "sqladmin.googleapis.com": "gcp-sa-cloud-sql"}
_MAX_KEYS = 10
_MAX_DISPLAY_NAME = 100
_MAX_DESCRIPTION = 256
_PATCHABLE = {"displayName", "description"}
_KEY_ALGORITHMS = {"KEY_ALG_UNSPECIFIED": "KEY_ALG_RSA_2048", "KEY_ALG_RSA_1024": "KEY_ALG_RSA_1024"}


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _generate_key(bits: int, common_name: str) -> tuple[Any, bytes, bytes]:
    """(key object or None, PKCS#8 private key PEM, self-signed X.509 certificate PEM).

    A real RSA key when ``cryptography`` is importable (so google-auth can sign with it); otherwise an
    obviously fake, well-formed PEM pair."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:  # pragma: no cover - cryptography is a dependency of google-auth's extras
        fake = base64.encodebytes(b"EMULATOR FAKE KEY - NOT A REAL RSA KEY").decode()
        return (
            None,
            f"-----BEGIN PRIVATE KEY-----\n{fake}-----END PRIVATE KEY-----\n".encode(),
            f"-----BEGIN CERTIFICATE-----\n{fake}-----END CERTIFICATE-----\n".encode(),
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    from ..core.identity import self_signed

    return key, private_pem, self_signed(key, common_name, backdate=timedelta(minutes=1))


def _pkcs12(key: Any, cert_pem: bytes, private_pem: bytes) -> bytes:
    """A P12 file protected with "notasecret", as GCP issues them."""
    if key is None:
        return private_pem
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    cert = x509.load_pem_x509_certificate(cert_pem)
    return pkcs12.serialize_key_and_certificates(b"privatekey", key, cert, None, BestAvailableEncryption(b"notasecret"))


class IamApi(ApiModule):
    prefix = "/iam"
    error_style = "both"
    service = "iam.googleapis.com"
    title = "Identity and Access Management (IAM) API"

    SA_KIND = "iam.serviceAccount"
    KEY_KIND = "iam.serviceAccountKey"
    #: Service agents made on request (see ``_ON_REQUEST_AGENTS``), by email.
    AGENT_KIND = "iam.serviceAgent"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.Lock()
        # email -> when it was created (monotonic), for the eventual-consistency invisibility window. An
        # account loaded from disk after a restart has no entry and is visible, as it would be by then.
        self._created_at: dict[str, float] = {}

    def reset(self) -> None:
        with self._lock:
            self._created_at.clear()

    # --- cross-module API -----------------------------------------------------------------------------

    def service_account_exists(self, email: str) -> bool:
        """Does the account exist (created here, or a Google-managed account of an existing project)?"""
        email = email.lower()
        return self.world.store.get(self.SA_KIND, email) is not None or self._google_managed(email)

    def service_account_visible(self, email: str) -> bool:
        """Does it exist and has eventual consistency made it visible yet?"""
        email = email.lower()
        if self.world.store.get(self.SA_KIND, email) is None:
            return self._google_managed(email)
        return self._past_window(email)

    def find_account(self, email: str) -> dict[str, Any] | None:
        """A user-managed account by email, or a service agent generated on request; None otherwise."""
        email = email.lower()
        return self.world.store.get(self.SA_KIND, email) or self.world.store.get(self.AGENT_KIND, email)

    def generate_service_agent(self, project_number: str, service: str) -> dict[str, Any]:
        """Service Usage's generateServiceIdentity: the service's agent in the project (``email``, ``uniqueId``),
        made on the first call and the same on every later one."""
        domain = _AGENT_DOMAINS.get(service, f"gcp-sa-{service.split('.', 1)[0]}")
        email = f"service-{project_number}@{domain}{_IAM_DOMAIN}"
        with self.world.store.lock:
            agent = self.world.store.get(self.AGENT_KIND, email)
            if agent is None:
                unique_id = "1" + "".join(secrets.choice("0123456789") for _ in range(20))
                agent = {"email": email, "uniqueId": unique_id}
                self.world.store.put(self.AGENT_KIND, email, agent)
        return agent

    def key_certificate(self, email: str, key_id: str) -> bytes | None:
        """The X.509 certificate (PEM) of an enabled key of an enabled user-managed account, to check what a
        key file signed; None when the account or key is absent or disabled."""
        sa = self.world.store.get(self.SA_KIND, email.lower())
        if sa is None or sa.get("disabled"):
            return None
        record = self.world.store.get(self.KEY_KIND, f"{sa['name']}/keys/{key_id}")
        if record is None or record.get("disabled"):
            return None
        return base64.b64decode(record["publicKeyData"])

    def _google_managed(self, email: str) -> bool:
        m = _SERVICE_AGENT.match(email) or _GOOGLE_MANAGED.match(email)
        if not m or self.world.find_project(m.group(1)) is None:
            return False
        domain = email.split("@", 1)[1].split(".", 1)[0]
        if _SERVICE_AGENT.match(email) and domain in _ON_REQUEST_AGENTS:
            return self.world.store.get(self.AGENT_KIND, email) is not None
        return True

    def _past_window(self, email: str) -> bool:
        s = self.world.control.settings
        if not s.consistency:
            return True
        with self._lock:
            created = self._created_at.get(email)
        return created is None or time.monotonic() - created >= s.service_account_invisible_seconds

    # --- lookup ---------------------------------------------------------------------------------------

    def _find(self, account: str) -> dict[str, Any] | None:
        account = account.lower()
        if "@" in account:
            return self.world.store.get(self.SA_KIND, account)
        for sa in self.world.store.list(self.SA_KIND):
            if sa["uniqueId"] == account:
                return sa
        return None

    @staticmethod
    def _denied(permission: str) -> GcpError:
        return permission_denied(
            f"Permission '{permission}' denied on resource (or it may not exist).",
            error_info={
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "iam.googleapis.com",
                "metadata": {"permission": permission},
            },
        )

    def _account(self, project: str, account: str, permission: str) -> dict[str, Any]:
        """The account a ``projects/{project}/serviceAccounts/{account}`` path names, after the checks GCP
        makes: SERVICE_DISABLED in the consumer project, 404 (403 under ``-``) when absent, 403 while
        eventual consistency still hides it."""
        sa = self._find(account)
        consumer = project
        if project == "-":
            # No project in the path: the account's own project is the one whose API must be on.
            if sa is not None:
                consumer = sa["projectId"]
            elif account.lower().endswith(_IAM_DOMAIN):
                candidate = account.lower().split("@", 1)[1][: -len(_IAM_DOMAIN)]
                consumer = candidate if self.world.find_project(candidate) is not None else ""
            else:
                consumer = ""
        if consumer:
            self.world.require_enabled(consumer, self.service, self.title)
        if sa is None:
            if project == "-":
                raise self._denied(permission)
            raise GcpError(404, "Unknown service account", "NOT_FOUND")
        if not self._past_window(sa["email"]):
            raise self._denied(permission)
        return sa

    def _put(self, sa: dict[str, Any]) -> None:
        self.world.store.put(self.SA_KIND, sa["email"], sa)

    # --- service accounts -----------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/serviceAccounts", name="serviceAccounts.create")
    def create(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iam", "v1", "CreateServiceAccountRequest")
        project = self.world.project(req["project"])
        pid = project["projectId"]
        account_id = body.get("accountId") or ""
        if not account_id:
            raise invalid("Account ID is required.")
        if not 6 <= len(account_id) <= 30:
            raise invalid(f'The account ID "{account_id}" does not have a length between 6 and 30.')
        if not _ACCOUNT_ID.match(account_id):
            raise invalid(f"{account_id} does not match [a-z]([-a-z0-9]*[a-z0-9]).")
        given = body.get("serviceAccount") or {}
        self._check_text(given)
        email = f"{account_id}@{pid}{_IAM_DOMAIN}"
        unique_id = "1" + "".join(secrets.choice("0123456789") for _ in range(20))
        sa: dict[str, Any] = {
            "name": f"projects/{pid}/serviceAccounts/{email}",
            "projectId": pid,
            "uniqueId": unique_id,
            "email": email,
            "etag": new_etag(),
            "oauth2ClientId": unique_id,
        }
        for field in ("displayName", "description"):
            if given.get(field):
                sa[field] = given[field]
        with self.world.store.lock:
            if self.world.store.get(self.SA_KIND, email) is not None:
                raise GcpError(
                    409, f"Service account {account_id} already exists within project projects/{pid}.", "ALREADY_EXISTS"
                )
            self._put(sa)
            with self._lock:
                self._created_at[email] = time.monotonic()
        return sa

    @staticmethod
    def _check_text(sa: dict[str, Any]) -> None:
        if len(sa.get("displayName") or "") > _MAX_DISPLAY_NAME:
            raise invalid(f"Display name must be at most {_MAX_DISPLAY_NAME} characters.")
        if len(sa.get("description") or "") > _MAX_DESCRIPTION:
            raise invalid(f"Description must be at most {_MAX_DESCRIPTION} characters.")

    @route("GET", "/v1/projects/{project}/serviceAccounts", name="serviceAccounts.list")
    def list_accounts(self, req: ApiRequest) -> dict[str, Any]:
        pid = self.world.project(req["project"])["projectId"]
        accounts = [
            sa
            for sa in self.world.store.list(self.SA_KIND)
            if sa["projectId"] == pid and self._past_window(sa["email"])
        ]
        chunk, token = page(accounts, req.args, default=20, maximum=100, opaque=True)
        out: dict[str, Any] = {}
        if chunk:
            out["accounts"] = chunk
        if token:
            out["nextPageToken"] = token
        return out

    @route("GET", "/v1/projects/{project}/serviceAccounts/{account}", name="serviceAccounts.get", check_service=False)
    def get(self, req: ApiRequest) -> dict[str, Any]:
        return self._account(req["project"], req["account"], "iam.serviceAccounts.get")

    @route(
        "PATCH", "/v1/projects/{project}/serviceAccounts/{account}", name="serviceAccounts.patch", check_service=False
    )
    def patch(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iam", "v1", "PatchServiceAccountRequest")
        mask = [_camel(p.strip()) for p in (body.get("updateMask") or "").split(",") if p.strip()]
        if not mask:
            raise invalid("updateMask must name the fields to update.")
        for path in mask:
            if path not in _PATCHABLE:
                raise invalid(f"Invalid update mask path: {path}. Only displayName and description can be updated.")
        given = body.get("serviceAccount") or {}
        self._check_text(given)
        with self.world.store.lock:
            sa = self._account(req["project"], req["account"], "iam.serviceAccounts.update")
            self._check_etag(sa, given.get("etag"))
            for path in mask:
                if given.get(path):
                    sa[path] = given[path]
                else:
                    sa.pop(path, None)
            sa["etag"] = new_etag()
            self._put(sa)
        # Only the name and the masked fields come back ("Other fields may be empty in the response"; recorded:
        # tests/golden/recordings/iam-serviceaccount.log answers {displayName, name}).
        return {"name": sa["name"], **{path: sa[path] for path in mask if path in sa}}

    @route(
        "PUT", "/v1/projects/{project}/serviceAccounts/{account}", name="serviceAccounts.update", check_service=False
    )
    def update(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iam", "v1", "ServiceAccount")
        self._check_text(body)
        with self.world.store.lock:
            sa = self._account(req["project"], req["account"], "iam.serviceAccounts.update")
            self._check_etag(sa, body.get("etag"))
            for field in _PATCHABLE:
                if body.get(field):
                    sa[field] = body[field]
                else:
                    sa.pop(field, None)
            sa["etag"] = new_etag()
            self._put(sa)
        return sa

    @staticmethod
    def _check_etag(sa: dict[str, Any], etag: str | None) -> None:
        if etag and etag != sa["etag"]:
            raise aborted("The etag in the request does not match the service account's current etag.")

    @route(
        "DELETE", "/v1/projects/{project}/serviceAccounts/{account}", name="serviceAccounts.delete", check_service=False
    )
    def delete(self, req: ApiRequest) -> dict[str, Any]:
        store = self.world.store
        with store.lock:
            sa = self._account(req["project"], req["account"], "iam.serviceAccounts.delete")
            for name in store.names(self.KEY_KIND, sa["name"] + "/keys/"):
                store.delete(self.KEY_KIND, name)
            self.world.iam.delete(sa["name"])
            self.world.iam.principal_deleted(f"serviceAccount:{sa['email']}", sa["uniqueId"])
            store.delete(self.SA_KIND, sa["email"])
            with self._lock:
                self._created_at.pop(sa["email"], None)
        return {}

    def _set_disabled(self, req: ApiRequest, schema: str, disabled: bool) -> dict[str, Any]:
        validate_discovery(req.json(), "iam", "v1", schema)
        permission = "iam.serviceAccounts.disable" if disabled else "iam.serviceAccounts.enable"
        with self.world.store.lock:
            sa = self._account(req["project"], req["account"], permission)
            if disabled:
                sa["disabled"] = True
            else:
                sa.pop("disabled", None)
            self._put(sa)
        return {}

    @route(
        "POST",
        "/v1/projects/{project}/serviceAccounts/{account}:disable",
        name="serviceAccounts.disable",
        check_service=False,
    )
    def disable(self, req: ApiRequest) -> dict[str, Any]:
        return self._set_disabled(req, "DisableServiceAccountRequest", True)

    @route(
        "POST",
        "/v1/projects/{project}/serviceAccounts/{account}:enable",
        name="serviceAccounts.enable",
        check_service=False,
    )
    def enable(self, req: ApiRequest) -> dict[str, Any]:
        return self._set_disabled(req, "EnableServiceAccountRequest", False)

    # --- the account's own IAM policy (who may act as it) ---------------------------------------------

    @route(
        "POST",
        "/v1/projects/{project}/serviceAccounts/{account}:getIamPolicy",
        name="serviceAccounts.getIamPolicy",
        mutating=False,
        check_service=False,
    )
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        _IAM.check_version(req.args)
        sa = self._account(req["project"], req["account"], "iam.serviceAccounts.getIamPolicy")
        return _IAM.get(self.world, sa["name"])

    @route(
        "POST",
        "/v1/projects/{project}/serviceAccounts/{account}:setIamPolicy",
        name="serviceAccounts.setIamPolicy",
        check_service=False,
    )
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iam", "v1", "SetIamPolicyRequest")
        sa = self._account(req["project"], req["account"], "iam.serviceAccounts.setIamPolicy")
        return _IAM.set(self.world, sa["name"], body.get("policy") or {})

    @route(
        "POST",
        "/v1/projects/{project}/serviceAccounts/{account}:testIamPermissions",
        name="serviceAccounts.testIamPermissions",
        mutating=False,
        check_service=False,
    )
    def test_iam_permissions(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iam", "v1", "TestIamPermissionsRequest")
        self._account(req["project"], req["account"], "iam.serviceAccounts.getIamPolicy")
        return _IAM.test(body.get("permissions") or [])

    # --- keys -----------------------------------------------------------------------------------------

    @route(
        "POST",
        "/v1/projects/{project}/serviceAccounts/{account}/keys",
        name="serviceAccounts.keys.create",
        check_service=False,
    )
    def create_key(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "iam", "v1", "CreateServiceAccountKeyRequest")
        key_type = body.get("privateKeyType") or "TYPE_GOOGLE_CREDENTIALS_FILE"
        if key_type == "TYPE_UNSPECIFIED":
            key_type = "TYPE_GOOGLE_CREDENTIALS_FILE"
        algorithm = _KEY_ALGORITHMS.get(body.get("keyAlgorithm") or "KEY_ALG_UNSPECIFIED", "KEY_ALG_RSA_2048")
        sa = self._account(req["project"], req["account"], "iam.serviceAccountKeys.create")
        record, private_data = self._issue_key(
            sa,
            key_type,
            algorithm,
            lambda: self._account(req["project"], req["account"], "iam.serviceAccountKeys.create"),
        )
        # publicKeyData is "only provided in GetServiceAccountKey responses" (discovery document); recorded:
        # tests/golden/recordings/iam-serviceaccountkey.log answers keys.create without it.
        response = self._key_view(record, with_public=False)
        response["privateKeyType"] = key_type
        response["privateKeyData"] = base64.b64encode(private_data).decode()
        return response

    def _issue_key(
        self, sa: dict[str, Any], key_type: str, algorithm: str, recheck: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bytes]:
        """Make a key for ``sa`` and keep its public half: (stored record, private key file bytes).
        ``recheck`` finds the account again under the store lock (it may have gone meanwhile)."""
        key_id = secrets.token_hex(20)
        name = f"{sa['name']}/keys/{key_id}"
        # Generate outside the store lock: a 2048-bit key takes tens of milliseconds.
        key_obj, private_pem, cert_pem = _generate_key(
            1024 if algorithm == "KEY_ALG_RSA_1024" else 2048, sa["uniqueId"]
        )
        now = _now()
        record: dict[str, Any] = {
            "name": name,
            "validAfterTime": _ts(now),
            "validBeforeTime": _ts(now + timedelta(days=3650)),
            "keyAlgorithm": algorithm,
            "keyOrigin": "GOOGLE_PROVIDED",
            "keyType": "USER_MANAGED",
            "privateKeyType": key_type,
            # Only the public half is kept; the private key exists solely in this response.
            "publicKeyData": base64.b64encode(cert_pem).decode(),
        }
        if key_type == "TYPE_PKCS12_FILE":
            private_data = _pkcs12(key_obj, cert_pem, private_pem)
        else:
            private_data = json.dumps(
                {
                    "type": "service_account",
                    "project_id": sa["projectId"],
                    "private_key_id": key_id,
                    "private_key": private_pem.decode(),
                    "client_email": sa["email"],
                    "client_id": sa["uniqueId"],
                    "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                    "token_uri": "https://oauth2.googleapis.com/token",
                    "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                    "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(sa['email'])}",
                    "universe_domain": "googleapis.com",
                },
                indent=2,
            ).encode()
        store = self.world.store
        with store.lock:
            sa = recheck()
            if len(store.names(self.KEY_KIND, sa["name"] + "/keys/")) >= _MAX_KEYS:
                raise failed_precondition("Precondition check failed.")
            store.put(self.KEY_KIND, name, record)
        return record, private_data

    def new_key_file(self, email: str) -> dict[str, Any]:
        """A JSON key file for a user-managed account, made as keys.create makes one (it counts towards the
        account's 10 keys and shows in keys.list). Raises 404 when the account does not exist."""

        def find() -> dict[str, Any]:
            sa = self.world.store.get(self.SA_KIND, email.lower())
            if sa is None:
                raise GcpError(404, f"Service account {email} does not exist.", "NOT_FOUND")
            return sa

        _, private_data = self._issue_key(find(), "TYPE_GOOGLE_CREDENTIALS_FILE", "KEY_ALG_RSA_2048", find)
        return json.loads(private_data)

    @staticmethod
    def _key_view(record: dict[str, Any], *, with_public: bool) -> dict[str, Any]:
        view = {k: v for k, v in record.items() if k not in ("publicKeyData", "privateKeyType")}
        if with_public:
            view["publicKeyData"] = record["publicKeyData"]
        if record.get("disabled"):
            view["disabled"] = True
        return view

    @route(
        "GET",
        "/v1/projects/{project}/serviceAccounts/{account}/keys",
        name="serviceAccounts.keys.list",
        check_service=False,
    )
    def list_keys(self, req: ApiRequest) -> dict[str, Any]:
        types = req.args.getlist("keyTypes")
        if "KEY_TYPE_UNSPECIFIED" in types:
            raise invalid("KEY_TYPE_UNSPECIFIED is not a valid key type filter.")
        sa = self._account(req["project"], req["account"], "iam.serviceAccountKeys.list")
        keys = [
            self._key_view(k, with_public=False)
            for k in self.world.store.list(self.KEY_KIND, sa["name"] + "/keys/")
            if not types or k["keyType"] in types
        ]
        return {"keys": keys} if keys else {}

    def _key(self, req: ApiRequest, permission: str) -> tuple[dict[str, Any], str]:
        sa = self._account(req["project"], req["account"], permission)
        name = f"{sa['name']}/keys/{req['key']}"
        record = self.world.store.get(self.KEY_KIND, name)
        if record is None:
            raise GcpError(404, f"Service account key {req['key']} does not exist.", "NOT_FOUND")
        return record, name

    @route(
        "GET",
        "/v1/projects/{project}/serviceAccounts/{account}/keys/{key}",
        name="serviceAccounts.keys.get",
        check_service=False,
    )
    def get_key(self, req: ApiRequest) -> dict[str, Any]:
        public_type = req.args.get("publicKeyType", "TYPE_NONE")
        if public_type not in ("TYPE_NONE", "TYPE_X509_PEM_FILE", "TYPE_RAW_PUBLIC_KEY"):
            raise invalid(f"Invalid value for publicKeyType: {public_type}.")
        record, _ = self._key(req, "iam.serviceAccountKeys.get")
        view = self._key_view(record, with_public=public_type != "TYPE_NONE")
        if public_type == "TYPE_RAW_PUBLIC_KEY":
            view["publicKeyData"] = self._raw_public_key(record["publicKeyData"])
        return view

    @staticmethod
    def _raw_public_key(cert_b64: str) -> str:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
        except ImportError:  # pragma: no cover
            return cert_b64
        try:
            cert = x509.load_pem_x509_certificate(base64.b64decode(cert_b64))
        except ValueError:  # a fake key's placeholder certificate
            return cert_b64
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    @route(
        "DELETE",
        "/v1/projects/{project}/serviceAccounts/{account}/keys/{key}",
        name="serviceAccounts.keys.delete",
        check_service=False,
    )
    def delete_key(self, req: ApiRequest) -> dict[str, Any]:
        with self.world.store.lock:
            _, name = self._key(req, "iam.serviceAccountKeys.delete")
            self.world.store.delete(self.KEY_KIND, name)
        return {}


__all__ = ["IamApi"]
