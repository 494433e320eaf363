"""`mlflow-gcp users`: MLflow's accounts managed from the command line, end to end against the real `mlflow server`
of one deployed stack (basic mode): a user added here logs a run with the real mlflow client, `passwd` and `remove`
take effect, `grant` changes what another user may do, and every refusal has its own exit code and no traceback.

The tests run in file order and share the stack's users (``people`` keeps the passwords the CLI printed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Deployed, Result

API = "/api/2.0/mlflow"

LOG_A_RUN = """
import json, sys, mlflow
client = mlflow.MlflowClient()
exp = client.create_experiment(sys.argv[1])
run = client.create_run(exp)
client.log_metric(run.info.run_id, "loss", 0.5)
client.create_registered_model(sys.argv[2])
got = client.get_run(run.info.run_id)
print(json.dumps({"experiment": exp, "metrics": got.data.metrics}))
"""


def users(stack: Deployed, *args: str, stdin: str | None = None, verbose: bool = False) -> Result:
    """`mlflow-gcp [-v] users ...` on the stack, with ``stdin`` as its standard input."""
    cli = stack.cli
    argv = cli.argv(("-v", "users", *args) if verbose else ("users", *args))
    proc = subprocess.run(argv, input=stdin or "", capture_output=True, text=True, env=cli.env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


def log_a_run(stack: Deployed, username: str, password: str, experiment: str, model: str) -> dict[str, Any]:
    """The real mlflow client, in a fresh process, signed in as ``username``."""
    env = {k: v for k, v in stack.cli.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    env |= {"MLFLOW_TRACKING_URI": stack.url, "MLFLOW_TRACKING_USERNAME": username}
    env["MLFLOW_TRACKING_PASSWORD"] = password
    proc = subprocess.run(
        [sys.executable, "-c", LOG_A_RUN, experiment, model], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def status(stack: Deployed, method: str, path: str, auth: tuple[str, str], **kwargs: Any) -> int:
    return requests.request(method, f"{stack.url}{API}/{path}", auth=auth, timeout=60, **kwargs).status_code


def eventually(stack: Deployed, expected: int, method: str, path: str, auth: tuple[str, str], **kwargs: Any) -> int:
    """The answer once it is ``expected``, or the last one after 20 s: a server worker that verified a password
    keeps accepting it for the login cache's TTL (2 s on this stack)."""
    deadline = time.monotonic() + 20
    while (got := status(stack, method, path, auth, **kwargs)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return got


@pytest.fixture(scope="module")
def people() -> dict[str, Any]:
    return {}


def test_a_user_added_here_logs_a_run_with_the_real_client(basic_stack: Deployed, people: dict[str, Any]):
    added = ok(users(basic_stack, "add", "ana"))
    password = added.stdout.strip()
    # The generated password is stdout's only line, and nowhere else.
    assert len(password) >= 12 and added.stdout == password + "\n"
    assert password not in added.stderr and "shown this once" in added.stderr
    ran = log_a_run(basic_stack, "ana", password, "ana-experiment", "ana-model")
    assert ran["metrics"] == {"loss": 0.5}
    people.update(ana=password, experiment=ran["experiment"])

    # Chosen on stdin (never in argv), as an admin; nothing printed back.
    chosen = "ben-chose-this-one"
    ben = ok(users(basic_stack, "add", "ben", "--admin", "--password-stdin", "--json", stdin=chosen + "\n")).json()
    assert ben == {"ok": True, "username": "ben", "is_admin": True}
    assert status(basic_stack, "GET", "users/list", ("ben", chosen)) == 200  # admin-only route
    ok(users(basic_stack, "remove", "ben"))
    carl = ok(users(basic_stack, "add", "carl", "--json")).json()
    assert carl["is_admin"] is False and len(carl["password"]) >= 12
    people["carl"] = carl["password"]


def test_list_shows_the_users_and_the_admin_as_admin(basic_stack: Deployed):
    listed = ok(users(basic_stack, "list", "--json")).json()["users"]
    assert [(u["username"], u["is_admin"], u["mlflow_gcp_admin"]) for u in listed] == [
        ("admin", True, True),
        ("ana", False, False),
        ("carl", False, False),
    ]
    assert basic_stack.cli("env", "--json").json()["MLFLOW_TRACKING_USERNAME"] == "admin"  # the one marked
    text = ok(users(basic_stack, "list")).stdout.splitlines()
    assert text[0].split()[:2] == ["admin", "admin"] and "mlflow-gcp env" in text[0]
    assert [line.split() for line in text[1:]] == [["ana", "user"], ["carl", "user"]]


def test_refusals_have_their_own_exit_codes(basic_stack: Deployed, tmp_path):
    taken = users(basic_stack, "add", "ana")
    assert taken.code == 11 and "exists already" in taken.stderr and taken.stdout == ""
    for args in (("passwd", "nobody"), ("remove", "nobody"), ("grant", "nobody", "0", "READ")):
        missing = users(basic_stack, *args)
        assert missing.code == 10 and "No MLflow user 'nobody'" in missing.stderr, (args, missing)
    no_experiment = users(basic_stack, "grant", "carl", "no-such-experiment", "READ")
    assert no_experiment.code == 10 and "No MLflow experiment" in no_experiment.stderr
    no_model = users(basic_stack, "grant", "carl", "no-such-model", "READ", "--model")
    assert no_model.code == 10 and "registered model" in no_model.stderr
    short = users(basic_stack, "add", "dora", "--password-stdin", stdin="too-short\n")
    assert short.code == 3 and "at least 12" in short.stderr
    # The admin whose credentials mlflow-gcp keeps is rotate-password's.
    for verb in ("passwd", "remove"):
        managed = users(basic_stack, verb, "admin")
        assert managed.code == 2 and "rotate-password --admin" in managed.stderr
    # In iap mode people sign in with Google: refused before anything is called.
    config = tmp_path / "iap.toml"
    config.write_text('[access]\nmode = "iap"\nmembers = ["user:ana@example.com"]\n')
    iap = users(basic_stack, "list", "--config", str(config))
    assert iap.code == 3 and "access.members" in iap.stderr and iap.stdout == ""
    assert [u["username"] for u in ok(users(basic_stack, "list", "--json")).json()["users"]] == ["admin", "ana", "carl"]


def test_passwd_replaces_the_password(basic_stack: Deployed, people: dict[str, Any]):
    old = people["ana"]
    assert status(basic_stack, "GET", "experiments/search", ("ana", old), params={"max_results": 1}) == 200
    changed = ok(users(basic_stack, "passwd", "ana", verbose=True))
    new = changed.stdout.strip()
    assert new != old and len(new) >= 12 and new not in changed.stderr
    # -v names each call, never a value.
    assert "mlflow PATCH /api/2.0/mlflow/users/update-password" in changed.stderr
    assert "auth_cache_ttl_seconds" in changed.stderr  # says the old one may work a little longer
    assert eventually(basic_stack, 401, "GET", "experiments/search", ("ana", old), params={"max_results": 1}) == 401
    assert log_a_run(basic_stack, "ana", new, "ana-second", "ana-second-model")["metrics"] == {"loss": 0.5}
    people["ana"] = new


def test_grant_lets_another_user_edit_an_experiment_and_a_model(basic_stack: Deployed, people: dict[str, Any]):
    carl = ("carl", people["carl"])
    experiment = people["experiment"]
    tag = {"json": {"experiment_id": experiment, "key": "reviewed-by", "value": "carl"}}
    describe = {"json": {"name": "ana-model", "description": "reviewed by carl"}}
    # MLflow's default permission (READ): carl reads ana's experiment, edits nothing of hers.
    assert status(basic_stack, "GET", "experiments/get", carl, params={"experiment_id": experiment}) == 200
    assert status(basic_stack, "POST", "experiments/set-experiment-tag", carl, **tag) == 403
    assert status(basic_stack, "PATCH", "registered-models/update", carl, **describe) == 403

    granted = ok(users(basic_stack, "grant", "carl", "ana-experiment", "EDIT", "--json")).json()
    assert granted == {
        "ok": True,
        "username": "carl",
        "resource_type": "experiment",
        "resource_id": experiment,
        "name": "ana-experiment",
        "permission": "EDIT",
        "action": "granted",
        "previous": None,
    }
    assert status(basic_stack, "POST", "experiments/set-experiment-tag", carl, **tag) == 200
    model = ok(users(basic_stack, "grant", "carl", "ana-model", "EDIT", "--model", "--json")).json()
    assert (model["resource_type"], model["action"]) == ("registered_model", "granted")
    assert status(basic_stack, "PATCH", "registered-models/update", carl, **describe) == 200

    # Create-or-update: by id this time; the same again changes nothing.
    again = ok(users(basic_stack, "grant", "carl", experiment, "EDIT")).stderr
    assert "unchanged" in again
    # NO_PERMISSIONS shuts carl out, even from reading (it replaces EDIT, and beats the default READ).
    shut = ok(users(basic_stack, "grant", "carl", experiment, "NO_PERMISSIONS", "--json")).json()
    assert (shut["action"], shut["previous"], shut["permission"]) == ("updated", "EDIT", "NO_PERMISSIONS")
    read = {"params": {"experiment_id": experiment}}
    assert status(basic_stack, "GET", "experiments/get", carl, **read) == 403
    assert status(basic_stack, "GET", "experiments/get", ("ana", people["ana"]), **read) == 200


def test_a_removed_user_is_refused(basic_stack: Deployed, people: dict[str, Any]):
    ana = ("ana", people["ana"])
    assert status(basic_stack, "GET", "experiments/search", ana, params={"max_results": 1}) == 200
    removed = ok(users(basic_stack, "remove", "ana", "--json"))
    assert removed.json() == {"ok": True, "username": "ana", "removed": True}
    assert eventually(basic_stack, 401, "GET", "experiments/search", ana, params={"max_results": 1}) == 401
    assert [u["username"] for u in ok(users(basic_stack, "list", "--json")).json()["users"]] == ["admin", "carl"]
    assert users(basic_stack, "remove", "ana").code == 10
