"""Does Cloud Logging slow a Cloud Run revision down in the emulator? A revision writes N lines to stdout as fast as
it can, then serves; the same program writing them straight to a file is the baseline. Prints how long the writing
took inside the revision, how long after its deploy the last line was in Cloud Logging, and an ``entries.list`` of
the service's last 20 entries.

.venv/bin/python benchmarks/run_logs.py [-n 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from google.cloud import artifactregistry_v1, run_v2

from mlflow_gcp.emulator.core.images import ImageRecord
from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin, enable_services

REGION = "us-central1"
WRITER = r"""
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

n = int(os.environ["LINES"])
out = open(os.environ["TO_FILE"], "w") if os.environ.get("TO_FILE") else sys.stdout
started = time.monotonic()
for i in range(n):
    out.write(f"line {i:07d} " + "x" * 87 + "\n")
out.flush()
print(f"wrote {n} lines in {time.monotonic() - started:.3f} s", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000, help="lines to write")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="mgl-", dir="/tmp"))
    emulator = Emulator(data).start()
    try:
        clients = Clients(emulator.base_url)
        project = f"bench-{uuid.uuid4().hex[:8]}"
        EmulatorAdmin(emulator.base_url).add_project(project)
        enable_services(clients, project, "artifactregistry.googleapis.com", "run.googleapis.com")
        clients.artifact_registry().create_repository(
            parent=f"projects/{project}/locations/{REGION}",
            repository_id="apps",
            repository=artifactregistry_v1.Repository(format_=artifactregistry_v1.Repository.Format.DOCKER),
        ).result(timeout=60)
        rootfs = data / "image"
        (rootfs / "app").mkdir(parents=True)
        (rootfs / "app" / "writer.py").write_text(WRITER)
        uri = f"{REGION}-docker.pkg.dev/{project}/apps/writer:v1"
        record = ImageRecord(
            uri=uri,
            digest="sha256:" + hashlib.sha256(WRITER.encode()).hexdigest(),
            rootfs=rootfs,
            entrypoint=["python", "/app/writer.py"],
            env={},
            workdir="/app",
        )
        emulator.world.api("artifactregistry").register_image(record, ["v1"])
        logging = clients._discovery("logging", "v2", "logging")
        for sid, to_file in (("to-file", str(data / "direct.log")), ("to-stdout", "")):
            env = [run_v2.EnvVar(name="LINES", value=str(args.n)), run_v2.EnvVar(name="TO_FILE", value=to_file)]
            service = run_v2.Service(
                template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=uri, env=env)]),
                invoker_iam_disabled=True,
            )
            done = (
                clients.run_services()
                .create_service(parent=f"projects/{project}/locations/{REGION}", service=service, service_id=sid)
                .result(timeout=600)
            )
            deployed = time.monotonic()
            query = f'resource.type="cloud_run_revision" AND resource.labels.service_name="{sid}"'
            last = f'{query} AND textPayload:"wrote {args.n} lines"'
            body = {"resourceNames": [f"projects/{project}"], "filter": last}
            while not logging.entries().list(body=body).execute().get("entries"):
                time.sleep(0.05)
            in_logging = time.monotonic() - deployed
            started = time.perf_counter()
            tail = {"resourceNames": [f"projects/{project}"], "filter": query, "orderBy": "timestamp desc"}
            logging.entries().list(body={**tail, "pageSize": 20}).execute()
            listed = time.perf_counter() - started
            log = (data / "run" / project / sid / f"{done.latest_ready_revision.rsplit('/', 1)[1]}.log").read_text()
            wrote = next(line for line in log.splitlines() if line.startswith("wrote "))
            print(f"{sid:>9}: {wrote}; in Cloud Logging {in_logging:.2f} s after the deploy; last 20 entries listed "
                  f"in {listed * 1000:.0f} ms")  # fmt: skip
    finally:
        emulator.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
