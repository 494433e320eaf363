"""Cloud Run Admin API v2, where a revision runs for real.

Services, revisions, their long-running operations and IAM policies are served as Cloud Run serves them
(``run/services.py``, with the work behind the handlers in the modules it names). Deploying a revision
starts it as a host process (``run/revisions.py``), and each service gets its own front end on a local port
(``run/frontend.py``); its ``uri`` is ``http://127.0.0.1:<port>``, allocated once and kept across updates
and emulator restarts.

How a revision maps to the host (see also ``core/images.py``):

- The image must exist in Artifact Registry; the revision runs ``ENTRYPOINT``/``CMD`` (or the container's
  ``command``/``args``) from the image's unpacked files, in ``rootfs/WORKDIR``. The tag is resolved to a
  digest when the revision first starts, and later starts (restarts, emulator restarts) use that digest.
  Google's public sample ``gcr.io/cloudrun/hello``, which GCP deploys for anyone, runs a built-in stand-in
  (``run/hello.py``) that serves its "It's running!" page.
- Environment: the image's ENV, the host's ``PATH`` (with the emulator's Python first, so ``python`` and
  ``mlflow`` resolve to its virtualenv), ``HOME`` and ``LANG``, then the container's ``env`` (secrets are
  read from Secret Manager when the instance starts; the deploy fails as on Cloud Run when the runtime
  service account may not access one), then ``PORT``, ``K_SERVICE``, ``K_REVISION``, ``K_CONFIGURATION``.
  ``PORT`` is a free host port, not the container port: every revision needs its own.
- Cloud SQL volumes — the one seam: a process cannot see ``/cloudsql``, so the emulator sets
  ``MLFLOW_GCP_CLOUDSQL_DIR`` to a host directory that stands for the volume's mount path (the server
  entrypoint reads it, defaulting to ``/cloudsql``). The directory holds one symlink per mounted instance,
  named by connection name and pointing at that instance's socket directory, while the runtime service
  account holds ``roles/cloudsql.client`` on the instance's project and the Cloud SQL Admin API is
  enabled there (re-checked every second); otherwise it is empty, as the Cloud SQL proxy would not connect.
  Several Cloud SQL volumes share the one directory.
- Google APIs — the second seam: on Cloud Run the container calls Google's APIs with its runtime account's
  token from the metadata server; here ``STORAGE_EMULATOR_HOST`` points google-cloud-storage (and so MLflow's
  GCS artifact repository) at the emulator. It does not check the runtime account's bucket permissions.
- IAP's keys — the third seam: on GCP the server fetches Google's real keys to verify IAP's signed header
  (https://www.gstatic.com/iap/verify/public_key); here ``MLFLOW_GCP_IAP_CERTS_URL`` points at the emulator's
  ``/_emulator/iap/verify/public_key``, whose key signs the assertions the emulated IAP adds.
- Logs: each line a revision's process writes to stdout or stderr is a Cloud Logging entry as Cloud Run
  writes it (``run.googleapis.com/stdout``/``stderr`` on a ``cloud_run_revision`` resource, structured JSON lines
  parsed; ``run/logs.py``), and Cloud Run's own lines about an instance go to ``varlog/system``; the revision's
  ``logUri`` is a text file of all of them.
- Other volumes (secrets, emptyDir, GCS, NFS) are recorded, not mounted; sidecar containers are recorded,
  not run.
- One process stands for all of a revision's instances: scaling limits (min/max instances,
  concurrency) and resource limits are recorded, not emulated. A serving instance that exits is started
  again, backing off while it keeps failing.
- A deploy's operation completes once the new revision passes its startup probe (Cloud Run's default TCP
  probe, or the configured HTTP/TCP one with its delays, period, timeout and threshold). Only then does
  traffic move; the revisions left without traffic finish their in-flight requests, get SIGTERM and,
  10 s later, SIGKILL. A revision that fails leaves traffic where it was and the operation ends with
  Cloud Run's error.
- Callers need ``roles/run.invoker`` (``allUsers`` for public services) unless the service sets
  ``invokerIamDisabled``; for that check an identity token is trusted without checking its signature.
- With ``iapEnabled``, Identity-Aware Proxy stands in front instead (``run/iapgate.py``): it verifies the
  caller's ID token against the emulator's Google key (``core/identity.py``), checks the audience against the
  IAP settings and the principal against the IAP resource's policy (``apis/iap.py``), requires IAP's service
  agent to hold ``roles/run.invoker``, and forwards with IAP's identity headers and signed assertion.
- No process outlives the emulator: processes are stopped on shutdown and reset, are asked to get SIGTERM
  if the emulator dies, and are reaped by the next emulator on the same data directory otherwise.

``/_emulator/run/stats?service=<full name>`` reports the front end's request counts by status;
``/_emulator/run/processes`` lists the running revision processes.
"""

from .cloudsql import CLOUDSQL_DIR_ENV
from .services import CloudRunApi

__all__ = ["CLOUDSQL_DIR_ENV", "CloudRunApi"]
