"""Notifications under faults: a file torn by a crash, and a webhook slower than the pipeline."""

from __future__ import annotations

import http.server
import json
import threading

from droptrain.local.aws.notify import LocalPublisher, read

TOPIC = "arn:aws:sns:local:000000000000:droptrain-local"


def _publish(publisher: LocalPublisher, event: str) -> None:
    publisher.publish(TOPIC, f"droptrain {event}: x", json.dumps({"event": event}), {"event": event})


def test_a_torn_last_line_does_not_swallow_the_next_message(tmp_path):
    path = tmp_path / "notifications.jsonl"
    publisher = LocalPublisher(path, say=lambda m: None, topic_arn=TOPIC)
    _publish(publisher, "dataset.accepted")
    with path.open("ab") as handle:  # what a crash in the middle of a write leaves
        handle.write(b'{"topic": "arn:aws:sns:local:000000000000:droptrain-local", "subj')
    _publish(publisher, "tuning.started")

    assert [record["message"]["event"] for record in read(path)] == ["dataset.accepted", "tuning.started"]
    assert len(path.read_text().splitlines()) == 3, "the torn line stays, on a line of its own"


def test_a_slow_webhook_is_told_at_stop_how_many_messages_it_missed(tmp_path):
    release, received = threading.Event(), []

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            release.wait(30)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    said: list[str] = []
    path = tmp_path / "notifications.jsonl"
    publisher = LocalPublisher(path, say=said.append, webhook=f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        for number in range(50):
            _publish(publisher, f"event.{number}")
        missed = publisher.flush(timeout=0.5)
    finally:
        release.set()
        server.shutdown()
        server.server_close()

    # The webhook still holds the first when the wait ends: it is counted with the 49 queued behind it.
    assert missed == 50
    assert any(f"{missed} of 50 notifications were not delivered" in line and str(path) in line for line in said)
    assert len(read(path)) == 50, "every message stays in the file"
