"""Password rotation (``mlflow-gcp rotate-password``): new credentials while the server keeps serving, resumable
after a crash at any point, and the old credentials made useless.

The database password uses "alternating users" (as AWS Secrets Manager's rotation does): PostgreSQL keeps one
password per role, so changing the active role's password in place breaks every server instance that opens a
connection before the new revision is live. Instead two login roles exist (``Names.db_users``; `up` creates
both, the inactive one with a random password kept nowhere), both members of the role that owns the tables
(server_image/mlflow_gcp_serve.py), and a rotation:

1. adds a version with a fresh password to the db-password secret (the value is durable before it is used);
2. sets it on the inactive role (Cloud SQL ``users.update``);
3. deploys a Cloud Run revision that logs in as that role, the secret pinned to the new version, and waits until
   it serves all traffic (Cloud Run moves traffic only once its startup probe passes, and the server passes it
   only once it reached the database); then checks MLflow really serves (an authenticated API call);
4. records the new active role;
5. retires the old role's password (sets a random one that is discarded);
6. disables the secret's old versions, checks the server again, then destroys them.

The MLflow admin password (``--admin``) goes through MLflow's own user API (its basic-auth app creates the
admin from its configuration only on first start): a new version of the admin-password secret, the change
authenticated with the current password, then a revision pinned to the new version (its workers start with empty
credential caches, so the old password stops working everywhere), then the old versions go.

Every step is recorded in the state file before the next starts (``rotation``: the step, the users and the
secret version numbers, never a value), and each step is safe to repeat, so running the command again after a
crash finishes the rotation. If the new revision fails, Cloud Run leaves traffic on the old one; nothing old has
been retired then, the command says so and fails (with the failing condition and the last lines the revision
logged), and running it again retries from the password step.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from .errors import ExitCode, MlflowGcpError

if TYPE_CHECKING:
    from .context import Context
    from .resources.run import Credentials
    from .resources.secrets import Secret
    from .state import State

Credential = Literal["db", "admin"]

#: The steps of each rotation, in order; the state records which one runs.
STEPS: dict[str, tuple[str, ...]] = {
    "db": ("add-version", "set-password", "deploy", "commit", "retire-user", "retire-versions"),
    "admin": ("add-version", "change-password", "deploy", "commit", "retire-versions"),
}
SECRET: dict[str, str] = {"db": "db-password", "admin": "admin-password"}
LABEL: dict[str, str] = {"db": "database password", "admin": "MLflow admin password"}
#: MLflow's answers worth retrying: the server (or Cloud Run's front end) failing for a moment.
_SERVER_ERRORS = frozenset(range(500, 600))


class RotationFailed(MlflowGcpError):
    exit_code = ExitCode.FAILED


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def refuse_if_in_progress(state: State, *, resuming: Credential | None = None) -> None:
    """operations.refuse_if_in_progress, for a rotation of ``resuming`` (the one it may go on with)."""
    from .operations import refuse_if_in_progress as refuse

    refuse(state, resuming=f"rotation:{resuming}" if resuming else None)


class Rotation:
    def __init__(self, ctx: Context, credential: Credential, say: Callable[[str], None] | None = None) -> None:
        self.ctx = ctx
        self.credential = credential
        self.secret = SECRET[credential]
        self.say = say or (lambda _text: None)

    # --- what the state says ------------------------------------------------------------------------------

    @property
    def current(self) -> dict[str, Any] | None:
        """The rotation in progress (of either credential), if any."""
        return self.ctx.state.data.get("rotation")

    def _save(self, rot: dict[str, Any], phase: str) -> dict[str, Any]:
        rot = {**rot, "phase": phase, "updated": _now()}
        self.ctx.state.set("rotation", rot)
        return rot

    # --- the plan (--dry-run) -----------------------------------------------------------------------------

    def plan(self) -> list[str]:
        """The steps as sentences, the one a re-run resumes at marked; no API call."""
        from .resources.sql import active_db_user

        refuse_if_in_progress(self.ctx.state, resuming=self.credential)
        n = self.ctx.names
        rot = self.current
        secret_id = n.secrets[self.secret]
        if self.credential == "db":
            old = rot["from_user"] if rot else active_db_user(self.ctx)
            new = rot["to_user"] if rot else next(u for u in n.db_users if u != old)
            steps = [
                f"Add a version with a new random password to secret {secret_id}.",
                f"Set that password on database user {new}, unused now (Cloud SQL users.update).",
                f"Deploy a revision of Cloud Run service {n.service} that logs in as {new}, the secret pinned to the "
                "new version; wait until it serves all traffic (if it fails, traffic stays on the current one).",
                f"Check that MLflow serves, then record {new} as the active database user.",
                f"Retire the password of {old} (set a random one that is kept nowhere).",
                f"Disable the other versions of {secret_id}, check that MLflow serves, then destroy them.",
            ]
        else:
            steps = [
                f"Add a version with a new random password to secret {secret_id}.",
                "Change the admin's password through MLflow's API (PATCH /api/2.0/mlflow/users/update-password, "
                "authenticated with the current password).",
                f"Deploy a revision of Cloud Run service {n.service} with the secret pinned to the new version; wait "
                "until it serves all traffic (its workers start with empty credential caches).",
                "Check that MLflow serves with the new password, then record the new version.",
                f"Disable the other versions of {secret_id}, check that MLflow serves, then destroy them.",
            ]
        names = STEPS[self.credential]
        resume = names.index(rot["phase"]) if rot else -1
        header = (
            f"A rotation of the {LABEL[self.credential]} is in progress (since {rot['started']}); "
            "running the command resumes it:"
            if rot
            else f"Rotating the {LABEL[self.credential]} would:"
        )
        lines = [header]
        for i, text in enumerate(steps):
            mark = "done" if i < resume else ("next" if i == resume else "")
            lines.append(f"  {i + 1}. {text}" + (f"  [{mark}]" if mark else ""))
        return lines

    # --- running it ---------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        refuse_if_in_progress(self.ctx.state, resuming=self.credential)
        rot = self.current
        if rot is None:
            rot = self._begin()
        else:
            self.say(f"Resuming the rotation of the {LABEL[self.credential]} at step {rot['phase']}.")
            self._abandon_if_service_gone(rot)
        finished: dict[str, Any] | None = None
        while finished is None:
            step = rot["phase"]
            number = STEPS[self.credential].index(step) + 1
            self.say(f"[{number}/{len(STEPS[self.credential])}] {step}")
            result = getattr(self, "_" + step.replace("-", "_"))(rot)
            if result.get("phase") == "done":
                finished = result
            else:
                rot = result
        return finished

    def _begin(self) -> dict[str, Any]:
        from .resources.run import Service, recorded_url
        from .resources.sql import StandbyUser, active_db_user

        state = self.ctx.state
        if not recorded_url(state):
            raise MlflowGcpError("No MLflow service is recorded for this environment.", hint="Run `mlflow-gcp up`.")
        live = Service(self.ctx).find()
        if live is None:
            raise MlflowGcpError("The Cloud Run service does not exist.", hint="Run `mlflow-gcp up` to repair it.")
        old_version = self.ctx.fact(f"secret:{self.secret}", "version")
        if not old_version:
            raise MlflowGcpError(f"No version of the {self.secret} secret is recorded.", hint="Run `mlflow-gcp up`.")
        rot: dict[str, Any] = {
            "credential": self.credential,
            "old_version": str(old_version),
            "new_version": None,
            "started": _now(),
        }
        if self.credential == "db":
            env = Service.owned(live)["env"]
            standby = StandbyUser(self.ctx)
            if "MLFLOW_GCP_DB_USERS" not in env or standby.find() is None:
                raise MlflowGcpError(
                    "This deployment predates password rotation: the second database user or the server's "
                    "knowledge of it is missing.",
                    hint="Run `mlflow-gcp up` once, then rotate.",
                )
            rot.update(from_user=active_db_user(self.ctx), to_user=standby.user)
        self.say(f"Rotating the {LABEL[self.credential]}.")
        return self._save(rot, "add-version")

    def _abandon_if_service_gone(self, rot: dict[str, Any]) -> None:
        """A rotation cannot finish without its service (removed by `down` meanwhile). The state's credentials are
        valid ones (the switch is recorded in one write), so dropping the record lets `up` redeploy them."""
        from .resources.run import Service

        if Service(self.ctx).find() is not None:
            return
        self.ctx.state.set("rotation", None)
        raise MlflowGcpError(
            f"The Cloud Run service is gone: the rotation of the {LABEL[self.credential]} (at step {rot['phase']}) "
            "was abandoned.",
            hint="Run `mlflow-gcp up`, then rotate again (it also destroys any secret version left over).",
        )

    # --- step: a new secret version -----------------------------------------------------------------------

    def _add_version(self, rot: dict[str, Any]) -> dict[str, Any]:
        from google.cloud.secretmanager_v1 import SecretVersion

        from .resources.secrets import generate

        new = rot.get("new_version")
        if new is None:
            # A run that died right after adding a version left it enabled and unrecorded: use it.
            secret = self._secret()
            enabled = SecretVersion.State.ENABLED
            newer = [v for v, st in secret.versions() if st == enabled and int(v) > int(rot["old_version"])]
            new = max(newer, key=int) if newer else secret.add_version(generate(self.secret))
            self.say(f"Secret {self.ctx.names.secrets[self.secret]}: version {new} holds the new password.")
        nxt = "set-password" if self.credential == "db" else "change-password"
        return self._save({**rot, "new_version": new}, nxt)

    # --- step (db): the inactive role gets the new password -----------------------------------------------

    def _set_password(self, rot: dict[str, Any]) -> dict[str, Any]:
        from .resources.sql import StandbyUser

        StandbyUser(self.ctx, rot["to_user"]).set_password(self._secret().access(rot["new_version"]))
        return self._save(rot, "deploy")

    # --- step (admin): MLflow's user API ------------------------------------------------------------------

    def _change_password(self, rot: dict[str, Any]) -> dict[str, Any]:
        import requests

        url = self._url()
        username = self._admin_username()
        new = self._secret().access(rot["new_version"])
        if self._mlflow_accepts(url, username, new):
            self.say("MLflow already accepts the new admin password (changed by an earlier run).")
        else:
            old = self._secret().access(rot["old_version"])
            body = {"username": username, "password": new, "current_password": old}
            response = self._http(
                lambda: requests.patch(
                    f"{url}/api/2.0/mlflow/users/update-password", json=body, auth=(username, old), timeout=60
                )
            )
            if response.status_code != 200 and not self._mlflow_accepts(url, username, new):
                raise RotationFailed(
                    f"MLflow refused to change the admin password ({response.status_code}: "
                    f"{_first_line(response.text)}). Nothing was changed on the server.",
                    hint="If the admin password was changed outside mlflow-gcp, set it back to the one "
                    "`mlflow-gcp env` prints, then run the command again.",
                )
            self.say("MLflow accepted the new admin password.")
        return self._save(rot, "deploy")

    def _mlflow_accepts(self, url: str, username: str, password: str) -> bool:
        import requests

        response = self._http(
            lambda: requests.get(
                f"{url}/api/2.0/mlflow/users/get", params={"username": username}, auth=(username, password), timeout=60
            )
        )
        return response.status_code == 200

    @staticmethod
    def _http(call: Callable[[], Any]) -> Any:
        """One HTTP call to the server through the retry policy: retried while it cannot be reached or answers
        5xx (a revision starting, an instance restarting), with the same backoff as every Google call, for at most
        a minute; then its last answer."""
        from .retry import http_request

        return http_request(call, deadline=60.0, statuses=_SERVER_ERRORS)

    # --- step: the new revision ---------------------------------------------------------------------------

    def _credentials(self, rot: dict[str, Any]) -> Credentials:
        """What the server logs in with once the rotation is through: the recorded credentials, the rotated one
        replaced."""
        from .resources.run import Credentials

        recorded = Credentials.current(self.ctx)
        if self.credential == "db":
            return replace(recorded, db_user=rot["to_user"], db_password_version=rot["new_version"])
        return replace(recorded, admin_password_version=rot["new_version"])

    def _deploy(self, rot: dict[str, Any]) -> dict[str, Any]:
        failure = self._roll_out(self._credentials(rot))
        if failure:
            # Nothing old was retired: the old revision serves with the old credentials, which still work.
            back = "set-password" if self.credential == "db" else "deploy"
            self._save(rot, back)
            raise RotationFailed(
                "The new revision did not become ready. Traffic stays on the current revision with the current "
                "credentials; nothing was retired.\n  " + failure.replace("\n", "\n  "),
                hint="Fix what the revision's log shows, then run the command again to retry.",
            )
        health = self._health(rot)
        if not health.ok:
            if self.credential == "db":
                self.say("MLflow does not serve with the new database user: rolling back to the current one.")
                self._roll_out(None)
                self._save(rot, "set-password")
            raise RotationFailed(
                f"MLflow does not serve after the new revision took traffic ({health.detail or health.as_dict()}); "
                "nothing was retired.",
                hint="Run `mlflow-gcp status`; run the command again to retry.",
            )
        return self._save(rot, "commit")

    def _roll_out(self, credentials: Credentials | None) -> str:
        """Deploy the service as `up` would with these credentials (None: the recorded ones) and wait until the new
        revision serves all traffic. Returns why it failed ("" when it serves): for a revision that did not become
        ready, its failing condition, the last lines it logged and the command that shows more."""
        from google.api_core import exceptions

        from .resources.run import Service, serving_revisions
        from .server_logs import RevisionFailed, failed_revision

        svc = Service(self.ctx, credentials)
        live = self._settled(svc)
        changes = svc.diff(live)
        try:
            if changes:
                # Includes the case of our template whose revision failed (an earlier attempt): a new revision.
                self.say(f"Deploying a new revision of {self.ctx.names.service}.")
                svc.update(live, changes)
            else:
                self.say("The new revision already serves (deployed by an earlier run).")
        except RevisionFailed as failed:
            return "\n".join(failed.report)
        except exceptions.GoogleAPICallError as exc:
            live = svc.find()
            if live is None or live.latest_ready_revision == live.latest_created_revision:
                raise
            return _first_line(getattr(exc, "message", str(exc)))
        live = self._settled(svc)
        created = live.latest_created_revision.rsplit("/", 1)[-1]
        if live.latest_ready_revision != live.latest_created_revision:
            failed = failed_revision(self.ctx, live)
            return "\n".join(failed.report) if failed else f"revision {created} is not ready."
        serving = serving_revisions(live)  # a LATEST target names no revision on real GCP
        if serving != {created}:
            return f"traffic is on {sorted(serving)}, not on {created}."
        self.say(f"Revision {created} serves all traffic.")
        return ""

    @staticmethod
    def _settled(svc: Any) -> Any:
        """The live service once no rollout runs (a run that died may have left one going)."""
        live = svc.find()
        live = svc.settle(live) if live is not None else None
        if live is None:
            raise MlflowGcpError("The Cloud Run service does not exist.", hint="Run `mlflow-gcp up` to repair it.")
        return live

    def _health(self, rot: dict[str, Any]) -> Any:
        from .health import check, serving_iap

        if self.ctx.config.access.mode == "iap":
            return serving_iap(self.ctx, self._url())  # clients reach it through IAP, not with the admin password
        version = (
            rot["new_version"] if self.credential == "admin" else self.ctx.fact("secret:admin-password", "version")
        )
        return check(self._url(), self._admin_username(), self._secret("admin-password").access(version))

    # --- step: record the new credential ------------------------------------------------------------------

    def _commit(self, rot: dict[str, Any]) -> dict[str, Any]:
        from .resources.run import Service
        from .resources.sql import User

        credentials = self._credentials(rot)
        secret = self._secret()
        # The facts each resource records, as `up` would record them for these credentials.
        records: dict[str, dict[str, Any]] = {secret.key: secret.facts({"version": rot["new_version"]})}
        svc = Service(self.ctx, credentials)
        live = svc.find()
        if live is not None:
            records[svc.key] = svc.facts(live)
        values: dict[str, Any] = {}
        if self.credential == "db":
            user = User(self.ctx, credentials.db_user, credentials.db_password_version)
            records[user.key] = user.facts(None)
            values["db_user"] = user.user
            nxt = "retire-user"
        else:
            nxt = "retire-versions"
        values["rotation"] = {**rot, "phase": nxt, "updated": _now()}
        # One write: the active user, its password version and the step never disagree.
        self.ctx.state.update(values, records)
        who = f" The server now logs in as {rot['to_user']}." if self.credential == "db" else ""
        self.say(f"Recorded the new credential.{who}")
        return values["rotation"]

    # --- step (db): the old role's password is retired ----------------------------------------------------

    def _retire_user(self, rot: dict[str, Any]) -> dict[str, Any]:
        from .resources.sql import StandbyUser

        # A random password nobody keeps: the role stays (a member of the owner role, for the next rotation).
        StandbyUser(self.ctx, rot["from_user"]).set_password(secrets.token_urlsafe(32))
        self.say(f"Retired the password of {rot['from_user']}.")
        return self._save(rot, "retire-versions")

    # --- step: old secret versions ------------------------------------------------------------------------

    def _retire_versions(self, rot: dict[str, Any]) -> dict[str, Any]:
        from google.cloud.secretmanager_v1 import SecretVersion

        secret = self._secret()
        keep = rot["new_version"]
        versions = secret.versions()
        for v, st in versions:
            if v != keep and st == SecretVersion.State.ENABLED:
                secret.disable_version(v)
        # Destroying cannot be undone: only once the server is known to serve without the old versions.
        health = self._health(rot)
        if not health.ok:
            raise RotationFailed(
                f"MLflow does not serve ({health.detail or health.as_dict()}); the old secret versions were "
                "disabled, not destroyed.",
                hint="Run `mlflow-gcp status`; run the command again to finish.",
            )
        destroyed = []
        for v, st in versions:
            if v != keep and st != SecretVersion.State.DESTROYED:
                secret.destroy_version(v)
                destroyed.append(v)
        if destroyed:
            self.say(f"Destroyed versions {', '.join(destroyed)} of {secret.secret_id}.")
        done: dict[str, Any] = {"at": _now(), "version": keep}
        if self.credential == "db":
            done["user"] = rot["to_user"]
        rotations = {**(self.ctx.state.data.get("rotations") or {}), self.credential: done}
        self.ctx.state.update({"rotation": None, "rotations": rotations})
        return {"phase": "done", "credential": self.credential, **done}

    # --- Secret Manager and the server --------------------------------------------------------------------

    def _secret(self, which: str | None = None) -> Secret:
        """The resource of a secret (by default the rotated one): its versions are added, read and retired there."""
        from .resources.secrets import resource

        return resource(self.ctx, which or self.secret)

    def _admin_username(self) -> str:
        return self._secret("admin-username").access(self.ctx.fact("secret:admin-username", "version") or "latest")

    def _url(self) -> str:
        from .resources.run import recorded_url

        url = recorded_url(self.ctx.state)
        if not url:
            raise MlflowGcpError("No MLflow service URL is recorded.", hint="Run `mlflow-gcp up`.")
        return str(url).rstrip("/")


def _first_line(text: str) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:300] if text else ""


def last_rotated(state_data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For `status`: when each credential was last rotated (None: never), and any rotation in progress."""
    rotations = state_data.get("rotations") or {}
    report: dict[str, dict[str, Any]] = {}
    for credential in STEPS:
        done = rotations.get(credential) or {}
        report[credential] = {"last_rotated": done.get("at"), **{k: v for k, v in done.items() if k != "at"}}
    rot = state_data.get("rotation")
    if rot:
        report[rot["credential"]]["in_progress"] = {"step": rot["phase"], "since": rot.get("started")}
    return report
