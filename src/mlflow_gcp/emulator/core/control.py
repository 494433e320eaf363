"""The control plane tests drive: latency profiles, fault injection, eventual consistency, kill points,
and the request log."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import GcpError

# Seconds each slow operation takes on real GCP, from Google's docs and public reports; scaled by
# `time_scale` under the `realistic` profile. Keys are "<api>.<operation>".
REALISTIC_SECONDS: dict[str, float] = {
    "request": 0.08,  # a typical control-plane round trip
    "serviceusage.enable": 30.0,  # "can take a few minutes"; usually well under one
    "artifactregistry.repository.create": 8.0,
    "artifactregistry.repository.delete": 8.0,
    "cloudbuild.build": 90.0,
    "docker.push": 20.0,
    "sqladmin.instance.create": 600.0,  # ~10 min typical, 7–25 reported
    "sqladmin.instance.patch": 60.0,
    "sqladmin.instance.delete": 120.0,
    "sqladmin.database": 10.0,
    "sqladmin.user": 8.0,
    # Backups and recovery: no measurement found; a backup and a restore as long as a patch's restart, a clone as
    # long as a create (it makes an instance).
    "sqladmin.backup": 60.0,
    "sqladmin.restore": 60.0,
    "sqladmin.clone": 600.0,
    "run.service.deploy": 45.0,  # on top of the real startup probe; "about a minute" end to end
    "run.service.delete": 10.0,
    "storage.bucket": 0.5,
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_profile: Literal["instant", "realistic"] = "instant"
    time_scale: float = Field(1.0, ge=0)
    #: Extra not-done polls an operation answers after its work finished.
    min_pending_polls: int = Field(0, ge=0)

    fault_rate: float = Field(0.0, ge=0, le=1)
    fault_codes: list[Literal[429, 500, 502, 503, 504]] = [429, 503]
    fault_seed: int = 0
    #: Only these APIs (module names, e.g. "secretmanager") / route names (globs) get faults; empty = all.
    fault_apis: list[str] = []
    fault_methods: list[str] = []

    consistency: bool = False
    service_account_invisible_seconds: float = Field(3.0, ge=0)
    service_enable_seconds: float = Field(3.0, ge=0)
    iam_propagation_seconds: float = Field(0.0, ge=0)
    policy_conflict_rate: float = Field(0.0, ge=0, le=1)

    #: IAM permissions the caller lacks (e.g. "secretmanager.secrets.create"): calls needing one answer 403.
    denied_permissions: list[str] = []

    domain_restricted_sharing: bool = False
    #: Google Groups, for ``group:`` members where the emulator checks access (IAP): group email -> member
    #: emails. The emulator has no Cloud Identity; a group not listed here has no members.
    groups: dict[str, list[str]] = {}
    #: Cloud SQL keeps a deleted instance's name reserved for a week; off lets tests reuse names at once.
    sql_name_reuse_blocked: bool = True
    #: Seconds the emulator's clock runs ahead of the host's, so a test can outlive a retention period GCP does
    #: not let it shorten (Cloud Storage soft delete keeps objects at least 7 days). Cloud Storage reads it (its
    #: timestamps, soft delete's hard-delete times, uniform access's lock); the other APIs keep the host's clock.
    clock_offset_seconds: float = Field(0.0, ge=0)

    kill_after_mutations: int | None = Field(None, ge=1)
    kill_pid: int | None = None
    kill_signal: int = int(signal.SIGKILL)
    kill_action: Literal["kill", "drop"] = "kill"


class Control:
    def __init__(self, log_path: Path | None = None) -> None:
        self.settings = Settings()
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        self._mutations = 0
        self.log: list[dict[str, Any]] = []
        self.log_path = log_path

    def update(self, changes: dict[str, Any]) -> Settings:
        with self._lock:
            merged = {**self.settings.model_dump(), **changes}
            self.settings = Settings.model_validate(merged)
            if "fault_seed" in changes or "fault_rate" in changes:
                self._rng = random.Random(self.settings.fault_seed)
            if "kill_after_mutations" in changes:
                self._mutations = 0
            return self.settings

    def reset(self) -> None:
        with self._lock:
            self.settings = Settings()
            self._rng = random.Random(0)
            self._mutations = 0
            self.log.clear()

    def delay(self, key: str) -> float:
        s = self.settings
        if s.latency_profile != "realistic":
            return 0.0
        return REALISTIC_SECONDS.get(key, 0.0) * s.time_scale

    def roll(self, rate_setting: str) -> bool:
        """A seeded coin flip for an eventual-consistency fault, only while consistency is on."""
        s = self.settings
        rate = getattr(s, rate_setting)
        if not s.consistency or rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def maybe_fault(self, api: str, method: str) -> GcpError | None:
        s = self.settings
        if s.fault_rate <= 0:
            return None
        if s.fault_apis and api not in s.fault_apis:
            return None
        if s.fault_methods and not any(fnmatch(method, pat) for pat in s.fault_methods):
            return None
        with self._lock:
            if self._rng.random() >= s.fault_rate:
                return None
            code = self._rng.choice(s.fault_codes)
        messages = {
            429: ("RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Requests' (injected)."),
            500: ("INTERNAL", "Internal error encountered (injected)."),
            502: ("UNAVAILABLE", "Bad Gateway (injected)."),
            503: ("UNAVAILABLE", "The service is currently unavailable (injected)."),
            504: ("DEADLINE_EXCEEDED", "Deadline exceeded (injected)."),
        }
        status, message = messages[code]
        return GcpError(code, message, status)

    def count_mutation(self) -> tuple[int | None, Literal["kill", "drop"] | None]:
        """Count a mutating request while a kill rule is set: its ordinal since the rule was set, and what to do
        if it is the one the rule names."""
        with self._lock:
            s = self.settings
            if s.kill_after_mutations is None:
                return None, None
            self._mutations += 1
            ordinal = self._mutations
            if ordinal != s.kill_after_mutations:
                return ordinal, None
            action = s.kill_action
            if action == "kill" and s.kill_pid:
                try:
                    os.kill(s.kill_pid, s.kill_signal)
                except ProcessLookupError:
                    pass
            self.settings = Settings.model_validate({**s.model_dump(), "kill_after_mutations": None})
            return ordinal, action

    def record(self, entry: dict[str, Any]) -> None:
        entry["ts"] = time.time()
        with self._lock:
            entry["seq"] = len(self.log)
            self.log.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
