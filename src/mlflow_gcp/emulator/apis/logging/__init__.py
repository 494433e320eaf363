"""Cloud Logging v2 (see :mod:`.api`) and the Logging query language (see :mod:`.query`)."""

from .api import LoggingApi

__all__ = ["LoggingApi"]
