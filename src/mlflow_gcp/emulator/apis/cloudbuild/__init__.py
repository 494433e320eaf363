"""Cloud Build v1: builds from a source tarball in Cloud Storage, with docker builder steps, pushing to
Artifact Registry, run as the build's service account, logging to Cloud Logging.

The package: ``api.py`` the routes (create and its checks, get, list with filters, operations),
``runner.py`` one build's run and its log, ``docker_builder.py`` the docker builder step, ``identity.py``
who a build runs as and what IAM lets it do.
"""

from .api import CloudBuildApi

__all__ = ["CloudBuildApi"]
