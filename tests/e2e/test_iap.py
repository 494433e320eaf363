"""Sign in with Google: `up` in iap mode puts Identity-Aware Proxy in front of MLflow; users and service accounts
reach it with the real mlflow client through mlflow-gcp's request-header plugin and their own Application Default
Credentials (issued by the emulator, whose token endpoint they refresh against like Google's); the server trusts
only IAP's signed assertion; MLflow's permissions work per user; basic <-> iap switches converge.

One stack serves the module (tests run in file order; the switching tests come last)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import crypt, jwt

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import EmulatorAdmin
from tests.e2e.conftest import Cli, kill_after, make_cli, mutations_during

MB = 1024 * 1024
REGION = "us-central1"
ANA, BEN, CARL = "ana@example.com", "ben@example.com", "carl@example.org"


def _config(path: Path, project: str, mode: str, members: list[str], admins: list[str]) -> Path:
    path.write_text(
        textwrap.dedent(f"""
        project = "{project}"
        [access]
        mode = "{mode}"
        members = {json.dumps(members)}
        admins = {json.dumps(admins)}
        """)
    )
    return path


class Stack:
    def __init__(self, cli: Cli, admin: EmulatorAdmin, base: Path) -> None:
        self.cli = cli
        self.admin = admin
        self.base = base
        self.ci_account = f"ci-runner@{cli.project}.iam.gserviceaccount.com"
        self.config_file = base / "mlflow-gcp.toml"
        self.url = ""

    def configure(self, mode: str, members: list[str] | None = None) -> None:
        members = (
            members if members is not None else [f"user:{ANA}", f"user:{BEN}", f"serviceAccount:{self.ci_account}"]
        )
        _config(self.config_file, self.cli.project, mode, members, [ANA])

    def up(self, *extra: str, check: bool = True) -> Any:
        return self.cli("up", "--config", str(self.config_file), *extra, check=check)

    def identity(self, email: str, kind: str = "authorized_user") -> Path:
        """An ADC file for ``email`` whose token endpoint is the emulator's (like gcloud's or a key file)."""
        r = requests.post(
            f"{self.admin.base_url}/_emulator/identities", json={"email": email, "type": kind}, timeout=30
        )
        r.raise_for_status()
        path = self.base / f"adc-{email}.json"
        path.write_text(json.dumps(r.json()))
        return path

    def client_env(self, adc: Path | None) -> dict[str, str]:
        env = {k: v for k, v in self.cli.env.items() if not k.startswith(("MLFLOW_TRACKING_", "GOOGLE_APPLICATION"))}
        env["MLFLOW_TRACKING_URI"] = self.url
        if adc is not None:
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(adc)
        return env

    def mlflow(self, adc: Path | None, script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``script`` with the real mlflow client in a fresh process, as the identity in ``adc``; its last stdout
        line is JSON."""
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            env={**self.client_env(adc), **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])


LOG_A_RUN = """
    import hashlib, json, os, sys, mlflow
    size, where = int(sys.argv[1]), sys.argv[2]
    client = mlflow.MlflowClient()
    exp = client.create_experiment(sys.argv[3])
    run = client.create_run(exp, run_name="signed-in-run")
    client.log_param(run.info.run_id, "alpha", "0.5")
    for step in range(3):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    path = os.path.join(where, "model.bin")
    data = os.urandom(size)
    open(path, "wb").write(data)
    client.log_artifact(run.info.run_id, path)
    got = client.download_artifacts(run.info.run_id, "model.bin", os.path.join(where, "dl"))
    same = hashlib.sha256(open(got, "rb").read()).hexdigest() == hashlib.sha256(data).hexdigest()
    user = mlflow.get_run(run.info.run_id).info.user_id
    print(json.dumps({"experiment": exp, "run": run.info.run_id, "same": same,
                      "params": client.get_run(run.info.run_id).data.params, "user": user}))
"""

TRY = """
    import json, sys, mlflow
    from mlflow.exceptions import MlflowException, RestException
    client = mlflow.MlflowClient()
    action, exp = sys.argv[1], sys.argv[2]
    try:
        if action == "read":
            client.get_experiment(exp)
        elif action == "tag":
            client.set_experiment_tag(exp, "owner-note", "edited")
        elif action == "search":
            client.search_experiments(max_results=1)
        print(json.dumps({"ok": True}))
    except MlflowException as exc:
        print(json.dumps({"ok": False, "error": str(exc)[:400]}))
"""


def deploy(emulator: Emulator, base: Path, mode: str) -> Stack:
    cli = make_cli(emulator, base)
    admin = EmulatorAdmin(emulator.base_url)
    s = Stack(cli, admin, base)
    cli.env["MLFLOW_GCP_CONFIG_DIR"] = str(base / "config")
    # The CI runner's account exists before anyone grants it anything (IAM refuses unknown accounts).
    from mlflow_gcp.emulator.testing import Clients
    from tests.conftest import enable

    enable(Clients(emulator.base_url), cli.project, "iam.googleapis.com")
    Clients(emulator.base_url).iam().projects().serviceAccounts().create(
        name=f"projects/{cli.project}", body={"accountId": "ci-runner"}
    ).execute()
    # The operator running `up` is Ana (an admin member): `up` proves a signed-in request works.
    cli.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(s.identity(ANA))
    s.configure(mode)
    out = json.loads(s.up("--json").stdout)
    assert out["ok"], out
    s.url = out["url"]
    return s


@pytest.fixture(scope="module")
def stack(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return deploy(emulator, tmp_path_factory.mktemp("iap"), "iap")


def test_up_in_iap_mode_closes_the_service_and_says_who_gets_in(stack: Stack):
    status = json.loads(stack.cli("status", "--config", str(stack.config_file), "--json").stdout)
    assert status["ok"], status
    assert status["access"] == {
        "mode": "iap",
        "members": sorted([f"user:{ANA}", f"user:{BEN}", f"serviceAccount:{stack.ci_account}"]),
    }
    server = status["server"]
    assert server["unauthenticated"] == 401 and server["authenticated"] == 200, server
    # Nobody reaches it anonymously: not the API, not /health, not a browser (sent to sign in).
    api = f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(api, timeout=30).status_code == 401
    page = requests.get(stack.url, headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
    assert page.status_code == 302 and "/_emulator/iap/signin" in page.headers["Location"]
    # `env` hands out only the URI: the plugin signs requests in.
    env = json.loads(stack.cli("env", "--config", str(stack.config_file), "--json").stdout)
    assert env == {"MLFLOW_TRACKING_URI": stack.url}
    # Only IAP's service agent may invoke the service: allUsers is gone.
    from mlflow_gcp.emulator.testing import Clients

    clients = Clients(stack.admin.base_url)
    service = f"projects/{stack.cli.project}/locations/{REGION}/services/mlflow-dev"
    policy = clients.run_services().get_iam_policy(request={"resource": service})
    invokers = {m for b in policy.bindings if b.role == "roles/run.invoker" for m in b.members}
    number = clients.projects().get_project(name=f"projects/{stack.cli.project}").name.split("/")[1]
    assert invokers == {f"serviceAccount:service-{number}@gcp-sa-iap.iam.gserviceaccount.com"}
    # A second `up` changes nothing.
    assert mutations_during(stack.admin, lambda: stack.up()) == []


def test_a_granted_user_and_a_granted_service_account_use_mlflow_through_the_plugin(stack: Stack, tmp_path: Path):
    ana = stack.mlflow(stack.identity(ANA), LOG_A_RUN, str(100 * MB), str(tmp_path), "ana-experiment")
    assert ana["same"] and ana["params"] == {"alpha": "0.5"}
    # A CI job never ran mlflow-gcp: no registry, just the URL listed in the environment.
    ci_key = stack.identity(stack.ci_account, "service_account")
    ci = stack.mlflow(
        ci_key,
        LOG_A_RUN,
        str(1 * MB),
        str(tmp_path),
        "ci-experiment",
        env={"MLFLOW_GCP_CONFIG_DIR": str(tmp_path / "nothing-registered"), "MLFLOW_GCP_IAP_URLS": stack.url},
    )
    assert ci["same"] and ci["params"] == {"alpha": "0.5"}


def test_an_ungranted_user_is_refused_by_iap(stack: Stack):
    carl = stack.mlflow(stack.identity(CARL), TRY, "search", "0")
    assert not carl["ok"] and "403" in carl["error"] and "have access" in carl["error"], carl  # IAP's page


def test_mlflow_permissions_apply_per_signed_in_user(stack: Stack, tmp_path: Path):
    ana = stack.mlflow(stack.identity(ANA), LOG_A_RUN, "1024", str(tmp_path), "ana-private")
    ben = stack.identity(BEN)
    assert stack.mlflow(ben, TRY, "read", ana["experiment"]) == {"ok": True}  # default READ
    tagged = stack.mlflow(ben, TRY, "tag", ana["experiment"])
    # MLflow's refusal ("Permission denied"), not IAP's: Ben passed IAP.
    assert not tagged["ok"] and "403" in tagged["error"] and "Permission denied" in tagged["error"], tagged
    # Ana created it, so she may edit it.
    assert stack.mlflow(stack.identity(ANA), TRY, "tag", ana["experiment"]) == {"ok": True}


def _revision_port(stack: Stack) -> int:
    procs = stack.admin.run_processes()
    ours = [p for name, p in procs.items() if f"/{stack.cli.project}/" in name and p["ready"] and p["alive"]]
    assert ours, procs
    return ours[-1]["port"]


def _assertion(key: Any, kid: str, audience: str, email: str) -> str:
    now = int(time.time())
    signer = crypt.ES256Signer.from_string(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        kid,
    )
    claims = {
        "iss": "https://cloud.google.com/iap",
        "aud": audience,
        "email": email,
        "sub": f"accounts.google.com:{email}",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(signer, claims).decode()


def test_the_server_trusts_only_iaps_signed_assertion(stack: Stack):
    port = _revision_port(stack)
    direct = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    audience = _audience(stack)
    # A client's own identity header, straight to the server: refused.
    assert (
        requests.get(
            direct, headers={"X-Goog-Authenticated-User-Email": f"accounts.google.com:{ANA}"}, timeout=30
        ).status_code
        == 401
    )
    # Signed by another key with IAP's claims: refused.
    forged = _assertion(ec.generate_private_key(ec.SECP256R1()), "forged", audience, ANA)
    assert requests.get(direct, headers={"X-Goog-IAP-JWT-Assertion": forged}, timeout=30).status_code == 401
    # Signed by IAP's key but for another service: refused.
    other = requests.post(
        f"{stack.admin.base_url}/_emulator/iap/assertion",
        json={"email": ANA, "audience": audience.replace("/services/", "/services/other-")},
        timeout=30,
    ).json()["assertion"]
    assert requests.get(direct, headers={"X-Goog-IAP-JWT-Assertion": other}, timeout=30).status_code == 401
    # The genuine one (IAP's key, this service): accepted, so the refusals above were about the assertion.
    genuine = requests.post(
        f"{stack.admin.base_url}/_emulator/iap/assertion", json={"email": ANA, "audience": audience}, timeout=30
    ).json()["assertion"]
    assert requests.get(direct, headers={"X-Goog-IAP-JWT-Assertion": genuine}, timeout=30).status_code == 200
    # Through the front end, a forged identity header without a token never gets past IAP.
    front = f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert (
        requests.get(
            front, headers={"X-Goog-Authenticated-User-Email": f"accounts.google.com:{ANA}"}, timeout=30
        ).status_code
        == 401
    )


def _audience(stack: Stack) -> str:
    """What IAP puts in ``aud`` for this service: ``/projects/NUMBER/locations/REGION/services/NAME``."""
    from mlflow_gcp.emulator.testing import Clients

    project = Clients(stack.admin.base_url).projects().get_project(name=f"projects/{stack.cli.project}")
    return f"/{project.name}/locations/{REGION}/services/mlflow-dev"


def test_the_ui_loads_behind_iap_in_a_browser(stack: Stack, tmp_path: Path):
    playwright = pytest.importorskip("playwright.sync_api")
    experiment = stack.mlflow(stack.identity(ANA), LOG_A_RUN, "1024", str(tmp_path), "browser-experiment")["experiment"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            for email, allowed in ((ANA, True), (CARL, False)):
                page = browser.new_context().new_page()
                # What the page saw, for the failure message: answers >= 400 and console errors.
                seen: list[str] = []
                page.on("response", lambda r, seen=seen: r.status >= 400 and seen.append(f"{r.status} {r.url}"))
                page.on("console", lambda m, seen=seen: m.type == "error" and seen.append(f"console: {m.text}"))
                page.goto(f"{stack.url}/#/experiments/{experiment}/runs")
                page.fill("input[name=email]", email)
                page.click("button[type=submit]")
                if allowed:
                    # Signed in (the fragment, never sent to a server, did not survive the sign-in form): go on.
                    page.wait_for_url(f"{stack.url}/**")
                    page.goto(f"{stack.url}/#/experiments/{experiment}/runs")
                    try:
                        page.get_by_text("signed-in-run").first.wait_for(timeout=60_000)
                    except Exception:
                        page.screenshot(path="/tmp/iap-ui.png")
                        raise AssertionError(f"{page.url}\n" + "\n".join(seen)) from None
                else:
                    page.wait_for_load_state()
                    assert "access" in page.content().lower() and "signed-in-run" not in page.content()
        finally:
            browser.close()


def test_removing_a_member_removes_their_access(stack: Stack):
    stack.configure("iap", [f"user:{ANA}", f"serviceAccount:{stack.ci_account}"])
    stack.up()
    ben = stack.mlflow(stack.identity(BEN), TRY, "search", "0")
    assert not ben["ok"] and "403" in ben["error"], ben
    assert stack.mlflow(stack.identity(ANA), TRY, "search", "0") == {"ok": True}


def test_switching_basic_and_iap_converges_each_way(stack: Stack):
    stack.configure("basic")
    out = json.loads(stack.up("--json").stdout)
    assert out["ok"]
    assert mutations_during(stack.admin, lambda: stack.up()) == []
    creds = json.loads(stack.cli("env", "--config", str(stack.config_file), "--json").stdout)
    api = f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert (
        requests.get(
            api, auth=(creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]), timeout=30
        ).status_code
        == 200
    )
    status = json.loads(stack.cli("status", "--config", str(stack.config_file), "--json").stdout)
    assert status["ok"] and status["access"] == {"mode": "basic", "members": []}, status
    # Back to iap, killed part-way: the next `up` converges and the one after changes nothing.
    stack.configure("iap")
    kill_after(stack.cli, stack.admin, 2, "up", "--config", str(stack.config_file))
    assert json.loads(stack.up("--json", "--break-lock").stdout)["ok"]
    assert mutations_during(stack.admin, lambda: stack.up()) == []
    assert stack.mlflow(stack.identity(BEN), TRY, "search", "0") == {"ok": True}


@pytest.mark.slow
@pytest.mark.parametrize("start", ["basic", "iap"])
def test_a_switch_killed_after_any_mutation_converges(emulator: Emulator, tmp_path_factory, start: str):
    """Every kill point of a basic -> iap (or iap -> basic) switch: the next `up` finishes it, the one after changes
    nothing, and the server serves in the new mode."""
    s = deploy(emulator, tmp_path_factory.mktemp(f"switch-{start}"), start)
    target = "iap" if start == "basic" else "basic"
    # The first switch to iap also enables the IAP API, which stays enabled: count the points of a later switch.
    for mode in (target, start):
        s.configure(mode)
        s.up()
    s.configure(target)
    points = len(mutations_during(s.admin, lambda: s.up()))
    s.configure(start)
    s.up()
    assert points >= 3, points
    for k in range(1, points + 1):
        s.configure(target)
        kill_after(s.cli, s.admin, k, "up", "--config", str(s.config_file))
        assert json.loads(s.up("--json", "--break-lock").stdout)["ok"], k
        assert mutations_during(s.admin, lambda: s.up()) == [], k
        status = json.loads(s.cli("status", "--config", str(s.config_file), "--json").stdout)
        assert status["ok"] and status["access"]["mode"] == target, (k, status)
        s.configure(start)
        s.up()


def test_down_removes_an_iap_stack(stack: Stack):
    stack.configure("iap")
    stack.up()
    down = stack.cli("down", "--config", str(stack.config_file), "--yes", "--json", check=False)
    assert down.code == 0, down.stderr
    actions = {o["resource"]: o["action"] for o in json.loads(down.stdout)["outcomes"]}
    assert actions["run"] == "deleted" and actions["iap:access"] in ("deleted", "absent"), actions
