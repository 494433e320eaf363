"""The watchdog: once a second, restart serving instances that died (backing off while they keep dying)
and re-check each revision's Cloud SQL links."""

from __future__ import annotations

import threading
import time
import traceback

from .common import (
    SERVICE_KIND,
    _Cancelled,
    _exit_line,
)


class Watchdog:
    """The background thread of :class:`CloudRunApi`."""

    # --- the watchdog: crashed instances and Cloud SQL links --------------------------------------

    def _ensure_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None or not self._watchdog.is_alive():
                self._stop.clear()
                self._watchdog = threading.Thread(target=self._watch, name="run-watchdog", daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._tick()
            except Exception:  # the watchdog must outlive any one bad tick
                traceback.print_exc()

    def _tick(self) -> None:
        epoch = self._epoch
        with self._lock:
            procs = list(self._procs.items())
        now = time.monotonic()
        for revision, proc in procs:
            if proc.stopping:
                continue
            if proc.ready and not proc.alive():
                # A serving instance died: Cloud Run starts another one, backing off while it keeps dying.
                proc.system_log(_exit_line(proc.proc.returncode), "ERROR")
                with self._lock:
                    if self._procs.get(revision) is proc:
                        del self._procs[revision]
                    failures, _ = self._restarts.get(revision, (0, 0.0))
                    self._restarts[revision] = (failures, now + min(30.0, 2.0**failures))
                continue
            self._sync_cloudsql(proc)
        with self._lock:
            due = [r for r, (_, when) in self._restarts.items() if when <= now]
        for revision in due:
            service = revision.rsplit("/revisions/", 1)[0]
            lock = self._service_lock(service)
            if not lock.acquire(blocking=False):
                continue
            try:
                if self.world.store.get(SERVICE_KIND, service) is None:
                    with self._lock:
                        self._restarts.pop(revision, None)
                    continue
                error = self._route(service, epoch)
                with self._lock:
                    if error and revision not in self._procs:
                        failures, _ = self._restarts.get(revision, (0, 0.0))
                        self._restarts[revision] = (failures + 1, time.monotonic() + min(30.0, 2.0 ** (failures + 1)))
                    else:
                        self._restarts.pop(revision, None)
            except _Cancelled:
                return
            finally:
                lock.release()
