"""Traffic: which revisions a service's traffic spec names, its ``trafficStatuses``, and pointing the front
end at those revisions' processes (retiring the rest)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .common import (
    _LATEST,
    PROCESS_KIND,
    _RevisionFailure,
)
from .revisions import (
    RevisionProcess,
)


@dataclass
class _Target:
    revision: str  # full name
    percent: int


class Traffic:
    """Routing of :class:`CloudRunApi` services."""

    # --- traffic ----------------------------------------------------------------------------------

    def _targets(self, svc: dict[str, Any]) -> list[_Target]:
        out: list[_Target] = []
        for t in svc.get("traffic", []):
            percent = int(t.get("percent", 0))
            if t.get("type", _LATEST) == _LATEST:
                revision = svc.get("latestReadyRevision", "")
            else:
                revision = f"{svc['name']}/revisions/{t['revision']}"
            if percent > 0 and revision:
                out.append(_Target(revision, percent))
        return out

    def _traffic_statuses(self, svc: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for t in svc.get("traffic", []):
            status: dict[str, Any] = {"type": t.get("type", _LATEST), "percent": int(t.get("percent", 0))}
            # A LATEST target's status does not name the revision it resolves to (recorded:
            # tests/golden/recordings/run-service.tf.yaml); latestReadyRevision does.
            if status["type"] != _LATEST and t.get("revision"):
                status["revision"] = t["revision"]
            if t.get("tag"):
                status["tag"] = t["tag"]
            out.append(status)
        return out

    def _route(self, name: str, epoch: int) -> str:
        """Point the front end at the processes the traffic spec names (starting any that are not running)
        and retire the rest once their requests finished. Returns why routing failed, or ""."""
        svc = self._require_service(name)
        targets = self._targets(svc)
        routed: list[tuple[RevisionProcess, int]] = []
        error = ""
        if not targets:
            error = "Revision is not ready and cannot serve traffic: the service has no ready revision."
        for target in targets:
            try:
                routed.append((self._bring_up(target.revision, epoch), target.percent))
            except _RevisionFailure as failure:
                short = target.revision.rsplit("/", 1)[1]
                error = error or (
                    failure.detail
                    if failure.missing
                    else f"Revision '{short}' is not ready and cannot serve traffic. {failure.detail}"
                )
        if error and targets:
            # As Knative does, a route that cannot be reconciled keeps serving as it did; instances started
            # only for it are let go.
            with self._lock:
                frontend = self._frontends.get(name)
                serving = set(frontend.targets()) if frontend is not None else set()
                started = [p for p, _ in routed if p not in serving and self._procs.get(p.revision) is p]
                for proc in started:
                    del self._procs[proc.revision]
                    self.world.store.delete(PROCESS_KIND, proc.revision)
            for proc in started:
                threading.Thread(target=proc.stop, daemon=True).start()
            return error
        with self._lock:
            self._check_epoch(epoch)
            frontend = self._frontends.get(name)
            if frontend is not None:
                frontend.set_targets(routed)
            keep = {p.revision for p, _ in routed}
            prefix = f"{name}/revisions/"
            retired = [self._procs.pop(r) for r in list(self._procs) if r.startswith(prefix) and r not in keep]
            for proc in retired:
                self.world.store.delete(PROCESS_KIND, proc.revision)
        for proc in retired:
            # Retired instances finish what they are serving (up to the request timeout), then stop.
            threading.Thread(
                target=proc.stop, kwargs={"drain_timeout": proc.request_timeout}, name="run-retire", daemon=True
            ).start()
        return error
