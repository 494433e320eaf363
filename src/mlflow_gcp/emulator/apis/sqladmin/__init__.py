"""Cloud SQL Admin v1 (discovery API): instances (instances.py, settings.py, versions.py), databases (databases.py),
users (users.py) and ``sql#operation``s (api.py, which composes them), backups and point-in-time recovery (backups.py,
recovery.py, walarchive.py), each PostgreSQL instance a real server listening on
``<data>/cloudsql/<hash of the connection name>/.s.PGSQL.5432`` (``socket_dir``)."""

from .recovery import SqlAdminApi

__all__ = ["SqlAdminApi"]
