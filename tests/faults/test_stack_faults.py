"""The local stack under faults: bad objects in the bucket, a runner that breaks, two stacks on one home,
a busy port, SIGTERM, kill -9 in the middle of a tuning job. Nothing stalls silently, nothing runs twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest
from local.test_local_sagemaker import DATASET, FAKE_SOURCE, Executor, config

from chalice_app import sagemaker_requests as requests
from droptrain.local.lock import HomeBusyError
from droptrain.local.runtime import LocalRuntime
from helpers import DEADLINE

ROOT = Path(__file__).resolve().parents[2]


def _status(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _one_class_dataset(root: Path) -> Path:
    (root / "train" / "only").mkdir(parents=True)
    (root / "train" / "only" / "1.jpg").write_bytes(b"\xff\xd8\xff" + bytes(100))
    return root


def _notified(runtime: LocalRuntime, event: str, timeout: float = DEADLINE) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for note in runtime.notifications():
            if note["message"]["event"] == event:
                return note
        time.sleep(0.1)
    raise AssertionError(f"no {event}: {[n['message']['event'] for n in runtime.notifications()]}")


# -- the bucket watcher -------------------------------------------------------------------------------


def test_a_link_in_the_bucket_is_skipped_and_the_watcher_keeps_watching(tmp_path, ray_serve, shared_warm):
    runtime = LocalRuntime(
        tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm, poll_seconds=0.05
    )
    elsewhere = tmp_path / "elsewhere.zip"
    elsewhere.write_bytes(b"PK\x05\x06" + bytes(18))
    (runtime.bucket.root / "datasets").mkdir(parents=True)
    (runtime.bucket.root / "datasets" / "x.zip").symlink_to(elsewhere)
    (runtime.bucket.root / "datasets" / "gone.zip").symlink_to(tmp_path / "nothing-there.zip")  # dangling
    runtime.start(port=0)
    try:
        runtime.upload(_one_class_dataset(tmp_path / "one"), "one")
        note = _notified(runtime, "dataset.rejected")
        assert note["message"]["dataset"].endswith("datasets/one/")
        assert runtime.problems() == [] and _status(runtime.api_url)[0] == 200
        assert runtime.store.get("object", "datasets/x.zip") is None, "the link was never taken for an object"
    finally:
        runtime.stop()


def test_a_file_name_that_is_not_utf8_is_skipped_named_and_the_watcher_keeps_watching(tmp_path, ray_serve, shared_warm):
    home = tmp_path / "home"
    datasets = home / "bucket" / "datasets"
    datasets.mkdir(parents=True)
    # S3 keys are UTF-8; a folder can hold any bytes. Also there at the start, as after a restart.
    (Path(os.fsdecode(bytes(datasets))) / os.fsdecode(b"bad\xff.zip")).write_bytes(b"PK\x05\x06" + bytes(18))
    said: list[str] = []
    runtime = LocalRuntime(home, say=said.append, serving=ray_serve, warm=shared_warm, poll_seconds=0.05)
    runtime.start(port=0)
    try:
        runtime.upload(_one_class_dataset(tmp_path / "one"), "one")
        note = _notified(runtime, "dataset.rejected")
        assert note["message"]["dataset"].endswith("datasets/one/"), "a later upload is still seen"
        assert runtime.problems() == [] and _status(runtime.api_url)[0] == 200
    finally:
        runtime.stop()
    named = [line for line in said if "not UTF-8" in line]
    assert named == ["skipping datasets/bad\\xff.zip: its name is not UTF-8, as S3 keys are; rename it"], said


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # its death is the point
def test_a_watcher_that_dies_takes_status_to_unhealthy(tmp_path, ray_serve, shared_warm):
    runtime = LocalRuntime(
        tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm, poll_seconds=0.05
    )
    died = threading.Event()

    def broken_scan(prefix=None):
        died.set()
        raise RuntimeError("the bucket's disk went away")

    runtime.scan = broken_scan  # an in-memory fault: the watcher's loop meets an error it cannot skip
    runtime.start(port=0)
    try:
        assert died.wait(DEADLINE)
        runtime._watcher.join(DEADLINE)
        status, body = _status(runtime.api_url)
        assert status == 503 and body["error"]["code"] == "unhealthy"
        assert "bucket watcher stopped: RuntimeError: the bucket's disk went away" in body["error"]["message"]
    finally:
        runtime.stop()


# -- the job runner -----------------------------------------------------------------------------------


def test_a_runner_that_cannot_lay_out_the_job_fails_it_with_the_reason(tmp_path, shared_warm):
    executor = Executor(tmp_path, shared_warm)
    jobs_root = tmp_path / "jobs"
    jobs_root.write_text("a file where the jobs folder should be")
    try:
        final = requests.final_training_request(
            config(),
            "pets-1a2b3c4d",
            "s3://droptrain-local/datasets/pets/",
            requests.static_hyperparameters(config()),
            {"lr": "0.005"},
        )
        executor.sagemaker.create_training_job(final)
        event = executor.wait_for("SageMaker Training Job State Change", "pets-1a2b3c4d-final")
        assert event["detail"]["TrainingJobStatus"] == "Failed"
        assert event["detail"]["FailureReason"].startswith("InternalServerError: the local runner failed")
    finally:
        executor.sagemaker.stop()


def test_a_model_that_cannot_be_written_fails_the_job_and_its_tuning_job(tmp_path, monkeypatch, shared_warm):
    executor = Executor(tmp_path, shared_warm)
    monkeypatch.setenv("FAKE_LOG", str(executor.log))
    # Where the trials' model.tar.gz would go is taken by a file: packing the model fails after training.
    blocker = executor.bucket.root / "runs" / "pets-1a2b3c4d" / "tuning"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    try:
        request = requests.tuning_job_request(config(MAX_TUNING_JOBS=2, MAX_PARALLEL_JOBS=1), "pets-1a2b3c4d", DATASET)
        executor.sagemaker.create_tuning_job(request)
        event = executor.wait_for("SageMaker HyperParameter Tuning Job State Change", "pets-1a2b3c4d")
        assert event["detail"]["HyperParameterTuningJobStatus"] == "Failed"
        trials = executor.sagemaker.list_trials("pets-1a2b3c4d")
        assert [t["TrainingJobStatus"] for t in trials] == ["Failed", "Failed"]
        assert all("the local runner failed" in t["FailureReason"] for t in trials)
    finally:
        executor.sagemaker.stop()


# -- one stack per home, the port first ----------------------------------------------------------------


def test_a_second_stack_on_the_same_home_is_refused(tmp_path, ray_serve, shared_warm):
    first = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    first.start(serve_api=False)
    try:
        second = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
        with pytest.raises(HomeBusyError, match=f"in use by another droptrain \\(pid {os.getpid()}\\)"):
            second.start(serve_api=False)
        assert second.bus is None, "nothing of the second stack ran"
    finally:
        first.stop()
    third = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    third.start(serve_api=False)  # the first let go of the home when it stopped
    third.stop()


def test_a_busy_port_is_refused_before_any_pending_dataset_is_processed(tmp_path, ray_serve, shared_warm):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.upload(_one_class_dataset(tmp_path / "one"), "one")  # waiting in the bucket
    try:
        with pytest.raises(OSError):
            runtime.start(port=busy.getsockname()[1])
    finally:
        busy.close()
    assert runtime.notifications() == [] and list(runtime.store.names("object")) == []
    again = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    again.start(port=0)  # the failed start let go of the home
    try:
        _notified(again, "dataset.rejected")
    finally:
        again.stop()


# -- signals ------------------------------------------------------------------------------------------


def _processes_in(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cwd", "status"]):
        try:
            cwd = process.info["cwd"]
            if cwd and Path(cwd).is_relative_to(folder) and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _command_line(process: psutil.Process) -> str:
    """Its command line, or nothing for one that ended since it was listed."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_sigterm_stops_the_stack_like_ctrl_c_with_no_job_left_running(tmp_path, tiny_dataset):
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DROPTRAIN_API_KEY": "k"}
    assert (
        subprocess.run(
            [sys.executable, "-m", "droptrain.cli", "upload", str(tiny_dataset), "--name", "pets", "--home", str(home)],
            env=env,
            capture_output=True,
            timeout=DEADLINE,
        ).returncode
        == 0
    )
    up = subprocess.Popen(
        # No audit: the stack goes straight to the trials, which are what the stop must end.
        [sys.executable, "-m", "droptrain.cli", "up", "--home", str(home), "--port", "0", "--host", "0.0.0.0"]
        + ["--set", "AUDIT=false"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and not any(
            "train.py" in _command_line(p) for p in _processes_in(home / "jobs")
        ):
            assert up.poll() is None, up.stderr.read()
            time.sleep(0.2)
        assert _processes_in(home / "jobs"), "a trial is running"
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=DEADLINE)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, err
    assert "stopping: jobs in progress resume on the next start" in out
    assert "reachable from other machines; requests need the x-api-key header" in err
    assert _processes_in(home / "jobs") == [], "no train.py outlived the stack"


_CRASHING_STACK = """
import sys, time
from pathlib import Path
from droptrain.local.runtime import LocalRuntime

class NoServing:  # this stack is killed long before it would serve a model
    url = host = port = None
    def start(self): return self
    def stop(self): pass

home, source, data = map(Path, sys.argv[1:4])
env = {"MAX_TUNING_JOBS": "3", "MAX_PARALLEL_JOBS": "1", "AUDIT": "false",
       "TUNING_RANGES": '{"lr": [0.001, 0.02], "epochs": [3, 4]}'}
runtime = LocalRuntime(home, env=env, say=lambda m: None, source_dir=source, serving=NoServing())
runtime.start(serve_api=False)
runtime.upload(data, "pets")
time.sleep(600)
"""


def test_kill_9_mid_tuning_then_a_restart_resumes_the_study_exactly(
    tmp_path, tiny_dataset, trained_job, ray_serve, monkeypatch, shared_warm
):
    home, log = tmp_path / "home", tmp_path / "fake.log"
    env = {
        **os.environ,
        "FAKE_LOG": str(log),
        # The second trial, killed within a poll of its start, runs 3 epochs or more: seconds to spare.
        "FAKE_EPOCH_SECONDS": "1",
        "FAKE_MODEL_SOURCE": str(trained_job["paths"].model),
    }
    crashing = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_STACK, str(home), str(FAKE_SOURCE), str(tiny_dataset)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def starts() -> list[dict]:
        return [e for e in map(json.loads, log.read_text().splitlines()) if "start" in e] if log.exists() else []

    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and len({e["job"] for e in starts()}) < 2:
            assert crashing.poll() is None, crashing.stderr.read()
            time.sleep(0.05)
    finally:
        crashing.kill()  # SIGKILL: no clean-up of any kind
        crashing.wait(DEADLINE)
    interrupted = starts()[-1]
    assert psutil.pid_exists(interrupted["pid"]), "kill -9 leaves the trial running, outside the dead stack"

    for key, value in {
        "FAKE_LOG": str(log),
        "FAKE_EPOCH_SECONDS": "0.05",
        "FAKE_MODEL_SOURCE": str(trained_job["paths"].model),
    }.items():
        monkeypatch.setenv(key, value)
    env_vars = {
        "MAX_TUNING_JOBS": "3",
        "MAX_PARALLEL_JOBS": "1",
        "TUNING_RANGES": '{"lr": [0.001, 0.02], "epochs": [3, 4]}',
        "AUDIT": "false",
    }
    restarted = LocalRuntime(
        home, env=env_vars, say=lambda m: None, source_dir=FAKE_SOURCE, serving=ray_serve, warm=shared_warm
    )
    restarted.start(serve_api=False)
    try:
        _notified(restarted, "tuning.completed")
        orphan_gone = (
            not psutil.pid_exists(interrupted["pid"])
            or psutil.Process(interrupted["pid"]).status() == psutil.STATUS_ZOMBIE
        )
    finally:
        restarted.stop()
    assert orphan_gone, "the restart ended what the killed stack left running"
    trials = restarted.sagemaker.list_trials(next(iter(restarted.store.names("tuning-job"))))
    assert len(trials) == 3 and all(t["TrainingJobStatus"] == "Completed" for t in trials)
    configurations = [tuple(sorted(t["TunedHyperParameters"].items())) for t in trials]
    assert len(set(configurations)) == 3, f"no configuration trained twice: {configurations}"
    assert all(t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] > 0 for t in trials), (
        "every finished trial kept its metric"
    )
    runs = Counter(e["job"] for e in starts() if not e["job"].endswith("-final"))
    assert runs[interrupted["job"]] == 2 and sum(runs.values()) == 4, f"only the interrupted trial ran again: {runs}"
    ended = [home / "jobs" / t["TrainingJobName"] for t in trials]
    leftovers = [p for job in ended for p in job.iterdir() if p.name in ("tmp", "checkpoints")]
    assert leftovers == [], (
        "ended jobs keep neither scratch space nor checkpoints (the final job, interrupted, keeps its own)"
    )


_SERVING_STACK = """
import sys, time
from pathlib import Path
from droptrain.local.runtime import LocalRuntime

runtime = LocalRuntime(Path(sys.argv[1]), say=lambda m: None)
runtime.start(serve_api=False, watch=False)
print("up", flush=True)
time.sleep(600)
"""


def _haproxies(home: Path) -> list[psutil.Process]:
    """The live HAProxy processes the stack on ``home`` recorded (a reload starts a new one and ends
    the old: only those still running count)."""
    pids = home / "haproxy" / "haproxy.pids"
    found = []
    for pid in map(int, pids.read_text().split()) if pids.exists() else []:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE and process.name() == "haproxy":
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_haproxy_listens_on_loopback_and_a_killed_stacks_is_ended_at_the_next_start(tmp_path, ray_serve, shared_warm):
    home = tmp_path / "home"
    crashing = subprocess.Popen(
        [sys.executable, "-c", _SERVING_STACK, str(home)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert crashing.stdout.readline() == "up\n", "the stack started Ray Serve"
        orphans = _haproxies(home)
        assert orphans, "Ray Serve's HAProxy runs, its PID recorded"
        listening = set()
        for process in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):  # an old one, ending after a reload
                listening |= {c.laddr for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert len(listening) >= 2, listening  # the stats page and the Prometheus exporter at least
        assert {address.ip for address in listening} == {"127.0.0.1"}, listening
    finally:
        crashing.kill()  # SIGKILL: no clean-up of any kind
        crashing.wait(DEADLINE)
    # Most often HAProxy outlives the killed stack (nobody signals a grandchild); when Ray's own clean-up
    # happens to reach it first there is nothing left to end, and the restart must not stumble on that.
    restarted = LocalRuntime(home, say=lambda m: None, serving=ray_serve, warm=shared_warm)
    restarted.start(serve_api=False, watch=False)
    try:
        gone = all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in orphans)
    finally:
        restarted.stop()
    assert gone, "the next start on the home ended the HAProxy the killed stack left"
    assert not (home / "haproxy" / "haproxy.pids").exists(), "and forgot it"


# -- the store ----------------------------------------------------------------------------------------


def test_a_torn_record_in_the_store_is_quarantined_and_the_stack_starts(tmp_path, ray_serve, shared_warm):
    from droptrain.local.store import Store
    from droptrain.status import render

    home = tmp_path / "home"
    store = Store(home / "state.db")
    store.insert("training-job", "pets-1a2b3c4d-final", {"TrainingJobName": "pets-1a2b3c4d-final"}, "Completed")
    store.insert("training-job", "pets-5e6f7a8b-001", {"TrainingJobName": "pets-5e6f7a8b-001"}, "InProgress")
    # What a write torn by a full disk or a crash leaves: the record's JSON cut short.
    store._db.execute("UPDATE resources SET data=substr(data, 1, 20) WHERE name='pets-5e6f7a8b-001'")
    store.close()

    report = render(home)  # droptrain status reads the store as it is, and changes nothing
    assert "skipped: the training-job record 'pets-5e6f7a8b-001' in state.db cannot be read" in report

    said: list[str] = []
    runtime = LocalRuntime(home, say=said.append, serving=ray_serve, warm=shared_warm)
    runtime.start(port=0, watch=False)
    try:
        assert _status(runtime.api_url)[0] == 200
        assert runtime.store.names("training-job") == ["pets-1a2b3c4d-final"], "the readable record stays"
        kept = runtime.store._db.execute("SELECT name, data FROM quarantined").fetchall()
        assert kept == [("pets-5e6f7a8b-001", '{"TrainingJobName": ')], "the torn record is kept aside, as it was"
    finally:
        runtime.stop()
    assert [line for line in said if "cannot be read" in line] == [
        "the training-job record 'pets-5e6f7a8b-001' in state.db cannot be read (its JSON ends or breaks at"
        " character 20 of 20): moved to the table 'quarantined' of state.db"
    ]
    assert "cannot be read" not in render(home), "once moved aside, nothing is left to skip"


# -- broken model artifacts ---------------------------------------------------------------------------


def _predicts(runtime: LocalRuntime, image: Path) -> int:
    request = urllib.request.Request(
        f"{runtime.api_url}/predict/pets", data=image.read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _events(runtime: LocalRuntime, event: str) -> list[dict]:
    return [n["message"] for n in runtime.notifications() if n["message"]["event"] == event]


def _deploy_broken(runtime: LocalRuntime, endpoint: str, run: str, archive: Path | None) -> dict:
    """Deploy ``run`` to the endpoint as the pipeline does (tagged with the run), with ``archive`` as its
    artifact (``None``: no file at all); the endpoint's description once it settles."""
    from chalice_app import names

    key = f"runs/{run}/final/model.tar.gz"
    if archive is not None:
        runtime.bucket.put_file(key, archive)
    runtime.sagemaker.create_model({"ModelName": run, "PrimaryContainer": {"ModelDataUrl": runtime.bucket.uri(key)}})
    runtime.sagemaker.create_endpoint_config({"EndpointConfigName": run, "ProductionVariants": [{"ModelName": run}]})
    runtime.sagemaker.add_tags(
        runtime.endpoints.describe(endpoint)["EndpointArn"], [{"Key": names.TAG_RUN_ID, "Value": run}]
    )
    runtime.sagemaker.update_endpoint({"EndpointName": endpoint, "EndpointConfigName": run})
    runtime.endpoints.join(DEADLINE)
    return runtime.endpoints.describe(endpoint)


def test_a_broken_artifact_fails_its_deployment_and_the_serving_version_serves_on(
    tmp_path, trained_job, ray_serve, tiny_dataset, shared_warm
):
    from helpers import deploy_archive

    image = sorted(tiny_dataset.rglob("*.jpg"))[0]
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(trained_job["archive"].read_bytes()[:5000])  # a copy cut short
    home = tmp_path / "home"
    runtime = LocalRuntime(home, say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.start(port=0, watch=False)
    try:
        endpoint = deploy_archive(runtime, trained_job["archive"], "pets-1a2b3c4d")
        _notified(runtime, "deployment.completed")  # told before the endpoint is tagged for the next run
        for count, (run, archive) in enumerate((("pets-5e6f7a8b", truncated), ("pets-9c0d1e2f", None)), 1):
            described = _deploy_broken(runtime, endpoint, run, archive)
            artifact = f"s3://droptrain-local/runs/{run}/final/model.tar.gz"
            assert described["EndpointStatus"] == "InService", described
            assert described["EndpointConfigName"] == "pets-1a2b3c4d", "the previous version serves on"
            assert artifact in described["FailureReason"], described["FailureReason"]
            deadline = time.monotonic() + DEADLINE
            while len(failed := _events(runtime, "deployment.failed")) < count and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(failed) == count and artifact in failed[-1]["detail"]["reason"], json.dumps(failed, indent=1)
            assert failed[-1]["run_id"] == run and failed[-1]["detail"]["rolled_back"]
            assert _predicts(runtime, image) == 200
    finally:
        runtime.stop()

    # The serving version's artifact, broken while the stack was down: it starts, and says so.
    runtime.bucket.path("runs/pets-1a2b3c4d/final/model.tar.gz").write_bytes(truncated.read_bytes())
    restarted = LocalRuntime(home, say=lambda m: None, serving=ray_serve, warm=shared_warm)
    restarted.start(port=0, watch=False)
    try:
        status, body = _status(restarted.api_url)
        assert status == 200
        state = body["projects"]["pets"]["endpoint"]
        assert state["status"] == "Failed", state
        assert "could not be served again" in state["failure_reason"], state
        assert "runs/pets-1a2b3c4d/final/model.tar.gz" in state["failure_reason"]
        assert _predicts(restarted, image) != 200
    finally:
        restarted.stop()


# -- the demo and other people's files ----------------------------------------------------------------


def test_the_demo_refuses_a_running_stacks_home_and_writes_only_inside_its_own(tmp_path):
    from droptrain.demo import run_demo
    from droptrain.local.lock import HomeLock

    running = tmp_path / "running"
    (running / "bucket").mkdir(parents=True)
    (running / "bucket" / "kept.txt").write_text("a running stack's")
    held = HomeLock(running).acquire()  # what `droptrain up` holds while it runs
    try:
        with pytest.raises(HomeBusyError):
            run_demo(running, say=lambda m: None)
    finally:
        held.release()
    assert (running / "bucket" / "kept.txt").read_text() == "a running stack's", "nothing was wiped"

    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "mine.txt").write_text("a user's file beside the demo's home")
    with socket.socket() as busy:  # the demo gets as far as starting its stack, and stops there
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            run_demo(tmp_path / "h", port=busy.getsockname()[1], say=lambda m: None)
    assert (tmp_path / "shapes" / "mine.txt").read_text() == "a user's file beside the demo's home"
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == ["mine.txt"]
    assert (tmp_path / "h" / "shapes" / "train").is_dir(), "the synthetic dataset is written inside the home"


# -- many projects on one stack -----------------------------------------------------------------------

_TINY_APP = """
import ray
from ray import serve


@serve.deployment
class Echo:
    async def __call__(self, request):
        return ray.get_runtime_context().get_assigned_resources()  # what Ray placed this replica with


app = Echo.bind()
"""


def test_a_replica_reserves_a_quarter_cpu_and_a_model_that_cannot_fit_is_refused_at_once(tmp_path, ray_serve):
    """With Ray's whole CPU per replica, a ninth project on the local Ray's 8 waited 300 s and failed."""
    import ray

    from droptrain.local.engines.applications import REPLICA_CPUS
    from droptrain.local.engines.serving import ModelNotServableError

    def archive(name: str, options: str = "") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tinyapp.py").write_text(_TINY_APP)
        (folder / "config.yaml").write_text(
            "applications:\n  - name: x\n    route_prefix: /\n    import_path: tinyapp:app\n"
            f"    deployments:\n      - name: Echo\n{options}"
        )
        return folder

    total = ray.cluster_resources()["CPU"]
    ray_serve.deploy("quarter", archive("quarter"))
    try:
        # What the replica was placed with, as it sees it (Ray's free CPUs moved with other tests' replicas
        # ending meanwhile, and once read exactly 0.25 too few).
        status, assigned = ray_serve.call("quarter", b"")
        assert status == 200 and assigned.get("CPU") == pytest.approx(REPLICA_CPUS), assigned
        assert total / REPLICA_CPUS > 9, "so many more projects fit than the 8 a whole CPU each allowed"
        greedy = archive("greedy", "        ray_actor_options:\n          num_cpus: 1000\n")
        refused = r"CPUs free and this model asks for 1000: about \d+ models fit"
        with pytest.raises(ModelNotServableError, match=refused):
            ray_serve.deploy("greedy", greedy)  # refused before anything waits on Ray to place it
    finally:
        ray_serve.delete("quarter")
