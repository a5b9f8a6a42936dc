"""Local notifications: the same SNS messages, printed readably, appended to a JSON-lines file,
and posted to an optional webhook.

The webhook is an http(s) URL, checked when the runtime starts. Deliveries run on their own thread, in
order, each with a timeout: a slow or dead webhook delays nobody (the event bus publishes and moves
on), and the file keeps every message whatever the webhook does.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from chalice_app.adapters.errors import NotFoundError

log = logging.getLogger(__name__)
WEBHOOK_SCHEMES = ("http", "https")
MAX_PENDING = 1000  # deliveries queued for a webhook that is slower than the pipeline


class WebhookError(ValueError):
    """A webhook URL the runtime will not post to."""


def check_webhook(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in WEBHOOK_SCHEMES or not parts.hostname:
        raise WebhookError(f"the webhook must be an http:// or https:// URL with a host, not {url[:100]!r}")
    return url


def _opener() -> urllib.request.OpenerDirector:
    """HTTP and HTTPS only, redirects included: no file:, data: or ftp: handler to be sent to."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class Webhook:
    """Posts records to one URL from its own thread, in order."""

    def __init__(self, url: str, timeout: float = 5):
        self.url, self.timeout = check_webhook(url), timeout
        self._opener = _opener()
        self._pending: queue.Queue[dict] = queue.Queue(MAX_PENDING)
        self.undelivered = 0  # refused by a full queue or by the webhook: each is still in the file
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._deliver, daemon=True, name="webhook")
        self._thread.start()

    def post(self, record: dict) -> None:
        try:
            self._pending.put_nowait(record)
        except queue.Full:
            self.undelivered += 1
            log.warning("webhook %s is %d messages behind: this one is only in the file", self.url, MAX_PENDING)

    def flush(self, timeout: float = 10) -> int:
        """Wait up to ``timeout`` for the queued records to be tried; the number never delivered (those
        refused, failed, or still queued or in flight when the wait ended)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._pending.join(), done.set()), daemon=True).start()
        done.wait(timeout)
        # unfinished_tasks counts the queued and the one being posted.
        return self.undelivered + self._pending.unfinished_tasks

    def close(self) -> None:
        """Post nothing more: what is still queued stays in the file only (``flush`` counted it)."""
        self._closed.set()

    def _deliver(self) -> None:
        while True:
            record = self._pending.get()
            if self._closed.is_set():
                self._pending.task_done()
                continue
            try:
                request = urllib.request.Request(
                    self.url,
                    data=json.dumps(record).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with self._opener.open(request, timeout=self.timeout):
                    pass
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.undelivered += 1
                # A webhook that is down must not stop the pipeline; the file still has every message.
                log.warning("webhook %s did not take the notification: %s", self.url, exc)
            finally:
                self._pending.task_done()


class LocalPublisher:
    """``chalice_app.ports.Publisher`` for the local runtime: one topic, as the stage has one."""

    def __init__(
        self,
        path: Path,
        say: Callable[[str], None] = print,
        webhook: str | None = None,
        timeout: float = 5,
        topic_arn: str | None = None,
    ):
        self.path = path
        self.topic_arn = topic_arn
        self.say = say
        self.webhook = Webhook(webhook, timeout) if webhook else None
        self._lock = threading.Lock()
        self._count = 0
        path.parent.mkdir(parents=True, exist_ok=True)

    def publish(self, topic_arn: str, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        if self.topic_arn is not None and topic_arn != self.topic_arn:
            raise NotFoundError(f"publishing to {topic_arn} failed: NotFound: Topic does not exist", "NotFound")
        body = json.loads(message)
        record = {
            "topic": topic_arn,
            "subject": subject,
            "attributes": dict(attributes),
            "message": body,
            "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self._lock:
            self._count += 1
            message_id = f"local-{self._count}"
            with self.path.open("a+b") as handle:
                # A write torn by a crash leaves a last line with no newline: start on a fresh one, so
                # the torn line stays one unreadable line and this message is whole.
                handle.seek(0, 2)
                torn = handle.tell() > 0 and (handle.seek(-1, 2), handle.read(1))[1] != b"\n"
                handle.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")
        self.say(f"  ✉ {body['event']:<22} {subject.removeprefix('droptrain ' + body['event'] + ': ')}")
        if self.webhook:
            self.webhook.post(record)
        return message_id

    def flush(self, timeout: float = 10) -> int:
        """At stop: wait a bounded time for the webhook, say how many messages it did not get, and post
        nothing more (a dead webhook would otherwise be tried for every message still queued)."""
        if not self.webhook:
            return 0
        missed = self.webhook.flush(timeout)
        self.webhook.close()
        if missed:
            self.say(
                f"  webhook {self.webhook.url}: {missed} of {self._count} notifications were not delivered"
                f" (every one is in {self.path})"
            )
        return missed


def read(path: Path) -> list[dict]:
    """Every whole message in the file; a line torn by a crash is left out, with a warning."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not a whole message (a write torn by a crash): left out", path, number)
    return records
