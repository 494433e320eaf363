"""What the Cloud Run modules share: store kinds, conditions, timestamps and etags, field violations, and
the two ways a revision does not come up (:class:`_RevisionFailure`, :class:`_Cancelled`)."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from typing import Any

from ...core.errors import GcpError, invalid

SERVICE_KIND = "run.service"
REVISION_KIND = "run.revision"
#: Per service, what the API does not show: the front end's port, revision numbering, pinned image
#: digests and the operations still to finish (re-run after a daemon restart).
STATE_KIND = "run.state"
#: Per running revision: pid and kernel start time, to reap what a crashed emulator left behind.
PROCESS_KIND = "run.process"

_TYPE_SERVICE = "type.googleapis.com/google.cloud.run.v2.Service"
_TYPE_REVISION = "type.googleapis.com/google.cloud.run.v2.Revision"
#: Who the emulator's callers are (anonymous credentials stand for the project owner).
CALLER = "owner@example.com"
#: The role a caller (or, with IAP on, IAP's service agent) needs on a service to invoke it.
INVOKER = "roles/run.invoker"

_LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
_REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"

_DEFAULT_PROBE = {"timeoutSeconds": 240, "periodSeconds": 240, "failureThreshold": 1}


def _now(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _etag() -> str:
    return '"' + base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=") + '"'


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _seconds(duration: str | None, default: float) -> float:
    if not duration:
        return default
    try:
        return float(duration.rstrip("s"))
    except ValueError:
        return default


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _condition(
    ctype: str, state: str, message: str = "", *, before: list[dict[str, Any]] | None = None, **extra: str
) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": ctype, "state": state, "lastTransitionTime": _now()}
    # A condition whose state does not change keeps its lastTransitionTime (recorded:
    # tests/golden/recordings/run-service.tf.yaml, ConfigurationsReady keeps the create's time through an update).
    old = next((c for c in before or [] if c.get("type") == ctype), None)
    if old is not None and old.get("state") == state and old.get("lastTransitionTime"):
        cond["lastTransitionTime"] = old["lastTransitionTime"]
    if message:
        cond["message"] = message
    cond.update(extra)
    return cond


def _violation(field: str, description: str) -> GcpError:
    return invalid(
        f"{field}: {description}",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": description}],
            }
        ],
    )


def _ingress(containers: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The container that receives requests: the one with a port (or the only one)."""
    for i, c in enumerate(containers):
        if c.get("ports"):
            return i, c
    return 0, containers[0]


def _exit_line(code: int | None) -> str:
    """How Cloud Run's system log reports a container that ended."""
    if code is not None and code < 0:
        return f"Container terminated on signal {-code}."
    return f"Container called exit({code})."


class _RevisionFailure(Exception):
    """Why a revision could not become ready; ``detail`` is what Cloud Run says after the
    "Revision 'x' is not ready and cannot serve traffic." lead."""

    def __init__(self, detail: str, reason: str | None = None, container: bool = False, missing: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        self.container = container
        #: The revision itself does not exist (a traffic target naming an unknown revision).
        self.missing = missing


class _Cancelled(Exception):
    """The emulator was reset or shut down while a deploy was under way."""
