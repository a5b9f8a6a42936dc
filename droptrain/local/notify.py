"""Local notifications: the same SNS messages, printed readably, appended to a JSON-lines file,
and posted to an optional webhook."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from chalice_app.adapters.errors import NotFoundError

log = logging.getLogger(__name__)


class LocalPublisher:
    """``chalice_app.ports.Publisher`` for the local runtime: one topic, as the stage has one."""

    def __init__(self, path: Path, say: Callable[[str], None] = print, webhook: str | None = None, timeout: float = 5,
                 topic_arn: str | None = None):
        self.path = path
        self.topic_arn = topic_arn
        self.say = say
        self.webhook = webhook
        self.timeout = timeout
        self._lock = threading.Lock()
        self._count = 0
        path.parent.mkdir(parents=True, exist_ok=True)

    def publish(self, topic_arn: str, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        if self.topic_arn is not None and topic_arn != self.topic_arn:
            raise NotFoundError(f"publishing to {topic_arn} failed: NotFound: Topic does not exist", "NotFound")
        body = json.loads(message)
        record = {"topic": topic_arn, "subject": subject, "attributes": dict(attributes), "message": body,
                  "published": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with self._lock:
            self._count += 1
            message_id = f"local-{self._count}"
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.say(f"  ✉ {body['event']:<22} {subject.removeprefix('droptrain ' + body['event'] + ': ')}")
        if self.webhook:
            self._post(record)
        return message_id

    def _post(self, record: dict) -> None:
        request = urllib.request.Request(self.webhook, data=json.dumps(record).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                pass
        except (urllib.error.URLError, OSError) as exc:
            # A webhook that is down must not stop the pipeline; the file still has every message.
            log.warning("webhook %s did not take the notification: %s", self.webhook, exc)


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
