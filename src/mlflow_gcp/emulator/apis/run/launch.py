"""Launching a revision: the image it runs (pinned to a digest), its environment and command, the host
process, and the startup probe it must pass."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ...core.images import ImageRecord
from ...imagebuild import InstallFailed, python_envs
from . import hello
from .cloudsql import CLOUDSQL_DIR_ENV
from .common import (
    _DEFAULT_PROBE,
    PROCESS_KIND,
    REVISION_KIND,
    STATE_KIND,
    _Cancelled,
    _exit_line,
    _ingress,
    _RevisionFailure,
    _seconds,
)
from .logs import RevisionLog
from .revisions import (
    GRACE_SECONDS,
    Probe,
    RevisionProcess,
    free_port,
    process_start_time,
)

_TROUBLESHOOTING = "For more troubleshooting guidance, see https://cloud.google.com/run/docs/troubleshooting"


def _digest_ref(uri: str, digest: str) -> str:
    base = uri.split("@", 1)[0]
    head, _, last = base.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}@{digest}"


class Launch:
    """Brings up :class:`CloudRunApi` revisions as host processes."""

    def _bring_up(self, revision: str, epoch: int) -> RevisionProcess:
        """A ready process for ``revision`` (the running one, or a new one once it passed its probe)."""
        with self._lock:
            proc = self._procs.get(revision)
        if proc is not None and proc.ready and proc.alive():
            return proc
        rev = self.world.store.get(REVISION_KIND, revision)
        if rev is None:
            raise _RevisionFailure(
                f"Revision '{revision.rsplit('/', 1)[1]}' does not exist or is deleted. Update all traffic to "
                "route to currently available revisions.",
                missing=True,
            )
        proc = self._launch(rev, epoch)
        _, container = _ingress(rev["containers"])
        probe = self._probe(container, proc.port)
        why = proc.wait_ready(probe, cancelled=lambda: self._epoch != epoch)
        if why is None:
            return proc
        # Stop it before letting go of it, so a reset racing with this never loses track of a process.
        proc.stop(grace=GRACE_SECONDS)
        proc.log.drain()  # its last lines come before Cloud Run's about its end
        with self._lock:
            if self._procs.get(revision) is proc:
                del self._procs[revision]
                self.world.store.delete(PROCESS_KIND, revision)
        self._check_epoch(epoch)
        port = container["ports"][0]["containerPort"]
        label = f' for container "{container["name"]}"' if container.get("name") else ""
        code = proc.proc.returncode
        if why == "exit":
            proc.system_log(_exit_line(code), "ERROR")
        elif probe.default:
            proc.system_log(
                f"Default STARTUP TCP probe failed {probe.failure_threshold} time consecutively{label} on port "
                f"{port}. The instance was not started.",
                "ERROR",
            )
        else:
            where = f' path "{probe.path}"' if probe.kind == "http" else ""
            proc.system_log(
                f"STARTUP {probe.kind.upper()} probe failed {probe.failure_threshold} times consecutively{label} "
                f"on port {port}{where}. The instance was not started.",
                "ERROR",
            )
        # Its last lines are in Cloud Logging before the deploy fails, for whoever reads them next.
        proc.log.flush()
        logs = f"Logs URL: {proc.log_path.as_uri()}\n{_TROUBLESHOOTING}#container-failed-to-start"
        if why == "exit" or probe.default:
            detail = (
                "The user-provided container failed to start and listen on the port defined provided by the "
                f"PORT={port} environment variable within the allocated timeout. This can happen when the container "
                "port is misconfigured or if the timeout is too short. The health check timeout can be extended. "
                f"Logs for this revision might contain more information.\n\n{logs}"
            )
        else:
            detail = (
                "The user-provided container failed the configured startup probe checks. Logs for this revision "
                f"might contain more information.\n\n{logs}"
            )
        raise _RevisionFailure(detail, container=True)

    @staticmethod
    def _probe(container: dict[str, Any], host_port: int) -> Probe:
        spec = container["startupProbe"]
        default = {k: v for k, v in spec.items() if k != "tcpSocket"} == _DEFAULT_PROBE and "tcpSocket" in spec
        common = {
            "port": host_port,
            "initial_delay": float(spec.get("initialDelaySeconds", 0)),
            "timeout": float(spec.get("timeoutSeconds", 1)),
            "period": float(spec.get("periodSeconds", 10)),
            "failure_threshold": int(spec.get("failureThreshold", 3)),
            "default": default,
        }
        if "httpGet" in spec:
            http_get = spec["httpGet"]
            headers = [(h["name"], h.get("value", "")) for h in http_get.get("httpHeaders", [])]
            return Probe(kind="http", path=http_get.get("path", "/"), headers=headers, **common)  # type: ignore[arg-type]
        return Probe(kind="tcp", **common)  # type: ignore[arg-type]

    def _launch(self, rev: dict[str, Any], epoch: int) -> RevisionProcess:
        """Resolve everything the revision needs as Cloud Run does when an instance starts, then start it."""
        revision = rev["name"]
        parts = revision.split("/")
        pid, sid, short = parts[1], parts[5], parts[7]
        service = revision.rsplit("/revisions/", 1)[0]
        index, container = _ingress(rev["containers"])
        record = self._resolve_image(service, short, container["image"])
        if record is None:
            raise _RevisionFailure(f"Image '{container['image']}' not found.", reason="CONTAINER_MISSING")
        account = rev.get("serviceAccount", "")
        member = f"serviceAccount:{account}"

        env: dict[str, str] = {k: v for k, v in record.env.items() if k != "PATH"}
        image_path = [record.host_path(p) for p in record.env.get("PATH", "").split(":") if p]
        host_python = str(Path(sys.executable).parent)
        # The image's `python` is the environment its RUN pip install made (imagebuild/pythonenv.py): its packages
        # and nothing of the host's. An image that installs nothing runs the host's interpreter (the base image's
        # stand-in), as before.
        python = self._python_env(record)
        path = [
            str(python) if python else host_python,
            *[p for p in image_path if Path(p).is_absolute() and Path(p).exists()],
        ]
        path += [p for p in os.environ.get("PATH", "").split(":") if not (python and p == host_python)]
        env["PATH"] = ":".join(dict.fromkeys(p for p in path if p))
        for key in ("HOME", "LANG"):
            if key in os.environ:
                env[key] = os.environ[key]
        for j, var in enumerate(container.get("env", [])):
            if "valueSource" in var:
                env[var["name"]] = self._secret_value(pid, index, j, var, member, account)
            else:
                env[var["name"]] = var.get("value", "")
        port = free_port()
        env.update(PORT=str(port), K_SERVICE=sid, K_REVISION=short, K_CONFIGURATION=sid)
        # Google APIs: on Cloud Run the container reaches them with the runtime account's token from the metadata
        # server; here Cloud Storage is the emulator's (google-cloud-storage honours STORAGE_EMULATOR_HOST).
        env["STORAGE_EMULATOR_HOST"] = self.world.base_url
        # IAP's signed header: on GCP the server fetches Google's real keys (https://www.gstatic.com/iap/verify/
        # public_key); here the emulator's IAP key signs the assertions, so the server is pointed at its keys.
        env["MLFLOW_GCP_IAP_CERTS_URL"] = f"{self.world.base_url}/_emulator/iap/verify/public_key"

        cloudsql = self._cloudsql_instances(rev, container)
        cloudsql_dir = self._cloudsql_dir(revision) if cloudsql else None
        if cloudsql_dir is not None:
            env[CLOUDSQL_DIR_ENV] = str(cloudsql_dir)

        argv = record.command(container.get("command"), container.get("args"))
        if not argv:
            raise _RevisionFailure(
                "Application failed to start: the image has no ENTRYPOINT or CMD and the container sets no command.",
                container=True,
            )
        cwd = record.host_workdir()
        if container.get("workingDir"):
            mapped = Path(record.host_path(container["workingDir"]))
            cwd = mapped if mapped.is_dir() else cwd
        log = RevisionLog(revision, self._log_path(revision), self._log_shipper)
        log.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_epoch(epoch)
        try:
            popen = self._spawner.spawn(argv, env=env, cwd=cwd)
        except OSError as exc:
            raise _RevisionFailure(f"Application failed to start: {exc.strerror or exc}", container=True) from None
        log.follow(popen.stdout, popen.stderr)
        proc = RevisionProcess(
            revision,
            popen,
            port=port,
            container_port=int(container["ports"][0]["containerPort"]),
            h2c=container["ports"][0].get("name") == "h2c",
            log=log,
            cloudsql_dir=cloudsql_dir,
        )
        proc.request_timeout = _seconds(rev.get("timeout"), 300.0)
        proc.cloudsql_instances = cloudsql
        proc.member = member
        proc.system_log(
            f"Starting revision {short} (host port {port} stands for container port {proc.container_port})."
        )
        with self._lock:
            if self._epoch != epoch:
                proc.signal(signal.SIGKILL)
                raise _Cancelled
            old = self._procs.get(revision)
            self._procs[revision] = proc
            self.world.store.put(PROCESS_KIND, revision, {"pid": popen.pid, "startTime": process_start_time(popen.pid)})
        if old is not None and old is not proc:
            threading.Thread(target=old.stop, daemon=True).start()
        self._sync_cloudsql(proc)
        self._ensure_watchdog()
        return proc

    def _python_env(self, record: ImageRecord) -> Path | None:
        """The ``bin`` directory of the image's Python environment, None when the image installs nothing. Built when
        the image was (a missing one, a cache emptied since, is installed again: the image's layers are its)."""
        if not record.python_requirements:
            return None
        try:
            return python_envs(self.world.data_dir).ensure(record.python_requirements)
        except InstallFailed:
            raise _RevisionFailure(
                f"Image '{record.uri}': its Python environment (RUN pip install) could not be installed again.",
                container=True,
            ) from None

    def _resolve_image(self, service: str, revision: str, uri: str) -> ImageRecord | None:
        """The image a revision runs, pinned to the digest it had when the revision first started."""
        sample = hello.image(uri)
        if sample is not None:
            # Google's public sample, which GCP deploys and serves (recorded:
            # tests/golden/recordings/run-service.tf.yaml): the emulator's built-in stand-in (run/hello.py).
            return sample
        ar = self.world.apis.get("artifactregistry")
        if ar is None:
            return None
        state = self.world.store.get(STATE_KIND, service) or {}
        pinned = state.get("images", {}).get(revision)
        if pinned:
            record = ar.resolve_image(pinned)
            if record is None:
                record = ar.resolve_image(uri)
                if record is not None and f"@{record.digest}" not in pinned:
                    record = None
            return record
        record = ar.resolve_image(uri)
        if record is not None:
            with self._lock:
                state = self.world.store.get(STATE_KIND, service)
                if state is not None:
                    state.setdefault("images", {})[revision] = _digest_ref(uri, record.digest)
                    self.world.store.put(STATE_KIND, service, state)
        return record
