"""Notifications (docs/notifications.md): the message, and sending it once per run.

Events arrive more than once. Before publishing, a marker ``runs/<run-id>/notifications/<event>.json``
is written with an S3 conditional write (``If-None-Match: *``): only the first delivery writes
it, so only the first publishes. If publishing then fails, the marker is removed so that the
retry sends it. No database is involved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from chalice_app.ports import ObjectStore, Publisher

EVENTS = (
    "dataset.accepted",
    "dataset.audited",
    "dataset.rejected",
    "tuning.started",
    "tuning.completed",
    "tuning.failed",
    "training.started",
    "training.completed",
    "training.failed",
    "model.registered",
    "model.approved",
    "model.held",
    "deployment.started",
    "deployment.completed",
    "deployment.failed",
    "deployment.stopped",
    "batch.started",
    "batch.completed",
    "batch.failed",
    "drift.detected",
    "pipeline.failed",
)
# SNS: a Subject of printable ASCII "less than 100 characters long", a Message under 256 KB (attributes
# count too: room is left for them).
SUBJECT_MAX = 99
MESSAGE_MAX_BYTES = 256 * 1024 - 4096


@dataclass(frozen=True)
class Notification:
    event: str
    run_id: str | None
    dataset: str | None
    status: str
    summary: str  # the human line that becomes the subject
    job: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    # Sent once per (dedupe key, event); the run id by default. pipeline.failed uses the event id.
    dedupe: str | None = None

    def __post_init__(self):
        if self.event not in EVENTS:
            raise ValueError(f"unknown notification event {self.event!r}")


def subject(note: Notification) -> str:
    """One line of printable ASCII, under 100 characters (SNS refuses anything else)."""
    text = f"droptrain {note.event}: {note.summary}"
    text = "".join(c if c.isprintable() else " " for c in text)  # control characters, line breaks
    text = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 3] + "..."


def _size(value: Any) -> int:
    return len(json.dumps(value, sort_keys=True, default=str).encode())


def _largest(node: Any, path: tuple = ()) -> tuple[int, tuple]:
    """The path of the largest list, object or string inside ``node`` (``node`` itself included)."""
    best = (_size(node), path) if isinstance(node, (list, dict, str)) and path else (0, path)
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        best = max(best, _largest(child, (*path, key)), key=lambda item: item[0])
    return best


def _halve(node: Any, path: tuple) -> None:
    parent = node
    for key in path[:-1]:
        parent = parent[key]
    value = parent[path[-1]]
    if isinstance(value, list):
        parent[path[-1]] = value[: len(value) // 2]
    elif isinstance(value, dict):
        parent[path[-1]] = dict(list(value.items())[: len(value) // 2])
    else:
        parent[path[-1]] = value[: len(value) // 2]


def fit(body: dict[str, Any], full_copy: str | None) -> dict[str, Any]:
    """``body`` unchanged when it fits SNS; else its largest parts of ``detail`` halved until it does,
    with what was shortened and where the whole message is kept (``full_copy``) said in ``truncated``."""
    if _size(body) <= MESSAGE_MAX_BYTES:
        return body
    detail = json.loads(json.dumps(body["detail"], default=str))
    shortened: set[str] = set()
    body = {**body, "detail": detail, "truncated": {"fields": [], "full_message": full_copy}}
    while _size(body) > MESSAGE_MAX_BYTES:
        size, path = _largest(detail)
        if not path or size <= 2:
            body["detail"] = detail = {}
            shortened.add("detail")
            break
        _halve(detail, path)
        shortened.add(".".join(str(p) for p in path if not isinstance(p, int)))
    body["truncated"]["fields"] = sorted(shortened)
    return body


def message(note: Notification, now: datetime) -> dict[str, Any]:
    return {
        "event": note.event,
        "run_id": note.run_id,
        "dataset": note.dataset,
        "status": note.status,
        "job": note.job,
        "time": now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "detail": dict(note.detail),
    }


def marker_key(key: str, event: str) -> str:
    return f"runs/{key}/notifications/{event}.json"


class Notifier:
    def __init__(
        self,
        publisher: Publisher,
        markers: ObjectStore,
        topic_arn: str,
        bucket: str | None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ):
        self._publisher = publisher
        self._markers = markers
        self._topic_arn = topic_arn
        self._bucket = bucket
        self._clock = clock

    def send(self, note: Notification) -> bool:
        """Publish ``note`` unless this event was already sent for this run; ``True`` if published."""
        body = message(note, self._clock())
        encoded = json.dumps(body, sort_keys=True, default=str)
        marker = None
        key = note.dedupe or note.run_id
        if key and self._bucket:
            # The marker keeps the whole message, however large; SNS gets what fits.
            marker = marker_key(key, note.event)
            if not self._markers.put_if_absent(self._bucket, marker, encoded.encode()):
                return False
        full_copy = f"s3://{self._bucket}/{marker}" if marker else None
        published = json.dumps(fit(body, full_copy), sort_keys=True, default=str)
        try:
            self._publisher.publish(self._topic_arn, subject(note), published, {"event": note.event})
        except Exception:
            # Not a user error being swallowed: the marker is undone and the failure re-raised,
            # so the retried delivery publishes.
            if marker is not None and self._bucket:
                self._markers.delete(self._bucket, marker)
            raise
        return True
