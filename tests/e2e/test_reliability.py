"""Reliability, proven with the emulator's fault injection: a kill after any mutating request, transient errors
with eventual consistency, stale locks, bad credentials, and arbitrary input.

The default run takes a seeded sample of kill points and fault seeds; `pytest -m slow` runs the full sweeps."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlflow_gcp.errors import ExitCode
from mlflow_gcp.state import LocalBackend, state_key
from tests.e2e.conftest import REPO, Cli, kill_after, make_cli
from tests.e2e.snapshot import snapshot

FAULT_APIS = [
    "serviceusage",
    "resourcemanager",
    "secretmanager",
    "iam",
    "artifactregistry",
    "sqladmin",
    "storage",
    "run",
]
SEED = 20261127


def _mutations(admin, since: int) -> list[str]:
    return [f"{e['method']} {e['path']}" for e in admin.requests(since) if e["mutating"]]


@pytest.fixture(scope="module")
def baseline(emulator, tmp_path_factory) -> dict[str, Any]:
    """One uninterrupted cold `up`: how many mutating requests it makes, and the end state every other run must
    reach."""
    from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin

    admin = EmulatorAdmin(emulator.base_url)
    cli = make_cli(emulator, tmp_path_factory.mktemp("baseline"))
    start = len(admin.requests())
    cli("up")
    up_requests = _mutations(admin, start)
    state = snapshot(Clients(emulator.base_url), cli.project)
    start = len(admin.requests())
    cli("down", "--delete-data", "--yes")
    down_mutations = len(_mutations(admin, start))
    empty = snapshot(Clients(emulator.base_url), cli.project)
    # The Cloud Run service create: a kill there leaves a rollout going on that the next run must wait out.
    deploy = next(k for k, r in enumerate(up_requests, 1) if r.startswith("POST /run/v2/"))
    return {"up": len(up_requests), "deploy": deploy, "down": down_mutations, "state": state, "empty": empty}


def _every(n: int) -> list[int]:
    """Every kill point 1..n, or only those listed in MLFLOW_GCP_KILL_POINTS (e.g. "26,27") to re-run a few."""
    chosen = os.environ.get("MLFLOW_GCP_KILL_POINTS")
    return [int(k) for k in chosen.split(",")] if chosen else list(range(1, n + 1))


def _sample(n: int, size: int, *always: int) -> list[int]:
    """The first and last kill points, those given, and seeded random others: ``size`` in all."""
    chosen = {1, n, *always}
    rest = [k for k in range(1, n + 1) if k not in chosen]
    return sorted(chosen | set(random.Random(SEED).sample(rest, max(0, min(len(rest), size - len(chosen))))))


def _up_kill_sweep(baseline, emulator, admin, clients, tmp_path_factory, points: list[int]) -> None:
    slowest = 0.0
    for k in points:
        cli = make_cli(emulator, tmp_path_factory.mktemp(f"kill{k}"))
        kill_after(cli, admin, k, "up")
        started = time.monotonic()
        cli("up", "--break-lock")
        slowest = max(slowest, time.monotonic() - started)
        assert snapshot(clients, cli.project) == baseline["state"], f"kill point {k}"
        assert cli("status").code == 0, f"kill point {k}"
        print(f"  up kill point {k}: converged, recovery {time.monotonic() - started:.1f}s", flush=True)
        cli("down", "--delete-data", "--yes")
    print(f"\nup kill points {points} of {baseline['up']}; slowest recovery {slowest:.1f}s")


def test_up_converges_after_a_kill_at_sampled_mutations(baseline, emulator, admin, clients, tmp_path_factory):
    _up_kill_sweep(baseline, emulator, admin, clients, tmp_path_factory, _sample(baseline["up"], 4, baseline["deploy"]))


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_up_converges_after_a_kill_at_every_mutation(baseline, emulator, admin, clients, tmp_path_factory):
    _up_kill_sweep(baseline, emulator, admin, clients, tmp_path_factory, _every(baseline["up"]))


def _down_kill_sweep(baseline, emulator, admin, clients, tmp_path_factory, points: list[int]) -> None:
    for k in points:
        cli = make_cli(emulator, tmp_path_factory.mktemp(f"downkill{k}"))
        cli("up")
        kill_after(cli, admin, k, "down", "--delete-data", "--yes")
        started = time.monotonic()
        cli("down", "--delete-data", "--yes", "--break-lock")
        assert snapshot(clients, cli.project) == baseline["empty"], f"down kill point {k}"
        print(f"  down kill point {k}: converged, recovery {time.monotonic() - started:.1f}s", flush=True)
    print(f"\ndown kill points {points} of {baseline['down']}")


def test_down_converges_after_a_kill_at_sampled_mutations(baseline, emulator, admin, clients, tmp_path_factory):
    _down_kill_sweep(baseline, emulator, admin, clients, tmp_path_factory, _sample(baseline["down"], 2))


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_down_converges_after_a_kill_at_every_mutation(baseline, emulator, admin, clients, tmp_path_factory):
    _down_kill_sweep(baseline, emulator, admin, clients, tmp_path_factory, _every(baseline["down"]))


def _fault_runs(baseline, emulator, admin, clients, tmp_path_factory, seeds: list[int]) -> None:
    for seed in seeds:
        cli = make_cli(emulator, tmp_path_factory.mktemp(f"faults{seed}"))
        admin.settings(
            fault_rate=0.2, fault_codes=[429, 503], fault_seed=seed, fault_apis=FAULT_APIS,
            consistency=True, service_account_invisible_seconds=2, service_enable_seconds=2,
            policy_conflict_rate=0.3,
        )  # fmt: skip
        start = len(admin.requests())
        try:
            cli("up")
        finally:
            admin.settings(fault_rate=0, consistency=False, policy_conflict_rate=0)
        injected = sum(e["status"] in (429, 503) for e in admin.requests(start))
        assert injected > 0, f"seed {seed}: no fault was injected"
        assert snapshot(clients, cli.project) == baseline["state"], f"seed {seed}"
        cli("down", "--delete-data", "--yes")
    print(f"\nfault seeds {seeds} all converged")


def test_up_survives_transient_errors_and_eventual_consistency(baseline, emulator, admin, clients, tmp_path_factory):
    _fault_runs(baseline, emulator, admin, clients, tmp_path_factory, [1, 2])


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_twenty_seeded_runs_with_faults(baseline, emulator, admin, clients, tmp_path_factory):
    _fault_runs(baseline, emulator, admin, clients, tmp_path_factory, list(range(1, 21)))


def _gs(cli: Cli, state: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with its state at a gs:// URL (``Cli`` always passes a local directory)."""
    import sys

    argv = [sys.executable, "-m", "mlflow_gcp", *args, "--local", "--project", cli.project, "--state", state]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env, timeout=900, cwd=REPO)
    cli.transcript += [proc.stdout, proc.stderr]
    return proc


def _gcs_state_fault_runs(baseline, emulator, admin, clients, tmp_path_factory, seeds: list[int]) -> None:
    """20% faults on every Google API the emulator serves (the Docker Engine is not one), Cloud Storage included,
    with the state and its lock kept in Cloud Storage: `up`, `status` and `down` all succeed under them."""
    from mlflow_gcp.emulator.server import API_MODULES

    apis = sorted(a for a in API_MODULES if a != "docker")
    codes = [429, 500, 502, 503, 504]
    for seed in seeds:
        cli = make_cli(emulator, tmp_path_factory.mktemp(f"gcsfaults{seed}"))
        # The state bucket lives in a project of its own, so the stack's project compares with the baseline.
        holder = f"st-{cli.project}"
        admin.add_project(holder)
        bucket = clients.storage(holder).create_bucket(f"{holder}-state")
        state = f"gs://{bucket.name}/mlflow-gcp"
        faults = dict(
            fault_rate=0.2, fault_codes=codes, fault_seed=seed, fault_apis=apis, fault_methods=[],
            consistency=True, service_account_invisible_seconds=2, service_enable_seconds=2,
            policy_conflict_rate=0.3,
        )  # fmt: skip
        calm = dict(fault_rate=0, consistency=False, policy_conflict_rate=0)
        start = len(admin.requests())
        started = time.monotonic()
        try:
            admin.settings(**faults)
            up = _gs(cli, state, "up")
            assert up.returncode == 0, f"seed {seed}: up exited {up.returncode}:\n{up.stderr}"
            admin.settings(**calm)  # the test's own reads are not under test
            assert snapshot(clients, cli.project) == baseline["state"], f"seed {seed}"
            admin.settings(**{**faults, "fault_seed": seed + 1})
            status = _gs(cli, state, "status")
            assert status.returncode == 0, f"seed {seed}: status exited {status.returncode}:\n{status.stderr}"
            down = _gs(cli, state, "down", "--delete-data", "--yes")
            assert down.returncode == 0, f"seed {seed}: down exited {down.returncode}:\n{down.stderr}"
        finally:
            admin.settings(**calm)
        log = admin.requests(start)
        faulted = [e for e in log if e["status"] in codes and e["api"]]
        hit = {e["api"] for e in faulted}
        assert "storage" in hit and len(hit) >= 4, f"seed {seed}: faults hit only {sorted(hit)}"
        on_state = [e for e in faulted if f"/b/{bucket.name}/o" in e["path"]]
        assert on_state, f"seed {seed}: no fault hit the state or its lock"
        assert snapshot(clients, cli.project) == baseline["empty"], f"seed {seed}"
        left = sorted(b.name for b in bucket.list_blobs())
        assert not [n for n in left if n.endswith(".lock")], f"seed {seed}: a lock was left: {left}"
        assert "Traceback" not in "".join(cli.transcript)
        print(
            f"  seed {seed}: {len(faulted)} faults injected ({len(on_state)} on the state), converged in "
            f"{time.monotonic() - started:.1f}s",
            flush=True,
        )
    print(f"\nfault seeds {seeds} with the state in Cloud Storage all converged")


def test_a_run_with_faults_on_every_api_and_the_state_in_gcs_converges(
    baseline, emulator, admin, clients, tmp_path_factory
):
    _gcs_state_fault_runs(baseline, emulator, admin, clients, tmp_path_factory, [SEED % 1000])


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_seeded_runs_with_faults_on_every_api_and_the_state_in_gcs(
    baseline, emulator, admin, clients, tmp_path_factory
):
    _gcs_state_fault_runs(baseline, emulator, admin, clients, tmp_path_factory, list(range(1, 9)))


# --- locks ---------------------------------------------------------------------------------------------------


def test_a_stale_lock_is_reported_and_broken_only_on_request(cli: Cli):
    backend = LocalBackend(cli.state_dir, state_key(cli.project, "mlflow", "dev"))
    import socket

    backend.acquire({"who": f"someone@{socket.gethostname()}", "pid": 2**22 + 12345, "since": "then", "command": "up"})
    refused = cli("up", "--dry-run", check=False)
    assert refused.code == ExitCode.OK  # a dry run takes no lock
    refused = cli("up", check=False)
    assert refused.code == ExitCode.LOCKED and "stale" in refused.stderr and "--break-lock" in refused.stderr
    broken = cli("up", "--break-lock", "--dry-run")
    assert "Broke the lock" in broken.stderr
    assert not backend.lock_path.exists()


def test_up_and_down_on_one_environment_never_interleave(cli: Cli, admin):
    admin.settings(latency_profile="realistic", time_scale=0.01)
    try:
        first = cli.popen("up")
        deadline = time.monotonic() + 60
        while not list(cli.state_dir.glob("*.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = cli("down", "--yes", check=False)
        assert second.code == ExitCode.LOCKED and "up by" in second.stderr
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    finally:
        admin.settings(latency_profile="instant")


# --- credentials -----------------------------------------------------------------------------------------------


def _gcp_cli(cli: Cli, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", *args, "--project", "real-project-123", "--state", str(cli.state_dir)],
        capture_output=True, text=True, env={**cli.env, **env, "NO_GCE_CHECK": "True"}, timeout=120,
    )  # fmt: skip


def test_missing_credentials_say_how_to_log_in(cli: Cli, tmp_path: Path):
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "nope.json"), "CLOUDSDK_CONFIG": str(tmp_path)}
    result = _gcp_cli(cli, "status", env=env)
    assert result.returncode == ExitCode.CREDENTIALS, result.stderr
    assert "gcloud auth application-default login" in result.stderr and "Traceback" not in result.stderr


class _RevokedTokenEndpoint(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_expired_credentials_say_how_to_log_in_again(cli: Cli, tmp_path: Path):
    server = HTTPServer(("127.0.0.1", 0), _RevokedTokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    # A key whose account was deleted (or a revoked grant): the token endpoint answers invalid_grant.
    creds = {
        "type": "service_account",
        "project_id": "real-project-123",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "gone@real-project-123.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://127.0.0.1:{server.server_port}/token",
    }
    (tmp_path / "adc.json").write_text(json.dumps(creds))
    try:
        result = _gcp_cli(cli, "status", env={"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "adc.json")})
    finally:
        server.shutdown()
    assert result.returncode == ExitCode.CREDENTIALS, result.stderr
    assert "could not be refreshed" in result.stderr and "login" in result.stderr
