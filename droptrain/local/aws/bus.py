"""The local event bus: EventBridge's pattern matching and Lambda's asynchronous delivery.

Routes come from the Chalice app itself (each ``@app.on_cw_event`` with its pattern), so the
local runtime delivers exactly what the deployed rules would, to the same handler functions.
A handler that raises is retried twice with a pause, as Lambda retries asynchronous invocations.

Events are delivered one at a time, in order, except S3's "Object Created": each upload is checked on
a thread of its own (at most ``UPLOAD_WORKERS`` at once), as Lambda runs invocations side by side, so
that one slow or hostile archive never holds up the pipeline's other events or the other uploads.
"""

from __future__ import annotations

import fnmatch
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
RETRY_DELAYS = (1.0, 2.0)
UPLOAD_WORKERS = 4


def _match_value(matcher: Any, value: Any) -> bool:
    if isinstance(matcher, Mapping):
        if "exists" in matcher:
            return (value is not None) is bool(matcher["exists"])
        if value is None:
            return False
        if "prefix" in matcher or "suffix" in matcher:
            if not isinstance(value, str):
                return False
            kind = "prefix" if "prefix" in matcher else "suffix"
            expected = matcher[kind]
            if isinstance(expected, Mapping):  # {"suffix": {"equals-ignore-case": ".zip"}}
                value, expected = value.lower(), expected["equals-ignore-case"].lower()
            return value.startswith(expected) if kind == "prefix" else value.endswith(expected)
        if "wildcard" in matcher:
            # EventBridge's wildcard: * matches any run of characters, '/' included.
            return isinstance(value, str) and fnmatch.fnmatchcase(value, matcher["wildcard"].replace("[", "[[]"))
        if "equals-ignore-case" in matcher:
            return isinstance(value, str) and value.lower() == matcher["equals-ignore-case"].lower()
        if "anything-but" in matcher:
            excluded = matcher["anything-but"]
            excluded = excluded if isinstance(excluded, list) else [excluded]
            return value not in excluded
        raise ValueError(f"unsupported pattern matcher {matcher}")
    return value == matcher


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Does ``event`` match the EventBridge ``pattern``?"""
    for key, expected in pattern.items():
        if key == "$or":  # any one of the alternatives, each a pattern at this level
            if not any(matches(alternative, event) for alternative in expected):
                return False
            continue
        value = event.get(key) if isinstance(event, Mapping) else None
        if isinstance(expected, Mapping):
            if not isinstance(value, Mapping) or not matches(expected, value):
                return False
            continue
        values = value if isinstance(value, list) else [value]
        if not any(_match_value(m, v) for m in expected for v in values):
            return False
    return True


@dataclass
class Route:
    name: str
    pattern: dict
    handler: Callable[[dict, Any], Any]


def routes_of(app: Any) -> list[Route]:
    """The app's EventBridge handlers with their patterns (what ``chalice package`` turns into rules)."""
    out = []
    for source in app.event_sources:
        pattern = getattr(source, "event_pattern", None)
        if pattern:
            out.append(Route(source.name, pattern, app.handler_map[source.name]))
    return out


class _Context:
    function_name = "droptrain-local"
    aws_request_id = "local"
    memory_limit_in_mb = 512

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


class LocalEventBus:
    def __init__(self, routes: list[Route], sleep: Callable[[float], None] = time.sleep):
        self.routes = routes
        self._queue: queue.Queue = queue.Queue()
        self._sleep = sleep
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0  # put and not yet delivered
        self._pending_lock = threading.Lock()
        self._uploads = threading.BoundedSemaphore(UPLOAD_WORKERS)
        self._upload_threads: list[threading.Thread] = []
        self.delivered: list[tuple[str, str]] = []

    def put(self, event: dict) -> None:
        with self._pending_lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(event)

    def _done(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="event-bus")
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None
        for thread in self._upload_threads:
            thread.join(30)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            if event.get("source") == "aws.s3":
                thread = threading.Thread(target=self._deliver_upload, args=(event,), daemon=True, name="upload")
                self._upload_threads = [t for t in self._upload_threads if t.is_alive()] + [thread]
                thread.start()
                continue
            try:
                self.deliver(event)
            finally:
                self._done()

    def _deliver_upload(self, event: dict) -> None:
        try:
            with self._uploads:
                self.deliver(event)
        finally:
            self._done()

    def deliver(self, event: dict) -> None:
        for route in self.routes:
            if not matches(route.pattern, event):
                continue
            for attempt, delay in enumerate((*RETRY_DELAYS, None)):
                try:
                    outcome = route.handler(event, _Context())
                    self.delivered.append((route.name, str(outcome)))
                    break
                except Exception as exc:  # noqa: BLE001 - what Lambda does with any error: log, retry, give up
                    if delay is None:
                        log.error(
                            "%s gave up on event %s after %d attempts: %s",
                            route.name,
                            event.get("id"),
                            attempt + 1,
                            exc,
                        )
                        break
                    log.warning("%s failed (%s); retrying in %.0fs", route.name, exc, delay)
                    self._sleep(delay)
