"""One call per object in the engine's read wave: steps that read the same object share that read, and a step that
reads several objects reads them at once.

Before it converges anything, the engine calls every step's ``find`` at once (engine.Engine, "the read wave"). Some
steps read the same object there: both database steps the instance's database list, both login-role steps its user
list, every step on a Cloud SQL instance that answers 403 for a missing instance the instance itself (sql.py). Inside
the wave such a read is made once, keyed by what it is (the API method and the object's name), and every step that
asks gets that one answer, or the same error.

Only reads made inside the wave are shared, and the wave's answers are used only by steps nothing upstream of them
changed (the engine reads the others again), so a shared answer is never stale: there is nothing to invalidate. Every
read outside the wave (a step's read after its own write, a policy's read-modify-write, a poll) goes to the API.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_current = threading.local()


class Wave:
    """The reads of one wave, by key: the first asker makes the call, later ones wait for its answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[tuple[str, str], Future[Any]] = {}

    def once(self, key: tuple[str, str], read: Callable[[], T]) -> T:
        with self._lock:
            answer = self._reads.get(key)
            first = answer is None
            if answer is None:
                answer = self._reads[key] = Future()
        if first:
            try:
                answer.set_result(read())
            except BaseException as exc:  # the same error for every step that shares the read
                answer.set_exception(exc)
        return answer.result()


@contextmanager
def within(wave: Wave | None) -> Iterator[None]:
    """Reads made in this thread, in this block, belong to ``wave`` (the engine wraps each step's wave read)."""
    before = getattr(_current, "wave", None)
    _current.wave = wave
    try:
        yield
    finally:
        _current.wave = before


def shared(method: str, name: str, read: Callable[[], T]) -> T:
    """``read()``: inside a wave, made once for every step that asks for the same ``method`` on the object ``name``;
    outside one, made every time."""
    wave: Wave | None = getattr(_current, "wave", None)
    return read() if wave is None else wave.once((method, name), read)


def together(*reads: Callable[[], Any]) -> list[Any]:
    """Make independent reads at once (each in a thread of its own, in the caller's wave), so that a step that reads
    several objects (the policies of four secrets) costs one round trip, not one per object; their answers in order.
    The first error among them is raised, once all have ended."""
    if len(reads) < 2:
        return [read() for read in reads]
    wave: Wave | None = getattr(_current, "wave", None)

    def run(read: Callable[[], Any]) -> Any:
        with within(wave):
            return read()

    with ThreadPoolExecutor(max_workers=len(reads), thread_name_prefix="read") as pool:
        futures = [pool.submit(run, read) for read in reads]
    return [f.result() for f in futures]


def each(read: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
    """:func:`together` over ``items``: ``read(item)`` of each at once."""
    return together(*(lambda item=item: read(item) for item in items))
