"""Resource Manager v3: projects get, and the project IAM policy with etags (stale etag -> 409 ABORTED).

The IAM methods are also served under v1 (``/v1/projects/{p}:getIamPolicy``), whose request and response
bodies are the same; Config Connector and Terraform call v1 (recorded:
tests/golden/recordings/project-iam-and-serviceaccount.log, storage-buckets-two.log).
"""

from __future__ import annotations

from typing import Any

from google.cloud.resourcemanager_v3 import types as rm
from google.iam.v1 import iam_policy_pb2

from ..core.http import ApiModule, ApiRequest, route
from ..core.validation import parse_proto, render

OWNER = "user:owner@example.com"


class ResourceManagerApi(ApiModule):
    prefix = "/resourcemanager"
    service = "cloudresourcemanager.googleapis.com"
    title = "Cloud Resource Manager API"

    def policy_resource(self, project: str) -> str:
        """The IAM store key of a project's policy (by project id, whichever form the caller used)."""
        return f"projects/{self.world.project(project)['projectId']}"

    def project_policy(self, project: str) -> dict[str, Any]:
        key = self.policy_resource(project)
        if self.world.store.get(self.world.iam.KIND, key) is None:
            # A new project's policy names its creator as owner.
            self.world.iam.set(key, {"bindings": [{"role": "roles/owner", "members": [OWNER]}]}, initial=True)
        return self.world.iam.get(key)

    @route("GET", "/v3/projects/{project}", name="projects.get")
    def get(self, req: ApiRequest) -> dict[str, Any]:
        return render(self.world.project(req["project"]), rm.Project, req.enum_int)

    @route("POST", "/v3/projects/{project}:getIamPolicy", name="projects.getIamPolicy", mutating=False)
    @route("POST", "/v1/projects/{project}:getIamPolicy", name="projects.getIamPolicy", mutating=False)
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        parse_proto(req.json(), iam_policy_pb2.GetIamPolicyRequest)
        return self.project_policy(req["project"])

    @route("POST", "/v3/projects/{project}:setIamPolicy", name="projects.setIamPolicy")
    @route("POST", "/v1/projects/{project}:setIamPolicy", name="projects.setIamPolicy")
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.SetIamPolicyRequest)
        self.project_policy(req["project"])
        policy = body.get("policy", {})
        mask = [p.strip() for p in (body.get("updateMask") or "").split(",") if p.strip()]
        if "auditConfigs" not in mask and "audit_configs" not in mask:
            # The default mask is "bindings,etag": the stored audit configuration is kept (SetIamPolicyRequest).
            current = self.world.iam.get(self.policy_resource(req["project"]))
            policy = {**policy, "auditConfigs": current.get("auditConfigs", [])}
        return self.world.iam.set(self.policy_resource(req["project"]), policy)
