"""Running a Cloud Run revision as a host process: launching, the startup probe, draining and stopping.

One process stands for the revision's instances (see the package docstring). Processes are launched from
one long-lived thread through a tiny launcher that asks Linux to SIGTERM the process when the emulator
dies (``PR_SET_PDEATHSIG`` is tied to the *thread* that forked, hence the dedicated thread); every process
leads its own process group, so stopping it also stops the workers it forked. Their pids are recorded so
an emulator restarted after a crash can reap what the previous one left behind. Their stdout and stderr are
pipes read by the revision's log (``logs.py``): Cloud Run tells the two streams apart in Cloud Logging.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logs import RevisionLog

#: Seconds between SIGTERM and SIGKILL, as Cloud Run gives a container on shutdown.
GRACE_SECONDS = 10.0

# Run by the venv's Python in front of the container's command: ask for SIGTERM when the emulator dies,
# make sure it has not died already, then become the command (argv[2:]).
_LAUNCHER = """
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f'Application failed to start: failed to load {sys.argv[2]}: {exc.strerror}', file=sys.stderr, flush=True)
    os._exit(127)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def reap_orphan(pid: int, start_time: str | None) -> None:
    """Kill the process group a previous emulator left running, if ``pid`` is still that process."""
    if start_time is None or process_start_time(pid) != start_time:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Spawner:
    """Launches every revision process from one thread that lives as long as the emulator."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[dict[str, Any], Future[subprocess.Popen[bytes]]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        """Start ``argv``; its stdout and stderr are pipes, for the revision's log (see ``logs.py``) to read."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="run-spawner", daemon=True)
                self._thread.start()
        fut: Future[subprocess.Popen[bytes]] = Future()
        self._queue.put(({"argv": argv, "env": env, "cwd": cwd}, fut))
        return fut.result()

    def _run(self) -> None:
        while True:
            job, fut = self._queue.get()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *job["argv"]],
                    env=job["env"],
                    cwd=job["cwd"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                fut.set_result(proc)
            except BaseException as exc:  # handed to the caller, which fails the revision
                fut.set_exception(exc)


@dataclass
class Probe:
    """A startup probe as Cloud Run runs it; ``port`` is already the host port."""

    kind: str  # "tcp" | "http"
    port: int
    path: str = "/"
    headers: list[tuple[str, str]] = field(default_factory=list)
    initial_delay: float = 0.0
    timeout: float = 1.0
    period: float = 10.0
    failure_threshold: int = 3
    default: bool = False  # Cloud Run's own TCP probe, not one the user configured


class RevisionProcess:
    """The running process of one revision, with the in-flight request count the front end keeps."""

    def __init__(
        self,
        revision: str,
        proc: subprocess.Popen[bytes],
        *,
        port: int,
        container_port: int,
        h2c: bool,
        log: RevisionLog,
        cloudsql_dir: Path | None,
    ) -> None:
        self.revision = revision  # full resource name
        self.proc = proc
        self.port = port
        self.container_port = container_port
        self.h2c = h2c
        #: Where its output goes: the text file ``log.path`` and Cloud Logging.
        self.log = log
        self.cloudsql_dir = cloudsql_dir
        self.ready = False
        #: The revision's request timeout (``template.timeout``), which the front end applies.
        self.request_timeout = 300.0
        #: Cloud SQL connection names the revision mounts, and the member its runtime account is.
        self.cloudsql_instances: list[str] = []
        self.member = ""
        #: Set once the emulator decided to stop it, so an exit is not taken for a crash.
        self.stopping = False
        self._inflight = 0
        self._cond = threading.Condition()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log.path

    def system_log(self, line: str, severity: str = "INFO") -> None:
        """A line in the revision's log as Cloud Run's own (varlog/system) entries read."""
        self.log.system(line, severity)

    # --- requests in flight -----------------------------------------------------------------------

    def acquire(self) -> None:
        with self._cond:
            self._inflight += 1

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def drain(self, timeout: float) -> None:
        """Wait until no request is in flight (Cloud Run lets an instance finish its requests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight > 0 and time.monotonic() < deadline:
                self._cond.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))

    # --- probing ----------------------------------------------------------------------------------

    def wait_ready(self, probe: Probe, cancelled: Callable[[], bool]) -> str | None:
        """Run the startup probe; None when the instance started, else why it did not
        ("exit" or "probe")."""
        if not self._sleep(probe.initial_delay, cancelled):
            return "exit"
        failures = 0
        while True:
            started = time.monotonic()
            ok = self._attempt(probe, cancelled)
            if not self.alive() or cancelled():
                return "exit"
            if ok:
                self.ready = True
                return None
            failures += 1
            if failures >= probe.failure_threshold:
                return "probe"
            if not self._sleep(probe.period - (time.monotonic() - started), cancelled):
                return "exit"

    def _sleep(self, seconds: float, cancelled: Callable[[], bool]) -> bool:
        """Sleep, but give up as soon as the process exits; False if it did."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            if not self.alive() or cancelled():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(0.05, left))

    def _attempt(self, probe: Probe, cancelled: Callable[[], bool]) -> bool:
        if probe.kind == "tcp":
            # A TCP probe waits for the port to open within its timeout.
            deadline = time.monotonic() + probe.timeout
            while time.monotonic() < deadline and self.alive() and not cancelled():
                try:
                    with socket.create_connection(("127.0.0.1", probe.port), timeout=1.0):
                        return True
                except OSError:
                    time.sleep(0.05)
            return False
        conn = http.client.HTTPConnection("127.0.0.1", probe.port, timeout=probe.timeout)
        try:
            conn.putrequest("GET", probe.path or "/", skip_accept_encoding=True)
            for k, v in probe.headers:
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            resp.read()
            return 200 <= resp.status < 400
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    # --- stopping ---------------------------------------------------------------------------------

    def stop(self, drain_timeout: float = 0.0, grace: float = GRACE_SECONDS) -> None:
        """Drain, SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        self.stopping = True
        if drain_timeout > 0:
            self.drain(drain_timeout)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # The group may outlive its leader (workers it forked); finish them all.
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


def stop_all(procs: list[RevisionProcess], grace: float = GRACE_SECONDS) -> None:
    """Stop many processes at once: SIGTERM them all, then SIGKILL whatever is left after ``grace``."""
    for p in procs:
        p.stopping = True
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        p.signal(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(timeout=5)


def sync_links(directory: Path, wanted: dict[str, str]) -> None:
    """Make ``directory`` hold exactly the symlinks ``name -> target`` in ``wanted``."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.name not in wanted or not entry.is_symlink() or os.readlink(entry) != wanted[entry.name]:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    for name, target in wanted.items():
        link = directory / name
        if not link.is_symlink():
            tmp = directory / f".{name}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(target)
            os.replace(tmp, link)
