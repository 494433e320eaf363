"""MLflow's own accounts (basic-auth mode), managed through MLflow's auth REST API as the admin whose credentials
mlflow-gcp keeps in Secret Manager: the calls an operator would otherwise craft with curl.

The routes, as MLflow 3.17.2 serves them (``mlflow/server/auth/routes.py``; handlers and validators in
``mlflow/server/auth/__init__.py``; its client, ``mlflow/server/auth/client.py``):

- ``GET /api/2.0/mlflow/users/list`` (admin): every user with ``id``, ``username``, ``is_admin``.
- ``POST /api/2.0/mlflow/users/create`` ``{username, password}``: 400 ``RESOURCE_ALREADY_EXISTS`` for a taken name
  (whose message quotes the failed INSERT, password hash included: it is never shown). Passwords need 12+ chars.
- ``PATCH /api/2.0/mlflow/users/update-admin`` ``{username, is_admin}``.
- ``PATCH /api/2.0/mlflow/users/update-password`` ``{username, password}``: an admin changing another user's
  password needs no ``current_password``.
- ``DELETE /api/2.0/mlflow/users/delete`` ``{username}``: 404 ``RESOURCE_DOES_NOT_EXIST`` for an unknown user.
- Permissions: MLflow 3.17 replaced the per-resource tables (``experiments/permissions/create|update``,
  ``registered-models/permissions/...``) with roles. A user's direct grants live in the user's synthetic role
  ``__user_<id>__`` in the active workspace: ``POST /api/3.0/mlflow/users/permissions/grant``
  ``{username, resource_type, resource_id, permission}`` adds one (400 ``RESOURCE_ALREADY_EXISTS`` when the user has
  one on that resource); ``GET /api/3.0/mlflow/users/permissions/list`` lists the user's grants with their role;
  ``GET /api/3.0/mlflow/roles/permissions/list`` gives a role's grants with their ids, and ``PATCH
  /api/3.0/mlflow/roles/permissions/update`` ``{role_permission_id, permission}`` changes one in place (no window
  with the grant gone, as revoke-then-grant would leave).
- Resource-level grants accept READ, USE, EDIT, MANAGE and DENY; NO_PERMISSIONS (the name older MLflow and
  ``access.default_permission`` use) is refused there, DENY being its replacement: it is sent as DENY.

Passwords travel only in request bodies to the server: never in argv, logs, state or errors. MLflow caches a
verified login per worker for ``server.auth_cache_ttl_seconds``; a change made through one worker reaches the others
when that expires, which the commands say."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ExistsError, ExitCode, MlflowGcpError, NotFoundError

#: What `users grant` accepts (the vocabulary of access.default_permission), and what MLflow is sent.
PERMISSIONS: dict[str, str] = {
    "READ": "READ",
    "USE": "USE",
    "EDIT": "EDIT",
    "MANAGE": "MANAGE",
    "NO_PERMISSIONS": "DENY",
}
#: MLflow's minimum password length (mlflow/utils/validation.py, _validate_password).
MIN_PASSWORD = 12

_USERS = "/api/2.0/mlflow/users"
_GRANTS = "/api/3.0/mlflow/users/permissions"
_ROLE_GRANTS = "/api/3.0/mlflow/roles/permissions"


def generate_password() -> str:
    """32 characters from a URL-safe alphabet (as the admin's, resources/secrets.py): easy to paste and to quote."""
    return secrets.token_urlsafe(24)


def read_password(text: str) -> str:
    """A password given on stdin: its first line, checked against MLflow's minimum before anything is sent."""
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(
            f"The password read from stdin has {len(password)} characters; MLflow needs at least {MIN_PASSWORD}.",
            hint="Pipe a longer one, or leave out --password-stdin to have one generated.",
        )
    return password


def require_basic(config: Any) -> None:
    """In iap mode people sign in with Google and MLflow users are made from their identity: nothing to manage here,
    and the server trusts no password (the admin's included)."""
    if config.access.mode != "basic":
        raise ConfigError(
            'With access.mode = "iap" people sign in with Google: each becomes an MLflow user of their email on '
            "their first visit, and the server accepts no passwords.",
            hint="Give access with access.members and make admins with access.admins in the config file, then run "
            "`mlflow-gcp up`.",
        )


@dataclass
class Grant:
    """The outcome of `users grant`: what the user now holds on one experiment or registered model."""

    username: str
    resource_type: str
    resource_id: str
    name: str
    permission: str
    action: str
    previous: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Accounts:
    """MLflow's users on one server, as its admin."""

    def __init__(
        self, url: str, admin_username: str, admin_password: str, log: Callable[[str], None] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.admin_username = admin_username
        self._admin = (admin_username, admin_password)
        self._log = log

    # --- users ---------------------------------------------------------------------------------------------

    def list_users(self) -> list[dict[str, Any]]:
        """Every user by name; ``mlflow_gcp_admin`` marks the one whose credentials mlflow-gcp keeps."""
        users = self._call("GET", f"{_USERS}/list", "list the users")["users"]
        listed = [
            {
                "username": u["username"],
                "is_admin": bool(u["is_admin"]),
                "id": u["id"],
                "mlflow_gcp_admin": u["username"] == self.admin_username,
            }
            for u in users
        ]
        return sorted(listed, key=lambda u: u["username"])

    def create(self, username: str, password: str, *, admin: bool = False) -> None:
        """A new user; with ``admin``, made an admin, or removed again if MLflow refuses that (nothing half-made)."""
        try:
            self._call(
                "POST",
                f"{_USERS}/create",
                f"create the user {username!r}",
                json={"username": username, "password": password},
                exists=ExistsError(
                    f"An MLflow user {username!r} exists already.",
                    hint=f"`mlflow-gcp users passwd {username}` gives it a new password.",
                ),
                secret=password,
            )
        except ExistsError:
            # A create whose answer was lost and was sent again finds its own user: the new password proves it.
            if not self._accepts(username, password):
                raise
        if admin:
            try:
                self._call(
                    "PATCH",
                    f"{_USERS}/update-admin",
                    f"make {username!r} an admin",
                    json={"username": username, "is_admin": True},
                )
            except MlflowGcpError:
                self.delete(username)
                raise

    def set_password(self, username: str, password: str) -> None:
        self.refuse_managed_admin(username, "passwd")
        self._call(
            "PATCH",
            f"{_USERS}/update-password",
            f"change the password of {username!r}",
            json={"username": username, "password": password},
            not_found=_no_user(username),
            secret=password,
        )

    def delete(self, username: str) -> None:
        self.refuse_managed_admin(username, "remove")
        self._call(
            "DELETE",
            f"{_USERS}/delete",
            f"remove the user {username!r}",
            json={"username": username},
            not_found=_no_user(username),
        )

    def refuse_managed_admin(self, username: str, verb: str) -> None:
        """The admin whose credentials mlflow-gcp keeps is rotated by `rotate-password --admin` (the server sets
        its password to the pinned secret at every start; MLflow refuses to let it delete itself)."""
        if username == self.admin_username:
            raise MlflowGcpError(
                f"{username!r} is the admin mlflow-gcp signs in as (its credentials are in Secret Manager); "
                f"`users {verb}` leaves it alone.",
                hint="`mlflow-gcp rotate-password --admin` gives it a new password; `mlflow-gcp env` prints it.",
                exit_code=ExitCode.USAGE,
            )

    # --- permissions ---------------------------------------------------------------------------------------

    def grant(self, username: str, target: str, permission: str, *, model: bool = False) -> Grant:
        """Give ``username`` ``permission`` on an experiment (id or name) or, with ``model``, a registered model:
        created, or changed in place when the user holds another one there."""
        wanted = PERMISSIONS[permission]
        resource_type, resource_id, name = self._registered_model(target) if model else self._experiment(target)
        user = self._user(username)
        current = self._direct_grant(user, resource_type, resource_id)
        result = Grant(username, resource_type, resource_id, name, permission, "granted", None)
        if current is None:
            self._call(
                "POST",
                f"{_GRANTS}/grant",
                f"grant {permission} to {username!r}",
                json={
                    "username": username,
                    "resource_type": resource_type,
                    "resource_id": resource_id,
                    "permission": wanted,
                },
            )
            return result
        result.previous = _our_name(current["permission"])
        if current["permission"] == wanted:
            result.action = "unchanged"
            return result
        rows = self._call(
            "GET", f"{_ROLE_GRANTS}/list", "read the user's grants", params={"role_id": str(current["role_id"])}
        )["role_permissions"]
        row = next(r for r in rows if r["resource_type"] == resource_type and r["resource_pattern"] == resource_id)
        self._call(
            "PATCH",
            f"{_ROLE_GRANTS}/update",
            f"change the permission of {username!r}",
            json={"role_permission_id": row["id"], "permission": wanted},
        )
        result.action = "updated"
        return result

    def _user(self, username: str) -> dict[str, Any]:
        return self._call(
            "GET",
            f"{_USERS}/get",
            f"read the user {username!r}",
            params={"username": username},
            not_found=_no_user(username),
        )["user"]

    def _direct_grant(self, user: dict[str, Any], resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The user's own grant on the resource (in its synthetic role ``__user_<id>__``, which MLflow's UI tells
        apart by that name too), not one coming from a shared role."""
        rows = self._call("GET", f"{_GRANTS}/list", "read the user's grants", params={"username": user["username"]})[
            "permissions"
        ]
        synthetic = f"__user_{user['id']}__"
        return next(
            (
                r
                for r in rows
                if r["role_name"] == synthetic
                and r["resource_type"] == resource_type
                and r["resource_pattern"] == resource_id
            ),
            None,
        )

    def _experiment(self, target: str) -> tuple[str, str, str]:
        """An experiment by id (digits) or, failing that, by name."""
        if target.isdigit():
            found = self._call_or_none(
                "GET", "/api/2.0/mlflow/experiments/get", "read the experiment", params={"experiment_id": target}
            )
            if found is not None:
                return "experiment", target, found["experiment"]["name"]
        found = self._call_or_none(
            "GET",
            "/api/2.0/mlflow/experiments/get-by-name",
            "read the experiment",
            params={"experiment_name": target},
        )
        if found is None:
            raise NotFoundError(
                f"No MLflow experiment with the id or name {target!r}.",
                hint="Pass --model for a registered model.",
            )
        return "experiment", found["experiment"]["experiment_id"], found["experiment"]["name"]

    def _registered_model(self, target: str) -> tuple[str, str, str]:
        self._call(
            "GET",
            "/api/2.0/mlflow/registered-models/get",
            "read the registered model",
            params={"name": target},
            not_found=NotFoundError(
                f"No MLflow registered model named {target!r}.", hint="Leave out --model for an experiment."
            ),
        )
        return "registered_model", target, target

    # --- HTTP ----------------------------------------------------------------------------------------------

    def _accepts(self, username: str, password: str) -> bool:
        response = self._send("GET", f"{_USERS}/current", auth=(username, password))
        return response.status_code == 200

    def _call_or_none(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return self._call(method, path, what, not_found=NotFoundError(what), **kwargs)
        except NotFoundError:
            return None

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        not_found: NotFoundError | None = None,
        exists: ExistsError | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """One call as the admin; MLflow's refusals become errors with their own exit codes: ``not_found`` for
        RESOURCE_DOES_NOT_EXIST, ``exists`` for RESOURCE_ALREADY_EXISTS (never MLflow's own message for it, which
        quotes the failed INSERT). ``secret`` (a password in the body) is masked should MLflow ever quote it."""
        response = self._send(method, path, params=params, json=json, auth=self._admin)
        if response.status_code == 200:
            return response.json() if response.content else {}
        code, message = _mlflow_error(response)
        if secret:
            message = message.replace(secret, "***")
        if response.status_code == 401:
            raise MlflowGcpError(
                f"MLflow at {self.url} refused the admin credentials mlflow-gcp keeps in Secret Manager.",
                hint="`mlflow-gcp status` checks them; `mlflow-gcp up` repairs the server.",
                exit_code=ExitCode.UNHEALTHY,
            )
        if not_found is not None and (code == "RESOURCE_DOES_NOT_EXIST" or response.status_code == 404):
            raise not_found
        if exists is not None and code == "RESOURCE_ALREADY_EXISTS":
            raise exists
        if response.status_code >= 500:
            raise MlflowGcpError(
                f"MLflow at {self.url} could not {what}: HTTP {response.status_code}.",
                hint="`mlflow-gcp status` says whether it serves.",
                exit_code=ExitCode.UNHEALTHY,
            )
        raise MlflowGcpError(f"MLflow refused to {what} (HTTP {response.status_code} {code}): {message}")

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        """Through the retry policy every call to the server uses (a revision starting answers 503 for a moment)."""
        import requests

        from .retry import http_request

        if self._log:
            self._log(f"mlflow {method} {path}")  # never the query or body: they may hold a password

        def send() -> Any:
            return requests.request(method, f"{self.url}{path}", timeout=60, **kwargs)

        try:
            return http_request(send, deadline=60.0)
        except requests.RequestException as exc:
            raise MlflowGcpError(
                f"Could not reach MLflow at {self.url}: {type(exc).__name__}.",
                hint="`mlflow-gcp status` says whether it serves.",
                exit_code=ExitCode.UNHEALTHY,
            ) from None


def _mlflow_error(response: Any) -> tuple[str, str]:
    """MLflow's error body, ``{"error_code": ..., "message": ...}``, as (code, the message's first line)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.text or "").strip()
    return str(body.get("error_code") or ""), (message.splitlines()[0][:300] if message else "")


def _no_user(username: str) -> NotFoundError:
    return NotFoundError(f"No MLflow user {username!r}.", hint="`mlflow-gcp users list` shows the users.")


def _our_name(mlflow_permission: str) -> str:
    """MLflow's permission in `users grant`'s vocabulary (DENY reads as NO_PERMISSIONS)."""
    return next((ours for ours, theirs in PERMISSIONS.items() if theirs == mlflow_permission), mlflow_permission)


def connect(ctx: Any) -> Accounts:
    """The server of this environment, as the admin whose credentials are pinned in Secret Manager."""
    from .resources.run import service_url
    from .resources.secrets import read_secret

    require_basic(ctx.config)
    return Accounts(
        service_url(ctx), read_secret(ctx, "admin-username"), read_secret(ctx, "admin-password"), log=ctx.note
    )
