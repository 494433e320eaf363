"""Cloud SQL volumes: the host directory standing for a revision's ``/cloudsql`` and its per-instance links,
kept while the runtime service account may connect (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import string
from pathlib import Path
from typing import Any

from .revisions import (
    RevisionProcess,
    sync_links,
)

CLOUDSQL_CLIENT = "roles/cloudsql.client"
#: The seam for Cloud SQL volumes: a host directory standing for the volume's mount path.
CLOUDSQL_DIR_ENV = "MLFLOW_GCP_CLOUDSQL_DIR"


class CloudSqlLinks:
    """The /cloudsql directories of :class:`CloudRunApi`'s revisions."""

    def _cloudsql_record(self, revision: str) -> Path:
        return self.world.data_dir / "r" / hashlib.sha256(revision.encode()).hexdigest()[:8]

    def _cloudsql_dir(self, revision: str) -> Path:
        """The directory standing for ``/cloudsql``. The server connects to ``<dir>/<connection name>/.s.PGSQL.5432``,
        which must fit a unix socket path (107 bytes) as ``/cloudsql/...`` does on Cloud Run: so it is a fresh
        ``/tmp/<4 characters>``, as long as ``/cloudsql``, kept as a link under the data directory (reused across
        restarts); where /tmp is not writable, the link's own path under the data directory."""
        record = self._cloudsql_record(revision)
        with contextlib.suppress(OSError):
            target = Path(os.readlink(record))
            if target.is_dir() and not target.is_symlink():
                return target
        record.parent.mkdir(parents=True, exist_ok=True)
        if record.is_symlink():
            record.unlink()
        elif record.is_dir():
            return record
        alphabet = string.ascii_lowercase + string.digits
        for _ in range(50):
            candidate = Path("/tmp") / "".join(random.choices(alphabet, k=4))
            try:
                candidate.mkdir(mode=0o755)
            except FileExistsError:
                continue
            except OSError:
                break
            record.symlink_to(candidate)
            return candidate
        return record

    def _remove_cloudsql_targets(self) -> None:
        """Remove the /tmp directories (a restart makes new ones, as the links dangle)."""
        with contextlib.suppress(OSError):
            for record in (self.world.data_dir / "r").iterdir():
                if record.is_symlink():
                    shutil.rmtree(os.readlink(record), ignore_errors=True)

    def _remove_cloudsql_dir(self, revision: str) -> None:
        record = self._cloudsql_record(revision)
        if record.is_symlink():
            with contextlib.suppress(OSError):
                shutil.rmtree(os.readlink(record), ignore_errors=True)
            record.unlink(missing_ok=True)
        shutil.rmtree(record, ignore_errors=True)

    # --- Cloud SQL volumes ------------------------------------------------------------------------

    @staticmethod
    def _cloudsql_instances(rev: dict[str, Any], container: dict[str, Any]) -> list[str]:
        mounted = {m.get("name") for m in container.get("volumeMounts", [])}
        out: list[str] = []
        for volume in rev.get("volumes", []):
            if volume.get("name") in mounted and "cloudSqlInstance" in volume:
                out.extend(volume["cloudSqlInstance"].get("instances", []))
        return list(dict.fromkeys(out))

    def _sync_cloudsql(self, proc: RevisionProcess) -> None:
        """Link each instance's socket directory into the revision's Cloud SQL directory while the runtime
        service account may connect (roles/cloudsql.client, Cloud SQL Admin API enabled) — re-checked
        every second, as the Cloud SQL connector checks on each connection."""
        if proc.cloudsql_dir is None:
            return
        wanted: dict[str, str] = {}
        sqladmin = self.world.apis.get("sqladmin")
        for conn in proc.cloudsql_instances:
            if sqladmin is None or conn.count(":") < 2:
                continue
            project = conn.rsplit(":", 2)[0]
            if self.world.find_project(project) is None:
                continue
            if self.world.service_state(project, "sqladmin.googleapis.com") != "ENABLED":
                continue
            if not self.world.iam.has_role([f"projects/{project}"], proc.member, CLOUDSQL_CLIENT):
                continue
            try:
                # Linked whether or not the instance exists: without one, connecting fails as on GCP.
                wanted[conn] = str(sqladmin.socket_dir(conn))
            except ValueError:
                continue
        with contextlib.suppress(OSError):
            sync_links(proc.cloudsql_dir, wanted)
