"""The local runtime's parts: EventBridge pattern matching, the bucket, uploads."""

from __future__ import annotations

import tarfile
import threading

import boto3
import pytest
from moto import mock_aws

from droptrain import cli
from droptrain.local.aws.bucket import InvalidKeyError, LocalBucket
from droptrain.local.aws.bus import LocalEventBus, Route, matches, routes_of
from droptrain.local.runtime import BUCKET, upload_to_bucket
from droptrain.local.stage import object_created
from droptrain.upload import UploadError, upload_to_s3
from helpers import DEADLINE
from orchestrator.support import event


@pytest.mark.parametrize(
    "pattern,event_,expected",
    [
        ({"source": ["aws.s3"]}, {"source": "aws.s3"}, True),
        ({"source": ["aws.s3"]}, {"source": "aws.sagemaker"}, False),
        ({"detail": {"key": [{"prefix": "datasets/"}]}}, {"detail": {"key": "datasets/a"}}, True),
        ({"detail": {"key": [{"suffix": ".zip"}]}}, {"detail": {"key": "a.tgz"}}, False),
        ({"detail": {"key": [{"wildcard": "datasets/*/_READY"}]}}, {"detail": {"key": "datasets/a/b/_READY"}}, True),
        ({"detail": {"key": [{"wildcard": "datasets/*/_READY"}]}}, {"detail": {"key": "datasets/_READY"}}, False),
        ({"detail": {"Tags": {"droptrain:role": ["final"]}}}, {"detail": {"Tags": {}}}, False),
        ({"detail": {"TuningJobArn": [{"exists": False}]}}, {"detail": {}}, True),
        ({"detail": {"s": [{"anything-but": ["InProgress"]}]}}, {"detail": {"s": "Completed"}}, True),
        ({"detail": {"s": ["a", "b"]}}, {"detail": {"s": ["c", "b"]}}, True),
    ],
)
def test_pattern_matching(pattern, event_, expected):
    assert matches(pattern, event_) is expected


def test_routes_are_the_apps_rules(monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", "droptrain-data-dev")
    monkeypatch.setenv("ENDPOINT_PREFIX", "droptrain-dev")
    import importlib

    import app

    app = importlib.reload(app)
    routes = {r.name: r for r in routes_of(app.app)}
    assert set(routes) == {
        "on_dataset_uploaded",
        "on_processing_job_state_change",
        "on_tuning_job_state_change",
        "on_training_job_state_change",
        "on_endpoint_state_change",
        "on_model_package_state_change",
        "on_transform_job_state_change",
        "on_drift_check_state_change",
    }
    samples = {
        "s3-object-created.json": "on_dataset_uploaded",
        "tuning-job-completed.json": "on_tuning_job_state_change",
        "training-job-completed.json": "on_training_job_state_change",
        "endpoint-in-service.json": "on_endpoint_state_change",
        "training-job-tuning-child.json": None,
        "model-package-approved.json": "on_model_package_state_change",
    }
    for sample, expected in samples.items():
        matched = [name for name, r in routes.items() if matches(r.pattern, event(sample))]
        assert matched == ([expected] if expected else []), sample
    # A processing job's end reaches the audit's handler or the drift check's, by its name; a batch job's, its own.
    for job, expected in (
        ("dogs-1a2b3c4d-audit", "on_processing_job_state_change"),
        ("droptrain-dev-dogs-drift-0a1b2c3d", "on_drift_check_state_change"),
        ("droptrain-prod-dogs-drift-0a1b2c3d", None),
    ):
        ended = {
            "source": "aws.sagemaker",
            "detail-type": "SageMaker Processing Job State Change",
            "detail": {"ProcessingJobName": job, "ProcessingJobStatus": "Completed"},
        }
        assert [name for name, r in routes.items() if matches(r.pattern, ended)] == ([expected] if expected else [])
    batch = {
        "source": "aws.sagemaker",
        "detail-type": "SageMaker Transform Job State Change",
        "detail": {"TransformJobName": "droptrain-dev-dogs-batch-0a1b2c3d", "TransformJobStatus": "Completed"},
    }
    assert [name for name, r in routes.items() if matches(r.pattern, batch)] == ["on_transform_job_state_change"]
    # Another stage's endpoints and model package groups, and versions not approved, reach no function.
    for sample, change in (
        ("endpoint-in-service.json", {"EndpointName": "droptrain-prod-dogs"}),
        ("model-package-approved.json", {"ModelPackageGroupName": "droptrain-prod-dogs"}),
        ("model-package-approved.json", {"ModelApprovalStatus": "Rejected"}),
    ):
        assert not any(matches(r.pattern, event(sample, **change)) for r in routes.values()), change


def test_bus_retries_a_failing_handler_like_lambda():
    calls, sleeps = [], []

    def flaky(evt, context):
        calls.append(evt["id"])
        if len(calls) < 3:
            raise RuntimeError("throttled")
        return "ok"

    bus = LocalEventBus([Route("h", {"source": ["x"]}, flaky)], sleep=sleeps.append)
    bus.deliver({"id": "1", "source": "x"})
    assert calls == ["1", "1", "1"] and sleeps == [1.0, 2.0] and bus.delivered == [("h", "ok")]


def test_bucket_semantics(tmp_path):
    bucket = LocalBucket(tmp_path / "b", BUCKET)
    etag = bucket.put("datasets/a/_READY", b"")
    assert etag == "d41d8cd98f00b204e9800998ecf8427e", "S3's ETag of an empty object"
    assert bucket.head(BUCKET, "datasets/a/_READY") == {"size": 0, "etag": etag}
    (tmp_path / "b" / "datasets" / "a" / "big.zip.partial").write_bytes(b"half")
    assert list(bucket.list_objects(BUCKET, "datasets/")) == [("datasets/a/_READY", 0)], (
        "files being written are invisible"
    )
    wins = []
    threads = [
        threading.Thread(target=lambda: wins.append(bucket.put_if_absent(BUCKET, "runs/r/m.json", b"1")))
        for _ in range(8)
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert wins.count(True) == 1, "one writer wins, as with S3's If-None-Match"
    with pytest.raises(InvalidKeyError):
        bucket.path("../../etc/passwd")
    bucket.put("datasets/x.zip", b"0123456789")
    assert bucket.read_range(BUCKET, "datasets/x.zip", 2, 4) == b"234"


def test_upload_folder_writes_the_marker_last(tmp_path, tiny_dataset):
    bucket = LocalBucket(tmp_path / "b", BUCKET)
    key = upload_to_bucket(bucket, tiny_dataset, "pets")
    assert key == "datasets/pets/_READY"
    first_etag = bucket.head(BUCKET, key)["etag"]
    marker = bucket.path(key)
    images = [p for p in bucket.path("datasets/pets").rglob("*.jpg")]
    assert len(images) == len(list(tiny_dataset.rglob("*.jpg")))
    assert all(p.stat().st_mtime_ns <= marker.stat().st_mtime_ns for p in images)
    again = upload_to_bucket(bucket, tiny_dataset, "pets")
    assert bucket.head(BUCKET, again)["etag"] != first_etag, "a re-upload writes a new marker: a new run"


def test_upload_archive_and_errors(tmp_path, tiny_dataset, capsys):
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_dataset, arcname="pets")
    assert cli.main(["upload", str(archive), "--home", str(tmp_path / "home")]) == 0
    assert "s3://droptrain-local/datasets/pets.tar.gz" in capsys.readouterr().out
    assert (tmp_path / "home" / "bucket" / "datasets" / "pets.tar.gz").is_file()
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert cli.main(["upload", str(notes), "--home", str(tmp_path / "home")]) == 1
    assert "not a .zip" in capsys.readouterr().err
    assert cli.main(["upload", str(tmp_path / "missing"), "--home", str(tmp_path / "home")]) == 1


def test_upload_to_s3(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="droptrain-data-dev")
        key = upload_to_s3(tiny_dataset, "pets", "s3://droptrain-data-dev", client=s3)
        assert key == "datasets/pets/_READY"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="droptrain-data-dev")["Contents"]]
        assert len(keys) == len(list(tiny_dataset.rglob("*.jpg"))) + 1
        with pytest.raises(UploadError, match="does not exist|NoSuchBucket"):
            upload_to_s3(tiny_dataset, "pets", "s3://no-such-bucket", client=s3)


def test_watcher_emits_once_per_new_object(tmp_path):
    from droptrain.local.runtime import LocalRuntime

    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None)
    emitted = []
    runtime._emit = emitted.append
    runtime.bucket.put("datasets/a/train/x/1.jpg", b"x")
    runtime.bucket.put("datasets/a/_READY", b"1")
    assert runtime.scan() == 1 and runtime.scan() == 0
    assert emitted[0]["detail"]["object"]["key"] == "datasets/a/_READY"
    runtime.bucket.put("datasets/a/_READY", b"2")
    assert runtime.scan() == 1, "a new marker (new ETag) is a new event"
    assert object_created("k", 1, "e")["detail-type"] == "Object Created"


def test_a_slow_listing_makes_the_watcher_wait_ten_times_as_long(tmp_path):
    """Where the dataset folders hold many files, a listing takes long: the watcher then waits ten times
    as long as its round took, so that it never takes more than a tenth of a core."""
    import time

    from droptrain.local.runtime import LocalRuntime

    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, poll_seconds=0.01)
    starts, done = [], threading.Event()

    def slow_scan(prefix=None):
        starts.append(time.monotonic())
        if len(starts) == 3:
            done.set()
        time.sleep(0.1)  # a listing of 0.1 s at least
        return 0

    runtime.scan = slow_scan
    watcher = threading.Thread(target=runtime._watch, daemon=True)
    watcher.start()
    try:
        assert done.wait(DEADLINE)
    finally:
        runtime._stop.set()
        watcher.join(DEADLINE)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 0.1 + 1.0 for gap in gaps), gaps


def test_a_jobs_scratch_space_is_its_own_and_goes_when_it_ends(tmp_path):
    from droptrain.local.sagemaker import jobs

    paths = jobs.JobPaths(tmp_path / "job")
    jobs.write_config(paths, {}, [], "ml.m5.large")
    env = jobs.toolkit_env(paths, "job", "arn:job", {})
    assert env["TMPDIR"] == str(paths.scratch) and paths.scratch.is_dir(), (
        "an extracted dataset lands in the job's folder"
    )
    (paths.scratch / "dataset").mkdir()
    (paths.checkpoints / "checkpoint-x.pt").write_bytes(b"x")
    with jobs.open_log(paths) as log:
        log.write("epoch=1 valid_accuracy=0.5\n")
    jobs.clean_up(paths)
    assert not paths.scratch.exists() and not paths.checkpoints.exists()
    assert jobs.read_log(paths) == ["epoch=1 valid_accuracy=0.5"], "the log stays"


def test_the_local_registry_sends_sagemakers_approval_event(tmp_path, monkeypatch):
    """An approval change is an event in SageMaker's shape, that the app's rule routes and its parser reads;
    a repeated registration (same ClientToken) is the same version."""
    from chalice_app import registry_requests
    from chalice_app.events import ModelPackageStateChange
    from droptrain.local.sagemaker.registry import LocalRegistry
    from droptrain.local.store import Store
    from orchestrator.test_requests import make_config

    monkeypatch.setenv("ENDPOINT_PREFIX", "droptrain-dev")
    import importlib

    import app

    app = importlib.reload(app)
    rule = {r.name: r for r in routes_of(app.app)}["on_model_package_state_change"]
    emitted: list[dict] = []
    registry = LocalRegistry(Store(tmp_path / "state.db"), emitted.append)
    config = make_config()
    assert registry.create_group(registry_requests.model_package_group_request(config, "pets", "pets")) is True
    assert registry.create_group(registry_requests.model_package_group_request(config, "pets", "pets")) is False
    request = registry_requests.model_package_request(
        config,
        "pets",
        "pets-1a2b3c4d",
        "s3://droptrain-data-dev/runs/pets-1a2b3c4d/final/model.tar.gz",
        "s3://droptrain-data-dev/datasets/pets/",
        {"test:accuracy": 0.9},
        {"lr": "0.01"},
    )
    arn = registry.create_package(request)
    assert registry.create_package(request) == arn, "the same ClientToken is the same version"
    assert emitted == [], "a version pending approval sends nothing"
    registry.update(registry_requests.approval_request(arn, "Approved", "gate passed"))
    registry.update(registry_requests.approval_request(arn, "Approved", "again"))
    assert len(emitted) == 1, "only a change of approval is an event"
    assert matches(rule.pattern, emitted[0])
    parsed = ModelPackageStateChange.parse(emitted[0])
    assert (parsed.group, parsed.version, parsed.approval) == ("droptrain-dev-pets", 1, "Approved")
    assert parsed.metadata["droptrain:run-id"] == "pets-1a2b3c4d" and parsed.model_data.endswith("model.tar.gz")
    with pytest.raises(Exception, match="does not exist"):
        registry.create_package({**request, "ModelPackageGroupName": "droptrain-dev-cats"})


def test_each_ray_instance_gets_replica_ports_of_its_own(tmp_path):
    """Replicas listen with SO_REUSEPORT: two Ray instances on one machine must never share a port."""
    import subprocess
    import sys

    from droptrain.local.engines.ray_mode import PORT_BLOCKS, PortBlock

    first, second = PortBlock.reserve(tmp_path), PortBlock.reserve(tmp_path)
    assert first.start != second.start
    ports = []
    for block in (first, second):
        env = block.environment()
        for low, high in (
            ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"),
            ("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"),
        ):
            ports += range(int(env[low]), int(env[high]))
        ports += [
            int(env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]),
            int(env["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"]),
            block.grpc_port,
        ]
    assert len(ports) == len(set(ports)), "no port of one instance is another's, nor used twice in one"
    assert max(ports) < 32768, "below Linux's ephemeral ports"
    # Another process holding a block keeps it until it ends; a released block is free again.
    code = (
        "import sys, time; from pathlib import Path; from droptrain.local.engines.ray_mode import PortBlock; "
        "b = PortBlock.reserve(Path(sys.argv[1])); print(b.start, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())
        others = [PortBlock.reserve(tmp_path) for _ in range(len(PORT_BLOCKS) - 3)]  # every block left
        assert held not in {block.start for block in others} | {first.start, second.start}
        with pytest.raises(OSError, match="held by other Ray instances"):
            PortBlock.reserve(tmp_path)
        first.release()
        assert PortBlock.reserve(tmp_path).start == first.start, "a released block is free again"
    finally:
        holder.kill()
        holder.wait()
