"""Cloud SQL Admin v1 (discovery API): instances, databases, users and ``sql#operation``s (api.py), backups and
point-in-time recovery (backups.py, recovery.py, walarchive.py), each PostgreSQL instance a real server listening on
``<data>/cloudsql/<hash of the connection name>/.s.PGSQL.5432`` (``socket_dir``)."""

from .recovery import SqlAdminApi

__all__ = ["SqlAdminApi"]
