"""Cloud SQL Admin v1 (discovery API): instances, databases, users and ``sql#operation``s, each instance a real
PostgreSQL server listening on ``<data>/cloudsql/<connection name>/.s.PGSQL.5432``."""

from .api import SqlAdminApi

__all__ = ["SqlAdminApi"]
