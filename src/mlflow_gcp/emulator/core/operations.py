"""google.longrunning operations, as GAPIC clients poll them.

An operation is returned not-done from the call that starts it; its work runs on a background thread
after the latency profile's delay, and it reports done on a poll only once the work has finished (and
after ``min_pending_polls`` not-done polls, so every client's polling path runs).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import GcpError, not_found

if TYPE_CHECKING:
    from .world import World

# google.rpc.Code numbers for the status strings we raise.
GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip

Work = Callable[[], "dict[str, Any] | None"]


class Operations:
    KIND = "longrunning.operation"

    def __init__(self, world: World) -> None:
        self.world = world
        self._polls: dict[str, int] = {}
        self._finished: set[str] = set()
        self._lock = threading.Lock()

    def start(
        self,
        parent: str,
        work: Work,
        *,
        delay_key: str,
        metadata: dict[str, Any] | None = None,
        response_type: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Begin ``work`` (which returns the response resource or raises GcpError) and return the
        not-done operation. ``parent`` is e.g. ``projects/p/locations/l`` or ``""`` (Service Usage)."""
        op_name = name or (f"{parent}/operations/{uuid.uuid4()}" if parent else f"operations/{uuid.uuid4()}")
        # Proto3 JSON leaves out a false `done`, as GCP's answers do (recorded: tests/golden/).
        op: dict[str, Any] = {"name": op_name}
        if metadata is not None:
            op["metadata"] = metadata
        self.world.store.put(self.KIND, op_name, op)
        delay = self.world.control.delay(delay_key)

        def run() -> None:
            if delay:
                time.sleep(delay)
            result = dict(op)
            try:
                response = work()
                if response is not None:
                    result["response"] = {"@type": response_type, **response} if response_type else response
                else:
                    result["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
            except GcpError as err:
                result["error"] = {"code": GRPC_CODES.get(err.status, 2), "message": err.message}
            except Exception as exc:  # an emulator bug must still finish the operation, loudly
                traceback.print_exc()
                result["error"] = {"code": 13, "message": f"internal emulator error: {exc}"}
            result["done"] = True
            self.world.store.put(self.KIND, op_name, result)
            with self._lock:
                self._finished.add(op_name)

        threading.Thread(target=run, name=f"op:{op_name}", daemon=True).start()
        return op

    def get(self, name: str) -> dict[str, Any]:
        op = self.world.store.get(self.KIND, name)
        if op is None:
            raise not_found(f"Operation {name}")
        with self._lock:
            polls = self._polls.get(name, 0) + 1
            self._polls[name] = polls
        if op.get("done") and polls <= self.world.control.settings.min_pending_polls:
            op = {k: v for k, v in op.items() if k not in ("response", "error", "done")}
        return op

    def wait(self, name: str, timeout: float = 600) -> dict[str, Any]:
        """For the emulator's own use (e.g. tests of a module): block until the work finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op = self.world.store.get(self.KIND, name)
            if op and op.get("done"):
                return op
            time.sleep(0.02)
        raise TimeoutError(name)
