"""IAP mode of the server image (server_image/mlflow_gcp_iap.py and entrypoint.py's MLFLOW_GCP_AUTH_MODE=iap).

Pure parts first (configuration, the key cache, the verifier, user sync with a fake store); then one real server in
iap mode (PostgreSQL from the emulator's Cloud SQL, artifacts in its Cloud Storage, as test_entrypoint.py starts
it), whose IAP keys are an ES256 key made here and served as ``{kid: PEM}`` by a tiny local HTTP server, and whose
clients are plain ``requests`` carrying assertions signed here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import _helpers, jwt
from google.auth.crypt import es

from tests.server import test_entrypoint as _te
from tests.server.test_entrypoint import (
    ADMIN,
    ADMIN_USER,
    ENTRYPOINT,
    READY_TIMEOUT,
    Server,
    Servers,
    Stack,
    _env,
    cfg,
)

# test_entrypoint's module-scoped fixtures, reused (this module gets its own instances).
stack = _te.stack
servers = _te.servers

IAP_PATH = ENTRYPOINT.parent / "mlflow_gcp_iap.py"


def _load_iap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlflow_gcp_iap", IAP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


iap = _load_iap()

AUDIENCE = "/projects/123456789012/locations/us-central1/services/mlflow"
OTHER_AUDIENCE = "/projects/123456789012/locations/us-central1/services/other"
GOOGLE = "https://accounts.google.com"
ISSUER = "https://cloud.google.com/iap"


@dataclass
class Key:
    kid: str
    private_pem: bytes
    public_pem: str

    @classmethod
    def make(cls, kid: str | None = None) -> Key:
        private = ec.generate_private_key(ec.SECP256R1())
        return cls(
            kid=kid or f"kid-{uuid.uuid4().hex[:8]}",
            private_pem=private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            public_pem=private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode(),
        )

    def sign(self, email: str | None, *, kid: str | None = None, **claims: Any) -> str:
        """An IAP-style assertion (ES256, kid, iss, aud, email, sub, iat, exp = iat + 600); ``claims`` override."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"accounts.google.com:{abs(hash(email)) % 10**12}",
            "email": email,
            "google": {},
            "identity_source": "GOOGLE",
            "iat": now,
            "exp": now + 600,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = es.EsSigner.from_string(self.private_pem, key_id=kid or self.kid)
        return jwt.encode(signer, payload).decode()


IAP_KEY = Key.make()
#: Another key under the same kid (a forger who knows the kid) and one under a kid IAP does not publish.
SAME_KID_KEY = Key.make(IAP_KEY.kid)
UNKNOWN_KEY = Key.make()


def _headers(token: str) -> dict[str, str]:
    return {iap.ASSERTION_HEADER: token}


# --- unit: entrypoint configuration --------------------------------------------------------------------------


def _iap_env(**overrides: str) -> dict[str, str]:
    return _env(**{cfg.ENV_AUTH_MODE: "iap", cfg.ENV_IAP_AUDIENCE: AUDIENCE, **overrides})


def test_basic_mode_is_the_default_and_unchanged(tmp_path):
    config = cfg.Config.from_env(_env())
    assert config.auth_mode == "basic" and config.authorization_function == cfg.BASIC_AUTH_FUNCTION
    assert cfg.Config.from_env(_env(**{cfg.ENV_AUTH_MODE: "Basic"})).auth_mode == "basic"
    # IAP settings mean nothing in basic mode.
    assert cfg.Config.from_env(_env(**{cfg.ENV_IAP_AUDIENCE: "nonsense"})).iap_audience == ""
    ini = cfg.auth_ini(
        database_uri="postgresql://x",
        admin_username="admin",
        admin_password="p" * 12,
        default_permission="READ",
        auth_cache_ttl_seconds=60,
    )
    assert ini == (
        "[mlflow]\ndefault_permission = READ\ndatabase_uri = postgresql://x\nadmin_username = admin\n"
        f"admin_password = {'p' * 12}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    base = {**_env(), "PYTHONPATH": "/somewhere"}
    env = cfg.server_env(base, config, config.pool_plan(), tmp_path / "a.ini")
    # The image's own modules (mlflow_gcp_artifacts in every mode) come first on the path; no IAP setting is passed.
    assert env["PYTHONPATH"] == f"{cfg.IMAGE_DIR}:/somewhere" and cfg.ENV_AUTH_MODE not in env


def test_iap_mode_settings_are_parsed_and_normalised():
    config = cfg.Config.from_env(
        _iap_env(
            **{
                cfg.ENV_AUTH_MODE: " IAP ",
                cfg.ENV_IAP_ADMINS: "user:Ana@Example.com, bo@example.com,,ana@example.com,"
                "serviceAccount:ci@p.iam.gserviceaccount.com",
            }
        )
    )
    assert config.auth_mode == "iap" and config.authorization_function == "mlflow_gcp_iap:authenticate_request_iap"
    assert config.iap_audience == AUDIENCE
    assert config.iap_admins == ("ana@example.com", "bo@example.com", "ci@p.iam.gserviceaccount.com")
    assert config.iap_certs_url == "https://www.gstatic.com/iap/verify/public_key" == iap.DEFAULT_CERTS_URL
    assert cfg.Config.from_env(_iap_env()).iap_admins == ()
    for url in ("http://127.0.0.1:8790/_emulator/iap/verify/public_key", "http://localhost:1/k", "http://[::1]:2/k"):
        assert cfg.Config.from_env(_iap_env(**{cfg.ENV_IAP_CERTS_URL: url})).iap_certs_url == url
    # The module and the entrypoint agree on the names.
    assert (cfg.ENV_IAP_AUDIENCE, cfg.ENV_IAP_ADMINS, cfg.ENV_IAP_CERTS_URL) == (
        iap.ENV_AUDIENCE,
        iap.ENV_ADMINS,
        iap.ENV_CERTS_URL,
    )
    assert cfg.IAP_AUTH_FUNCTION.split(":") == [IAP_PATH.stem, iap.authenticate_request_iap.__name__]


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({cfg.ENV_AUTH_MODE: "oauth"}, cfg.ENV_AUTH_MODE),
        ({cfg.ENV_IAP_AUDIENCE: "<unset>"}, cfg.ENV_IAP_AUDIENCE),
        ({cfg.ENV_IAP_AUDIENCE: "/projects/my-project/locations/us-central1/services/mlflow"}, "project number"),
        ({cfg.ENV_IAP_AUDIENCE: "/projects/1/global/backendServices/2"}, cfg.ENV_IAP_AUDIENCE),
        ({cfg.ENV_IAP_AUDIENCE: AUDIENCE + "/extra"}, cfg.ENV_IAP_AUDIENCE),
        ({cfg.ENV_IAP_ADMINS: "group:ml@example.com"}, "not groups"),
        ({cfg.ENV_IAP_ADMINS: "ana"}, "not an email: 'ana'"),
        ({cfg.ENV_IAP_ADMINS: "a b@example.com"}, cfg.ENV_IAP_ADMINS),
        ({cfg.ENV_IAP_CERTS_URL: "http://keys.example.com/k"}, "loopback"),
        ({cfg.ENV_IAP_CERTS_URL: "file:///etc/keys"}, cfg.ENV_IAP_CERTS_URL),
    ],
    ids=["mode", "no-audience", "project-id", "load-balancer-audience", "audience-suffix", "group", "not-email",
         "space", "plain-http", "file-url"],
)  # fmt: skip
def test_iap_mode_errors_name_the_setting(overrides, complaint):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.Config.from_env(_iap_env(**overrides))
    assert complaint in str(err.value)


def test_iap_mode_ini_and_worker_environment(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    config = cfg.Config.from_env(_iap_env(**{cfg.ENV_IAP_ADMINS: "Ana@Example.com"}))
    path = cfg.write_private_file(
        tmp_path,
        "basic_auth.ini",
        cfg.auth_ini(
            database_uri=config.auth_uri,
            admin_username=config.admin_username,
            admin_password=config.admin_password,
            default_permission=config.default_permission,
            auth_cache_ttl_seconds=config.auth_cache_ttl,
            authorization_function=config.authorization_function,
        ),
    )
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    assert read_auth_config().authorization_function == "mlflow_gcp_iap:authenticate_request_iap"

    plan = config.pool_plan()
    env = cfg.server_env({**_iap_env(), "PYTHONPATH": f"/a{os.pathsep}/b"}, config, plan, path)
    assert env["PYTHONPATH"] == os.pathsep.join([str(IAP_PATH.parent), "/a", "/b"])
    assert cfg.server_env(_iap_env(), config, plan, path)["PYTHONPATH"] == str(IAP_PATH.parent)
    assert env[cfg.ENV_AUTH_MODE] == "iap" and env[cfg.ENV_IAP_AUDIENCE] == AUDIENCE
    assert env[cfg.ENV_IAP_ADMINS] == "ana@example.com" and env[cfg.ENV_IAP_CERTS_URL] == iap.DEFAULT_CERTS_URL
    # What the workers read back.
    settings = iap.Settings.from_env(env)
    assert settings == iap.Settings(AUDIENCE, frozenset({"ana@example.com"}), iap.DEFAULT_CERTS_URL)


def test_cryptography_is_pinned_at_the_version_tested_here():
    pins = dict(
        line.split("==", 1)
        for line in (IAP_PATH.parent / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["cryptography"] == importlib.metadata.version("cryptography")
    assert iap.check_runtime() == ""


# --- unit: keys, verification, users -------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeFetch:
    def __init__(self, keys: dict[str, str], max_age: int | None = 3600) -> None:
        self.keys, self.max_age, self.calls, self.fail = keys, max_age, 0, False

    def __call__(self, url: str) -> tuple[dict[str, str], int | None]:
        self.calls += 1
        if self.fail:
            raise OSError("connection refused")
        return dict(self.keys), self.max_age


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("public, max-age=21600", 21600),
        ("max-age=60, must-revalidate", 60),
        ('MAX-AGE="30"', 30),
        ("no-store", 0),
        ("public", None),
        (None, None),
        ("s-maxage=5", None),
    ],
)
def test_parse_max_age(header, expected):
    assert iap.parse_max_age(header) == expected


def test_key_cache_honours_max_age_and_refetches_an_unknown_kid_at_most_once_per_interval():
    clock, fetch = FakeClock(), FakeFetch({"a": "-----BEGIN PUBLIC KEY-----a"}, max_age=100)
    keys = iap.KeyCache("https://keys", fetch=fetch, clock=clock, min_interval=10)
    assert keys.get("a") and fetch.calls == 1
    clock.now += 99
    assert keys.get("a") and fetch.calls == 1  # within max-age
    clock.now += 1
    assert keys.get("a") and fetch.calls == 2  # expired: fetched again
    # Google rotates: a new kid is fetched at once, ...
    fetch.keys["b"] = "-----BEGIN PUBLIC KEY-----b"
    clock.now += 10
    assert keys.get("b") and fetch.calls == 3
    # ... but a kid nobody publishes (attacker-chosen) triggers at most one fetch per interval.
    assert keys.get("x") is None and fetch.calls == 3
    clock.now += 5
    assert keys.get("y") is None and fetch.calls == 3
    clock.now += 5
    assert keys.get("z") is None and fetch.calls == 4
    # A max-age below the interval is raised to it; above a day, lowered to a day.
    fetch.max_age = 0
    clock.now += 100
    keys.get("a")
    calls = fetch.calls
    clock.now += 9
    keys.get("a")
    assert fetch.calls == calls


def test_key_cache_keeps_stale_keys_when_a_refetch_fails_and_refuses_only_without_any():
    clock, fetch = FakeClock(), FakeFetch({"a": "-----BEGIN PUBLIC KEY-----a"}, max_age=60)
    keys = iap.KeyCache("https://keys", fetch=fetch, clock=clock, min_interval=10)
    fetch.fail = True
    with pytest.raises(iap.KeysUnavailable):
        keys.get("a")
    clock.now += 5
    with pytest.raises(iap.KeysUnavailable):
        keys.get("a")
    assert fetch.calls == 1  # failures are rate-limited too
    fetch.fail = False
    clock.now += 5
    assert keys.get("a") and fetch.calls == 2
    fetch.fail = True
    clock.now += 61
    assert keys.get("a") and fetch.calls == 3  # stale but usable
    clock.now += 1
    assert keys.get("a") and fetch.calls == 3


def test_fetch_keys_reads_googles_format(keyserver):
    keys, max_age = iap.fetch_keys(keyserver.url)
    assert keys == {IAP_KEY.kid: IAP_KEY.public_pem} and max_age == 3600


def _verifier(**kwargs: Any) -> tuple[Any, FakeFetch]:
    fetch = FakeFetch({IAP_KEY.kid: IAP_KEY.public_pem})
    return iap.Verifier(AUDIENCE, iap.KeyCache("https://keys", fetch=fetch), **kwargs), fetch


def test_verifier_accepts_iaps_assertion_and_remembers_it_until_it_expires():
    clock = FakeClock(time.time())
    verifier, _ = _verifier(clock=clock)
    lookups: list[str] = []
    get = verifier.keys.get
    verifier.keys.get = lambda kid: lookups.append(kid) or get(kid)
    token = IAP_KEY.sign("Ana@Example.COM")
    assert verifier.verify(token) == "ana@example.com"
    for _ in range(5):  # cached: no key lookup, no signature check
        assert verifier.verify(token) == "ana@example.com"
    assert lookups == [IAP_KEY.kid]
    clock.now += 601  # past its exp: verified again
    assert verifier.verify(token) == "ana@example.com"
    assert lookups == [IAP_KEY.kid] * 2


def test_verifier_cache_is_bounded():
    verifier, _ = _verifier(cache_size=2)
    for i in range(5):
        verifier.verify(IAP_KEY.sign(f"u{i}@example.com"))
    assert len(verifier._cache) == 2


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: SAME_KID_KEY.sign("ana@example.com"), "bad signature"),
        (lambda: UNKNOWN_KEY.sign("ana@example.com"), "a key IAP does not publish"),
        (lambda: IAP_KEY.sign("ana@example.com", aud=OTHER_AUDIENCE), f"wrong audience '{OTHER_AUDIENCE}'"),
        (lambda: IAP_KEY.sign("ana@example.com", iss=GOOGLE), f"wrong issuer '{GOOGLE}'"),
        (lambda: IAP_KEY.sign("ana@example.com", iat=int(time.time()) - 700, exp=int(time.time()) - 100), "expired"),
        (lambda: IAP_KEY.sign("ana@example.com", iat=int(time.time()) + 300), "issued in the future"),
        (lambda: IAP_KEY.sign(None), "no email"),
        (lambda: IAP_KEY.sign("  "), "no email"),
        (lambda: IAP_KEY.sign("ana@example.com", exp=None), "no iat/exp"),
        (lambda: "not-a-jwt", "not a JWT"),
        (lambda: _unsigned("ana@example.com"), "algorithm 'none'"),
        (lambda: _rs256("ana@example.com"), "algorithm 'RS256'"),
    ],
    ids=["same-kid-other-key", "unknown-kid", "audience", "issuer", "expired", "future", "no-email", "blank-email",
         "no-exp", "garbage", "alg-none", "alg-rs256"],
)  # fmt: skip
def test_verifier_refuses_with_a_reason_that_never_holds_the_token(token, reason):
    verifier, _ = _verifier()
    value = token()
    with pytest.raises(iap.Refused) as err:
        verifier.verify(value)
    assert reason in str(err.value)
    assert all(part not in str(err.value) for part in value.split(".") if len(part) > 8)


def _unsigned(email: str) -> str:
    good = IAP_KEY.sign(email)
    header = _helpers.unpadded_urlsafe_b64encode(json.dumps({"alg": "none", "kid": IAP_KEY.kid}).encode())
    return b".".join([header, good.split(".")[1].encode(), b""]).decode()


def _rs256(email: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth import crypt

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "email": email, "iat": now, "exp": now + 600}
    return jwt.encode(crypt.RSASigner.from_string(pem, key_id=IAP_KEY.kid), payload).decode()


@dataclass
class FakeUser:
    username: str
    is_admin: bool
    password: str


class FakeStore:
    """MLflow's auth store, as far as ensure_user uses it."""

    def __init__(self) -> None:
        self.users: dict[str, FakeUser] = {}
        self.calls: list[str] = []
        #: Simulates another worker creating the user between our get_user and create_user.
        self.race = False

    def get_user(self, username: str) -> FakeUser:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        self.calls.append(f"get {username}")
        if username not in self.users:
            raise MlflowException(f"User with username={username} not found", RESOURCE_DOES_NOT_EXIST)
        return self.users[username]

    def create_user(self, username: str, password: str, is_admin: bool = False) -> FakeUser:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

        self.calls.append(f"create {username} admin={is_admin}")
        if self.race:
            self.users[username] = FakeUser(username, False, "theirs-password")
        if username in self.users:
            raise MlflowException(f"User (username={username}) already exists.", RESOURCE_ALREADY_EXISTS)
        self.users[username] = FakeUser(username, is_admin, password)
        return self.users[username]

    def update_user(self, username: str, password: str | None = None, is_admin: bool | None = None) -> FakeUser:
        self.calls.append(f"update {username} admin={is_admin}")
        assert password is None
        self.users[username].is_admin = bool(is_admin)
        return self.users[username]


def _state(admins: str = "boss@example.com") -> Any:
    return iap._State(iap.Settings(AUDIENCE, iap.parse_admins(admins), "https://keys"))


def test_ensure_user_creates_with_an_unknown_password_and_syncs_admin_once_per_period(capsys, monkeypatch):
    state, store = _state(), FakeStore()
    iap.ensure_user(state, "ana@example.com", store, "admin")
    iap.ensure_user(state, "boss@example.com", store, "admin")
    ana, boss = store.users["ana@example.com"], store.users["boss@example.com"]
    assert (ana.is_admin, boss.is_admin) == (False, True)
    assert len(ana.password) >= 40 and ana.password != boss.password
    err = capsys.readouterr().err
    assert "[mlflow-gcp] first sign-in of ana@example.com" in err and "(an MLflow admin)" in err
    assert ana.password not in err
    # Seen in this process: no store call until the period is over.
    store.calls.clear()
    iap.ensure_user(state, "ana@example.com", store, "admin")
    assert store.calls == []
    # An admin promoted ana through MLflow's API, and boss left the list (a new revision): both are put back.
    ana.is_admin = True
    state = _state(admins="")
    iap.ensure_user(state, "ana@example.com", store, "admin")
    iap.ensure_user(state, "boss@example.com", store, "admin")
    assert (ana.is_admin, boss.is_admin) == (False, False)
    assert "boss@example.com is no longer an MLflow admin" in capsys.readouterr().err
    # After the period, checked again.
    ana.is_admin = True
    later = time.monotonic() + iap.USER_SYNC_SECONDS + 1
    monkeypatch.setattr(iap.time, "monotonic", lambda: later)
    iap.ensure_user(state, "ana@example.com", store, "admin")
    assert ana.is_admin is False


def test_ensure_user_tolerates_a_concurrent_creation_and_never_touches_the_basic_admin():
    state, store = _state(admins="boss@example.com"), FakeStore()
    store.race = True
    iap.ensure_user(state, "boss@example.com", store, "admin")
    # Created by "the other worker" (not admin): found, then made an admin as the list says.
    assert store.users["boss@example.com"].is_admin is True
    assert store.users["boss@example.com"].password == "theirs-password"
    store = FakeStore()
    store.users["admin"] = FakeUser("admin", True, "pinned")
    iap.ensure_user(_state(admins=""), "admin", store, "admin")
    assert store.calls == [] and store.users["admin"].is_admin is True


# --- the real thing: a key server and one server in iap mode -------------------------------------------------


class KeyServer:
    """Serves ``{kid: PEM}`` as https://www.gstatic.com/iap/verify/public_key does, counting the fetches."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.keys).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/iap/verify/public_key"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def keyserver() -> Iterator[KeyServer]:
    ks = KeyServer({IAP_KEY.kid: IAP_KEY.public_pem})
    yield ks
    ks.close()


ANA = "Ana@Example.com"  # mixed case on purpose: the MLflow user is lower case
BO = "bo@example.com"
BOSS = "boss@example.com"
DAVE = "dave@example.com"
CAROL = "carol@example.com"


@dataclass
class IapServer:
    server: Server
    stack: Stack
    auth_db: str
    keyserver: KeyServer

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, email: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, email, **kwargs)

    def post(self, path: str, email: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, email, **kwargs)

    def request(self, method: str, path: str, email: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if email is not None:
            headers[iap.ASSERTION_HEADER] = IAP_KEY.sign(email)
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=20, **kwargs)

    def users(self) -> dict[str, bool]:
        with self.stack.connect(self.auth_db) as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT username, is_admin FROM users").fetchall()}


@pytest.fixture(scope="module")
def iap_server(servers: Servers, stack: Stack, keyserver: KeyServer) -> IapServer:
    """Its own databases (users here are IAP's, not test_entrypoint's), two workers, hypercorn."""
    tracking = stack.create_database(f"iap_{uuid.uuid4().hex[:6]}")
    auth = stack.create_database(f"iap_auth_{uuid.uuid4().hex[:6]}")
    server = servers.start(
        **{
            cfg.ENV_DB_NAME: tracking,
            cfg.ENV_AUTH_DB_NAME: auth,
            cfg.ENV_AUTH_MODE: "iap",
            cfg.ENV_IAP_AUDIENCE: AUDIENCE,
            # The prefix and case as the tool's config may write them.
            cfg.ENV_IAP_ADMINS: f"user:{BOSS.upper()}, {DAVE}",
            cfg.ENV_IAP_CERTS_URL: keyserver.url,
        }
    )
    s = IapServer(server, stack, auth, keyserver)
    # Ready when an API answers an assertion (/health answers before the database is touched). An earlier user
    # than the tests' own, so their first sign-ins are theirs.
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if s.get("/api/2.0/mlflow/experiments/search?max_results=1", "probe@example.com").status_code == 200:
                return s
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"server not ready in {READY_TIMEOUT}s:\n{server.log()[-4000:]}")


def test_an_assertion_signs_in_and_the_email_becomes_the_mlflow_user(iap_server):
    r = iap_server.get("/api/2.0/mlflow/users/current", ANA)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == "ana@example.com" and body["user"]["is_admin"] is False
    assert body["is_basic_auth"] is False  # the UI then offers no logout / change-password
    r = iap_server.get("/api/2.0/mlflow/users/current", BOSS)
    assert r.json()["user"] == {**r.json()["user"], "username": BOSS, "is_admin": True}
    # An admin may do what only admins do, e.g. make someone an admin; a user may not.
    promote = {"username": "ana@example.com", "is_admin": True}
    assert iap_server.request("PATCH", "/api/2.0/mlflow/users/update-admin", ANA, json=promote).status_code == 403
    promote["is_admin"] = False
    assert iap_server.request("PATCH", "/api/2.0/mlflow/users/update-admin", BOSS, json=promote).status_code == 200
    users = iap_server.users()
    assert users["ana@example.com"] is False and users[BOSS] is True and users[ADMIN_USER] is True
    log = iap_server.server.log()
    assert "[mlflow-gcp] first sign-in of ana@example.com: created the MLflow user" in log
    assert "sign-in through IAP only" in log


def test_existing_users_admin_flag_follows_the_list(iap_server):
    """Users an admin made through MLflow's API before their first IAP visit: on it, is_admin is made to match
    MLFLOW_GCP_IAP_ADMINS (dave is listed, carol is not but was promoted)."""
    for name in (DAVE, CAROL):
        r = iap_server.post(
            "/api/2.0/mlflow/users/create", BOSS, json={"username": name, "password": f"pw-{uuid.uuid4().hex}"}
        )
        assert r.status_code == 200, r.text
    promote = iap_server.request(
        "PATCH", "/api/2.0/mlflow/users/update-admin", BOSS, json={"username": CAROL, "is_admin": True}
    )
    assert promote.status_code == 200, promote.text
    assert iap_server.users()[CAROL] is True and iap_server.users()[DAVE] is False
    assert iap_server.get("/api/2.0/mlflow/users/current", DAVE).json()["user"]["is_admin"] is True
    assert iap_server.get("/api/2.0/mlflow/users/current", CAROL).json()["user"]["is_admin"] is False
    assert iap_server.users()[CAROL] is False and iap_server.users()[DAVE] is True


def test_concurrent_first_visits_of_one_user_all_succeed(iap_server):
    """Both workers (and several threads in each) see a new user at once: one creates it, the others find it."""
    email = f"eve-{uuid.uuid4().hex[:6]}@example.com"
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: iap_server.get("/api/2.0/mlflow/users/current", email).status_code, range(24)))
    assert codes == [200] * 24
    assert email in iap_server.users()
    assert iap_server.server.log().count(f"first sign-in of {email}") == 1


def _refusals() -> list[tuple[str, dict[str, str], Any]]:
    now = int(time.time())
    return [
        ("no-header", {}, None),
        # What IAP adds besides the assertion; alone, anybody could send it.
        ("forged-email-header", {"X-Goog-Authenticated-User-Email": f"accounts.google.com:{BOSS}"}, None),
        ("other-key-same-kid", _headers(SAME_KID_KEY.sign(BOSS)), None),
        ("unknown-kid", _headers(UNKNOWN_KEY.sign(BOSS)), None),
        ("wrong-audience", _headers(IAP_KEY.sign(BOSS, aud="/projects/1/locations/us-central1/services/x")), None),
        ("wrong-issuer", _headers(IAP_KEY.sign(BOSS, iss="https://accounts.google.com")), None),
        ("expired", _headers(IAP_KEY.sign(BOSS, iat=now - 1200, exp=now - 600)), None),
        ("garbage", _headers("eyJhbGciOiJFUzI1NiJ9.e30.c2ln"), None),
        # Only the assertion is trusted: not the ini admin's (valid) password, not a bearer token of one's own.
        ("basic-auth-admin", {}, ADMIN),
        ("bearer", {"Authorization": f"Bearer {IAP_KEY.sign(BOSS)}"}, None),
    ]


def test_anything_but_a_valid_assertion_is_401_without_a_basic_challenge(iap_server):
    expected_reasons = [
        "no IAP assertion",
        "bad signature",
        "a key IAP does not publish",
        "wrong audience",
        "wrong issuer",
        "expired",
    ]
    paths = [
        ("GET", "/api/2.0/mlflow/experiments/search?max_results=1"),
        ("GET", "/ajax-api/2.0/mlflow/users/current"),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/0/x/y.txt"),  # a native FastAPI route (the bridge)
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/x/y.txt"),
    ]
    for name, headers, auth in _refusals():
        for method, path in paths:
            r = requests.request(method, f"{iap_server.url}{path}", headers=headers, auth=auth, data=b"x", timeout=20)
            assert r.status_code == 401, (name, method, path, r.status_code, r.text)
            assert "WWW-Authenticate" not in r.headers, (name, path)
            assert r.json()["error_code"] == "UNAUTHENTICATED", (name, path)
    log = iap_server.server.log()
    for reason in expected_reasons:
        assert reason in log
    for _, headers, _ in _refusals():
        for value in headers.values():
            if value.count(".") == 2:
                assert value not in log and value.split(".")[2] not in log
    # Health and server-info stay public (probes).
    assert requests.get(f"{iap_server.url}/health", timeout=10).status_code == 200


def test_permissions_are_per_user(iap_server):
    """Ana creates an experiment (and gets MANAGE on it); Bo, with the default READ, can read it, not change it."""
    name = f"ana-exp-{uuid.uuid4().hex[:6]}"
    r = iap_server.post("/api/2.0/mlflow/experiments/create", ANA, json={"name": name})
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment_id"]
    got = iap_server.get(f"/api/2.0/mlflow/experiments/get?experiment_id={exp_id}", BO)
    assert got.status_code == 200 and got.json()["experiment"]["name"] == name
    rename = {"experiment_id": exp_id, "new_name": f"{name}-bo"}
    assert iap_server.post("/api/2.0/mlflow/experiments/update", BO, json=rename).status_code == 403
    assert iap_server.post("/api/2.0/mlflow/experiments/delete", BO, json={"experiment_id": exp_id}).status_code == 403
    assert iap_server.post("/api/2.0/mlflow/runs/create", BO, json={"experiment_id": exp_id}).status_code == 403
    rename["new_name"] = f"{name}-renamed"
    assert iap_server.post("/api/2.0/mlflow/experiments/update", ANA, json=rename).status_code == 200
    # Ana (MANAGE) grants Bo EDIT: now he may.
    grant = {"username": BO, "resource_type": "experiment", "resource_id": exp_id, "permission": "EDIT"}
    r = iap_server.post("/api/3.0/mlflow/users/permissions/grant", ANA, json=grant)
    assert r.status_code == 200, r.text
    rename["new_name"] = f"{name}-bo"
    assert iap_server.post("/api/2.0/mlflow/experiments/update", BO, json=rename).status_code == 200


def test_proxied_artifacts_honour_the_assertion(iap_server):
    """The native FastAPI artifact routes authenticate through MLflow's bridge to the same function."""
    exp_id = iap_server.post(
        "/api/2.0/mlflow/experiments/create", ANA, json={"name": f"art-{uuid.uuid4().hex[:6]}"}
    ).json()["experiment_id"]
    run = iap_server.post("/api/2.0/mlflow/runs/create", ANA, json={"experiment_id": exp_id}).json()["run"]
    assert run["info"]["artifact_uri"].startswith(f"mlflow-artifacts:/{exp_id}/")
    rel = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/") + "/notes/hello.txt"
    url = f"/api/2.0/mlflow-artifacts/artifacts/{rel}"
    payload = os.urandom(4096)
    put = iap_server.request("PUT", url, ANA, data=payload)
    assert put.status_code == 200, put.text
    assert iap_server.get(url, ANA).content == payload
    assert iap_server.get(url, BO).content == payload  # READ by default
    assert iap_server.request("PUT", url, BO, data=b"overwrite").status_code == 403
    assert iap_server.get(url).status_code == 401
    blob = iap_server.stack.gcs.bucket(iap_server.stack.bucket).get_blob(f"artifacts/{rel}")
    assert blob is not None and blob.download_as_bytes() == payload
    # Listing goes through Flask (not the FastAPI route): same identity.
    listed = iap_server.get(f"/api/2.0/mlflow-artifacts/artifacts?path={rel.rsplit('/', 1)[0]}", BO)
    assert listed.status_code == 200 and [f["path"] for f in listed.json()["files"]] == ["hello.txt"]


def test_keys_are_fetched_rarely(iap_server):
    """Every test above signed fresh assertions; the workers fetched the key set about once each (plus, at most,
    one refetch each for the unknown kid)."""
    assert iap_server.get("/api/2.0/mlflow/users/current", ANA).status_code == 200
    assert 1 <= iap_server.keyserver.fetches <= 4
