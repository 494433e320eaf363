"""IAM bindings, least privilege that stays least.

Each step manages the bindings of some policies (the project's, each secret's, the bucket's, the service's) and
records in the state file, as its ``granted`` fact, exactly which (role, member) pairs of each policy **it**
granted. On `up` it grants what the config asks for and revokes what it granted earlier that the config no
longer asks for; members someone else added are never touched and are reported as ``unmanaged`` (within the
roles the step manages). "Granted by us" means recorded by us, with one rule for crashes: the facts are recorded
only after the write succeeded, so a pair that is in the policy and in the config is simply ours again.

Each policy edit is one read-modify-write with the etag, retried whole when someone else changed the policy in
between (409 ABORTED, or 412 for buckets) — retrying only the write never works. It adds before it removes, in
one write. Across steps, every (policy, role, member) is managed by exactly one step and a step only revokes
pairs outside what it wants, so the runtime account, which every run wants to hold its roles, never loses one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import reads
from ..engine import Change, Resource
from ..errors import GcpPermissionError
from ..retry import error_text, http_status

Binding = tuple[str, str]  # (role, member)
Grant = tuple[str, str, str]  # (the resource whose policy holds it, role, member)

RUNTIME_PROJECT_ROLES = ("roles/cloudsql.client",)
BUILD_LOG_ROLE = "roles/logging.logWriter"
SECRET_ROLE = "roles/secretmanager.secretAccessor"
BUCKET_RUNTIME_ROLE = "roles/storage.objectUser"
BUCKET_READER_ROLE = "roles/storage.objectViewer"
INVOKER_ROLE = "roles/run.invoker"


# Members are compared as exact strings, on purpose. Once a service account is deleted, policies that named it show
# ``deleted:serviceAccount:EMAIL?uid=NUMBER`` (recorded on real GCP: tests/golden/recordings/
# project-iam-and-serviceaccount.log); that entry is not ours (a new account of the same email does not inherit
# it), so it never counts as granted, is never removed, and is written back untouched. Policies come back as
# ``version: 1`` when they have no conditions, whatever version was written (same recording): nothing compares it.
# Bindings with an IAM Condition are never ours either: only unconditional bindings are read and edited.


def _is_deleted(member: str) -> bool:
    return member.startswith("deleted:")


# --- the pure logic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    add: frozenset[Grant]
    remove: frozenset[Grant]
    #: In a managed role, neither wanted nor granted by us: someone else's, left alone.
    unmanaged: frozenset[Grant]


def _present(live: Mapping[str, set[Binding] | None], grant: Grant) -> bool:
    pairs = live.get(grant[0])
    return pairs is not None and (grant[1], grant[2]) in pairs


def plan(
    wanted: set[Grant], recorded: set[Grant], live: Mapping[str, set[Binding] | None], roles: Iterable[str]
) -> Plan:
    """What to grant, what to revoke and what is someone else's, from what the config wants, what we recorded as
    granted, and the (role, member) pairs of each live policy (None: that resource does not exist)."""
    roles = set(roles)
    ours = wanted | recorded
    return Plan(
        add=frozenset(g for g in wanted if not _present(live, g)),
        remove=frozenset(g for g in recorded - wanted if _present(live, g) and not _is_deleted(g[2])),
        unmanaged=frozenset(
            (target, role, member)
            for target, pairs in live.items()
            for role, member in pairs or ()
            if role in roles and (target, role, member) not in ours and not _is_deleted(member)
        ),
    )


def held(wanted: set[Grant], recorded: set[Grant], live: Mapping[str, set[Binding] | None]) -> set[Grant]:
    """What we hold in these policies: ours (recorded, or wanted: in the config) and present. Recorded pairs that
    are gone (revoked, also by a run that died before recording it) drop out."""
    return {g for g in wanted | recorded if _present(live, g) and not _is_deleted(g[2])}


def encode(grants: Iterable[Grant]) -> dict[str, list[str]]:
    """For the state file: ``{resource: ["role member", ...]}``."""
    out: dict[str, list[str]] = {}
    for target, role, member in sorted(grants):
        out.setdefault(target, []).append(f"{role} {member}")
    return out


def decode(recorded: Mapping[str, Iterable[str]]) -> set[Grant]:
    grants = set()
    for target, pairs in recorded.items():
        for pair in pairs:
            role, _, member = pair.partition(" ")
            grants.add((target, role, member))
    return grants


# --- editing one policy --------------------------------------------------------------------------------


def _proto_pairs(policy: Any) -> set[Binding]:
    """Unconditional (role, member) pairs of a google.iam.v1 Policy message."""
    return {(b.role, m) for b in policy.bindings if not b.condition.expression for m in b.members}


def _edit_proto(policy: Any, add: Iterable[Binding], remove: Iterable[Binding]) -> bool:
    """Grant, then revoke, in a google.iam.v1 Policy message (unconditional bindings only); say whether it
    changed."""
    changed = False
    for role, member in sorted(add):
        binding = next((b for b in policy.bindings if b.role == role and not b.condition.expression), None)
        if binding is None:
            binding = policy.bindings.add(role=role)
        if member not in binding.members:
            binding.members.append(member)
            changed = True
    for role, member in sorted(remove):
        for b in policy.bindings:
            if b.role == role and not b.condition.expression and member in b.members:
                b.members.remove(member)
                changed = True
    for b in [b for b in policy.bindings if not b.members]:
        policy.bindings.remove(b)
    return changed


def _storage_pairs(policy: Any) -> set[Binding]:
    """The same for google-cloud-storage's Policy (bindings as dicts, members as sets)."""
    return {(b["role"], m) for b in policy.bindings if not b.get("condition") for m in b["members"]}


def _edit_storage(policy: Any, add: Iterable[Binding], remove: Iterable[Binding]) -> bool:
    changed = False
    for role, member in sorted(add):
        binding = next((b for b in policy.bindings if b["role"] == role and not b.get("condition")), None)
        if binding is None:
            binding = {"role": role, "members": set()}
            policy.bindings.append(binding)
        if member not in binding["members"]:
            binding["members"] = set(binding["members"]) | {member}
            changed = True
    for role, member in sorted(remove):
        for b in policy.bindings:
            if b["role"] == role and not b.get("condition") and member in b["members"]:
                b["members"] = set(b["members"]) - {member}
                changed = True
    policy.bindings[:] = [b for b in policy.bindings if b["members"]]
    return changed


def _json_pairs(policy: Any) -> set[Binding]:
    """The same for a policy as JSON (discovery clients): ``{"bindings": [{"role", "members": [...]}], "etag"}``."""
    return {(b["role"], m) for b in policy.get("bindings", []) if not b.get("condition") for m in b.get("members", [])}


def _edit_json(policy: Any, add: Iterable[Binding], remove: Iterable[Binding]) -> bool:
    changed = False
    bindings = policy.setdefault("bindings", [])
    for role, member in sorted(add):
        binding = next((b for b in bindings if b["role"] == role and not b.get("condition")), None)
        if binding is None:
            binding = {"role": role, "members": []}
            bindings.append(binding)
        if member not in binding.setdefault("members", []):
            binding["members"].append(member)
            changed = True
    for role, member in sorted(remove):
        for b in bindings:
            if b["role"] == role and not b.get("condition") and member in b.get("members", []):
                b["members"].remove(member)
                changed = True
    policy["bindings"] = [b for b in bindings if b.get("members")]
    policy["version"] = 3  # a v1 write may drop IAM Conditions others set
    return changed


def _toggle(policy: Any, role: str, member: str, grant: bool) -> bool:
    """Grant or revoke one member's role in a google.iam.v1 Policy message; say whether it changed."""
    pair = {(role, member)}
    return _edit_proto(policy, pair if grant else set(), set() if grant else pair)


def _is_conflict(exc: BaseException) -> bool:
    return http_status(exc) in (409, 412)


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
            'iam.allowedPolicyMemberDomains), which forbids allUsers. Set access.mode = "iap" (sign-in with Google '
            "through Identity-Aware Proxy: the service stays private), or ask an org admin for an exception.",
        )
    return None


# --- the shared step -----------------------------------------------------------------------------------


class _PolicyBindings(Resource):
    """Bindings we own in some resources' policies. ``actual`` is ``{resource: policy or None}``; ``find`` is None
    only when none of those resources exists (nothing to bind to yet)."""

    #: The roles this step manages: other members of these roles are listed as unmanaged.
    roles: ClassVar[tuple[str, ...]]
    #: The API's prefix in call labels (``-v`` and permission errors), e.g. "storage.buckets".
    api_name: ClassVar[str]

    def targets(self) -> list[str]:
        """The resources whose policies this step edits."""
        raise NotImplementedError

    def wanted(self) -> set[Grant]:
        raise NotImplementedError

    def _read(self, target: str) -> Any:
        raise NotImplementedError

    def _write(self, target: str, policy: Any) -> Any:
        raise NotImplementedError

    _pairs: Callable[[Any], set[Binding]] = staticmethod(_proto_pairs)
    _apply: Callable[[Any, Iterable[Binding], Iterable[Binding]], bool] = staticmethod(_edit_proto)

    def _where(self, target: str) -> str:
        """How a label names the resource, when the step has several."""
        return ""

    def _refusal(self, exc: BaseException) -> Exception | None:
        return None

    def _label(self, grant: Grant) -> str:
        target, role, member = grant
        where = self._where(target)
        return f"{role} for {member}" + (f" on {where}" if where else "")

    def _what(self, method: str, target: str) -> str:
        where = self._where(target)
        return f"{self.api_name}.{method}" + (f" {where}" if where else "")

    def recorded(self) -> set[Grant]:
        """What the state file says we granted."""
        granted = self.ctx.fact(self.key, "granted")
        if granted is None:
            # Written before grants were recorded: its "bindings" were what we granted then.
            legacy = self.ctx.fact(self.key, "bindings") or []
            targets = self.targets()
            granted = {targets[0]: legacy} if len(targets) == 1 else {}
        return decode(granted)

    def find(self) -> dict[str, Any] | None:
        """Every target's policy, read at once (one round trip however many secrets); in the read wave, a policy
        several steps edit is read once for all of them (reads.py)."""
        targets = self.targets()
        policies = dict(zip(targets, reads.each(self._find_policy, targets), strict=True))
        return policies if any(p is not None for p in policies.values()) else None

    def _find_policy(self, target: str) -> Any | None:
        def read() -> Any | None:
            try:
                return self.ctx.api(self._what("getIamPolicy", target), self._read, target)
            except Exception as exc:  # NotFound from GAPIC clients, HttpError 404 from discovery ones
                if http_status(exc) != 404:
                    raise
                return None

        return reads.shared(f"{self.api_name}.getIamPolicy", target, read)

    def _live(self, actual: Mapping[str, Any]) -> dict[str, set[Binding] | None]:
        return {t: None if p is None else self._pairs(p) for t, p in actual.items()}

    def diff(self, actual: Any) -> list[Change]:
        """Only our own changes: grants the config asks for, revocations of what we granted."""
        p = plan(self.wanted(), self.recorded(), self._live(actual), self.roles)
        return [Change(self._label(g), "absent", "granted") for g in sorted(p.add)] + [
            Change(self._label(g), "granted", "revoked") for g in sorted(p.remove)
        ]

    def _edit(self, target: str, add: set[Binding], remove: set[Binding]) -> Any:
        try:
            return read_modify_write(
                self.ctx,
                self._what("setIamPolicy", target),
                lambda: self._read(target),
                lambda policy: self._write(target, policy),
                lambda policy: self._apply(policy, add, remove),
            )
        except Exception as exc:
            refusal = self._refusal(exc)
            if refusal is not None:
                raise refusal from None
            raise

    def _converge(self, actual: Mapping[str, Any], grant: set[Grant], revoke: set[Grant]) -> dict[str, Any]:
        """One read-modify-write per policy that needs a change; the add and the removal go into the same write.
        The whole ``grant`` / ``revoke`` sets of a policy go in (not only what ``actual`` lacks), so a retry after
        a concurrent change applies them to the fresh policy."""
        result = dict(actual)
        p = plan(grant, revoke, self._live(actual), ())
        for target in sorted({g[0] for g in p.add | p.remove}):
            add = {(r, m) for t, r, m in grant if t == target}
            remove = {(r, m) for t, r, m in revoke - grant if t == target and not _is_deleted(m)}
            result[target] = self._edit(target, add, remove)
            for _, _, member in (g for g in p.add if g[0] == target):
                self.ctx.granted(member)  # for steps that wait out IAM propagation (builds.cloudbuild)
        return result

    def create(self) -> Any:
        return self.update({t: None for t in self.targets()}, [])

    def update(self, actual: Any, changes: list[Change]) -> Any:
        return self._converge(actual, self.wanted(), self.recorded())

    def delete(self, actual: Any) -> None:
        # Everything ours goes, what the config asks for and what we granted earlier; others' members stay.
        self._converge(actual, set(), self.wanted() | self.recorded())

    def facts(self, actual: Any) -> dict[str, Any]:
        live = self._live(actual)
        wanted, recorded = self.wanted(), self.recorded()
        unmanaged = plan(wanted, recorded, live, self.roles).unmanaged
        return {
            "id": self.id(),
            "granted": encode(held(wanted, recorded, live)),
            "unmanaged": [self._label(g) for g in sorted(unmanaged)],
        }


# --- project -------------------------------------------------------------------------------------------


class ProjectBindings(_PolicyBindings):
    """The runtime account may connect to Cloud SQL; the build account (Cloud Build only) may write its log."""

    key = "iam:project"
    kind = "project IAM bindings"
    depends_on = ("sa:runtime", "sa:build")
    # Only these are reported as unmanaged: many accounts hold logging.logWriter on a project for their own reasons.
    roles = RUNTIME_PROJECT_ROLES
    api_name = "resourcemanager.projects"

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}"

    def targets(self) -> list[str]:
        return [self.id()]

    def wanted(self) -> set[Grant]:
        from .. import builds

        member = f"serviceAccount:{self.ctx.names.runtime_account}"
        wanted = {(self.id(), role, member) for role in RUNTIME_PROJECT_ROLES}
        if builds.resolve(self.ctx) == "cloudbuild":
            wanted.add((self.id(), BUILD_LOG_ROLE, f"serviceAccount:{self.ctx.names.build_account}"))
        return wanted

    def _read(self, target: str) -> Any:
        rm = self.ctx.clients.projects
        return rm.get_iam_policy(request={"resource": target, "options": {"requested_policy_version": 3}})

    def _write(self, target: str, policy: Any) -> Any:
        return self.ctx.clients.projects.set_iam_policy(request={"resource": target, "policy": policy})

    @staticmethod
    def _apply(policy: Any, add: Iterable[Binding], remove: Iterable[Binding]) -> bool:
        policy.version = 3  # a v1 write may drop IAM Conditions others set
        return _edit_proto(policy, add, remove)


# --- secrets -------------------------------------------------------------------------------------------


class SecretBindings(_PolicyBindings):
    """The runtime account may read each of its own secrets, and nothing else in Secret Manager. The secrets
    themselves are deleted by their own steps; a deleted secret has nothing to revoke."""

    key = "iam:secrets"
    kind = "secret IAM bindings"
    depends_on = ("sa:runtime", "secret:db-password", "secret:admin-username", "secret:admin-password",
                  "secret:flask-secret-key")  # fmt: skip
    roles = (SECRET_ROLE,)
    api_name = "secretmanager.secrets"

    def id(self) -> str:
        return f"projects/{self.ctx.names.project}/secrets/{self.ctx.names.prefix}-*"

    def targets(self) -> list[str]:
        return [f"projects/{self.ctx.names.project}/secrets/{s}" for s in self.ctx.names.secrets.values()]

    def wanted(self) -> set[Grant]:
        member = f"serviceAccount:{self.ctx.names.runtime_account}"
        return {(name, SECRET_ROLE, member) for name in self.targets()}

    def _where(self, target: str) -> str:
        return target.rsplit("/", 1)[1]

    def _read(self, target: str) -> Any:
        return self.ctx.clients.secrets.get_iam_policy(request={"resource": target})

    def _write(self, target: str, policy: Any) -> Any:
        return self.ctx.clients.secrets.set_iam_policy(request={"resource": target, "policy": policy})


# --- bucket --------------------------------------------------------------------------------------------


class _BucketPolicyBindings(_PolicyBindings):
    """Bindings in one bucket's policy (google-cloud-storage's Policy: bindings as dicts)."""

    api_name = "storage.buckets"
    _pairs = staticmethod(_storage_pairs)
    _apply = staticmethod(_edit_storage)

    @property
    def bucket_name(self) -> str:
        raise NotImplementedError

    def id(self) -> str:
        return f"gs://{self.bucket_name}"

    def targets(self) -> list[str]:
        return [self.id()]

    def _bucket(self) -> Any:
        return self.ctx.clients.storage.bucket(self.bucket_name)

    def _read(self, target: str) -> Any:
        return self._bucket().get_iam_policy(requested_policy_version=3)

    def _write(self, target: str, policy: Any) -> Any:
        return self._bucket().set_iam_policy(policy)


class BucketBindings(_BucketPolicyBindings):
    """The runtime account gets object access on the artifact bucket only; `artifacts.users` may read it."""

    key = "iam:bucket"
    kind = "bucket IAM bindings"
    depends_on = ("sa:runtime", "bucket", "sa:client")
    roles = (BUCKET_RUNTIME_ROLE, BUCKET_READER_ROLE)

    @property
    def bucket_name(self) -> str:
        return self.ctx.names.bucket

    def wanted(self) -> set[Grant]:
        wanted = {(BUCKET_RUNTIME_ROLE, f"serviceAccount:{self.ctx.names.runtime_account}")}
        wanted |= {(BUCKET_READER_ROLE, m) for m in self.ctx.config.artifacts.users}
        if self.ctx.config.create_client_key:
            wanted.add((BUCKET_RUNTIME_ROLE, f"serviceAccount:{self.ctx.names.client_account}"))
        return {(self.id(), role, member) for role, member in wanted}


# --- Cloud Run invoker ---------------------------------------------------------------------------------


def iap_service_agent(ctx: Any) -> str:
    """IAP's service agent, which calls the service on the signed-in user's behalf (cloud.google.com/run/docs/
    securing/identity-aware-proxy-cloud-run: the console grants it roles/run.invoker; API users grant it)."""
    return f"service-{ctx.fact('project', 'number')}@gcp-sa-iap.iam.gserviceaccount.com"


class ServiceInvoker(_PolicyBindings):
    """Who may invoke the service at Cloud Run's front end. Basic mode: ``allUsers`` (MLflow's own login protects
    the server, as in the seed guide). IAP mode: only IAP's service agent, so the service is not public and every
    request passed IAP.

    Basic mode keeps ``allUsers`` rather than ``invokerIamDisabled``: both make the service public, but the binding
    is visible in the policy every IAM audit reads, while the flag hides it; where an organization forbids
    ``allUsers`` (Domain Restricted Sharing) the refusal says so and points at IAP mode, which needs neither
    (cloud.google.com/run/docs/authenticating/public; ``constraints/run.managed.requireInvokerIam`` can forbid the
    flag too)."""

    key = "iam:invoker"
    kind = "Cloud Run invoker binding"
    depends_on = ("run", "apis")
    roles = (INVOKER_ROLE,)
    api_name = "run.services"

    @property
    def member(self) -> str:
        if self.ctx.config.access.mode == "iap":
            return f"serviceAccount:{iap_service_agent(self.ctx)}"
        return "allUsers"

    def id(self) -> str:
        return f"{self.ctx.names.service_path}#{INVOKER_ROLE}"

    def targets(self) -> list[str]:
        return [self.ctx.names.service_path]

    def wanted(self) -> set[Grant]:
        return {(self.ctx.names.service_path, INVOKER_ROLE, self.member)}

    def _read(self, target: str) -> Any:
        return self.ctx.clients.run_services.get_iam_policy(request={"resource": target})

    def _write(self, target: str, policy: Any) -> Any:
        return self.ctx.clients.run_services.set_iam_policy(request={"resource": target, "policy": policy})

    def _converge(self, actual: Mapping[str, Any], grant: set[Grant], revoke: set[Grant]) -> dict[str, Any]:
        adding = plan(grant, revoke, self._live(actual), ()).add
        if any(m.endswith("@gcp-sa-iap.iam.gserviceaccount.com") for _, _, m in adding):
            self._ensure_service_agent()
        return super()._converge(actual, grant, revoke)

    def _ensure_service_agent(self) -> None:
        """IAP's service agent exists only once generated (``gcloud beta services identity create
        --service=iap.googleapis.com``; serviceusage v1beta1 generateServiceIdentity, idempotent); a policy naming
        it before that is refused. Called only when the grant is missing, so a converged stack makes no call."""
        project = self.ctx.names.project
        su = self.ctx.clients.service_usage_beta

        def generate() -> Any:
            parent = f"projects/{project}/services/iap.googleapis.com"
            return su.services().generateServiceIdentity(parent=parent).execute()

        op = self.ctx.api("serviceusage.services.generateServiceIdentity", generate)
        if not op.get("done"):
            from ..retry import wait_until

            name = op["name"]
            wait_until(
                "IAP's service agent to be created",
                lambda: su.operations().get(name=name).execute(),
                lambda o: bool(o.get("done")),
                self.ctx.deadline,
            )

    def _refusal(self, exc: BaseException) -> Exception | None:
        return org_policy_error(exc, self.member)
