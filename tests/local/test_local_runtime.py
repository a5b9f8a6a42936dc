"""The embedded local runtime end to end: the same handlers, the real train.py, the API on loopback."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from pathlib import Path


from droptrain import cli
from droptrain.demo import post_image
from droptrain.local.runtime import LocalRuntime

FAKE_SOURCE = Path(__file__).resolve().parent / "fake_source"
CHAIN = ["dataset.accepted", "tuning.started", "tuning.completed", "training.started",
         "training.completed", "deployment.started", "deployment.completed"]


def wait_for(runtime: LocalRuntime, event: str, timeout: float = 300) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = [n["message"]["event"] for n in runtime.notifications()]
        if event in seen:
            return seen
        if any(e.endswith(("failed", "rejected")) for e in seen):
            raise AssertionError(f"the pipeline failed: {runtime.notifications()[-1]['subject']}")
        time.sleep(0.3)
    raise AssertionError(f"no {event} in {timeout}s: {[n['message']['event'] for n in runtime.notifications()]}")


def test_dataset_to_predictions_with_the_real_training_code(tiny_dataset, tmp_path, capsys, ray_serve):
    env = {"MAX_TUNING_JOBS": "2", "STATIC_HYPERPARAMETERS": '{"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "48"}'}
    runtime = LocalRuntime(tmp_path / "home", env=env, say=lambda m: None, serving=ray_serve)
    runtime.start(port=0)
    try:
        runtime.upload(tiny_dataset, "pets")
        seen = wait_for(runtime, "deployment.completed")
        assert seen == CHAIN, "every notification once, in order"
        messages = [n["message"] for n in runtime.notifications()]
        run = messages[0]["run_id"]
        assert all(m["run_id"] == run for m in messages)
        assert messages[2]["detail"]["training_jobs"]["Completed"] == 2, "two trials ran"
        completed = messages[4]["detail"]
        assert [v["rule"] for v in completed["rules"]] == ["VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining",
                                                           "PoorWeightInitialization", "LossNotDecreasing"]
        assert completed["report"] == f"s3://droptrain-local/runs/{run}/reports/report.html"
        assert runtime.bucket.path_of_uri(completed["report"]).is_file()
        classes = {p.name for p in (tiny_dataset / "train").iterdir()}
        image = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
        status, body = post_image(runtime.api_url, image, top_k=2)
        assert status == 200 and body["model"] == run
        assert len(body["predictions"]) == 2 and {p["label"] for p in body["predictions"]} <= classes
        status, body = post_image(runtime.api_url, Path(__file__))  # sent as image/jpeg, but it is Python
        assert status == 400 and body["error"]["code"] == "invalid_image"
        # JPEG magic bytes pass the API's own check; the model's 400 comes back as a 400, not a 502.
        truncated = tmp_path / "truncated.jpg"
        truncated.write_bytes(image.read_bytes()[:300])
        status, body = post_image(runtime.api_url, truncated)
        assert (status, body["error"]["code"]) == (400, "invalid_image"), body
        assert cli.main(["predict", str(image), "--url", runtime.api_url, "--top-k", "1"]) == 0
        assert "(model " + run + ")" in capsys.readouterr().out
        with __import__("urllib.request").request.urlopen(runtime.api_url + "/status") as response:
            state = json.loads(response.read())
        assert state["endpoint"]["status"] == "InService" and state["model"]["run_id"] == run
        assert state["model"]["test_accuracy"] is not None
    finally:
        runtime.stop()
    assert cli.main(["status", "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert f"run {run}: tuning Completed" in out and f"endpoint droptrain-local: InService, serving {run}" in out


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_restart_mid_tuning_finishes_the_run_once(tiny_dataset, trained_job, tmp_path, monkeypatch, ray_serve):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.4")
    monkeypatch.setenv("FAKE_MODEL_SOURCE", str(trained_job["paths"].model))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake.log"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    env = {"MAX_TUNING_JOBS": "3", "MAX_PARALLEL_JOBS": "1", "TUNING_RANGES": '{"epochs": [3, 5]}'}
    home = tmp_path / "home"

    jobs_with_output: set[str] = set()
    second_trial_running = threading.Event()

    def on_line(job: str, line: str) -> None:
        if line.startswith("epoch="):  # the script itself is running, past the toolkit's set-up
            jobs_with_output.add(job)
        if len(jobs_with_output) >= 2:
            second_trial_running.set()

    first = LocalRuntime(home, env=env, say=lambda m: None, source_dir=FAKE_SOURCE, webhook=webhook,
                         serving=ray_serve, on_line=on_line)
    first.start(serve_api=False)
    first.upload(tiny_dataset, "pets")
    assert second_trial_running.wait(60), "the second trial never started"
    first.stop()  # mid-tuning: the first trial done, the second one running
    statuses = Counter(s for _, s, _ in first.store.records("training-job"))
    assert statuses["Completed"] >= 1 and statuses["InProgress"] == 1
    assert first.store.status("tuning-job", next(iter(first.store.names("tuning-job")))) == "InProgress"

    second = LocalRuntime(home, env=env, say=lambda m: None, source_dir=FAKE_SOURCE, webhook=webhook, serving=ray_serve)
    second.start(serve_api=False)
    try:
        seen = wait_for(second, "deployment.completed", timeout=120)
    finally:
        second.stop()
    server.shutdown()
    assert seen == CHAIN, "nothing sent twice across the restart"
    trials = [n for n, _, r in second.store.records("training-job") if r.get("TuningJobName")]
    assert len(trials) == 3, "the interrupted trial resumed; no extra trial was started"
    log = [json.loads(line) for line in (tmp_path / "fake.log").read_text().splitlines()]
    starts = Counter(e["job"] for e in log if "start" in e)
    assert max(starts.values()) == 2 and sum(1 for v in starts.values() if v == 2) == 1, "only the interrupted trial ran again"
    assert [r["message"]["event"] for r in _Webhook.received] == CHAIN


def test_a_bad_dataset_is_rejected_locally(tmp_path, ray_serve):
    from droptrain.synthetic import make_dataset

    data = tmp_path / "one"
    make_dataset(tmp_path / "two", classes=2, per_class=5, size=16)
    (data / "train").mkdir(parents=True)
    import shutil
    shutil.copytree(next((tmp_path / "two" / "train").iterdir()), data / "train" / "only-class")
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve)
    runtime.start(serve_api=False)
    try:
        runtime.upload(data, "one")
        deadline = time.time() + 30
        while time.time() < deadline and not runtime.notifications():
            time.sleep(0.1)
    finally:
        runtime.stop()
    (note,) = runtime.notifications()
    assert note["message"]["event"] == "dataset.rejected" and "at least 2 classes" in note["subject"]
    assert list(runtime.store.names("tuning-job")) == []
