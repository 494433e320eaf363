"""Rolling out: the work of a deploy's and a delete's operation — revision conditions, the service's
``terminalCondition``/``conditions``, ``latestReadyRevision``, observed generations and the operation's metadata."""

from __future__ import annotations

from typing import Any

from google.cloud import run_v2

from ...core.errors import GcpError
from ...core.validation import render
from .common import (
    _TYPE_SERVICE,
    PROCESS_KIND,
    REVISION_KIND,
    SERVICE_KIND,
    STATE_KIND,
    _Cancelled,
    _condition,
    _now,
    _RevisionFailure,
)
from .revisions import (
    stop_all,
)


class Rollout:
    """The long-running operations of :class:`CloudRunApi`."""

    @staticmethod
    def _mark_reconciling(svc: dict[str, Any]) -> None:
        """A deploy under way: Ready and the route reconcile; a new service's configuration too."""
        svc["reconciling"] = True
        before = [svc.get("terminalCondition", {}), *svc.get("conditions", [])]
        svc["terminalCondition"] = _condition("Ready", "CONDITION_RECONCILING", before=before)
        configuration = next((c for c in svc.get("conditions", []) if c.get("type") == "ConfigurationsReady"), None)
        svc["conditions"] = [
            _condition("RoutesReady", "CONDITION_RECONCILING", before=before),
            configuration or _condition("ConfigurationsReady", "CONDITION_RECONCILING"),
        ]

    # --- operations' work -------------------------------------------------------------------------

    @staticmethod
    def _metadata(svc: dict[str, Any]) -> dict[str, Any]:
        """An operation's metadata: the service (the whole of it, as GetService answers)."""
        rendered = render(svc, run_v2.Service, False)
        if "observedGeneration" not in svc:
            # A service not reconciled yet: GCP's first answer to its create leaves out ingress, though the
            # request set it (recorded: tests/golden/recordings/run-service.tf.yaml).
            rendered.pop("ingress", None)
        return {"@type": _TYPE_SERVICE, **rendered}

    def _finish_metadata(self, metadata: dict[str, Any], svc: dict[str, Any] | None) -> None:
        """A finished operation's metadata is the service as the operation left it (recorded:
        tests/golden/recordings/run-service.tf.yaml), not as it was accepted. The operation keeps the very
        dict it was started with (core/operations.py), so it is updated in place."""
        if svc is not None:
            metadata.clear()
            metadata.update({"@type": _TYPE_SERVICE, **render(svc, run_v2.Service, False)})

    def _start_deploy(self, op_name: str, name: str, revision: str | None, generation: int) -> dict[str, Any]:
        epoch = self._epoch
        metadata = self._metadata(self.world.store.get(SERVICE_KIND, name) or {})

        def work() -> dict[str, Any]:
            try:
                return self._deploy(op_name, name, revision, generation, epoch)
            finally:
                if self._epoch == epoch:
                    self._finish_metadata(metadata, self.world.store.get(SERVICE_KIND, name))

        return self.world.ops.start(
            name.rsplit("/services/", 1)[0],
            work,
            delay_key="run.service.deploy",
            metadata=metadata,
            response_type=_TYPE_SERVICE,
            name=op_name,
        )

    def _start_delete(self, op_name: str, name: str) -> dict[str, Any]:
        epoch = self._epoch
        metadata = self._metadata(self.world.store.get(SERVICE_KIND, name) or {})

        def work() -> dict[str, Any]:
            deleted = self._delete(op_name, name, epoch)
            metadata.clear()
            metadata.update({"@type": _TYPE_SERVICE, **deleted})
            return deleted

        return self.world.ops.start(
            name.rsplit("/services/", 1)[0],
            work,
            delay_key="run.service.delete",
            metadata=metadata,
            response_type=_TYPE_SERVICE,
            name=op_name,
        )

    def _deploy(self, op_name: str, name: str, revision: str | None, generation: int, epoch: int) -> dict[str, Any]:
        try:
            with self._service_lock(name):
                return self._deploy_locked(op_name, name, revision, generation, epoch)
        except _Cancelled:
            raise GcpError(503, "The operation was interrupted: the emulator stopped.", "UNAVAILABLE") from None

    def _deploy_locked(
        self, op_name: str, name: str, revision: str | None, generation: int, epoch: int
    ) -> dict[str, Any]:
        self._check_epoch(epoch)
        full = f"{name}/revisions/{revision}" if revision else None
        with self._lock:
            # The deploy starts: the service reports its new revision and its URL.
            svc = self._require_service(name)
            state = self.world.store.get(STATE_KIND, name) or {}
            numbers = state.get("numbers", {})
            created = svc.get("latestCreatedRevision", "")
            if full is not None and (
                not created or numbers.get(created.rsplit("/", 1)[1], 0) <= numbers.get(revision, 0)
            ):
                svc["latestCreatedRevision"] = full
            if not svc.get("uri") and state.get("port"):
                svc["uri"] = f"http://127.0.0.1:{state['port']}"
                svc["urls"] = [svc["uri"]]
            self._mark_reconciling(svc)
            self.world.store.put(SERVICE_KIND, name, svc)
        failure: _RevisionFailure | None = None
        if full is not None:
            failure = self._roll_out(full, epoch)
        with self._lock:
            self._check_epoch(epoch)
            svc = self._require_service(name)
            state = self.world.store.get(STATE_KIND, name) or {}
            if full is not None and failure is None:
                numbers = state.get("numbers", {})
                current = svc.get("latestReadyRevision", "")
                if not current or numbers.get(current.rsplit("/", 1)[1], 0) < numbers.get(revision, 0):
                    svc["latestReadyRevision"] = full
                    self.world.store.put(SERVICE_KIND, name, svc)
        routes_error = self._route(name, epoch)
        with self._lock:
            self._check_epoch(epoch)
            svc = self._require_service(name)
            state = self.world.store.get(STATE_KIND, name) or {}
            if not routes_error or not svc.get("trafficStatuses"):
                svc["trafficStatuses"] = self._traffic_statuses(svc)
            svc["observedGeneration"] = str(max(int(svc.get("observedGeneration", 0) or 0), generation))
            still_pending = [p for p in state.get("pending", []) if p["op"] != op_name]
            message = ""
            if failure is not None:
                message = f"Revision '{revision}' is not ready and cannot serve traffic. {failure.detail}"
            if still_pending:
                self._mark_reconciling(svc)
            else:
                svc["reconciling"] = False
                config_failed = failure is not None
                before = [svc.get("terminalCondition", {}), *svc.get("conditions", [])]
                if config_failed:
                    svc["terminalCondition"] = _condition("Ready", "CONDITION_FAILED", message)
                elif routes_error:
                    svc["terminalCondition"] = _condition("Ready", "CONDITION_FAILED", routes_error)
                else:
                    svc["terminalCondition"] = _condition("Ready", "CONDITION_SUCCEEDED")
                svc["conditions"] = [
                    _condition("RoutesReady", "CONDITION_FAILED", message if config_failed else routes_error)
                    if routes_error
                    else _condition("RoutesReady", "CONDITION_SUCCEEDED", before=before),
                    _condition("ConfigurationsReady", "CONDITION_FAILED", message, reason="REVISION_FAILED")
                    if config_failed
                    else _condition("ConfigurationsReady", "CONDITION_SUCCEEDED", before=before),
                ]
            state["pending"] = still_pending
            self.world.store.put(STATE_KIND, name, state)
            self.world.store.put(SERVICE_KIND, name, svc)
        if failure is not None:
            raise GcpError(400, message, "FAILED_PRECONDITION")
        if routes_error:
            raise GcpError(400, routes_error, "FAILED_PRECONDITION")
        return render(svc, run_v2.Service, False)

    def _delete(self, op_name: str, name: str, epoch: int) -> dict[str, Any]:
        with self._service_lock(name):
            if self._epoch != epoch:
                raise GcpError(503, "The operation was interrupted: the emulator stopped.", "UNAVAILABLE")
            with self._lock:
                svc = self._require_service(name)
                frontend = self._frontends.pop(name, None)
                prefix = f"{name}/revisions/"
                procs = [self._procs.pop(r) for r in list(self._procs) if r.startswith(prefix)]
                for r in list(self._restarts):
                    if r.startswith(prefix):
                        del self._restarts[r]
            if frontend is not None:
                frontend.stop()
            stop_all(procs)
            with self._lock:
                for rev in self.world.store.names(REVISION_KIND, prefix):
                    self._remove_cloudsql_dir(rev)
                    self.world.store.delete(REVISION_KIND, rev)
                    self.world.store.delete(PROCESS_KIND, rev)
                self.world.store.delete(STATE_KIND, name)
                self.world.store.delete(SERVICE_KIND, name)
                self.world.iam.delete(name)
                iap = self.world.apis.get("iap")
                if iap is not None:
                    iap.service_deleted(name)
            # The deletion reconciled: its generation observed, Ready again (recorded:
            # tests/golden/recordings/run-service.tf.yaml, the DELETE's finished operation).
            before = [svc.get("terminalCondition", {})]
            svc.update(observedGeneration=svc["generation"], updateTime=_now(), reconciling=False)
            svc.setdefault("deleteTime", svc["updateTime"])
            svc["terminalCondition"] = _condition("Ready", "CONDITION_SUCCEEDED", before=before)
            return render(svc, run_v2.Service, False)

    # --- rolling out a revision -------------------------------------------------------------------

    def _roll_out(self, revision: str, epoch: int) -> _RevisionFailure | None:
        """Start the revision's process and wait for its startup probe; record how it went."""
        try:
            self._bring_up(revision, epoch)
        except _RevisionFailure as failure:
            self._set_revision_conditions(revision, failure)
            return failure
        self._set_revision_conditions(revision, None)
        return None

    def _set_revision_conditions(self, revision: str, failure: _RevisionFailure | None) -> None:
        with self._lock:
            rev = self.world.store.get(REVISION_KIND, revision)
            if rev is None:
                return
            rev["reconciling"] = False
            rev["updateTime"] = _now()
            if failure is None:
                rev["conditions"] = [
                    _condition("Ready", "CONDITION_SUCCEEDED"),
                    _condition("ContainerHealthy", "CONDITION_SUCCEEDED"),
                    _condition("ResourcesAvailable", "CONDITION_SUCCEEDED"),
                ]
            else:
                extra = {"reason": failure.reason} if failure.reason else {}
                ready = _condition("Ready", "CONDITION_FAILED", failure.detail, **extra)
                rev["conditions"] = [ready]
                if failure.container:
                    rev["conditions"].append(
                        _condition(
                            "ContainerHealthy",
                            "CONDITION_FAILED",
                            failure.detail,
                            revisionReason="HEALTH_CHECK_CONTAINER_ERROR",
                        )
                    )
            self.world.store.put(REVISION_KIND, revision, rev)
