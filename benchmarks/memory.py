"""Memory of the server at idle and while MLflow's own client uploads a 150 MB artifact (``mlflow.log_artifact``,
credentials as ``mlflow-gcp env`` hands them out), ours through the Cloud Run front end and the stock server, and
where the upload's body goes on its way.

A sampler reads /proc every ``PERIOD`` seconds: the resident set (VmRSS) and the proportional set (Pss, which splits
the pages forked workers share) summed over the server's whole process tree, and every regular file the tree has
open for writing (/proc/PID/fdinfo flags) with its size. A file in a directory MLflow made with
``tempfile.TemporaryDirectory()`` under the server's temp dir (``$TMPDIR``, else /tmp) is the body spooled to disk:
MLflow's artifact route writes the request to such a file before handing it to an artifact repository that cannot
take a stream (``mlflow/server/artifact_router.py``, ``upload_artifact``; the GCS repository cannot).

Where that counts: on Cloud Run the container's file system is in memory, so what is written to /tmp counts
against the instance's memory limit (https://cloud.google.com/run/docs/container-contract#filesystem; and
https://cloud.google.com/run/docs/configuring/services/in-memory-volume-mounts: "your in-memory volume consumes the
memory you configured for your containers"). The emulator runs a revision on the host, where /tmp is whatever the
host mounts there (reported: the spool file's file system type). So the memory an upload needs on Cloud Run is its
RSS growth plus the bytes it spooled, and that sum over the artifact's size is the figure here.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from figures import process_tree, progress, spread
from targets import Target

PERIOD = 0.05
IDLE_SECONDS = 3.0
ARTIFACT_BYTES = 150_000_000
CLIENT = """
import sys, mlflow
mlflow.set_experiment(sys.argv[2])
with mlflow.start_run():
    mlflow.log_artifact(sys.argv[1])
"""


def _kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _temp_dir(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "/tmp"
    for item in environ:
        if item.startswith(b"TMPDIR="):
            return item[7:].decode() or "/tmp"
    return "/tmp"


def file_system(path: str) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it in /proc/mounts)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype = line.split()[:3]
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


class Sampler(threading.Thread):
    """Samples a process tree until stopped: ``samples`` of (time, RSS bytes, PSS bytes), and the largest size seen
    of each file the tree held open for writing, with the time it was last seen."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.samples: list[tuple[float, int, int]] = []
        self.written: dict[str, int] = {}
        self.temp_dirs: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = pss = 0
            for pid in process_tree(self.root):
                rss += _kib(f"/proc/{pid}/status", "VmRSS:")
                pss += _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
                self.temp_dirs.add(_temp_dir(pid))
                self._files(pid)
            for path in self.written:  # a spool file is closed once written, then read back: its final size
                try:
                    self.written[path] = max(self.written[path], os.stat(path).st_size)
                except OSError:
                    pass
            self.samples.append((time.monotonic(), rss * 1024, pss * 1024))
            self._halt.wait(PERIOD)

    def _files(self, pid: int) -> None:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not target.startswith("/") or target.startswith(("/dev/", "/proc/")):
                    continue
                flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    continue
                size = os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except (OSError, IndexError, ValueError):
                continue
            path = target.removesuffix(" (deleted)")
            self.written[path] = max(size, self.written.get(path, 0))

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def window(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]

    def spooled(self) -> dict[str, int]:
        """Files written in a ``tempfile.TemporaryDirectory()`` (``<temp dir>/tmpXXXXXXXX/``) of the server."""
        pattern = re.compile("|".join(rf"^{re.escape(d.rstrip('/'))}/tmp[^/]+/" for d in self.temp_dirs or {"/tmp"}))
        return {p: size for p, size in self.written.items() if pattern.match(p)}


def upload_once(target: Target, root: Callable[[], int], artifact: Path) -> dict[str, Any]:
    pid = root()
    processes = len(process_tree(pid))
    sampler = Sampler(pid)
    sampler.start()
    try:
        time.sleep(IDLE_SECONDS)
        began = time.monotonic()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **target.client_env()}
        proc = subprocess.run([sys.executable, "-c", CLIENT, str(artifact), target.experiment], env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        ended = time.monotonic()
        time.sleep(4 * PERIOD)
    finally:
        sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{target.name}: log_artifact failed:\n{proc.stderr[-3000:]}")
    idle = sampler.window(began - IDLE_SECONDS, began)
    busy = sampler.window(began, ended + 4 * PERIOD)
    spooled = sampler.spooled()
    spool_path = max(spooled, key=spooled.__getitem__, default="")
    idle_rss = statistics.median(s[1] for s in idle)
    peak_rss = max(s[1] for s in busy)
    return {
        "idle_rss": idle_rss,
        "idle_pss": statistics.median(s[2] for s in idle),
        "peak_rss": peak_rss,
        "peak_pss": max(s[2] for s in busy),
        "rss_delta": peak_rss - idle_rss,
        "spooled_bytes": spooled.get(spool_path, 0),
        "spool_dir": str(Path(spool_path).parent.parent) if spool_path else "",
        "spool_fs": file_system(spool_path) if spool_path else "",
        "upload_s": ended - began,
        "processes": processes,
    }


def measure(ours: Target, ours_root: Callable[[], int], stock: Target, stock_root: Callable[[], int],
            repeats: int) -> dict[str, Any]:  # fmt: skip
    """Per server: idle and peak RSS/PSS (bytes), the RSS growth during the upload, the bytes spooled to a temp
    file and where; ``cloud_run_bytes``: RSS growth + spooled bytes, what the upload adds to an instance's memory on
    Cloud Run (ours; the stock server's local artifact store writes the file where it stays)."""
    with tempfile.TemporaryDirectory(prefix="mgm-") as tmp:
        artifact = Path(tmp) / "artifact.bin"
        with artifact.open("wb") as f:
            for _ in range(ARTIFACT_BYTES // 10**6):
                f.write(os.urandom(10**6))
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "stock": []}
        for i in range(repeats):
            progress(f"memory: {ARTIFACT_BYTES / 1e6:.0f} MB upload {i + 1}/{repeats} to each server")
            pairs = [(ours, ours_root), (stock, stock_root)]
            for target, root in pairs if i % 2 == 0 else pairs[::-1]:
                runs[target.name].append(upload_once(target, root, artifact))
    out: dict[str, Any] = {"artifact_bytes": ARTIFACT_BYTES, "repeats": repeats}
    for name, rs in runs.items():
        figures = ("idle_rss", "idle_pss", "peak_rss", "peak_pss", "rss_delta", "spooled_bytes", "upload_s")
        out[name] = {key: spread([r[key] for r in rs]) for key in figures}
        out[name]["cloud_run_bytes"] = spread([r["rss_delta"] + r["spooled_bytes"] for r in rs])
        out[name]["processes"] = rs[-1]["processes"]
        out[name]["spool_dir"] = rs[-1]["spool_dir"]
        out[name]["spool_fs"] = rs[-1]["spool_fs"]
    return out
