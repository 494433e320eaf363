"""What every step of a run shares: configuration, names, clients, the state file, facts other steps published,
the secret values generated in this run (memory only), and the API-call log for ``-v``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import retry

if TYPE_CHECKING:
    from .clients import Clients
    from .config import Config
    from .naming import Names
    from .state import State


class Context:
    def __init__(
        self,
        config: Config,
        names: Names,
        clients: Clients,
        state: State,
        *,
        log: Callable[[str], None] | None = None,
        deadline: float = 900.0,
    ) -> None:
        self.config = config
        self.names = names
        self.clients = clients
        self.state = state
        self.deadline = deadline
        self._log = log
        self._facts: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        #: Secret values created in this run (or read by its steps at the pinned version), by secret key; never
        #: written anywhere.
        self.secret_values: dict[str, str] = {}
        #: Set once the APIs step saw every service enabled: later SERVICE_DISABLED answers are propagation delay.
        self.services_enabled = False
        #: How the server image is built this run (builds.resolve): prebuilt, docker or cloudbuild, and why.
        self.builder: str | None = None
        self.builder_reason = ""
        #: The MLflow release the server image of this run pins (upgrade.serving_version: the one serving, unless
        #: an upgrade or a rollback moves it).
        self.mlflow_version: str = config.server.mlflow_version if config is not None else ""
        #: When this run last granted a role to a member (time.monotonic()), for waiting out IAM propagation.
        self._granted_at: dict[str, float] = {}

    def fork(self) -> Context:
        """A context for a dry run ahead of the real one (`up`'s plan): the same configuration, clients, state and
        builder, but facts of its own, so what the plan assumes for resources that do not exist yet never reaches
        the run that creates them."""
        other = Context(self.config, self.names, self.clients, self.state, log=self._log, deadline=self.deadline)
        with self._lock:
            other._facts = {key: dict(facts) for key, facts in self._facts.items()}
        other.builder, other.builder_reason = self.builder, self.builder_reason
        other.mlflow_version = self.mlflow_version
        return other

    def on_instance(self, instance: str) -> Context:
        """A context whose stack uses another Cloud SQL instance (a restore's or rollback's new one), with facts of
        its own (:meth:`fork`): what the steps learn of the new instance never mixes with the old one's."""
        from dataclasses import replace

        other = self.fork()
        other.names = replace(self.names, database_instance=instance)
        with other._lock:
            other._facts = {k: v for k, v in other._facts.items() if not k.startswith("sql:")}
        other.secret_values = self.secret_values
        return other

    def granted(self, member: str) -> None:
        with self._lock:
            self._granted_at[member] = time.monotonic()

    def seconds_since_grant(self, member: str) -> float | None:
        """Seconds since this run granted ``member`` a role; None if it granted it none."""
        with self._lock:
            at = self._granted_at.get(member)
        return None if at is None else time.monotonic() - at

    def publish(self, key: str, facts: dict[str, Any]) -> None:
        with self._lock:
            self._facts[key] = dict(facts)

    def fact(self, key: str, name: str, default: Any = None) -> Any:
        with self._lock:
            facts = self._facts.get(key)
        if facts is None:
            facts = self.state.get(key) or {}
        return facts.get(name, default)

    def note(self, what: str) -> None:
        """Log a call that is not retried (a docker build or push)."""
        if self._log:
            self._log(what)

    def wait(self, operation: Any, what: str, timeout: float | None = None) -> Any:
        """Wait for a google.longrunning operation; transient errors of its polling calls are retried too."""
        if self._log:
            self._log(f"{what} (waiting for the operation)")
        policy = retry.policy(self.deadline, services_enabled=self.services_enabled)
        return operation.result(timeout=timeout or self.deadline, retry=policy)

    def api(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        retry_on: Callable[[BaseException], bool] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Make one API call with the retry policy, logging ``what`` (never arguments: they may hold secrets)."""
        if self._log:
            self._log(what)
        return retry.policy(self.deadline, also=retry_on, services_enabled=self.services_enabled)(fn)(*args, **kwargs)
