"""Entrypoint of the mlflow-gcp MLflow tracking server image, as Cloud Run runs it.

Configuration comes only from the environment, which mlflow-gcp sets on the Cloud Run service.

Secrets (Secret Manager, ``secretKeyRef``; pin versions, they are read once per instance start):

- ``MLFLOW_GCP_DB_PASSWORD``: password of the Cloud SQL user.
- ``MLFLOW_GCP_ADMIN_USERNAME`` / ``MLFLOW_GCP_ADMIN_PASSWORD``: MLflow's admin. MLflow creates this user only
  when it does not exist yet (first start); later changes go through ``/api/2.0/mlflow/users/update-password``.
  The password must have at least 12 characters (MLflow's rule).
- ``MLFLOW_FLASK_SERVER_SECRET_KEY``: Flask/CSRF key, required, identical on every instance (MLflow's own name).

Plain settings:

- ``MLFLOW_GCP_DB_USER``: the Cloud SQL user.
- ``MLFLOW_GCP_DB_NAME`` (default ``mlflow``): tracking and model-registry database.
- ``MLFLOW_GCP_AUTH_DB_NAME`` (default ``mlflow_auth``): basic-auth users and permissions. It lives in
  PostgreSQL too: MLflow's default is a sqlite file, which Cloud Run loses on every restart (and which each
  instance would have its own copy of).
- ``MLFLOW_GCP_CLOUDSQL_CONNECTION``: the instance's connection name, ``project:region:instance``.
- ``MLFLOW_GCP_CLOUDSQL_DIR`` (default ``/cloudsql``): where Cloud Run mounts the Cloud SQL sockets; the socket
  is ``<dir>/<connection name>/.s.PGSQL.5432``. Only the local emulator changes it.
- ``MLFLOW_GCP_ARTIFACTS_DESTINATION``: ``gs://bucket[/prefix]``; artifacts are proxied through the server
  (clients need no bucket access; the runtime service account writes).
- ``MLFLOW_GCP_ALLOWED_HOSTS``: comma-separated service URLs (``https://svc-abc-uc.a.run.app``) or
  ``host[:port]`` names. They feed MLflow's Host-header check (``--allowed-hosts``, plus localhost for probes
  and local use) and its CORS check (``--cors-allowed-origins``): browsers send ``Origin`` on same-origin POSTs,
  and MLflow blocks a state-changing request from a non-localhost origin that is not listed, which would break
  the UI on the service URL. A bare host means ``https://host``.
- ``MLFLOW_GCP_WORKERS`` (default 1): server worker processes per instance. One is served from the process that
  migrated the databases (see "Process tree" below); more are hypercorn's worker processes.
- ``MLFLOW_GCP_MAX_INSTANCES`` (required): the service's maximum instance count (count a rollout's overlap of
  old and new revisions in it if you want that covered too).
- ``MLFLOW_GCP_DB_MAX_CONNECTIONS`` (required): the Cloud SQL tier's ``max_connections`` (25 for db-f1-micro).
- ``MLFLOW_GCP_DB_RESERVED_CONNECTIONS`` (optional): connections left for everything but this service;
  default ``max(5, 10 %)``: PostgreSQL keeps 3 for superusers, Cloud SQL's own agents and an operator's
  psql or backup need a few more.
- ``MLFLOW_GCP_AUTH_CACHE_TTL`` (default 60): seconds MLflow caches a successful basic-auth check
  (``auth_cache_ttl_seconds``). Without it every authenticated request re-hashes the password (PBKDF2, 0.3–2 s
  per request on small instances). The cost: a password changed or user deleted through one worker is still
  accepted by the others for up to this long. ``0`` turns the cache off.
- ``MLFLOW_GCP_DEFAULT_PERMISSION`` (default ``READ``): what a user may do on experiments and models nobody
  granted them anything on. READ (MLflow's default) suits a team server: every user is an account the admin
  created, reading each other's results is the point of sharing a tracking server, and writes still need
  ownership (creators get MANAGE) or an explicit grant. ``NO_PERMISSIONS`` isolates users instead.
- ``MLFLOW_GCP_HTTP2`` (default ``1``): serve over hypercorn, which speaks HTTP/1.1 *and* cleartext HTTP/2
  (h2c, prior knowledge) on the same port; ``0`` runs MLflow's default uvicorn (HTTP/1.1 only).
- ``MLFLOW_GCP_AUTH_MODE`` (default ``basic``): ``basic`` (MLflow's accounts and passwords) or ``iap`` (sign-in
  through Identity-Aware Proxy, below).
- ``MLFLOW_GCP_IAP_AUDIENCE`` (required in iap mode): the ``aud`` IAP puts in its assertion for this service,
  ``/projects/{PROJECT_NUMBER}/locations/{REGION}/services/{SERVICE}`` (the project *number*).
- ``MLFLOW_GCP_IAP_ADMINS`` (iap mode, optional): comma-separated emails that are MLflow admins (a ``user:`` or
  ``serviceAccount:`` prefix is dropped; matched case-insensitively).
- ``MLFLOW_GCP_IAP_CERTS_URL`` (iap mode, default ``https://www.gstatic.com/iap/verify/public_key``): IAP's
  public keys. Only the local emulator changes it (plain http is accepted for a loopback host only).
- ``PORT`` (default 8080): set by Cloud Run.

IAP mode. The service sits behind Identity-Aware Proxy, which signs in users with their Google accounts and
forwards only the ones granted access, adding ``x-goog-iap-jwt-assertion``: a JWT signed with one of IAP's
published ES256 keys. ``mlflow_gcp_iap.py`` (next to this file, on the workers' ``PYTHONPATH``) is MLflow's
``authorization_function`` then. It trusts that assertion and nothing else: the signature against IAP's keys, the
issuer, the audience of *this* service (an assertion IAP made for another service is refused) and the expiry are
checked. Not the plain ``X-Goog-Authenticated-User-Email`` header, which anybody reaching the container another
way could send, and not basic auth; a request without a valid assertion gets 401 even if it reaches the server
directly. The verified email is the MLflow user, created on first visit with a random password nobody knows:
MLflow needs one, and none may work, since in this mode identity comes from Google, not from a password (should
the service go back to basic mode, the admin sets passwords for those who need one). MLflow's permission model
(per-user experiment and model permissions, the default permission) applies unchanged. The admins list is the
source of truth for admins: a user's ``is_admin`` is made to match it when a worker first sees them (and every
few minutes after), so removing someone from the list takes effect on the next deploy. The ini's basic admin
(``MLFLOW_GCP_ADMIN_USERNAME``, still required and still bootstrapped) is never changed by that.

Process tree and secrets. ``python /app/entrypoint.py`` (PID 1) validates the configuration, writes the basic-auth
ini file (0600, private temp directory) and runs ``python /app/entrypoint.py serve <mlflow server options>``; it
forwards SIGTERM/SIGINT to it (Cloud Run sends SIGTERM, then SIGKILL 10 s later) and passes its output through a
filter that masks every form of every secret. PID 1 never imports MLflow (it starts in milliseconds, and a
configuration error is reported before anything heavy runs). The ``serve`` process imports MLflow, upgrades both
databases in-process (no ``mlflow db upgrade <url>`` command line carries the password) under a PostgreSQL
advisory lock, since several instances start at once, creates the admin, then runs MLflow's ``server`` command.
The database URL reaches MLflow only through the environment (``MLFLOW_BACKEND_STORE_URI``, read by the click
option) and the ini file; no argv in the tree contains a secret.

The image's modules, next to this file in ``/app``: this one is PID 1 (it supervises the serve process and masks
its output); ``mlflow_gcp_config.py`` reads and checks the settings above and makes the serve process's environment,
basic-auth ini file and ``mlflow server`` options; ``mlflow_gcp_serve.py`` is the serve process (its docstring says
why h2c and hypercorn, how a start stays short, how the database is owned across password rotations, how the
connection pools are sized); ``mlflow_gcp_artifacts.py`` streams artifact uploads to GCS; ``mlflow_gcp_iap.py`` is
IAP mode's authorization function; ``mlflow_gcp_schema.py`` answers ``GET /mlflow-gcp/schema``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from mlflow_gcp_config import AUTH_IAP, Config, ConfigError, auth_ini, log, server_args, server_env, write_private_file

# --- PID 1: supervise and mask ---------------------------------------------------------------------------------


class Masker:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [s.encode() for s in secrets if s]

    def __call__(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, b"***")
        return data


def _pump(source: IO[bytes], sink: IO[bytes], mask: Callable[[bytes], bytes]) -> None:
    for line in iter(source.readline, b""):
        try:
            sink.write(mask(line))
            sink.flush()
        except (OSError, ValueError):
            pass
    source.close()


def supervise(argv: list[str], env: dict[str, str], mask: Callable[[bytes], bytes]) -> int:
    """Run ``argv`` with its output masked, forwarding SIGTERM/SIGINT; its exit status."""
    proc: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if proc is None:
            pending.append(signum)
        elif proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for signum in pending:
        proc.send_signal(signum)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout.buffer, mask), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr.buffer, mask), daemon=True),
    ]
    for t in pumps:
        t.start()
    returncode = proc.wait()
    for t in pumps:
        # A worker orphaned by a crash could hold the pipe open forever: do not wait for it.
        t.join(timeout=5)
    return returncode if returncode >= 0 else 128 - returncode


def main() -> int:
    try:
        config = Config.from_env(os.environ)
        plan = config.pool_plan()
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        return 2
    mask = Masker(config.secrets())
    if plan.workers < config.workers:
        log(
            f"only {plan.workers} of {config.workers} workers fit the database connection budget "
            f"({plan.budget} connections over {config.max_instances} instances); running {plan.workers}"
        )
    log(
        f"database {config.db_name} (auth: {config.auth_db_name}) as {config.db_user} via {config.socket_dir}; "
        f"artifacts {config.artifacts_destination}; {'hypercorn, HTTP/1.1 + h2c' if config.http2 else 'uvicorn'}; "
        f"{plan.workers} workers, pools {plan.pool_size}+{plan.max_overflow} per engine, at most "
        f"{plan.per_instance} connections per instance ({plan.budget} for {config.max_instances} instances)"
    )
    if config.auth_mode == AUTH_IAP:
        log(
            f"sign-in through IAP only: audience {config.iap_audience}, keys from {config.iap_certs_url}, "
            f"MLflow admins: {', '.join(config.iap_admins) or 'none'}"
        )
    private_dir = Path(tempfile.mkdtemp(prefix="mlflow-gcp-"))  # 0700
    try:
        try:
            ini = auth_ini(
                database_uri=config.auth_uri,
                admin_username=config.admin_username,
                admin_password=config.admin_password,
                default_permission=config.default_permission,
                auth_cache_ttl_seconds=config.auth_cache_ttl,
                authorization_function=config.authorization_function,
            )
        except ConfigError as exc:
            log(f"configuration error: {exc}")
            return 2
        ini_path = write_private_file(private_dir, "basic_auth.ini", ini)
        env = server_env(os.environ, config, plan, ini_path)
        argv = [sys.executable, os.path.abspath(__file__), "serve", *server_args(config, plan.workers)]
        return supervise(argv, env, mask)
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        # The serve process (see the docstring): its code is mlflow_gcp_serve.py, next to this file.
        from mlflow_gcp_serve import serve

        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
