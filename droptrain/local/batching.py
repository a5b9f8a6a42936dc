"""Dynamic batching for a local endpoint: requests that arrive while the model is busy run together.

One worker thread owns the model. It takes the first waiting request and every other one already
queued (up to ``max_batch``) and runs them as one batch, so a lone request never waits for company
and concurrent clients share forward passes. After a batch of several, the worker lingers up to
``max_delay`` for stragglers: clients that were answered together tend to come back together.

A batch that fails is retried one request at a time, so a request that breaks the batch fails
alone. A request handed to a closed batcher (the endpoint swapped models under it) runs at once
in the caller's thread, on the model it was routed to.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Generic, Sequence, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
_CLOSE = object()


class DynamicBatcher(Generic[In, Out]):
    def __init__(self, run_batch: Callable[[Sequence[In]], Sequence[Out]], max_batch: int = 16,
                 max_delay: float = 0.002, name: str = "batcher", clock: Callable[[], float] = time.monotonic):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.batch_sizes: list[int] = []  # what ran together, for tests and the benchmark
        self._thread = threading.Thread(target=self._work, daemon=True, name=name)
        self._thread.start()

    def submit(self, item: In) -> Out:
        """Run ``item`` in the next batch and return its result (or raise its error)."""
        with self._lock:
            if not self._closed:
                future: Future = Future()
                self._queue.put((item, future))
            else:
                future = None
        if future is None:
            return self._run_batch([item])[0]
        return future.result()

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_CLOSE)
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        last_size = 1
        while True:
            first = self._queue.get()
            if first is _CLOSE:
                return
            batch, closing = self._gather(first, linger=self.max_delay if last_size > 1 else 0.0)
            self._execute(batch)
            last_size = len(batch)
            if closing:
                return

    def _gather(self, first: tuple, linger: float) -> tuple[list[tuple], bool]:
        batch = [first]
        deadline = self._clock() + linger
        while len(batch) < self.max_batch:
            remaining = deadline - self._clock()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSE:
                return batch, True
            batch.append(item)
        return batch, False

    def _execute(self, batch: list[tuple[Any, Future]]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = self._run_batch([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed back to the waiting callers, never swallowed
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            for item, future in batch:  # find the one that broke it; the others still get answers
                try:
                    future.set_result(self._run_batch([item])[0])
                except Exception as single:  # noqa: BLE001 - as above, raised in the caller's thread
                    future.set_exception(single)
            return
        if len(results) != len(batch):
            error = RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} inputs")
            for _, future in batch:
                future.set_exception(error)
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)
