"""droptrain runs, logs and stop against a local stack with a tuning job in progress."""

from __future__ import annotations

import threading
import time

from local.test_local_runtime import FAKE_SOURCE

from droptrain import cli
from droptrain.control import follow
from droptrain.local.runtime import LocalRuntime
from helpers import DEADLINE


def test_a_run_is_listed_its_logs_read_and_it_stops_when_asked(
    tmp_path, tiny_dataset, trained_job, monkeypatch, capsys, ray_serve, shared_warm
):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.5")
    monkeypatch.setenv("FAKE_MODEL_SOURCE", str(trained_job["paths"].model))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake.log"))
    home = tmp_path / "home"
    env = {"MAX_TUNING_JOBS": "4", "MAX_PARALLEL_JOBS": "1", "TUNING_RANGES": '{"epochs": [6, 8]}', "AUDIT": "false"}
    runtime = LocalRuntime(
        home, env=env, say=lambda m: None, source_dir=FAKE_SOURCE, serving=ray_serve, warm=shared_warm, poll_seconds=0.1
    )
    runtime.start(serve_api=False)
    try:
        runtime.upload(tiny_dataset, "pets")
        deadline = time.time() + DEADLINE
        while time.time() < deadline and not any((home / "jobs").glob("*/job.log")):
            time.sleep(0.2)
        run = runtime.store.names("tuning-job")[0]
        assert cli.main(["runs", "--home", str(home)]) == 0
        listed = capsys.readouterr().out
        assert run in listed and "tuning InProgress" in listed
        trial_log = next((home / "jobs").glob(f"{run}-*/job.log"))
        # -f: what the job writes next arrives too.
        seen, stop = [], threading.Event()
        reader = threading.Thread(
            target=lambda: seen.extend(follow(trial_log, sleep=lambda s: time.sleep(0.05), stop=stop.is_set))
        )
        reader.start()
        deadline = time.time() + DEADLINE
        while time.time() < deadline and not any(line.startswith("epoch=") for line in seen):
            time.sleep(0.1)
        stop.set()
        reader.join(DEADLINE)
        assert any(line.startswith("epoch=") for line in seen), seen[-5:]

        assert cli.main(["stop", run, "--home", str(home)]) == 0
        assert f"asked the stack to stop {run}" in capsys.readouterr().out
        deadline = time.time() + DEADLINE
        while time.time() < deadline and runtime.store.status("tuning-job", run) == "InProgress":
            time.sleep(0.2)
        assert runtime.store.status("tuning-job", run) == "Stopped"
        assert runtime.store.names("stop-request") == [], "carried out once"
    finally:
        runtime.stop()
    assert cli.main(["runs", "--home", str(home)]) == 0
    listed = capsys.readouterr().out
    assert run in listed and "tuning Stopped" in listed
    assert cli.main(["logs", run, "--home", str(home)]) == 0
    assert f"==> {run}-001-" in capsys.readouterr().out
    assert cli.main(["stop", "nope-00000000", "--home", str(home)]) == 1
    assert "there is no run 'nope-00000000'" in capsys.readouterr().err
    assert cli.main(["logs", "nope-00000000", "--home", str(home)]) == 1
