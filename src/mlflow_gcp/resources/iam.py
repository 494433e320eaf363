"""IAM bindings, least privilege: each policy edit is one read-modify-write with the etag, retried whole when
someone else changed the policy in between (409 ABORTED, or 412 for buckets) — retrying only the write never works.
All bindings for one resource go into one edit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine import Change, Resource
from ..errors import GcpPermissionError
from ..retry import error_text, http_status

Binding = tuple[str, str]  # (role, member)

RUNTIME_PROJECT_ROLES = ("roles/cloudsql.client",)
SECRET_ROLE = "roles/secretmanager.secretAccessor"
BUCKET_RUNTIME_ROLE = "roles/storage.objectUser"
BUCKET_READER_ROLE = "roles/storage.objectViewer"
INVOKER_ROLE = "roles/run.invoker"


def _missing(bindings: list[tuple[str, list[str]]], wanted: set[Binding]) -> set[Binding]:
    have = {(role, m) for role, members in bindings for m in members}
    return wanted - have


def _is_conflict(exc: BaseException) -> bool:
    return http_status(exc) in (409, 412)


def _toggle(policy: Any, role: str, member: str, grant: bool) -> bool:
    """Grant or revoke one member's role in a google.iam.v1 Policy message; say whether it changed."""
    binding = next((b for b in policy.bindings if b.role == role), None)
    if grant:
        if binding is None:
            binding = policy.bindings.add(role=role)
        if member in binding.members:
            return False
        binding.members.append(member)
        return True
    if binding is None or member not in binding.members:
        return False
    binding.members.remove(member)
    if not binding.members:
        policy.bindings.remove(binding)
    return True


def read_modify_write(
    ctx: Any,
    what: str,
    read: Callable[[], Any],
    write: Callable[[Any], Any],
    mutate: Callable[[Any], bool],
) -> Any:
    """Read the policy, change it, write it with its etag; on a concurrent change start over from the read."""

    def attempt() -> Any:
        policy = read()
        if not mutate(policy):
            return policy
        return write(policy)

    return ctx.api(what, attempt, retry_on=_is_conflict)


def org_policy_error(exc: BaseException, member: str) -> GcpPermissionError | None:
    text = error_text(exc)
    if http_status(exc) == 400 and "permitted customer" in text:
        return GcpPermissionError(
            f"Google refused to grant {member} access: {text}",
            hint="Your organization enforces Domain Restricted Sharing (constraint "
            "iam.allowedPolicyMemberDomains), which forbids allUsers. Ask an org admin for an exception on this "
            "project, or keep the service private and use identity-aware access.",
        )
    return None


class _PolicyBindings(Resource):
    """Bindings we own in one resource's policy: granted when missing, revoked by `down`, others left alone."""

    def wanted(self) -> set[Binding]:
        raise NotImplementedError

    @staticmethod
    def _pairs(policy: Any) -> list[tuple[str, list[str]]]:
        """(role, members) of each binding in the policy as its client returns it."""
        raise NotImplementedError

    def _edit(self, add: set[Binding], remove: set[Binding]) -> Any:
        raise NotImplementedError

    def diff(self, actual: Any) -> list[Change]:
        missing = _missing(self._pairs(actual), self.wanted())
        return [Change(f"{role} for {member}", "absent", "granted") for role, member in sorted(missing)]

    def update(self, actual: Any, changes: list[Change]) -> Any:
        return self._edit(self.wanted(), set())

    def delete(self, actual: Any) -> None:
        self._edit(set(), self.wanted())

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "bindings": sorted(f"{r} {m}" for r, m in self.wanted())}


# --- project -------------------------------------------------------------------------------------------


class ProjectBindings(_PolicyBindings):
    key = "iam:project"
    kind = "project IAM bindings"
    depends_on = ("sa:runtime",)

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}"

    def wanted(self) -> set[Binding]:
        member = f"serviceAccount:{self.ctx.names.runtime_account}"
        return {(role, member) for role in RUNTIME_PROJECT_ROLES}

    def _read(self) -> Any:
        rm = self.ctx.clients.projects
        return rm.get_iam_policy(request={"resource": self.id(), "options": {"requested_policy_version": 3}})

    @staticmethod
    def _pairs(policy: Any) -> list[tuple[str, list[str]]]:
        return [(b.role, list(b.members)) for b in policy.bindings]

    def find(self) -> Any:
        return self.ctx.api("resourcemanager.projects.getIamPolicy", self._read)

    def create(self) -> Any:  # pragma: no cover - a project always has a policy
        raise AssertionError("unreachable")

    def _edit(self, add: set[Binding], remove: set[Binding]) -> Any:
        rm = self.ctx.clients.projects

        def mutate(policy: Any) -> bool:
            policy.version = 3  # a v1 write may drop IAM Conditions others set
            changed = False
            for role, member in add:
                binding = next((b for b in policy.bindings if b.role == role and not b.condition.expression), None)
                if binding is None:
                    binding = policy.bindings.add(role=role)
                if member not in binding.members:
                    binding.members.append(member)
                    changed = True
            for role, member in remove:
                for b in policy.bindings:
                    if b.role == role and member in b.members:
                        b.members.remove(member)
                        changed = True
            for b in [b for b in policy.bindings if not b.members]:
                policy.bindings.remove(b)
            return changed

        return read_modify_write(
            self.ctx,
            "resourcemanager.projects.setIamPolicy",
            self._read,
            lambda policy: rm.set_iam_policy(request={"resource": self.id(), "policy": policy}),
            mutate,
        )


# --- secrets -------------------------------------------------------------------------------------------


class SecretBindings(Resource):
    """The runtime account may read each of its own secrets, and nothing else in Secret Manager."""

    key = "iam:secrets"
    kind = "secret IAM bindings"
    depends_on = ("sa:runtime", "secret:db-password", "secret:admin-username", "secret:admin-password",
                  "secret:flask-secret-key")  # fmt: skip

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/secrets/{self.ctx.names.prefix}-*"

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.ctx.names.runtime_account}"

    def _names(self) -> list[str]:
        return [f"projects/{self.ctx.names.project}/secrets/{s}" for s in self.ctx.names.secrets.values()]

    def find(self) -> Any | None:
        from google.api_core import exceptions

        sm = self.ctx.clients.secrets
        policies = {}
        for name in self._names():
            try:
                policies[name] = self.ctx.api(
                    f"secretmanager.secrets.getIamPolicy {name.rsplit('/', 1)[1]}", sm.get_iam_policy,
                    request={"resource": name},
                )  # fmt: skip
            except exceptions.NotFound:
                policies[name] = None
        return policies

    def diff(self, actual: Any) -> list[Change]:
        changes = []
        for name, policy in actual.items():
            pairs = [(b.role, list(b.members)) for b in policy.bindings] if policy is not None else []
            if _missing(pairs, {(SECRET_ROLE, self.member)}):
                changes.append(Change(f"{SECRET_ROLE} on {name.rsplit('/', 1)[1]}", "absent", "granted"))
        return changes

    def create(self) -> Any:  # pragma: no cover
        raise AssertionError("unreachable")

    def _edit(self, name: str, grant: bool) -> None:
        sm = self.ctx.clients.secrets

        def mutate(policy: Any) -> bool:
            return _toggle(policy, SECRET_ROLE, self.member, grant)

        read_modify_write(
            self.ctx,
            f"secretmanager.secrets.setIamPolicy {name.rsplit('/', 1)[1]}",
            lambda: sm.get_iam_policy(request={"resource": name}),
            lambda policy: sm.set_iam_policy(request={"resource": name, "policy": policy}),
            mutate,
        )

    def update(self, actual: Any, changes: list[Change]) -> Any:
        for name in self._names():
            self._edit(name, grant=True)
        return self.find()

    def delete(self, actual: Any) -> None:
        # The secrets themselves are deleted by their own steps; nothing to undo on a deleted secret.
        for name, policy in actual.items():
            if policy is not None:
                self._edit(name, grant=False)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "member": self.member, "role": SECRET_ROLE}


# --- bucket --------------------------------------------------------------------------------------------


class BucketBindings(_PolicyBindings):
    """The runtime account gets object access on the artifact bucket only; `artifacts.users` may read it."""

    key = "iam:bucket"
    kind = "bucket IAM bindings"
    depends_on = ("sa:runtime", "bucket", "sa:client")

    def id(self) -> str:
        return f"gs://{self.ctx.names.bucket}"

    def wanted(self) -> set[Binding]:
        wanted = {(BUCKET_RUNTIME_ROLE, f"serviceAccount:{self.ctx.names.runtime_account}")}
        wanted |= {(BUCKET_READER_ROLE, m) for m in self.ctx.config.artifacts.users}
        if self.ctx.config.create_client_key:
            wanted.add((BUCKET_RUNTIME_ROLE, f"serviceAccount:{self.ctx.names.client_account}"))
        return wanted

    def _bucket(self) -> Any:
        return self.ctx.clients.storage.bucket(self.ctx.names.bucket)

    def find(self) -> Any | None:
        from google.api_core import exceptions

        try:
            return self.ctx.api(
                "storage.buckets.getIamPolicy", self._bucket().get_iam_policy, requested_policy_version=3
            )
        except exceptions.NotFound:
            return None

    @staticmethod
    def _pairs(policy: Any) -> list[tuple[str, list[str]]]:
        return [(b["role"], list(b["members"])) for b in policy.bindings]

    def create(self) -> Any:  # pragma: no cover - the bucket step runs first
        raise AssertionError("the bucket does not exist")

    def _edit(self, add: set[Binding], remove: set[Binding]) -> Any:
        bucket = self._bucket()

        def mutate(policy: Any) -> bool:
            changed = False
            for role, member in add:
                binding = next((b for b in policy.bindings if b["role"] == role and not b.get("condition")), None)
                if binding is None:
                    binding = {"role": role, "members": set()}
                    policy.bindings.append(binding)
                if member not in binding["members"]:
                    binding["members"] = set(binding["members"]) | {member}
                    changed = True
            for role, member in remove:
                for b in policy.bindings:
                    if b["role"] == role and member in b["members"]:
                        b["members"] = set(b["members"]) - {member}
                        changed = True
            policy.bindings[:] = [b for b in policy.bindings if b["members"]]
            return changed

        return read_modify_write(
            self.ctx,
            "storage.buckets.setIamPolicy",
            lambda: bucket.get_iam_policy(requested_policy_version=3),
            bucket.set_iam_policy,
            mutate,
        )


# --- Cloud Run invoker ---------------------------------------------------------------------------------


class PublicInvoker(Resource):
    """`allUsers` may invoke the service: MLflow's own login protects it (as in the seed guide)."""

    key = "iam:invoker"
    kind = "Cloud Run invoker binding"
    depends_on = ("run",)
    member = "allUsers"

    def id(self) -> str:
        return f"{self.ctx.names.service_path}#{INVOKER_ROLE}"

    def find(self) -> Any | None:
        from google.api_core import exceptions

        run = self.ctx.clients.run_services
        try:
            return self.ctx.api(
                "run.services.getIamPolicy", run.get_iam_policy, request={"resource": self.ctx.names.service_path}
            )
        except exceptions.NotFound:
            return None

    def diff(self, actual: Any) -> list[Change]:
        pairs = [(b.role, list(b.members)) for b in actual.bindings]
        return (
            [Change(f"{INVOKER_ROLE} for {self.member}", "absent", "granted")]
            if _missing(pairs, {(INVOKER_ROLE, self.member)})
            else []
        )

    def create(self) -> Any:  # pragma: no cover - the service step runs first
        raise AssertionError("the service does not exist")

    def _edit(self, grant: bool) -> Any:
        run = self.ctx.clients.run_services
        resource = self.ctx.names.service_path

        def mutate(policy: Any) -> bool:
            return _toggle(policy, INVOKER_ROLE, self.member, grant)

        try:
            return read_modify_write(
                self.ctx,
                "run.services.setIamPolicy",
                lambda: run.get_iam_policy(request={"resource": resource}),
                lambda policy: run.set_iam_policy(request={"resource": resource, "policy": policy}),
                mutate,
            )
        except Exception as exc:
            refusal = org_policy_error(exc, self.member)
            if refusal is not None:
                raise refusal from None
            raise

    def update(self, actual: Any, changes: list[Change]) -> Any:
        return self._edit(grant=True)

    def delete(self, actual: Any) -> None:
        self._edit(grant=False)

    def facts(self, actual: Any) -> dict[str, Any]:
        return {"id": self.id(), "member": self.member}
